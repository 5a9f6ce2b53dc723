"""Datasets in SPAI's CSV format, SPAI's training augmentations and the offline proxy dataset."""

from spai.data.csv_dataset import CSVImageDataset, ImageRecord, read_split_csv
from spai.data.transforms import TrainTransform

__all__ = ["CSVImageDataset", "ImageRecord", "TrainTransform", "read_split_csv"]
