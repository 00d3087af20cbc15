"""Driver for the vector network analyzer that generates the SFCW sweep, over SCPI through pyvisa.

The driver takes any VISA resource string (TCPIP SOCKET, HiSLIP, USB); the backend defaults to
pyvisa-py ("@py") so the edge box needs no vendor VISA, and tests pass "<file>.yaml@sim" for pyvisa-sim.

What it guarantees, because a silently wrong sweep is worse than no sweep:

- it talks only to an instrument whose `*IDN?` the dialect knows, and checks the sweep against that
  model's limits before sending a single setting;
- after every configuration command it drains `SYST:ERR?` and raises the instrument's errors verbatim,
  naming the command that caused them, then reads back points/start/stop to catch silent coercion;
- every reply is validated (block header digits and length, terminator, value count, NaN/inf); any
  failure raises a `VnaError` naming the instrument (resource and IDN) and the command, and leaves
  the driver disconnected, because after a broken reply the byte stream is no longer trustworthy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from vrclip.edge.config import RadarConfig, SweepConfig
from vrclip.edge.radar import scpi
from vrclip.edge.radar.backoff import Backoff, retry_with_backoff
from vrclip.edge.radar.dialects import (
    BYTE_ORDERS,
    DATA_FORMATS,
    ByteOrder,
    DataFormat,
    Dialect,
    ModelLimits,
    get_dialect,
)
from vrclip.edge.radar.errors import (
    RadarSetupError,
    VnaConnectionError,
    VnaDataError,
    VnaError,
    VnaIdentityError,
    VnaInstrumentError,
    VnaProtocolError,
    VnaRangeError,
    VnaResourceError,
    VnaTimeoutError,
)

#: Longest reply to a short query (*IDN?, *OPC?, SYST:ERR?, read-backs). Real ones are < 200 bytes.
MAX_SHORT_REPLY = 4096
#: Longest `*IDN?` reply accepted. IEEE 488.2 (10.14) allows 72 characters; some firmware sends more.
MAX_IDN_CHARS = 256
#: An instrument with a full error queue answers SCPI's 32-entry queue, then "0,No error". A
#: misbehaving one could answer errors forever; the bound turns that into a clear error.
MAX_ERROR_DRAIN = 64
#: Bytes of one ASCII value at most ("-1.23456789E-012" plus separator) when bounding ASCII replies.
_ASCII_BYTES_PER_VALUE = 32
#: Longest valid `*OPC?` reply read on the raw path: "+1\r\n".
_MAX_OPC_BYTES = 4
#: SCPI-99 vol. 1, 7.2.1.5: instruments report INF as 9.9E37, NINF as -9.9E37 and NAN as 9.91E37. No
#: S21 value comes near; and a value beyond float32's 3.4E38 would silently become inf in the trace.
_SCPI_NOT_A_NUMBER = 9.9e37
#: Frequency read-back tolerance: instruments round settings to their synthesiser resolution.
_FREQ_TOLERANCE_HZ = 1.0


def _visa_errors() -> tuple[type[BaseException], type[BaseException]]:
    import pyvisa.errors

    return pyvisa.errors.VisaIOError, pyvisa.errors.InvalidSession


class _PeerClosed(ConnectionAbortedError):
    """The instrument ended the TCP connection (end of stream where a reply was awaited)."""


class _HangupAwareSocket(socket.socket):
    """A socket whose `recv` raises `_PeerClosed` at end of stream instead of returning b"".

    pyvisa-py's raw-socket session reads by select() + recv() and takes an empty recv for "no data
    yet". After the instrument closes the connection (a VNA that serves one client at a time, a
    restart), select reports the socket readable forever: the read spins at full CPU until the
    timeout, then reports the instrument as busy or hung. Raising here ends it at once, and the
    driver names it for what it is.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if not data and bufsize > 0:
            raise _PeerClosed("end of stream")
        return data


def _watch_for_hangup(inst: Any) -> None:
    """Swap the pyvisa-py raw-socket session's socket for a `_HangupAwareSocket` on the same
    descriptor. Other backends and resource kinds (pyvisa-sim, HiSLIP, USB) are left as they are:
    their sessions hold no plain socket."""
    sessions = getattr(getattr(inst, "visalib", None), "sessions", None)
    session = sessions.get(inst.session) if isinstance(sessions, dict) else None
    sock = getattr(session, "interface", None)
    if type(sock) is not socket.socket:
        return
    timeout = sock.gettimeout()
    watched = _HangupAwareSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    watched.settimeout(timeout)
    session.interface = watched


class VnaDriver:
    """One VNA, one channel, one S21 trace; single sweeps on demand.

    Not thread-safe: one acquisition thread owns it (the RadarSource). After any `VnaError` the
    driver is disconnected; `connect()` or `reconnect()` brings it back.
    """

    def __init__(
        self,
        resource: str,
        dialect: str | Dialect,
        sweep: SweepConfig,
        *,
        timeout_ms: int = 5000,
        backend: str = "@py",
        data_format: DataFormat = "real32",
        byte_order: ByteOrder | None = None,
        reconnect_max_backoff_s: float = 30.0,
        trigger_output: bool = False,
    ) -> None:
        """trigger_output turns on the sweep-end pulse at every (re)connect (hardware switch stepping)."""
        self.resource = resource
        self.dialect = dialect if isinstance(dialect, Dialect) else get_dialect(dialect)
        self.sweep = sweep
        self.timeout_ms = int(timeout_ms)
        self.backend = backend
        if data_format not in DATA_FORMATS:
            raise VnaResourceError(
                f"VNA {resource}", None, f"data format {data_format!r} unknown; use one of {DATA_FORMATS}"
            )
        self.data_format: DataFormat = data_format
        order = byte_order or self.dialect.default_byte_order
        if order not in BYTE_ORDERS:
            raise VnaResourceError(
                f"VNA {resource}", None, f"byte order {order!r} unknown; use one of {BYTE_ORDERS}"
            )
        self.byte_order: ByteOrder = order
        self.reconnect_max_backoff_s = reconnect_max_backoff_s
        self.trigger_output = trigger_output
        #: The instrument's `*IDN?` reply once connected ("" before).
        self.idn = ""
        #: Limits of the connected model (None before connecting).
        self.limits: ModelLimits | None = None
        self._rm: Any = None
        self._inst: Any = None
        self._sweep_pending = False
        self._data_pending = False
        self._timeout_now_ms = self.timeout_ms

    @classmethod
    def from_config(
        cls,
        radar: RadarConfig,
        *,
        backend: str = "@py",
        data_format: DataFormat = "real32",
        byte_order: ByteOrder | None = None,
    ) -> VnaDriver:
        vna = radar.vna
        return cls(
            vna.resource,
            vna.dialect,
            radar.sweep,
            timeout_ms=vna.timeout_ms,
            backend=backend,
            data_format=data_format,
            byte_order=byte_order,
            reconnect_max_backoff_s=vna.reconnect_max_backoff_s,
            trigger_output=radar.switch.step == "trigger",
        )

    # --- identity and state -------------------------------------------------------------------

    @property
    def device(self) -> str:
        """How errors name this instrument: resource, and the IDN once known."""
        return f"VNA {self.resource} ({self.idn})" if self.idn else f"VNA {self.resource}"

    @property
    def connected(self) -> bool:
        return self._inst is not None

    @property
    def estimated_sweep_s(self) -> float:
        """Lower bound of one sweep's duration: points / IF bandwidth (the instrument adds settling)."""
        return self.sweep.min_sweep_s

    # --- range checks -------------------------------------------------------------------------

    def check_range(self, limits: ModelLimits | None = None) -> None:
        """Raise VnaRangeError if the sweep is outside `limits` (default: the whole dialect family)."""
        lo = limits.min_hz if limits else self.dialect.min_hz
        hi = limits.max_hz if limits else self.dialect.max_hz
        max_points = limits.max_points if limits else self.dialect.max_points
        what = f"model {limits.model_pattern}" if limits else f"any {self.dialect.name} instrument"
        sweep = self.sweep
        commands = self.dialect.setup_commands(sweep, self.data_format, self.byte_order)
        for key, value, header in (
            ("start_hz", sweep.start_hz, "SENS1:FREQ:STAR "),
            ("stop_hz", sweep.stop_hz, "SENS1:FREQ:STOP "),
        ):
            if not lo <= value <= hi:
                raise VnaRangeError(
                    self.device,
                    next((c for c in commands if c.startswith(header)), header.strip()),
                    f"radar.sweep.{key} = {value:g} Hz is outside the {lo:g}..{hi:g} Hz that {what} sweeps; "
                    f"change radar.sweep.{key} (nothing was sent to the instrument)",
                )
        if sweep.points > max_points:
            raise VnaRangeError(
                self.device,
                f"SENS1:SWE:POIN {sweep.points}",
                f"radar.sweep.points = {sweep.points} exceeds the {max_points} points {what} supports; "
                "lower radar.sweep.points (nothing was sent to the instrument)",
            )

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open, identify, configure and verify. Raises a VnaError subclass on any problem."""
        self.close()
        self.idn = ""
        self.limits = None
        self.check_range()
        self._open()
        self._timeout_now_ms = self.timeout_ms
        try:
            self._identify()
            self._configure()
        except BaseException:
            self.close()
            raise

    def reconnect(
        self,
        *,
        stop: threading.Event | None = None,
        max_attempts: int | None = None,
        on_failure: Callable[[BaseException, float], None] | None = None,
    ) -> int:
        """Connect with exponential backoff (capped at reconnect_max_backoff_s); return the attempts used.

        Setup errors (wrong instrument, sweep out of range) propagate at once: retrying cannot fix them.
        """
        backoff = Backoff(min(0.1, self.reconnect_max_backoff_s), self.reconnect_max_backoff_s)
        return retry_with_backoff(
            self.connect,
            backoff,
            retry_on=(VnaError,),
            give_up_on=(RadarSetupError,),
            max_attempts=max_attempts,
            stop=stop,
            on_failure=on_failure,
        )

    def close(self) -> None:
        """Drop the session; harmless when not connected."""
        inst, self._inst = self._inst, None
        self._sweep_pending = False
        self._data_pending = False
        if inst is not None:
            # Closing a broken session must not mask the error that broke it.
            with contextlib.suppress(Exception):
                inst.close()

    def __enter__(self) -> VnaDriver:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        import pyvisa

        try:
            pyvisa.rname.parse_resource_name(self.resource)
        except pyvisa.rname.InvalidResourceName as exc:
            raise VnaResourceError(
                self.device, None, f"radar.vna.resource is not a valid VISA resource string: {exc}"
            ) from None
        try:
            if self._rm is None:
                self._rm = pyvisa.ResourceManager(self.backend)
        except (OSError, ValueError, LookupError) as exc:
            raise VnaResourceError(
                self.device, None, f"cannot load VISA backend {self.backend!r}: {exc}"
            ) from None
        visa_io, _ = _visa_errors()
        try:
            self._inst = self._rm.open_resource(
                self.resource,
                read_termination="\n",
                write_termination="\n",
                timeout=self.timeout_ms,
                open_timeout=self.timeout_ms,
            )
        except pyvisa.rname.InvalidResourceName as exc:
            raise VnaResourceError(
                self.device, None, f"radar.vna.resource is not a valid VISA resource string: {exc}"
            ) from None
        except visa_io as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_resource_not_found:
                raise VnaConnectionError(
                    self.device, None, f"no instrument at this address ({exc})"
                ) from None
            raise VnaConnectionError(self.device, None, f"cannot open: {exc}") from None
        except Exception as exc:  # pyvisa-py raises a bare Exception when a socket cannot be created
            raise VnaConnectionError(self.device, None, f"cannot open: {exc}") from None
        _watch_for_hangup(self._inst)

    def _identify(self) -> None:
        idn = self._query("*IDN?")
        fields = [f.strip() for f in idn.split(",")]
        if len(idn) > MAX_IDN_CHARS or not idn.isprintable():
            # The IDN names the device in every later error, log line and /status: control characters
            # (terminal escapes) or kilobytes of text there are a broken reply, not an identity.
            self.close()
            raise VnaProtocolError(
                self.device, "*IDN?",
                f"reply {idn[:80]!r} ({len(idn)} characters) is not a printable identity of at most "
                f"{MAX_IDN_CHARS} characters (a link glitch?); if it persists, check radar.vna.resource",
            )  # fmt: skip
        if len(fields) < 2 or not fields[0] or not fields[1]:
            # Garbled or empty: a glitch of the link or an instrument still booting, not proof of a wrong
            # instrument, so a protocol error (retried) rather than an identity error (permanent).
            self.close()
            raise VnaProtocolError(
                self.device, "*IDN?",
                f"reply {idn[:80]!r} is not '<manufacturer>,<model>,<serial>,<firmware>' (a link glitch or "
                "a VNA still booting?); if it persists, check that radar.vna.resource is the VNA's address",
            )  # fmt: skip
        limits = self.dialect.model_limits(fields[0], fields[1])
        self.idn = idn
        if limits is None:
            raise VnaIdentityError(
                self.device,
                "*IDN?",
                f"this is not an instrument of the configured dialect {self.dialect.name!r} "
                f"({self.dialect.description}); expected {self.dialect.expected_identity()}. "
                "Check radar.vna.resource and radar.vna.dialect",
            )
        self.limits = limits
        self.check_range(limits)

    def _configure(self) -> None:
        for command in ("*CLS", *self.dialect.setup_commands(self.sweep, self.data_format, self.byte_order)):
            self._execute_checked(command)
        if self.trigger_output:
            if not self.dialect.trigger_output_on:
                raise VnaResourceError(
                    self.device, None, f"the {self.dialect.name} dialect has no trigger-output commands; "
                    "set radar.switch.step = 'command'",
                )  # fmt: skip
            for command in self.dialect.trigger_output_on:
                self._execute_checked(command)
        self._verify_readback()
        # Replies to a sweep trigger come after the sweep: allow for it on top of the link timeout.
        self._set_timeout(self.timeout_ms + int(4000 * self.estimated_sweep_s))

    def _verify_readback(self) -> None:
        d, sweep = self.dialect, self.sweep
        points = self._query_number(d.points_query)
        if not points.is_integer():
            self.close()
            raise VnaProtocolError(
                self.device, d.points_query, f"expected a whole number of points, got {points!r}"
            )
        if int(points) != sweep.points:
            raise VnaInstrumentError(
                self.device, d.points_query, [f"instrument set {points:g} points instead of {sweep.points}"]
            )
        for query, wanted in ((d.start_query, sweep.start_hz), (d.stop_query, sweep.stop_hz)):
            got = self._query_number(query)
            if abs(got - wanted) > _FREQ_TOLERANCE_HZ:
                raise VnaInstrumentError(
                    self.device, query, [f"instrument set {got:.12g} Hz instead of {wanted:.12g} Hz"]
                )

    def _execute_checked(self, command: str) -> None:
        """Send `command`, then read the error queue; raise the instrument's errors verbatim.

        Command and `SYST:ERR?` go out in one write as two program messages. Two separate small
        writes would meet Nagle's algorithm (pyvisa-py cannot set TCP_NODELAY on sockets) and the
        instrument's delayed ACK: ~40 ms lost per command. As separate program messages, a command
        error in the first cannot swallow the error query, as it could inside one compound message.
        """
        query = self.dialect.error_query
        self._io(command, lambda inst: inst.write_raw(f"{command}\n{query}\n".encode("ascii")))
        errors = self._collect_errors(self._read_line(query, MAX_SHORT_REPLY), after=command)
        if errors:
            raise VnaInstrumentError(self.device, command, errors)

    def drain_errors(self) -> list[str]:
        """Read `SYST:ERR?` until "No error"; return the error entries verbatim (oldest first)."""
        return self._collect_errors(self._query(self.dialect.error_query), after=None)

    def _collect_errors(self, first_reply: str, after: str | None) -> list[str]:
        query = self.dialect.error_query
        errors: list[str] = []
        reply = first_reply
        for _ in range(MAX_ERROR_DRAIN):
            try:
                code, _text = scpi.parse_error(reply)
            except ValueError as exc:
                self.close()
                raise VnaProtocolError(self.device, query, str(exc)) from None
            if code == 0:
                return errors
            errors.append(reply)
            reply = self._query(query)
        self.close()
        raise VnaProtocolError(
            self.device, query,
            f"error queue did not empty after {MAX_ERROR_DRAIN} reads (after {after!r}): {errors[-3:]}",
        )  # fmt: skip

    # --- acquisition --------------------------------------------------------------------------

    def trigger(self) -> None:
        """Start one sweep; the instrument answers when it has finished (see `wait_for_sweep`)."""
        self._write(self.dialect.trigger)
        self._sweep_pending = True

    def wait_for_sweep(self) -> None:
        """Block until the triggered sweep has completed (`*OPC?` answered 1)."""
        if not self._sweep_pending:
            raise RuntimeError("wait_for_sweep() without a trigger()")
        if self._data_pending:
            raise RuntimeError("wait_for_sweep() while a data reply is unread; call receive_s21() first")
        self._sweep_pending = False
        self._read_opc_reply()

    def _read_opc_reply(self) -> None:
        self._check_opc(self._read_line(self.dialect.trigger, MAX_SHORT_REPLY))

    def _check_opc(self, reply: str) -> None:
        """Refuse any sweep-complete reply but "1" / "+1" (terminator already removed), on every path."""
        if reply not in scpi.OPC_COMPLETE:
            self.close()
            raise VnaProtocolError(
                self.device, self.dialect.trigger, f"expected *OPC? reply '1', got {reply[:40]!r}"
            )

    def sweep_once(self) -> None:
        self.trigger()
        self.wait_for_sweep()

    @property
    def can_pipeline(self) -> bool:
        """Whether a query may be answered while the next message is already sent.

        True for raw sockets (SCPI-RAW): the instrument streams each response as soon as it is
        formed. VXI-11, HiSLIP and USBTMC follow the IEEE 488.2 exchange rules instead, where a new
        message before the previous response is read is "Query INTERRUPTED" (-410) and loses it.
        """
        return self.resource.upper().rstrip(":").endswith("::SOCKET")

    def read_s21(self) -> np.ndarray:
        """The last sweep's S21 as (points,) complex64, fully validated."""
        self.request_s21()
        return self.receive_s21()

    def request_s21(self) -> None:
        """Ask for the last sweep's data; collect it with `receive_s21()`.

        Between the two, a pipelining caller (see `can_pipeline`) may `trigger()` the next sweep: the
        instrument answers the data query first, so the transfer overlaps the next sweep.
        """
        if self._sweep_pending:
            raise RuntimeError(
                "request_s21() while a sweep's *OPC? reply is unread; call wait_for_sweep() first"
            )
        self._write(self.dialect.data_query)
        self._data_pending = True

    def acquire_chained(self, sweeps: int) -> np.ndarray:
        """`sweeps` sweeps back to back, the next trigger always waiting in the instrument's input.

        For hardware switch stepping (the switch moves on the sweep-end pulse, so nothing has to
        happen between sweeps): after the first trigger, the host keeps one "data query + trigger"
        message queued behind the running sweep's `*OPC?`. The instrument executes its input in
        order, so when a sweep ends it answers "1", answers the data query with that sweep's trace
        and starts the next sweep at once: the gap between sweeps is the instrument's own command
        processing, not a network round trip. The host reads each reply during the following sweep.
        The last sweep gets its data query alone (with `sweeps == 1`, right behind the first trigger).
        Raw sockets only (see `can_pipeline`). Returns (sweeps, points) complex64.
        """
        if sweeps < 1:
            raise ValueError(f"acquire_chained() needs sweeps >= 1, got {sweeps}")
        if not self.can_pipeline:
            raise RuntimeError("acquire_chained() needs a raw-socket (::SOCKET) resource")
        if self._sweep_pending or self._data_pending:
            raise RuntimeError("acquire_chained() while other replies are unread")
        d = self.dialect
        # One write per message: pyvisa-py cannot turn Nagle's algorithm off, and two small writes in
        # a row would hold the second back until the first's ACK.
        queued = f"{d.data_query}\n{d.trigger}\n".encode("ascii")
        out = np.empty((sweeps, self.sweep.points), dtype=np.complex64)
        # Binary traces have a known size, so each reply is one exact-length read with the terminator
        # check off for the whole frame: 2 reads a sweep instead of 5 pyvisa calls, which matters
        # when the host is busy (the Python work per call, not the wire, is the cost).
        raw = self.data_format != "ascii"
        if raw:
            self._set_termchar(False)
        if sweeps > 1:
            self._write(d.trigger)
            self._io(d.trigger, lambda inst: inst.write_raw(queued))
        else:
            # A single sweep: its data query is the only thing to queue behind the trigger (one write).
            self._io(d.trigger, lambda inst: inst.write_raw(f"{d.trigger}\n{d.data_query}\n".encode("ascii")))
        for k in range(sweeps):
            # Sweep k done; its data and sweep k + 1 are already on their way.
            self._read_opc_exact() if raw else self._read_opc_reply()
            if k + 2 < sweeps:
                self._io(d.trigger, lambda inst: inst.write_raw(queued))
            elif k + 1 < sweeps:
                self._write(d.data_query)  # the last sweep's data, and no further trigger
            if raw:
                out[k] = self._receive_block_exact()
            else:
                self._data_pending = True
                out[k] = self.receive_s21()
        if raw:
            self._set_termchar(True)
        return out

    def _set_termchar(self, enabled: bool) -> None:
        import pyvisa.constants as vc

        state = vc.VI_TRUE if enabled else vc.VI_FALSE
        self._io(
            "(termchar)", lambda inst: inst.set_visa_attribute(vc.ResourceAttribute.termchar_enabled, state)
        )

    def _read_opc_exact(self) -> None:
        """The sweep-complete reply ("1" or "+1", then "\n" or "\r\n") with the terminator check off.

        Two bytes first (all of the common "1\n"), then byte by byte up to the longest valid reply,
        "+1\r\n": a reply that has not ended by then is refused without reading into the trace behind it.
        """
        command = self.dialect.trigger
        reply = self._io(command, lambda inst: inst.read_bytes(2))
        while not reply.endswith(b"\n") and len(reply) < _MAX_OPC_BYTES:
            reply += self._io(command, lambda inst: inst.read_bytes(1))
        try:
            text = scpi.strip_terminator(reply).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            text = reply.decode("ascii", "backslashreplace")
        self._check_opc(text)

    def _receive_block_exact(self) -> np.ndarray:
        """One binary trace (header, payload, terminator) in a single read of its known length."""
        command = self.dialect.data_query
        expected, digits = self._block_size()
        size = 2 + digits + expected + 1
        try:
            raw = self._io(command, lambda inst: inst.read_bytes(size))
        except VnaTimeoutError:
            raise VnaProtocolError(
                self.device, command, f"truncated trace: fewer than the {size} bytes of "
                f"'#{digits}{expected}' + data + terminator arrived within {self._timeout_now_ms} ms",
            ) from None  # fmt: skip
        length = self._check_block_header(command, bytes(raw[: 2 + digits]))
        values = self._decode_block_body(command, bytes(raw[2 + digits :]), length)
        return self._checked_trace(command, values)

    def receive_s21(self) -> np.ndarray:
        """Read and validate the reply to `request_s21()`: (points,) complex64."""
        if not self._data_pending:
            raise RuntimeError("receive_s21() without request_s21()")
        self._data_pending = False
        command = self.dialect.data_query
        values = self._read_ascii(command) if self.data_format == "ascii" else self._read_block(command)
        return self._checked_trace(command, values)

    def _checked_trace(self, command: str, values: np.ndarray) -> np.ndarray:
        """Decoded values -> (points,) complex64, refusing a wrong count or non-finite data."""
        expected = 2 * self.sweep.points
        if values.size != expected:
            self.close()
            raise VnaDataError(
                self.device, command,
                f"got {values.size} values, expected {expected} (re/im of {self.sweep.points} points)",
            )  # fmt: skip
        usable = np.abs(values) < _SCPI_NOT_A_NUMBER  # False for NaN and infinities too
        if not usable.all():
            bad = int(np.flatnonzero(~usable)[0])
            self.close()
            raise VnaDataError(
                self.device, command,
                f"data holds {values[bad]} at value {bad} (point {bad // 2}), not a reading (NaN, infinity "
                "or SCPI's 9.9E37 marker for them); the instrument is overloaded or uncalibrated",
            )  # fmt: skip
        return values.astype(np.float32).view(np.complex64)

    def measure(self) -> np.ndarray:
        """Single sweep + read: (points,) complex64."""
        self.sweep_once()
        return self.read_s21()

    # --- reply readers ------------------------------------------------------------------------

    def _read_block(self, command: str) -> np.ndarray:
        """Read `#<n><length><payload>\n`, checking every part against what the sweep implies.

        Two reads: the header (with the terminator check on, so a short text reply such as an error
        string returns at once instead of waiting for the timeout; '#' and digits are never '\n'),
        then payload + terminator with the terminator check off, because binary floats contain 0x0A
        bytes and every one would otherwise end a read early (3-10 extra round trips per block).
        """
        _, digits = self._block_size()
        head = self._io(command, lambda inst: inst.read_bytes(2 + digits, break_on_termchar=True))
        length = self._check_block_header(command, head)
        body = self._read_binary(command, length + 1)
        return self._decode_block_body(command, body, length)

    def _block_size(self) -> tuple[int, int]:
        """(payload bytes, digits of the length field) of one trace in the binary format set."""
        itemsize = 4 if self.data_format == "real32" else 8
        expected = 2 * self.sweep.points * itemsize
        return expected, len(str(expected))

    def _check_block_header(self, command: str, head: bytes) -> int:
        """Validate `#<n><length>` against the sweep; return the payload length."""
        expected, digits = self._block_size()
        itemsize = expected // (2 * self.sweep.points)
        n_digits = self._guarded(command, lambda: scpi.parse_block_prefix(head[:2]))
        field = head[2 : 2 + n_digits]
        if not field.isdigit():
            self.close()
            raise VnaProtocolError(
                self.device, command, f"block header {head!r}: the length field is not decimal digits"
            )
        if n_digits != digits or len(head) != 2 + digits:
            self.close()
            raise VnaDataError(
                self.device, command,
                f"block header {head!r} does not announce the expected {expected} bytes "
                f"(#{digits}{expected}: {2 * self.sweep.points} values of {itemsize} bytes); "
                "is FORM:DATA what the driver set?",
            )  # fmt: skip
        length = self._guarded(command, lambda: scpi.parse_block_length(head[2:], n_digits))
        if length != expected:
            self.close()
            raise VnaDataError(
                self.device, command,
                f"block holds {length} bytes, expected {expected} ({2 * self.sweep.points} values of "
                f"{itemsize} bytes); is FORM:DATA what the driver set?",
            )  # fmt: skip
        return length

    def _decode_block_body(self, command: str, body: bytes, length: int) -> np.ndarray:
        """payload + first terminator byte -> values, checking the terminator ("\n" or "\r\n")."""
        if len(body) != length + 1:
            self.close()
            raise VnaProtocolError(
                self.device, command, f"truncated block: {len(body) - 1} of {length} data bytes"
            )
        end = body[-1:]
        if end == b"\r":  # CR NL: the NL is still to come
            end += self._read_block_end(command, length)
        if end not in scpi.TERMINATORS:
            self.close()
            raise VnaProtocolError(
                self.device,
                command,
                f"block does not end after its header's {length} bytes (found {end!r}, not the "
                "terminator): it is longer than announced, or truncated and followed by the next reply",
            )
        return self._guarded(command, lambda: scpi.decode_real(body[:-1], self.data_format, self.byte_order))

    def _read_block_end(self, command: str, length: int) -> bytes:
        """The byte after a block's trailing CR, which must be NL; a silence there is a malformed block."""
        try:
            return bytes(self._io(command, lambda inst: inst.read_bytes(1)))
        except VnaTimeoutError:
            raise VnaProtocolError(
                self.device, command, f"block does not end after its header's {length} bytes: "
                f"'\\r' came, but no '\\n' within {self._timeout_now_ms} ms",
            ) from None  # fmt: skip

    def _read_ascii(self, command: str) -> np.ndarray:
        limit = 2 * self.sweep.points * _ASCII_BYTES_PER_VALUE + 64
        text = self._read_line(command, limit)
        return self._guarded(command, lambda: scpi.parse_ascii(text))

    def _guarded(self, command: str, fn: Callable[[], Any]) -> Any:
        """Run a parser; turn its ValueError into a VnaProtocolError naming instrument and command."""
        try:
            return fn()
        except ValueError as exc:
            self.close()
            raise VnaProtocolError(self.device, command, str(exc)) from None

    # --- transport ----------------------------------------------------------------------------

    def _require(self, command: str) -> Any:
        if self._inst is None:
            raise VnaConnectionError(self.device, command, "not connected (call connect() first)")
        return self._inst

    def _io(self, command: str, fn: Callable[[Any], Any]) -> Any:
        """Run one pyvisa call, translating its failures; any failure disconnects."""
        inst = self._require(command)
        visa_io, invalid = _visa_errors()
        try:
            return fn(inst)
        except visa_io as exc:
            self.close()
            import pyvisa.constants

            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                raise VnaTimeoutError(
                    self.device,
                    command,
                    f"no reply within {self._timeout_now_ms} ms; is the instrument busy or hung?",
                ) from None
            raise VnaConnectionError(self.device, command, f"VISA I/O error: {exc}") from None
        except ConnectionError as exc:  # end of stream (see _HangupAwareSocket), reset, broken pipe
            self.close()
            how = "" if isinstance(exc, _PeerClosed) else f" ({exc})"
            raise VnaConnectionError(
                self.device, command,
                f"the instrument closed the connection{how}; does it serve one client at a time "
                "(another program connected to it), or did it restart?",
            ) from None  # fmt: skip
        except (invalid, OSError) as exc:
            self.close()
            raise VnaConnectionError(self.device, command, f"connection lost: {exc}") from None

    def _write(self, command: str) -> None:
        self._io(command, lambda inst: inst.write(command))

    def _read_binary(self, command: str, count: int) -> bytes:
        """Block payload + terminator: exactly `count` bytes, whatever they contain."""
        import pyvisa.constants as vc

        def read(inst: Any) -> bytes:
            inst.set_visa_attribute(vc.ResourceAttribute.termchar_enabled, vc.VI_FALSE)
            try:
                return inst.read_bytes(count)
            finally:
                inst.set_visa_attribute(vc.ResourceAttribute.termchar_enabled, vc.VI_TRUE)

        try:
            data = self._io(command, read)
        except VnaTimeoutError:
            raise VnaProtocolError(
                self.device, command,
                f"truncated block: the header announced {count - 1} data bytes but they did not all arrive "
                f"within {self._timeout_now_ms} ms",
            ) from None  # fmt: skip
        if len(data) != count:
            self.close()
            raise VnaProtocolError(
                self.device, command, f"truncated block: {len(data) - 1} of {count - 1} data bytes"
            )
        return data

    def _read_line(self, command: str, limit: int) -> str:
        """One text reply without its terminator ("\n" or "\r\n"), at most `limit` bytes."""
        raw = self._io(command, lambda inst: inst.read_bytes(limit, break_on_termchar=True))
        if not raw.endswith(b"\n"):
            self.close()
            if len(raw) >= limit:
                raise VnaProtocolError(
                    self.device, command, f"reply longer than {limit} bytes without a terminator"
                )
            raise VnaProtocolError(
                self.device, command, f"reply {raw[:40]!r} ended without the '\\n' terminator"
            )
        try:
            return scpi.strip_terminator(raw).decode("ascii")
        except UnicodeDecodeError:
            self.close()
            raise VnaProtocolError(self.device, command, f"reply is not ASCII text: {raw[:40]!r}") from None

    def _query(self, command: str) -> str:
        self._write(command)
        return self._read_line(command, MAX_SHORT_REPLY)

    def _query_number(self, command: str) -> float:
        """Query a finite number; any other reply (text, NaN, infinity) is a VnaProtocolError naming it."""
        reply = self._query(command)
        try:
            return scpi.parse_number(reply)
        except ValueError as exc:
            self.close()
            raise VnaProtocolError(self.device, command, f"expected a finite number: {exc}") from None

    def _set_timeout(self, timeout_ms: int) -> None:
        def apply(inst: Any) -> None:
            inst.timeout = timeout_ms

        self._io("(set timeout)", apply)
        self._timeout_now_ms = timeout_ms
