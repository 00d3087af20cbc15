"""`vrclip-edge`: the edge runtime's command line (config, recording, datasets, simulators, time base)."""

from __future__ import annotations

import contextlib
import glob
import signal
import socket
import threading
import time
from pathlib import Path

import typer
from vrclip.edge.cli_support import make_app, progress_bar, run
from vrclip.edge.config import EMPTY_CALIBRATION_FILE, EdgeConfig, config_to_toml, load_config
from vrclip.edge.errors import UserError
from vrclip.edge.gallery.cli import gallery_app
from vrclip.edge.imaging.bench import bench_app
from vrclip.edge.pipeline.bench import bench_pipeline
from vrclip.edge.pipeline.cli import register as register_pipeline_commands
from vrclip.edge.radar.sim_cli import sim_app
from vrclip.edge.service.install import install_service_command
from vrclip.edge.service.shutdown import ShutdownFlag
from vrclip.edge.timebase.cli import timebase_app

app = make_app("vrclip-edge", "VRCLIP edge runtime: sensors, simulators, recordings, imaging and identities.")
config_app = typer.Typer(help="Check and show the system configuration.", no_args_is_help=True)
dataset_app = typer.Typer(help="Synthetic training datasets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(dataset_app, name="dataset")
app.add_typer(timebase_app, name="timebase", help="Start protocol of the rig: time server and clients.")
app.add_typer(gallery_app, name="gallery")
bench_app.command("pipeline")(bench_pipeline)
app.add_typer(bench_app, name="bench")
app.add_typer(sim_app, name="sim")
register_pipeline_commands(app)
app.command("install-service")(install_service_command)

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="Config TOML (default: built-in defaults).")


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="The config TOML to validate.")) -> None:
    """Validate a config file; prints every problem with its key, value and allowed range, and warns
    when the radar cannot sweep the array as fast as radar.frame_rate_hz asks."""
    from vrclip.edge.events.sinks import mqtt_setup_problems
    from vrclip.edge.geometry import load_geometry
    from vrclip.edge.radar.budget import frame_rate_warning

    config = load_config(file)
    warning = frame_rate_warning(config, load_geometry(config.radar.array).n_channels)
    if warning is not None:
        typer.echo(f"warning: {file}: {warning}", err=True)
    # Files the service reads at start, checked here too: on the edge box they must load; elsewhere
    # (a laptop preparing the config) they may not be there yet, so these warn.
    for problem in mqtt_setup_problems(config.sinks):
        typer.echo(f"warning: {file}: {problem}", err=True)
    if not config.paths.calibration_file.strip():  # the real rig refuses it; simulated runs never read it
        typer.echo(f"warning: {file}: {EMPTY_CALIBRATION_FILE}", err=True)
    typer.echo(f"{file}: ok")


@config_app.command("show")
def config_show(config: Path | None = CONFIG_OPTION) -> None:
    """Print the effective config (the file's values over the defaults) as TOML."""
    typer.echo(config_to_toml(load_config(config)), nl=False)


@app.command("record")
def record(
    out: Path = typer.Option(..., "--out", "-o", help="Recording file to write (.h5)."),
    simulate: bool = typer.Option(False, "--simulate", help="Record the simulated rig (no hardware)."),
    seconds: float = typer.Option(10.0, "--seconds", min=0.1, help="Session length in seconds."),
    identity: list[str] = typer.Option(
        [],
        "--identity",
        "-i",
        help="Hardware rig: who walks in this session (repeat for each person); stored as the "
        "session's identities.",
    ),
    wait_start: bool = typer.Option(
        False,
        "--wait-start",
        help="Hardware rig: open the sensors, then start at the instant the rig's time server "
        "(sync.time_server, `vrclip-edge timebase serve`) broadcasts.",
    ),
    name: str = typer.Option(
        socket.gethostname(), "--name", help="This device's name, sent to the time server."
    ),
    start_timeout: float = typer.Option(
        120.0,
        "--start-timeout",
        min=0.1,
        help="With --wait-start: give up after this many seconds (at most a week).",
    ),
    people: int = typer.Option(1, "--people", help="Simulated rig: number of people walking."),
    lighting: str = typer.Option("day", "--lighting", help="Simulated rig: day | dusk | night"),
    occlusion: str = typer.Option("none", "--occlusion", help="Simulated rig: none | wall | furniture"),
    seed: int = typer.Option(0, "--seed", help="Simulated rig: walking paths and sensor noise."),
    world_seed: int = typer.Option(
        0,
        "--world-seed",
        help="Simulated rig: who the people are (person-00 is the same person for the same seed).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Record a session (radar, camera, depth) to HDF5: the real rig the config describes, in real
    time through the runtime's drivers (a faulty sensor is reported, the others recorded; Ctrl-C
    stops early and keeps the file), or with --simulate the simulated rig, with labels."""
    from vrclip.edge.record import check_session_seconds

    check_session_seconds(seconds)  # `inf` passes the option's minimum
    if not overwrite and (out.exists() or out.is_symlink()):
        raise UserError(f"{out}: file already exists; choose another path or pass --overwrite")
    cfg = load_config(config)
    if not simulate:
        _record_rig(cfg, out, seconds, tuple(identity), overwrite, wait_start, name, start_timeout)
        return
    if identity or wait_start:
        raise UserError(
            "--identity and --wait-start are for the hardware rig; the simulated rig names its "
            "people itself (--people, --world-seed)"
        )
    from vrclip.edge.record import RecordRequest, record_simulated
    from vrclip.edge.sim.scene import Lighting, SceneSpec, default_people, occluder_preset

    Lighting.preset(lighting)
    occluder_preset(occlusion, cfg.room)
    spec = SceneSpec(
        room=cfg.room,
        people=default_people(people),
        occlusion=occlusion,
        lighting=lighting,
        seed=seed,
        world_seed=world_seed,
    )
    started = time.perf_counter()
    # Ctrl-C sets a flag the frame loop reads: a KeyboardInterrupt raised wherever the main thread
    # happens to be was swallowed when it landed in one of h5py's garbage-collection callbacks
    # ("Exception ignored in ..."), and the recording went on.
    with _ctrl_c_flag() as interrupt, progress_bar() as bar:
        task = bar.add_task(f"recording {out.name}", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        request = RecordRequest(out, seconds, spec, overwrite=overwrite)
        counts = record_simulated(cfg, request, tick, stop=interrupt.is_set)
    elapsed = time.perf_counter() - started
    summary = ", ".join(f"{n} {stream}" for stream, n in counts.items())
    if interrupt.is_set():
        typer.echo(f"stopped early: {out} keeps {summary} frames{_replaced_note(out)}", err=True)
        raise typer.Exit(130)
    typer.echo(f"wrote {out}: {summary} frames in {elapsed:.1f} s")


def _replaced_note(out: Path) -> str:
    """Where `record --overwrite` keeps the file that a cut-short session was to replace (the writer
    sets it aside as `<name>.replaced-<random>`), as a clause for the message; "" when none is."""
    kept = sorted(out.parent.glob(f"{glob.escape(out.name)}.replaced-*"))
    return f"; the file it was to replace is kept as {', '.join(map(str, kept))}" if kept else ""


def _ctrl_c_flag() -> contextlib.AbstractContextManager[ShutdownFlag | threading.Event]:
    """Ctrl-C as a flag the session reads; off the main thread (the command called from a thread),
    where no signal handler can be installed, a flag nothing sets, as Ctrl-C reaches only the main one."""
    if threading.current_thread() is threading.main_thread():
        return ShutdownFlag(signals=(signal.SIGINT,))
    return contextlib.nullcontext(threading.Event())


def _record_rig(
    cfg: EdgeConfig,
    out: Path,
    seconds: float,
    identities: tuple[str, ...],
    overwrite: bool,
    wait_start: bool,
    name: str,
    start_timeout: float,
) -> None:
    """`record` on the real rig: a summary line per stream, and exit 1 if a stream recorded nothing."""
    from vrclip.edge.pipeline.app import hardware_feed
    from vrclip.edge.service.presence import refuse_if_service_runs

    refuse_if_service_runs(cfg.paths.control_socket)
    from vrclip.edge.record_live import NOTHING_UP_S, LiveRecordRequest, record_feed, time_server_start

    # With --overwrite the writer sets the old file aside and puts it back if nothing is recorded.
    replacing = out.exists() or out.is_symlink()
    server = cfg.sync.time_server
    waiter = time_server_start(server.host, server.port, name, start_timeout) if wait_start else None
    feed = hardware_feed(cfg)
    for warning in feed.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if waiter is not None:
        from vrclip.edge.timebase.clock_sync import unsynchronised_warning
        from vrclip.edge.timebase.start_protocol import host_port

        unsynced = unsynchronised_warning()
        if unsynced is not None:
            typer.echo(f"warning: {unsynced}", err=True)
        where = host_port(server.host, server.port)
        typer.echo(f"opening the sensors, then waiting for the start from {where}")
    try:
        # Ctrl-C sets a flag the session reads (see `record --simulate`): it ends the session early
        # and keeps the file.
        with _ctrl_c_flag() as interrupt, progress_bar() as bar:
            task = bar.add_task(f"recording {out.name}", total=seconds)
            result = record_feed(
                feed,
                LiveRecordRequest(out, seconds, identities=identities, overwrite=overwrite),
                lambda done, total: bar.update(task, completed=done),
                stop=interrupt,
                wait_start=waiter,
            )
    finally:
        feed.close()
    for stream, n in result.frames.items():
        line = f"  {stream}: {n} frames, {result.dropped[stream]} dropped"
        if stream in result.faults:
            line += f"; fault: {result.faults[stream]}"
        typer.echo(line)
    missing = result.missing()
    if len(missing) == len(result.frames):
        if replacing:
            kept = f"no new file was kept and {out} is still the file it was to replace"
        else:
            out.unlink(missing_ok=True)
            kept = "no file was kept"
        if result.error is not None:
            raise UserError(f"{result.error}; nothing was recorded, so {kept}")
        if result.stopped_early and not result.nothing_up:
            typer.echo(f"nothing was recorded before the interruption, so {kept}", err=True)
            raise typer.Exit(130)
        given_up = f" within {NOTHING_UP_S:g} s of the start" if result.nothing_up else ""
        raise UserError(
            f"no sensor delivered a frame{given_up} (faults above), so {kept}; check "
            "the rig's cables and the config's [radar], [camera] and [zed] sections, or record the "
            "simulated rig with --simulate"
        )
    how = "stopped early after" if result.stopped_early else "recorded"
    aside = _replaced_note(out) if result.stopped_early else ""
    typer.echo(f"wrote {out}: {how} {result.seconds:.1f} s{aside}")
    if result.error is not None:
        typer.echo(f"error: {result.error}; the file holds what was recorded before", err=True)
        raise typer.Exit(1)
    if missing:
        typer.echo(
            f"error: no {' or '.join(missing)} frames were recorded (see the faults above); the file "
            "holds the other streams",
            err=True,
        )
        raise typer.Exit(1)
    if interrupt.is_set():  # Ctrl-C: the file is kept, and the status says the session was cut
        raise typer.Exit(130)


@dataset_app.command("make")
def dataset_make(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Dataset folder (created; finished sessions are kept)."
    ),
    identities: int = typer.Option(20, "--identities", help="Number of identities."),
    sessions: int = typer.Option(3, "--sessions", help="Sessions per identity (conditions cycle)."),
    seconds: float = typer.Option(12.0, "--seconds", help="Length of each session."),
    rate: float = typer.Option(10.0, "--rate", help="Radar and camera frame rate (Hz)."),
    width: int = typer.Option(640, "--width", help="Camera frame width."),
    height: int = typer.Option(360, "--height", help="Camera frame height."),
    seed: int = typer.Option(42, "--seed"),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Worker processes."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Write a synthetic VRR-like dataset: one recording per (identity, session)."""
    from vrclip.edge.dataset import DatasetRequest, make_dataset, short_session_warning

    request = DatasetRequest(out, identities, sessions, seconds, seed, jobs, width, height, rate)
    warning = short_session_warning(seconds, rate)
    if warning is not None:
        typer.echo(f"warning: {warning}", err=True)
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("sessions", total=identities * sessions)

        def tick(done: int, total: int, path: str) -> None:
            bar.update(task, completed=done, total=total, description=path or "sessions")

        index = make_dataset(request, load_config(config), tick)
    typer.echo(f"wrote {index} ({identities * sessions} sessions) in {time.perf_counter() - started:.1f} s")


@app.command("label")
def label(
    recording: Path = typer.Argument(..., help="A one-person session recorded on the real rig (.h5)."),
    out: Path = typer.Option(..., "--out", "-o", help="The labelled copy to write (.h5)."),
    identity: str | None = typer.Option(
        None, "--identity", "-i", help="Who walked (default: the one identity the recording names)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Label a one-person recording with the radar's own track, so `vrclip-export train` can use it:
    wherever the runtime's imaging and tracker hold exactly one confirmed track, that is the person.
    Samples and JPEGs are copied bit for bit; only the labels change."""
    from vrclip.edge.label import label_recording

    with progress_bar() as bar:
        task = bar.add_task(f"tracking {recording.name}", total=None)
        result = label_recording(
            recording,
            out,
            identity=identity,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    share = result.labelled / max(result.radar_frames, 1)
    typer.echo(
        f"wrote {out}: {result.identity} labelled in {result.labelled} of {result.radar_frames} radar "
        f"frames ({share:.0%}) and {result.labelled_camera} of {result.camera_frames} camera frames"
    )
    if result.recorder_died:
        typer.echo(
            f"note: {recording} was still marked open by a recorder that died; labelled are the frames "
            "it had written, and the copy is a finished recording",
            err=True,
        )
    if result.crowded:
        typer.echo(
            f"warning: {result.crowded} radar frames had more than one track (someone else in the room?) "
            "and were left unlabelled",
            err=True,
        )


@app.command("inspect")
def inspect(file: Path = typer.Argument(..., help="A session recording (.h5).")) -> None:
    """Summarise a recording: streams, frame counts, clocks, duration, labelled frames, identities and
    conditions."""
    from vrclip.edge.recording.reader import SessionReader

    with SessionReader(file) as reader:
        typer.echo(f"{file}: session {reader.session_id} (schema {reader.schema_version}, {reader.writer})")
        typer.echo(f"  identities: {', '.join(reader.identities)}")
        typer.echo(f"  conditions: {reader.conditions}")
        for stream in reader.streams:
            n = reader.count(stream)
            line = f"  {stream:7s} {n:6d} frames, clock {reader.clock(stream)}"
            if stream == "radar" and n:
                # Only the first and last time stamps: reading the frames would cost the whole file.
                first, last = reader.times(stream, 0, 1)[0], reader.times(stream, n - 1, n)[0]
                line += f", {(int(last) - int(first)) / 1e9:.2f} s"
            if n:
                # The label counts only (no samples): what `vrclip-export train` can use of the file.
                count = reader.truth_block(stream, 0, n)["count"]
                people = int((count > 0).sum())
                if people:
                    line += f", {people} with people labelled"
                else:
                    line += ", labelled, nobody in them" if (count >= 0).any() else ", no labels"
            typer.echo(line)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
