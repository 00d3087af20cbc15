"""GPU back-projection with CuPy: cuFFT range profiles and one RawKernel thread per pixel.

Same mathematics as the CPU imager (see `profiles`), laid out for a GPU:

1. The frame goes to the device; a small kernel multiplies it by the (pre-emphasised) Hann
   window and writes it, centred on the reference sweep point, into a persistent zero-padded
   (channels, N) buffer. Only those `points` columns are ever written, so the padding stays zero.
2. cuFFT: a batched C2C inverse transform along the rows (CuPy caches the plan).
3. The back-projection kernel: thread p loops over the channels and reads, for its pixel, the
   precomputed bin index, interpolation fraction and carrier phase. Tables are channel-major
   (C, P), so the 32 threads of a warp read 32 consecutive entries (coalesced); the profiles are
   channel-major (C, N) and neighbouring pixels hit neighbouring bins, so those reads stay in L1/L2.
   Accumulation is float32 over 144 terms (~1e-6 relative).

Why tables rather than computing |p - tx| + |p - rx| in the kernel: the carrier phase
2 pi f_ref R / c runs to ~1000 rad, and float32 R would put ~1e-4 rad of error on it. The tables
are computed in float64 on the host, once (16 B per channel-pixel: 38 MB for 144 x 128^2), and
read at ~3 TB/s on an H100 they cost ~15 us a frame.

The image is returned as a CuPy float32 array on the device (ready to hand to TensorRT);
`to_numpy` copies it back. Kernels are compiled once per process (NVRTC, cached by CuPy).
CuPy is imported lazily: this module is importable, but not usable, without it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.grid import ImagingGrid
from vrclip.edge.imaging.imager import Imager, check_table_memory
from vrclip.edge.imaging.profiles import ProfileLayout

#: Threads per block of the back-projection kernel: 128 gives 128 blocks for a 128^2 image,
#: about one per SM on an H100 (132 SMs), so every SM has work.
BLOCK = 128
#: Pixels per host chunk while the tables are built (bounds float64 temporaries).
BUILD_CHUNK = 4096
#: Bytes of the tables per channel and pixel: int32 bin, float32 fraction, complex64 carrier.
TABLE_BYTES = 4 + 4 + 8

KERNEL_SOURCE = r"""
extern "C" {

// Window the frame and lay it out around index 0 of a zero-padded row (spectrum[c, (k - k_ref) mod N]).
__global__ void place_spectrum(const float2* __restrict__ s21, const float* __restrict__ weights,
                               float2* __restrict__ spectrum, const int n_channels, const int n_points,
                               const int n_fft, const int k_ref)
{
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    const int c = blockIdx.y;
    if (k >= n_points || c >= n_channels) return;
    const float2 v = s21[(size_t)c * n_points + k];
    const float w = weights[k];
    int dst = k - k_ref;
    if (dst < 0) dst += n_fft;
    spectrum[(size_t)c * n_fft + dst] = make_float2(v.x * w, v.y * w);
}

// One thread per pixel: sum over channels of carrier * linearly interpolated profile, then |.|.
__global__ void backproject(const float2* __restrict__ profiles, const int* __restrict__ bins,
                            const float* __restrict__ fracs, const float2* __restrict__ carriers,
                            float* __restrict__ image, const int n_channels, const int n_fft,
                            const int n_pixels)
{
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    float re = 0.0f;
    float im = 0.0f;
#pragma unroll 4
    for (int c = 0; c < n_channels; ++c) {
        const size_t k = (size_t)c * n_pixels + p;
        const int i = bins[k];
        const float t = fracs[k];
        const float2* row = profiles + (size_t)c * n_fft;
        const float2 a = row[i];
        const float2 b = row[i + 1];
        const float gr = fmaf(t, b.x - a.x, a.x);
        const float gi = fmaf(t, b.y - a.y, a.y);
        const float2 e = carriers[k];
        re = fmaf(gr, e.x, fmaf(-gi, e.y, re));
        im = fmaf(gr, e.y, fmaf(gi, e.x, im));
    }
    image[p] = sqrtf(re * re + im * im);
}

}
"""


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """Compile once per process (CuPy also caches the binary on disk across processes)."""
    import cupy

    module = cupy.RawModule(code=KERNEL_SOURCE, options=("--std=c++14",))
    return module.get_function("place_spectrum"), module.get_function("backproject")


def backprojection_tables(
    grid: ImagingGrid, geometry: ArrayGeometry, layout: ProfileLayout, *, shared_memory: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Channel-major (C, P) kernel tables: bin index (int32), fraction (float32), carrier (complex64).

    Pure numpy, so their construction is tested without a GPU. They are built on the host first;
    `shared_memory`: the GPU they are copied to shares the host's memory (a Jetson), so both copies
    count against it while they are uploaded.
    """
    check_table_memory("gpu", grid, geometry.n_channels, TABLE_BYTES, copies=2 if shared_memory else 1)
    points = grid.points().reshape(-1, 3)
    n_pix, n_ch = len(points), geometry.n_channels
    bins = np.empty((n_ch, n_pix), np.int32)
    fracs = np.empty((n_ch, n_pix), np.float32)
    carriers = np.empty((n_ch, n_pix), np.complex64)
    for start in range(0, n_pix, BUILD_CHUNK):
        path = geometry.path_lengths(points[start : start + BUILD_CHUNK])  # (C, P) float64
        layout.check_reach(path, "imaging grid")
        pos = layout.bin_positions(path)
        left = np.floor(pos)
        stop = start + path.shape[1]
        bins[:, start:stop] = left
        fracs[:, start:stop] = pos - left
        carriers[:, start:stop] = layout.carrier(path)
    return bins, fracs, carriers


def integrated_gpu(cupy: Any) -> bool:
    """True when the current CUDA device shares the host's memory (a Jetson's integrated GPU)."""
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return bool(props.get("integrated", 0))
    except Exception:  # a driver that cannot say: count the tables once, as on a discrete GPU
        return False


class GpuImager(Imager):
    name = "gpu"

    def __init__(
        self, grid: ImagingGrid, geometry: ArrayGeometry, freqs_hz: np.ndarray, pad_factor: int
    ) -> None:
        import cupy

        super().__init__(grid, geometry, freqs_hz, pad_factor)
        self._cp = cupy
        bins, fracs, carriers = backprojection_tables(
            grid, geometry, self.layout, shared_memory=integrated_gpu(cupy)
        )
        n_pix, n_ch = bins.shape[1], self.n_channels
        self._bins = cupy.asarray(bins)
        self._fracs = cupy.asarray(fracs)
        self._carriers = cupy.asarray(carriers)
        self._weights = cupy.asarray(self.layout.fft_weights.astype(np.float32))
        self._spectrum = cupy.zeros((n_ch, self.layout.n_fft), cupy.complex64)
        self._place, self._backproject = _kernels()
        self._n_pixels = n_pix

    def image(self, s21: Any) -> Any:
        """float32 CuPy magnitude image of `grid.shape`, on the device (the work may still be queued)."""
        cp = self._cp
        self._check_input(s21)
        frame = cp.ascontiguousarray(cp.asarray(s21, dtype=cp.complex64))
        n_ch, n_pts = self.input_shape
        n_fft = self.layout.n_fft
        self._place(
            ((n_pts + 255) // 256, n_ch),
            (256,),
            (frame, self._weights, self._spectrum, np.int32(n_ch), np.int32(n_pts), np.int32(n_fft),
             np.int32(self.layout.k_ref)),
        )  # fmt: skip
        # Out of place: the spectrum buffer's zero padding must survive for the next frame.
        # ifft divides by N; the weights carry the factor N back (see ProfileLayout.build).
        profiles = cp.ascontiguousarray(cp.fft.ifft(self._spectrum, axis=1))
        out = cp.empty(self._n_pixels, cp.float32)
        self._backproject(
            ((self._n_pixels + BLOCK - 1) // BLOCK,),
            (BLOCK,),
            (profiles, self._bins, self._fracs, self._carriers, out, np.int32(n_ch), np.int32(n_fft),
             np.int32(self._n_pixels)),
        )  # fmt: skip
        return out.reshape(self.grid.shape)

    def to_numpy(self, image: Any) -> np.ndarray:
        return self._cp.asnumpy(image)

    def synchronize(self) -> None:
        self._cp.cuda.get_current_stream().synchronize()

    def close(self) -> None:
        # Dropping the references returns the tables to CuPy's pool for the next user.
        self._bins = self._fracs = self._carriers = self._spectrum = None  # type: ignore[assignment]
