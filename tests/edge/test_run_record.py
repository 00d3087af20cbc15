"""`vrclip-edge run --record`: what the pipeline saw goes to a recording, without ever holding it up."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vrclip.edge import cli as edge_cli
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import RecordingError, UserError
from vrclip.edge.events.health import Health
from vrclip.edge.pipeline.app import Feed, replay_feed, simulated_feed
from vrclip.edge.pipeline.recorder import FrameRecorder
from vrclip.edge.pipeline.sync import SyncedFrame
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.sim.scene import SceneSpec

FAST = {
    "radar": {"frame_rate_hz": 20},
    "camera": {"fps": 20, "width": 320, "height": 180},
    "zed": {"fps": 20},
}
PEOPLE = ("alice",)


@pytest.fixture()
def feed() -> Feed:
    return simulated_feed(EdgeConfig.model_validate(FAST), SceneSpec(people=PEOPLE, seed=1), scpi=False)


def _synced(feed: Feed, n: int) -> list[SyncedFrame]:
    sources = {name: factory() for name, factory in feed.sources.items()}
    for source in sources.values():
        source.open()
    return [
        SyncedFrame(sources["radar"].read(), sources["camera"].read(), sources["depth"].read())
        for _ in range(n)
    ]


def test_frames_offered_for_the_duration_are_written_and_replayable(feed: Feed, tmp_path: Path) -> None:
    frames = _synced(feed, 30)  # 20 frames/s: 1.5 s
    health = Health(tuple(feed.sources))
    recorder = FrameRecorder(feed, tmp_path / "run.h5", 1.0, health, identities=PEOPLE)
    for synced in frames:
        recorder.offer(synced)
    written = recorder.close()
    assert 18 <= written["radar"] <= 21 and written["camera"] == written["radar"] == written["depth"]
    with SessionReader(tmp_path / "run.h5") as reader:
        assert reader.counts == written
        assert reader.identities == PEOPLE and reader.conditions["source"] == "vrclip-edge run"
        assert reader.conditions["max_seconds"] == 1.0
        assert reader.radar(0).t_ns == frames[0].radar.t_ns
        assert reader.camera(0).truth is not None
    replay = replay_feed(tmp_path / "run.h5", paced=False)  # what `run --replay` reads
    radar = replay.sources["radar"]()
    radar.open()
    assert radar.read().t_ns == frames[0].radar.t_ns
    radar.close()


def test_a_run_stopped_before_its_cap_does_not_claim_the_cap_as_its_length(
    feed: Feed, tmp_path: Path
) -> None:
    """--record-seconds is a cap: the file claimed `seconds: 60` for a run stopped after 0.5 s. Its
    length is its frames' time span; the conditions keep the cap under its own name."""
    frames = _synced(feed, 10)  # 20 frames/s: 0.5 s
    recorder = FrameRecorder(feed, tmp_path / "run.h5", 60.0, Health(tuple(feed.sources)), identities=PEOPLE)
    for synced in frames:
        recorder.offer(synced)
    recorder.close()
    with SessionReader(tmp_path / "run.h5") as reader:
        assert "seconds" not in reader.conditions and reader.conditions["max_seconds"] == 60.0
        t = reader.times("radar")
        assert len(t) == 10 and (int(t[-1]) - int(t[0])) / 1e9 == pytest.approx(0.45, abs=0.02)


def test_a_slow_disk_drops_frames_instead_of_holding_up_the_pipeline(
    feed: Feed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = _synced(feed, 60)
    health = Health(tuple(feed.sources))
    recorder = FrameRecorder(feed, tmp_path / "slow.h5", 60.0, health, identities=PEOPLE)
    real = recorder.writer.write_radar
    gate = threading.Event()
    monkeypatch.setattr(recorder.writer, "write_radar", lambda frame: (gate.wait(5), real(frame)))
    began = time.monotonic()
    for synced in frames:
        recorder.offer(synced)
    assert time.monotonic() - began < 1.0, "offer() never waits for the disk"
    gate.set()
    written = recorder.close()
    dropped = health.counters["record_dropped"]
    assert dropped >= 60 - 33 and written["radar"] + dropped == 60


def test_a_disk_stalled_at_shutdown_does_not_hold_up_the_stop(
    feed: Feed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd kills a service that takes over 30 s to stop: close() gives up on the queued frames
    after its timeout, and the file is still closed once the stalled write returns."""
    frames = _synced(feed, 10)
    health = Health(tuple(feed.sources))
    warnings: list[str] = []
    recorder = FrameRecorder(
        feed, tmp_path / "stall.h5", 60.0, health, identities=PEOPLE, warn=warnings.append
    )
    real = recorder.writer.write_radar
    gate = threading.Event()
    monkeypatch.setattr(recorder.writer, "write_radar", lambda frame: (gate.wait(30), real(frame)))
    for synced in frames:
        recorder.offer(synced)
    began = time.monotonic()
    recorder.close(timeout_s=0.4)
    assert time.monotonic() - began < 1.5, "close() is bounded"
    assert health.counters["record_dropped"] >= 8
    assert any("were dropped so the file can close" in w for w in warnings)
    assert any("may be left incomplete" in w for w in warnings), "the write in progress is still stuck"
    gate.set()
    recorder._thread.join(10)
    assert not recorder._thread.is_alive()
    with SessionReader(tmp_path / "stall.h5") as reader:
        assert reader.count("radar") <= 2, "the frames dropped at close were not written after all"


def test_a_write_failure_stops_the_recording_with_a_warning_and_nothing_else(
    feed: Feed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = _synced(feed, 10)
    health = Health(tuple(feed.sources))
    warnings: list[str] = []
    recorder = FrameRecorder(
        feed, tmp_path / "full.h5", 60.0, health, identities=PEOPLE, warn=warnings.append
    )
    calls = iter(range(100))

    def failing(frame) -> None:  # type: ignore[no-untyped-def]
        if next(calls) >= 3:
            raise RecordingError("writing failed ([Errno 28] No space left on device)")

    monkeypatch.setattr(recorder.writer, "write_radar", failing)
    for synced in frames:
        recorder.offer(synced)
    deadline = time.monotonic() + 5
    while recorder.recording and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not recorder.recording
    recorder.offer(frames[0])  # the pipeline goes on offering: nothing happens, nothing raises
    recorder.close()
    assert health.counters["record_errors"] == 1
    assert any("No space left" in w and "pipeline goes on" in w for w in warnings)


def test_run_refuses_record_with_replay_and_an_existing_file(tmp_path: Path) -> None:
    runner = CliRunner()
    existing = tmp_path / "old.h5"
    existing.write_bytes(b"keep")
    result = runner.invoke(edge_cli.app, ["run", "--simulate", "--record", str(existing)])
    assert isinstance(result.exception, UserError) and "already exists" in str(result.exception)
    result = runner.invoke(
        edge_cli.app, ["run", "--replay", str(existing), "--record", str(tmp_path / "new.h5")]
    )
    assert isinstance(result.exception, UserError) and "--record with --replay" in str(result.exception)
    assert existing.read_bytes() == b"keep"


def test_a_nearly_full_disk_stops_the_recording_before_it_fills(
    feed: Feed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like `vrclip-edge record`, the recording stops while MIN_FREE_BYTES are still free: a disk
    that fills up leaves an unreadable HDF5 file, and the service's own files may share that disk."""
    from vrclip.edge import record_live

    frames = _synced(feed, 20)
    health = Health(tuple(feed.sources))
    warnings: list[str] = []
    free = {"bytes": 2 * record_live.MIN_FREE_BYTES}
    monkeypatch.setattr(record_live, "_free_bytes", lambda folder: free["bytes"])
    recorder = FrameRecorder(
        feed, tmp_path / "nearly-full.h5", 60.0, health, identities=PEOPLE, warn=warnings.append
    )
    for synced in frames[:5]:
        recorder.offer(synced)
    deadline = time.monotonic() + 5
    while recorder.health.counters["recorded_radar"] < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    free["bytes"] = record_live.MIN_FREE_BYTES // 2
    deadline = time.monotonic() + 5
    while recorder.recording and time.monotonic() < deadline:  # checked every DISK_CHECK_S
        time.sleep(0.05)
    assert not recorder.recording, "the recording went on with the disk nearly full"
    for synced in frames[5:]:
        recorder.offer(synced)
    written = recorder.close()
    assert health.counters["record_errors"] == 1
    assert any("free on its disk" in w and "pipeline goes on" in w for w in warnings)
    with SessionReader(tmp_path / "nearly-full.h5") as reader:  # closed, readable, what came before
        assert reader.counts == written and written["radar"] == 5


@pytest.mark.parametrize("step_s", [3600.0, -3600.0], ids=["clock stepped forward", "clock stepped back"])
def test_a_clock_step_neither_cuts_short_nor_stretches_the_recording(
    feed: Feed, tmp_path: Path, step_s: float
) -> None:
    """NTP stepping the wall clock during `run --record` (a Jetson that booted with a stale clock):
    the recording still lasts about its --record-seconds, not one frame, nor until the disk fills."""
    frames = _synced(feed, 80)  # 20 frames/s: 4 s
    step_ns = int(step_s * 1e9)
    frames = frames[:10] + [
        SyncedFrame(
            dataclasses.replace(s.radar, t_ns=s.radar.t_ns + step_ns),
            dataclasses.replace(s.camera, t_ns=s.camera.t_ns + step_ns),
            dataclasses.replace(s.depth, t_ns=s.depth.t_ns + step_ns),
        )
        for s in frames[10:]
    ]
    health = Health(tuple(feed.sources))
    recorder = FrameRecorder(feed, tmp_path / "step.h5", 3.0, health, identities=PEOPLE)
    for synced in frames:
        recorder.offer(synced)
    taken = recorder.close()["radar"] + health.counters["record_dropped"]  # the queue holds 32
    assert 35 <= taken <= 61, f"{taken} radar frames taken for a 3-s recording at 20 frames/s"
