"""A numpy-backed stand-in for the part of CuPy the inference code uses, for machines without a GPU.

"Device memory" is host memory owned by this module: every allocation is registered (base address,
size) while alive, 256-byte aligned like cudaMalloc's, and the fake TensorRT refuses any address that
is not inside a live allocation, the way a real GPU faults on a host pointer. So a backend that hands
TensorRT a numpy pointer, a freed buffer or a misaligned slice fails here as it would on the box.

Faithful in: `ndarray` (shape, dtype, strides, flags, `.data.ptr`, `get`, `set`, `copy`, `astype`,
slicing views that share memory), the refusal of implicit conversion to numpy (`np.asarray(x)` raises
TypeError as in CuPy, so a hidden host copy is caught), `asarray`/`ascontiguousarray`/`empty`/
`zeros`/`concatenate`/`asnumpy`, `cuda.Stream`/`Event`/`Device`/`get_current_stream` and
`cuda.runtime.getDeviceProperties`.

Not modelled: asynchrony (every operation completes at once; streams and events only keep the call
pattern honest), arithmetic on arrays, memory pools, multiple devices, kernels, FFT.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from . import cuda

__version__ = "13.0.0+fake"
ALIGNMENT = 256

#: base address -> size in bytes of every live allocation (what the fake TensorRT checks against).
_LIVE: dict[int, int] = {}


def _fake_is_device_range(ptr: int, nbytes: int) -> bool:
    """True if [ptr, ptr + nbytes) lies inside one live allocation."""
    return any(base <= ptr and ptr + nbytes <= base + size for base, size in _LIVE.items())


class MemoryPointer:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __int__(self) -> int:
        return self.ptr


class ndarray:
    """A device array: a numpy view into a registered allocation (kept alive by `_owner`)."""

    __array_priority__ = 100

    def __init__(self, view: np.ndarray, owner: np.ndarray) -> None:
        self._a = view
        self._owner = owner

    # description -----------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    itemsize = property(lambda self: self._a.itemsize)

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(int(self._a.__array_interface__["data"][0]))

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"fake_cupy.ndarray(shape={self.shape}, dtype={self.dtype})"

    # conversions -----------------------------------------------------------
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    def get(self, stream: Any = None, order: str = "C", out: np.ndarray | None = None, blocking: bool = True):
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        if isinstance(arr, ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        arr = np.asarray(arr)
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if arr.dtype != self.dtype:
            raise TypeError(f"Dtype mismatch. Old dtype: {self.dtype}, new dtype: {arr.dtype}")
        if not self._a.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        self._a[...] = arr

    def copy(self, order: str = "C") -> ndarray:
        return _from_host(self._a)

    def astype(self, dtype: Any, copy: bool = True) -> ndarray:
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _from_host(self._a.astype(dtype))

    def reshape(self, *shape: Any) -> ndarray:
        return ndarray(self._a.reshape(*shape), self._owner)

    def __getitem__(self, key: Any) -> ndarray:
        view = self._a[key]
        if not isinstance(view, np.ndarray):  # a scalar: CuPy returns a 0-d device array
            return _from_host(np.asarray(view))
        return ndarray(view, self._owner)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, ndarray):
            value = value._a
        elif isinstance(value, np.ndarray):
            raise TypeError("cannot assign a numpy.ndarray to a cupy.ndarray slice; use cupy.asarray")
        self._a[key] = value


def _alloc(shape: Any, dtype: Any) -> ndarray:
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(max(nbytes, 1) + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    base = raw[offset : offset + max(nbytes, 1)]
    ptr = int(base.ctypes.data)
    _LIVE[ptr] = max(nbytes, 1)
    weakref.finalize(raw, _LIVE.pop, ptr, None)
    view = base[:nbytes].view(dtype).reshape(shape)
    return ndarray(view, raw)


def _from_host(a: np.ndarray) -> ndarray:
    out = _alloc(a.shape, a.dtype)
    out._a[...] = a
    return out


def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return _alloc(shape, dtype)


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    out = _alloc(shape, dtype)
    out._a[...] = 0
    return out


def asarray(a: Any, dtype: Any = None, order: str | None = None) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return _from_host(np.asarray(a, dtype=dtype))


def array(a: Any, dtype: Any = None, copy: bool = True) -> ndarray:
    if isinstance(a, ndarray):
        return a.astype(dtype or a.dtype) if copy or dtype else a
    return _from_host(np.array(a, dtype=dtype))


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    a = asarray(a, dtype)
    if a._a.flags.c_contiguous:
        return a
    return _from_host(np.ascontiguousarray(a._a))


def asnumpy(a: Any, stream: Any = None) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def concatenate(arrays: Any, axis: int = 0) -> ndarray:
    parts = []
    for a in arrays:
        if not isinstance(a, ndarray):
            raise TypeError("Only cupy arrays can be concatenated")
        parts.append(a._a)
    return _from_host(np.concatenate(parts, axis=axis))


def get_array_module(*args: Any) -> Any:
    import sys

    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


__all__ = [
    "array",
    "asarray",
    "ascontiguousarray",
    "asnumpy",
    "concatenate",
    "cuda",
    "empty",
    "get_array_module",
    "ndarray",
    "zeros",
]
