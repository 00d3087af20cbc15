"""The GPU as the inference code sees it: CuPy (imported lazily), device arrays, and the GPU's identity.

A TensorRT engine is compiled for one TensorRT version and one GPU architecture (compute capability),
so both the builder (to record them) and the runtime (to refuse a foreign engine before TensorRT
fails on it with a less helpful message) need the GPU's name and compute capability. They come from
CuPy when it is installed (the TensorRT backend needs it anyway), else from cuda-python's
`cuda.bindings.runtime`. Nothing here imports either at module import time: the edge runtime runs on
CPU-only machines too.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vrclip.edge.errors import UserError

CUPY_MISSING = "CuPy is not installed: pip install 'vrclip-edge[gpu]' (cupy-cuda12x) on the GPU box"


class NoGpuError(UserError):
    """No CUDA device can be queried (no GPU, no driver, or neither CuPy nor cuda-python installed)."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    #: "major.minor", e.g. "8.9" (RTX 4090), "8.7" (Jetson Orin), "9.0" (H100).
    compute_capability: str
    device: int = 0


def import_cupy() -> ModuleType:
    """CuPy, or a UserError that says how to install it."""
    try:
        return importlib.import_module("cupy")
    except ImportError as e:
        raise UserError(f"{CUPY_MISSING} ({e})") from e


def is_device_array(x: Any) -> bool:
    """True for a CuPy array, decided without importing CuPy (so CPU-only boxes never pay for it)."""
    return type(x).__module__.split(".")[0] == "cupy"


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device `device`; NoGpuError says why it cannot be had."""
    reasons: list[str] = []
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as e:
        reasons.append(f"CuPy: {e}")
    else:
        try:
            props = cupy.cuda.runtime.getDeviceProperties(device)
            name = props["name"]
            name = name.decode(errors="replace") if isinstance(name, bytes | bytearray) else str(name)
            return GpuInfo(
                name.rstrip("\x00").strip(), f"{int(props['major'])}.{int(props['minor'])}", device
            )
        except Exception as e:  # CUDARuntimeError: no device, no driver
            reasons.append(f"CuPy: {e}")
    try:
        runtime = importlib.import_module("cuda.bindings.runtime")
    except ImportError as e:
        reasons.append(f"cuda-python: {e}")
    else:
        err, props = runtime.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = bytes(props.name).split(b"\x00", 1)[0].decode(errors="replace").strip()
            return GpuInfo(name, f"{int(props.major)}.{int(props.minor)}", device)
        reasons.append(f"cuda-python: cudaGetDeviceProperties({device}) -> {err}")
    raise NoGpuError(f"no CUDA GPU {device} can be queried ({'; '.join(reasons)})")
