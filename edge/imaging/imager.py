"""One interface, three back-projection implementations, and the factory that picks one.

- ``exact``: the frequency-domain sum in float64 numpy; slow, the reference the others are
  measured against (see `profiles` for the sum).
- ``cpu``: zero-padded IFFT + linear interpolation + carrier phase as one precomputed sparse
  matrix (SciPy CSR), applied in row blocks on a few threads.
- ``gpu``: the same on CuPy: cuFFT and one RawKernel thread per pixel; the image stays on the
  device, ready for the next GPU stage.

Every imager takes a *conditioned* frame (calibrated, clutter removed; see `pipeline`) of shape
(channels, points) and returns the magnitude image of `grid.shape`: (ny, nx) in 2D, (nz, ny, nx)
in 3D. The input sweep and the grid are fixed at construction, because all the geometry work
(path lengths, bins, weights, phases) is done once there.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.grid import ImagingGrid
from vrclip.edge.imaging.profiles import ProfileLayout

IMPLEMENTATIONS: tuple[str, ...] = ("exact", "cpu", "gpu")
#: Most of the machine's memory the fast imagers' per channel-pixel tables may take: the engine,
#: the camera frames and the rest of the box need the other half.
MAX_TABLE_SHARE = 0.5


class Imager(ABC):
    """Back-projection of one conditioned radar frame onto a fixed grid."""

    #: "exact", "cpu" or "gpu": what the benchmark and logs call this implementation.
    name: ClassVar[str]

    def __init__(
        self, grid: ImagingGrid, geometry: ArrayGeometry, freqs_hz: np.ndarray, pad_factor: int
    ) -> None:
        self.grid = grid
        self.geometry = geometry
        #: IFFT length as a multiple of the sweep points (what `make_imager` chose for this imager).
        self.pad_factor = pad_factor
        self.layout = ProfileLayout.build(freqs_hz, pad_factor)
        self.n_channels = geometry.n_channels

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.n_channels, self.layout.points)

    @abstractmethod
    def image(self, s21: Any) -> Any:
        """Magnitude image of `grid.shape` (numpy, or a CuPy array for the GPU imager)."""

    def to_numpy(self, image: Any) -> np.ndarray:
        """The image as a host numpy array (a copy only where it lives on a device)."""
        return np.asarray(image)

    def synchronize(self) -> None:  # noqa: B027 - a no-op for the synchronous CPU imagers
        """Wait until queued work is done (GPU); timing code calls it before reading the clock."""

    def close(self) -> None:  # noqa: B027 - only imagers that hold threads or device memory override it
        """Release threads or device memory; the imager is unusable afterwards."""

    def __enter__(self) -> Imager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_input(self, s21: Any) -> None:
        if tuple(s21.shape) != self.input_shape:
            raise ValueError(
                f"{self.name} imager: frame has shape {tuple(s21.shape)}, expected {self.input_shape} "
                "(channels, sweep points) as configured"
            )


def physical_memory_bytes() -> int | None:
    """This machine's RAM (on a Jetson also the GPU's), or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_table_memory(
    impl: str, grid: ImagingGrid, n_channels: int, bytes_per_entry: int, *, copies: int = 1
) -> None:
    """Refuse, before allocating, a grid whose precomputed tables would not fit in memory.

    The tables grow with pixels x channels, and the config lets the grid reach 2048 x 2048 (and
    3D adds a plane per `imaging.z_levels_m`): past the machine's memory that was a MemoryError
    traceback, or an OOM kill without a word, when the runtime started. `copies`: how many copies
    of the tables this memory holds at once (2 for the GPU imager on a Jetson, whose GPU shares
    the host's memory: the tables are built on the host and copied to the device).
    """
    need = grid.n_pixels * n_channels * bytes_per_entry * copies
    total = physical_memory_bytes()
    if total is None or need <= MAX_TABLE_SHARE * total:
        return
    held = "" if copies == 1 else " (built on the host, then copied to the GPU, which shares this memory)"
    raise ConfigError(
        f"imaging grid {grid.label} x {n_channels} channels: the {impl} imager's tables need "
        f"{need / 1e6:,.0f} MB{held}, more than {MAX_TABLE_SHARE:.0%} of this machine's "
        f"{total / 1e6:,.0f} MB; lower imaging.nx and imaging.ny, or list fewer imaging.z_levels_m in 3D mode"
    )


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device (never raises)."""
    try:
        import cupy
    except Exception:
        return False
    try:
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def resolve_impl(impl: str) -> str:
    """'auto' -> 'gpu' when a CUDA device is usable, else 'cpu'; others are checked and returned."""
    if impl == "auto":
        return "gpu" if gpu_available() else "cpu"
    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"imaging.impl = {impl!r}: must be one of auto, {', '.join(IMPLEMENTATIONS)}")
    if impl == "gpu" and not gpu_available():
        raise ConfigError(
            "imaging.impl = 'gpu' but no usable CUDA device was found (CuPy missing: install the gpu extra, "
            "`pip install 'vrclip-edge[gpu]'`; or no GPU / driver); set imaging.impl = 'auto' or 'cpu'"
        )
    return impl


def make_imager(
    cfg: EdgeConfig,
    geometry: ArrayGeometry,
    impl: str | None = None,
    *,
    grid: ImagingGrid | None = None,
    height_m: float | None = None,
    pad_factor: int | None = None,
    threads: int | None = None,
) -> Imager:
    """The imager `cfg.imaging` describes, for `geometry` and the configured sweep.

    impl overrides `cfg.imaging.impl`; grid overrides the grid from the config (height_m sets the
    2D plane's height, default `imaging.height_m`); pad_factor overrides
    `imaging.zero_pad_factor` (`imaging.gpu_zero_pad_factor` for the GPU imager); threads bounds
    the CPU imager's worker threads.
    """
    which = resolve_impl(impl or cfg.imaging.impl)
    grid = grid or ImagingGrid.from_config(cfg, height_m=height_m)
    sweep = cfg.radar.sweep
    # The VNA's frequency points, as the instrument steps them (same as the simulator's).
    freqs = np.linspace(sweep.start_hz, sweep.stop_hz, sweep.points)
    pad = pad_factor or (cfg.imaging.gpu_zero_pad_factor if which == "gpu" else cfg.imaging.zero_pad_factor)
    if which == "exact":
        from vrclip.edge.imaging.exact import ExactImager

        return ExactImager(grid, geometry, freqs, pad)
    if which == "cpu":
        from vrclip.edge.imaging.cpu import CpuImager

        return CpuImager(grid, geometry, freqs, pad, threads=threads)
    from vrclip.edge.imaging.gpu import GpuImager

    return GpuImager(grid, geometry, freqs, pad)
