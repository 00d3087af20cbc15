"""The reference image: the frequency-domain back-projection sum, evaluated directly in float64.

    I(p) = | sum_c sum_k w_k S(c, k) exp(+j 2 pi f_k R_c(p) / c) |

No IFFT, no interpolation, no float32: this is what the fast imagers are measured against.

Evaluated naively it needs channels x pixels x points complex exponentials (0.5e9 for
144 x 128^2 x 201, ~10 s). The exponent is linear in k, so with k = L a + b

    exp(j K_k R) = exp(j (K_0 + L a dK) R) * exp(j b dK R),

an algebraic identity, not an approximation, and the sum over b becomes a batched complex128
matrix product. Each factor is a geometric series, built by repeated multiplication from three
exponentials per channel-pixel (rounding grows by ~1e-16 per step: ~1e-15 after 15 steps, far
below any difference this reference is used to measure). Pixels are processed in chunks so
memory stays bounded whatever the grid.
"""

from __future__ import annotations

import math

import numpy as np
from vrclip.edge.config import SPEED_OF_LIGHT
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.grid import ImagingGrid
from vrclip.edge.imaging.imager import Imager

#: Bound on the complex128 temporaries of one pixel chunk.
CHUNK_BYTES = 64 * 1024 * 1024


def _cis(x: np.ndarray) -> np.ndarray:
    """exp(j x) for real x, without numpy's general complex exp."""
    out = np.empty(x.shape, np.complex128)
    np.cos(x, out=out.real)
    np.sin(x, out=out.imag)
    return out


def _geometric(first: np.ndarray, ratio: np.ndarray, n: int) -> np.ndarray:
    """(..., n) first * ratio**m for m = 0..n-1, by repeated multiplication."""
    out = np.empty((*first.shape, n), np.complex128)
    out[..., 0] = first
    for m in range(1, n):
        np.multiply(out[..., m - 1], ratio, out=out[..., m])
    return out


class ExactImager(Imager):
    name = "exact"

    def __init__(
        self, grid: ImagingGrid, geometry: ArrayGeometry, freqs_hz: np.ndarray, pad_factor: int
    ) -> None:
        super().__init__(grid, geometry, freqs_hz, pad_factor)
        self._points = grid.points().reshape(-1, 3)
        wavenumber = 2.0 * np.pi * self.layout.freqs_hz / SPEED_OF_LIGHT
        self._k0 = float(wavenumber[0])
        self._dk = float(wavenumber[1] - wavenumber[0])
        n = self.layout.points
        self._split = max(1, math.isqrt(n - 1) + 1)
        self._n_outer = -(-n // self._split)
        per_pixel = self.n_channels * (self._split + 2 * self._n_outer + 2) * 16
        self._chunk = max(1, CHUNK_BYTES // per_pixel)

    def image(self, s21: np.ndarray) -> np.ndarray:
        """float64 magnitude image of `grid.shape`."""
        self._check_input(s21)
        L, n_outer = self._split, self._n_outer
        weighted = np.zeros((self.n_channels, L * n_outer), np.complex128)
        weighted[:, : self.layout.points] = np.asarray(s21, dtype=np.complex128) * self.layout.window
        # (C, L, n_outer): column a holds the weights of sweep points L a .. L a + L - 1.
        coeffs = weighted.reshape(self.n_channels, n_outer, L).transpose(0, 2, 1)
        out = np.empty(len(self._points), np.float64)
        for start in range(0, len(self._points), self._chunk):
            path = self.geometry.path_lengths(self._points[start : start + self._chunk])  # (C, P)
            step = _cis(self._dk * path)
            near = _geometric(np.ones_like(step), step, L)  # (C, P, L): exp(j b dK R)
            far = _geometric(
                _cis(self._k0 * path), _cis(L * self._dk * path), n_outer
            )  # exp(j (K0 + L a dK) R)
            partial = np.matmul(near, coeffs)  # (C, P, n_outer)
            out[start : start + len(path[0])] = np.abs(np.einsum("cpa,cpa->p", far, partial))
        return out.reshape(self.grid.shape)
