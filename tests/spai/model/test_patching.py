"""Patching exactly as SPAI: reflect-101 padding, 224 grid, five-crop, chunking; numpy and torch cut alike."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from spai.infer.feeds import patch_chunks
from spai.infer.prepare import prepare_image
from spai.model.nn.spai_model import patchify
from spai.model.patching import PatchSpec, count_patches, grid_corners, pad_image, patch_grid, reflect101_indices


@pytest.mark.parametrize("size,expected", [((224, 224), 5), ((448, 448), 4), ((500, 700), 6), ((300, 400), 5),
                                           ((100, 50), 5), ((3000, 4000), 13 * 17)])
def test_patch_counts_match_upstream(size, expected):
    assert count_patches(*size, PatchSpec()) == expected


def test_grid_is_row_major_and_drops_remainders():
    assert grid_corners(500, 700, PatchSpec()) == [(0, 0), (0, 224), (0, 448), (224, 0), (224, 224), (224, 448)]
    assert patch_grid(500, 700).corners == tuple(grid_corners(500, 700))


def test_five_crop_equals_torchvision():
    img = torch.rand(3, 300, 410)
    assert torch.equal(patchify(img), torch.stack(TF.five_crop(img, [224, 224])))


@pytest.mark.parametrize("h,w", [(100, 50), (1, 1), (1, 7), (223, 300), (5, 224)])
def test_padding_is_centred_reflect_101(h, w):
    img = np.random.rand(h, w, 3)
    grid = patch_grid(h, w)
    padded = pad_image(img, grid)
    ph, pw = max(224 - h, 0), max(224 - w, 0)
    if h > 1 and w > 1:
        ref = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
        assert np.array_equal(padded, ref)
    assert padded.shape == (max(h, 224), max(w, 224), 3)
    assert (grid.pad_top, grid.pad_left) == (ph // 2, pw // 2)
    assert np.array_equal(padded[ph // 2:ph // 2 + h, pw // 2:pw // 2 + w], img)


def test_large_images_are_not_copied_for_padding():
    img = np.zeros((448, 500, 3), np.uint8)
    assert pad_image(img, patch_grid(448, 500)) is img


def test_reflect101_repeats_for_tiny_axes():
    assert reflect101_indices(3, 4, 4).tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]
    assert reflect101_indices(1, 2, 2).tolist() == [0, 0, 0, 0, 0]


def test_uint8_and_float_patchify_agree():
    img8 = torch.randint(0, 256, (3, 450, 460), dtype=torch.uint8)
    assert torch.equal(patchify(img8), patchify(img8.float() / 255))


@pytest.mark.parametrize("h,w", [(448, 700), (224, 224), (90, 300), (1, 1)])
def test_inference_cuts_what_the_training_path_cuts(h, w):
    """The numpy cut of spai.infer.scorer (H x W x 3 in, chunks out) == the torch patchify of the training path."""
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    chunks = list(patch_chunks([prepare_image(img, "x")], 2, np.float32))
    assert all(len(c) <= 2 for c in chunks)
    assert np.array_equal(np.concatenate(chunks), patchify(img).numpy())


def test_chunks_concatenate_the_patches_of_every_image_in_order():
    images = [np.random.rand(448, 700, 3).astype(np.float32), np.random.rand(224, 224, 3).astype(np.float32),
              np.random.randint(0, 255, (90, 300, 3), dtype=np.uint8)]
    prepared = [prepare_image(img, f"i{k}") for k, img in enumerate(images)]
    chunks = list(patch_chunks(prepared, 4, np.float32))
    assert [len(c) for c in chunks] == [4, 4, 4, 4]
    whole = [patchify(torch.from_numpy(np.ascontiguousarray(i.transpose(2, 0, 1)))).numpy() for i in images]
    assert np.array_equal(np.concatenate(chunks), np.concatenate(whole))


def test_huge_image_is_cut_in_bounded_chunks():
    img = prepare_image(np.zeros((3000, 4000, 3), np.uint8), "big")
    sizes = [len(c) for c in patch_chunks([img], 50)]
    assert sum(sizes) == 13 * 17 and max(sizes) == 50
