"""Enrolling through the running service: the run keeps identifying, the one-person rule holds, the
socket trusts nothing it reads, and a client that goes away keeps what was accepted."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import UserError
from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.pipeline.live_enrolment import EnrolmentBusy, LiveEnrolment
from vrclip.edge.service import control
from vrclip.edge.service.control import ControlServer, enrol_via_service, open_control_server, ping

from tests.scripts import console_script

DIM = 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with GalleryStore(tmp_path / "gallery.sqlite") as s:
        s.ensure_dim(DIM)
        yield s


def test_frames_count_only_while_one_person_is_in_view_and_the_time_runs(store: GalleryStore) -> None:
    clock = FakeClock()
    live = LiveEnrolment(store, budget=32, clock=clock)
    live.offer(1, [unit(0)])  # no session: ignored
    ticket = live.start("alice", 5)
    live.offer(1, [unit(1)])
    live.offer(2, [unit(2), unit(3)])  # two people: both rejected
    live.offer(0, [])  # nobody, no track: a frame, nothing offered
    clock.now = 4.0
    live.offer(1, [unit(4)])
    progress = live.wait(ticket, 0.0)
    assert not progress.done and progress.elapsed_s == 4.0
    assert (progress.frames, progress.offered, progress.rejected, progress.stored) == (4, 4, 2, 2)
    clock.now = 5.0
    live.offer(1, [unit(5)])  # past its time: not taken
    final = live.wait(ticket, 0.0)
    assert final.done and final.error is None and final.stored == 2 and final.elapsed_s == 5.0
    assert [i.name for i in store.identities()] == ["alice"]
    assert store.identities()[0].exemplars == 2


def test_one_enrolment_at_a_time_and_a_cancelled_one_keeps_its_exemplars(store: GalleryStore) -> None:
    clock = FakeClock()
    live = LiveEnrolment(store, budget=32, clock=clock)
    first = live.start("alice", 10)
    with pytest.raises(EnrolmentBusy, match="'alice' is being enrolled"):
        live.start("bob", 10)
    live.offer(1, [unit(1)])
    live.cancel(first)
    assert live.wait(first, 0.0).error == "cancelled"
    second = live.start("bob", 10)  # free again
    live.cancel(first)  # a late cancel of the old ticket leaves the new one alone
    assert not live.wait(second, 0.0).done
    assert {i.name: i.exemplars for i in store.identities()} == {"alice": 1}


def test_progress_names_the_person_as_the_gallery_stores_them(store: GalleryStore) -> None:
    """A name typed decomposed ("e" plus a combining accent) is stored composed (NFC); the progress
    the client reads named it as typed, a name that then matched nothing in `gallery list`."""
    live = LiveEnrolment(store, budget=32, clock=FakeClock())
    ticket = live.start("Jose\u0301", 5)
    live.offer(1, [unit(1)])
    assert live.wait(ticket, 0.0).name == "Jos\u00e9"
    live.cancel(ticket)
    assert [i.name for i in store.identities()] == ["Jos\u00e9"]


def test_a_refused_enrolment_says_how_long_the_running_one_has_left(store: GalleryStore) -> None:
    clock = FakeClock()
    live = LiveEnrolment(store, budget=32, clock=clock)
    live.start("alice", 10)
    live.offer(1, [unit(1)])
    clock.now = 3.5
    live.offer(1, [unit(2)])  # the run loop's offers did not move the elapsed time the refusal read
    with pytest.raises(EnrolmentBusy, match=r"'alice' is being enrolled \(7 s of 10 s left\)"):
        live.start("bob", 10)


@pytest.mark.parametrize(
    ("name", "seconds", "said"),
    [("", 5, "must not be empty"), ("unknown", 5, "unknown"), ("x", 0.5, "1 to 600"), ("x", "5", "1 to 600")],
)
def test_bad_requests_are_refused_with_the_reason(
    store: GalleryStore, name: str, seconds: object, said: str
) -> None:
    with pytest.raises(UserError, match=said):
        LiveEnrolment(store, 32).start(name, seconds)  # type: ignore[arg-type]


class RunLoop:
    """Stands in for the run loop: offers one-person frames every 20 ms from its own thread, with its
    own store connection, as `vrclip-edge run` does."""

    def __init__(self, path: Path) -> None:
        self.path, self.stop = path, threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self) -> None:
        with GalleryStore(self.path) as store:
            self.live = LiveEnrolment(store, 32)
            self.ready.set()
            seed = 100
            while not self.stop.wait(0.02):
                seed += 1
                self.live.offer(1, [unit(seed)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def serve(tmp_path: Path) -> tuple[ControlServer, RunLoop, Path, Path]:
    """A control server in front of a run loop offering one-person frames: (server, loop, socket, db)."""
    db = tmp_path / "gallery.sqlite"
    with GalleryStore(db) as s:
        s.ensure_dim(DIM)
    loop = RunLoop(db)
    path = tmp_path / "control.sock"
    return ControlServer(path, loop.live), loop, path, db


@pytest.fixture()
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    server, loop, path, db = serve(tmp_path)
    yield str(path), db
    server.close()
    loop.close()


def test_enrolment_through_the_socket_reports_progress_and_stores(served) -> None:  # type: ignore[no-untyped-def]
    path, db = served
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert ping(path)["ok"] is True
    seen = []
    report = enrol_via_service(path, "alice", 1.2, seen.append)
    assert report["done"] and report["name"] == "alice" and report["stored"] > 0
    assert seen and all(0 <= p["elapsed_s"] <= 1.2 for p in seen)
    with GalleryStore(db) as s:
        assert {i.name for i in s.identities()} == {"alice"}


def raw(path: str, payload: bytes) -> list[dict]:  # type: ignore[type-arg]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_the_socket_refuses_garbage_and_keeps_serving(served) -> None:  # type: ignore[no-untyped-def]
    path, _ = served
    assert "not a JSON object" in raw(path, b"hello\n")[0]["error"]
    assert "not a JSON object" in raw(path, b"[1, 2]\n")[0]["error"]
    assert "longer than 4096 bytes" in raw(path, b"{" + b" " * 5000 + b"}\n")[0]["error"]
    assert "unknown op" in raw(path, b'{"op": "format-disk"}\n')[0]["error"]
    # Nested past Python's recursion limit: json raises RecursionError, not ValueError.
    assert "not a JSON object" in raw(path, b"[" * 3000 + b"\n")[0]["error"]
    assert "1 to 600" in raw(path, b'{"op": "enrol", "name": "x", "seconds": 1e9}\n')[0]["error"]
    assert ping(path)["ok"] is True


def test_a_second_enrolment_is_refused_and_a_client_that_leaves_cancels(served) -> None:  # type: ignore[no-untyped-def]
    path, db = served
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first.connect(path)
    first.sendall(b'{"op": "enrol", "name": "alice", "seconds": 30}\n')
    first.makefile("rb").readline()  # a progress line: it runs
    with pytest.raises(UserError, match="'alice' is being enrolled"):
        enrol_via_service(path, "bob", 5)
    first.close()  # gone long before its 30 s
    deadline = time.monotonic() + 5
    while True:  # the server notices at its next progress line (0.5 s)
        try:
            report = enrol_via_service(path, "bob", 1)
            break
        except UserError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert report["name"] == "bob"
    with GalleryStore(db) as s:
        counts = {i.name: i.exemplars for i in s.identities()}
    assert counts["alice"] > 0 and counts["bob"] > 0  # alice keeps what was accepted


def test_a_stale_socket_is_replaced_a_live_one_or_a_file_is_not(tmp_path: Path, store: GalleryStore) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a killed run's
    live = LiveEnrolment(store, 32)
    with ControlServer(path, live), pytest.raises(UserError, match="another vrclip-edge run is serving it"):
        ControlServer(path, live)
    assert not path.exists()  # removed on close
    path.write_text("not a socket")
    with pytest.raises(UserError, match="exists and is not a socket"):
        ControlServer(path, live)


def test_no_place_for_the_socket_costs_live_enrolment_not_the_run(
    tmp_path: Path, store: GalleryStore
) -> None:
    (tmp_path / "file").write_text("")
    warnings: list[str] = []
    assert (
        open_control_server(
            str(tmp_path / "file" / "control.sock"), LiveEnrolment(store, 32), warnings.append
        )
        is None
    )
    assert "live enrolment" in warnings[0] and "file/control.sock" in warnings[0]
    assert open_control_server("", LiveEnrolment(store, 32), warnings.append) is None


def test_enrol_service_without_a_service_says_what_to_do(tmp_path: Path) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[paths]\ncontrol_socket = "{tmp_path / "control.sock"}"\n')
    done = subprocess.run(
        [str(console_script("vrclip-edge")), "enroll", "alice", "--service", "--config", str(toml)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no running service at" in done.stderr and "systemctl start vrclip-edge.service" in done.stderr


def test_a_socket_path_too_long_for_unix_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="at most 107"):
        EdgeConfig.model_validate({"paths": {"control_socket": "/" + "x" * 120}})


@pytest.mark.skipif(sys.platform != "linux", reason="Unix sockets in a tmp dir")
def test_the_simulated_run_identifies_the_person_enrolled_through_it(tmp_path: Path) -> None:
    """`run --simulate` with one person walking who is not enrolled; enrolled live as 'carol', the
    run's later events name carol."""
    workdir = tmp_path / "sim"
    run = subprocess.Popen(
        [str(console_script("vrclip-edge")), "run", "--simulate", "--engine",
         str(Path(__file__).resolve().parents[2] / "models" / "vrclip-tiny.onnx"), "--people", "0",
         "--unknown", "1", "--duration", "40", "--workdir", str(workdir), "--no-events-stdout"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        sock = workdir / "control.sock"
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read() if run.stdout else ""
            time.sleep(0.2)
        toml = tmp_path / "client.toml"
        toml.write_text(f'[paths]\ncontrol_socket = "{sock}"\n')
        events_file = workdir / "events.jsonl"
        # Frames flow and the visitor is tracked once the first event is out (on a busy box the
        # engine and the imaging take a while to start).
        while not (events_file.exists() and events_file.read_text().strip()):
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read() if run.stdout else ""
            time.sleep(0.2)
        enrolled_at = time.time_ns()
        done = subprocess.run(
            [str(console_script("vrclip-edge")), "enroll", "carol", "--service", "--seconds", "6",
             "--config", str(toml)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "carol:" in done.stdout and "exemplars stored" in done.stdout
        output, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, output
    events = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]
    later = [e["identity"] for e in events if e["timestamp_ns"] > enrolled_at + 6_000_000_000]
    assert later and later.count("carol") >= 0.8 * len(later), later
    assert not sock.exists()


def test_a_store_or_embedding_error_ends_the_enrolment_not_the_run_loop(tmp_path: Path) -> None:
    # A full disk: SQLite's own error (not a GalleryError) from the commit, raised in the run loop.
    with GalleryStore(tmp_path / "full.sqlite") as full:
        full.ensure_dim(4096)  # an exemplar needs overflow pages, so the capped file cannot take one
        pages = full._conn.execute("PRAGMA page_count").fetchone()[0]
        full._conn.execute(f"PRAGMA max_page_count = {pages}")
        live = LiveEnrolment(full, 32, clock=FakeClock())
        ticket = live.start("alice", 10)
        live.offer(1, [np.ones(4096, np.float32)])
        progress = live.wait(ticket, 0.0)
        assert progress.done and progress.stored == 0
        assert "full" in (progress.error or "")  # SQLite's reason, not a failed ROLLBACK's
        live.offer(1, [np.ones(4096, np.float32)])  # the run goes on; nothing is enrolling
    # A faulty engine's zero embedding: normalise's ValueError.
    with GalleryStore(tmp_path / "zero.sqlite", dim=DIM) as store:
        live = LiveEnrolment(store, 32, clock=FakeClock())
        ticket = live.start("bob", 10)
        live.offer(1, [np.zeros(DIM, np.float32)])
        assert "zero norm" in (live.wait(ticket, 0.0).error or "")


def test_a_client_dripping_its_request_is_cut_off_in_time(served, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path, _ = served
    monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(control._Handler, "timeout", 1.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        started = time.monotonic()
        reply = b""
        with contextlib.suppress(OSError):  # the server hangs up: a broken pipe or a reset
            while time.monotonic() - started < 4.0:
                sock.sendall(b" ")  # one byte at a time, each well within the per-read timeout
                sock.settimeout(0.3)
                with contextlib.suppress(TimeoutError):
                    reply = sock.recv(4096)
                    break
        assert time.monotonic() - started < 2.5
    assert b"no request line within 1 s" in reply


def test_connections_are_bounded_and_the_extra_ones_refused(served) -> None:  # type: ignore[no-untyped-def]
    path, _ = served
    threads_before = threading.active_count()
    idle = []
    try:
        for _ in range(24):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)  # blocking: waits while the listen backlog is full
            sock.settimeout(5)
            idle.append(sock)
        time.sleep(0.3)
        assert threading.active_count() - threads_before <= control.MAX_CONNECTIONS
        assert b"busy" in idle[-1].recv(4096)
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the slots come back as the idle connections' threads see them closed
        try:
            assert ping(path)["ok"] is True
            break
        except (UserError, AssertionError):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_client_enrolling_when_the_service_stops_hears_at_once_what_was_kept(tmp_path: Path) -> None:
    server, loop, path, _ = serve(tmp_path)
    outcome: dict[str, object] = {}

    def client() -> None:
        try:
            enrol_via_service(str(path), "alice", 30)
        except UserError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    time.sleep(1.0)
    server.close()  # as run_pipeline does on SIGTERM, the run loop's offers over
    started = time.monotonic()
    thread.join(5)
    loop.close()
    assert time.monotonic() - started < 2.0  # not the rest of its 30 s
    assert "the service is stopping" in str(outcome.get("error")) and "exemplars stored" in str(
        outcome["error"]
    )
    with pytest.raises(UserError, match="stopping"):
        loop.live.start("bob", 5)


def test_an_ended_enrolment_still_answers_its_client_after_the_next_one_began(store: GalleryStore) -> None:
    # The control thread sends a progress line between two waits; meanwhile the time runs out and
    # another client starts. Its next wait must give the final report, not a KeyError (a traceback
    # in the journal and a client told only that the connection closed).
    clock = FakeClock()
    live = LiveEnrolment(store, budget=32, clock=clock)
    first = live.start("alice", 5)
    live.offer(1, [unit(1)])
    clock.now = 6.0
    second = live.start("bob", 5)
    final = live.wait(first, 0.5)
    assert final.done and final.name == "alice" and final.stored == 1
    live.cancel(first)  # the handler's finally releases it, and leaves bob alone
    assert not live.wait(second, 0.0).done
    with pytest.raises(KeyError):
        live.wait(first, 0.0)


def test_a_service_that_stops_before_answering_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(5)
        threading.Timer(0.3, listener.close).start()  # never accepts: the client is reset
        with pytest.raises(UserError, match="dropped the connection"):
            enrol_via_service(path, "alice", 2)


@pytest.fixture()
def idle_service(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A service answering on its control socket whose run loop offers no frames (its radar is down)."""
    sock = tmp_path / "control.sock"
    toml = tmp_path / "edge.toml"
    toml.write_text(f'[paths]\ncontrol_socket = "{sock}"\n')
    with GalleryStore(tmp_path / "g.sqlite") as s, ControlServer(sock, LiveEnrolment(s, 32)):
        yield toml


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(console_script("vrclip-edge")), *args], capture_output=True, text=True, timeout=60
    )


def test_commands_that_need_the_sensors_name_the_running_service(idle_service: Path, tmp_path: Path) -> None:
    """The service holds the VNA, the switch and the cameras: record and offline enrol say so (and
    what to do) instead of failing on whichever driver opens first."""
    recorded = edge(
        "record", "--out", str(tmp_path / "x.h5"), "--seconds", "1", "--config", str(idle_service)
    )
    assert recorded.returncode == 2
    assert (
        "vrclip-edge is running" in recorded.stderr
        and "systemctl stop vrclip-edge.service" in recorded.stderr
    )
    assert not (tmp_path / "x.h5").exists()
    enrolled = edge(
        "enroll",
        "alice",
        "--config",
        str(idle_service),
        "--engine",
        str(Path(__file__).resolve().parents[2] / "models" / "vrclip-tiny.onnx"),
    )
    assert enrolled.returncode == 2
    assert (
        "vrclip-edge is running" in enrolled.stderr and "enrol through it with --service" in enrolled.stderr
    )


def test_a_service_whose_radar_is_down_enrols_nobody_and_says_why(idle_service: Path) -> None:
    done = edge("enroll", "alice", "--service", "--seconds", "1", "--config", str(idle_service))
    assert done.returncode == 2
    assert "the service processed no radar frame meanwhile; is the radar up?" in done.stderr


def test_a_replay_runs_beside_the_service_without_taking_its_socket(
    idle_service: Path, tmp_path: Path
) -> None:
    from vrclip.edge.record import RecordRequest, record_simulated
    from vrclip.edge.sim.scene import SceneSpec

    config = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180, "fps": 8}, "zed": {"fps": 4}})
    recording = tmp_path / "s.h5"
    record_simulated(config, RecordRequest(recording, 1.0, SceneSpec(people=("a",), seed=5)))
    engine = str(Path(__file__).resolve().parents[2] / "models" / "vrclip-tiny.onnx")
    toml = idle_service.read_text() + f'[gallery]\npath = "{tmp_path / "replay-gallery.sqlite"}"\n'
    toml += f'[sinks]\njsonl_path = "{tmp_path / "events.jsonl"}"\n[sinks.http]\nenabled = false\n'
    idle_service.write_text(toml)
    done = edge("run", "--replay", str(recording), "--engine", engine, "--config", str(idle_service),
                "--no-events-stdout")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "another vrclip-edge run is serving it" not in done.stderr
    sock = tomllib.loads(toml)["paths"]["control_socket"]
    assert ping(sock)["ok"] is True  # the service's socket is untouched


def test_a_client_that_leaves_without_a_word_leaves_no_traceback(served, capfd) -> None:  # type: ignore[no-untyped-def]
    """A probe connects and closes (as `presence` may, or a port scanner): answering it raised
    BrokenPipeError, which socketserver printed as a traceback into the service's journal."""
    path, _ = served
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a request, gone before its reply
            sock.connect(path)
            sock.sendall(b"not json\n")
    assert ping(path)["ok"] is True
    time.sleep(0.3)
    assert "Traceback" not in capfd.readouterr().err


def test_a_gallery_locked_by_another_writer_ends_the_enrolment_in_a_moment(tmp_path: Path) -> None:
    """`gallery import` holds the write lock: the run loop's commit gave up only after 10 s, and
    identification stood still meanwhile. With the run loop's short busy timeout it gives up at once
    and the enrolment ends saying why."""
    import sqlite3

    db = tmp_path / "g.sqlite"
    with GalleryStore(db) as store:
        store.ensure_dim(DIM)
        store.set_busy_timeout(0.2)
        live = LiveEnrolment(store, 32, clock=FakeClock())
        ticket = live.start("alice", 10)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            started = time.monotonic()
            live.offer(1, [unit(1)])
            assert time.monotonic() - started < 2.0
        finally:
            other.execute("ROLLBACK")
            other.close()
        progress = live.wait(ticket, 0.0)
        assert progress.done and "busy" in str(progress.error)


def test_enrolments_whose_clients_were_answered_are_not_kept_for_ever(store: GalleryStore) -> None:
    # The usual order: the time runs out, the client reads its final report and its handler releases
    # the ticket, and only later does someone enrol the next person. A service running for months
    # (or a script enrolling in a loop) must not keep every past session in memory.
    clock = FakeClock()
    live = LiveEnrolment(store, budget=32, clock=clock)
    tickets = []
    for i in range(5):
        ticket = live.start(f"person{i}", 5)
        tickets.append(ticket)
        clock.now += 6.0
        assert live.wait(ticket, 0.5).done
        live.cancel(ticket)  # the handler's finally, after the final reply went out
    live.start("last", 5)
    for ticket in tickets:
        with pytest.raises(KeyError):
            live.wait(ticket, 0.0)
