"""The running service's control socket: local commands that must not stop identification.

A Unix stream socket (paths.control_socket, /run/vrclip/control.sock under systemd's
RuntimeDirectory), mode 0660: only the service account and its group reach it, with no network
port to guard. The protocol is JSON lines: one request line, then reply lines until the last.

    > {"op": "ping"}
    < {"ok": true, "service": "vrclip-edge", "version": "..."}
    > {"op": "enrol", "name": "alice", "seconds": 10}
    < {"progress": {"name": "alice", "elapsed_s": 0.5, "stored": 3, ...}}   (every 0.5 s)
    < {"ok": true, "report": {...}}               (or {"ok": false, "error": "...", "report": {...}})

The server trusts nothing it reads: a request is one line of at most 4 KiB within 10 s, at most
8 connections are served at once, and a malformed request gets an error reply. A client that goes
away mid-enrolment cancels it (what was accepted stays enrolled). Failing to create the socket
costs the run its live enrolment, not its identification: `open_control_server` returns None with
a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vrclip.edge import __version__
from vrclip.edge.errors import UserError
from vrclip.edge.pipeline.live_enrolment import EnrolmentProgress, LiveEnrolment
from vrclip.edge.service.presence import something_listens

MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT_S = 10.0
#: Connections served at once (one thread each); more are refused at once. One enrolment runs at a
#: time, so a few suffice; a script that opens connections and never closes them costs no more.
MAX_CONNECTIONS = 8
PROGRESS_INTERVAL_S = 0.5
#: How long past its end a client waits for the service to say an enrolment is over.
END_GRACE_S = 15.0
#: How long closing waits for the connections being served to end (an enrolment's final reply).
CLOSE_GRACE_S = 1.0


class _Handler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S

    def handle(self) -> None:
        try:
            line = self._request_line()
        except TimeoutError:
            with contextlib.suppress(OSError):
                self._send({"ok": False, "error": f"no request line within {REQUEST_TIMEOUT_S:g} s"})
            return
        except OSError:
            return
        if not line:
            return  # connected and left without a word (a probe): nobody to answer
        try:
            self._answer(line)
        except OSError:
            return  # the client left before its reply: socketserver would print a traceback

    def _answer(self, line: bytes) -> None:
        if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
            self._send(
                {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes or not one line"}
            )
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python recurses
            self._send({"ok": False, "error": f"request is not a JSON object: {exc}"})
            return
        op = request.get("op")
        if op == "ping":
            self._send({"ok": True, "service": "vrclip-edge", "version": __version__})
        elif op == "enrol":
            self._enrol(request)
        else:
            self._send({"ok": False, "error": f"unknown op {str(op)[:40]!r}; ops: ping, enrol"})

    def _request_line(self) -> bytes:
        """The first line (with its newline), or all that came (EOF, or more than MAX_REQUEST_BYTES).
        The whole line must arrive within REQUEST_TIMEOUT_S: the socket's timeout bounds each read
        only, and a client sending a byte at a time would otherwise hold its thread for hours."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        data = b""
        try:
            while b"\n" not in data and len(data) <= MAX_REQUEST_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.connection.recv(65536)  # all that came: a client is not reset mid-send
                if not chunk:
                    break
                data += chunk
        finally:
            self.connection.settimeout(self.timeout)
        end = data.find(b"\n")
        return data if end < 0 else data[: end + 1]

    def _enrol(self, request: dict[str, Any]) -> None:
        enrolment = self.server.enrolment
        try:
            ticket = enrolment.start(request.get("name"), request.get("seconds"))  # type: ignore[arg-type]
        except UserError as exc:
            self._send({"ok": False, "error": str(exc)})
            return
        try:
            while True:
                progress = enrolment.wait(ticket, PROGRESS_INTERVAL_S)
                if progress.done:
                    self._send(_final(progress))
                    return
                self._send({"progress": asdict(progress)})
        except OSError:
            return  # the client went away
        finally:
            enrolment.cancel(ticket)  # stops an enrolment nobody waits for; what was accepted stays

    def _send(self, message: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(message).encode("utf-8") + b"\n")
        self.wfile.flush()


def _final(progress: EnrolmentProgress) -> dict[str, Any]:
    report = asdict(progress)
    if progress.error is not None:
        return {
            "ok": False,
            "error": f"enrolment of {progress.name!r} ended: {progress.error} "
            f"({progress.stored} exemplars stored, kept)",
            "report": report,
        }
    return {"ok": True, "report": report}


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    enrolment: LiveEnrolment

    def __init__(self, path: str, handler: type[_Handler]) -> None:
        super().__init__(path, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        # A thread per connection, at most MAX_CONNECTIONS of them: the run's threads stay bounded.
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(
                    json.dumps({"ok": False, "error": f"busy: {MAX_CONNECTIONS} connections open"}).encode()
                    + b"\n"
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def wait_idle(self, timeout_s: float) -> None:
        """Wait until no connection is being served, or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        taken = 0
        try:
            while taken < MAX_CONNECTIONS and self._slots.acquire(
                timeout=max(0.0, deadline - time.monotonic())
            ):
                taken += 1
        finally:
            for _ in range(taken):
                self._slots.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ControlServer:
    """Serves the control socket from a daemon thread until `close()`."""

    def __init__(self, path: str | Path, enrolment: LiveEnrolment) -> None:
        self.path = Path(path)
        _clear_stale_socket(self.path)
        self._server = _Server(str(self.path), _Handler)
        self._server.enrolment = enrolment
        # Group members (the site engineer) may connect; the service's UMask would leave them out.
        os.chmod(self.path, 0o660)
        self._thread = threading.Thread(target=self._server.serve_forever, name="control-socket", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        # A client enrolling gets its final reply (what was stored, and why it ended) before the
        # process goes, instead of progress lines for the rest of its time or a dropped connection.
        self._server.enrolment.stop("the service is stopping")
        self._server.wait_idle(CLOSE_GRACE_S)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clear_stale_socket(path: Path) -> None:
    """Remove the socket a killed run left behind; refuse to take over a live one or a non-socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UserError(
            f"paths.control_socket = {path}: exists and is not a socket; remove it or choose another path"
        )
    if not something_listens(str(path)):
        path.unlink()  # nobody listens: left by a run that was killed
        return
    raise UserError(
        f"paths.control_socket = {path}: another vrclip-edge run is serving it; stop that one first "
        "(systemctl stop vrclip-edge.service) or give this run another paths.control_socket"
    )


def open_control_server(
    path: str, enrolment: LiveEnrolment, warn: Callable[[str], None]
) -> ControlServer | None:
    """The control server at `path`, or None (with a warning) where it cannot be created: a run
    started by hand without /run/vrclip still identifies people."""
    if not path:
        return None
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return ControlServer(path, enrolment)
    except UserError:
        raise
    except OSError as exc:
        warn(
            f"paths.control_socket = {path}: cannot listen there ({exc.strerror or exc}); live enrolment "
            "(`vrclip-edge enroll --service`) is off for this run"
        )
        return None


# ------------------------------------------------------------------------------------------ client
def _connect(path: str) -> socket.socket:
    if not path:
        raise UserError("paths.control_socket is empty: this config runs no control socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise UserError(
            f"no running service at {path} (paths.control_socket): start it (systemctl start "
            "vrclip-edge.service), or enrol without --service while it is stopped"
        ) from None
    except PermissionError:
        sock.close()
        raise UserError(
            f"{path}: permission denied; run as the service account or a member of its group "
            "(e.g. sudo -u vrclip vrclip-edge enroll ...)"
        ) from None
    except OSError as exc:
        sock.close()
        raise UserError(
            f"{path}: no service answers ({exc.strerror or exc}); is vrclip-edge running?"
        ) from None
    return sock


def _replies(sock: socket.socket, deadline: float) -> Any:
    reader = sock.makefile("rb")
    while True:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            line = reader.readline(1 << 20)
        except TimeoutError:
            raise UserError("the service stopped answering") from None
        except OSError as exc:  # a reset: the service stopped (or restarted) mid-request
            raise UserError(
                f"the service dropped the connection ({exc.strerror or exc}); did it stop?"
            ) from None
        if not line:
            raise UserError("the service closed the connection (did it stop?)")
        try:
            message = json.loads(line)
        except ValueError:
            raise UserError(f"the service replied something that is not JSON: {line[:80]!r}") from None
        if not isinstance(message, dict):
            raise UserError(f"the service replied {line[:80]!r}, not a JSON object")
        yield message


def _request(sock: socket.socket, request: dict[str, Any]) -> None:
    sock.settimeout(REQUEST_TIMEOUT_S)
    try:
        sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
    except OSError as exc:
        raise UserError(f"the service dropped the connection ({exc.strerror or exc}); did it stop?") from None


def ping(path: str, timeout_s: float = 3.0) -> dict[str, Any]:
    with _connect(path) as sock:
        _request(sock, {"op": "ping"})
        return next(_replies(sock, time.monotonic() + timeout_s))


def enrol_via_service(
    path: str, name: str, seconds: float, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Ask the running service to enrol `name` for `seconds`; returns its final report."""
    with _connect(path) as sock:
        _request(sock, {"op": "enrol", "name": name, "seconds": seconds})
        for message in _replies(sock, time.monotonic() + seconds + END_GRACE_S):
            if "progress" in message:
                if on_progress is not None and isinstance(message["progress"], dict):
                    on_progress(message["progress"])
                continue
            if message.get("ok") is True and isinstance(message.get("report"), dict):
                return message["report"]
            raise UserError(str(message.get("error", f"unexpected reply {message!r}"))[:500])
    raise AssertionError("unreachable")


__all__ = ["ControlServer", "enrol_via_service", "open_control_server", "ping"]
