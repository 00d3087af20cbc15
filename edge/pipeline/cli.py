"""`vrclip-edge run`, `vrclip-edge enroll` and `vrclip-edge bench pipeline`."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import typer
from vrclip.edge.config import EdgeConfig, load_config
from vrclip.edge.errors import UserError
from vrclip.edge.events.health import Health
from vrclip.edge.events.http import HealthServer
from vrclip.edge.events.sinks import build_sinks
from vrclip.edge.gallery.backup import GalleryBackups
from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.pipeline.app import (
    Feed,
    TruthScore,
    hardware_feed,
    make_identifier,
    make_matcher,
    open_backend,
    replay_feed,
    require_engine_exists,
    simulated_feed,
    with_workdir,
)
from vrclip.edge.pipeline.calibration_watch import CalibrationWatch
from vrclip.edge.pipeline.enrolment import (
    PeopleInView,
    bind_gallery,
    enrol_from_feed,
    enroll_simulated_people,
)
from vrclip.edge.pipeline.live_enrolment import LiveEnrolment
from vrclip.edge.pipeline.recorder import FrameRecorder
from vrclip.edge.pipeline.runner import EdgeRunner, radar_stall_s
from vrclip.edge.service.control import enrol_via_service, open_control_server
from vrclip.edge.service.notify import Notifier
from vrclip.edge.service.presence import refuse_if_service_runs
from vrclip.edge.service.shutdown import ShutdownFlag
from vrclip.edge.service.watchdog import WatchdogPinger
from vrclip.edge.sim.scene import SceneSpec, default_people

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="Config TOML (default: built-in defaults).")
ENGINE_OPTION = typer.Option(
    None, "--engine", help="Engine package (<name>.onnx/.engine/.json); default engine.path."
)


#: How long a live enrolment's commit in the run loop waits for another writer (`gallery import`).
RUN_LOOP_BUSY_TIMEOUT_S = 0.5


def run_pipeline(
    config: EdgeConfig,
    feed: Feed,
    engine: str | None,
    *,
    duration_s: float | None,
    events_stdout: bool,
    enrolled: set[str] | None = None,
    record: Path | None = None,
    record_seconds: float = 60.0,
    people: tuple[str, ...] = (),
) -> dict:
    """Run until stopped (SIGTERM/SIGINT), the duration ends or a replay ends; returns a summary."""
    backend = open_backend(config, engine)
    store = GalleryStore(config.gallery.path)
    bind_gallery(store, backend)
    # The run loop's own connection (live enrolment): a writer holding the lock must not stall it.
    store.set_busy_timeout(RUN_LOOP_BUSY_TIMEOUT_S)
    # Late-bound: the matcher warns (through the health counters) only once the run is under way.
    matcher, _ = make_matcher(
        config,
        backend,
        config.gallery.path,
        lambda line: typer.echo(line, err=True),
        warn=lambda message: warn(message),
    )
    sinks = build_sinks(config.sinks, stdout=events_stdout)
    health = Health(tuple(feed.sources))
    health.add_stats_source("sink", sinks.stats)
    score = TruthScore()
    http = None
    if config.sinks.http.enabled:
        http = HealthServer(health, config.sinks.http.host, config.sinks.http.port)

    def emit(event) -> None:  # type: ignore[no-untyped-def]
        sinks.emit(event)
        if feed.truth is not None and enrolled is not None:
            score.score(event, feed.truth(event.t_ns), enrolled)

    def warn(message: str) -> None:
        health.count("warnings")
        typer.echo(f"warning: {message}", err=True)

    for message in feed.warnings:
        warn(message)
    identifier = make_identifier(feed, backend, match=matcher.match_batch, warn=warn, count=health.count)
    watch = CalibrationWatch(feed.calibration, feed.freqs_hz, warn, health.count)
    if watch.active:
        health.add_stats_source("radar_calibration", watch.stats)
    backups = None
    if config.gallery.backup_dir:
        backups = GalleryBackups(
            config.gallery.path, config.gallery.backup_dir, config.gallery.backup_keep, warn
        ).start()
        health.add_stats_source("gallery", backups.stats)
    notifier = Notifier()
    recorder = None
    control = None
    live_enrolment = LiveEnrolment(store, config.gallery.exemplar_budget)
    people_in_view = PeopleInView(identifier)

    def enrol_from_results(synced, results) -> None:  # type: ignore[no-untyped-def]
        live_enrolment.offer(people_in_view.count(synced), [r.embedding for r in results])

    try:
        # Before the sensors: a second run on this socket is refused at once, not after start-up.
        control = open_control_server(config.paths.control_socket, live_enrolment, warn)
        if record is not None:
            recorder = FrameRecorder(feed, record, record_seconds, health, identities=people, warn=warn)

        def on_frame(synced) -> None:  # type: ignore[no-untyped-def]
            watch.offer(synced)
            if recorder is not None:
                recorder.offer(synced)

        with ShutdownFlag(notifier) as stop, WatchdogPinger(notifier, status=health.status_line) as pinger:
            runner = EdgeRunner(
                identifier,
                feed.sources,
                health,
                slop_ns=int(config.sync.slop_ms * 1e6),
                lossless=feed.lossless,
                emit=emit,
                heartbeat=pinger.heartbeat,
                status_stream=sys.stderr,
                radar_stall_s=radar_stall_s(config),
                on_frame=on_frame,
                on_results=enrol_from_results if control is not None else None,
                warn=warn,
            )
            summary = runner.run(stop, duration_s=duration_s)
            if not stop.is_set():  # a duration or a replay ended it: tell systemd we are going
                notifier.send("STOPPING=1", f"STATUS=stopping: {summary.reason}")
    finally:
        if backups is not None:
            backups.stop()
        if control is not None:
            control.close()
        recorded = recorder.close() if recorder is not None else None
        identifier.close()
        sinks.close()
        store.close()
        matcher.store.close()
        backend.close()
        if http is not None:
            http.close()
    snapshot = health.snapshot()
    return {
        "frames": summary.frames,
        "events": summary.events,
        "seconds": round(summary.seconds, 2),
        "reason": summary.reason,
        "status": health.status_line(),
        "truth": score.summary() if feed.truth is not None and enrolled is not None else None,
        "recorded": recorded,
        "health": snapshot,
    }


def run(
    config_path: Path | None = CONFIG_OPTION,
    engine: str | None = ENGINE_OPTION,
    simulate: bool = typer.Option(False, "--simulate", help="Run on the simulated rig (no hardware)."),
    replay: Path | None = typer.Option(None, "--replay", help="Run on a recording instead of sensors."),
    duration: float | None = typer.Option(None, "--duration", min=0.1, help="Stop after this many seconds."),
    people: int = typer.Option(2, "--people", help="Simulated: people to enrol and let walk."),
    unknown: int = typer.Option(1, "--unknown", help="Simulated: extra people who are not enrolled."),
    enroll_seconds: float = typer.Option(8.0, "--enroll-seconds", help="Simulated: enrolment per person."),
    lighting: str = typer.Option("day", "--lighting", help="Simulated: day | dusk | night"),
    occlusion: str = typer.Option("none", "--occlusion", help="Simulated: none | wall | furniture"),
    seed: int = typer.Option(7, "--seed", help="Simulated: session seed."),
    world_seed: int = typer.Option(42, "--world-seed", help="Simulated: who the people are."),
    direct_radar: bool = typer.Option(
        False, "--direct-radar", help="Simulated: radar frames straight from the simulator, not over SCPI."
    ),
    sweep_time_ms: float = typer.Option(0.2, "--sweep-time-ms", help="Simulated VNA: time of one sweep."),
    workdir: Path = typer.Option(Path("vrclip-sim"), "--workdir", help="Simulated: gallery and events here."),
    events_stdout: bool = typer.Option(True, "--events-stdout/--no-events-stdout", help="Print events."),
    record: Path | None = typer.Option(
        None,
        "--record",
        help="Also write the frames the pipeline processes to this new recording (.h5), for "
        "`run --replay` and bug reports.",
    ),
    record_seconds: float = typer.Option(
        60.0, "--record-seconds", min=1.0, max=86400.0, help="With --record: stop recording after this long."
    ),
) -> None:
    """Run the edge pipeline: sensors -> imaging -> tracks -> fused engine -> gallery -> identity events."""
    config = load_config(config_path)
    if simulate and replay:
        raise UserError("give --simulate or --replay, not both")
    if record is not None and replay is not None:
        raise UserError(
            "--record with --replay would copy the recording; record the rig or the simulated rig"
        )
    if record is not None and (record.exists() or record.is_symlink()):
        raise UserError(
            f"{record}: file already exists; --record writes a new recording, choose another path"
        )
    require_engine_exists(config, engine)
    enrolled: set[str] | None = None
    people_in_scene: tuple[str, ...] = ()
    if simulate:
        workdir.mkdir(parents=True, exist_ok=True)
        config = with_workdir(config, workdir)
        Path(config.gallery.path).unlink(missing_ok=True)
        # --people 0 with visitors: nobody enrolled beforehand (e.g. to enrol one with `enroll --service`).
        names = default_people(people) if people > 0 or unknown < 1 else ()
        reports = enroll_simulated_people(
            config,
            engine,
            names,
            enroll_seconds,
            world_seed,
            scpi=not direct_radar,
            sweep_time_ms=sweep_time_ms,
        )
        for report in reports:
            typer.echo(
                f"enrolled {report.name}: {report.stored} exemplars from {report.offered} frames "
                f"({report.rejected} rejected, {report.redundant} redundant)",
                err=True,
            )
        enrolled = set(names)
        visitors = tuple(f"visitor-{i:02d}" for i in range(unknown))
        spec = SceneSpec(
            room=config.room, people=names + visitors, occlusion=occlusion, lighting=lighting,
            seed=seed, world_seed=world_seed,
        )  # fmt: skip
        people_in_scene = spec.people
        feed = simulated_feed(config, spec, scpi=not direct_radar, sweep_time_ms=sweep_time_ms)
    elif replay is not None:
        feed = replay_feed(replay)
        # A replay holds no sensors and has nobody to enrol: it must not take the running service's
        # control socket (and is not refused because the service has it).
        config = config.model_copy(update={"paths": config.paths.model_copy(update={"control_socket": ""})})
    else:
        feed = hardware_feed(config)
    try:
        result = run_pipeline(
            config,
            feed,
            engine,
            duration_s=duration,
            events_stdout=events_stdout,
            enrolled=enrolled,
            record=record,
            record_seconds=record_seconds,
            people=people_in_scene,
        )
    finally:
        feed.close()
    typer.echo(
        f"stopped ({result['reason']}): {result['frames']} frames, {result['events']} events", err=True
    )
    typer.echo(result["status"], err=True)
    if result["recorded"] is not None:
        written = ", ".join(f"{n} {stream}" for stream, n in result["recorded"].items() if n)
        typer.echo(f"recorded {written or 'no'} frames to {record}", err=True)
    if result["truth"] is not None:
        typer.echo(
            "identity check against the simulator's ground truth: " + json.dumps(result["truth"]), err=True
        )


def enroll(
    name: str = typer.Argument(..., help="Name of the person in front of the sensors."),
    seconds: float = typer.Option(10.0, "--seconds", min=1.0, help="How long to collect."),
    config_path: Path | None = CONFIG_OPTION,
    engine: str | None = ENGINE_OPTION,
    db: Path | None = typer.Option(None, "--db", help="Gallery file (default gallery.path)."),
    simulate: bool = typer.Option(False, "--simulate", help="Enrol a simulated person (named NAME)."),
    world_seed: int = typer.Option(42, "--world-seed", help="Simulated: who the people are."),
    replay: Path | None = typer.Option(None, "--replay", help="Enrol from a recording."),
    service: bool = typer.Option(
        False,
        "--service",
        help="Enrol through the running service (paths.control_socket): it keeps identifying meanwhile.",
    ),
    record: Path | None = typer.Option(
        None,
        "--record",
        help="Also record what the enrolment saw to this new file (.h5), to enrol the person again "
        "with a retrained engine later (--replay FILE) without them.",
    ),
) -> None:
    """Enrol NAME: collect embeddings while exactly one person is in view (other frames are rejected)."""
    config = load_config(config_path)
    if service:
        if simulate or replay is not None or engine is not None or db is not None or record is not None:
            raise UserError(
                "--service enrols with the running service's sensors, engine and gallery; "
                "leave out --simulate, --replay, --engine, --db and --record"
            )
        _enrol_through_service(config, name, seconds)
        return
    require_engine_exists(config, engine)
    if simulate:
        feed = simulated_feed(
            config, SceneSpec(room=config.room, people=(name,), world_seed=world_seed), scpi=False
        )
    elif replay is not None:
        feed = replay_feed(replay, paced=False)
    else:
        refuse_if_service_runs(config.paths.control_socket, "enrol through it with --service")
        feed = hardware_feed(config)
    for message in feed.warnings:
        typer.echo(f"warning: {message}", err=True)
    backend = open_backend(config, engine)
    store = GalleryStore(db or config.gallery.path)
    stop = threading.Event()
    try:
        report = enrol_from_feed(
            feed,
            backend,
            store,
            name,
            seconds,
            budget=config.gallery.exemplar_budget,
            stop=stop,
            record=record,
        )
    finally:
        store.close()
        backend.close()
        feed.close()
    _print_report(name, report.stored, report.offered, report.rejected, report.redundant)
    if report.recorded is not None:
        frames = ", ".join(f"{n} {stream}" for stream, n in report.recorded.items())
        typer.echo(f"recorded {record}: {frames} frames; enrol again later with --replay {record}")


def _enrol_through_service(config: EdgeConfig, name: str, seconds: float) -> None:
    from vrclip.edge.cli_support import progress_bar

    with progress_bar() as bar:
        task = bar.add_task(f"enrolling {name} (service)", total=round(seconds))

        def show(progress: dict) -> None:  # type: ignore[type-arg]
            bar.update(task, completed=min(round(seconds), int(progress.get("elapsed_s", 0))))

        report = enrol_via_service(config.paths.control_socket, name, seconds, show)
        bar.update(task, completed=round(seconds))
    if not report.get("frames"):
        raise UserError(
            f"nothing was enrolled for {name}: the service processed no radar frame meanwhile; "
            "is the radar up? (its /status says which sensor is down)"
        )
    _print_report(name, report["stored"], report["offered"], report["rejected"], report["redundant"])


def _print_report(name: str, stored: int, offered: int, rejected: int, redundant: int) -> None:
    typer.echo(
        f"{name}: {stored} exemplars stored from {offered} frames "
        f"({rejected} without exactly one person, {redundant} redundant)"
    )
    if stored == 0:
        raise UserError(f"nothing was enrolled for {name}: no frame showed exactly one person")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("enroll")(enroll)
