"""Patching exactly as SPAI: reflect-101 padding, 224 grid, five-crop, chunking."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from spai.patching import (PatchSpec, count_patches, iter_patch_chunks, pad_to_minimum, patch_corners, patchify,
                           reflect101_indices)


@pytest.mark.parametrize("size,expected", [((224, 224), 5), ((448, 448), 4), ((500, 700), 6), ((300, 400), 5),
                                           ((100, 50), 5), ((3000, 4000), 13 * 17)])
def test_patch_counts_match_upstream(size, expected):
    assert count_patches(*size, PatchSpec()) == expected


def test_grid_is_row_major_and_drops_remainders():
    corners = patch_corners(500, 700, PatchSpec())
    assert corners == [(0, 0), (0, 224), (0, 448), (224, 0), (224, 224), (224, 448)]


def test_five_crop_equals_torchvision():
    img = torch.rand(3, 300, 410)
    ours = patchify(img)
    ref = torch.stack(TF.five_crop(img, [224, 224]))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("h,w", [(100, 50), (1, 1), (1, 7), (223, 300), (5, 224)])
def test_padding_is_centred_reflect_101(h, w):
    img = torch.rand(3, h, w)
    padded = pad_to_minimum(img, 224)
    ph, pw = max(224 - h, 0), max(224 - w, 0)
    if h > 1 and w > 1:
        ref = np.pad(img.numpy(), ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect")
        assert np.array_equal(padded.numpy(), ref)
    assert padded.shape == (3, max(h, 224), max(w, 224))
    top, left = ph // 2, pw // 2
    assert torch.equal(padded[:, top:top + h, left:left + w], img)


def test_reflect101_repeats_for_tiny_axes():
    assert reflect101_indices(3, 4, 4).tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]
    assert reflect101_indices(1, 2, 2).tolist() == [0, 0, 0, 0, 0]


def test_uint8_and_float_patchify_agree():
    img8 = torch.randint(0, 256, (3, 450, 460), dtype=torch.uint8)
    assert torch.equal(patchify(img8), patchify(img8.float() / 255))


def test_chunks_concatenate_to_patchify_of_every_image():
    images = [torch.rand(3, 448, 700), torch.rand(3, 224, 224), torch.randint(0, 255, (3, 90, 300), dtype=torch.uint8)]
    chunks = list(iter_patch_chunks(images, PatchSpec(), chunk=4))
    assert all(len(c) <= 4 for c in chunks)
    assert torch.equal(torch.cat(chunks), torch.cat([patchify(i) for i in images]))


def test_huge_image_is_cut_in_bounded_chunks():
    img = torch.zeros(3, 3000, 4000, dtype=torch.uint8)
    sizes = [len(c) for c in iter_patch_chunks([img], PatchSpec(), chunk=50)]
    assert sum(sizes) == 13 * 17 and max(sizes) == 50
