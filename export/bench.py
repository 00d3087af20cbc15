"""`vrclip-export bench`: ONNX Runtime CPU latency and throughput of fp32, int8 (S8S8 Q/DQ) and int8-cpu.

For each model configuration (tiny, and the full ViT-B/16), the fused graph is exported with random
weights (latency does not depend on what the weights are), quantised both ways with calibration on
random inputs, and timed at batch 1 and 8; each quantised model's embedding cosine to fp32 is measured
on other random inputs and reported beside its timing. A trained float package can stand in for the
random tiny model (`--tiny-package models/vrclip-tiny.onnx`, or its `.json` or bare name, resolved as the
runtime resolves an engine package): its fp32 ONNX, which must be the one its manifest describes, and
whichever of its `.int8.onnx` / `.int8-cpu.onnx` siblings exist are timed instead. A package whose
manifest is not fp32 (a quantised one) is refused: its figures would be labelled fp32.

The machine is shared and has few cores, so the figures are noisy: the precisions are timed
interleaved (one run of each in turn), so a burst of load hits all of them alike rather than one; the
load average before and after, the CPU and the ORT version are recorded in the JSON.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.edge.inference.onnxruntime_backend import runs_per_sample
from vrclip.edge.manifest import EngineManifest, atomic_write_bytes, load_manifest, manifest_path_for

#: JSON config label -> model preset.
CONFIGS = {"tiny": "tiny", "vit-b16": "vit-b-16"}
PRECISIONS = ("fp32", "int8", "int8-cpu")


@dataclass(frozen=True)
class BenchOptions:
    configs: tuple[str, ...] = ("tiny", "vit-b16")
    batches: tuple[int, ...] = (1, 8)
    #: Timed runs per (precision, batch); the full ViT-B/16 gets fewer (it is ~100x slower).
    iterations: dict[str, int] = field(default_factory=lambda: {"tiny": 60, "vit-b16": 20})
    warmup: int = 2
    #: Random calibration samples for the static quantisation (random weights: ranges, not accuracy).
    calib_samples: int = 32
    #: Random samples the cosine to fp32 is measured on.
    cosine_samples: int = 16
    #: ONNX Runtime intra-op threads (None: its default, every physical core).
    threads: int | None = None
    cpu_method: str = "dynamic"
    seed: int = 0
    #: A trained fp32 package to time as the tiny config instead of random weights (`<name>.onnx`,
    #: `<name>.json` or the bare `<name>`; see `float_package`).
    tiny_package: Path | None = None


Log = Callable[[str], None]


def percentile_ms(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, np.float64), q) * 1e3)


def _session(path: Path, threads: int | None) -> Any:
    from vrclip.export.onnx_export import ort_session

    return ort_session(path, threads)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _feeds_for(manifest: EngineManifest, cfg_feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {spec.name: cfg_feeds[spec.name] for spec in manifest.inputs}


def random_feeds(manifest: EngineManifest, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of a manifest's shapes (rgb in [0, 1], RF noise, a walking anchor, both live)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        shape = spec.concrete(batch)
        if spec.name == "rgb":
            out[spec.name] = rng.random(shape, dtype=np.float32)
        elif spec.name == "anchor":
            walk = np.cumsum(rng.normal(0.0, 0.08, shape), axis=1 if len(shape) == 3 else 0)
            out[spec.name] = (walk + np.array([0.0, 3.0])).astype(np.float32)
        elif spec.name == "present":
            out[spec.name] = np.ones(shape, np.float32)
        else:
            out[spec.name] = rng.normal(0.0, 1.0, shape).astype(np.float32)
    return out


@dataclass
class Variant:
    precision: str
    path: Path
    session: Any = None


def build_random(config: str, folder: Path, options: BenchOptions, log: Log) -> list[Variant]:
    """Export a random-weight model of `config` and quantise it both ways; returns the three files."""
    import torch
    from vrclip.export.model import VRCLIP, preset
    from vrclip.export.onnx_export import ExportOptions, export_model

    torch.manual_seed(options.seed)
    model = VRCLIP(preset(CONFIGS[config])).eval()
    t = time.perf_counter()
    fp32 = folder / f"{config}.onnx"
    export_model(model, fp32, ExportOptions(check_batches=(1,)))
    log(f"{config}: exported in {time.perf_counter() - t:.1f} s")
    del model
    return [Variant("fp32", fp32), *quantise_random(fp32, options, log)]


def quantise_random(fp32: Path, options: BenchOptions, log: Log) -> list[Variant]:
    """S8S8 Q/DQ and the CPU variant of `fp32`, calibrated on random inputs (bench only: no gate)."""
    import onnx
    from vrclip.export.quantize import (
        FeedReader,
        check_symmetric,
        plan_nodes,
        quantize_dynamic_matmul,
        quantize_s8s8,
        quantize_u8s8,
    )

    manifest = load_manifest(manifest_path_for(fp32))
    plan = plan_nodes(onnx.load(str(fp32), load_external_data=False))
    batch = 8
    calib = [
        random_feeds(manifest, batch, options.seed + 1000 + i)
        for i in range(-(-options.calib_samples // batch))
    ]
    stem = fp32.name.removesuffix(".onnx")
    int8 = fp32.with_name(f"{stem}.int8.onnx")
    cpu = fp32.with_name(f"{stem}.int8-cpu.onnx")
    t = time.perf_counter()
    quantize_s8s8(fp32, int8, FeedReader.of_batches(calib), plan)
    check_symmetric(int8)
    if options.cpu_method == "u8s8":
        quantize_u8s8(fp32, cpu, FeedReader.of_batches(calib), plan)
    else:
        quantize_dynamic_matmul(fp32, cpu, plan)
    log(f"{stem}: quantised in {time.perf_counter() - t:.1f} s")
    return [Variant("int8", int8), Variant("int8-cpu", cpu)]


def float_package(path: str | Path) -> tuple[Path, EngineManifest]:
    """(ONNX path, manifest) of the fp32 package `path` names (`<name>.onnx`, `.json` or bare `<name>`).

    Resolved as `open_engine` resolves it; a UserError when the manifest is missing or unreadable, the
    ONNX is missing or not the one the manifest describes, or the package is not fp32.
    """
    from vrclip.edge.errors import UserError
    from vrclip.edge.inference.factory import PackagePaths, check_onnx

    paths = PackagePaths.of(path)
    manifest = load_manifest(paths.manifest)
    if manifest.precision != "fp32":
        raise UserError(
            f"--tiny-package {path}: {paths.manifest.name} describes a model of precision "
            f"{manifest.precision!r}; give the float (fp32) package (e.g. models/vrclip-tiny.onnx): its int8 "
            "siblings are timed beside it"
        )
    check_onnx(paths, manifest)
    return paths.onnx, manifest


def package_variants(fp32: Path) -> list[Variant]:
    """The float package and whichever quantised siblings exist beside it."""
    stem = fp32.name.removesuffix(".onnx")
    out = [Variant("fp32", fp32)]
    for precision in ("int8", "int8-cpu"):
        p = fp32.with_name(f"{stem}.{precision}.onnx")
        if p.is_file():
            out.append(Variant(precision, p))
    return out


def run_like_runtime(v: Variant, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run `v` as the edge runtime does: int8-cpu (one activation scale per tensor, so per batch)
    one sample at a time, so that no sample's result depends on its batch partners; the others
    as one batch."""
    if not runs_per_sample(v.precision):
        return v.session.run(names, feeds)
    n = next(iter(feeds.values())).shape[0]
    parts = [v.session.run(names, {k: x[i : i + 1] for k, x in feeds.items()}) for i in range(n)]
    return [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(names))]


def time_variants(
    config: str,
    variants: list[Variant],
    manifest: EngineManifest,
    options: BenchOptions,
    weights: str,
    log: Log,
) -> list[dict[str, Any]]:
    """Latency/throughput per (precision, batch), timed interleaved; cosine of each to fp32."""
    for v in variants:
        v.session = _session(v.path, options.threads)
    names = [o.name for o in manifest.outputs]
    # Cosine to fp32 on random inputs, one batch of `cosine_samples`.
    probe = random_feeds(manifest, options.cosine_samples, options.seed + 7)
    reference = _unit(run_like_runtime(variants[0], ["embedding"], _feeds_for(manifest, probe))[0])
    cosine: dict[str, np.ndarray] = {}
    for v in variants:
        emb = _unit(run_like_runtime(v, ["embedding"], _feeds_for(manifest, probe))[0])
        cosine[v.precision] = np.sum(emb * reference, axis=1)
    iterations = options.iterations.get(config, 10)
    rows = []
    for batch in options.batches:
        feeds = _feeds_for(manifest, random_feeds(manifest, batch, options.seed + batch))
        for _ in range(options.warmup):
            for v in variants:
                run_like_runtime(v, names, feeds)
        times: dict[str, list[float]] = {v.precision: [] for v in variants}
        for _ in range(iterations):
            for v in variants:
                t = time.perf_counter()
                run_like_runtime(v, names, feeds)
                times[v.precision].append(time.perf_counter() - t)
        for v in variants:
            ts = times[v.precision]
            row = {
                "config": config,
                "precision": v.precision,
                "batch": batch,
                "p50_ms": round(percentile_ms(ts, 50), 3),
                "p99_ms": round(percentile_ms(ts, 99), 3),
                "throughput": round(batch / float(np.median(ts)), 2),
                "cosine_min": round(float(np.min(cosine[v.precision])), 6),
                "cosine_mean": round(float(np.mean(cosine[v.precision])), 6),
                "iterations": iterations,
                "weights": weights,
                "file_mb": round(v.path.stat().st_size / 1e6, 2),
            }
            rows.append(row)
            log(
                f"{config} {v.precision} b{batch}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"{row['throughput']:.1f}/s, cos {row['cosine_mean']:.5f}"
            )
    for v in variants:
        v.session = None
    return rows


def speedups(rows: list[dict[str, Any]]) -> dict[str, float]:
    """p50 speed-up of each quantised variant over fp32, per config and batch."""
    out = {}
    for r in rows:
        if r["precision"] == "fp32":
            continue
        base = next(
            (
                b
                for b in rows
                if b["precision"] == "fp32" and b["config"] == r["config"] and b["batch"] == r["batch"]
            ),
            None,
        )
        if base:
            out[f"{r['config']}/{r['precision']}/b{r['batch']}"] = round(base["p50_ms"] / r["p50_ms"], 3)
    return out


def machine() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    except OSError:
        flags = ""
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": " avx_vnni" in flags,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def run_bench(options: BenchOptions = BenchOptions(), log: Log = print) -> dict[str, Any]:
    """Every configured model and precision; returns the JSON document (see the module docstring)."""
    unknown = [c for c in options.configs if c not in CONFIGS]
    if unknown:
        from vrclip.edge.errors import UserError

        raise UserError(f"--config {unknown[0]!r}: choose from {', '.join(CONFIGS)}")
    # Before any timing: a wrong package should fail at once, not after the ViT-B/16 runs.
    package = (
        float_package(options.tiny_package)
        if options.tiny_package is not None and "tiny" in options.configs
        else None
    )
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vrclip-bench-") as tmp:
        for config in options.configs:
            if config == "tiny" and package is not None:
                fp32, manifest = package
                variants, weights = package_variants(fp32), "trained"
            else:
                variants, weights = build_random(config, Path(tmp), options, log), "random"
                manifest = load_manifest(manifest_path_for(variants[0].path))
            rows += time_variants(config, variants, manifest, options, weights, log)
            for v in variants:  # the ViT-B/16 files are ~350 MB: free the space before the next config
                if weights == "random":
                    v.path.unlink(missing_ok=True)
    return {
        "results": rows,
        "speedup_p50_vs_fp32": speedups(rows),
        "machine": {
            **machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "threads": options.threads or "onnxruntime default",
            "warmup": options.warmup,
            "iterations": options.iterations,
            "calib_samples": options.calib_samples,
            "cosine_samples": options.cosine_samples,
            "cosine_inputs": "random",
            "int8": "static S8S8 Q/DQ, per-channel weights, symmetric (TensorRT form)",
            "int8-cpu": (
                "dynamic INT8 MatMul/Gemm, one sample at a time as the runtime runs it"
                if options.cpu_method == "dynamic"
                else "static U8S8 Q/DQ, one sample at a time as the runtime runs it"
            ),
            "timing": "interleaved across precisions",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def write_bench(path: str | Path, report: dict[str, Any]) -> Path:
    import json

    path = Path(path)
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())
    return path


__all__ = ["CONFIGS", "PRECISIONS", "BenchOptions", "float_package", "run_bench", "speedups", "write_bench"]
