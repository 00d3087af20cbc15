"""Where IdentityEvents go: a rotating JSON-lines file, stdout, and an MQTT broker.

The rule for every sink: the pipeline must never wait on it. A full disk, a closed pipe or a broker
that is down costs a counter increment, never a frame. The file sink writes each line with one
unbuffered `write(2)` in append mode (a crash leaves whole lines only; a write that fails mid-line,
on a full disk, is cut back off the file; a file moved or deleted under it is created again); the
MQTT sink hands events to a bounded outbox that a background thread drains into paho-mqtt (QoS 1),
dropping the OLDEST event when full (the newest position of a person is worth more than one from a
minute ago); the stdout sink does the same with its own writer thread, since a paused terminal or a
slow journald blocks a write to stdout.
"""

from __future__ import annotations

import collections
import contextlib
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from vrclip.edge.errors import ConfigError
from vrclip.edge.events.event import IdentityEvent
from vrclip.edge.textfiles import FileTooLarge, read_bytes_capped

if TYPE_CHECKING:
    from vrclip.edge.config import SinksConfig

#: Defaults while the config has no keys for them (see the report to the lead).
DEFAULT_JSONL_MAX_BYTES = 50_000_000
DEFAULT_JSONL_KEEP = 5
DEFAULT_MQTT_OUTBOX = 10_000
#: MQTT messages handed to paho but not yet acknowledged (QoS 1): bounds paho's own queue too.
DEFAULT_MQTT_WINDOW = 64

Stats = dict[str, Any]


class EventSink(Protocol):
    name: str

    def emit(self, event: IdentityEvent) -> None: ...

    def stats(self) -> Stats: ...

    def close(self) -> None: ...


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class RotatingJsonlSink:
    """Append events as JSON lines; rotate by size to `<path>.1` .. `<path>.<keep>` (oldest dropped)."""

    name = "jsonl"

    def __init__(
        self, path: str | Path, *, max_bytes: int = DEFAULT_JSONL_MAX_BYTES, keep: int = DEFAULT_JSONL_KEEP
    ):
        if max_bytes < 1:
            raise ConfigError(f"sinks.jsonl_max_bytes = {max_bytes}: must be at least 1")
        if keep < 0:
            raise ConfigError(f"sinks.jsonl_keep = {keep}: must be 0 or more")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.keep = int(keep)
        self.written = 0
        self.rotations = 0
        self.errors = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        #: The file may end in part of a line that could not be removed (see `_cut_back`).
        self._torn = False

    def backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        self._size = os.fstat(fd).st_size
        self._torn = self._torn and self._size > 0  # a new (or rotated) file has no fragment to end
        self._fd = fd
        return fd

    def _current_fd(self) -> int:
        """The open file while `path` still names it, else `path` opened (created) again: a file
        moved or deleted under the sink (an operator's rm, a logrotate mv) would otherwise take
        every later event out of sight, or off the disk, until the next size rotation."""
        if self._fd is not None:
            try:
                ours = os.path.samestat(os.stat(self.path), os.fstat(self._fd))
            except FileNotFoundError:
                ours = False
            if not ours:
                self._close_fd()
        return self._fd if self._fd is not None else self._open()

    def _cut_back(self, fd: int, size: int) -> None:
        """Remove what a failed write left of its line (a disk that fills mid-line stores part of
        it), so the file holds whole lines only and the next event does not land on a fragment."""
        try:
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
        except OSError:
            self._torn = True

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _rotate(self) -> None:
        self._close_fd()
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.keep - 1, 0, -1):
                if self.backup(index).exists():
                    os.replace(self.backup(index), self.backup(index + 1))
            os.replace(self.path, self.backup(1))
        self.rotations += 1

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd: int | None = None
            start = -1
            try:
                fd = self._current_fd()
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                    fd = self._open()
                if self._torn:
                    # An earlier failed line could not be cut off: end it, so this event is a line of
                    # its own (consumers skip the one broken line instead of losing this event too).
                    data = b"\n" + data
                start = os.fstat(fd).st_size  # the real end: truncating past it would pad with NULs
                written = os.write(fd, data)
                while written < len(data):  # a short write (rare: signals, nearly full disk)
                    written += os.write(fd, data[written:])
                self._size = start + len(data)
                self._torn = False
                self.written += 1
            except OSError as exc:
                # Disk full, folder removed, permissions changed: count it and retry on the next event.
                self.errors += 1
                self.last_error = _describe(exc)
                if fd is not None and start >= 0:
                    self._cut_back(fd, start)
                self._close_fd()

    def emit(self, event: IdentityEvent) -> None:
        self.write_line(event.to_json())

    def stats(self) -> Stats:
        return {
            "written": self.written,
            "rotations": self.rotations,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        with self._lock:
            self._close_fd()


#: Lines waiting for stdout; the oldest is dropped when full (as the MQTT outbox does).
DEFAULT_STDOUT_BACKLOG = 1000
#: How long close() waits for the lines still queued to be written.
STDOUT_CLOSE_WAIT_S = 2.0


class StdoutSink:
    """One JSON line per event on stdout (for `vrclip-edge run` in a terminal or under journald).

    A writer thread does the writing: a write to stdout blocks while the terminal is paused (Ctrl-S,
    a pager) or journald is slow to read its stream, and the pipeline must not wait on it. At most
    `backlog` lines wait; beyond that the oldest is dropped and counted."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None, backlog: int = DEFAULT_STDOUT_BACKLOG) -> None:
        self._stream = stream
        self.written = 0
        self.errors = 0
        self.dropped = 0
        self.last_error = ""
        self._lines: collections.deque[str] = collections.deque()
        self._backlog = max(1, int(backlog))
        self._cond = threading.Condition()
        self._writing = False
        self._closing = False
        self._thread = threading.Thread(target=self._write_lines, name="stdout-sink", daemon=True)
        self._thread.start()

    def emit(self, event: IdentityEvent) -> None:
        line = event.to_json() + "\n"
        with self._cond:
            if self._closing:
                self.dropped += 1
                return
            if len(self._lines) >= self._backlog:
                self._lines.popleft()
                self.dropped += 1
            self._lines.append(line)
            self._cond.notify_all()

    def _write_lines(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._closing:
                    self._cond.wait()
                if not self._lines:
                    return
                line = self._lines.popleft()
                self._writing = True
            stream = self._stream or sys.stdout
            try:
                stream.write(line)
                stream.flush()
                outcome = None
            except Exception as exc:  # BrokenPipeError, a closed stream, no stdout at all (None)
                outcome = exc
            with self._cond:
                self._writing = False
                if outcome is None:
                    self.written += 1
                else:
                    self.errors += 1
                    self.last_error = _describe(outcome)
                self._cond.notify_all()

    def flush(self, timeout_s: float = STDOUT_CLOSE_WAIT_S) -> bool:
        """Wait until every queued line is written (or failed); False if `timeout_s` ran out."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._lines or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stats(self) -> Stats:
        with self._cond:
            return {
                "written": self.written,
                "errors": self.errors,
                "dropped": self.dropped,
                "last_error": self.last_error,
            }

    def close(self) -> None:
        """Write what is queued (waiting at most STDOUT_CLOSE_WAIT_S on a blocked stdout), then stop."""
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(0.1)


#: A password file longer than this is not a password file (a key or a log pointed at by mistake).
MAX_PASSWORD_FILE_BYTES = 4096


def read_password_file(path: str) -> str:
    """The first line of `path` (sinks.mqtt.password_file), without its line end. The password lives
    in a file of its own so the site config, which installers copy and paste, holds no secret."""
    key = f"sinks.mqtt.password_file = {path!r}"
    try:
        raw = read_bytes_capped(path, MAX_PASSWORD_FILE_BYTES)
    except FileTooLarge:
        raise ConfigError(f"{key}: over {MAX_PASSWORD_FILE_BYTES} bytes, not a password file") from None
    except OSError as exc:
        raise ConfigError(
            f"{key}: cannot read it ({exc.strerror or exc}); the service user must be able to read it "
            "(e.g. mode 0640, group vrclip)"
        ) from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: an editor's byte-order mark is not part of the password
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: not UTF-8 text; put the password alone on the first line") from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise ConfigError(f"{key}: the first line is empty; put the password alone on the first line")
    return password


@dataclass(frozen=True)
class MqttTls:
    """sinks.mqtt's TLS settings: empty `ca_file` trusts the system's CAs; `cert_file`/`key_file`
    give a client certificate to brokers that require one."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def of(cls, mqtt: Any) -> MqttTls | None:
        """The TLS settings of `[sinks.mqtt]`, None with `tls = false` (keys a config object lacks
        read as their defaults)."""
        if not getattr(mqtt, "tls", False):
            return None
        return cls(
            getattr(mqtt, "ca_file", ""), getattr(mqtt, "cert_file", ""), getattr(mqtt, "key_file", "")
        )

    def check(self) -> None:
        """Load the files as TLS will, without a broker (for `config check`); a ConfigError names the
        one that does not load."""
        context = ssl.create_default_context()
        try:
            if self.ca_file:
                context.load_verify_locations(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file or None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(self._cannot_load(exc)) from None

    def _cannot_load(self, exc: BaseException) -> str:
        named = ", ".join(
            f"sinks.mqtt.{key} = {value!r}"
            for key, value in (
                ("ca_file", self.ca_file),
                ("cert_file", self.cert_file),
                ("key_file", self.key_file),
            )
            if value
        )
        return (
            f"sinks.mqtt.tls: cannot load the certificates ({named or 'the system CAs'}): {exc}; "
            "give PEM files the service user can read"
        )

    def apply(self, client: Any) -> None:
        """Set up `client` (paho) for TLS; a file that cannot be loaded is a ConfigError naming it."""
        try:
            client.tls_set(
                ca_certs=self.ca_file or None,
                certfile=self.cert_file or None,
                keyfile=self.key_file or None,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(self._cannot_load(exc)) from None


class MqttSink:
    """Publish events to `topic` at QoS 1 through paho-mqtt; never blocks `emit`.

    paho's network thread connects and reconnects in the background (exponential back-off between
    `reconnect_min_s` and `reconnect_max_s`); a pump thread moves events from the bounded outbox into
    paho only while connected and while fewer than `window` publishes await their PUBACK, so memory
    is bounded by `outbox + window` messages whatever the broker does. paho re-sends unacknowledged
    QoS 1 messages after a reconnect, so an event handed over is delivered at least once.
    """

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        outbox: int = DEFAULT_MQTT_OUTBOX,
        window: int = DEFAULT_MQTT_WINDOW,
        client_id: str = "",
        keepalive_s: int = 30,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        username: str = "",
        password: str | None = None,
        tls: MqttTls | None = None,
    ) -> None:
        """`username`/`password`: the broker login (none: anonymous); `tls`: connect over TLS,
        checking the broker's certificate and host name."""
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise ConfigError(
                "sinks.mqtt.enabled = true needs the paho-mqtt package: pip install 'paho-mqtt>=2'"
            ) from None
        if not topic or any(ch in topic for ch in "+#\0"):
            raise ConfigError(f"sinks.mqtt.topic = {topic!r}: must be non-empty, without wildcards + or #")
        if outbox < 1 or window < 1:
            raise ValueError("outbox and window must be at least 1")
        self._mqtt = mqtt
        self.host, self.port, self.topic = host, int(port), topic
        self.window = int(window)
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_max = int(outbox)
        self._cond = threading.Condition()
        self._inflight: set[int] = set()
        self._early_acks: set[int] = set()
        self._connected = False
        #: The broker answered the last attempt with a refusal (CONNACK with a failure code).
        self._refused = False
        self._stopping = False
        self.published = 0
        self.dropped = 0
        self.connects = 0
        self.disconnects = 0
        self.last_error = ""
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"vrclip-edge-{os.getpid()}-{int(time.time())}",
            protocol=mqtt.MQTTv311,
        )
        if username:
            self.client.username_pw_set(username, password)
        self._tls = tls is not None
        if tls is not None:
            tls.apply(self.client)
        self.client.max_inflight_messages_set(self.window)
        self.client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail
        self.client.connect_async(host, self.port, keepalive=keepalive_s)
        self.client.loop_start()
        self._pump_thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)
        self._pump_thread.start()

    # ---- paho callbacks (network thread) -----------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            if getattr(reason, "is_failure", False):
                self._refused = True
                self.last_error = f"broker {self.host}:{self.port} refused the connection: {reason}; retrying"
                return
            self._refused = False
            self._connected = True
            self.connects += 1
            self._cond.notify_all()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        with self._cond:
            # paho does not pass on why; over TLS the usual reasons are a certificate not trusted
            # or a plain-MQTT port.
            hint = (
                " (over TLS: check that this is the broker's TLS port and that sinks.mqtt.ca_file "
                "signed its certificate, for this host name)"
                if self._tls
                else ""
            )
            self.last_error = f"cannot reach MQTT broker {self.host}:{self.port}{hint}; retrying"

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            if self._connected:
                self.disconnects += 1
            elif self._refused:  # the broker closing the line after its refusal, which says why
                self._refused = False
                return
            self._connected = False
            if not self._stopping:
                self.last_error = f"disconnected from {self.host}:{self.port}: {reason}"

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            if mid in self._inflight:
                self._inflight.discard(mid)
                self.published += 1
            else:  # the PUBACK overtook our bookkeeping of the publish call
                self._early_acks.add(mid)
            self._cond.notify_all()

    # ---- the pipeline side -------------------------------------------------------------------------

    def emit(self, event: IdentityEvent) -> None:
        self.publish_raw(event.to_json().encode("utf-8"))

    def publish_raw(self, payload: bytes) -> None:
        with self._cond:
            if len(self._outbox) >= self._outbox_max:
                self._outbox.popleft()
                self.dropped += 1
            self._outbox.append(payload)
            self._cond.notify_all()

    def _pump(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (
                    self._connected and self._outbox and len(self._inflight) < self.window
                ):
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                payload = self._outbox.popleft()
            # Never hold our lock while inside paho: its network thread calls back into us.
            info = self.client.publish(self.topic, payload, qos=1)
            with self._cond:
                if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                    # Not queued by paho (e.g. queue full): put it back as the oldest event.
                    self.last_error = f"publish failed: {self._mqtt.error_string(info.rc)}"
                    self._outbox.appendleft(payload)
                    self._cond.wait(0.1)
                elif info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                    self.published += 1
                else:
                    self._inflight.add(info.mid)

    def flush(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until every event is acknowledged; True if the outbox drained."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._outbox or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> Stats:
        with self._cond:
            return {
                "connected": self._connected,
                "published": self.published,
                "queued": len(self._outbox),
                "inflight": len(self._inflight),
                "dropped": self.dropped,
                "connects": self.connects,
                "disconnects": self.disconnects,
                "last_error": self.last_error,
            }

    def close(self, flush_s: float = 2.0) -> None:
        """Give queued events `flush_s` to reach the broker, then disconnect and stop the threads."""
        if self._connected:
            self.flush(flush_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._pump_thread.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()


class EventSinks:
    """Fan an event out to every sink; a failing sink is counted and isolated, the others still get it."""

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        self.sinks = list(sinks)
        self.emitted = 0
        self.sink_failures = collections.Counter[str]()

    def emit(self, event: IdentityEvent) -> None:
        self.emitted += 1
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # a sink bug must not stop identification; it shows in stats()
                self.sink_failures[sink.name] += 1

    def stats(self) -> dict[str, Stats]:
        out = {sink.name: sink.stats() for sink in self.sinks}
        for name, count in self.sink_failures.items():
            out[name]["failures"] = count
        return out

    def close(self) -> None:
        """Close every sink, even after one whose close fails (its queued events are then lost, the
        others' are not)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                self.sink_failures[sink.name] += 1


def mqtt_setup_problems(cfg: SinksConfig) -> list[str]:
    """What would stop the MQTT sink at start (an unreadable password file, a certificate that does
    not load), checked without a broker, for `config check`."""
    mqtt = cfg.mqtt
    if not mqtt.enabled:
        return []
    problems = []
    checks: list[Callable[[], object]] = []
    if mqtt.password_file:
        checks.append(lambda: read_password_file(mqtt.password_file))
    tls = MqttTls.of(mqtt)
    if tls is not None:
        checks.append(tls.check)
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def build_sinks(cfg: SinksConfig, *, stdout: bool = False) -> EventSinks:
    """The sinks the config asks for: the JSONL file (unless `jsonl_path` is empty), stdout, MQTT."""
    sinks: list[EventSink] = []
    if cfg.jsonl_path:
        sinks.append(
            RotatingJsonlSink(
                cfg.jsonl_path,
                max_bytes=getattr(cfg, "jsonl_max_bytes", DEFAULT_JSONL_MAX_BYTES),
                keep=getattr(cfg, "jsonl_keep", DEFAULT_JSONL_KEEP),
            )
        )
    if stdout:
        sinks.append(StdoutSink())
    if cfg.mqtt.enabled:
        mqtt = cfg.mqtt
        username = getattr(mqtt, "username", "")
        password_file = getattr(mqtt, "password_file", "")
        sinks.append(
            MqttSink(
                mqtt.host,
                mqtt.port,
                mqtt.topic,
                outbox=getattr(mqtt, "outbox", DEFAULT_MQTT_OUTBOX),
                client_id=getattr(mqtt, "client_id", ""),
                username=username,
                password=read_password_file(password_file) if password_file else None,
                tls=MqttTls.of(mqtt),
            )
        )
    return EventSinks(sinks)
