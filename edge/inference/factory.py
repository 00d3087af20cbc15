"""`open_engine`: find an engine package's files, check they belong together and to this box, open a backend.

An engine package is `<name>.json` (the manifest) plus `<name>.onnx` and/or `<name>.engine`. A
TensorRT engine is only valid for the TensorRT version and GPU architecture it was built with, and for
the ONNX it was built from; loading a foreign one fails deep inside TensorRT (or, worse, runs a stale
model), so it is refused here first, with every reason found and the command that rebuilds it.

backend="auto" prefers TensorRT when the package has an engine and this box can run it; when it
cannot (no TensorRT, no GPU, or the engine does not match) and the ONNX is there, it falls back to
ONNX Runtime and logs a warning that says why and how to rebuild. backend="tensorrt" never falls back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vrclip.edge.errors import UserError
from vrclip.edge.inference.base import EngineMismatchError, InferenceBackend
from vrclip.edge.inference.device import gpu_info
from vrclip.edge.manifest import EngineManifest, load_manifest, manifest_path_for, sha256_file

log = logging.getLogger(__name__)

BackendName = Literal["auto", "tensorrt", "onnxruntime"]


@dataclass(frozen=True)
class PackagePaths:
    manifest: Path
    onnx: Path
    engine: Path

    @classmethod
    def of(cls, path: str | Path) -> PackagePaths:
        manifest = manifest_path_for(path)
        # Not with_suffix: "m.int8.json" must pair with "m.int8.onnx", not with the float "m.onnx".
        base = manifest.name.removesuffix(".json")
        return cls(manifest, manifest.parent / f"{base}.onnx", manifest.parent / f"{base}.engine")


def package_digest(path: Path) -> str:
    """sha256 of one of the package's files; a file this user cannot read (copied in by root with
    mode 0600, say) is a UserError naming it, not a traceback, and lets "auto" fall back."""
    try:
        return sha256_file(path)
    except OSError as e:
        raise UserError(
            f"{path}: cannot read it ({e.strerror or e}); the service user must be able to read every "
            "file of the engine package (check its owner and mode)"
        ) from e


def check_onnx(paths: PackagePaths, manifest: EngineManifest) -> None:
    """The ONNX exists and is the one the manifest was written for."""
    if not paths.onnx.is_file():
        raise EngineMismatchError(f"{paths.onnx}: no ONNX model beside {paths.manifest.name}")
    digest = package_digest(paths.onnx)
    if digest != manifest.source_onnx_sha256:
        raise EngineMismatchError(
            f"{paths.onnx}: sha256 {digest[:12]}… is not the {manifest.source_onnx_sha256[:12]}… "
            "its manifest was written for; re-export the model so the ONNX and its manifest are written "
            "together"
        )


def engine_problems(
    paths: PackagePaths, manifest: EngineManifest, trt_version: str, gpu_cc: str
) -> list[str]:
    """Every reason the engine should not run here (empty when it may)."""
    if not paths.engine.is_file():
        return [f"{paths.engine} does not exist"]
    build = manifest.tensorrt
    if build is None:
        return [
            f"{paths.manifest.name} has no TensorRT build record (build the engine with vrclip-export build)"
        ]
    problems = []
    if build.version != trt_version:
        problems.append(f"it was built with TensorRT {build.version}, this box has {trt_version}")
    if build.compute_capability != gpu_cc:
        problems.append(
            f"it was built for compute capability {build.compute_capability} ({build.gpu_name}), "
            f"this GPU is {gpu_cc}"
        )
    if build.source_onnx_sha256 != manifest.source_onnx_sha256:
        problems.append("it was built from another ONNX than the one this manifest describes")
    elif paths.onnx.is_file() and package_digest(paths.onnx) != manifest.source_onnx_sha256:
        problems.append(f"{paths.onnx.name} changed since the engine was built from it")
    digest = package_digest(paths.engine)
    if digest != build.engine_sha256:
        problems.append(f"the engine file (sha256 {digest[:12]}…) is not the one the manifest records")
    return problems


def _open_tensorrt(paths: PackagePaths, manifest: EngineManifest, max_batch: int | None) -> InferenceBackend:
    from vrclip.edge.inference.tensorrt_backend import TensorRTBackend, import_tensorrt

    hint = manifest.rebuild_command(paths.onnx.name)
    trt = import_tensorrt()
    gpu = gpu_info()
    problems = engine_problems(paths, manifest, str(trt.__version__), gpu.compute_capability)
    if problems:
        raise EngineMismatchError(
            f"refusing {paths.engine}: {'; '.join(problems)}. Rebuild it on this box: {hint}"
        )
    return TensorRTBackend(paths.engine, manifest, max_batch=max_batch, rebuild_hint=hint)


def _open_onnxruntime(
    paths: PackagePaths, manifest: EngineManifest, providers: Sequence[str] | None, max_batch: int | None
) -> InferenceBackend:
    from vrclip.edge.inference.onnxruntime_backend import OnnxRuntimeBackend

    check_onnx(paths, manifest)
    return OnnxRuntimeBackend(paths.onnx, manifest, providers=providers, max_batch=max_batch)


def open_engine(
    path: str | Path,
    backend: BackendName = "auto",
    *,
    providers: Sequence[str] | None = None,
    max_batch: int | None = None,
) -> InferenceBackend:
    """Open the engine package at `path` (`<name>.onnx`, `.engine`, `.json` or the bare `<name>`).

    Raises a UserError (ManifestError, EngineMismatchError, or "not installed") that names the file,
    says what is wrong and how to fix it.
    """
    if backend not in ("auto", "tensorrt", "onnxruntime"):
        raise UserError(f"backend {backend!r}: choose auto, tensorrt or onnxruntime")
    paths = PackagePaths.of(path)
    manifest = load_manifest(paths.manifest)
    if backend == "onnxruntime":
        return _open_onnxruntime(paths, manifest, providers, max_batch)
    if backend == "tensorrt":
        return _open_tensorrt(paths, manifest, max_batch)
    if not paths.engine.is_file():
        return _open_onnxruntime(paths, manifest, providers, max_batch)
    try:
        return _open_tensorrt(paths, manifest, max_batch)
    except UserError as e:
        if not paths.onnx.is_file():
            raise
        log.warning("%s; falling back to ONNX Runtime on %s", e, paths.onnx)
        return _open_onnxruntime(paths, manifest, providers, max_batch)
    except Exception as e:  # CUDA or CuPy failing (out of memory for the buffers, a driver error)
        if not paths.onnx.is_file():
            raise
        log.warning(
            "%s: TensorRT could not open it (%s: %s); falling back to ONNX Runtime on %s",
            paths.engine,
            type(e).__name__,
            e,
            paths.onnx,
        )
        return _open_onnxruntime(paths, manifest, providers, max_batch)
