"""The CuPy imager against the exact reference; runs only where CuPy sees a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.bench import simulated_frame
from vrclip.edge.imaging.imager import gpu_available, make_imager

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'vrclip-edge[gpu]')")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not gpu_available(), reason="CuPy sees no CUDA device"),
]


def _cfg(nx: int, ny: int, mode: str = "2d") -> EdgeConfig:
    cfg = EdgeConfig()
    cfg.imaging.nx, cfg.imaging.ny, cfg.imaging.mode = nx, ny, mode
    return cfg


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return simulated_frame(EdgeConfig())


@pytest.mark.parametrize(("nx", "ny", "mode"), [(64, 48, "2d"), (24, 20, "3d")])
def test_gpu_matches_exact_reference(
    geometry: ArrayGeometry, frame: np.ndarray, nx: int, ny: int, mode: str
) -> None:
    cfg = _cfg(nx, ny, mode)
    exact = make_imager(cfg, geometry, "exact").image(frame)
    # Pad 32 takes the interpolation error (not the GPU's float32) below 1e-4.
    gpu = make_imager(cfg, geometry, "gpu", pad_factor=32)
    image = gpu.image(frame)
    assert isinstance(image, cupy.ndarray) and image.dtype == cupy.float32
    assert image.shape == exact.shape
    assert _rel(gpu.to_numpy(image), exact) <= 1e-4


def test_gpu_agrees_with_fast_cpu_and_repeats_itself(geometry: ArrayGeometry, frame: np.ndarray) -> None:
    cfg = _cfg(128, 128)
    gpu = make_imager(cfg, geometry, "gpu", pad_factor=8)  # the CPU imager's padding: same mathematics
    with make_imager(cfg, geometry, "cpu", pad_factor=8) as cpu:
        reference = cpu.image(frame)
    first = gpu.to_numpy(gpu.image(frame))
    second = gpu.to_numpy(gpu.image(cupy.asarray(frame)))  # a device-resident input works too
    assert _rel(first, reference) <= 1e-5
    # The zero padding of the persistent spectrum buffer must survive a frame.
    np.testing.assert_array_equal(first, second)


def test_auto_picks_the_gpu(geometry: ArrayGeometry) -> None:
    assert make_imager(_cfg(16, 16), geometry, "auto").name == "gpu"


def test_default_gpu_imager_is_within_1e4_of_the_exact_reference(
    geometry: ArrayGeometry, frame: np.ndarray
) -> None:
    """The configured default (imaging.gpu_zero_pad_factor) meets the accuracy figure, 144x201 -> 128x128."""
    cfg = _cfg(128, 128)
    exact = make_imager(cfg, geometry, "exact").image(frame)
    gpu = make_imager(cfg, geometry, "gpu")
    assert _rel(gpu.to_numpy(gpu.image(frame)), exact) <= 1e-4
