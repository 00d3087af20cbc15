"""`vrclip-export onnx`, `quantize` and `bench`: registered on the export CLI by `register(app)`.

torch, onnx and onnxruntime are imported inside the commands, so `vrclip-export --help` stays fast and
works where they are missing.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    Progress,
)
from vrclip.edge.cli_support import progress_bar

console = Console(stderr=True)


class QuantVariant(StrEnum):
    int8 = "int8"
    cpu = "cpu"


class CpuMethod(StrEnum):
    dynamic = "dynamic"
    u8s8 = "u8s8"


class CalibrateMethod(StrEnum):
    minmax = "minmax"
    percentile = "percentile"
    entropy = "entropy"


def onnx_command(
    checkpoint: Path = typer.Argument(..., help="A trained checkpoint (vrclip.pt)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output <name>.onnx (default: the checkpoint's path with .onnx)."
    ),
    opset: int = typer.Option(17, "--opset", help="ONNX opset; 17 is the one produced and verified."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Largest batch the runtime runs at once."),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        help="Training dataset folder, to record the radar's sweep/geometry (default: the checkpoint's).",
    ),
    threshold_from: Path | None = typer.Option(
        None,
        "--threshold-from",
        help="`vrclip-export evaluate --json` report of this checkpoint: its open-set threshold goes into "
        "the manifest (the runtime's default when gallery.threshold is not set).",
    ),
) -> None:
    """Export the fused inference graph to ONNX (dynamic batch) and write its manifest beside it."""
    from vrclip.export.onnx_export import ExportOptions, export_checkpoint

    result = export_checkpoint(
        checkpoint,
        out,
        ExportOptions(opset=opset, max_batch=max_batch),
        dataset=dataset,
        threshold_from=threshold_from,
        echo=typer.echo,
    )
    if result.manifest.open_set is not None:
        typer.echo(
            f"open-set threshold {result.manifest.open_set.threshold:.2f} ({result.manifest.open_set.source})"
        )
    size = result.onnx_path.stat().st_size / 1e6
    typer.echo(
        f"wrote {result.onnx_path} ({size:.1f} MB, opset {opset}, batch 1..{max_batch}) and "
        f"{result.manifest_path} in {result.seconds:.1f} s"
    )


def _bar() -> Progress:
    return progress_bar(console=console, label="{task.description:11s}")


def quantize_command(
    onnx: Path = typer.Argument(..., help="The float <name>.onnx (with <name>.json beside it)."),
    more: list[Path] | None = typer.Argument(
        None, help="More recordings (so `--calib a.h5 b.h5 ...` and shell globs work)."
    ),
    calib: list[Path] = typer.Option(
        ..., "--calib", help="Calibration recordings: session .h5 files or a dataset folder."
    ),
    variant: QuantVariant = typer.Option(
        QuantVariant.int8,
        "--variant",
        help="int8: symmetric S8S8 Q/DQ for TensorRT (<name>.int8.onnx); cpu: ONNX Runtime CPU "
        "(<name>.int8-cpu.onnx).",
    ),
    cpu_method: CpuMethod = typer.Option(
        CpuMethod.dynamic, "--cpu-method", help="--variant cpu: dynamic INT8 MatMul, or static U8S8 Q/DQ."
    ),
    samples: int = typer.Option(500, "--samples", help="Calibration samples."),
    holdout: int = typer.Option(300, "--holdout", help="Held-out samples for the accuracy gate."),
    min_cosine: float = typer.Option(0.99, "--min-cosine", help="Gate: least mean embedding cosine."),
    max_map_drop: float = typer.Option(1.0, "--max-map-drop", help="Gate: largest mAP drop, points."),
    max_loc_increase: float = typer.Option(
        0.05, "--max-loc-increase", help="Gate: largest localisation error increase, metres."
    ),
    float_block: list[int] | None = typer.Option(
        None,
        "--float-block",
        help="Keep this visual transformer block (and its adapter) in float (repeatable).",
    ),
    find_float_blocks: bool = typer.Option(
        False, "--find-float-blocks", help="Also try each block in float and report which pass the gate."
    ),
    calibrate_method: CalibrateMethod = typer.Option(CalibrateMethod.minmax, "--calibrate-method"),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Output <name>.onnx, its manifest <name>.json beside it (default beside the model).",
    ),
    cache: Path | None = typer.Option(
        None, "--cache", help="Preprocessing cache (default: <dataset>/.vrclip-cache, the trainer's)."
    ),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Preprocessing worker processes."),
    seed: int = typer.Option(42, "--seed", help="Seed of the calibration/held-out draw."),
) -> None:
    """Static INT8 calibrated on recordings, then an accuracy gate against the float model."""
    from vrclip.export.quantize import GateThresholds, QuantizeOptions, quantize_model

    options = QuantizeOptions(
        variant=variant.value,
        cpu_method=cpu_method.value,
        samples=samples,
        holdout=holdout,
        seed=seed,
        calibrate_method=calibrate_method.value,
        float_blocks=tuple(float_block or ()),
        gate=GateThresholds(min_cosine, max_map_drop, max_loc_increase),
        cache=cache,
        jobs=jobs,
        out=out,
    )
    with _bar() as bar:
        tasks: dict[str, int] = {}

        def progress(task: str, done: int, total: int | None) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=done, total=total)

        result = quantize_model(
            onnx,
            [*calib, *(more or [])],
            options,
            progress=progress,
            log=console.print,
            find_float_blocks=find_float_blocks,
        )
    f = result.figures
    typer.echo(
        f"gate passed on {f['samples']} held-out samples: cosine mean {f['cosine_mean']:.5f} "
        f"(min {f['cosine_min']:.5f}), mAP {100 * f['map_float']:.2f} -> {100 * f['map_quantized']:.2f} "
        f"(drop {f['map_drop_points']:.2f} points), localisation {f['loc_err_m_float']:.3f} -> "
        f"{f['loc_err_m_quantized']:.3f} m"
    )
    for row in result.sensitivity:
        typer.echo(
            f"  block {row['block']} in float: cosine mean {row['cosine_mean']:.5f}, "
            f"mAP drop {row['map_drop_points']} points, {'passes' if row['passed'] else 'fails'}"
        )
    typer.echo(f"wrote {result.onnx_path} ({result.manifest.precision}) and {result.manifest_path}")


def bench_command(
    json_out: Path = typer.Option(..., "--json", help="Write the results (JSON) here."),
    config: list[str] | None = typer.Option(
        None, "--config", help="tiny and/or vit-b16 (repeatable; default both)."
    ),
    batch: list[int] | None = typer.Option(
        None, "--batch", help="Batch sizes (repeatable; default 1 and 8)."
    ),
    iterations: int = typer.Option(60, "--iterations", min=1, help="Timed runs per case, tiny."),
    vit_iterations: int = typer.Option(20, "--vit-iterations", min=1, help="Timed runs per case, vit-b16."),
    warmup: int = typer.Option(2, "--warmup", min=0),
    threads: int | None = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    cpu_method: CpuMethod = typer.Option(CpuMethod.dynamic, "--cpu-method"),
    tiny_package: Path | None = typer.Option(
        None,
        "--tiny-package",
        help="Time this trained fp32 package (NAME.onnx, NAME.json or NAME; and its int8 siblings) as tiny.",
    ),
) -> None:
    """ONNX Runtime CPU latency (p50/p99) and throughput: fp32, int8 (S8S8) and int8-cpu."""
    from vrclip.export.bench import BenchOptions, run_bench, write_bench

    options = BenchOptions(
        configs=tuple(config or ("tiny", "vit-b16")),
        batches=tuple(batch or (1, 8)),
        iterations={"tiny": iterations, "vit-b16": vit_iterations},
        warmup=warmup,
        threads=threads,
        cpu_method=cpu_method.value,
        tiny_package=tiny_package,
    )
    report = run_bench(options, log=console.print)
    path = write_bench(json_out, report)
    for key, value in report["speedup_p50_vs_fp32"].items():
        typer.echo(f"{key}: {value:.2f}x fp32 (p50)")
    typer.echo(f"wrote {path} ({report['seconds']:.0f} s, load {report['machine']['loadavg_before']})")


def register(app: typer.Typer) -> None:
    """Add `onnx`, `quantize` and `bench` to the vrclip-export app."""
    app.command("onnx")(onnx_command)
    app.command("quantize")(quantize_command)
    app.command("bench")(bench_command)


__all__ = ["bench_command", "onnx_command", "quantize_command", "register"]
