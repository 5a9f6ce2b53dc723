"""SPAI's spectral split as fixed real matrix products (exports to plain MatMul ops).

Upstream semantics (mever-team/spai ``filters.py``): ``X = fftshift(fft2(x))``; ``low = real(ifft2(ifftshift(X *
mask)))``; ``high = real(ifft2(ifftshift(X * (1 - mask))))``; both clamped to [0, 1]. Here the shifts are folded into
the mask (``ifftshift(mask)`` on the unshifted spectrum), the DFT uses orthonormal scaling (``1/sqrt(N)`` per axis, so
fp16 never overflows), only the frequency rows/columns the mask touches are computed (a 224 x 32 "band"), and
``high`` before clamping is ``x - low`` before clamping (the transform is linear and the masks complementary).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spai.model.nn.precision import full_precision


def circular_mask(size: int = 224, radius: int = 16) -> torch.Tensor:
    """Upstream's ``generate_circular_mask``: centred grid [c..0, 0..c], 1 where radius < ``radius`` (int64)."""
    half = size // 2
    idx = torch.arange(size)
    coord = torch.where(idx < half, (half - 1) - idx, idx - half).double()
    r = torch.sqrt(coord[:, None] ** 2 + coord[None, :] ** 2)
    return (r < radius).long()


def filter_frequencies_fft(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation with ``torch.fft`` (upstream code path); returns clamped (low, high)."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))
    m = mask.to(spectrum.real.dtype)
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * m, dim=(-2, -1))).real
    high = torch.fft.ifft2(torch.fft.ifftshift(spectrum * (1 - m), dim=(-2, -1))).real
    return low.clamp(0, 1).to(x.dtype), high.clamp(0, 1).to(x.dtype)


def _band_dft_matrices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked [cos; sin] DFT rows for the touched frequencies, and the unshifted mask restricted to them."""
    size = mask.shape[-1]
    unshifted = torch.fft.ifftshift(mask.double(), dim=(-2, -1))
    rows = torch.nonzero(unshifted.any(dim=1)).flatten()
    cols = torch.nonzero(unshifted.any(dim=0)).flatten()
    n = torch.arange(size, dtype=torch.float64)

    def stacked(freqs: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * freqs.double()[:, None] * n[None, :] / size
        return torch.cat([torch.cos(angle), torch.sin(angle)]) / math.sqrt(size)

    return stacked(rows), stacked(cols), unshifted[rows][:, cols]


class SpectralFilter(nn.Module):
    """Split patches into clamped low- and high-frequency views with real matrix products.

    With ``P = [C_r; S_r]`` (2Kr x N) and ``Q = [C_c; S_c]`` (2Kc x N) the orthonormal DFT rows of the kept
    frequencies, ``Z = P x Q^T`` holds the four real products; the masked spectrum is ``a = M*(Z11 - Z22)``,
    ``b = M*(Z12 + Z21)`` and ``low = P^T [[a, b], [b, -a]] Q`` exactly equals the real part of the inverse DFT.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("row_basis", torch.empty(0), persistent=False)  # (2Kr, N)
        self.register_buffer("col_basis", torch.empty(0), persistent=False)  # (2Kc, N)
        self.register_buffer("band_mask", torch.empty(0), persistent=False)  # (Kr, Kc)
        self.set_mask(mask)

    @classmethod
    def circular(cls, size: int = 224, radius: int = 16) -> SpectralFilter:
        """The filter for upstream's circular mask."""
        return cls(circular_mask(size, radius))

    def set_mask(self, mask: torch.Tensor) -> None:
        """Rebuild the band matrices for a (centred, fftshift-ed) 0/1 ``mask`` such as a checkpoint's."""
        rows, cols, band_mask = _band_dft_matrices(mask.cpu())
        device = self.row_basis.device
        self.row_basis = rows.float().to(device)
        self.col_basis = cols.float().to(device)
        self.band_mask = band_mask.float().to(device)

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Real part of the inverse DFT of the masked spectrum, before clamping."""
        p, q = self.row_basis.to(x.dtype), self.col_basis.to(x.dtype)
        kr, kc = self.band_mask.shape
        z = torch.matmul(torch.matmul(p, x), q.transpose(0, 1))  # (..., 2Kr, 2Kc)
        m = self.band_mask.to(x.dtype)
        a = m * (z[..., :kr, :kc] - z[..., kr:, kc:])
        b = m * (z[..., :kr, kc:] + z[..., kr:, :kc])
        w = torch.cat([torch.cat([a, b], dim=-1), torch.cat([b, -a], dim=-1)], dim=-2)
        return torch.matmul(torch.matmul(p.transpose(0, 1), w), q)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (..., N, N) in [0, 1] -> (low, high), each clamped to [0, 1], in fp32 under any autocast (the
        views of training, of the exported graphs and of every precision route are the same)."""
        with full_precision(x) as (x,):
            low = self.low_pass(x)
            high = x - low
            return low.clamp(0, 1), high.clamp(0, 1)


_DEFAULT_FILTERS: dict[tuple[int, int], SpectralFilter] = {}


def split_frequencies(patches: torch.Tensor, radius: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Public helper: (low, high) views of N x 3 x S x S patches in [0, 1], clamped, before normalisation."""
    size = patches.shape[-1]
    key = (size, radius)
    if key not in _DEFAULT_FILTERS:
        _DEFAULT_FILTERS[key] = SpectralFilter.circular(size, radius)
    filt = _DEFAULT_FILTERS[key].to(patches.device)
    return filt(patches)
