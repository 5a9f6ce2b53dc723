"""The matmul spectral filter reproduces upstream's torch.fft filtering."""

import pytest
import torch

from spai.model.nn.spectral import SpectralFilter, circular_mask, filter_frequencies_fft, split_frequencies


def test_circular_mask_has_upstream_shape_and_count():
    mask = circular_mask(224, 16)
    assert mask.dtype == torch.int64
    assert int(mask.sum()) == 856
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    assert rows.min() == 96 and rows.max() == 127
    assert mask[112, 112] == 1  # DC after fftshift is kept
    # the grid is centred between 111/112 while DC sits at 112: not Hermitian-symmetric (94 bins differ)
    mirror = (224 - torch.arange(224)) % 224
    assert int((mask != mask[mirror][:, mirror]).sum()) == 94


@pytest.mark.parametrize("seed", [0, 1])
def test_matmul_filter_matches_fft_reference_within_1e5(seed):
    torch.manual_seed(seed)
    x = torch.rand(4, 3, 224, 224)
    low, high = SpectralFilter.circular(224, 16)(x)
    low_ref, high_ref = filter_frequencies_fft(x, circular_mask(224, 16))
    assert (low - low_ref).abs().max() <= 1e-5
    assert (high - high_ref).abs().max() <= 1e-5


def test_filter_outputs_are_clamped_and_complementary_before_clamping():
    x = torch.rand(2, 3, 224, 224)
    filt = SpectralFilter.circular()
    low, high = filt(x)
    assert low.min() >= 0 and low.max() <= 1 and high.min() >= 0 and high.max() <= 1
    pre_low = filt.low_pass(x)
    assert torch.allclose(pre_low.clamp(0, 1), low)
    assert torch.allclose((x - pre_low).clamp(0, 1), high)


def test_filter_follows_a_loaded_mask():
    mask = circular_mask(224, 8)
    x = torch.rand(1, 3, 224, 224)
    low, _ = SpectralFilter(mask)(x)
    low_ref, _ = filter_frequencies_fft(x, mask)
    assert (low - low_ref).abs().max() <= 1e-5


def test_split_frequencies_public_helper_matches_module():
    x = torch.rand(2, 3, 224, 224)
    low, high = split_frequencies(x)
    ref_low, ref_high = filter_frequencies_fft(x, circular_mask())
    assert (low - ref_low).abs().max() <= 1e-5 and (high - ref_high).abs().max() <= 1e-5


def test_orthonormal_scaling_keeps_fp16_in_range():
    x = torch.ones(1, 3, 224, 224, dtype=torch.float64)
    filt = SpectralFilter.circular().double()
    p, q = filt.row_basis, filt.col_basis
    z = p @ x @ q.T
    assert z.abs().max() < 65504 / 100  # DC of a white image is 224, far from fp16's max
