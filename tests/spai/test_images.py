"""Decoding: every mode to RGB, EXIF orientation, limits, clear errors naming the file."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from spai.errors import ImageError
from spai.images import as_image_tensor, decode_image


def _save(im, tmp_path, name, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "RGB", "1"])
def test_modes_are_converted_to_rgb(tmp_path, mode):
    im = Image.new("RGB", (40, 30), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    t = decode_image(_save(im, tmp_path, f"x.{fmt.lower()}", format=fmt))
    assert t.shape == (3, 30, 40) and t.dtype == torch.uint8


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    arr = np.full((20, 20), 32768, dtype=np.uint16)
    t = decode_image(_save(Image.fromarray(arr), tmp_path, "g16.png"))
    assert 126 <= int(t[0, 0, 0]) <= 129  # half of 65535 -> about 128, not 255


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    t = decode_image(_save(im, tmp_path, "r.jpg", exif=exif.tobytes()))
    assert t.shape == (3, 60, 20)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    t = decode_image(path)
    assert t[0, 0, 0] > 200 and t[2, 0, 0] < 50


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


def test_arrays_and_pil_images_are_accepted():
    arr = np.random.rand(50, 60, 3).astype(np.float32)
    assert as_image_tensor(arr).shape == (3, 50, 60)
    assert as_image_tensor(Image.fromarray((arr * 255).astype(np.uint8))).dtype == torch.uint8
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        as_image_tensor(arr * 255)
    with pytest.raises(ImageError, match="NaN"):
        as_image_tensor(np.full((10, 10, 3), np.nan, dtype=np.float32))
