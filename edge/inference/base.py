"""`InferenceBackend`: the one interface the pipeline calls, whatever runs the model underneath.

TensorRT on the GPU and ONNX Runtime on the CPU (or CUDA) differ in how they hold memory and shapes;
the pipeline should not care. Every backend therefore:

- describes its inputs and outputs with the manifest's `TensorSpec`s (names, per-sample shapes, dtypes);
- takes `infer({name: array})` with a leading batch axis of any size, checks every feed *before*
  running (a wrong shape from the pipeline is a bug, reported with the tensor's name, not a crash deep
  inside TensorRT), splits batches larger than the engine's maximum into chunks, and returns
  `{output name: array}` with the same batch size;
- is closed explicitly (`close()` or a `with` block): GPU buffers and TensorRT contexts are scarce
  and should not wait for the garbage collector.

Subclasses implement `_run` for one chunk of at most `max_batch` samples.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.edge.errors import UserError
from vrclip.edge.manifest import BATCH, EngineManifest, TensorSpec


class EngineMismatchError(UserError):
    """The engine (or ONNX) does not belong to this manifest, this TensorRT or this GPU: rebuild it."""


class FeedError(ValueError):
    """The feeds handed to `infer` do not match the engine's inputs (a caller bug)."""


class InferenceBackend(ABC):
    """Runs one engine package; see the module docstring for the contract."""

    #: Short name ("tensorrt", "onnxruntime") for logs and metrics.
    kind: str = "?"

    def __init__(self, manifest: EngineManifest, source: Path, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._manifest = manifest
        self._source = Path(source)
        self._max_batch = int(max_batch)
        self._closed = False
        # One engine context runs one batch at a time; the lock makes concurrent callers queue.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ description
    @property
    def manifest(self) -> EngineManifest:
        return self._manifest

    @property
    def source(self) -> Path:
        """The file being run (the .engine or the .onnx)."""
        return self._source

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._manifest.outputs

    @property
    def max_batch(self) -> int:
        """Largest batch run in one go; `infer` splits larger batches into chunks of this size."""
        return self._max_batch

    @property
    def closed(self) -> bool:
        return self._closed

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "source": str(self._source),
            "model": self._manifest.model_name,
            "max_batch": self._max_batch,
        }

    # ------------------------------------------------------------------ inference
    def infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run the model on `feeds` (numpy arrays; CuPy arrays where the backend supports device input)."""
        if self._closed:
            raise RuntimeError(f"{self.kind} backend for {self._source} is closed")
        batch = check_feeds(self.inputs, feeds)
        if batch == 0:
            return {o.name: np.zeros(o.concrete(0), o.numpy_dtype) for o in self.outputs}
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.kind} backend for {self._source} is closed")
            parts = []
            for start in range(0, batch, self._max_batch):
                stop = min(start + self._max_batch, batch)
                chunk = {spec.name: feeds[spec.name][start:stop] for spec in self.inputs}
                parts.append(self._run(chunk, stop - start))
            result = parts[0] if len(parts) == 1 else self._concatenate(parts)
        for spec in self.outputs:
            got = tuple(result[spec.name].shape)
            if got != spec.concrete(batch):
                raise RuntimeError(
                    f"{self.kind}: output {spec.name!r} came back with shape {got}, "
                    f"the manifest says {list(spec.concrete(batch))}"
                )
        return result

    @abstractmethod
    def _run(self, feeds: dict[str, Any], batch: int) -> dict[str, Any]:
        """Run one chunk of `batch` <= max_batch samples (feeds already checked)."""

    def _concatenate(self, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {o.name: np.concatenate([p[o.name] for p in parts], axis=0) for o in self.outputs}

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def _release(self) -> None:  # noqa: B027 - optional hook
        """Free backend resources (called once, under the lock)."""

    def __enter__(self) -> InferenceBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._source} max_batch={self._max_batch} {state}>"


def check_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, Any]) -> int:
    """Check names, ranks, per-sample shapes and dtypes of `feeds`; return the common batch size.

    Works on anything with `.shape` and `.dtype` (numpy and CuPy arrays alike) so device arrays are
    never pulled to the host just to be checked. A floating-point input takes floating-point arrays
    only (float64 or float16 -> float32; the cast is the backend's job): integer or bool data there is a
    conversion the caller skipped (uint8 crops not divided by 255), not something to cast silently.
    Other inputs take dtypes that cast to theirs within their kind (int64 -> int32).
    """
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in feeds]
    unknown = sorted(set(feeds) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise FeedError(f"feeds do not match the engine's inputs {expected}: {', '.join(parts)}")
    batch: int | None = None
    first = ""
    for spec in specs:
        x = feeds[spec.name]
        shape = getattr(x, "shape", None)
        dtype = getattr(x, "dtype", None)
        if shape is None or dtype is None:
            raise FeedError(f"input {spec.name!r}: expected an array, got {type(x).__name__}")
        shape = tuple(int(d) for d in shape)
        want = spec.sample_shape
        if len(shape) != len(want) + 1 or shape[1:] != want:
            raise FeedError(
                f"input {spec.name!r}: shape {list(shape)} does not match {[BATCH, *want]} from the manifest"
            )
        if batch is None:
            batch, first = shape[0], spec.name
        elif shape[0] != batch:
            raise FeedError(
                f"input {spec.name!r} has batch {shape[0]} but {first!r} has {batch}: all inputs share axis 0"
            )
        have = np.dtype(dtype)
        if np.issubdtype(spec.numpy_dtype, np.floating):
            if not np.issubdtype(have, np.floating):
                raise FeedError(
                    f"input {spec.name!r}: dtype {have} cannot be used as {spec.dtype}: a floating-point "
                    "input takes floating-point arrays; convert the data as the manifest's preprocessing "
                    "says (e.g. uint8 crops / 255)"
                )
        elif not np.can_cast(have, spec.numpy_dtype, casting="same_kind"):
            raise FeedError(f"input {spec.name!r}: dtype {have} cannot be used as {spec.dtype}")
    assert batch is not None  # specs is never empty (the manifest requires an input)
    return batch


# ------------------------------------------------------------------------ comparing I/O to manifest
#: (name, shape with None for a dynamic/unknown axis, dtype name) as a runtime reports it.
FoundTensor = tuple[str, tuple[int | None, ...], str]


def io_problems(kind: str, expected: Iterable[TensorSpec], found: Iterable[FoundTensor]) -> list[str]:
    """Differences between what a runtime reports and the manifest, one readable line each.

    A dynamic axis in the runtime where the manifest has a fixed size is accepted (the graph is simply
    more general, or the runtime could not infer that size); a fixed size that differs is not, nor is a
    fixed axis 0 where the manifest promises a batch axis.
    """
    expected = list(expected)
    found = list(found)
    problems = []
    want = {s.name: s for s in expected}
    have = {name: (shape, dtype) for name, shape, dtype in found}
    for name in want.keys() - have.keys():
        problems.append(f"{kind} {name!r} is in the manifest but not in the model")
    for name in have.keys() - want.keys():
        problems.append(f"{kind} {name!r} is in the model but not in the manifest")
    for name in sorted(want.keys() & have.keys()):
        spec = want[name]
        shape, dtype = have[name]
        shown = ["?" if d is None else d for d in shape]
        if len(shape) != len(spec.shape):
            problems.append(f"{kind} {name!r}: model shape {shown} vs manifest {list(spec.shape)}")
        else:
            for axis, (got, exp) in enumerate(zip(shape, spec.shape, strict=True)):
                if got is None:
                    continue
                if exp == BATCH or got != exp:
                    problems.append(
                        f"{kind} {name!r}: model shape {shown} vs manifest {list(spec.shape)} (axis {axis})"
                    )
                    break
        if dtype != spec.dtype:
            problems.append(f"{kind} {name!r}: model dtype {dtype} vs manifest {spec.dtype}")
    return problems
