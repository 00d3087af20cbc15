"""Window + zero-padded IFFT: from a sweep of S21 to a finely sampled range profile per channel.

The image every implementation approximates is the frequency-domain back-projection sum

    I(p) = | sum_c sum_k w_k S(c, k) exp(+j 2 pi f_k R_c(p) / c) |          (the "exact" image)

with w a Hann window and R_c(p) the bistatic path length of channel c to pixel p. Write
f_k = f_ref + (k - k_ref) df with k_ref the middle sweep point. Then

    sum_k w_k S_k exp(j 2 pi f_k R / c) = exp(j 2 pi f_ref R / c) * g(R),
    g(R) = sum_k w_k S_k exp(j 2 pi (k - k_ref) df R / c),

and g sampled at R_m = m c / (N df) is exactly an N-point IFFT of the window-weighted sweep laid
out around index 0 (the "baseband" range profile). Back-projection then only needs g between its
samples (linear interpolation) and the carrier phase exp(+j 2 pi f_ref R / c).

Two choices keep the interpolation close to the exact sum (relative L2 ~3e-4 at the default
zero-pad factor of 8, ~9e-5 at 16, measured on a simulated scene at 144 x 201 -> 128 x 128):

- Baseband around the *middle* of the sweep: g then turns at most B/2 cycles per unit delay
  instead of B, which quarters the linear-interpolation error.
- Pre-emphasis: linear interpolation averaged over the sample phase is a convolution with a
  triangle, i.e. it multiplies spectral line k by sinc^2((k - k_ref)/N). Dividing the window by
  that (a fixed, known droop, below 1.3 % at pad 8) cancels its mean; what remains is the part
  that varies with the sample phase, about 2.5x smaller.

N is the smallest 5-smooth length >= pad * points (FFT speed: 1608 = 8 * 201 has a factor 67 and
runs ~3x slower than 1620).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vrclip.edge.config import SPEED_OF_LIGHT
from vrclip.edge.errors import ConfigError


def next_fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (the lengths every FFT library handles fastest)."""
    best = None
    p5 = 1
    while p5 < 2 * n:
        p35 = p5
        while p35 < 2 * n:
            p = p35
            while p < n:
                p *= 2
            if best is None or p < best:
                best = p
            p35 *= 3
        p5 *= 5
    return int(best if best is not None else n)


def hann(points: int) -> np.ndarray:
    """Hann window without its zero end points (np.hanning(n+2)[1:-1]): no sweep point is wasted."""
    return np.hanning(points + 2)[1:-1]


@dataclass(frozen=True)
class ProfileLayout:
    """How one sweep maps to range profiles; shared by the CPU and GPU imagers and the reference."""

    freqs_hz: np.ndarray
    #: (points,) Hann window: the weights of the exact sum.
    window: np.ndarray
    #: (points,) float64 window * pre-emphasis * N: what multiplies S21 before the IFFT.
    fft_weights: np.ndarray
    #: IFFT length.
    n_fft: int
    #: Index of the sweep point used as the carrier reference.
    k_ref: int

    @classmethod
    def build(cls, freqs_hz: np.ndarray, pad_factor: int) -> ProfileLayout:
        f = np.asarray(freqs_hz, dtype=np.float64)
        if f.ndim != 1 or f.size < 2:
            raise ValueError(f"a sweep needs at least two frequency points, got shape {f.shape}")
        steps = np.diff(f)
        if not (np.all(steps > 0) and np.allclose(steps, steps[0], rtol=1e-6, atol=0.0)):
            raise ValueError(
                "the IFFT imagers need a uniformly stepped sweep (SFCW); got uneven frequency steps"
            )
        if pad_factor < 1:
            raise ValueError(f"imaging.zero_pad_factor = {pad_factor}: must be >= 1")
        points = f.size
        n_fft = next_fast_length(pad_factor * points)
        k_ref = points // 2
        window = hann(points)
        droop = np.sinc((np.arange(points) - k_ref) / n_fft) ** 2
        return cls(f, window, window / droop * n_fft, n_fft, k_ref)

    @property
    def points(self) -> int:
        return int(self.freqs_hz.size)

    @property
    def step_hz(self) -> float:
        return float(self.freqs_hz[1] - self.freqs_hz[0])

    @property
    def f_ref_hz(self) -> float:
        return float(self.freqs_hz[self.k_ref])

    @property
    def bin_m(self) -> float:
        """Bistatic path length per profile sample: c / (N df)."""
        return SPEED_OF_LIGHT / (self.n_fft * self.step_hz)

    @property
    def unambiguous_m(self) -> float:
        """Bistatic path length after which the profile repeats: c / df."""
        return SPEED_OF_LIGHT / self.step_hz

    def profiles(self, s21: np.ndarray, workers: int = 1) -> np.ndarray:
        """(channels, N) complex64 baseband range profiles of a conditioned frame (channels, points)."""
        import scipy.fft

        x = np.asarray(s21)
        buf = np.zeros((x.shape[0], self.n_fft), np.complex64)
        weighted = x * self.fft_weights.astype(np.float32)
        k = self.k_ref
        buf[:, : self.points - k] = weighted[:, k:]
        buf[:, self.n_fft - k :] = weighted[:, :k]
        return scipy.fft.ifft(buf, axis=1, overwrite_x=True, workers=workers)

    def bin_positions(self, path_m: np.ndarray) -> np.ndarray:
        """Fractional profile index of each path length (float64)."""
        return np.asarray(path_m, dtype=np.float64) / self.bin_m

    def carrier(self, path_m: np.ndarray) -> np.ndarray:
        """exp(+j 2 pi f_ref R / c), complex128, computed in float64 (phases run to ~1000 rad)."""
        cycles = np.asarray(path_m, dtype=np.float64) * (self.f_ref_hz / SPEED_OF_LIGHT)
        return np.exp(2j * np.pi * (cycles - np.floor(cycles)))

    def check_reach(self, path_m: np.ndarray, where: str) -> None:
        """Refuse a grid whose path lengths alias: the profile repeats every c/df of path length."""
        longest = float(np.max(path_m))
        limit = self.unambiguous_m - 2 * self.bin_m
        if longest >= limit:
            raise ConfigError(
                f"{where}: the longest Tx->pixel->Rx path is {longest:.2f} m but the sweep step "
                f"{self.step_hz / 1e6:.3g} MHz only resolves paths up to {limit:.2f} m; "
                "use more sweep points (radar.sweep.points) or a smaller room"
            )
