"""Start protocol: one TCP time server tells every device the instant at which a recording starts.

Why a broadcast *target* instead of a "go now" message: network latency to each device differs by
milliseconds and varies, so "go now" would start devices at different instants. All devices share one
disciplined clock (NTP/PTP), so the server instead sends a start instant a short lead in the future and
each device sleeps until that instant on its own clock; the start spread is then bounded by clock sync
and wake-up precision, not by the network.

Wire format: newline-terminated UTF-8 JSON, one object per line, each line at most ``MAX_LINE_BYTES``.

- client -> server, right after connecting: ``{"type": "hello", "name": "<device name>"}``; a connection
  that sends no complete hello within ``DEFAULT_HELLO_TIMEOUT_S`` is closed without an answer.
- server -> client, once armed: ``{"type": "start", "target_ns": <int>, "clock": "<clock name>",
  "session": "<id>"}``; then the server closes its side.
- server -> client, when it refuses (full, start already passed, bad hello):
  ``{"type": "error", "message": "<why>"}``; then it closes. A refusal that may pass (the server is
  full, and a slot frees when another device leaves or a silent socket is dropped) adds
  ``"retry": true``; the client then keeps trying until its own timeout.

Nothing read from the socket is trusted: lines are length-bounded, the number of clients is bounded,
and the client validates every field of the start message before sleeping on it.
"""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from vrclip.edge.errors import UserError
from vrclip.edge.frames import CLOCK_REALTIME
from vrclip.edge.timebase.clock import clock_reader, known_clocks, now_ns, sleep_until_ns

#: Longest protocol line in bytes, newline included. A start message is ~120 bytes; the bound keeps a
#: misbehaving peer from making either side buffer without limit.
MAX_LINE_BYTES = 1024
#: Default number of simultaneous client connections the server accepts.
DEFAULT_MAX_CLIENTS = 64
#: Default TCP port of the time server.
DEFAULT_PORT = 7390
#: Seconds a new connection has to send its hello line; one that stays silent longer is dropped, so
#: idle or half-open sockets cannot hold the ``max_clients`` slots that real devices need. A device
#: sends its hello right after connecting, so this only has to cover a slow network.
DEFAULT_HELLO_TIMEOUT_S = 3.0
#: A start target that is already this far in the past when it arrives is refused: the clocks are not in
#: sync or the lead was shorter than the delivery time, and starting "late" would silently skew the data.
DEFAULT_PAST_TOLERANCE_NS = 50_000_000
#: A start target further ahead than this is refused: it almost always means the server and client read
#: different clocks (e.g. a monotonic clock across hosts, or an unsynchronised wall clock).
DEFAULT_MAX_FUTURE_NS = 3_600 * 1_000_000_000
#: Longest a device waits for its start signal (`wait --timeout`, `record --start-timeout`): a week
#: covers any rig; longer (or infinite) waits overflow the socket timeout.
MAX_WAIT_S = 7 * 86_400.0
#: Largest lead the server accepts, for the same reason.
MAX_LEAD_S = 3_600.0
#: How long the server keeps a connection after sending its last line, waiting for the client to close
#: first. Closing while unread client bytes sit in the kernel buffer sends a TCP reset, which can destroy
#: the start line before the client reads it.
_LINGER_S = 2.0
_NAME_MAX = 64
#: Bound on the served-devices log, so a flood of late joiners cannot grow it without limit.
_MAX_SERVED_LOG = 4096
_SESSION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class StartSignal:
    """The instant at which every device of one session starts, on a named clock."""

    target_ns: int
    clock: str
    session: str

    def to_line(self) -> bytes:
        """The wire form of this signal: one JSON line."""
        msg = {"type": "start", "target_ns": self.target_ns, "clock": self.clock, "session": self.session}
        return _encode(msg)


def _encode(msg: dict[str, Any]) -> bytes:
    line = (json.dumps(msg, separators=(",", ":")) + "\n").encode("utf-8")
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"protocol line of {len(line)} bytes exceeds MAX_LINE_BYTES={MAX_LINE_BYTES}")
    return line


def _error_line(message: str, *, retry: bool = False) -> bytes:
    msg: dict[str, Any] = {"type": "error", "message": message[:800]}
    if retry:
        msg["retry"] = True
    return _encode(msg)


def host_port(host: str, port: int) -> str:
    """``host:port`` as written in messages, with an IPv6 address in brackets (``[::1]:7390``): bare,
    ``::1:7390`` cannot be told from the address ``::1:7390`` and cannot be pasted back anywhere."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def new_session_id() -> str:
    """A session id that sorts by time and is unique across servers: UTC start of arming + random."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _check_lead(lead_s: float) -> float:
    try:
        lead = float(lead_s)
    except (TypeError, ValueError):
        raise UserError(f"lead must be a number of seconds, got {lead_s!r}") from None
    if not (0.0 < lead <= MAX_LEAD_S):
        raise UserError(
            f"lead must be > 0 and <= {MAX_LEAD_S:g} s, got {lead_s!r}: it has to cover the delivery of "
            "the start message to every device"
        )
    return lead


# --------------------------------------------------------------------------------------------- server


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer: str
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    name: str | None = None
    #: A start (or error) line has been queued; nothing more will be sent.
    answered: bool = False
    #: Our write side is shut; waiting for the client's EOF until linger_deadline.
    write_shut: bool = False
    linger_deadline: float | None = None
    #: Counts toward max_clients (False for a connection accepted only to be told the server is full).
    counted: bool = True
    #: The hello line was read (valid or not); later bytes are discarded unread.
    hello_done: bool = False
    #: Monotonic time by which the hello line must have arrived, else the connection is dropped.
    hello_deadline: float = float("inf")


class StartServer:
    """TCP time server that arms once and tells every connected device the same start instant.

    Arming happens on the first of: an explicit ``arm()``; ``expected_clients`` devices having said
    hello; ``arm_timeout_s`` seconds after ``start()``. After arming, a device that connects late still
    receives the target while it is in the future, and a clear refusal once it has passed. A connection
    that has not sent its hello within ``hello_timeout_s`` is dropped and frees its slot.

    All socket I/O runs on one background thread around a selector, so a slow or hostile client cannot
    block the others; ``arm()`` from another thread only records the signal and wakes that loop.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        expected_clients: int | None = None,
        lead_s: float = 1.0,
        arm_timeout_s: float | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: str = CLOCK_REALTIME,
        session: str | None = None,
        hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S,
    ) -> None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise UserError(f"port must be an integer in 0..65535 (0 = any free port), got {port!r}")
        if not isinstance(max_clients, int) or max_clients < 1:
            raise UserError(f"max_clients must be an integer >= 1, got {max_clients!r}")
        if expected_clients is not None and not 1 <= expected_clients <= max_clients:
            raise UserError(
                f"expected_clients must be between 1 and max_clients={max_clients}, got {expected_clients!r}"
            )
        if arm_timeout_s is not None and not arm_timeout_s > 0:
            raise UserError(f"arm_timeout_s must be > 0 seconds, got {arm_timeout_s!r}")
        if not hello_timeout_s > 0:
            raise UserError(f"hello_timeout_s must be > 0 seconds, got {hello_timeout_s!r}")
        if session is not None and not _SESSION_RE.match(session):
            raise UserError(
                f"session id {session!r} is invalid: use 1-128 characters from letters, digits and ._:-"
            )
        clock_reader(clock)  # unknown clock -> UserError now, not at arming
        self.host = host
        self.port = port
        self.expected_clients = expected_clients
        self.lead_s = _check_lead(lead_s)
        self.arm_timeout_s = arm_timeout_s
        self.max_clients = max_clients
        self.hello_timeout_s = hello_timeout_s
        self.clock = clock
        self._session = session
        self._lock = threading.Lock()
        self._signal: StartSignal | None = None
        self._armed = threading.Event()
        self._stop = threading.Event()
        self._conns: dict[socket.socket, _Conn] = {}
        self._names: list[str] = []
        self._armed_names: list[str] = []
        self._served: list[_Conn] = []
        #: Connections turned away because every slot was taken (each is told to retry).
        self.refused_full = 0
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._started_mono = 0.0
        self._loop_error: BaseException | None = None

    # -- lifecycle

    @property
    def address(self) -> str:
        """``host:port`` as clients should dial it (for messages)."""
        return host_port(self.host, self.port)

    def start(self) -> StartServer:
        """Bind, listen and start the I/O thread. ``port=0`` picks a free port, then set on ``.port``."""
        if self._thread is not None:
            raise RuntimeError("StartServer.start() called twice")
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise UserError(f"time server: cannot resolve bind host {self.host!r}: {exc}") from None
        family, _, _, _, sockaddr = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(min(self.max_clients, socket.SOMAXCONN))
        except OSError as exc:
            listener.close()
            raise UserError(
                f"time server: cannot listen on {self.address}: {exc.strerror or exc}; "
                "pick another --port or stop the process using it"
            ) from None
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._started_mono = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"start-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the I/O thread and close every socket. Safe to call more than once."""
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        for sock in list(self._conns):
            self._drop(sock)
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        if self._sel is not None:
            with contextlib.suppress(Exception):
                self._sel.close()
        self._listener = self._wake_r = self._wake_w = None
        self._sel = None

    def __enter__(self) -> StartServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public state

    @property
    def signal(self) -> StartSignal | None:
        """The start signal once armed, else None."""
        with self._lock:
            return self._signal

    @property
    def clients(self) -> list[str]:
        """Names of devices currently connected that have said hello."""
        with self._lock:
            return list(self._names)

    @property
    def armed_clients(self) -> list[str]:
        """Names of the devices that had said hello when the server armed (they may have left since)."""
        with self._lock:
            return list(self._armed_names)

    @property
    def served(self) -> list[str]:
        """Peers (``name@host:port``) that were sent the start signal, in order."""
        with self._lock:
            return [f"{c.name or '?'}@{c.peer}" for c in self._served]

    def arm(self, lead_s: float | None = None) -> StartSignal:
        """Fix the start instant at now + lead and send it to every connected device.

        Arming twice is refused: a session has exactly one start instant.
        """
        lead = self.lead_s if lead_s is None else _check_lead(lead_s)
        with self._lock:
            if self._signal is not None:
                raise UserError(
                    f"time server {self.address} is already armed for session {self._signal.session} "
                    f"(target {self._signal.target_ns} ns); start a new server for a new session"
                )
            signal = self._arm_locked(lead)
        self._wake()
        return signal

    def wait_armed(self, timeout_s: float | None = None) -> StartSignal | None:
        """Block until armed (by any trigger); return the signal, or None on timeout."""
        self._armed.wait(timeout_s)
        if self._loop_error is not None:
            raise RuntimeError("time server I/O thread failed") from self._loop_error
        return self.signal

    # -- internals

    def _arm_locked(self, lead_s: float) -> StartSignal:
        self._armed_names = list(self._names)
        session = self._session or new_session_id()
        self._signal = StartSignal(
            target_ns=now_ns(self.clock) + round(lead_s * 1e9), clock=self.clock, session=session
        )
        self._armed.set()
        return self._signal

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            with contextlib.suppress(OSError):
                w.send(b"\0")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                sel = self._sel
                if sel is None:
                    return
                for key, mask in sel.select(self._select_timeout()):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            while self._wake_r is not None and self._wake_r.recv(4096):
                                pass
                    else:
                        conn: _Conn = key.data
                        if mask & selectors.EVENT_READ:
                            self._on_readable(conn)
                        if mask & selectors.EVENT_WRITE and conn.sock in self._conns:
                            self._flush(conn)
                self._maybe_auto_arm()
                self._answer_pending()
                self._reap_lingering()
        except BaseException as exc:  # the thread must not die silently: surface it to wait_armed()
            self._loop_error = exc
            self._armed.set()
            raise

    def _select_timeout(self) -> float:
        timeout = 0.2
        if self.arm_timeout_s is not None and not self._armed.is_set():
            left = self._started_mono + self.arm_timeout_s - time.monotonic()
            timeout = max(0.0, min(timeout, left))
        return timeout

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(self.max_clients):  # drain the backlog, bounded
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            peer = host_port(addr[0], addr[1])
            active = sum(1 for c in self._conns.values() if c.counted)
            if active >= self.max_clients and len(self._conns) >= 2 * self.max_clients:
                with contextlib.suppress(OSError):
                    sock.close()  # flood: not even a refusal line
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keep_alive(sock)
            full = active >= self.max_clients
            conn = _Conn(
                sock=sock,
                peer=peer,
                counted=not full,
                hello_done=full,
                hello_deadline=time.monotonic() + self.hello_timeout_s,
            )
            self._conns[sock] = conn
            assert self._sel is not None
            self._sel.register(sock, selectors.EVENT_READ, conn)
            if full:
                self.refused_full += 1
                # Refused, but through the lingering close, so the refusal line is not lost to a reset.
                self._reply_and_close(conn, f"time server full ({self.max_clients} clients)", retry=True)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn.sock)
            return
        if not data:  # client closed
            self._drop(conn.sock)
            return
        if conn.hello_done:
            return  # nothing more is expected from this client; discard without buffering
        conn.inbuf += data
        nl = conn.inbuf.find(b"\n")
        if nl < 0 and len(conn.inbuf) < MAX_LINE_BYTES:
            return
        line = bytes(conn.inbuf[:nl]) if 0 <= nl < MAX_LINE_BYTES else None
        conn.inbuf.clear()
        conn.hello_done = True
        # A device that joined after arming may already have its answer; its hello then only names it.
        if line is None:
            if not conn.answered:
                self._reply_and_close(conn, f"hello line longer than {MAX_LINE_BYTES} bytes")
            return
        try:
            name = _parse_hello(line)
        except ValueError as exc:
            if not conn.answered:
                self._reply_and_close(conn, f"bad hello from {conn.peer}: {exc}")
            return
        conn.name = name
        with self._lock:
            self._names.append(name)

    def _maybe_auto_arm(self) -> None:
        if self._armed.is_set():
            return
        with self._lock:
            if self._signal is not None:
                return
            enough = self.expected_clients is not None and len(self._names) >= self.expected_clients
            timed_out = (
                self.arm_timeout_s is not None and time.monotonic() - self._started_mono >= self.arm_timeout_s
            )
            if enough or timed_out:
                self._arm_locked(self.lead_s)

    def _answer_pending(self) -> None:
        signal = self.signal
        if signal is None:
            return
        for conn in list(self._conns.values()):
            if conn.answered:
                continue
            if now_ns(signal.clock) < signal.target_ns:
                conn.answered = True
                conn.outbuf += signal.to_line()
                with self._lock:
                    if len(self._served) < _MAX_SERVED_LOG:
                        self._served.append(conn)
                self._flush(conn)
            else:
                self._reply_and_close(
                    conn,
                    f"start of session {signal.session} at {signal.target_ns} ns ({signal.clock}) has "
                    "already passed; this device joined too late",
                )

    def _reply_and_close(self, conn: _Conn, message: str, *, retry: bool = False) -> None:
        conn.answered = True
        conn.outbuf += _error_line(message, retry=retry)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        """Send what is queued; once everything is out, shut our write side and linger for the EOF."""
        if conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._drop(conn.sock)
                return
            del conn.outbuf[:n]
        assert self._sel is not None
        if conn.outbuf:
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        if conn.answered and not conn.write_shut:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            conn.write_shut = True
            conn.linger_deadline = time.monotonic() + _LINGER_S
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _reap_lingering(self) -> None:
        """Drop connections whose linger is over, and silent ones that never said hello in time."""
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.linger_deadline is not None and now >= conn.linger_deadline:
                self._drop(conn.sock)
            elif not conn.hello_done and not conn.answered and now >= conn.hello_deadline:
                self._drop(conn.sock)  # silent: no reply, it would only hold the slot longer

    def _drop(self, sock: socket.socket) -> None:
        conn = self._conns.pop(sock, None)
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(sock)
        with contextlib.suppress(OSError):
            sock.close()
        if conn is not None and conn.name is not None:
            with self._lock, contextlib.suppress(ValueError):
                self._names.remove(conn.name)


#: TCP keepalive of the server's connections: probe after this many idle seconds, every
#: _KEEPALIVE_INTERVAL_S, and drop the peer after _KEEPALIVE_PROBES unanswered probes (~25 s in all).
_KEEPALIVE_IDLE_S = 10
_KEEPALIVE_INTERVAL_S = 5
_KEEPALIVE_PROBES = 3


def _keep_alive(sock: socket.socket) -> None:
    """Have the kernel probe an idle connection, so that a device that lost power (or its link) after
    its hello stops holding a slot and counting toward ``expected_clients``.

    A device that dies without closing sends no FIN: without probes its connection stays "connected"
    for as long as the server runs (the hello deadline only covers connections that never said hello),
    and a box that reboots and says hello again is counted twice, arming the server one device short.
    The kernel's default keepalive waits two hours, so the timings are set where the platform allows.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            ("TCP_KEEPIDLE", _KEEPALIVE_IDLE_S),
            ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL_S),
            ("TCP_KEEPCNT", _KEEPALIVE_PROBES),
        ):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _parse_hello(line: bytes) -> str:
    try:
        msg = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON line ({exc})") from None
    if not isinstance(msg, dict) or msg.get("type") != "hello":
        raise ValueError('expected {"type": "hello", "name": ...}')
    name = msg.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= _NAME_MAX or not name.isprintable():
        raise ValueError(f"field 'name' must be a printable string of 1-{_NAME_MAX} characters")
    return name


# --------------------------------------------------------------------------------------------- client


def parse_start_message(
    line: bytes,
    server: str,
    *,
    past_tolerance_ns: int = DEFAULT_PAST_TOLERANCE_NS,
    max_future_ns: int = DEFAULT_MAX_FUTURE_NS,
) -> StartSignal:
    """Validate one line from the time server ``server`` (``host:port``) and return its StartSignal.

    Every refusal is a UserError that names the server and the offending field, because the person
    reading it is at a device and must know which server sent what.
    """
    where = f"time server {server}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where} sent a line that is not UTF-8: {line[:80]!r}") from None
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{where} sent malformed JSON ({exc.msg} at column {exc.colno}): {text[:80]!r}"
        ) from None
    if not isinstance(msg, dict):
        raise UserError(f"{where} sent a JSON {type(msg).__name__}, expected an object: {text[:80]!r}")
    kind = msg.get("type")
    if kind == "error":
        detail = msg.get("message")
        why = f"{where} refused this device: {detail if isinstance(detail, str) else text[:200]}"
        if msg.get("retry") is True:
            raise ServerBusy(why)
        raise UserError(why)
    if kind != "start":
        raise UserError(f"{where} sent field 'type' = {kind!r}, expected 'start'")
    for key in ("target_ns", "clock", "session"):
        if key not in msg:
            raise UserError(f"{where} sent a start message without field {key!r}: {text[:160]!r}")
    target = msg["target_ns"]
    if isinstance(target, bool) or not isinstance(target, int) or target <= 0:
        raise UserError(f"{where} sent field 'target_ns' = {target!r}: expected a positive integer (ns)")
    clock = msg["clock"]
    if not isinstance(clock, str):
        raise UserError(f"{where} sent field 'clock' = {clock!r}: expected a clock name string")
    if clock not in known_clocks():
        raise UserError(
            f"{where} sent field 'clock' = {clock!r}, which this device cannot read: "
            f"known clocks are {', '.join(known_clocks())}"
        )
    session = msg["session"]
    if not isinstance(session, str) or not _SESSION_RE.match(session):
        raise UserError(
            f"{where} sent field 'session' = {session!r}: expected 1-128 characters from letters, "
            "digits and ._:-"
        )
    delta = target - now_ns(clock)
    if delta < -past_tolerance_ns:
        raise UserError(
            f"{where} sent field 'target_ns' = {target}, {-delta / 1e6:.1f} ms in the past on {clock} "
            f"(tolerance {past_tolerance_ns / 1e6:g} ms): check that this device's clock is synchronised "
            "(NTP/PTP) and that the server's --lead covers the delivery time"
        )
    if delta > max_future_ns:
        raise UserError(
            f"{where} sent field 'target_ns' = {target}, {delta / 1e9:.0f} s in the future on {clock} "
            f"(limit {max_future_ns / 1e9:g} s): the server and this device do not share a clock"
        )
    return StartSignal(target_ns=target, clock=clock, session=session)


def check_wait_request(name: str, timeout_s: float) -> None:
    """Refuse a device name or wait the time server would refuse or the sockets cannot take.

    Separate from `wait_for_start` so that `record --wait-start` can refuse them before it spends up
    to OPEN_WAIT_S opening its sensors. The timeout must be finite and at most MAX_WAIT_S: a socket
    timeout beyond ~1e9 s overflows the platform's time_t (an OverflowError traceback, not a message).
    """
    if not isinstance(name, str) or not 1 <= len(name) <= _NAME_MAX or not name.isprintable():
        raise UserError(f"device name {name!r} is invalid: use 1-{_NAME_MAX} printable characters")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise UserError(f"timeout must be a number of seconds, got {timeout_s!r}")
    if not 0 < timeout_s <= MAX_WAIT_S:
        raise UserError(
            f"timeout must be > 0 and <= {MAX_WAIT_S:g} seconds (a week), got {timeout_s!r}: "
            "a device waits for the start at most that long"
        )


def wait_for_start(
    host: str,
    port: int,
    name: str,
    timeout_s: float = 60.0,
    *,
    past_tolerance_ns: int = DEFAULT_PAST_TOLERANCE_NS,
    max_future_ns: int = DEFAULT_MAX_FUTURE_NS,
) -> StartSignal:
    """Connect to the time server (retrying with backoff), say hello, and return its validated signal.

    Retries cover the usual start-up race (devices come up before the server or their resolver),
    transient drops and a full server (a slot frees when a device leaves or a silent socket is
    dropped); a message the server did send but that fails validation, a host name that does not
    exist, or any other refusal, is final.
    Raises UserError naming ``host:port`` if no valid signal arrives within ``timeout_s``.
    """
    check_wait_request(name, timeout_s)
    server = host_port(host, port)
    hello = _encode({"type": "hello", "name": name})
    deadline = time.monotonic() + timeout_s
    backoff = 0.05
    last_error = "no attempt made"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            line = _exchange(host, port, hello, deadline)
            return parse_start_message(
                line, server, past_tolerance_ns=past_tolerance_ns, max_future_ns=max_future_ns
            )
        except (_Retry, ServerBusy) as exc:
            last_error = str(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(backoff, left))
        backoff = min(backoff * 2, 1.0)
    raise UserError(
        f"no start signal from time server {server} within {timeout_s:g} s (last: {last_error}); "
        "check that `vrclip-edge timebase serve` is running there and reachable"
    )


class ServerBusy(UserError):
    """The server refused for now (it is full) and said a later attempt may succeed."""


class _Retry(Exception):
    """A failure worth retrying: nothing valid was received yet."""


def _exchange(host: str, port: int, hello: bytes, deadline: float) -> bytes:
    """One connection attempt: send hello, return the first line the server sends."""
    left = deadline - time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=max(left, 0.001))
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            # No resolver yet (a box booting before its network is up): retried like a refused
            # connection. A name that does not exist (EAI_NONAME) is a typo, and final.
            raise _Retry(f"cannot resolve host {host!r} yet: {exc.strerror or exc}") from None
        raise UserError(f"time server {host_port(host, port)}: cannot resolve host {host!r}: {exc}") from None
    except OSError as exc:
        raise _Retry(f"connect failed: {exc.strerror or exc}") from None
    with sock:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        try:
            sock.sendall(hello)
            while True:
                nl = buf.find(b"\n")
                if nl >= 0:
                    return bytes(buf[:nl])
                if len(buf) >= MAX_LINE_BYTES:
                    raise UserError(
                        f"time server {host_port(host, port)} sent a line longer than {MAX_LINE_BYTES} "
                        f"bytes: {bytes(buf[:80])!r}..."
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Retry("connected, but the server did not arm in time")
                sock.settimeout(left)
                chunk = sock.recv(MAX_LINE_BYTES)
                if not chunk:
                    raise _Retry("server closed the connection without a start message")
                buf += chunk
        except TimeoutError:
            raise _Retry("connected, but the server did not arm in time") from None
        except OSError as exc:
            raise _Retry(f"connection lost: {exc.strerror or exc}") from None


def start_at(signal: StartSignal) -> int:
    """Sleep until the signal's target on its clock; return the actual start instant (ns, same clock)."""
    return sleep_until_ns(signal.target_ns, signal.clock)
