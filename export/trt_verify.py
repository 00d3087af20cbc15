"""Check a built engine against ONNX Runtime on held-out feeds, and time it.

A TensorRT engine is a different program from its ONNX: kernels are chosen per GPU, FP16 rounds,
INT8 quantises. Before an engine goes to a box, its outputs are compared with ONNX Runtime's on the
same ONNX (CPU provider: exact float32, the trustworthy reference) for real held-out samples:
per output the largest and mean absolute difference, the relative L2 error and the cosine
similarity (overall, and the worst row for vector outputs such as the embedding). The verdict is
per sample: the embedding passes on its worst row's cosine (one bad sample among many cannot hide
in an average), the position on its largest absolute error in metres (`MAX_POSITION_ERROR_M`, the
quantize gate's localisation tolerance: a cosine over floor coordinates of a few metres lets
decimetre errors through) and the reliability on its largest absolute error (`MAX_RELIABILITY_ERROR`).
Any other output passes on its worst row's cosine, or its overall cosine when it has one value per
sample. The engine then
gets latency percentiles (p50/p99) and throughput at batch 1 and at its maximum batch, with the feeds
already on the GPU when CuPy is there (as the pipeline hands them over), so the numbers are the
engine's, not the PCIe bus's.

Feeds come from an .npz with one array per input name, samples along axis 0.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.edge.errors import UserError
from vrclip.edge.inference.base import FeedError, InferenceBackend, check_feeds
from vrclip.edge.inference.device import is_device_array
from vrclip.edge.inference.factory import PackagePaths, open_engine
from vrclip.edge.manifest import EngineManifest, atomic_write_bytes, load_manifest, manifest_json

#: Largest |engine - ONNX Runtime| of a position, metres: the quantize gate's localisation tolerance
#: (vrclip.export.quantize.GateThresholds.max_loc_increase_m), applied here to every sample.
MAX_POSITION_ERROR_M = 0.05
#: Largest |engine - ONNX Runtime| of the RGB reliability (a weight in [0, 1]).
MAX_RELIABILITY_ERROR = 0.05


@dataclass(frozen=True)
class VerifyOptions:
    #: Large batch to time (default: the engine's maximum).
    batch: int | None = None
    iterations: int = 50
    warmup: int = 5
    #: The embedding's worst per-sample cosine to ONNX Runtime must reach this for the engine to pass.
    min_cosine: float = 0.99
    #: Largest absolute position error (m) and reliability error for the engine to pass.
    max_position_error_m: float = MAX_POSITION_ERROR_M
    max_reliability_error: float = MAX_RELIABILITY_ERROR
    #: Use at most this many samples from the file for the comparison.
    max_samples: int | None = None


def load_feeds(
    path: str | Path, manifest: EngineManifest, max_samples: int | None = None
) -> dict[str, np.ndarray]:
    """The manifest's inputs from an .npz (extra arrays, e.g. expected outputs, are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: no such feeds file (an .npz with one array per input: "
            f"{[s.name for s in manifest.inputs]})"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz ({e})") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: a single array; expected an .npz with one array per input")
    try:
        with data:
            missing = [s.name for s in manifest.inputs if s.name not in data.files]
            if missing:
                raise UserError(f"{path}: has arrays {data.files}, lacks the engine's inputs {missing}")
            feeds = {s.name: np.asarray(data[s.name]) for s in manifest.inputs}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz ({e})") from e
    try:
        count = check_feeds(manifest.inputs, feeds)
    except FeedError as e:
        raise UserError(f"{path}: {e}") from e
    if count == 0:
        raise UserError(f"{path}: holds no samples")
    if max_samples is not None:
        feeds = {k: v[:max_samples] for k, v in feeds.items()}
    return feeds


def compare(
    reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]
) -> dict[str, dict[str, float | None]]:
    """Per output: max/mean absolute difference, relative L2 error, cosine overall and worst row."""
    report: dict[str, dict[str, float | None]] = {}
    for name, ref in reference.items():
        ref64 = np.asarray(ref, dtype=np.float64)
        got64 = np.asarray(candidate[name], dtype=np.float64)
        diff = np.abs(got64 - ref64)
        ref_flat, got_flat = ref64.ravel(), got64.ravel()
        norm = float(np.linalg.norm(ref_flat))
        row = None
        if ref64.ndim >= 2 and int(np.prod(ref64.shape[1:])) >= 2:
            r = ref64.reshape(len(ref64), -1)
            g = got64.reshape(len(got64), -1)
            row = float(np.min(_cosine_rows(r, g)))
        report[name] = {
            "max_abs": float(diff.max()) if diff.size else 0.0,
            "mean_abs": float(diff.mean()) if diff.size else 0.0,
            "rel_l2": float(np.linalg.norm(got_flat - ref_flat) / norm)
            if norm > 0
            else float(np.linalg.norm(got_flat)),
            "cosine": float(_cosine_rows(ref_flat[None], got_flat[None])[0]),
            "min_row_cosine": row,
        }
    return report


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    return np.where(both_zero, 1.0, np.nan_to_num(cos, nan=0.0))


def failures(outputs: dict[str, dict[str, float | None]], options: VerifyOptions) -> dict[str, str]:
    """Outputs past their limit (see the module docstring), each with why: {name: 'figure vs limit'}."""
    limits = {
        "position": (options.max_position_error_m, " m"),
        "reliability": (options.max_reliability_error, ""),
    }
    failing: dict[str, str] = {}
    for name, r in outputs.items():
        if name in limits:
            limit, unit = limits[name]
            worst = float(r["max_abs"] or 0.0)
            if not worst <= limit:
                failing[name] = f"max |diff| {worst:.4g}{unit} > {limit:g}{unit}"
            continue
        row = r["min_row_cosine"]
        cosine, what = (row, "worst-row cosine") if row is not None else (r["cosine"], "cosine")
        if not float(cosine or 0.0) >= options.min_cosine:
            failing[name] = f"{what} {float(cosine or 0.0):.5f} < {options.min_cosine:g}"
    return failing


def take_batch(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The first `batch` samples, repeating the file's samples if it holds fewer."""
    count = len(next(iter(feeds.values())))
    index = np.arange(batch) % count
    return {k: np.ascontiguousarray(v[index]) for k, v in feeds.items()}


def time_backend(
    backend: InferenceBackend, feeds: dict[str, Any], iterations: int, warmup: int
) -> dict[str, float]:
    """Latency percentiles (ms) and throughput (samples/s) of `backend.infer(feeds)` (synchronous)."""
    batch = int(next(iter(feeds.values())).shape[0])
    for _ in range(warmup):
        backend.infer(feeds)
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        backend.infer(feeds)
        times[i] = time.perf_counter() - start
    mean = float(times.mean())
    return {
        "batch": batch,
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "mean_ms": mean * 1e3,
        "throughput_per_s": batch / mean if mean > 0 else float("inf"),
    }


def _to_device(feeds: dict[str, np.ndarray]) -> tuple[dict[str, Any], str]:
    try:
        import cupy
    except ImportError:
        return feeds, "host"
    return {k: cupy.asarray(v) for k, v in feeds.items()}, "device"


def verify_engine(
    engine_path: str | Path, feeds_path: str | Path, options: VerifyOptions = VerifyOptions()
) -> dict[str, Any]:
    """Compare the engine with ONNX Runtime and time it; returns the report (see module docstring)."""
    if options.iterations < 1 or options.warmup < 0:
        raise UserError("--iterations must be >= 1 and --warmup >= 0")
    paths = PackagePaths.of(engine_path)
    manifest = load_manifest(paths.manifest)
    feeds = load_feeds(feeds_path, manifest, options.max_samples)
    samples = len(next(iter(feeds.values())))
    with open_engine(paths.engine, backend="tensorrt") as engine:
        with open_engine(paths.onnx, backend="onnxruntime", providers=["CPUExecutionProvider"]) as reference:
            expected = reference.infer(feeds)
        got = engine.infer(feeds)
        got = {k: v.get() if is_device_array(v) else v for k, v in got.items()}
        outputs = compare(expected, got)
        big = options.batch or engine.max_batch
        latency = {}
        placement = "host"
        for b in sorted({1, big}):
            batch_feeds, placement = _to_device(take_batch(feeds, b))
            latency[f"batch_{b}"] = time_backend(engine, batch_feeds, options.iterations, options.warmup)
        build = engine.manifest.tensorrt
    failing = failures(outputs, options)
    return {
        "engine": str(paths.engine),
        "onnx": str(paths.onnx),
        "model": manifest.model_name,
        "tensorrt": build.version if build else None,
        "gpu": build.gpu_name if build else None,
        "precision": build.precision if build else None,
        "samples": samples,
        "reference": "onnxruntime CPUExecutionProvider",
        "outputs": outputs,
        "latency": latency,
        "inputs_on": placement,
        "min_cosine": options.min_cosine,
        "max_position_error_m": options.max_position_error_m,
        "max_reliability_error": options.max_reliability_error,
        "failing": failing,
        "passed": not failing,
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    return path


def record_in_manifest(report: dict[str, Any], engine_path: str | Path) -> Path:
    """Keep a summary of the verification in the manifest's accuracy report, next to the engine's record."""
    paths = PackagePaths.of(engine_path)
    manifest = load_manifest(paths.manifest)
    summary = {
        "passed": report["passed"],
        "samples": report["samples"],
        "tensorrt": report["tensorrt"],
        "cosine": {k: v["cosine"] for k, v in report["outputs"].items()},
        "max_abs": {k: v["max_abs"] for k, v in report["outputs"].items()},
        "latency_p50_ms": {k: v["p50_ms"] for k, v in report["latency"].items()},
        "verified_at": report["verified_at"],
    }
    updated = EngineManifest.model_validate(
        {**manifest.model_dump(), "accuracy": {**manifest.accuracy, "tensorrt_verify": summary}}
    )
    atomic_write_bytes(paths.manifest, manifest_json(updated).encode("utf-8"))
    return paths.manifest
