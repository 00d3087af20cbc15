"""TensorRT backend: a serialized engine run with the name-based tensor API on a CUDA stream.

Per chunk: `set_input_shape` and `set_tensor_address` for every input, `set_tensor_address` for every
output, then `execute_async_v3(stream)`. Device memory comes from CuPy, which the imaging code already
uses, so a radar image or an RF window produced on the GPU goes into the engine without visiting the
host: CuPy feeds are bound by their device pointer (converted on the device only if their dtype or
layout differ) and the outputs then come back as CuPy arrays too. numpy feeds are copied into
persistent device buffers sized for the engine's maximum batch, and outputs come back as numpy.

The engine's own stream waits (by a CUDA event) for whatever the caller queued on its current stream,
so feeds still being written by an imaging kernel are complete before TensorRT reads them.

TensorRT and CuPy are imported when a backend is created, never at module import: CPU-only machines
import this module fine and simply cannot instantiate the class.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from vrclip.edge.errors import UserError
from vrclip.edge.inference.base import EngineMismatchError, FoundTensor, InferenceBackend, io_problems
from vrclip.edge.inference.device import import_cupy, is_device_array
from vrclip.edge.manifest import EngineManifest

#: TensorRT requires every tensor address to be 256-byte aligned (cudaMalloc's alignment).
log = logging.getLogger(__name__)

TENSOR_ALIGNMENT = 256
TRT_MISSING = "TensorRT is not installed: pip install 'vrclip-edge[trt]' on the GPU box"


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or a UserError that says how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise UserError(f"{TRT_MISSING} ({e})") from e


def trt_major(trt: ModuleType) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError) as e:
        raise UserError(f"cannot tell the TensorRT version ({getattr(trt, '__version__', None)!r})") from e


def trt_dtype_name(trt: ModuleType, dtype: Any) -> str:
    """TensorRT DataType -> manifest dtype name ("float32", ...); types numpy lacks keep TensorRT's name."""
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:
        return str(dtype)


def describe_engine_io(trt: ModuleType, engine: Any) -> tuple[list[FoundTensor], list[FoundTensor]]:
    """The engine's I/O tensors as (name, shape with None for dynamic axes, dtype), inputs then outputs."""
    inputs: list[FoundTensor] = []
    outputs: list[FoundTensor] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        shape = tuple(None if int(d) < 0 else int(d) for d in engine.get_tensor_shape(name))
        found = (name, shape, trt_dtype_name(trt, engine.get_tensor_dtype(name)))
        if mode == trt.TensorIOMode.INPUT:
            inputs.append(found)
        elif mode == trt.TensorIOMode.OUTPUT:
            outputs.append(found)
    return inputs, outputs


def engine_max_batch(engine: Any, input_names: Sequence[str]) -> int:
    """Largest batch every input's optimisation profile 0 admits."""
    limits = []
    for name in input_names:
        _, _, high = engine.get_tensor_profile_shape(name, 0)
        limits.append(int(next(iter(high))))
    return min(limits)


class TensorRTBackend(InferenceBackend):
    kind = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        manifest: EngineManifest,
        *,
        max_batch: int | None = None,
        rebuild_hint: str = "",
        log_severity: str = "WARNING",
    ) -> None:
        engine_path = Path(engine_path)
        trt = import_tensorrt()
        cp = import_cupy()
        hint = rebuild_hint or manifest.rebuild_command(engine_path.with_suffix(".onnx").name)
        logger = trt.Logger(getattr(trt.Logger, log_severity))
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise EngineMismatchError(
                f"{engine_path}: TensorRT {trt.__version__} could not load this engine (its log above says "
                f"why: usually another TensorRT version or GPU); rebuild it on this box: {hint}"
            )
        found_in, found_out = describe_engine_io(trt, engine)
        problems = io_problems("input", manifest.inputs, found_in) + io_problems(
            "output", manifest.outputs, found_out
        )
        if problems:
            raise EngineMismatchError(
                f"{engine_path} does not match its manifest: {'; '.join(problems)}; rebuild it: {hint}"
            )
        profile_max = engine_max_batch(engine, [s.name for s in manifest.inputs])
        limit = max_batch or (manifest.tensorrt.max_batch if manifest.tensorrt else profile_max)
        if limit > profile_max:
            raise EngineMismatchError(
                f"{engine_path}: asked for batches of {limit} but the engine's profile stops at "
                f"{profile_max}; "
                f"rebuild it with a larger --max-batch: {hint}"
            )
        super().__init__(manifest, engine_path, limit)
        context = engine.create_execution_context()
        if context is None:
            raise UserError(
                f"{engine_path}: TensorRT could not create an execution context (GPU out of memory?)"
            )
        self._trt, self._cp = trt, cp
        self._logger, self._runtime, self._engine, self._context = logger, runtime, engine, context
        self._dtypes = {
            s.name: np.dtype(trt.nptype(engine.get_tensor_dtype(s.name)))
            for s in (*manifest.inputs, *manifest.outputs)
        }
        self._stream = cp.cuda.Stream(non_blocking=True)
        with self._stream:
            self._in_bufs = {s.name: cp.empty(s.concrete(limit), self._dtypes[s.name]) for s in self.inputs}
            self._out_bufs = {s.name: cp.empty(s.concrete(limit), self._dtypes[s.name]) for s in self.outputs}
        self._stream.synchronize()

    @property
    def tensorrt_version(self) -> str:
        return str(self._trt.__version__)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt": self.tensorrt_version}

    def _run(self, feeds: dict[str, Any], batch: int) -> dict[str, Any]:
        cp, ctx, stream = self._cp, self._context, self._stream
        device_out = any(is_device_array(x) for x in feeds.values())
        keep_alive = []  # device arrays bound to the context must outlive the launch
        stream.wait_event(cp.cuda.get_current_stream().record())
        with stream:
            for spec in self.inputs:
                x = feeds[spec.name]
                dtype = self._dtypes[spec.name]
                if is_device_array(x):
                    dev = cp.ascontiguousarray(x, dtype=dtype)  # a no-op for a contiguous, typed array
                    if int(dev.data.ptr) % TENSOR_ALIGNMENT:
                        # A slice into a larger array (a chunk, or a small per-sample tensor) may start
                        # off the alignment TensorRT requires: stage it, device to device.
                        staged = self._in_bufs[spec.name][:batch]
                        staged[...] = dev
                        dev = staged
                else:
                    dev = self._in_bufs[spec.name][:batch]
                    dev.set(np.ascontiguousarray(x, dtype=dtype), stream=stream)
                keep_alive.append(dev)
                if not ctx.set_input_shape(spec.name, tuple(dev.shape)):
                    raise RuntimeError(f"TensorRT refused input shape {tuple(dev.shape)} for {spec.name!r}")
                if not ctx.set_tensor_address(spec.name, int(dev.data.ptr)):
                    raise RuntimeError(f"TensorRT refused the device address of input {spec.name!r}")
            for spec in self.outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
                if shape != spec.concrete(batch):
                    raise RuntimeError(
                        f"TensorRT reports output {spec.name!r} of shape {shape}, "
                        f"expected {spec.concrete(batch)}"
                    )
                if not ctx.set_tensor_address(spec.name, int(self._out_bufs[spec.name].data.ptr)):
                    raise RuntimeError(f"TensorRT refused the device address of output {spec.name!r}")
            if not ctx.execute_async_v3(stream.ptr):
                raise RuntimeError(
                    f"TensorRT execute_async_v3 failed on {self.source} (see the TensorRT log)"
                )
            if device_out:
                # Copies, not views: the persistent buffers are overwritten by the next call.
                result = {s.name: self._out_bufs[s.name][:batch].copy() for s in self.outputs}
        stream.synchronize()
        del keep_alive
        if device_out:
            return result
        return {s.name: self._out_bufs[s.name][:batch].get(stream=stream) for s in self.outputs}

    def _concatenate(self, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        first = parts[0][self.outputs[0].name]
        if is_device_array(first):
            return {o.name: self._cp.concatenate([p[o.name] for p in parts], axis=0) for o in self.outputs}
        return super()._concatenate(parts)

    def _release(self) -> None:
        # Work still queued on the stream (a copy out of the buffers) finishes before anything it uses
        # is freed; then context before engine before runtime: TensorRT objects must die in reverse
        # order of creation; the stream goes last.
        # After a sticky CUDA error the synchronise itself raises: close() must still let everything
        # go (and not replace the error that brought the run down), so that is logged, not raised.
        try:
            if self._stream is not None:
                self._stream.synchronize()
        except Exception as exc:
            log.warning("TensorRT backend: stream synchronise failed while closing (%s)", exc)
        finally:
            self._context = None
            self._engine = None
            self._runtime = None
            self._in_bufs = {}
            self._out_bufs = {}
            self._stream = None
