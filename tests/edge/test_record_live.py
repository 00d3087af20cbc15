"""Recording a live feed: the simulated rig through the real VNA/switch drivers, faulty sensors, Ctrl-C."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner
from vrclip.edge import cli as edge_cli
from vrclip.edge import record_live
from vrclip.edge.config import EdgeConfig, config_to_toml
from vrclip.edge.errors import RecordingError, SensorError, UserError
from vrclip.edge.frames import CLOCK_REALTIME, CameraFrame
from vrclip.edge.pipeline import app as pipeline_app
from vrclip.edge.pipeline.app import Feed, simulated_feed
from vrclip.edge.pipeline.sources import Frame, FrameSource
from vrclip.edge.record_live import LiveRecordRequest, LiveRecordResult, record_feed
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.recording.writer import SessionWriter
from vrclip.edge.sim.scene import SceneSpec
from vrclip.edge.timebase import clock_sync
from vrclip.edge.timebase.clock import now_ns
from vrclip.edge.timebase.start_protocol import StartServer

from tests.scripts import console_script

FAST = {"radar": {"frame_rate_hz": 8}, "camera": {"fps": 8, "width": 320, "height": 180}, "zed": {"fps": 4}}
PEOPLE = ("alice", "bob")
runner = CliRunner()
app = edge_cli.app


@pytest.fixture()
def config() -> EdgeConfig:
    return EdgeConfig.model_validate(FAST)


def _feed(config: EdgeConfig, *, scpi: bool = False) -> Feed:
    return simulated_feed(config, SceneSpec(people=PEOPLE, seed=4), scpi=scpi)


def test_live_rig_through_the_real_drivers_is_recorded_inside_its_window(
    config: EdgeConfig, tmp_path: Path
) -> None:
    """Radar through pyvisa to the SCPI VNA simulator and the switch controller, camera and depth from
    the simulated rig: every stream lands in one readable file, stamped inside the session's window,
    with the people's labels, the rig's calibration and geometry."""
    feed = _feed(config, scpi=True)
    out = tmp_path / "live.h5"
    start = now_ns(CLOCK_REALTIME) + int(1.5e9)  # as from the time server: the drivers connect first
    seen: list[float] = []
    try:
        result = record_feed(
            feed,
            LiveRecordRequest(out, 2.0, identities=PEOPLE, start_ns=start, session_id="s-1"),
            progress=lambda done, total: seen.append(done),
        )
    finally:
        feed.close()
    assert result.missing() == [] and not result.stopped_early
    assert set(result.frames) == {"radar", "camera", "depth"}
    with SessionReader(out) as reader:
        assert reader.counts == result.frames
        assert reader.session_id == "s-1" and reader.created_ns == start
        assert reader.identities == PEOPLE and reader.conditions["source"] == "live"
        assert reader.calibration == feed.calibration.to_dict()
        assert reader.geometry == feed.geometry.to_dict()
        assert reader.count("radar") >= 2, "8 frames/s asked; a loaded 2-core box sweeps slower"
        for stream in ("radar", "camera", "depth"):
            times = reader.times(stream)
            assert times.min() >= start and times.max() < start + 2_000_000_000, stream
            assert np.all(np.diff(times) > 0), stream
        truth = reader.camera(0).truth
        assert truth is not None and set(truth.identities) <= set(PEOPLE)
        assert reader.radar(0).s21.shape == (feed.geometry.n_channels, feed.freqs_hz.size)
    assert seen and max(seen) == pytest.approx(2.0)


class _BlankCamera:
    """A camera delivering black frames of SHAPE at 20 frames/s, stamped on the rig's clock."""

    modality = "camera"
    SHAPE = (180, 320, 3)  # what the test config says

    def __init__(self) -> None:
        self.seq = 0

    def open(self) -> None:
        pass

    def read(self) -> CameraFrame:
        time.sleep(0.05)
        self.seq += 1
        rgb = np.zeros(self.SHAPE, np.uint8)
        return CameraFrame(seq=self.seq, t_ns=now_ns(CLOCK_REALTIME), clock=CLOCK_REALTIME, rgb=rgb)

    def close(self) -> None:
        pass


class _WrongSizeCamera(_BlankCamera):
    """A camera delivering 640x480 where the config says 320x180 (a driver that ignored the setting)."""

    SHAPE = (480, 640, 3)


class _DeadDepth:
    modality = "depth"

    def open(self) -> None:
        raise SensorError("ZED not found on USB")

    def read(self) -> None:  # pragma: no cover - never opened
        return None

    def close(self) -> None:
        pass


def test_a_faulty_sensor_is_reported_and_the_others_are_still_recorded(
    config: EdgeConfig, tmp_path: Path
) -> None:
    feed = _feed(config)
    feed.sources["camera"] = _WrongSizeCamera
    feed.sources["depth"] = _DeadDepth
    out = tmp_path / "faulty.h5"
    result = record_feed(feed, LiveRecordRequest(out, 1.5, identities=PEOPLE))
    assert result.frames["radar"] >= 5
    assert result.frames["camera"] == 0 and result.dropped["camera"] >= 5
    assert "(480, 640, 3)" in result.faults["camera"], "the refused frame's size is named"
    assert "ZED not found on USB" in result.faults["depth"]
    assert sorted(result.missing()) == ["camera", "depth"]
    with SessionReader(out) as reader:
        assert reader.counts == {"radar": result.frames["radar"], "camera": 0, "depth": 0}


def test_stopping_early_keeps_what_was_recorded(config: EdgeConfig, tmp_path: Path) -> None:
    feed = _feed(config)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    began = time.monotonic()
    result = record_feed(feed, LiveRecordRequest(tmp_path / "cut.h5", 30.0, identities=PEOPLE), stop=stop)
    assert time.monotonic() - began < 5
    assert result.stopped_early and 0.5 < result.seconds < 5
    with SessionReader(tmp_path / "cut.h5") as reader:
        assert reader.count("radar") == result.frames["radar"] >= 3


def test_labels_of_people_not_named_are_refused_per_frame(config: EdgeConfig, tmp_path: Path) -> None:
    """The simulated frames carry the scene's names; naming other people makes each labelled frame a
    refusal that says which name is unknown, not a crash and not a file with wrong labels."""
    feed = _feed(config)
    result = record_feed(feed, LiveRecordRequest(tmp_path / "x.h5", 1.0, identities=("carol",)))
    assert result.frames["radar"] == 0 and result.dropped["radar"] >= 3
    assert "alice" in result.faults["radar"] or "bob" in result.faults["radar"]


@pytest.mark.parametrize("identities", [("alice", "alice"), ("alice", "")])
def test_a_session_that_cannot_name_its_people_is_refused_before_the_sensors_open(
    config: EdgeConfig, tmp_path: Path, identities: tuple[str, ...]
) -> None:
    """`record --identity alice --identity alice` (or an empty name) was refused by the writer, made
    only once the sensors had opened (up to 30 s on a real rig) and, with --wait-start, at the
    time server's start instant, when every other box of the rig began recording without this one;
    and the message named SessionWriter's argument, not the option. Now it is refused first."""
    feed = _feed(config)
    opened: list[str] = []
    feed.sources = {
        name: (lambda name=name, make=make: opened.append(name) or make())
        for name, make in feed.sources.items()
    }
    started: list[bool] = []
    try:
        with pytest.raises(UserError, match="--identity"):
            record_feed(
                feed,
                LiveRecordRequest(tmp_path / "x.h5", 1.0, identities=identities),
                wait_start=lambda: started.append(True) or (now_ns(CLOCK_REALTIME), "s"),
            )
    finally:
        feed.close()
    assert opened == [] and started == [] and not (tmp_path / "x.h5").exists()


def test_bad_requests_are_user_errors(config: EdgeConfig, tmp_path: Path) -> None:
    feed = _feed(config)
    with pytest.raises(UserError, match="positive, finite number of seconds"):
        record_feed(feed, LiveRecordRequest(tmp_path / "a.h5", 0.0))
    past = now_ns(CLOCK_REALTIME) - int(10e9)
    with pytest.raises(UserError, match="passed already"):
        record_feed(feed, LiveRecordRequest(tmp_path / "b.h5", 1.0, start_ns=past))
    (tmp_path / "c.h5").write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists"):
        record_feed(feed, LiveRecordRequest(tmp_path / "c.h5", 1.0))
    assert (tmp_path / "c.h5").read_bytes() == b"keep me"


# ------------------------------------------------------------------------------------- the command
def _cli_config(tmp_path: Path, port: int = 7390) -> Path:
    data = {**FAST, "sync": {"time_server": {"port": port}}}
    path = tmp_path / "edge.toml"
    path.write_text(config_to_toml(EdgeConfig.model_validate(data)))
    return path


@pytest.fixture()
def rig(monkeypatch: pytest.MonkeyPatch) -> dict[str, Feed]:
    """`record` without --simulate opens the hardware rig; here the simulated one stands in for it."""
    made: dict[str, Feed] = {}

    def fake_hardware_feed(config: EdgeConfig) -> Feed:
        made["feed"] = _feed(config)
        return made["feed"]

    monkeypatch.setattr(pipeline_app, "hardware_feed", fake_hardware_feed)
    return made


def test_record_command_records_the_rig_and_summarises_each_stream(
    rig: dict[str, Feed], tmp_path: Path
) -> None:
    out = tmp_path / "site.h5"
    cfg = _cli_config(tmp_path)
    result = runner.invoke(
        app, ["record", "--out", str(out), "--seconds", "1", "-i", "alice", "-i", "bob", "-c", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: recorded 1.0 s" in result.output
    assert "radar:" in result.output and "camera:" in result.output and "depth:" in result.output
    with SessionReader(out) as reader:
        assert reader.identities == PEOPLE and min(reader.counts.values()) > 0
    again = runner.invoke(app, ["record", "--out", str(out), "--seconds", "1", "-c", str(cfg)])
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)


def test_record_command_exits_1_naming_a_stream_that_recorded_nothing(
    rig: dict[str, Feed], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pipeline_app.hardware_feed

    def without_depth(config: EdgeConfig) -> Feed:
        feed = real(config)
        feed.sources["depth"] = _DeadDepth
        return feed

    monkeypatch.setattr(pipeline_app, "hardware_feed", without_depth)
    out = tmp_path / "nodepth.h5"
    result = runner.invoke(
        app,
        [
            "record",
            "--out",
            str(out),
            "--seconds",
            "1",
            "-i",
            "alice",
            "-i",
            "bob",
            "-c",
            str(_cli_config(tmp_path)),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "ZED not found on USB" in result.output and "no depth frames were recorded" in result.output
    with SessionReader(out) as reader:
        assert reader.count("radar") > 0


def test_record_command_starts_at_the_time_servers_instant(rig: dict[str, Feed], tmp_path: Path) -> None:
    out = tmp_path / "synced.h5"
    with StartServer("127.0.0.1", 0, expected_clients=1, lead_s=1.0) as server:
        cfg = _cli_config(tmp_path, server.port)
        result = runner.invoke(
            app,
            ["record", "--out", str(out), "--seconds", "1", "-i", "alice", "-i", "bob", "--wait-start",
             "--name", "box-1", "-c", str(cfg)],
        )  # fmt: skip
        signal = server.signal
    assert result.exit_code == 0, result.output
    assert signal is not None and server.armed_clients == ["box-1"]
    with SessionReader(out) as reader:
        assert reader.session_id == signal.session and reader.created_ns == signal.target_ns
        for stream in reader.streams:
            times = reader.times(stream)
            assert times.min() >= signal.target_ns and times.max() < signal.target_ns + 1_000_000_000


def test_record_command_refuses_mixing_rig_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["record", "--simulate", "--out", str(tmp_path / "x.h5"), "-i", "alice"])
    assert result.exit_code != 0 and "--identity and --wait-start are for the hardware rig" in str(
        result.exception
    )


def test_record_without_a_rig_gives_up_soon_names_every_fault_and_keeps_no_file(tmp_path: Path) -> None:
    """On a laptop (or with a config pointing at nothing) the command must not wait out the session."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    cfg = tmp_path / "nowhere.toml"
    data = {
        "radar": {"switch": {"port": f"tcp://127.0.0.1:{port}"}},
        "camera": {"device": str(tmp_path / "no-such-camera")},
        "zed": {"enabled": False},
    }
    cfg.write_text(config_to_toml(EdgeConfig.model_validate(data)))
    out = tmp_path / "x.h5"
    began = time.monotonic()
    result = subprocess.run(
        [console_script("vrclip-edge"), "record", "--out", str(out), "--seconds", "60", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - began < 30
    assert "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stdout and "no-such-camera" in result.stdout
    assert "no sensor delivered a frame within 5 s" in result.stderr and "--simulate" in result.stderr
    assert not out.exists()


class _SlowCamera(_BlankCamera):
    """A camera that takes 1.5 s to open (as a USB camera or a ZED does), then delivers 20 frames/s."""

    opened_ns: ClassVar[list[int]] = []

    def open(self) -> None:
        time.sleep(1.5)
        _SlowCamera.opened_ns.append(now_ns(CLOCK_REALTIME))


@pytest.mark.parametrize("time_server", [False, True])
def test_the_sensors_are_open_before_the_session_starts(
    config: EdgeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, time_server: bool
) -> None:
    """A sensor that takes a while to open must not miss the start: without a time server the session
    begins once the sensors are open, and the time server is only asked for the start after that (it
    arms when every device has asked, so a device with slow sensors would make all of them miss it)."""
    monkeypatch.setattr(_SlowCamera, "opened_ns", [])
    feed = _feed(config)
    feed.sources["camera"] = _SlowCamera
    asked: list[int] = []

    def wait_start() -> tuple[int, str]:
        asked.append(now_ns(CLOCK_REALTIME))
        return asked[-1] + 200_000_000, "s-slow"

    out = tmp_path / "slow.h5"
    result = record_feed(
        feed, LiveRecordRequest(out, 1.0, identities=PEOPLE), wait_start=wait_start if time_server else None
    )
    assert _SlowCamera.opened_ns, "the camera opened"
    if time_server:
        assert asked and asked[0] >= _SlowCamera.opened_ns[0], (
            "the start was asked before the camera was open"
        )
    assert result.frames["camera"] >= 5, result
    with SessionReader(out) as reader:
        assert reader.created_ns >= _SlowCamera.opened_ns[0] - 100_000_000


def test_ctrl_c_while_waiting_for_the_time_server_ends_the_wait(config: EdgeConfig, tmp_path: Path) -> None:
    """The CLI reads Ctrl-C as a flag; a wait for the time server's start (up to its timeout) must
    still end at once, before anything is recorded, as the KeyboardInterrupt it was."""
    stop = threading.Event()

    def wait_start() -> tuple[int, str]:
        time.sleep(30.0)  # a server that never arms
        return now_ns(CLOCK_REALTIME), "never"

    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    out = tmp_path / "waiting.h5"
    with pytest.raises(KeyboardInterrupt):
        record_feed(
            _feed(config), LiveRecordRequest(out, 1.0, identities=PEOPLE), stop=stop, wait_start=wait_start
        )
    assert time.monotonic() - began < 5.0 and not out.exists()


def test_ctrl_c_while_the_sensors_open_starts_no_session(config: EdgeConfig, tmp_path: Path) -> None:
    """A stop while the sensors were still opening started the session anyway, without asking the time
    server: the writer replaced the file an --overwrite named, and the CLI then deleted it as empty."""
    feed = _feed(config)
    feed.sources["camera"] = _SlowCamera  # opens in 1.5 s
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    asked: list[int] = []

    def wait_start() -> tuple[int, str]:
        asked.append(now_ns(CLOCK_REALTIME))
        return asked[-1], "s-never"

    out = tmp_path / "old.h5"
    out.write_bytes(b"the previous session")
    with pytest.raises(KeyboardInterrupt):
        record_feed(
            feed,
            LiveRecordRequest(out, 1.0, identities=PEOPLE, overwrite=True),
            stop=stop,
            wait_start=wait_start,
        )
    assert not asked and out.read_bytes() == b"the previous session"


def test_frames_a_slow_writer_had_not_reached_when_the_window_closed_are_still_written(
    config: EdgeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer stalls (a slow disk) for longer than the window and its drain time: every frame
    stamped inside the window is still in the queue (fewer than it holds), and must be written, not
    left there uncounted when the window closes."""
    feed = _feed(config)
    stamps: dict[str, list[int]] = {name: [] for name in feed.sources}

    def counted(factory: Callable[[], FrameSource], name: str) -> Callable[[], FrameSource]:
        def make() -> FrameSource:
            source = factory()
            read = source.read

            def read_counted() -> Frame | None:
                frame = read()
                if frame is not None:
                    stamps[name].append(frame.t_ns)
                return frame

            source.read = read_counted  # type: ignore[method-assign]
            return source

        return make

    feed.sources = {name: counted(factory, name) for name, factory in feed.sources.items()}
    write = SessionWriter.write
    stalled: list[bool] = []

    def slow_write(writer: SessionWriter, frame: Frame) -> None:
        if not stalled:
            stalled.append(True)
            time.sleep(record_live.DRAIN_S + 1.5)
        write(writer, frame)

    monkeypatch.setattr(SessionWriter, "write", slow_write)
    out = tmp_path / "behind.h5"
    result = record_feed(feed, LiveRecordRequest(out, 1.0, identities=PEOPLE))
    with SessionReader(out) as reader:
        start, end = reader.created_ns, reader.created_ns + 1_000_000_000
        in_window = {name: sum(start <= t < end for t in times) for name, times in stamps.items()}
        assert sum(in_window.values()) < record_live.QUEUE_FRAMES, "the test needs a queue that never drops"
        assert in_window["radar"] >= 3
        assert result.frames == in_window and reader.counts == {**in_window}, (result, in_window)
        assert sum(result.dropped.values()) == 0


def test_a_disk_running_full_stops_the_session_and_keeps_a_readable_file(
    config: EdgeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HDF5 leaves a file that hit a full disk unreadable (and crashes at exit): the recording stops
    while MIN_FREE_BYTES are still free, says why, and the file opens with what was recorded."""
    filling_at = time.monotonic() + 1.0
    monkeypatch.setattr(
        record_live,
        "_free_bytes",
        lambda folder: record_live.MIN_FREE_BYTES * (2 if time.monotonic() < filling_at else 0.5),
    )
    out = tmp_path / "full.h5"
    result = record_feed(_feed(config), LiveRecordRequest(out, 30.0, identities=PEOPLE))
    assert result.stopped_early and result.seconds < 10
    assert result.error is not None and "free on its disk" in result.error and str(out) in result.error
    with SessionReader(out) as reader:
        assert reader.counts == result.frames and reader.count("radar") >= 2


def test_a_write_the_disk_refuses_ends_the_session_and_keeps_the_file(
    config: EdgeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = SessionWriter.write
    written: list[Frame] = []

    def failing_write(writer: SessionWriter, frame: Frame) -> None:
        if len(written) == 12:
            raise RecordingError(f"{writer.path}: writing failed (No space left on device)")
        write(writer, frame)
        written.append(frame)

    monkeypatch.setattr(SessionWriter, "write", failing_write)
    out = tmp_path / "refused.h5"
    result = record_feed(_feed(config), LiveRecordRequest(out, 30.0, identities=PEOPLE))
    assert result.stopped_early and result.error is not None and "No space left" in result.error
    assert sum(result.frames.values()) == 12
    with SessionReader(out) as reader:
        assert reader.counts == result.frames


def test_record_command_reports_a_full_disk_after_the_streams_and_keeps_the_file(
    rig: dict[str, Feed], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filling_at = time.monotonic() + 1.0
    monkeypatch.setattr(
        record_live,
        "_free_bytes",
        lambda folder: record_live.MIN_FREE_BYTES * (2 if time.monotonic() < filling_at else 0.5),
    )
    out = tmp_path / "site.h5"
    args = ["record", "--out", str(out), "--seconds", "30", "-i", "alice", "-i", "bob"]
    result = runner.invoke(app, [*args, "-c", str(_cli_config(tmp_path))])
    assert result.exit_code == 1, result.output
    assert "radar:" in result.output and "stopped early after" in result.output
    assert "free on its disk" in result.output and "the file holds what was recorded" in result.output
    with SessionReader(out) as reader:
        first = reader.counts
        assert first["radar"] > 0

    # Full before the first frame: the --overwrite run records nothing, and the recording it was to
    # replace is still there (it was deleted before the new one had a frame, then the empty new one).
    monkeypatch.setattr(record_live, "_free_bytes", lambda folder: 0)
    result = runner.invoke(app, [*args, "--overwrite", "-c", str(_cli_config(tmp_path))])
    assert result.exit_code != 0 and "no new file was kept" in str(result.exception)
    with SessionReader(out) as reader:
        assert reader.counts == first
    assert list(tmp_path.glob("site.h5.replaced-*")) == []


def test_record_command_interrupted_before_any_frame_says_so(
    rig: dict[str, Feed], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while waiting for a start further ahead is not a rig without sensors."""

    def interrupted(
        feed: Feed, request: LiveRecordRequest, *args: object, **kwargs: object
    ) -> LiveRecordResult:
        request.out.write_bytes(b"")
        zero = dict.fromkeys(feed.sources, 0)
        return LiveRecordResult(zero, dict(zero), {}, 0.0, stopped_early=True)

    monkeypatch.setattr(record_live, "record_feed", interrupted)
    out = tmp_path / "early.h5"
    result = runner.invoke(app, ["record", "--out", str(out), "-c", str(_cli_config(tmp_path))])
    assert result.exit_code == 130, result.output
    assert "nothing was recorded before the interruption" in result.output
    assert "cables" not in result.output and not out.exists()


def test_record_command_stopped_by_ctrl_c_keeps_the_file_and_exits_130(
    rig: dict[str, Feed], tmp_path: Path
) -> None:
    """A real SIGINT mid-session: the rig's streams are summarised, the file is kept, and the exit
    status (130) tells a script the session was cut short, as for `record --simulate`."""
    import os
    import signal

    threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    out = tmp_path / "cut.h5"
    args = ["record", "--out", str(out), "--seconds", "30", "-i", "alice", "-i", "bob"]
    result = runner.invoke(app, [*args, "-c", str(_cli_config(tmp_path))])
    assert result.exit_code == 130, result.output
    assert "radar:" in result.output and f"wrote {out}: stopped early after" in result.output
    with SessionReader(out) as reader:
        assert reader.count("radar") > 0


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [("--start-timeout", "inf", "timeout must be > 0 and <= 604800"), ("--name", "", "device name ''")],
)
def test_record_wait_start_refuses_a_bad_wait_before_the_sensors_open(
    rig: dict[str, Feed], tmp_path: Path, option: str, value: str, match: str
) -> None:
    """A wait the time server client would refuse is refused before the rig is opened (up to
    OPEN_WAIT_S on a real rig), not after; `--start-timeout inf` was an OverflowError traceback."""
    out = tmp_path / "never.h5"
    args = ["record", "--out", str(out), "--seconds", "1", "--wait-start", option, value]
    result = runner.invoke(app, [*args, "-c", str(_cli_config(tmp_path, _unused_port()))])
    assert isinstance(result.exception, UserError), result.output
    assert match in str(result.exception)
    assert rig == {}, "the rig was opened before the wait was checked"
    assert not out.exists()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_wall_clock_stepped_back_does_not_hold_off_the_disk_check(
    config: EdgeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NTP steps the wall clock back mid-session: the free-space check still runs every second. It was
    paced on the wall clock, so a step back of S seconds held it off for S seconds while the file grew
    (at a whole rig's ~10 MB/s, a step of 25 s eats the MIN_FREE_BYTES margin)."""
    step_ns = 6_000_000_000
    first_check: list[float] = []

    def free_bytes(folder: Path) -> float:
        now = time.monotonic()
        if not first_check:
            first_check.append(now)
        return record_live.MIN_FREE_BYTES * (2 if now < first_check[0] + 1.0 else 0.5)

    def stepped_clock(clock: str = CLOCK_REALTIME) -> int:
        stepped = first_check and time.monotonic() > first_check[0] + 0.3
        return time.time_ns() - (step_ns if stepped else 0)

    monkeypatch.setattr(record_live, "_free_bytes", free_bytes)
    monkeypatch.setattr(record_live, "now_ns", stepped_clock)
    result = record_feed(_feed(config), LiveRecordRequest(tmp_path / "step.h5", 3.0, identities=PEOPLE))
    stopped_after = time.monotonic() - first_check[0]
    assert result.error is not None and "free on its disk" in result.error
    assert stopped_after < 3.0, f"the full disk was noticed {stopped_after:.1f} s after the first check"


def test_record_wait_start_warns_when_this_boxs_wall_clock_is_not_synchronised(
    rig: dict[str, Feed], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every box records the window [target, target + seconds) of its own wall clock: one that is not
    synchronised records another stretch of real time under the same session id, so it says so."""
    monkeypatch.setattr(clock_sync, "read_clock_sync", lambda: clock_sync.ClockSync(False, 16.0, 16.0))
    out = tmp_path / "unsynced.h5"
    with StartServer("127.0.0.1", 0, expected_clients=1, lead_s=1.0) as server:
        cfg = _cli_config(tmp_path, server.port)
        args = ["record", "--out", str(out), "--seconds", "1", "-i", "alice", "-i", "bob", "--wait-start"]
        result = runner.invoke(app, [*args, "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "warning: system clock NOT synchronised" in result.stderr
    assert "will not line up with the other boxes" in result.stderr
