"""`vrclip-calibrate`: the on-site calibration wizard (radar channels, camera pose and crop check, array
geometry)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import TaskID
from vrclip.calibration.camera_pose import PoseFit
from vrclip.edge.cli_support import make_app, progress_bar, run
from vrclip.edge.config import EMPTY_CALIBRATION_FILE, EdgeConfig, load_config
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry

app = make_app("vrclip-calibrate", "On-site calibration wizard for the radar array and cameras.")

PROMPTS = {
    "empty": "Step 1 of 2: clear the monitored area (nobody and nothing moving in front of the array); "
    "the empty room is measured next.",
    "reflector": "Step 2 of 2: stand the corner reflector at x={x:.3f} y={y:.3f} z={z:.3f} m (room "
    "coordinates, surveyed to the centimetre), opening towards the array, then leave the area.",
}


@app.command("geometry")
def geometry(config: Path | None = typer.Option(None, "--config", "-c", help="Config TOML.")) -> None:
    """Print the array geometry the config selects, placed in the room (JSON)."""
    cfg = load_config(config)
    typer.echo(json.dumps(load_geometry(cfg.radar.array).to_dict(), indent=1))


@app.command("channels")
def channels(
    reflector: tuple[float, float, float] = typer.Option(
        ..., "--reflector", help="Where the corner reflector stands: x y z in metres, room coordinates."
    ),
    frames: int = typer.Option(20, "--frames", min=2, max=1000, help="Frames averaged per measurement."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Calibration file to write (default: the config's paths.calibration_file)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not wait for Enter before each measurement."),
    simulate: bool = typer.Option(
        False, "--simulate", help="Calibrate the simulated rig (SCPI simulators; no hardware)."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="Config TOML."),
) -> None:
    """Measure every radar channel's gain and delay (empty room, then a reflector) and write them to
    the calibration file the runtime reads. The file it replaces is kept as FILE.prev."""
    from vrclip.calibration.wizard import run_wizard

    cfg = load_config(config)
    if out is None and not cfg.paths.calibration_file.strip():
        raise UserError(f"{EMPTY_CALIBRATION_FILE}, or pass --out FILE.json")
    target = out if out is not None else Path(cfg.paths.calibration_file)
    if target.is_dir():
        raise UserError(f"{target}: is a directory; give the calibration a file name (--out FILE.json)")
    if not simulate:
        # The service's drift warning names this command while the service holds the VNA and the
        # switch: said now, before the wizard reconfigures the sweep under it or fails on a sensor.
        from vrclip.edge.service.presence import refuse_if_service_runs

        refuse_if_service_runs(cfg.paths.control_socket)
    console = Console(stderr=True)
    x, y, z = reflector
    bar = progress_bar()

    def prompt(step: str) -> None:
        # The progress display redraws its lines several times a second: left running, it wiped the
        # "Press Enter" line (and what the operator typed) off the terminal while waiting for them.
        bar.stop()
        console.print(PROMPTS[step].format(x=x, y=y, z=z))
        if not (yes or simulate):
            typer.prompt("Press Enter when ready", default="", show_default=False)

    def tick(step: str) -> Callable[[], None]:
        for done in bar.task_ids:  # already printed when the display stopped for the prompt
            bar.update(done, visible=False)
        task = bar.add_task(f"measuring: {step}", total=frames)
        bar.start()
        return lambda: bar.update(task, advance=1)

    try:
        result = run_wizard(
            cfg, np.array(reflector), target, frames=frames, simulate=simulate, prompt=prompt, tick=tick
        )
    finally:
        bar.stop()
    fit = result.fit
    snr = fit.snr_db
    worst = int(np.argmin(snr))
    typer.echo(
        f"{fit.calibration.n_channels} channels: echo {np.median(snr):.1f} dB over the noise (median; "
        f"weakest channel {worst}: {snr[worst]:.1f} dB), model misfit median {np.median(fit.residual):.2%} "
        f"(max {fit.residual.max():.2%})"
    )
    typer.echo(
        f"focus at the reflector: {fit.coherence:.3f} of a perfect coherent sum "
        f"(uncalibrated: {fit.coherence_uncalibrated:.3f})"
    )
    suspect = fit.suspect_channels()
    if suspect:
        typer.echo(f"warning: channels {', '.join(map(str, suspect))} measured poorly; check them", err=True)
    kept = f" (the previous one is kept as {result.previous})" if result.previous else ""
    typer.echo(f"wrote {result.path}{kept}")


@app.command("crops")
def crops(
    recording: Path = typer.Argument(..., help="A recording of one person walking (vrclip-edge record)."),
    out: Path = typer.Option(..., "--out", "-o", help="Contact sheet to write (.png or .jpg)."),
    count: int = typer.Option(32, "--crops", help="How many crops, evenly spaced over the walk."),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Take the camera pose from this config instead of the recording's (try a corrected pose "
        "on the same walk).",
    ),
) -> None:
    """Check the RGB camera's pose: tile the person crops the runtime would cut at the radar's track.
    The person should stand centred, head to feet, in every crop; if not, measure the pose with
    `vrclip-calibrate camera` (or fix camera.position_m, pitch_deg, yaw_deg, hfov_deg by hand)."""
    from vrclip.calibration.crops import crop_sheet, write_sheet

    sheet = crop_sheet(recording, count, camera_config=load_config(config) if config is not None else None)
    write_sheet(sheet, out)
    typer.echo(
        f"wrote {out}: {sheet.crops} crops from {sheet.tracked} radar-tracked frames; "
        f"{sheet.outside} fell outside the image (red frames)"
    )
    if sheet.outside:
        typer.echo(
            "warning: the radar tracked the person where the camera, as configured, does not look; "
            "measure its pose with `vrclip-calibrate camera`",
            err=True,
        )


@app.command("camera")
def camera(
    recording: Path = typer.Argument(
        ...,
        help="A recording of one person walking the whole area the camera sees, in good light, with "
        "nobody else in view (vrclip-edge record).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="The site config: the fit starts from its camera pose (default: the recording's own).",
    ),
    write: bool = typer.Option(
        False,
        "--write",
        help="Write the measured pose into the --config file (its comments kept, the old file kept as "
        "FILE.prev).",
    ),
) -> None:
    """Measure the RGB camera's pose (position, pitch, yaw, field of view) and how late it stamps its
    frames against the radar (latency_ms) from a walk: the radar's track says where the person stood,
    the camera's frames where it saw them. Check the result with
    `vrclip-calibrate crops RECORDING --config SITE.toml`."""
    from vrclip.calibration.camera_pose import MIN_WALK_S, measure_camera_pose, with_pose, write_pose

    _need_config_to_write(write, config, "the pose")
    start = load_config(config) if config is not None else None
    with progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def tick(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        fit = measure_camera_pose(recording, start, progress=tick)
    typer.echo(format_fit(fit, start))
    undetermined = fit.undetermined()
    if fit.poor_match():
        typer.echo(
            f"warning: the silhouettes do not follow the radar track (residual {fit.rms_px:.1f} px); "
            "was someone else in view, or the light changing?",
            err=True,
        )
    if undetermined:
        typer.echo(
            f"warning: the walk did not pin down {', '.join(undetermined)}; walk near and far, left and "
            "right, across everything the camera sees, and record again",
            err=True,
        )
    if fit.too_short():
        typer.echo(
            f"warning: the walk lasted only {fit.walk_s:.1f} s; the radar track's error averages out only "
            f"over {MIN_WALK_S:.0f} s or more, so the pose can be further off than its standard errors "
            "say; walk near and far, left and right, for longer, and record again",
            err=True,
        )
    if write:
        assert config is not None and start is not None
        _write_measurement(
            config,
            bool(undetermined or fit.poor_match() or fit.too_short()),
            "the camera pose",
            lambda: write_pose(config, with_pose(start, fit)),
        )
        typer.echo(f"check it: vrclip-calibrate crops {recording} --config {config} --out crops.png")


@app.command("intrinsics")
def intrinsics(
    sources: list[Path] = typer.Argument(
        ...,
        help="Views of a flat printed checkerboard: image files, or recordings (vrclip-edge record) of "
        "someone showing it around the room.",
    ),
    board: str = typer.Option(..., "--board", help="Inner corners across x down, e.g. 9x6."),
    square_mm: float = typer.Option(..., "--square-mm", help="Side of one printed square (mm)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The site config (its camera size is checked against the views)."
    ),
    write: bool = typer.Option(
        False,
        "--write",
        help="Write the lens (hfov_deg, principal_px, distortion) into the --config file (comments kept, "
        "the old file kept as FILE.prev).",
    ),
) -> None:
    """Measure the RGB camera's lens: focal length (hfov), principal point and distortion, from 10 or
    more views of a checkerboard. Run it before `vrclip-calibrate camera`, which then keeps the focal
    length it wrote."""
    from vrclip.calibration.intrinsics import Board, calibrate_lens, write_lens

    _need_config_to_write(write, config, "the lens")
    spec = Board.parse(board, square_mm)
    start = load_config(config) if config is not None else None
    with progress_bar() as bar:
        task = bar.add_task("looking for the board", total=None)
        configured = (start.camera.width, start.camera.height, str(config)) if start is not None else None
        fit = calibrate_lens(
            sources, spec, progress=lambda seen: bar.update(task, completed=seen), camera=configured
        )
    cx, cy = fit.principal_px
    typer.echo(
        f"board found in {fit.views_used} of {fit.views_seen} views; corners reproject {fit.rms_px:.2f} px "
        f"off (RMS); they covered {fit.coverage:.0%} of the image"
    )
    typer.echo(f"  camera.hfov_deg       {fit.hfov_deg:8.3f}")
    typer.echo(f"  camera.principal_px  [{cx:.2f}, {cy:.2f}]")
    typer.echo(f"  camera.distortion    [{', '.join(f'{v:.6f}' for v in fit.distortion)}]")
    problems = fit.problems()
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    if write:
        assert config is not None and start is not None
        _write_measurement(config, bool(problems), "the lens", lambda: write_lens(config, fit.applied(start)))
        typer.echo(f"next: vrclip-calibrate camera WALK.h5 --config {config} --write")


def _need_config_to_write(write: bool, config: Path | None, what: str) -> None:
    if write and config is None:
        raise UserError(f"--write needs --config SITE.toml: the config file to write {what} into")


def _write_measurement(
    config: Path, refused: bool, what: str, write: Callable[[], tuple[Path, Path | None]]
) -> None:
    """`--write` of `camera` and `intrinsics`: refuse a measurement the warnings above found wanting,
    else write it and say where (and where the replaced config was kept)."""
    if refused:
        raise UserError(f"{config}: not written, the measurement is not good enough (see the warnings)")
    written, previous = write()
    kept = f" (the previous one is kept as {previous})" if previous else ""
    typer.echo(f"wrote {what} into {written}{kept}")


def format_fit(fit: PoseFit, start: EdgeConfig | None) -> str:
    """The measured pose, each value with its standard error and what the config said."""
    pose = fit.pose
    rows = [
        ("camera.position_m[0]", pose.position_m[0], fit.sigma["x_m"], "m"),
        ("camera.position_m[1]", pose.position_m[1], fit.sigma["y_m"], "m"),
        ("camera.position_m[2]", pose.position_m[2], fit.sigma["z_m"], "m"),
        ("camera.pitch_deg", pose.pitch_deg, fit.sigma["pitch_deg"], "deg"),
        ("camera.yaw_deg", pose.yaw_deg, fit.sigma["yaw_deg"], "deg"),
        ("camera.hfov_deg", pose.hfov_deg, fit.sigma["hfov_deg"], "deg"),
        ("camera.latency_ms", fit.latency_ms, fit.sigma["lag_ms"], "ms"),
    ]
    before = None
    if start is not None:
        cam = start.camera
        before = [*cam.position_m, cam.pitch_deg, cam.yaw_deg, cam.hfov_deg, cam.latency_ms]
    lines = [
        f"fitted to {fit.frames_used} of {fit.frames_tracked} radar-tracked camera frames; "
        f"residual {fit.rms_px:.1f} px; the walker's silhouette is {fit.height_m:.2f} m tall"
    ]
    for k, (key, value, sigma, unit) in enumerate(rows):
        was = "" if before is None else f"   (config: {before[k]:.3f})"
        lines.append(f"  {key:<22} {value:8.3f} ± {sigma:.3f} {unit}{was}")
    return "\n".join(lines)


def main() -> None:
    run(app)
