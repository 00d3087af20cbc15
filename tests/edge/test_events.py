"""IdentityEvent JSON, the JSON-lines and stdout sinks, health counters and the /status, /metrics endpoint."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import SinksConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.events import (
    UNKNOWN,
    EventSinks,
    Health,
    HealthServer,
    IdentityEvent,
    LatencyWindow,
    LiveModalities,
    ModalityState,
    RotatingJsonlSink,
    StdoutSink,
    build_sinks,
    iso_utc,
)
from vrclip.edge.events.http import MAX_CONNECTIONS

LIVE = LiveModalities(radar=True, camera=False, depth=True)


def event(i: int = 0, identity: str = "alice") -> IdentityEvent:
    return IdentityEvent(1_700_000_000_000_000_000 + i, i, identity, 0.75, (1.25, 3.5), 1.5, LIVE)


# ---- the event ---------------------------------------------------------------------------------------


def test_event_json_carries_the_contract_fields() -> None:
    e = IdentityEvent(1_700_000_000_123_456_789, 7, UNKNOWN, 0.41, (1.2345678, -0.5), 0.3, LIVE)
    line = e.to_json()
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["timestamp_ns"] == 1_700_000_000_123_456_789
    assert doc["timestamp"] == "2023-11-14T22:13:20.123456789Z"
    assert doc["track_id"] == 7 and doc["identity"] == "unknown" and doc["score"] == 0.41
    assert doc["position_m"] == [1.2346, -0.5] and doc["reliability"] == 0.3
    assert doc["modalities"] == {"radar": True, "camera": False, "depth": True}
    assert doc["type"] == "identity" and doc["version"] == 1 and doc["clock"] == "CLOCK_REALTIME"
    assert IdentityEvent.from_json(line) == IdentityEvent(e.t_ns, 7, UNKNOWN, 0.41, (1.2346, -0.5), 0.3, LIVE)


def test_iso_timestamps_keep_nanoseconds() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000000000Z"
    assert iso_utc(1_000_000_001) == "1970-01-01T00:00:01.000000001Z"


@pytest.mark.parametrize(
    "change",
    [{"score": float("nan")}, {"position_m": (0.0, float("inf"))}, {"t_ns": -1}, {"identity": ""}],
)
def test_events_that_would_break_consumers_are_refused(change: dict) -> None:
    fields = {"t_ns": 1, "track_id": 1, "identity": "a", "score": 0.5, "position_m": (0.0, 0.0),
              "reliability": 1.0, "modalities": LIVE} | change  # fmt: skip
    with pytest.raises(ValueError):
        IdentityEvent(**fields)


def test_from_json_rejects_foreign_lines() -> None:
    for bad in ("{oops", '{"type": "other"}', '{"type": "identity", "version": 1}'):
        with pytest.raises(ValueError):
            IdentityEvent.from_json(bad)


# ---- JSON-lines file ---------------------------------------------------------------------------------


def test_jsonl_rotates_by_size_and_keeps_n(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    line_len = len(event(10).to_json()) + 1  # track ids 10..99: every line has the same length
    sink = RotatingJsonlSink(path, max_bytes=3 * line_len, keep=2)
    for i in range(10, 20):  # 3 lines per file: 10 lines = 4 files, only current + 2 kept
        sink.emit(event(i))
    sink.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert sink.rotations == 3 and sink.written == 10
    for f in path.parent.iterdir():
        assert f.stat().st_size <= 3 * line_len

    def ids(p: Path) -> list[int]:
        return [IdentityEvent.from_json(line).track_id for line in p.read_text().splitlines()]

    assert ids(path.with_name("events.jsonl.2")) == [13, 14, 15]
    assert ids(path.with_name("events.jsonl.1")) == [16, 17, 18]
    assert ids(path) == [19]
    # a restarted service appends to the current file and keeps counting its size
    again = RotatingJsonlSink(path, max_bytes=3 * line_len, keep=2)
    for i in (20, 21, 22):
        again.emit(event(i))
    assert ids(path) == [22] and ids(path.with_name("events.jsonl.1")) == [19, 20, 21]


def test_jsonl_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = RotatingJsonlSink(blocker / "events.jsonl")
    sink.emit(event())
    assert sink.errors == 1 and "not-a-dir" in sink.last_error and sink.written == 0
    blocker.unlink()  # the problem goes away: the next event gets through
    sink.emit(event(1))
    assert sink.written == 1 and (blocker / "events.jsonl").exists()


class DiskFullMidLine:
    """os.write for one fd: stores the first `room` bytes it is given, then fails with ENOSPC (what a
    disk that fills mid-line does); other fds write normally."""

    def __init__(self, sink: RotatingJsonlSink, room: int) -> None:
        self.sink, self.room = sink, room
        self.real = os.write

    def __call__(self, fd: int, data: bytes) -> int:
        if fd != self.sink._fd:
            return self.real(fd, data)
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.real(fd, bytes(data[: self.room]))
        self.room -= n
        return n


def refuse_to_truncate(fd: int, size: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("truncate_works", [True, False])
def test_jsonl_a_line_cut_by_a_full_disk_does_not_swallow_the_next_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truncate_works: bool
) -> None:
    path = tmp_path / "events.jsonl"
    sink = RotatingJsonlSink(path)
    sink.emit(event(1))
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", DiskFullMidLine(sink, room=40))
        if not truncate_works:
            patch.setattr(os, "ftruncate", refuse_to_truncate)
        sink.emit(event(2))  # the disk fills 40 bytes into this line
        sink.emit(event(3))  # nothing fits
    assert sink.written == 1 and sink.errors == 2 and "No space left" in sink.last_error
    sink.emit(event(4))  # space is back
    sink.close()
    lines = path.read_text().splitlines()
    parsed = []
    for line in lines:
        with contextlib.suppress(ValueError):
            parsed.append(IdentityEvent.from_json(line).track_id)
    assert parsed == [1, 4], "every event that was counted written is a whole line"
    assert sink.written == 2
    if truncate_works:
        assert len(lines) == 2, "the fragment of the failed line is cut off"
    else:
        assert len(lines) == 3, "the fragment could not be cut: it ends as one broken line of its own"


def test_jsonl_file_moved_or_deleted_under_the_sink_is_created_again(tmp_path: Path) -> None:
    """An operator's `rm events.jsonl` or a logrotate `mv` must not send every later event into a
    file nobody can see (or that no longer exists) until the next size rotation, days later."""
    path = tmp_path / "events.jsonl"
    sink = RotatingJsonlSink(path)
    sink.emit(event(1))
    path.rename(tmp_path / "events.jsonl.old")
    sink.emit(event(2))
    path.unlink()
    sink.emit(event(3))
    sink.emit(event(4))
    sink.close()
    ids = [IdentityEvent.from_json(line).track_id for line in path.read_text().splitlines()]
    assert ids == [3, 4] and sink.errors == 0
    assert (tmp_path / "events.jsonl.old").read_text() == event(1).to_json() + "\n"


def test_jsonl_keep_zero_truncates(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    sink = RotatingJsonlSink(path, max_bytes=10, keep=0)
    sink.emit(event(1))
    sink.emit(event(2))
    assert [p.name for p in tmp_path.iterdir()] == ["e.jsonl"]
    assert IdentityEvent.from_json(path.read_text()).track_id == 2
    with pytest.raises(ConfigError, match="jsonl_keep"):
        RotatingJsonlSink(path, keep=-1)


def test_stdout_and_fanout_isolate_a_failing_sink(tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def emit(self, event: IdentityEvent) -> None:
            raise RuntimeError("bug")

        def stats(self) -> dict:
            return {}

        def close(self) -> None:
            pass

    buffer = io.StringIO()
    stdout = StdoutSink(buffer)
    sinks = EventSinks([Broken(), stdout])
    sinks.emit(event(1))
    assert stdout.flush(5.0)
    assert IdentityEvent.from_json(buffer.getvalue()).track_id == 1
    assert sinks.stats()["broken"]["failures"] == 1 and sinks.stats()["stdout"]["written"] == 1
    closed = io.StringIO()
    closed.close()
    dead = StdoutSink(closed)
    dead.emit(event())
    assert dead.flush(5.0) and dead.errors == 1
    sinks.close()
    dead.close()


def test_a_blocked_stdout_never_blocks_emit_and_drops_the_oldest_lines() -> None:
    """A write to stdout blocks while the terminal is paused (Ctrl-S) or journald is slow to read; it
    blocked the pipeline, which the sinks must never do. Now the lines wait in a bounded backlog."""
    release, blocked = threading.Event(), threading.Event()

    class PausedTerminal(io.StringIO):
        def write(self, text: str) -> int:
            blocked.set()
            release.wait(10.0)
            return super().write(text)

    stream = PausedTerminal()
    sink = StdoutSink(stream, backlog=3)
    sink.emit(event(0))
    assert blocked.wait(5.0)
    started = time.monotonic()  # the writer is stuck in write(): emitting must not wait for it
    for i in range(1, 10):
        sink.emit(event(i))
    assert time.monotonic() - started < 1.0
    release.set()
    assert sink.flush(5.0)
    ids = [IdentityEvent.from_json(line).track_id for line in stream.getvalue().splitlines()]
    # the first line was being written when the terminal paused; of the rest the newest 3 waited
    assert ids == [0, 7, 8, 9] and sink.stats()["dropped"] == 6
    sink.close()
    sink.emit(event(10))  # after close: not written, but counted
    assert sink.stats()["dropped"] == 7


def test_closing_the_sinks_closes_each_even_after_one_fails() -> None:
    closed = []

    class Sink:
        def __init__(self, name: str, fails: bool) -> None:
            self.name, self.fails = name, fails

        def emit(self, event: IdentityEvent) -> None:
            pass

        def stats(self) -> dict:
            return {}

        def close(self) -> None:
            closed.append(self.name)
            if self.fails:
                raise OSError("broker gone")

    sinks = EventSinks([Sink("a", True), Sink("b", False)])
    sinks.close()
    assert closed == ["a", "b"] and sinks.stats()["a"]["failures"] == 1


def test_build_sinks_follows_the_config(tmp_path: Path) -> None:
    cfg = SinksConfig(jsonl_path=str(tmp_path / "e.jsonl"))
    sinks = build_sinks(cfg, stdout=True)
    assert [s.name for s in sinks.sinks] == ["jsonl", "stdout"]
    assert build_sinks(SinksConfig(jsonl_path="")).sinks == []
    sinks.close()


# ---- health ------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_latency_percentiles_over_a_bounded_window() -> None:
    window = LatencyWindow(size=100)
    for ms in range(1, 1001):  # only the last 100 (901..1000 ms) count
        window.record(ms / 1000)
    q = window.quantiles()
    assert 0.949 <= q[0.5] <= 0.951 and 0.998 <= q[0.99] <= 1.0
    assert window.count == 1000 and len(window._ring) == 100
    window.record(float("nan"))
    assert window.count == 1000
    assert LatencyWindow().quantiles() == {}


def test_counters_rates_modalities_and_status_line() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    for _ in range(20):
        health.frame_in("radar")
        health.latency("total", 0.040)
        clock.t += 0.1
    health.dropped("camera", 3)
    health.set_modality("radar", "up")
    health.set_modality("camera", ModalityState.DEGRADED, TimeoutError("no frame\nfor 2 s"))
    health.count("events", 12)
    snap = health.snapshot()
    assert snap["sources"]["radar"] == {"frames_in": 20, "dropped": 0, "rate_hz": 10.0}
    assert snap["sources"]["camera"]["dropped"] == 3
    assert snap["latency_ms"]["total"]["p50"] == 40.0 and snap["latency_ms"]["total"]["count"] == 20
    assert snap["modalities"]["camera"] == {
        "state": "degraded", "last_error": "TimeoutError: no frame for 2 s", "for_s": 0.0, "changes": 1,
    }  # fmt: skip
    line = health.status_line()
    assert "\n" not in line
    assert line.startswith("radar up 10.0/s, camera degraded (TimeoutError: no frame for 2 s), depth down")
    assert "p50 40 ms p99 40 ms" in line and "drops 3" in line and "events 12" in line
    clock.t += 60  # radar went quiet: its rate falls to zero rather than freezing at 10/s
    assert health.snapshot()["sources"]["radar"]["rate_hz"] == 0.0


def parse_prometheus(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_prometheus_text() -> None:
    health = Health()
    health.frame_in("radar", 5)
    health.latency("total", 0.05)
    health.set_modality("radar", "up")
    health.add_stats_source("sink", lambda: {"mqtt": {"dropped": 4, "connected": True, "last_error": "x"}})
    text = health.prometheus()
    samples = parse_prometheus(text)
    assert samples['vrclip_frames_total{source="radar"}'] == 5
    assert samples['vrclip_latency_seconds{stage="total",quantile="0.99"}'] == 0.05
    assert samples['vrclip_latency_seconds_count{stage="total"}'] == 1
    assert samples['vrclip_modality_state{modality="radar",state="up"}'] == 1
    assert samples['vrclip_modality_state{modality="depth",state="down"}'] == 1
    assert (
        samples['vrclip_sink_dropped{sink="mqtt"}'] == 4
        and samples['vrclip_sink_connected{sink="mqtt"}'] == 1
    )
    assert "# TYPE vrclip_latency_seconds summary" in text and text.endswith("\n")


def test_http_status_and_metrics() -> None:
    health = Health()
    health.frame_in("radar")
    health.set_modality("radar", "up")
    with HealthServer(health, "127.0.0.1", 0) as server:
        with urllib.request.urlopen(server.url + "/status", timeout=5) as reply:
            assert reply.headers["Content-Type"] == "application/json"
            doc = json.load(reply)
        assert doc["modalities"]["radar"]["state"] == "up" and doc["status"].startswith("radar up")
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert parse_prometheus(reply.read().decode())['vrclip_frames_total{source="radar"}'] == 1
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "/nope", timeout=5)
        assert missing.value.code == 404
        # a silent client does not stop others from being served
        idle = socket.create_connection(("127.0.0.1", server.port))
        started = time.monotonic()
        with urllib.request.urlopen(server.url + "/status", timeout=5) as reply:
            assert reply.status == 200
        assert time.monotonic() - started < 2
        idle.close()
        with pytest.raises(ConfigError, match=r"sinks\.http\.port"):
            HealthServer(health, "127.0.0.1", server.port)


def test_status_survives_a_provider_with_nan_or_numpy_values() -> None:
    """/status is strict JSON: one stats provider returning NaN or a numpy integer made every request
    drop the connection (with a traceback), taking the whole page down."""
    health = Health()
    health.add_stats_source("odd", lambda: {"ratio": float("nan"), "count": np.int64(3), "v": np.arange(2)})
    with (
        HealthServer(health, "127.0.0.1", 0) as server,
        urllib.request.urlopen(server.url + "/status", timeout=5) as reply,
    ):
        doc = json.load(reply)
    assert doc["odd"] == {"ratio": None, "count": 3, "v": [0, 1]}


def test_metrics_skip_what_a_provider_returns_in_an_odd_shape() -> None:
    """/metrics read every provider's value as {member: {key: number}}: a list, a plain number or an
    integer too large for a float made every scrape fail."""
    health = Health()
    health.add_stats_source("odd", lambda: {"a": [1, 2], "b": 3, "c": {"big": 10**400, "ok": 2, "up": True}})
    health.add_stats_source("flat", lambda: [1, 2, 3])
    samples = parse_prometheus(health.prometheus())
    assert samples['vrclip_odd_ok{odd="c"}'] == 2 and samples['vrclip_odd_up{odd="c"}'] == 1
    assert not any("big" in name for name in samples)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_status_is_served_on_an_ipv6_address() -> None:
    """sinks.http.host = "::1" (or "::") failed at start: the server was IPv4 only, though its URL
    already bracketed IPv6 hosts."""
    health = Health()
    with (
        HealthServer(health, "::1", 0) as server,
        urllib.request.urlopen(server.url + "/status", timeout=5) as reply,
    ):
        assert server.url.startswith("http://[::1]:") and reply.status == 200


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def _wait_for_handlers_to_finish(timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _handler_threads() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_client_that_hangs_up_leaves_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """A scraper that times out, or a browser tab closed mid-reply, resets the connection: that is the
    client's business, not a 25-line traceback in the journal for every occurrence."""
    health = Health()
    for i in range(500):  # a reply larger than the socket buffers, so the reset hits our write
        health.count(f"counter_{i}")
    with HealthServer(health, "127.0.0.1", 0) as server:
        for request in (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b""):
            client = socket.create_connection(("127.0.0.1", server.port))
            client.sendall(request)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            client.close()
        _wait_for_handlers_to_finish()
        with urllib.request.urlopen(server.url + "/status", timeout=5) as reply:
            assert reply.status == 200
    assert "Traceback" not in capsys.readouterr().err


def test_connections_beyond_the_limit_are_refused_not_given_a_thread() -> None:
    """Many clients at once (a misconfigured scraper, a port scan, a slow client per connection) must
    not grow a thread each without bound inside the service: beyond the limit they get a 503."""
    limit = MAX_CONNECTIONS
    with HealthServer(Health(), "127.0.0.1", 0) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(limit + 4)]
        try:
            deadline = time.monotonic() + 5
            while len(_handler_threads()) < limit and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)
            assert len(_handler_threads()) <= limit
            refused = []
            for client in idle:
                client.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    refused.append(client.recv(100))
            assert len(refused) >= 4 and all(r.startswith(b"HTTP/1.1 503") for r in refused)
        finally:
            for client in idle:
                client.close()
        _wait_for_handlers_to_finish()
        with urllib.request.urlopen(server.url + "/status", timeout=5) as reply:  # served again
            assert reply.status == 200
