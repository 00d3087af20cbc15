"""`vrclip-export build` and `vrclip-export verify`: TensorRT engines for an engine package.

Registered on the export CLI by `register(app)`. Neither command needs torch, so they run on the GPU
box itself (where the engine must be built: an engine is tied to its TensorRT version and GPU). On a
machine without TensorRT they stop with one line saying how to install it.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from vrclip.export.trt_verify import MAX_POSITION_ERROR_M, MAX_RELIABILITY_ERROR


class BuildPrecision(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def build(
    onnx: Path = typer.Argument(..., help="The package's <name>.onnx (its <name>.json must sit beside it)."),
    precision: BuildPrecision = typer.Option(
        BuildPrecision.fp16,
        "--precision",
        help="fp16 (float ONNX) or int8 (the S8S8 Q/DQ ONNX); fp32 for reference.",
    ),
    max_batch: int | None = typer.Option(
        None, "--max-batch", min=1, help="Largest batch (default: the manifest's)."
    ),
    opt_batch: int | None = typer.Option(
        None, "--opt-batch", min=1, help="Batch to tune for (default: min(max, 4))."
    ),
    timing_cache: Path | None = typer.Option(
        None, "--timing-cache", help="Timing cache file (default: ~/.cache/vrclip/tensorrt-timing.cache)."
    ),
    no_timing_cache: bool = typer.Option(False, "--no-timing-cache", help="Build without a timing cache."),
    workspace_mb: int | None = typer.Option(
        None, "--workspace-mb", min=1, help="Builder workspace limit in MiB."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Show TensorRT's verbose log."),
) -> None:
    """Build <name>.engine from <name>.onnx on this GPU and record the build in <name>.json."""
    from vrclip.export.trt_build import BuildOptions, build_engine, default_timing_cache

    options = BuildOptions(
        precision=precision.value,
        max_batch=max_batch,
        opt_batch=opt_batch,
        workspace_mb=workspace_mb,
        timing_cache=None if no_timing_cache else (timing_cache or default_timing_cache()),
        verbose=verbose,
    )
    result = build_engine(onnx, options, echo=typer.echo)
    build_record = result.manifest.tensorrt
    assert build_record is not None
    typer.echo(
        f"{result.engine_path}: built in {result.seconds:.1f} s ({build_record.precision}, "
        f"batch 1..{build_record.max_batch}, "
        f"TensorRT {build_record.version}, {build_record.gpu_name}); timing cache: {result.timing_cache}"
    )
    typer.echo(f"{result.manifest_path}: updated (engine sha256 {build_record.engine_sha256[:12]}…)")


def verify(
    engine: Path = typer.Argument(
        ..., help="The package's <name>.engine (with <name>.onnx and <name>.json beside)."
    ),
    data: Path = typer.Option(
        ..., "--data", help="Held-out feeds: .npz with one array per input, samples on axis 0."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report here (JSON)."),
    batch: int | None = typer.Option(
        None, "--batch", min=1, help="Large batch to time (default: the engine's max)."
    ),
    iterations: int = typer.Option(50, "--iterations", min=1, help="Timed runs per batch size."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed runs first."),
    min_cosine: float = typer.Option(
        0.99,
        "--min-cosine",
        help="Fail if the embedding's worst per-sample cosine to ONNX Runtime is lower.",
    ),
    max_position_error: float = typer.Option(
        MAX_POSITION_ERROR_M,
        "--max-position-error",
        help="Fail if any position is further than this from ONNX Runtime's, metres.",
    ),
    max_reliability_error: float = typer.Option(
        MAX_RELIABILITY_ERROR,
        "--max-reliability-error",
        help="Fail if any reliability differs from ONNX Runtime's by more than this.",
    ),
    max_samples: int | None = typer.Option(
        None, "--max-samples", min=1, help="Compare on at most this many samples."
    ),
    record: bool = typer.Option(
        False, "--record", help="Also keep a summary in the manifest's accuracy report."
    ),
) -> None:
    """Compare the engine with ONNX Runtime on held-out feeds; report latency p50/p99 and throughput."""
    from vrclip.edge.errors import UserError
    from vrclip.edge.inference.tensorrt_backend import import_tensorrt
    from vrclip.export.trt_verify import VerifyOptions, record_in_manifest, verify_engine, write_report

    import_tensorrt()  # say "not installed" before reading anything
    options = VerifyOptions(
        batch=batch,
        iterations=iterations,
        warmup=warmup,
        min_cosine=min_cosine,
        max_position_error_m=max_position_error,
        max_reliability_error=max_reliability_error,
        max_samples=max_samples,
    )
    report = verify_engine(engine, data, options)
    for name, r in report["outputs"].items():
        row = "" if r["min_row_cosine"] is None else f", worst row {r['min_row_cosine']:.5f}"
        typer.echo(
            f"{name:>14s}: cosine {r['cosine']:.6f}{row}, max |diff| {r['max_abs']:.3g}, "
            f"rel L2 {r['rel_l2']:.3g}"
        )
    for key, t in report["latency"].items():
        typer.echo(
            f"{key:>14s}: p50 {t['p50_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms, "
            f"{t['throughput_per_s']:.1f} samples/s "
            f"(inputs on {report['inputs_on']})"
        )
    if json_out is not None:
        typer.echo(f"report: {write_report(report, json_out)}")
    if record:
        typer.echo(f"recorded in {record_in_manifest(report, engine)}")
    if not report["passed"]:
        why = "; ".join(f"{k}: {v}" for k, v in report["failing"].items())
        raise UserError(f"{engine} disagrees with ONNX Runtime: {why}")
    typer.echo(
        f"{engine}: passed ({report['samples']} samples; per sample: embedding cosine >= {min_cosine}, "
        f"position within {max_position_error} m, reliability within {max_reliability_error})"
    )


def register(app: typer.Typer) -> None:
    """Add `build` and `verify` to the export CLI."""
    app.command("build")(build)
    app.command("verify")(verify)
