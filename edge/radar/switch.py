"""Client of the RF switch-matrix controller (protocol: docs/switch_protocol.md).

The controller is reached over TCP (`tcp://host:port`) or a serial line (a device path such as
/dev/ttyUSB0, or any pyserial URL such as `socket://host:port` / `rfc2217://host:port`); the framing
is the same ASCII lines either way. Every request waits for its one reply line within the timeout;
`ERR` replies raise `SwitchReplyError`; anything unexpected raises an error naming the port and the
command. After a transport or framing error the client disconnects, because the reply stream can no
longer be matched to requests; an `ERR` reply leaves it connected (the stream is still in step).

`send_next()` / `receive_next()` split one `NEXT` round trip so the acquisition loop can move the
switch while it reads the VNA's data for the previous pair (see RadarSource).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
from vrclip.edge.config import SwitchConfig
from vrclip.edge.radar.errors import (
    SwitchConnectionError,
    SwitchProtocolError,
    SwitchReplyError,
    SwitchSelfTestError,
    SwitchSetupError,
    SwitchTimeoutError,
)
from vrclip.edge.radar.switch_protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    ProtocolViolation,
    format_sequence,
    parse_index,
    parse_version,
)

#: Requests that may be in flight at once (pipelining depth). One NEXT ahead is all the source needs.
MAX_IN_FLIGHT = 4


class _LineTooLong(Exception):
    pass


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def read_line(self, deadline: float) -> bytes: ...

    def close(self) -> None: ...


class TcpTransport:
    """A TCP connection with its own bounded line buffer."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        # Requests are tiny and latency-bound: never let Nagle hold one back.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timeout_s = timeout_s
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._sock.settimeout(self._timeout_s)  # read_line leaves the remaining time of its last wait
        self._sock.sendall(data)

    def read_line(self, deadline: float) -> bytes:
        """One reply line without its terminator; _LineTooLong past MAX_LINE_BYTES (terminator
        included), also when the whole over-long line came in one recv(), as the serial port does."""
        while True:
            idx = self._buf.find(b"\n")
            if idx >= MAX_LINE_BYTES:
                raise _LineTooLong
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 1]
                return line
            if len(self._buf) >= MAX_LINE_BYTES:
                raise _LineTooLong
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("controller closed the connection")
            self._buf += chunk

    def close(self) -> None:
        self._sock.close()


class SerialTransport:
    """A pyserial port or URL; same framing as TCP."""

    def __init__(self, url: str, baudrate: int, timeout_s: float) -> None:
        import serial

        self._ser = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout_s, write_timeout=timeout_s)
        self._ser.reset_input_buffer()

    def write(self, data: bytes) -> None:
        self._ser.write(data)
        self._ser.flush()

    def read_line(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._ser.timeout = remaining
        data = self._ser.read_until(b"\n", MAX_LINE_BYTES)
        if data.endswith(b"\n"):
            return data[:-1]
        if len(data) >= MAX_LINE_BYTES:
            raise _LineTooLong
        raise TimeoutError

    def close(self) -> None:
        self._ser.close()


def parse_tcp_url(port: str) -> tuple[str, int] | None:
    """`tcp://host:port` (IPv6 as `tcp://[::1]:port`) -> (host, port); None for anything else."""
    if not port.startswith("tcp://"):
        return None
    rest = port.removeprefix("tcp://").rstrip("/")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        number = tail.removeprefix(":")
    else:
        host, _, number = rest.rpartition(":")
    if not host or not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"{port!r} is not tcp://<host>:<port>")
    return host, int(number)


class SwitchClient:
    """One controller connection. Not thread-safe: the acquisition thread owns it."""

    def __init__(self, port: str, *, baudrate: int = 115_200, timeout_ms: int = 1000) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout_ms = int(timeout_ms)
        #: Controller firmware protocol version once connected.
        self.version = ""
        self._transport: _Transport | None = None
        self._in_flight: deque[str] = deque()

    @classmethod
    def from_config(cls, switch: SwitchConfig) -> SwitchClient:
        return cls(switch.port, baudrate=switch.baudrate, timeout_ms=switch.timeout_ms)

    @property
    def device(self) -> str:
        return f"switch {self.port}"

    @property
    def connected(self) -> bool:
        return self._transport is not None

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the port and check the protocol version (major must match PROTOCOL_VERSION's)."""
        self.close()
        timeout_s = self.timeout_ms / 1000.0
        try:
            tcp = parse_tcp_url(self.port)
        except ValueError as exc:
            raise SwitchSetupError(self.device, None, f"radar.switch.port: {exc}") from None
        try:
            if tcp is not None:
                self._transport = TcpTransport(tcp[0], tcp[1], timeout_s)
            else:
                self._transport = SerialTransport(self.port, self.baudrate, timeout_s)
        except (OSError, ValueError) as exc:
            raise SwitchConnectionError(self.device, None, f"cannot open: {exc}") from None
        except Exception as exc:  # pyserial's SerialException derives from IOError, but its URL handlers vary
            raise SwitchConnectionError(self.device, None, f"cannot open: {exc}") from None
        try:
            self._check_version()
        except BaseException:
            self.close()
            raise

    def _check_version(self) -> None:
        reply = self.request("VER?")
        word, _, text = reply.partition(" ")
        try:
            major = parse_version(text)[0] if word == "VER" else None
        except ProtocolViolation:
            major = None
        if major is None:
            self.close()
            raise SwitchProtocolError(
                self.device, "VER?", f"expected 'VER <major>.<minor>.<patch>', got {reply[:80]!r}"
            )
        ours = parse_version(PROTOCOL_VERSION)[0]
        if major != ours:
            self.close()
            raise SwitchSetupError(
                self.device, "VER?", f"controller speaks protocol {text}, this client {PROTOCOL_VERSION}; "
                "update the controller firmware or the edge software so the major versions match",
            )  # fmt: skip
        self.version = text

    def close(self) -> None:
        transport, self._transport = self._transport, None
        self._in_flight.clear()
        if transport is not None:
            with contextlib.suppress(OSError):
                transport.close()

    def __enter__(self) -> SwitchClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- request/reply ------------------------------------------------------------------------

    def send(self, command: str) -> None:
        """Send one request line; its reply is collected by `receive()` in order."""
        transport = self._transport
        if transport is None:
            raise SwitchConnectionError(self.device, command, "not connected (call connect() first)")
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            raise SwitchProtocolError(self.device, command, f"more than {MAX_IN_FLIGHT} requests in flight")
        line = command.encode("ascii") + b"\n"
        if len(line) > MAX_LINE_BYTES:
            raise SwitchProtocolError(
                self.device, command[:40], f"request of {len(line)} bytes exceeds {MAX_LINE_BYTES}"
            )
        try:
            transport.write(line)
        except OSError as exc:
            self.close()
            raise SwitchConnectionError(self.device, command, f"send failed: {exc}") from None
        except Exception as exc:  # pyserial's SerialTimeoutException / SerialException
            self.close()
            raise SwitchConnectionError(self.device, command, f"send failed: {exc}") from None
        self._in_flight.append(command)

    def receive(self) -> str:
        """The reply to the oldest request in flight; raises SwitchReplyError for `ERR` replies."""
        transport = self._transport
        if transport is None or not self._in_flight:
            raise SwitchProtocolError(self.device, None, "receive() without a request in flight")
        command = self._in_flight.popleft()
        deadline = time.monotonic() + self.timeout_ms / 1000.0
        try:
            raw = transport.read_line(deadline)
        except TimeoutError:
            self.close()
            raise SwitchTimeoutError(self.device, command, f"no reply within {self.timeout_ms} ms") from None
        except _LineTooLong:
            self.close()
            raise SwitchProtocolError(
                self.device, command, f"reply longer than {MAX_LINE_BYTES} bytes"
            ) from None
        except OSError as exc:
            self.close()
            raise SwitchConnectionError(self.device, command, f"connection lost: {exc}") from None
        except Exception as exc:  # pyserial's SerialException on a vanished device
            self.close()
            raise SwitchConnectionError(self.device, command, f"connection lost: {exc}") from None
        try:
            reply = raw.rstrip(b"\r").decode("ascii")
        except UnicodeDecodeError:
            self.close()
            raise SwitchProtocolError(self.device, command, f"reply is not ASCII: {raw[:40]!r}") from None
        if reply.startswith("ERR"):
            self._raise_err(command, reply)
        return reply

    def request(self, command: str) -> str:
        self.send(command)
        return self.receive()

    def _raise_err(self, command: str, reply: str) -> None:
        parts = reply.split(" ", 2)
        if len(parts) < 2 or parts[0] != "ERR" or not parts[1].isdigit():
            self.close()
            raise SwitchProtocolError(self.device, command, f"malformed error reply {reply[:80]!r}")
        raise SwitchReplyError(self.device, command, int(parts[1]), parts[2] if len(parts) > 2 else "")

    def _expect_ok(self, command: str, reply: str) -> None:
        if reply != "OK":
            self.close()
            raise SwitchProtocolError(self.device, command, f"expected 'OK', got {reply[:80]!r}")

    def _parse_pair_reply(self, command: str, reply: str, prefix: str) -> tuple[int, int]:
        parts = reply.split(" ")
        if len(parts) != 3 or parts[0] != prefix:
            self.close()
            raise SwitchProtocolError(
                self.device, command, f"expected '{prefix} <tx> <rx>', got {reply[:80]!r}"
            )
        try:
            return parse_index(parts[1], 1 << 16, "tx"), parse_index(parts[2], 1 << 16, "rx")
        except ProtocolViolation as exc:
            self.close()
            raise SwitchProtocolError(self.device, command, str(exc)) from None

    # --- commands -----------------------------------------------------------------------------

    def size(self) -> tuple[int, int]:
        """(n_tx, n_rx) ports of the matrix."""
        return self._parse_pair_reply("SIZE?", self.request("SIZE?"), "SIZE")

    def select(self, tx: int, rx: int) -> None:
        """Connect Tx port `tx` to Rx port `rx` (0-based); returns once the switches have settled."""
        command = f"SEL {int(tx)} {int(rx)}"
        self._expect_ok(command, self.request(command))

    def selected(self) -> tuple[int, int] | None:
        reply = self.request("SEL?")
        if reply == "SEL NONE":
            return None
        return self._parse_pair_reply("SEL?", reply, "SEL")

    def upload_sequence(self, pairs: Iterable[Sequence[int]]) -> None:
        """Store the switching sequence; the next `NEXT` selects its first pair."""
        try:
            command = format_sequence([(int(t), int(r)) for t, r in pairs])
        except ProtocolViolation as exc:
            raise SwitchSetupError(self.device, "SEQ", str(exc)) from None
        self._expect_ok("SEQ", self.request(command))

    def next(self) -> tuple[int, int]:
        """Select the next pair of the sequence; return it."""
        self.send_next()
        return self.receive_next()

    def send_next(self) -> None:
        self.send("NEXT")

    def receive_next(self) -> tuple[int, int]:
        return self._parse_pair_reply("NEXT", self.receive(), "OK")

    def arm(self) -> tuple[int, int]:
        """Hardware stepping: select the sequence's first pair and step on each trigger-input pulse.

        Returns the pair now connected. Needs protocol 1.3 and the VNA's trigger output wired to
        the controller's step input (see docs/switch_protocol.md).
        """
        minor = parse_version(self.version)[1] if self.version else 0
        if minor < 3:
            raise SwitchSetupError(
                self.device, "ARM", f"controller speaks protocol {self.version}; hardware stepping needs 1.3 "
                "or newer: update the controller firmware or set radar.switch.step = 'command'",
            )  # fmt: skip
        return self._parse_pair_reply("ARM", self.request("ARM"), "OK")

    def disarm(self) -> None:
        self._expect_ok("DISARM", self.request("DISARM"))

    def position(self) -> tuple[int, int]:
        """(sequence position, hardware steps since ARM) of an armed controller."""
        reply = self.request("POS?")
        parts = reply.split(" ")
        if len(parts) != 3 or parts[0] != "POS" or not (parts[1].isdigit() and parts[2].isdigit()):
            self.close()
            raise SwitchProtocolError(
                self.device, "POS?", f"expected 'POS <index> <steps>', got {reply[:80]!r}"
            )
        if len(parts[1]) > 3 or len(parts[2]) > 18:
            self.close()
            raise SwitchProtocolError(self.device, "POS?", f"implausible position reply {reply[:80]!r}")
        return int(parts[1]), int(parts[2])

    def self_test(self) -> None:
        """Run the controller's self-test; raise SwitchSelfTestError with its reason if it fails."""
        reply = self.request("TEST?")
        if reply == "TEST PASS":
            return
        if reply.startswith("TEST FAIL"):
            reason = reply.removeprefix("TEST FAIL").strip() or "(no reason given)"
            raise SwitchSelfTestError(self.device, "TEST?", f"self-test failed: {reason}")
        self.close()
        raise SwitchProtocolError(
            self.device, "TEST?", f"expected 'TEST PASS' or 'TEST FAIL <reason>', got {reply[:80]!r}"
        )

    def prepare(self, pairs: np.ndarray) -> None:
        """Connect-time checks for an acquisition: matrix large enough, self-test passes, sequence loaded."""
        table = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        n_tx, n_rx = self.size()
        need_tx, need_rx = int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1
        if need_tx > n_tx or need_rx > n_rx:
            raise SwitchSetupError(
                self.device, "SIZE?", f"controller has {n_tx} Tx x {n_rx} Rx ports but the array geometry "
                f"needs {need_tx} x {need_rx}; check radar.array.geometry_file and the controller",
            )  # fmt: skip
        self.self_test()
        self.upload_sequence([(int(t), int(r)) for t, r in table])
