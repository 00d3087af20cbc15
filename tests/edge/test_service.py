"""sd_notify, the heartbeat-gated watchdog and graceful stop, against real unix datagram sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.errors import SensorError
from vrclip.edge.events.health import Health
from vrclip.edge.frames import CLOCK_REALTIME, RadarFrame
from vrclip.edge.pipeline.runner import EdgeRunner
from vrclip.edge.service import Notifier, ShutdownFlag, WatchdogPinger, watchdog_interval_s


class NotifySocket:
    """What systemd does with $NOTIFY_SOCKET: bind a datagram socket and collect (time, fields)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def wait_for(self, field: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(field in fields for _, fields in self.messages):
                return
            time.sleep(0.01)
        raise AssertionError(f"{field} never arrived: {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def firsts(self) -> list[str]:
        return [fields[0] for _, fields in self.messages]


@pytest.fixture
def notify_path(tmp_path: Path):
    path = tmp_path / "notify.sock"
    receiver = NotifySocket(str(path))
    yield str(path), receiver
    receiver.close()


def test_notify_over_a_path_socket(notify_path) -> None:
    path, receiver = notify_path
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("engine loaded\nradar up")
    assert notifier.status("42 tracks")
    assert notifier.extend_timeout(90)
    receiver.wait_for("EXTEND_TIMEOUT_USEC=90000000")
    assert receiver.messages[0][1] == ["READY=1", "STATUS=engine loaded radar up"]  # one line, not two
    assert receiver.messages[1][1] == ["STATUS=42 tracks"]
    with pytest.raises(ValueError):
        notifier.send("WATCHDOG=1\nREADY=1")


def test_notify_over_an_abstract_socket() -> None:
    name = f"vrclip-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    receiver = NotifySocket(b"\0" + name.encode())
    try:
        notifier = Notifier("@" + name)
        assert notifier.watchdog("ok")
        receiver.wait_for("WATCHDOG=1")
        assert receiver.messages[0][1] == ["WATCHDOG=1", "STATUS=ok"]
    finally:
        receiver.close()


def test_without_systemd_notifications_are_silent_no_ops(tmp_path: Path) -> None:
    off = Notifier(env={})
    assert not off.enabled and not off.ready() and off.sent == 0
    gone = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert not gone.ready()  # counted, never raised: the pipeline goes on
    assert gone.errors == 1 and "No such file" in gone.last_error
    assert not Notifier("vsock:2:1234").enabled


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not ours
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({}) is None


def test_pinger_pings_only_after_progress(notify_path) -> None:
    path, receiver = notify_path
    statuses = iter(f"frame {i}" for i in range(100))
    pinger = WatchdogPinger(Notifier(path), interval_s=1.0, status=lambda: next(statuses))
    assert not pinger.tick()  # not started: no ping (systemd's start timeout applies, not the watchdog)
    pinger.heartbeat()
    assert pinger.ready
    assert pinger.tick()
    assert not pinger.tick() and not pinger.tick()  # stalled: silence
    pinger.heartbeat()
    pinger.heartbeat()
    assert pinger.tick()
    receiver.wait_for("STATUS=frame 1")
    assert [fields for _, fields in receiver.messages] == [
        ["READY=1", "STATUS=running"],
        ["WATCHDOG=1", "STATUS=frame 0"],
        ["WATCHDOG=1", "STATUS=frame 1"],
    ]
    assert pinger.pings == 2 and pinger.skipped == 0


def test_fake_pipeline_ready_after_start_and_watchdog_stops_when_it_stalls(notify_path) -> None:
    """A pipeline that loads, runs, stalls and recovers, with WatchdogSec=0.1 s (ping every 50 ms)."""
    path, receiver = notify_path
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
    pinger = WatchdogPinger(Notifier(env=env), interval_s=watchdog_interval_s(env))
    marks: dict[str, float] = {}

    def pipeline() -> None:
        marks["start"] = time.monotonic()
        time.sleep(0.3)  # loading the engine, connecting sensors: no heartbeat yet
        marks["running"] = time.monotonic()
        for _ in range(40):
            pinger.heartbeat()
            time.sleep(0.01)
        marks["stall"] = time.monotonic()
        time.sleep(0.6)  # a hung driver call
        marks["resume"] = time.monotonic()
        for _ in range(30):
            pinger.heartbeat()
            time.sleep(0.01)
        marks["end"] = time.monotonic()

    with pinger:
        worker = threading.Thread(target=pipeline)
        worker.start()
        worker.join()
    time.sleep(0.05)
    kinds = receiver.firsts()
    assert kinds[0] == "READY=1" and kinds.count("READY=1") == 1
    ready_at = receiver.messages[0][0]
    assert ready_at >= marks["running"]

    def pings(start: float, end: float) -> int:
        return sum(1 for t, fields in receiver.messages if fields[0] == "WATCHDOG=1" and start <= t < end)

    assert pings(marks["start"], marks["running"]) == 0
    assert pings(marks["running"], marks["stall"]) >= 2
    # at most the one ping that covers heartbeats just before the stall
    assert pings(marks["stall"], marks["resume"]) <= 1
    assert pings(marks["resume"], marks["end"] + 0.1) >= 1


class Radar:
    """A radar source whose first `healthy[0]` frames (shared by every reopen) come through; after that
    every read and every reopen fails, as with a VNA that rebooted."""

    modality = "radar"

    def __init__(self, healthy: list[int]) -> None:
        self.healthy = healthy

    def open(self) -> None:
        if self.healthy[0] <= 0:
            raise SensorError("VNA: connection refused (test)")

    def read(self) -> RadarFrame:
        if self.healthy[0] <= 0:
            raise SensorError("VNA: timeout (test)")
        self.healthy[0] -= 1
        return RadarFrame(0, time.time_ns(), CLOCK_REALTIME, np.zeros((1, 1), np.complex64))

    def close(self) -> None:
        pass


class CountingIdentifier:
    """Counts steps; the step numbered `hang_at` blocks until released (a GPU call that hangs)."""

    def __init__(self, hang_at: int | None = None) -> None:
        self.steps = 0
        self.hang_at = hang_at
        self.hanging = threading.Event()
        self.release = threading.Event()

    def step(self, synced):  # type: ignore[no-untyped-def]
        self.steps += 1
        if self.steps == self.hang_at:
            self.hanging.set()
            self.release.wait(30)
        return [], []


class StopAfterOutageTurns:
    """Stops the run loop `turns` loop turns after every frame was processed and the radar was marked
    down; at that moment it sends the watchdog what the frames earned and notes the heartbeats."""

    def __init__(self, frames: int, identifier: CountingIdentifier, health: Health, pinger: WatchdogPinger):
        self.frames, self.identifier, self.health, self.pinger = frames, identifier, health, pinger
        self.turns = 3
        self.beats_at_outage: int | None = None

    def is_set(self) -> bool:  # called once per turn of the run loop
        if self.identifier.steps < self.frames:
            return False
        if self.health.snapshot()["modalities"]["radar"]["state"] != "down":
            return False
        if self.beats_at_outage is None:
            self.pinger.tick()
            self.beats_at_outage = self.pinger.beats
        self.turns -= 1
        return self.turns < 0


def test_a_radar_outage_keeps_the_watchdog_fed_while_the_loop_retries() -> None:
    """The capture thread reopens a failed radar with backoff while the loop waits: a degraded service,
    not a stalled one (restarting it after WatchdogSec would not bring the VNA back sooner)."""
    identifier = CountingIdentifier()
    health = Health(("radar",))
    pinger = WatchdogPinger(Notifier(socket_name=""), interval_s=None)
    healthy = [3]
    runner = EdgeRunner(
        identifier,  # type: ignore[arg-type]
        {"radar": lambda: Radar(healthy)},
        health,
        slop_ns=0,
        heartbeat=pinger.heartbeat,
    )
    stop = StopAfterOutageTurns(3, identifier, health, pinger)
    runner.run(stop)
    assert identifier.steps == 3 and pinger.ready
    assert stop.beats_at_outage is not None and pinger.beats > stop.beats_at_outage
    assert pinger.tick(), "WATCHDOG=1 must go on while the radar is down and being reopened"


def test_a_step_that_hangs_still_stops_the_watchdog() -> None:
    identifier = CountingIdentifier(hang_at=2)
    pinger = WatchdogPinger(Notifier(socket_name=""), interval_s=None)
    healthy = [1_000_000]
    runner = EdgeRunner(
        identifier,  # type: ignore[arg-type]
        {"radar": lambda: Radar(healthy)},
        Health(("radar",)),
        slop_ns=0,
        heartbeat=pinger.heartbeat,
    )
    stop = threading.Event()
    loop = threading.Thread(target=runner.run, args=(stop,))
    loop.start()
    try:
        assert identifier.hanging.wait(30)
        assert pinger.ready
        pinger.tick()  # what the first frame earned
        assert not pinger.tick() and not pinger.tick(), "no WATCHDOG=1 while a step hangs"
    finally:
        stop.set()
        identifier.release.set()
        loop.join(30)
    assert not loop.is_alive()


class HangingRadar(Radar):
    """Healthy frames, then a read that never returns (a driver call stuck without its timeout)."""

    def __init__(self, healthy: list[int], hung: threading.Event, release: threading.Event) -> None:
        super().__init__(healthy)
        self.hung, self.release = hung, release

    def read(self) -> RadarFrame:
        if self.healthy[0] <= 0:
            self.hung.set()
            self.release.wait(30)
            raise SensorError("VNA: released (test)")
        return super().read()


def test_a_radar_read_that_hangs_stops_the_watchdog_after_the_stall_limit() -> None:
    """An outage being retried keeps showing signs of life (faults, reconnection attempts); a hung
    read shows none, and past `radar_stall_s` the loop must stop feeding the watchdog."""
    identifier = CountingIdentifier()
    pinger = WatchdogPinger(Notifier(socket_name=""), interval_s=None)
    hung, release = threading.Event(), threading.Event()
    runner = EdgeRunner(
        identifier,  # type: ignore[arg-type]
        {"radar": lambda: HangingRadar([3], hung, release)},
        Health(("radar",)),
        slop_ns=0,
        heartbeat=pinger.heartbeat,
        radar_stall_s=3.0,
    )
    stop = threading.Event()
    loop = threading.Thread(target=runner.run, args=(stop,))
    loop.start()
    try:
        assert hung.wait(30)
        hung_at = time.monotonic()  # the capture's last sign of life was just before this
        while not pinger.ready and time.monotonic() < hung_at + 30:  # the loop catches up
            time.sleep(0.01)
        assert pinger.ready
        time.sleep(max(0.0, hung_at + 1.0 - time.monotonic()))
        assert pinger.tick(), "within the stall limit the loop still vouches for the radar"
        time.sleep(max(0.0, hung_at + 3.5 - time.monotonic()))
        pinger.tick()  # beats sent just before the limit
        time.sleep(0.6)
        assert not pinger.tick(), "no WATCHDOG=1 once the radar read has hung past the stall limit"
    finally:
        stop.set()
        release.set()
        loop.join(30)
    assert not loop.is_alive()


CHILD = r"""
import sys
from vrclip.edge.service import Notifier, ShutdownFlag, WatchdogPinger
notifier = Notifier()
with ShutdownFlag(notifier) as stop, WatchdogPinger(notifier) as pinger:
    first = True
    while not stop.is_set():
        pinger.heartbeat()
        if first:
            print("running", flush=True)
            first = False
        stop.wait(0.01)
print("stopped", stop.reason, flush=True)
"""


def test_sigterm_stops_the_loop_cleanly_and_says_stopping(notify_path) -> None:
    path, receiver = notify_path
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
    env.pop("WATCHDOG_PID", None)
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "running"
    receiver.wait_for("WATCHDOG=1")
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=10)
    assert child.returncode == 0 and out.strip() == "stopped SIGTERM"
    receiver.wait_for("STOPPING=1")
    kinds = receiver.firsts()
    assert kinds[0] == "READY=1" and kinds[-1] == "STOPPING=1" and "WATCHDOG=1" in kinds
    assert receiver.messages[-1][1] == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]


SIGNAL_DURING_WAIT = """
import os, random, signal, threading, time
from vrclip.edge.service import ShutdownFlag
for _ in range(200):
    with ShutdownFlag(signals=(signal.SIGUSR1,)) as flag:
        killer = threading.Thread(
            target=lambda: (time.sleep(random.random() * 0.002), os.kill(os.getpid(), signal.SIGUSR1))
        )
        killer.start()
        while not flag.wait(0):
            pass
        killer.join()
print("all stopped", flush=True)
"""


def test_a_signal_that_lands_inside_wait_still_stops_the_loop() -> None:
    """The handler must take no lock the interrupted wait() may hold (a threading.Event hangs here)."""
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_WAIT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "all stopped", done.stderr


def test_wait_wakes_other_threads_at_once() -> None:
    flag = ShutdownFlag()
    woke: list[float] = []
    waiters = [
        threading.Thread(target=lambda: woke.append(time.monotonic()) if flag.wait(30) else None)
        for _ in range(3)
    ]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.05)
    asked = time.monotonic()
    flag.request("fatal sensor error")
    for waiter in waiters:
        waiter.join(5)
    assert len(woke) == 3 and max(woke) - asked < 1.0
    assert flag.wait(0) and flag.wait(None)


def test_shutdown_flag_in_process() -> None:
    before = signal.getsignal(signal.SIGTERM)
    flag = ShutdownFlag()
    with flag:
        assert not flag.is_set() and not flag.wait(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.wait(1) and flag.reason == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait for the loop
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before
    other = ShutdownFlag()
    other.request("fatal sensor error")
    assert other.is_set() and other.reason == "fatal sensor error"


class FailingIdentifier:
    """A step that raises on the frames numbered in `fail` (an engine error on one odd input)."""

    def __init__(self, fail: set[int] | None = None, fail_from: int | None = None) -> None:
        self.steps = 0
        self.fail = fail or set()
        self.fail_from = fail_from

    def step(self, synced):  # type: ignore[no-untyped-def]
        self.steps += 1
        if self.steps in self.fail or (self.fail_from is not None and self.steps >= self.fail_from):
            raise RuntimeError(f"engine failed on frame {self.steps} (test)")
        return [], []


def test_a_step_that_raises_is_counted_and_the_loop_goes_on() -> None:
    """One frame the engine (or the imaging) cannot take must cost that frame, not the service:
    systemd gives up on a unit that fails 5 times in 10 minutes."""
    identifier = FailingIdentifier(fail={2, 3})
    health = Health(("radar",))
    warnings: list[str] = []
    pinger = WatchdogPinger(Notifier(socket_name=""), interval_s=None)
    runner = EdgeRunner(
        identifier,  # type: ignore[arg-type]
        {"radar": lambda: Radar([1_000_000])},
        health,
        slop_ns=0,
        heartbeat=pinger.heartbeat,
        warn=warnings.append,
    )
    summary = runner.run(threading.Event(), duration_s=60, max_frames=5)
    assert summary.reason == "frame count reached" and summary.frames == 5
    assert identifier.steps == 7 and health.counters["step_errors"] == 2
    assert len(warnings) == 1 and "engine failed on frame 2" in warnings[0]


def test_a_step_that_keeps_raising_ends_the_run_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault that every frame hits (a GPU gone bad) is not waited out for ever with the watchdog fed:
    the run ends with the error, and systemd restarts the service."""
    from vrclip.edge.pipeline import runner as runner_module

    monkeypatch.setattr(runner_module, "MAX_CONSECUTIVE_STEP_ERRORS", 5)
    identifier = FailingIdentifier(fail_from=3)
    health = Health(("radar",))
    runner = EdgeRunner(
        identifier,  # type: ignore[arg-type]
        {"radar": lambda: Radar([1_000_000])},
        health,
        slop_ns=0,
    )
    with pytest.raises(RuntimeError, match="engine failed on frame 7"):
        runner.run(threading.Event(), duration_s=60)
    assert health.counters["step_errors"] == 5


def test_step_errors_are_told_also_without_a_callers_warn(caplog: pytest.LogCaptureFixture) -> None:
    """Enrolment and the pipeline benchmark build their runner without `warn`: a frame skipped for an
    error was counted there but never said."""
    import logging

    identifier = FailingIdentifier(fail={2})
    runner = EdgeRunner(identifier, {"radar": lambda: Radar([1_000_000])}, Health(("radar",)), slop_ns=0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        runner.run(threading.Event(), duration_s=60, max_frames=4)
    assert "engine failed on frame 2" in caplog.text


class StuckSource(Radar):
    """A sensor whose read hangs after its healthy frames and is not woken by close() (a USB camera
    gone away inside its driver call)."""

    def __init__(self, modality: str, healthy: list[int], release: threading.Event) -> None:
        super().__init__(healthy)
        self.modality, self.release = modality, release

    def open(self) -> None:
        pass

    def read(self) -> RadarFrame:
        if self.healthy[0] <= 0:
            self.release.wait(60)
            raise SensorError(f"{self.modality}: released (test)")
        return super().read()


def test_hung_sensors_at_shutdown_cost_one_stop_timeout_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd kills the service TimeoutStopSec (45 s) after SIGTERM, and the recording and the event
    sinks still close after the sensors: three hung sensors must not take three timeouts in a row."""
    from vrclip.edge.pipeline import runner as runner_module

    monkeypatch.setattr(runner_module, "CAPTURE_STOP_S", 1.5, raising=False)
    release = threading.Event()
    sources = {
        "radar": lambda: StuckSource("radar", [3], release),
        "camera": lambda: StuckSource("camera", [0], release),
        "depth": lambda: StuckSource("depth", [0], release),
    }
    identifier = CountingIdentifier()
    runner = EdgeRunner(identifier, sources, Health(tuple(sources)), slop_ns=0)  # type: ignore[arg-type]
    stop = threading.Event()
    stopped_at: list[float] = []

    def stop_after_three_frames() -> None:
        deadline = time.monotonic() + 30
        while identifier.steps < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped_at.append(time.monotonic())
        stop.set()

    threading.Thread(target=stop_after_three_frames, daemon=True).start()
    try:
        summary = runner.run(stop, duration_s=60)
        took = time.monotonic() - stopped_at[0]
    finally:
        release.set()
    assert summary.reason == "stop requested" and identifier.steps == 3
    assert took < 4.0, f"stopping three hung sensors took {took:.1f} s, not one timeout of 1.5 s"


def test_record_stops_hung_sensors_side_by_side() -> None:
    """`vrclip-edge record` stopped its sensors one by one, 2 s each: three reads hung in their
    drivers cost 6 s after Ctrl-C. Now they stop together within one budget."""
    from vrclip.edge.pipeline.queues import DropOldestQueue
    from vrclip.edge.pipeline.sources import CaptureThread
    from vrclip.edge.record_live import SENSORS_STOP_S, _stop_all

    release = threading.Event()
    health = Health(("radar", "camera", "depth"))
    threads = [
        CaptureThread(lambda m=m: StuckSource(m, [1], release), m, DropOldestQueue(4), health).start()
        for m in ("radar", "camera", "depth")
    ]
    deadline = time.monotonic() + 10
    while any(
        health.snapshot()["sources"].get(m, {}).get("frames_in", 0) < 1 for m in ("radar", "camera", "depth")
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    _stop_all(threads)
    took = time.monotonic() - started
    release.set()
    assert took < SENSORS_STOP_S + 1.0, took


def test_the_stall_limit_outlasts_one_reconnection_attempt_of_the_configured_instruments() -> None:
    """The limit allowed a fixed 60 s beyond the backoff, but one attempt may wait out the VNA's
    timeout several times (connect, *IDN?, set-up): with timeout_ms at its 600-s maximum, a radar
    legitimately waiting got the service restarted as hung."""
    from vrclip.edge.config import EdgeConfig
    from vrclip.edge.pipeline.runner import RADAR_STALL_S, radar_stall_s

    assert radar_stall_s(EdgeConfig()) == RADAR_STALL_S  # the defaults keep the documented 90 s
    slow = EdgeConfig.model_validate({"radar": {"vna": {"timeout_ms": 600_000}}})
    assert radar_stall_s(slow) >= 3 * 600


def test_a_sensor_whose_close_hangs_does_not_hold_up_the_others() -> None:
    """Stopping closed each sensor in the stopping thread: a driver whose close() hung as well as
    its read held up every sensor after it and the shutdown's deadline."""
    from vrclip.edge.pipeline.queues import DropOldestQueue
    from vrclip.edge.pipeline.sources import CaptureThread, stop_side_by_side

    release = threading.Event()

    class HangsOnClose(StuckSource):
        def close(self) -> None:
            release.wait(30)

    health = Health(("radar", "camera"))
    threads = [
        CaptureThread(lambda m=m: HangsOnClose(m, [1], release), m, DropOldestQueue(4), health).start()
        for m in ("radar", "camera")
    ]
    deadline = time.monotonic() + 10
    while any(health.snapshot()["sources"].get(m, {}).get("frames_in", 0) < 1 for m in ("radar", "camera")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    stop_side_by_side(threads, 1.0)
    took = time.monotonic() - started
    release.set()
    assert took < 3.0, took
