"""`vrclip-firmware`: tools for the radar front end (switch controller, VNA profiles)."""

from __future__ import annotations

from pathlib import Path

import typer
from vrclip.edge.cli_support import make_app, run
from vrclip.edge.config import load_config
from vrclip.edge.geometry import load_geometry

app = make_app(
    "vrclip-firmware", "Radar front-end tools: switch controller, switching sequence, VNA profiles."
)


@app.command("channels")
def channels(config: Path | None = typer.Option(None, "--config", "-c", help="Config TOML.")) -> None:
    """Print the virtual-channel table in switching order as the controller runs it.

    Columns: channel, the Tx and Rx port indices the controller uses (0-based, exactly what `SEL <tx> <rx>`
    and the uploaded `SEQ` take; see docs/switch_protocol.md), and the pair's antenna names, which keep
    their 1-based labels (port 0 is T1/R1).
    """
    geometry = load_geometry(load_config(config).radar.array)
    typer.echo("channel\ttx_port(0-based)\trx_port(0-based)\tname")
    for c, (tx, rx) in enumerate(geometry.pairs):
        typer.echo(f"{c}\t{tx}\t{rx}\t{geometry.channel_name(c)}")


@app.command("selftest")
def selftest(
    config: Path | None = typer.Option(None, "--config", "-c", help="Config TOML."),
    engine: str | None = typer.Option(
        None, "--engine", help="Engine package to check (default: the config's engine.path)."
    ),
    simulate: bool = typer.Option(
        False, "--simulate", help="Test the simulated rig (SCPI simulators, simulated cameras; no hardware)."
    ),
    frames: int = typer.Option(4, "--frames", min=1, max=100, help="Radar frames to measure."),
    camera_seconds: float = typer.Option(
        2.0, "--camera-seconds", min=0.2, max=60.0, help="How long to read the camera and the ZED."
    ),
    timeout: float = typer.Option(
        60.0, "--timeout", min=1.0, max=3600.0, help="Seconds after which a check that hangs fails."
    ),
    skip: str = typer.Option(
        "", "--skip", help="Checks to leave out, comma-separated (e.g. camera,depth; names above)."
    ),
    json_out: Path | None = typer.Option(
        None,
        "--json",
        help="Also write the results here as JSON. Checked before the checks run: not a folder, in an "
        "existing writable folder (not created).",
    ),
) -> None:
    """Check every part of the rig through the runtime's drivers: switch controller, VNA, whole radar
    frames (and which channels are dead), calibration file, camera, ZED, engine, gallery, free disk
    and clock sync. Exits 1 if a check fails. Run it after cabling, before `vrclip-calibrate`, and
    after any hardware change.

    Checks (--skip names): switch, vna, radar, calibration, camera, depth, engine, gallery, disk, clock.
    """
    from vrclip.firmware_tools.selftest import (
        SelfTestOptions,
        check_report_path,
        format_results,
        hardware_rig,
        run_selftest,
        simulated_rig,
        write_report,
    )

    cfg = load_config(config)
    options = SelfTestOptions(
        frames=frames,
        camera_seconds=camera_seconds,
        timeout_s=timeout,
        skip=tuple(s.strip() for s in skip.split(",") if s.strip()),
    )
    if json_out is not None:
        check_report_path(json_out)  # now, not after minutes of checks

    def announce(name: str) -> None:
        typer.echo(f"checking {name} ...", err=True)

    if simulate:
        with simulated_rig(cfg, engine or cfg.engine.path) as rig:
            results = run_selftest(rig, options, announce)
    else:
        from vrclip.edge.service.presence import refuse_if_service_runs

        refuse_if_service_runs(cfg.paths.control_socket)
        results = run_selftest(hardware_rig(cfg, engine), options, announce)
    typer.echo(format_results(results))
    if json_out is not None:
        typer.echo(f"wrote {write_report(json_out, results)}", err=True)
    failed = [r.name for r in results if r.status == "fail"]
    if failed:
        typer.echo(f"FAILED: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


def main() -> None:
    run(app)
