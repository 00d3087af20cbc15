"""ONNX Runtime backend: the CPU path (dev machines, CI, a box without TensorRT) and CUDA when present.

The same ONNX the TensorRT engine is built from runs here, so a package works on any machine, and the
INT8 Q/DQ model's accuracy can be checked without a GPU. ONNX Runtime is imported lazily: an edge box
that only ever runs TensorRT does not need it.

CuPy arrays are accepted as feeds but copied to the host (`.get()`): ONNX Runtime's plain `run` API
takes host memory. That copy is the price of the fallback path, not of the TensorRT path.

An int8-cpu package (`vrclip-export quantize --variant cpu`) is run one sample at a time: its dynamic
INT8 MatMuls compute one activation scale per tensor over the whole batch (DynamicQuantizeLinear),
so in a batch one track's embedding would depend on the other tracks in the frame. Its `max_batch`
is therefore 1 whatever the manifest or the caller asks; `infer` still takes any batch and runs it
sample by sample.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from vrclip.edge.errors import UserError
from vrclip.edge.inference.base import EngineMismatchError, FoundTensor, InferenceBackend, io_problems
from vrclip.edge.inference.device import is_device_array
from vrclip.edge.manifest import EngineManifest

ORT_MISSING = "ONNX Runtime is not installed: pip install onnxruntime (or onnxruntime-gpu)"

#: ONNX Runtime's type strings -> manifest dtypes.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


#: Precisions run one sample at a time (see the module docstring).
PER_SAMPLE_PRECISIONS = ("int8-cpu",)


def runs_per_sample(precision: str) -> bool:
    """Whether a package of this manifest precision is run one sample at a time."""
    return precision in PER_SAMPLE_PRECISIONS


def import_onnxruntime() -> ModuleType:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise UserError(f"{ORT_MISSING} ({e})") from e


def default_providers(ort: ModuleType) -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always (ONNX Runtime falls back per node)."""
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def describe_session_io(session: Any) -> tuple[list[FoundTensor], list[FoundTensor]]:
    """Inputs and outputs of an ONNX Runtime session as (name, shape (None = dynamic), dtype)."""

    def one(arg: Any) -> FoundTensor:
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
        return arg.name, shape, ORT_DTYPES.get(arg.type, arg.type)

    return [one(a) for a in session.get_inputs()], [one(a) for a in session.get_outputs()]


class OnnxRuntimeBackend(InferenceBackend):
    kind = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        manifest: EngineManifest,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        """`max_batch`: largest chunk run at once (default the manifest's; always 1 for int8-cpu)."""
        onnx_path = Path(onnx_path)
        limit = 1 if runs_per_sample(manifest.precision) else (max_batch or manifest.max_batch)
        super().__init__(manifest, onnx_path, limit)
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        chosen = list(providers) if providers else default_providers(ort)
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
            raise EngineMismatchError(
                f"{onnx_path}: ONNX Runtime cannot load this model ({type(e).__name__}: {e}); "
                "re-export the model to regenerate the package"
            ) from e
        found_in, found_out = describe_session_io(self._session)
        problems = io_problems("input", manifest.inputs, found_in)
        problems += io_problems("output", manifest.outputs, found_out)
        if problems:
            raise EngineMismatchError(
                f"{onnx_path} does not match its manifest: {'; '.join(problems)}; "
                "re-export the model so the ONNX and its manifest are written together"
            )
        self._output_names = [o.name for o in manifest.outputs]

    @property
    def providers(self) -> list[str]:
        """Execution providers actually in use (ONNX Runtime drops ones it cannot initialise)."""
        return list(self._session.get_providers())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}

    def _run(self, feeds: dict[str, Any], batch: int) -> dict[str, Any]:
        host = {}
        for spec in self.inputs:
            x = feeds[spec.name]
            if is_device_array(x):
                x = x.get()
            host[spec.name] = np.ascontiguousarray(x, dtype=spec.numpy_dtype)
        values = self._session.run(self._output_names, host)
        return dict(zip(self._output_names, values, strict=True))

    def _release(self) -> None:
        self._session = None
