"""The edge pipeline end to end on the simulated rig, with a tiny engine package (not a trained model).

What is checked here is the plumbing a user relies on: frames flow, people are tracked where they
are, events carry the live modalities, a failing sensor degrades instead of stopping the process,
replays end cleanly, enrolment refuses crowded frames, systemd hears READY only once frames flow.
Identity accuracy with the trained model is measured by `vrclip-edge bench pipeline`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import ConfigError, SensorError
from vrclip.edge.events.health import Health
from vrclip.edge.frames import CameraFrame
from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.geometry import load_geometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.inference.factory import open_engine
from vrclip.edge.manifest import EngineManifest, load_manifest, write_manifest
from vrclip.edge.pipeline.app import (
    hardware_feed,
    load_rig_calibration,
    make_identifier,
    replay_feed,
    simulated_feed,
)
from vrclip.edge.pipeline.enrolment import enrol_from_feed
from vrclip.edge.pipeline.runner import EdgeRunner
from vrclip.edge.record import RecordRequest, record_simulated
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.sim.scene import SceneSpec

from tests.scripts import console_script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes.models import TinySpec, tiny_package

CHANNELS = [0, 13, 26, 39]
SPEC = TinySpec(height=32, width=16, frames=3, channels=len(CHANNELS), range_bins=8)
FAST = {"radar": {"frame_rate_hz": 8}, "camera": {"fps": 8, "width": 320, "height": 180}, "zed": {"fps": 4}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engine")
    onnx_path = tiny_package(folder, spec=SPEC)
    data = load_manifest(folder / "model.json").model_dump(mode="json")
    data["preprocessing"]["rf"]["window"] = {
        "frames": SPEC.frames, "range_bins": SPEC.range_bins, "channels": CHANNELS, "pad_factor": 8,
        "background": "running",
    }  # fmt: skip
    write_manifest(folder / "model.json", EngineManifest.model_validate(data))
    return onnx_path


@pytest.fixture()
def config() -> EdgeConfig:
    return EdgeConfig.model_validate(FAST)


def run_for(feed, engine: Path, seconds: float, wrap=None, **kwargs):  # type: ignore[no-untyped-def]
    backend = open_engine(engine, "onnxruntime")
    if wrap is not None:
        backend = wrap(backend)
    identifier = make_identifier(feed, backend, **kwargs)
    health = Health(tuple(feed.sources))
    frames = []
    runner = EdgeRunner(
        identifier,
        feed.sources,
        health,
        slop_ns=int(feed.config.sync.slop_ms * 1e6),
        lossless=feed.lossless,
        on_results=lambda synced, results: frames.append(
            (synced, results, [t.position.copy() for t in identifier.tracker.confirmed()])
        ),
    )
    summary = runner.run(threading.Event(), duration_s=seconds)
    backend.close()
    return summary, frames, health


def test_simulated_rig_tracks_people_where_they_are(engine: Path, config: EdgeConfig) -> None:
    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    try:
        summary, frames, health = run_for(feed, engine, 4.0)
    finally:
        feed.close()
    assert summary.frames >= 20, summary
    errors = []
    for synced, _, tracks in frames:
        truth = feed.truth(synced.radar.t_ns)[0][1]
        if tracks:
            errors.append(min(np.hypot(*(t - truth)) for t in tracks))
    assert len(errors) >= 10 and np.median(errors) < 0.3
    results = [r for _, rs, _ in frames for r in rs]
    assert results, "no track ever reached the engine"
    assert all(abs(np.linalg.norm(r.embedding) - 1) < 1e-4 for r in results)
    assert any(r.camera_live for r in results)
    assert health.snapshot()["modalities"]["radar"]["state"] == "up"


class AnchorEcho:
    """A backend that records the anchors it is fed and answers with the newest as the position."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.fed: list[np.ndarray] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(self.inner.infer(feeds))
        anchors = feeds["anchor"]
        newest = np.array(anchors[:, -1] if anchors.ndim == 3 else anchors, np.float32)
        self.fed.append(newest)
        out["position"] = newest.copy()
        return out


def test_engines_read_and_write_positions_centred_on_the_array(engine: Path) -> None:
    """An array installed away from the room's origin: the engine sees array-centred anchors (what
    it was trained on) and the published position is back in room coordinates."""
    config = EdgeConfig.model_validate(
        {**FAST, "radar": {**FAST["radar"], "array": {"position_m": [1.0, -0.5, 1.0]}}}
    )
    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    echo: list[AnchorEcho] = []

    def wrap(backend):  # type: ignore[no-untyped-def]
        echo.append(AnchorEcho(backend))
        return echo[-1]

    try:
        _, frames, _ = run_for(feed, engine, 4.0, wrap=wrap)
    finally:
        feed.close()
    results = [(synced, r) for synced, rs, _ in frames for r in rs]
    assert len(results) >= 10 and echo[0].fed
    errors = [
        np.hypot(*(np.asarray(r.position) - feed.truth(synced.radar.t_ns)[0][1])) for synced, r in results
    ]
    assert np.median(errors) < 0.3  # room coordinates, where the person is
    fed = np.concatenate(echo[0].fed)
    published = np.array([r.position for _, r in results])
    centre = published[: len(fed)] - fed[: len(published)]
    assert np.all(np.abs(centre - centre[0]) < 1e-5) and np.hypot(*(centre[0] - [1.0, -0.5])) < 0.1


class BrokenCamera:
    modality = "camera"

    def open(self) -> None:
        raise SensorError("camera 0: unplugged (test)")

    def read(self):  # type: ignore[no-untyped-def]
        raise AssertionError("never opened")

    def close(self) -> None:
        pass


def test_a_dead_camera_degrades_instead_of_stopping(engine: Path, config: EdgeConfig) -> None:
    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    feed.sources["camera"] = BrokenCamera
    try:
        summary, frames, health = run_for(feed, engine, 3.0)
    finally:
        feed.close()
    assert summary.frames >= 15
    camera = health.snapshot()["modalities"]["camera"]
    assert camera["state"] == "down" and "unplugged" in camera["last_error"]
    results = [r for _, rs, _ in frames for r in rs]
    assert results and not any(r.camera_live for r in results)


class DoubleSizeCamera:
    """The simulated camera delivering twice camera.width x camera.height (a source without a size check)."""

    modality = "camera"

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner()

    def open(self) -> None:
        self.inner.open()

    def read(self) -> CameraFrame:
        frame = self.inner.read()
        height, width = frame.rgb.shape[:2]
        return CameraFrame(frame.seq, frame.t_ns, frame.clock, cv2.resize(frame.rgb, (2 * width, 2 * height)))

    def close(self) -> None:
        self.inner.close()


def test_a_camera_frame_that_cannot_be_cropped_only_takes_the_camera_out(
    engine: Path, config: EdgeConfig
) -> None:
    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    inner = feed.sources["camera"]
    feed.sources["camera"] = lambda: DoubleSizeCamera(inner)
    counted: dict[str, int] = {}
    warnings: list[str] = []
    try:
        summary, frames, _ = run_for(
            feed, engine, 3.0, count=lambda name, n: counted.update({name: counted.get(name, 0) + n}),
            warn=warnings.append,
        )  # fmt: skip
    finally:
        feed.close()
    assert summary.frames >= 15, "the run loop must go on"
    results = [r for _, rs, _ in frames for r in rs]
    assert results and not any(r.camera_live for r in results)
    # Every result whose radar frame was paired with a camera frame met a crop error (a radar frame
    # the camera had no frame for within the slop is identified without it, and counts none).
    cropped = [r for synced, rs, _ in frames if synced.camera is not None for r in rs]
    assert cropped and counted.get("camera_crop_errors", 0) >= len(cropped)
    crop_warnings = [w for w in warnings if "camera_crop_errors" in w]
    assert len(crop_warnings) == 1 and "640x360" in crop_warnings[0], "one warning, saying what is wrong"


class NonFiniteOutputs:
    """A backend whose 3rd answer has a NaN embedding and 5th an infinite position (FP16 overflow)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.calls = 0
        self.rows = 0
        self.poisoned: list[int] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: np.array(v, copy=True) for k, v in self.inner.infer(feeds).items()}
        self.calls += 1
        self.rows += len(out["embedding"])
        if self.calls in (3, 5):
            key = "embedding" if self.calls == 3 else "position"
            out[key].reshape(len(out[key]), -1)[0, 0] = np.nan if self.calls == 3 else np.inf
            self.poisoned.append(self.calls)
        return out


def test_non_finite_engine_outputs_are_dropped_and_counted(engine: Path, config: EdgeConfig) -> None:
    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    wrapped: list[NonFiniteOutputs] = []

    def wrap(backend):  # type: ignore[no-untyped-def]
        wrapped.append(NonFiniteOutputs(backend))
        return wrapped[-1]

    counted: dict[str, int] = {}
    try:
        _, frames, _ = run_for(
            feed, engine, 3.0, wrap=wrap,
            count=lambda name, n: counted.update({name: counted.get(name, 0) + n}),
        )  # fmt: skip
    finally:
        feed.close()
    assert wrapped[0].poisoned == [3, 5], "the run must get past both bad answers"
    assert counted == {"nonfinite_outputs": 2}
    results = [r for _, rs, _ in frames for r in rs]
    assert len(results) == wrapped[0].rows - 2, "only the two bad results are dropped"
    for r in results:
        assert np.all(np.isfinite(r.embedding)) and np.all(np.isfinite(r.smoothed))
        assert np.all(np.isfinite(r.position)) and np.isfinite(r.reliability)
    assert abs(np.linalg.norm(results[-1].smoothed) - 1) < 1e-4, "the track's running mean is intact"


def test_enrolment_survives_non_finite_engine_outputs(
    engine: Path, config: EdgeConfig, tmp_path: Path
) -> None:
    store = GalleryStore(tmp_path / "g.sqlite")
    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    backend = NonFiniteOutputs(open_engine(engine, "onnxruntime"))
    try:
        report = enrol_from_feed(feed, backend, store, "a", 3.0)
    finally:
        backend.close()
        feed.close()
    assert backend.poisoned == [3, 5]
    assert report.offered == backend.rows - 2, "the two bad results are never offered"
    assert report.stored > 0
    assert np.all(np.isfinite(store.exemplars("a")))
    store.close()


def test_replay_runs_to_the_end_of_the_recording(engine: Path, config: EdgeConfig, tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    record_simulated(config, RecordRequest(path, 2.0, SceneSpec(people=("a",), seed=5)))
    feed = replay_feed(path, paced=False)
    summary, frames, _ = run_for(feed, engine, 60.0)
    assert summary.reason == "radar stream ended"
    assert summary.frames == 16, "an offline replay must process every radar frame"
    assert sum(synced.camera is not None for synced, _, _ in frames) == 16, (
        "and pair each with its camera frame"
    )
    import h5py
    from vrclip.edge.errors import RecordingError

    with h5py.File(path, "r+") as f:
        f.attrs["config_toml"] = "[camera\nwidth = 3"
    with pytest.raises(RecordingError, match=r"s\.h5: its stored config is unreadable"):
        replay_feed(path, paced=False)


def test_an_enrolment_recorded_can_be_enrolled_again_from_its_recording(
    engine: Path, config: EdgeConfig, tmp_path: Path
) -> None:
    """A gallery holds one model's embeddings: after a retrained engine, everyone had to come back
    to be enrolled again. `enroll --record FILE` keeps what the enrolment saw, and `enroll --replay
    FILE` enrols the person from it into a new gallery, without them."""
    recording = tmp_path / "enrol-a.h5"
    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    backend = open_engine(engine, "onnxruntime")
    try:
        with GalleryStore(tmp_path / "old.sqlite") as store:
            first = enrol_from_feed(feed, backend, store, "a", 3.0, record=recording)
    finally:
        feed.close()
    assert first.stored > 0 and first.recorded is not None and first.recorded["radar"] >= 20
    with SessionReader(recording) as reader:
        assert reader.identities == ("a",) and reader.count("camera") > 0
        assert reader.conditions["source"] == "vrclip-edge enroll"
    replay = replay_feed(recording, paced=False)
    try:
        with GalleryStore(tmp_path / "new.sqlite") as store:
            again = enrol_from_feed(replay, backend, store, "a", 60.0)
            assert again.stored > 0 and [i.name for i in store.identities()] == ["a"]
    finally:
        backend.close()
        replay.close()
    assert again.frames == first.recorded["radar"]  # every recorded frame went through again


def test_enrolment_rejects_frames_with_two_people(engine: Path, config: EdgeConfig, tmp_path: Path) -> None:
    store = GalleryStore(tmp_path / "g.sqlite")
    feed = simulated_feed(config, SceneSpec(people=("a", "b"), seed=11), scpi=False)
    backend = open_engine(engine, "onnxruntime")
    try:
        report = enrol_from_feed(feed, backend, store, "a", 4.0)
    finally:
        backend.close()
        feed.close()
    assert report.offered > 0
    assert report.rejected >= report.offered * 0.5
    solo = simulated_feed(config, SceneSpec(people=("a",), seed=11), scpi=False)
    backend = open_engine(engine, "onnxruntime")
    try:
        alone = enrol_from_feed(solo, backend, store, "solo", 3.0)
    finally:
        backend.close()
        solo.close()
    assert alone.stored > 0 and store.info("solo").exemplars == alone.stored
    store.close()


def start_simulated_run(
    engine: Path,
    tmp_path: Path,
    *,
    duration: int,
    unknown: int,
    stdout: int,
    watchdog_usec: str | None = None,
) -> tuple[subprocess.Popen, socket.socket]:
    """`vrclip-edge run --simulate` (one enrolled person, a small camera) notifying a socket we bind."""
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.2)
    config = tmp_path / "edge.toml"
    config.write_text("[radar]\nframe_rate_hz = 8\n[camera]\nwidth = 320\nheight = 180\n")
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = watchdog_usec
    exe = console_script("vrclip-edge")
    args = [exe, "run", "--simulate", "--direct-radar", "--engine", str(engine), "--config", str(config),
            "--duration", str(duration), "--people", "1", "--unknown", str(unknown), "--enroll-seconds", "2",
            "--workdir", str(tmp_path / "wd")]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    return proc, server


def test_run_cli_notifies_systemd_only_once_frames_flow(engine: Path, tmp_path: Path) -> None:
    proc, server = start_simulated_run(
        engine, tmp_path, duration=6, unknown=1, stdout=subprocess.PIPE, watchdog_usec="2000000"
    )
    messages: list[str] = []
    while proc.poll() is None:
        with contextlib.suppress(TimeoutError):
            messages.append(server.recv(4096).decode())
    out, err = proc.communicate()
    server.close()
    assert proc.returncode == 0, err
    text = "\n".join(messages)
    assert "READY=1" in text and "STOPPING=1" in text
    assert text.index("READY=1") < text.index("STOPPING=1")
    assert "WATCHDOG=1" in text
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert all(set(e["modalities"]) == {"radar", "camera", "depth"} for e in events)
    assert (tmp_path / "wd" / "events.jsonl").exists()


def test_run_cli_stops_cleanly_on_sigterm_and_says_why(engine: Path, tmp_path: Path) -> None:
    proc, server = start_simulated_run(engine, tmp_path, duration=120, unknown=0, stdout=subprocess.DEVNULL)
    messages: list[str] = []
    deadline = time.monotonic() + 90
    while not any("READY=1" in m for m in messages) and proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            messages.append(server.recv(4096).decode())
    assert proc.poll() is None, "the run ended before it was ready"
    proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    _, err = proc.communicate(timeout=30)
    stopped_in = time.monotonic() - asked
    with contextlib.suppress(TimeoutError):
        while True:
            messages.append(server.recv(4096).decode())
    server.close()
    assert proc.returncode == 0, err
    assert "stopped (SIGTERM)" in err and stopped_in < 15
    assert any("STOPPING=1" in m for m in messages)


def test_run_without_an_engine_is_a_one_line_error(tmp_path: Path) -> None:
    exe = console_script("vrclip-edge")
    result = subprocess.run(
        [exe, "run", "--engine", str(tmp_path / "missing.onnx")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "missing.onnx" in result.stderr and "vrclip-export onnx" in result.stderr


def test_bench_pipeline_reports_the_figures_it_promises(engine: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    exe = console_script("vrclip-edge")
    config = tmp_path / "edge.toml"
    config.write_text("[camera]\nwidth = 320\nheight = 180\n")
    args = [exe, "bench", "pipeline", "--engine", str(engine), "--config", str(config), "--json", str(out),
            "--frames", "30", "--warmup", "5", "--session-seconds", "3", "--enroll-seconds", "2"]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert set(figures) >= {
        "fps",
        "target_fps",
        "frames",
        "dropped",
        "latency_ms",
        "rss_mb",
        "identity_accuracy",
    }
    assert figures["frames"] == 30 and figures["target_fps"] == 12.5
    assert 0 < figures["fps"] <= 14
    assert figures["latency_ms"]["p50"] > 0 and figures["latency_ms"]["p99"] >= figures["latency_ms"]["p50"]
    assert figures["rss_mb"]["end"] > 50


def test_simulated_enrolment_goes_over_the_radar_transport_the_run_uses(
    monkeypatch: pytest.MonkeyPatch, config: EdgeConfig, tmp_path: Path
) -> None:
    """On site people enrol through the rig that later runs; in the simulator the SCPI path is slower
    than the direct one, and enrolling at another frame rate than the run's put the first events of a
    track far below the threshold (the RF encoder reads walking speed from frame-to-frame steps)."""
    from vrclip.edge.pipeline import enrolment

    seen: list[tuple[bool, float | None]] = []

    class Closed:
        def close(self) -> None:
            pass

    def fake_feed(config: EdgeConfig, spec: SceneSpec, *, scpi: bool, sweep_time_ms: float | None) -> Closed:
        seen.append((scpi, sweep_time_ms))
        return Closed()

    monkeypatch.setattr(enrolment, "simulated_feed", fake_feed)
    monkeypatch.setattr(enrolment, "open_backend", lambda config, engine: Closed())
    monkeypatch.setattr(enrolment, "enrol_from_feed", lambda *args, **kwargs: kwargs or args)
    cfg = config.model_copy(
        update={"gallery": config.gallery.model_copy(update={"path": str(tmp_path / "g.db")})}
    )
    enrolment.enroll_simulated_people(cfg, None, ("a", "b"), 1.0, 0, scpi=True, sweep_time_ms=0.5)
    enrolment.enroll_simulated_people(cfg, None, ("c",), 1.0, 0)
    assert seen == [(True, 0.5), (True, 0.5), (False, None)]


def test_a_configured_calibration_file_that_is_missing_stops_the_start(tmp_path: Path) -> None:
    typo = tmp_path / "calibraton.json"
    config = EdgeConfig.model_validate({"paths": {"calibration_file": str(typo)}})
    with pytest.raises(ConfigError) as caught:
        hardware_feed(config)
    assert str(typo) in str(caught.value) and "delay_s" in str(caught.value)
    unreadable = tmp_path / "a-folder.json"
    unreadable.mkdir()
    with pytest.raises(ConfigError, match=r"a-folder\.json"):
        hardware_feed(EdgeConfig.model_validate({"paths": {"calibration_file": str(unreadable)}}))


def test_a_calibration_file_is_loaded_and_only_the_default_location_may_be_absent(tmp_path: Path) -> None:
    n = load_geometry().n_channels
    path = tmp_path / "calibration.json"
    ChannelCalibration(np.full(n, 0.5 + 0.5j), np.zeros(n)).save(path)
    feed = hardware_feed(EdgeConfig.model_validate({"paths": {"calibration_file": str(path)}}))
    assert feed.calibration is not None and np.allclose(feed.calibration.gain, 0.5 + 0.5j)
    assert feed.warnings == []
    # The built-in default on a rig not calibrated yet: the run goes on, saying so loudly.
    absent = tmp_path / "not-yet.json"
    calibration, warning = load_rig_calibration(absent, n, may_be_absent=True)
    assert calibration is None and warning is not None
    assert "UNCALIBRATED" in warning and str(absent) in warning and "paths.calibration_file" in warning
    with pytest.raises(ConfigError, match=r"not-yet\.json"):
        load_rig_calibration(absent, n)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match=r"broken\.json"):
        load_rig_calibration(broken, n, may_be_absent=True)


def test_a_calibration_measured_on_another_sweep_is_loaded_with_a_warning(tmp_path: Path) -> None:
    """A delay is measured modulo one over the frequency step: after a sweep change the operator must
    hear that the calibration should be measured again (it still loads: the rig keeps running)."""
    config = EdgeConfig.model_validate({"paths": {"calibration_file": str(tmp_path / "cal.json")}})
    n = load_geometry(config.radar.array).n_channels
    sweep = config.radar.sweep
    same = ChannelCalibration(np.ones(n, complex), np.zeros(n), (sweep.start_hz, sweep.stop_hz, sweep.points))
    same.save(tmp_path / "cal.json")
    feed = hardware_feed(config)
    assert feed.calibration is not None and feed.calibration.sweep == same.sweep and feed.warnings == []
    other = ChannelCalibration(
        np.ones(n, complex), np.zeros(n), (sweep.start_hz, sweep.stop_hz, 2 * sweep.points)
    )
    other.save(tmp_path / "cal.json")
    feed = hardware_feed(config)
    assert feed.calibration is not None
    assert len(feed.warnings) == 1 and "re-run `vrclip-calibrate channels`" in feed.warnings[0]
    data = json.loads((tmp_path / "cal.json").read_text())
    data["sweep"] = {"start_hz": 3e9, "stop_hz": 1e9, "points": 201}
    (tmp_path / "cal.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"sweep = .*start_hz < stop_hz"):
        hardware_feed(config)


def test_a_clock_stepped_back_does_not_silence_a_tracked_person(engine: Path, config: EdgeConfig) -> None:
    """NTP stepping the wall clock back (a box that booted an hour fast) must not hold back the
    periodic events of people already tracked until the clock has caught up again."""
    from vrclip.edge.gallery.matcher import Match
    from vrclip.edge.pipeline.sync import SyncedFrame

    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    backend = open_engine(engine, "onnxruntime")
    identifier = make_identifier(feed, backend, match=lambda e: [Match("a", 0.9, "a")] * len(e))
    sources = {name: factory() for name, factory in feed.sources.items()}
    for source in sources.values():
        source.open()
    hour_ns = 3600 * 10**9
    before: list[int] = []
    after: list[int] = []
    try:
        for k in range(48):  # 8 frames/s: 3 s on the clock as it was, then 3 s an hour earlier
            radar, camera = sources["radar"].read(), sources["camera"].read()
            if k >= 24:
                radar = dataclasses.replace(radar, t_ns=radar.t_ns - hour_ns)
                camera = dataclasses.replace(camera, t_ns=camera.t_ns - hour_ns)
            _, events = identifier.step(SyncedFrame(radar, camera, None))
            (after if k >= 24 else before).extend(e.track_id for e in events)
    finally:
        for source in sources.values():
            source.close()
        identifier.close()
        backend.close()
        feed.close()
    assert before, "the person was identified before the step"
    assert len(set(before)) == 1, before
    assert after.count(before[-1]) >= 2, f"events of the tracked person after the step: {after}"


class ScriptedPerson:
    """A backend that answers with the embedding of whoever the test says stands there (`who`)."""

    def __init__(self, inner, people: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.people = people
        self.who = next(iter(people))

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: np.array(v, copy=True) for k, v in self.inner.infer(feeds).items()}
        out["embedding"] = np.tile(self.people[self.who], (len(out["embedding"]), 1))
        return out

    def match(self, embeddings: np.ndarray):  # type: ignore[no-untyped-def]
        """The gallery: the nearest of `people` by cosine."""
        from vrclip.edge.gallery.matcher import Match

        names = list(self.people)
        scores = embeddings @ np.stack([self.people[n] for n in names]).T
        return [Match(names[int(np.argmax(s))], float(np.max(s)), names[int(np.argmax(s))]) for s in scores]


def test_after_a_radar_outage_a_track_is_named_from_fresh_frames_only(
    engine: Path, config: EdgeConfig
) -> None:
    """Alice stands still for 3 s; the radar is gone for 5 s; then Bob stands 1 m from where she was.
    The tracker keeps the track's id (he is within its widened gate), but its RF window and
    embedding mean start afresh: no result or event until T frames from after the outage, and no
    event calling Bob Alice."""
    from types import SimpleNamespace

    from vrclip.edge.pipeline.sync import SyncedFrame

    feed = simulated_feed(config, SceneSpec(people=("a",), seed=3), scpi=False)
    inner = open_engine(engine, "onnxruntime")
    dim = int(inner.manifest.outputs[0].sample_shape[0])
    alice, bob = np.zeros(dim, np.float32), np.zeros(dim, np.float32)
    alice[0], bob[1] = 1.0, 1.0
    backend = ScriptedPerson(inner, {"alice": alice, "bob": bob})
    identifier = make_identifier(feed, backend, match=backend.match)
    standing = {"at": (0.5, 3.0)}
    identifier.imaging.process = lambda s21: SimpleNamespace(  # type: ignore[method-assign]
        detections=[SimpleNamespace(x_m=standing["at"][0], y_m=standing["at"][1])]
    )
    radar_source = feed.sources["radar"]()
    radar_source.open()
    period_ns = round(1e9 / config.radar.frame_rate_hz)
    frames = SPEC.frames

    def step(t_ns: int) -> tuple[list, list]:  # type: ignore[type-arg]
        radar = dataclasses.replace(radar_source.read(), t_ns=t_ns)
        return identifier.step(SyncedFrame(radar, None, None))

    try:
        t0 = 10**18
        before = [e for k in range(24) for e in step(t0 + k * period_ns)[1]]
        assert {e.identity for e in before} == {"alice"}
        (track_id,) = {e.track_id for e in before}
        standing["at"], backend.who = (1.5, 3.0), "bob"
        t1 = t0 + 23 * period_ns + 5 * 10**9
        after: list[tuple[int, list]] = []  # type: ignore[type-arg]
        for k in range(16):
            results, events = step(t1 + k * period_ns)
            after.append((k, events))
            if k == 0:
                state = identifier.tracks[track_id]
                assert not state.rf.ready and state.embedding_sum is None and state.samples == 0
            if k < frames - 1:
                assert not results and not events, f"frame {k} after the outage used pre-outage frames"
    finally:
        radar_source.close()
        identifier.close()
        inner.close()
        feed.close()
    assert [t.track_id for t in identifier.tracker.confirmed()] == [track_id], "the tracker kept the id"
    named = [(k, e.identity) for k, events in after for e in events if e.track_id == track_id]
    assert named and named[0] == (frames - 1, "bob"), f"named at once from fresh frames: {named}"
    assert {name for _, name in named} == {"bob"}, f"Bob was called Alice after the outage: {named}"
