"""Decoding: every mode to RGB (H x W x 3 uint8), EXIF orientation, limits, clear errors naming the file."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from spai.corpus.inputs import expand_inputs
from spai.errors import ImageError
from spai.infer.images import decode_image, load_image


def _save(im, tmp_path, name, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "RGB", "1"])
def test_modes_are_converted_to_rgb(tmp_path, mode):
    im = Image.new("RGB", (40, 30), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    t = decode_image(_save(im, tmp_path, f"x.{fmt.lower()}", format=fmt))
    assert t.shape == (30, 40, 3) and t.dtype == np.uint8


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    arr = np.full((20, 20), 32768, dtype=np.uint16)
    t = decode_image(_save(Image.fromarray(arr), tmp_path, "g16.png"))
    assert 126 <= int(t[0, 0, 0]) <= 129  # half of 65535 -> about 128, not 255


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    t = decode_image(_save(im, tmp_path, "r.jpg", exif=exif.tobytes()))
    assert t.shape == (60, 20, 3)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    t = decode_image(path)
    assert t[0, 0, 0] > 200 and t[0, 0, 2] < 50


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"hello, not an image", "not a recognised image"),
                                           (b"%PDF-1.4 fake", "not a recognised image")])
def test_non_images_are_clear_errors_naming_the_file(tmp_path, content, match):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=f"fake.jpg.*{match}"):
        decode_image(path)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.randint(0, 255, (300, 300, 3), dtype=np.uint8)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:2000])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(path)


def test_pixel_and_byte_limits(tmp_path):
    path = _save(Image.new("RGB", (100, 100)), tmp_path, "big.png")
    with pytest.raises(ImageError, match="decompression-bomb"):
        decode_image(path, max_pixels=5000)
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(path, max_bytes=10)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        decode_image(tmp_path)


def test_one_pixel_image_is_scored(tiny_model, tmp_path):
    path = _save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path, "one.png")
    (res,) = tiny_model.score_images([path])
    assert res.num_patches == 5 and 0 <= res.probability <= 1


def test_arrays_tensors_and_pil_images_are_accepted():
    arr = np.random.rand(50, 60, 3).astype(np.float32)
    assert load_image(arr).shape == (50, 60, 3)
    chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    assert np.array_equal(load_image(chw), arr)  # torch's 3 x H x W layout -> H x W x 3, no torch import needed
    assert load_image(Image.fromarray((arr * 255).astype(np.uint8))).dtype == np.uint8
    assert load_image(np.zeros((20, 30), np.uint8)).shape == (20, 30, 3)
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(arr * 255)
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((10, 10, 3), np.nan, dtype=np.float32))


def test_expand_inputs_csv_and_dir(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    (tmp_path / "list.csv").write_text("image,label\na.png,1\n")
    assert expand_inputs([str(tmp_path / "list.csv")]) == [tmp_path / "a.png"]
    assert expand_inputs([str(tmp_path)]) == [tmp_path / "a.png"]
    with pytest.raises(ImageError):
        expand_inputs([str(tmp_path / "missing.jpg")])
