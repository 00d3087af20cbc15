"""`vrclip-edge bench pipeline`: sustained rate, capture-to-event latency, drops, memory, identity accuracy.

The rig is simulated, but the simulator's own cost (rendering 1280x720 frames, synthesising 144
channels) would compete with the pipeline for the same two cores and measure the wrong thing: on
the edge box the sensors produce frames for free. So the bench first records a simulated session
(enrolled people plus unknown visitors), enrols the people from separate single-person sessions,
then replays the recording in a loop at the target rate, in real time, through the live pipeline
(capture threads, drop-oldest queues, synchroniser, imaging, tracker, engine, gallery, events).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import typer
from vrclip.edge.config import load_config, parse_config
from vrclip.edge.events.event import IdentityEvent
from vrclip.edge.events.health import Health
from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.pipeline.app import (
    ThresholdSweep,
    TruthScore,
    make_identifier,
    make_matcher,
    open_backend,
    replay_feed,
    require_engine_exists,
    with_workdir,
)
from vrclip.edge.pipeline.enrolment import bind_gallery, enroll_simulated_people
from vrclip.edge.pipeline.runner import EdgeRunner
from vrclip.edge.pipeline.sync import SyncedFrame
from vrclip.edge.record import RecordRequest, record_simulated
from vrclip.edge.sim.scene import SceneSpec, default_people

#: Open-set thresholds the bench re-scores the run's matches at.
SWEEP_THRESHOLDS = np.round(np.arange(0.30, 0.951, 0.05), 2)


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc), MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def bench_pipeline(
    json_out: Path | None = typer.Option(None, "--json", help="Write the figures as JSON here."),
    frames: int = typer.Option(2000, "--frames", min=10, help="Radar frames to process."),
    rate: float = typer.Option(12.5, "--rate", help="Simulated rig frame rate (Hz)."),
    people: int = typer.Option(2, "--people", help="Enrolled people walking."),
    unknown: int = typer.Option(1, "--unknown", help="Visitors who are not enrolled."),
    seconds: float = typer.Option(20.0, "--session-seconds", help="Length of the recorded session."),
    enroll_seconds: float = typer.Option(8.0, "--enroll-seconds", help="Enrolment per person."),
    warmup: int = typer.Option(100, "--warmup", help="Frames before the start-of-run memory reading."),
    engine: str | None = typer.Option(None, "--engine", help="Engine package (default engine.path)."),
    config_path: Path | None = typer.Option(None, "--config", "-c", help="Config TOML."),
    lighting: str = typer.Option("day", "--lighting"),
    occlusion: str = typer.Option("none", "--occlusion"),
    world_seed: int = typer.Option(42, "--world-seed"),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=-1.0,
        max=1.0,
        help="Open-set threshold (default gallery.threshold, else the engine manifest's).",
    ),
) -> None:
    """Run the pipeline on a replayed simulated session at the rig's rate and report what it sustains."""
    base = load_config(config_path)
    require_engine_exists(base, engine)
    data = base.model_dump(mode="json")
    data["radar"]["frame_rate_hz"] = rate
    data["camera"]["fps"] = rate
    data["zed"]["fps"] = rate / 2
    if threshold is not None:
        data["gallery"]["threshold"] = threshold
    with tempfile.TemporaryDirectory(prefix="vrclip-bench-") as tmp:
        work = Path(tmp)
        config = with_workdir(parse_config(data, source="bench settings"), work)
        names = default_people(people)
        visitors = tuple(f"visitor-{i:02d}" for i in range(unknown))
        spec = SceneSpec(
            room=config.room, people=names + visitors, lighting=lighting, occlusion=occlusion,
            seed=7, world_seed=world_seed,
        )  # fmt: skip
        session = work / "session.h5"
        typer.echo(f"recording a {seconds:.0f} s simulated session at {rate} Hz ...", err=True)
        record_simulated(config, RecordRequest(session, seconds, spec))
        for report in enroll_simulated_people(
            config, engine, names, enroll_seconds, world_seed, seed_base=100
        ):
            typer.echo(f"enrolled {report.name}: {report.stored} exemplars", err=True)
        store = GalleryStore(config.gallery.path)
        results = _measure(config, engine, session, store, frames, warmup, set(names))
        store.close()
    results["target_fps"] = rate
    text = json.dumps(results, indent=2)
    typer.echo(text)
    if json_out is not None:
        json_out.write_text(text + "\n")


def _measure(  # type: ignore[no-untyped-def]
    config, engine, session: Path, store: GalleryStore, frames: int, warmup: int, enrolled: set[str]
) -> dict:
    backend = open_backend(config, engine)
    bind_gallery(store, backend)
    matcher, source = make_matcher(config, backend, store.path, lambda line: typer.echo(line, err=True))
    feed = replay_feed(session, paced=True, loop=True)
    health = Health(tuple(feed.sources))
    identifier = make_identifier(feed, backend, match=matcher.match_batch, count=health.count)
    score = TruthScore()
    sweep = ThresholdSweep()
    current: dict[str, SyncedFrame] = {}
    memory: dict[str, float] = {}

    def on_frame(synced: SyncedFrame) -> None:
        current["frame"] = synced

    def emit(event: IdentityEvent) -> None:
        truth = current["frame"].radar.truth
        if truth is not None:
            score.score(event, truth.named_positions(), enrolled)

    processed = [0]

    def on_results(synced: SyncedFrame, results) -> None:  # type: ignore[no-untyped-def]
        processed[0] += 1
        truth = synced.radar.truth
        if results and truth is not None:
            people = truth.named_positions()
            for result, m in zip(
                results, matcher.match_batch(np.stack([r.smoothed for r in results])), strict=True
            ):
                sweep.add(m.score, m.best, result.position, people, enrolled)
        if processed[0] == warmup:
            memory["start"] = rss_mb()
            memory["t_start"] = time.monotonic()

    runner = EdgeRunner(
        identifier,
        feed.sources,
        health,
        slop_ns=int(config.sync.slop_ms * 1e6),
        emit=emit,
        on_frame=on_frame,
        on_results=on_results,
    )
    imager = identifier.imaging.imager.name
    started = time.monotonic()
    summary = runner.run(threading.Event(), max_frames=frames + warmup)
    memory["end"] = rss_mb()
    elapsed = time.monotonic() - memory.get("t_start", started)
    snapshot = health.snapshot()
    latency = snapshot["latency_ms"].get("capture_to_event", {})
    dropped = sum(int(s.get("dropped", 0)) for name, s in snapshot["sources"].items() if name != "pipeline")
    identifier.close()
    backend.close()
    matcher.store.close()
    feed.close()
    truth = score.summary()
    return {
        "fps": round(frames / elapsed, 2) if elapsed > 0 else None,
        "frames": summary.frames - warmup,
        "dropped": dropped,
        "latency_ms": {"p50": latency.get("p50"), "p99": latency.get("p99")},
        "rss_mb": {"start": round(memory.get("start", float("nan")), 1), "end": round(memory["end"], 1)},
        "identity_accuracy": truth["known_accuracy"],
        "unknown_accuracy": truth["unknown_accuracy"],
        "events": {"known": truth["known_events"], "unknown": truth["unknown_events"]},
        "backend": type(backend).__name__,
        "imager": imager,
        "threshold": matcher.threshold,
        "threshold_source": source,
        # Every frame's match of every track, re-scored: the trade-off behind gallery.threshold.
        "threshold_sweep": sweep.table(SWEEP_THRESHOLDS),
        "suggested_threshold": sweep.best_threshold(SWEEP_THRESHOLDS),
    }
