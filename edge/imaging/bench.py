"""`vrclip-edge bench imaging`: frames/s and accuracy of every available back-projection imager.

Cases: 144 channels x 201 points -> 128 x 128 (2D), the same with 1001 points, and the 3D grid
(128 x 128 x len(imaging.z_levels_m)) at 201 points. Every imager images the same input, a
simulated scene frame run through calibration and the running-mean clutter filter (what the
real pipeline feeds it), and rel_err is the relative L2 distance of its image from the exact
reference's. Timing: after one warm-up frame (GPU: kernel compile, cuFFT plan), the best of
`repeats` batches of `frames` frames, per frame; GPU work is synchronised before the clock is
read. The exact reference is slow (seconds a frame) and is timed over `exact_frames` frames.

JSON (``--json OUT``)::

    {"results": [{"impl": "exact"|"cpu"|"gpu", "grid": "128x128" | "128x128x4", "channels": 144,
                  "points": 201, "pad_factor": 8 (null for exact), "fps": ..., "ms_per_frame": ...,
                  "rel_err": ...}, ...]}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from vrclip.edge.config import EdgeConfig, load_config
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.imaging.grid import ImagingGrid
from vrclip.edge.imaging.imager import Imager, gpu_available, make_imager

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks of the edge runtime's hot paths.",
    no_args_is_help=True,
    add_completion=False,
)


@bench_app.callback()
def _group() -> None:
    """Benchmarks of the edge runtime's hot paths."""
    # A callback keeps `bench` a command group even while it holds a single command.


@dataclass(frozen=True)
class Case:
    points: int
    mode: str  # "2d" | "3d"


def simulated_frame(cfg: EdgeConfig, seed: int = 0) -> np.ndarray:
    """One conditioned frame (calibrated, background removed) of a person walking in the room."""
    from vrclip.edge.imaging.calibration import ChannelCalibration, ChannelCorrector
    from vrclip.edge.imaging.clutter import ClutterFilter
    from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator
    from vrclip.edge.sim.scene import Scene, SceneSpec

    geometry = load_geometry(cfg.radar.array)
    scene = Scene(SceneSpec(room=cfg.room, seed=seed))
    errors = FrontEndErrors.draw(geometry.n_channels, seed=seed + 1234)
    sim = RadarSimulator(scene, geometry, cfg.radar.sweep, errors)
    correct = ChannelCorrector(ChannelCalibration.from_front_end_errors(errors), sim.freqs_hz)
    clutter = ClutterFilter("mean", cfg.imaging.background_alpha)
    rng = np.random.default_rng(seed)
    clutter(correct(sim.frame(scene.state(0.0), rng)))
    return clutter(correct(sim.frame(scene.state(0.5), rng)))


def _time(imager: Imager, frame: np.ndarray, frames: int, repeats: int) -> tuple[float, Any]:
    """Best per-frame seconds over `repeats` batches, and the last image (after one warm-up)."""
    image = imager.image(frame)
    imager.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(frames):
            image = imager.image(frame)
        imager.synchronize()
        best = min(best, (time.perf_counter() - start) / frames)
    return best, image


def run_bench(
    cfg: EdgeConfig,
    cases: list[Case],
    impls: list[str],
    frames: int,
    exact_frames: int,
    repeats: int,
    on_row: Any = None,
    pad_factor: int | None = None,
) -> dict[str, Any]:
    """Measure every (case, impl); returns the JSON document. `on_row(row)` is called as rows finish.

    pad_factor overrides `imaging.zero_pad_factor` for the fast imagers; the exact reference
    sums over frequency directly and has no padding.
    """
    geometry = load_geometry(cfg.radar.array)
    results: list[dict[str, Any]] = []
    for case in cases:
        case_cfg = cfg.model_copy(deep=True)
        case_cfg.radar.sweep.points = case.points
        case_cfg.imaging.mode = case.mode  # type: ignore[assignment]
        grid = ImagingGrid.from_config(case_cfg)
        frame = simulated_frame(case_cfg)
        reference = None
        for impl in ["exact", *[i for i in impls if i != "exact"]]:
            imager = make_imager(case_cfg, geometry, impl, grid=grid, pad_factor=pad_factor)
            try:
                n = exact_frames if impl == "exact" else frames
                seconds, image = _time(imager, frame, n, 1 if impl == "exact" else repeats)
                host = imager.to_numpy(image).astype(np.float64)
            finally:
                imager.close()
            if reference is None:
                reference = host
            rel_err = float(np.linalg.norm(host - reference) / max(np.linalg.norm(reference), 1e-300))
            if impl not in impls:
                continue
            row = {
                "impl": impl,
                "grid": grid.label,
                "channels": geometry.n_channels,
                "points": case.points,
                "pad_factor": None if impl == "exact" else imager.pad_factor,
                "fps": 1.0 / seconds,
                "ms_per_frame": seconds * 1e3,
                "rel_err": rel_err,
            }
            results.append(row)
            if on_row is not None:
                on_row(row)
    return {"results": results}


def _table(results: list[dict[str, Any]]) -> Table:
    table = Table(title="back-projection imaging (best batch, per frame)")
    for name in ("impl", "grid", "ch", "points", "fps", "ms/frame", "x exact", "rel_err"):
        table.add_column(name, justify="left" if name in ("impl", "grid") else "right", no_wrap=True)
    exact = {(r["grid"], r["points"]): r["ms_per_frame"] for r in results if r["impl"] == "exact"}
    for r in results:
        ref = exact.get((r["grid"], r["points"]))
        speedup = f"{ref / r['ms_per_frame']:.0f}" if ref else "-"
        table.add_row(
            r["impl"], r["grid"], str(r["channels"]), str(r["points"]), f"{r['fps']:.1f}",
            f"{r['ms_per_frame']:.3f}", speedup, f"{r['rel_err']:.2e}",
        )  # fmt: skip
    return table


@bench_app.command("imaging")
def imaging(
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    impl: list[str] = typer.Option(
        [],
        "--impl",
        help="exact | cpu | gpu; repeatable (default: exact, cpu, and gpu where CuPy sees a GPU).",
    ),
    points: list[int] = typer.Option(
        [201, 1001], "--points", help="Sweep points of the 2D cases; repeatable."
    ),
    three_d: bool = typer.Option(True, "--3d/--no-3d", help="Also time the 3D grid (at the first --points)."),
    nx: int | None = typer.Option(None, "--nx", min=8, max=2048, help="Grid columns (default: imaging.nx)."),
    ny: int | None = typer.Option(None, "--ny", min=8, max=2048, help="Grid rows (default: imaging.ny)."),
    frames: int = typer.Option(50, "--frames", min=1, help="Frames per timed batch (fast imagers)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed batches; the best one is reported."),
    exact_frames: int = typer.Option(
        1, "--exact-frames", min=1, help="Frames to time the exact reference on."
    ),
    pad_factor: int | None = typer.Option(
        None,
        "--pad-factor",
        min=1,
        max=64,
        help="Zero-padding factor of the fast imagers' range FFT (default: imaging.zero_pad_factor, "
        "imaging.gpu_zero_pad_factor for the GPU). More padding lowers the interpolation error.",
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config TOML (default: built-in defaults)."
    ),
) -> None:
    """Time the exact, fast CPU and GPU imagers on a simulated frame; report frames/s and error vs exact."""
    cfg = load_config(config)
    if nx is not None:
        cfg.imaging.nx = nx
    if ny is not None:
        cfg.imaging.ny = ny
    impls = list(dict.fromkeys(impl)) or ["exact", "cpu", *(["gpu"] if gpu_available() else [])]
    unknown = [i for i in impls if i not in ("exact", "cpu", "gpu")]
    if unknown:
        raise UserError(f"--impl {unknown[0]!r}: choose exact, cpu or gpu")
    if "gpu" in impls and not gpu_available():
        raise UserError("--impl gpu: no CUDA device visible to CuPy (install the gpu extra and a driver)")
    bad = [p for p in points if not 2 <= p <= 100_001]
    if bad or not points:
        raise UserError(f"--points {bad[0] if bad else '(none)'}: sweep points must be between 2 and 100001")
    cases = [Case(p, "2d") for p in dict.fromkeys(points)]
    if three_d:
        cases.append(Case(points[0], "3d"))
    out = Console(highlight=False, soft_wrap=True, width=100)

    def progress(row: dict[str, Any]) -> None:
        out.print(
            f"  {row['impl']:5s} {row['grid']:>11s} x {row['points']:5d} points: {row['ms_per_frame']:.3f} ms"
        )

    result = run_bench(
        cfg, cases, impls, frames, exact_frames, repeats, on_row=progress, pad_factor=pad_factor
    )
    out.print(_table(result["results"]))
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write bench results to {json_out}: {exc.strerror or exc}") from None
        out.print(f"wrote {json_out}")
