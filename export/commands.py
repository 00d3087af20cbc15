"""`vrclip-export train` and `vrclip-export evaluate`: registered on the CLI app by `register(app)`.

Imports of torch and the training code happen inside the commands, so `vrclip-export --help` stays
fast and works where torch is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    Progress,
    TextColumn,
)
from vrclip.edge.cli_support import progress_bar
from vrclip.edge.dataset import TRAINING_FRAMES, TRAINING_SEGMENT_S

console = Console(stderr=True)


def _bar() -> Progress:
    return progress_bar(TextColumn("{task.fields[note]}"), console=console)


def train(
    dataset: Path = typer.Argument(..., help="Dataset folder (dataset.json + session .h5 recordings)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Run folder: checkpoint.pt (every epoch) and vrclip.pt."
    ),
    model_preset: str = typer.Option("tiny", "--preset", help="Model configuration: tiny or vit-b-16."),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        help="Visual tower weights: OpenAI CLIP ViT-B/16 (vit-b-16) or `pretrain-vision` output (tiny).",
    ),
    epochs: int = typer.Option(50, "--epochs", help="Epochs of every stage."),
    vision_epochs: int | None = typer.Option(None, "--vision-epochs", help="Override for stage 1."),
    rf_epochs: int | None = typer.Option(None, "--rf-epochs", help="Override for stage 2."),
    gate_epochs: int | None = typer.Option(None, "--gate-epochs", help="Override for stage 3."),
    batch: int = typer.Option(50, "--batch", help="Batch size."),
    lr: float = typer.Option(3e-4, "--lr", help="Peak AdamW learning rate."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    warmup: float = typer.Option(0.1, "--warmup", help="Fraction of steps of linear warm-up."),
    min_lr: float = typer.Option(1e-6, "--min-lr", help="Learning rate at the end of the cosine decay."),
    seed: int = typer.Option(42, "--seed"),
    segment_seconds: float = typer.Option(
        TRAINING_SEGMENT_S, "--segment-seconds", help="Training segment per identity."
    ),
    frames: int = typer.Option(TRAINING_FRAMES, "--frames", help="Radar frames per RF sample (T)."),
    rf_input: str = typer.Option(
        "beams", "--rf-input", help="RF encoder input: beams (heights x offsets around the person) or pairs."
    ),
    range_bins: int = typer.Option(8, "--range-bins", help="Range samples per channel (R)."),
    span_m: float = typer.Option(
        0.8, "--span-m", help="Extent of the range samples (m; bistatic path with --rf-input pairs)."
    ),
    channel_stride: int = typer.Option(1, "--channel-stride", help="Use every n-th virtual channel."),
    rf_shift: int = typer.Option(
        1,
        "--rf-shift",
        help="Stage 2: shift each beam grid by up to this many bins/offsets (0: off; beams only).",
    ),
    rf_reverse: float = typer.Option(
        0.5, "--rf-reverse", help="Stage 2: probability of playing an RF window backwards."
    ),
    anchor_jitter: float = typer.Option(0.1, "--anchor-jitter", help="Tracker error simulated (m, std)."),
    align_weight: float = typer.Option(
        10.0,
        "--align-weight",
        help="Stage 3 gate-calibration loss weight (0: the gate learns from CE alone).",
    ),
    geometry_weight: float = typer.Option(
        40.0,
        "--geometry-weight",
        help="Stage 3: keep each aligned embedding's pairwise cosines its encoder's (0: off).",
    ),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Preprocessing worker processes."),
    cache: Path | None = typer.Option(
        None, "--cache", help="Preprocessing cache (default DATASET/.vrclip-cache)."
    ),
    restart: bool = typer.Option(False, "--restart", help="Ignore an existing checkpoint in --out."),
) -> None:
    """Train VRCLIP in three stages (vision, RF, gate); resumes from OUT/checkpoint.pt after a kill."""
    from vrclip.export.train import TrainConfig, Trainer

    cfg = TrainConfig(
        dataset=dataset,
        out=out,
        preset=model_preset,
        weights=weights,
        epochs=epochs,
        vision_epochs=vision_epochs,
        rf_epochs=rf_epochs,
        gate_epochs=gate_epochs,
        batch_size=batch,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        min_lr=min_lr,
        seed=seed,
        segment_seconds=segment_seconds,
        frames=frames,
        rf_input=rf_input,
        range_bins=range_bins,
        span_m=span_m,
        channel_stride=channel_stride,
        rf_shift=rf_shift,
        rf_reverse=rf_reverse,
        anchor_jitter_m=anchor_jitter,
        align_weight=align_weight,
        geometry_weight=geometry_weight,
        threads=threads,
        jobs=jobs,
        cache=cache,
    )
    started = time.perf_counter()
    with _bar() as bar:
        prep_task = bar.add_task("preprocess", total=None, note="")

        def prep_tick(done: int, total: int, name: str) -> None:
            bar.update(prep_task, completed=done, total=total, note=name)

        tasks: dict[str, int] = {}

        def tick(stage: str, epoch: int, epochs_: int, step: int, steps: int, loss: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"stage {stage}", total=epochs_ * steps, note="")
            bar.update(
                tasks[stage],
                completed=epoch * steps + step,
                note=f"epoch {epoch + 1}/{epochs_} loss {loss:.4f}",
            )

        trainer = Trainer(cfg, progress=tick, log=console.print)
        trainer.prepare(prep_tick)
        prepared = time.perf_counter()
        console.print(
            f"{len(trainer.classes)} identities, {len(trainer.train_index)} training / "
            f"{len(trainer.test_index)} test "
            f"samples (preprocessing {prepared - started:.1f} s)"
        )
        final = trainer.run(restart=restart)
    typer.echo(
        f"wrote {final}: training {time.perf_counter() - prepared:.1f} s, "
        f"total {time.perf_counter() - started:.1f} s"
    )


def pretrain_vision(
    dataset: Path = typer.Argument(
        ..., help="Dataset folder whose rig (camera, room, JPEG quality) the crops are rendered through."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder: rendered crops, checkpoint, vision-pretrained.pt."
    ),
    model_preset: str = typer.Option("tiny", "--preset", help="Visual encoder configuration."),
    identities: int = typer.Option(400, "--identities", help="Pretraining people (none is in a dataset)."),
    sessions: int = typer.Option(6, "--sessions", help="Sessions per person (random light and occluder)."),
    frames: int = typer.Option(10, "--frames", help="Crops per session."),
    world_seed: int = typer.Option(7, "--world-seed", help="Who the pretraining people are."),
    epochs: int = typer.Option(
        16, "--epochs", help="Training epochs (12 -> 16: zero-shot mAP 73.5 -> 76.4 %)."
    ),
    batch: int = typer.Option(64, "--batch"),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Rendering worker processes."),
    restart: bool = typer.Option(False, "--restart", help="Ignore an existing checkpoint in --out."),
) -> None:
    """Pretrain the visual tower on rendered people outside any dataset; `train --weights` loads it."""
    from vrclip.export.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        dataset=dataset,
        out=out,
        preset=model_preset,
        identities=identities,
        sessions=sessions,
        frames=frames,
        world_seed=world_seed,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        seed=seed,
        threads=threads,
        jobs=jobs,
    )
    started = time.perf_counter()
    with _bar() as bar:
        render_task = bar.add_task("render", total=identities, note="")
        train_task: list[int] = []

        def tick(epoch: int, epochs_: int, step: int, steps: int, loss: float, accuracy: float) -> None:
            if not train_task:
                train_task.append(bar.add_task("pretrain", total=epochs_ * steps, note=""))
            bar.update(
                train_task[0],
                completed=epoch * steps + step,
                note=f"epoch {epoch + 1}/{epochs_} loss {loss:.3f} acc {accuracy:.3f}",
            )

        final = pretrain(
            cfg,
            progress=tick,
            render_progress=lambda d, t: bar.update(render_task, completed=d, total=t),
            log=console.print,
            restart=restart,
        )
    typer.echo(f"wrote {final} in {time.perf_counter() - started:.1f} s; train with --weights {final}")


def evaluate(
    checkpoint: Path = typer.Argument(..., help="A trained checkpoint (vrclip.pt or checkpoint.pt)."),
    dataset: Path = typer.Argument(..., help="The dataset folder the checkpoint was trained on."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics report (JSON) here."),
    figures: Path | None = typer.Option(None, "--figures", help="Folder for the PNGs (default: the JSON's)."),
    stride: int = typer.Option(3, "--stride", help="Use every n-th test sample of each track."),
    threads: int = typer.Option(2, "--threads"),
    jobs: int = typer.Option(2, "--jobs", "-j"),
    cache: Path | None = typer.Option(
        None, "--cache", help="Preprocessing cache (default DATASET/.vrclip-cache)."
    ),
    fusion_analysis: bool = typer.Option(
        False,
        "--fusion-analysis",
        help="Also score a fixed vision weight and a per-query best weight against the gate, and split "
        "each condition's queries by whether the crop shows the person "
        "(adds `fusion_analysis` to the JSON; 1-2 min more on 4,445 samples and 2 cores).",
    ),
) -> None:
    """mAP, CMC rank-1/5/10, precision, F1, localisation error; fused, vision-only, radio-only."""
    from vrclip.export.evaluate import EvalConfig, format_table
    from vrclip.export.evaluate import evaluate as run_evaluation

    cfg = EvalConfig(
        checkpoint, dataset, json_out, figures, stride, threads, jobs, cache, fusion_analysis=fusion_analysis
    )
    with _bar() as bar:
        prep_task = bar.add_task("preprocess", total=None, note="")
        emb_task = bar.add_task("embed", total=None, note="")
        result = run_evaluation(
            cfg,
            lambda d, t, n: bar.update(prep_task, completed=d, total=t, note=n),
            lambda d, t: bar.update(emb_task, completed=d, total=t),
            log=console.print,
        )
    typer.echo(format_table(result))
    if "fusion_analysis" in result:
        from vrclip.export.fusion_analysis import format_fusion_table

        typer.echo(format_fusion_table(result["fusion_analysis"]))


def register(app: typer.Typer) -> None:
    """Add `train`, `pretrain-vision` and `evaluate` to the vrclip-export app."""
    app.command("train")(train)
    app.command("pretrain-vision")(pretrain_vision)
    app.command("evaluate")(evaluate)


__all__ = ["evaluate", "pretrain_vision", "register", "train"]
