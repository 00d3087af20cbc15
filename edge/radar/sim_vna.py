"""A simulated VNA: a SCPI instrument on a TCP socket (SCPI-RAW, like port 5025 of a real one).

The real driver talks to it through pyvisa-py exactly as to an instrument, so everything between the
driver and the wire is exercised: both dialects' command sets (strict SCPI header matching), the error
queue (-113 for unknown headers, -222 for values out of range, ...), REAL,32/REAL,64/ASCII data with
either byte order, and sweep timing: a trigger's `*OPC?` answers only after the sweep time
(points / IF bandwidth + per-point settling, or a fixed time), and until then the trace holds the
previous sweep, as on an instrument, so a driver that forgets to wait reads stale data.

S21 comes from the shared `SimulatedFrontEnd`: the path the simulated switch selected, in the synthetic
scene, at the scene time when the sweep started. The simulator models one measurement channel and
complex S21 data only; anything else is rejected with a SCPI error rather than answered wrongly.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from vrclip.edge.config import SweepConfig
from vrclip.edge.radar import scpi
from vrclip.edge.radar.frontend import SimulatedFrontEnd
from vrclip.edge.radar.line_server import LineServer
from vrclip.edge.radar.linereader import BoundedLineReader, LineTooLong
from vrclip.edge.radar.scpi_parser import Call, CommandTable, ScpiError, unquote

#: Longest program message accepted; longer ones give -223 "Too much data" and are discarded.
MAX_MESSAGE_BYTES = 64 * 1024
#: SCPI requires an error queue of at least 2; instruments keep 10-100. On overflow the newest entry
#: becomes -350 "Queue overflow".
ERROR_QUEUE_LENGTH = 32
#: Concurrent client connections; more are refused (closed at once), as an instrument's LAN stack does.
MAX_CLIENTS = 4
#: Busy-waited end of every sweep wait: covers the event loop's timer wake-up latency.
DEFAULT_SPIN_S = 300e-6
#: Faults the simulator can act out (`SimulatedVna.fault`), to rehearse how the edge box degrades:
#: silent (never answers), nan (NaN in the data), truncated (block cut short, then silence),
#: bad-header (non-digit block length), long-block (bytes after the announced block length).
FAULTS = ("silent", "nan", "truncated", "bad-header", "long-block")
#: Default extra time per point for synthesiser settling, on top of 1 / IF bandwidth.
DEFAULT_SETTLE_PER_POINT_S = 2e-6


@dataclass(frozen=True)
class SimVnaModel:
    """Identity and limits of the simulated instrument."""

    idn: str
    min_hz: float
    max_hz: float
    max_points: int
    min_power_dbm: float
    max_power_dbm: float
    min_ifbw_hz: float
    max_ifbw_hz: float
    default_trace: str
    default_byte_order: str


SIM_MODELS: dict[str, SimVnaModel] = {
    "keysight": SimVnaModel(
        "Keysight Technologies,E5080B,MY59100001,A.15.20.06", 9e3, 9e9, 100_003, -60.0, 10.0, 1.0, 15e6,
        "CH1_S11_1", "norm",
    ),
    "rs": SimVnaModel(
        "Rohde-Schwarz,ZNB8-4Port,1311601062100001,3.45", 9e3, 8.5e9, 100_001, -60.0, 10.0, 1.0, 10e6,
        "Trc1", "swap",
    ),
}  # fmt: skip

_S_PARAMS = ("S11", "S12", "S21", "S22")


@dataclass
class _Settings:
    start_hz: float
    stop_hz: float
    points: int
    ifbw_hz: float
    power_dbm: float


class SimulatedVna:
    """The instrument: settings, traces, sweep state and error queue, independent of the transport."""

    def __init__(
        self,
        front_end: SimulatedFrontEnd,
        dialect: str,
        *,
        model: SimVnaModel | None = None,
        sweep: SweepConfig | None = None,
        sweep_time_s: float | None = None,
        settle_per_point_s: float = DEFAULT_SETTLE_PER_POINT_S,
        spin_s: float = DEFAULT_SPIN_S,
        now: Callable[[], float] | None = None,
    ) -> None:
        if dialect not in SIM_MODELS:
            raise ValueError(f"unknown dialect {dialect!r}; the simulator speaks {', '.join(SIM_MODELS)}")
        self.front_end = front_end
        self.dialect = dialect
        self.model = model or SIM_MODELS[dialect]
        self._power_on_sweep = sweep
        #: Fixed duration of every sweep (seconds); None derives it from points and IF bandwidth.
        self.sweep_time_s = sweep_time_s
        self.settle_per_point_s = settle_per_point_s
        #: Final part of each sweep wait that is busy-waited for timing accuracy (see _wait_sweep).
        self.spin_s = spin_s
        # time.monotonic is the clock asyncio's loop runs on, so sweep deadlines and sleeps agree.
        self._now = now or time.monotonic
        self.errors: deque[str] = deque()
        #: Number of sweeps completed (for tests and the bench).
        self.sweeps = 0
        #: Fault to act out (one of FAULTS) or None; may be changed while serving.
        self.fault: str | None = None
        self._table = self._build_table()
        self.reset()

    # --- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """*RST: preset state (continuous sweep, one default S11 trace, REAL data off, ASCII format)."""
        m, sweep = self.model, self._power_on_sweep
        if sweep is not None:
            self.settings = _Settings(
                sweep.start_hz, sweep.stop_hz, sweep.points, sweep.if_bandwidth_hz, sweep.power_dbm
            )
        else:
            self.settings = _Settings(max(m.min_hz, 10e6), m.max_hz, 201, 100e3, 0.0)
        self.continuous = True
        self.data_format = "ascii"
        self.byte_order = m.default_byte_order
        self.traces: dict[str, str] = {m.default_trace: "S11"}
        self.selected_trace: str | None = m.default_trace
        self._esr = 0
        #: Rear-panel trigger output 1: off after a preset; pulses once per sweep (or point), before
        #: or after it, when on. The front end carries the pulse to whatever is wired to it.
        self.trigger_out = {"ENAB": False, "INT": "SWE", "POS": "AFT", "POL": "POS"}
        self._pending: tuple[float, np.ndarray] | None = None
        self._trace_data: np.ndarray | None = None

    def sweep_duration_s(self) -> float:
        if self.sweep_time_s is not None:
            return self.sweep_time_s
        s = self.settings
        return s.points / s.ifbw_hz + s.points * self.settle_per_point_s

    def _sweep_config(self) -> SweepConfig:
        s = self.settings
        # model_construct: the instrument's range, not the edge config's, is what limits it here.
        return SweepConfig.model_construct(
            start_hz=s.start_hz,
            stop_hz=s.stop_hz,
            points=s.points,
            if_bandwidth_hz=s.ifbw_hz,
            power_dbm=s.power_dbm,
        )

    def push_error(self, code: int, detail: str | None = None) -> None:
        if code <= -100 and code > -200:
            self._esr |= 32  # command error
        elif code <= -200 and code > -300:
            self._esr |= 16  # execution error
        if len(self.errors) >= ERROR_QUEUE_LENGTH:
            self.errors[-1] = scpi.format_error(-350)
            return
        self.errors.append(scpi.format_error(code, detail))

    def _pulses(self, position: str) -> None:
        """Trigger-output pulses at the sweep's start ("BEF") or end ("AFT"), as configured."""
        out = self.trigger_out
        if not out["ENAB"] or out["POS"] != position:
            return
        for _ in range(self.settings.points if out["INT"] == "POIN" else 1):
            self.front_end.trigger_pulse()

    def _start_sweep(self) -> None:
        self._commit()  # a finished sweep nobody asked about still ends (and pulses) first
        self._pulses("BEF")
        done_at = self._now() + self.sweep_duration_s()
        data = self.front_end.measure(self._sweep_config(), self.front_end.scene_time())
        self._pending = (done_at, data)

    def _commit(self) -> None:
        if self._pending is not None and self._now() >= self._pending[0]:
            self._trace_data = self._pending[1]
            self._pending = None
            self.sweeps += 1
            self._pulses("AFT")

    async def _wait_sweep(self) -> None:
        if self._pending is not None:
            deadline = self._pending[0]
            coarse = deadline - self._now() - self.spin_s
            if coarse > 0:
                await asyncio.sleep(coarse)
            # The last stretch is a busy-wait: timer slack and wake-up latency (~0.1-0.2 ms on a loaded
            # box) would otherwise lengthen every sweep and be mistaken for driver overhead.
            while self._now() < deadline:
                pass
            self._commit()

    # --- execution ----------------------------------------------------------------------------

    async def execute(self, message: str) -> bytes | None:
        """Run one program message; return its response message (without terminator) or None."""
        units, parse_error = self._table.parse_message(message)
        responses: list[bytes] = []
        for handler, call in units:
            try:
                result = handler(call)
                if inspect.isawaitable(result):
                    result = await result
            except ScpiError as exc:
                self.push_error(exc.code, exc.detail)
                if exc.code > -200:  # a command (syntax) error ends the message; execution errors do not
                    break
                continue
            if result is not None:
                responses.append(result if isinstance(result, bytes) else str(result).encode("ascii"))
        if parse_error is not None:
            self.push_error(parse_error.code, parse_error.detail)
        return b";".join(responses) if responses else None

    def _build_table(self) -> CommandTable:
        t = CommandTable()
        t.add("*IDN", lambda c: self.model.idn, query=True)
        t.add("*OPC", self._opc_query, query=True)
        t.add("*OPC", lambda c: None, query=False)
        t.add("*WAI", lambda c: self._wait_sweep(), query=False)
        t.add("*CLS", self._cls, query=False)
        t.add("*RST", lambda c: self.reset(), query=False)
        t.add("*ESR", self._esr_query, query=True)
        t.add("SYSTem:ERRor[:NEXT]", self._next_error, query=True)
        t.add("SYSTem:ERRor:COUNt", lambda c: str(len(self.errors)), query=True)
        t.add("SENSe#:FREQuency:STARt", self._set_start, query=False)
        t.add(
            "SENSe#:FREQuency:STARt", lambda c: self._get(c, scpi_float(self.settings.start_hz)), query=True
        )
        t.add("SENSe#:FREQuency:STOP", self._set_stop, query=False)
        t.add("SENSe#:FREQuency:STOP", lambda c: self._get(c, scpi_float(self.settings.stop_hz)), query=True)
        t.add("SENSe#:SWEep:POINts", self._set_points, query=False)
        t.add("SENSe#:SWEep:POINts", lambda c: self._get(c, str(self.settings.points)), query=True)
        t.add("SOURce#:POWer[:LEVel][:IMMediate][:AMPLitude]", self._set_power, query=False)
        t.add(
            "SOURce#:POWer[:LEVel][:IMMediate][:AMPLitude]",
            lambda c: self._get(c, scpi_float(self.settings.power_dbm)),
            query=True,
        )
        t.add("FORMat[:DATA]", self._set_format, query=False)
        t.add("FORMat[:DATA]", self._format_query, query=True)
        t.add("FORMat:BORDer", self._set_border, query=False)
        t.add("FORMat:BORDer", lambda c: "NORM" if self.byte_order == "norm" else "SWAP", query=True)
        t.add("CALCulate#:PARameter:DELete:ALL", self._delete_all, query=False)
        t.add("CALCulate#:PARameter:SELect", self._select_trace, query=False)
        t.add("CALCulate#:DATA", self._data_query, query=True)
        aux = "TRIGger:CHANnel#:AUXiliary#"
        t.add(f"{aux}[:ENABle]", self._set_trigger_enable, query=False)
        t.add(f"{aux}[:ENABle]", lambda c: self._get(c, "1" if self.trigger_out["ENAB"] else "0"), query=True)
        choices = {"INTerval": ("INT", ("SWE", "POIN")), "POSition": ("POS", ("BEF", "AFT"))}
        polarity = "OPOLarity" if self.dialect == "keysight" else "STYPe"
        choices[polarity] = ("POL", ("POS", "NEG"))
        for node, (key, allowed) in choices.items():
            t.add(f"{aux}:{node}", functools.partial(self._set_trigger_choice, key, allowed), query=False)
            t.add(f"{aux}:{node}", functools.partial(self._trigger_choice_query, key), query=True)
        if self.dialect == "keysight":
            t.add("SENSe#:BWIDth[:RESolution]", self._set_ifbw, query=False)
            t.add(
                "SENSe#:BWIDth[:RESolution]",
                lambda c: self._get(c, scpi_float(self.settings.ifbw_hz)),
                query=True,
            )
            t.add("SENSe#:SWEep:MODE", self._set_sweep_mode, query=False)
            t.add("SENSe#:SWEep:MODE", self._sweep_mode_query, query=True)
            t.add("CALCulate#:PARameter[:DEFine][:EXTended]", self._define_trace, query=False)
        else:
            t.add("SENSe#:BANDwidth[:RESolution]", self._set_ifbw, query=False)
            t.add(
                "SENSe#:BANDwidth[:RESolution]",
                lambda c: self._get(c, scpi_float(self.settings.ifbw_hz)),
                query=True,
            )
            t.add("INITiate#:CONTinuous", self._set_continuous, query=False)
            t.add("INITiate#:CONTinuous", lambda c: self._get(c, "1" if self.continuous else "0"), query=True)
            t.add("INITiate#[:IMMediate]", self._init_immediate, query=False)
            t.add("CALCulate#:PARameter:SDEFine", self._define_trace, query=False)
        return t

    # --- handlers -----------------------------------------------------------------------------

    @staticmethod
    def _channel(call: Call) -> None:
        if any(s != 1 for s in call.suffixes):
            raise ScpiError(-114, f"{call.header}; the simulator has channel 1 only")

    def _get(self, call: Call, value: str) -> str:
        self._channel(call)
        return value

    def _number(self, call: Call, index: int = 0) -> float:
        self._channel(call)
        if len(call.params) <= index:
            raise ScpiError(-109, call.header)
        try:
            value = float(call.params[index])
        except ValueError:
            raise ScpiError(-104, f"{call.header} {call.params[index]}") from None
        if not np.isfinite(value):
            raise ScpiError(-224, f"{call.header} {call.params[index]}")
        return value

    def _in_range(self, call: Call, value: float, lo: float, hi: float) -> float:
        if not lo <= value <= hi:
            raise ScpiError(-222, f"{call.header} {call.params[0]}")
        return value

    async def _opc_query(self, call: Call) -> str:
        await self._wait_sweep()
        return "1"

    def _cls(self, call: Call) -> None:
        self.errors.clear()
        self._esr = 0

    def _esr_query(self, call: Call) -> str:
        value, self._esr = self._esr, 0
        return str(value)

    def _next_error(self, call: Call) -> str:
        return self.errors.popleft() if self.errors else scpi.format_error(0)

    def _set_start(self, call: Call) -> None:
        v = self._in_range(call, self._number(call), self.model.min_hz, self.model.max_hz)
        self.settings.start_hz = v
        self.settings.stop_hz = max(self.settings.stop_hz, v)

    def _set_stop(self, call: Call) -> None:
        v = self._in_range(call, self._number(call), self.model.min_hz, self.model.max_hz)
        self.settings.stop_hz = v
        self.settings.start_hz = min(self.settings.start_hz, v)

    def _set_points(self, call: Call) -> None:
        v = self._number(call)
        if v != int(v):
            raise ScpiError(-104, f"{call.header} {call.params[0]}")
        self.settings.points = int(self._in_range(call, v, 1, self.model.max_points))

    def _set_ifbw(self, call: Call) -> None:
        self.settings.ifbw_hz = self._in_range(
            call, self._number(call), self.model.min_ifbw_hz, self.model.max_ifbw_hz
        )

    def _set_power(self, call: Call) -> None:
        self.settings.power_dbm = self._in_range(
            call, self._number(call), self.model.min_power_dbm, self.model.max_power_dbm
        )

    def _set_format(self, call: Call) -> None:
        p = [x.upper() for x in call.params]
        if p in (["REAL", "32"], ["REAL", "+32"]):
            self.data_format = "real32"
        elif p in (["REAL", "64"], ["REAL", "+64"]):
            self.data_format = "real64"
        elif p and p[0] in ("ASC", "ASCII") and p[1:] in ([], ["0"]):
            self.data_format = "ascii"
        else:
            raise ScpiError(-224, f"{call.header} {','.join(call.params)}")

    def _format_query(self, call: Call) -> str:
        return {"real32": "REAL,32", "real64": "REAL,64", "ascii": "ASC,0"}[self.data_format]

    def _set_border(self, call: Call) -> None:
        p = call.params[0].upper() if call.params else ""
        if p in ("NORM", "NORMAL"):
            self.byte_order = "norm"
        elif p in ("SWAP", "SWAPPED"):
            self.byte_order = "swap"
        else:
            raise ScpiError(-224 if p else -109, call.header)

    def _delete_all(self, call: Call) -> None:
        self._channel(call)
        self.traces.clear()
        self.selected_trace = None

    def _define_trace(self, call: Call) -> None:
        self._channel(call)
        if len(call.params) != 2:
            raise ScpiError(-109 if len(call.params) < 2 else -108, call.header)
        name, param = unquote(call.params[0]), unquote(call.params[1]).upper()
        if not name or param not in _S_PARAMS:
            raise ScpiError(-224, f"{call.header} {','.join(call.params)}")
        if name in self.traces:
            raise ScpiError(-221, f"{call.header}; trace {name!r} exists")
        self.traces[name] = param

    def _select_trace(self, call: Call) -> None:
        self._channel(call)
        name = unquote(call.params[0]) if call.params else ""
        if name not in self.traces:
            raise ScpiError(-224, f"{call.header} {name!r}; no such trace")
        self.selected_trace = name

    def _set_trigger_enable(self, call: Call) -> None:
        self._channel(call)
        value = call.params[0].upper() if call.params else ""
        if value not in ("ON", "1", "OFF", "0"):
            raise ScpiError(-224 if value else -109, f"{call.header} {value}")
        self.trigger_out["ENAB"] = value in ("ON", "1")

    def _set_trigger_choice(self, key: str, allowed: tuple[str, ...], call: Call) -> None:
        self._channel(call)
        value = call.params[0].upper() if call.params else ""
        long_forms = {"SWE": "SWEEP", "POIN": "POINT", "BEF": "BEFORE", "AFT": "AFTER", "POS": "POSITIVE",
                      "NEG": "NEGATIVE"}  # fmt: skip
        match = next((a for a in allowed if value in (a, long_forms[a])), None)
        if match is None:
            raise ScpiError(-224 if value else -109, f"{call.header} {value}")
        self.trigger_out[key] = match

    def _trigger_choice_query(self, key: str, call: Call) -> str:
        return self._get(call, str(self.trigger_out[key]))

    def _set_sweep_mode(self, call: Call) -> None:
        self._channel(call)
        mode = call.params[0].upper() if call.params else ""
        if mode in ("HOLD",):
            self.continuous = False
            self._pending = None  # abort: the trace keeps the last completed sweep
        elif mode in ("CONT", "CONTINUOUS"):
            self.continuous = True
            self._pending = None
        elif mode in ("SING", "SINGLE"):
            self.continuous = False
            self._start_sweep()
        else:
            raise ScpiError(-224 if mode else -109, f"{call.header} {mode}")

    def _sweep_mode_query(self, call: Call) -> str:
        self._channel(call)
        if self.continuous:
            return "CONT"
        return "SING" if self._pending is not None else "HOLD"

    def _set_continuous(self, call: Call) -> None:
        self._channel(call)
        value = call.params[0].upper() if call.params else ""
        if value in ("ON", "1"):
            self.continuous = True
            self._pending = None
        elif value in ("OFF", "0"):
            self.continuous = False
        else:
            raise ScpiError(-224 if value else -109, f"{call.header} {value}")

    def _init_immediate(self, call: Call) -> None:
        self._channel(call)
        if self.continuous:
            raise ScpiError(-213, f"{call.header}; continuous sweep is on")
        self._start_sweep()

    def _data_query(self, call: Call) -> bytes:
        self._channel(call)
        kind = call.params[0].upper() if call.params else ""
        if kind not in ("SDATA", "SDAT"):
            raise ScpiError(-224 if kind else -109, f"{call.header} {kind}; only SDATA is simulated")
        if self.selected_trace is None:
            raise ScpiError(-221, f"{call.header}; no trace selected")
        if self.traces[self.selected_trace] != "S21":
            raise ScpiError(-221, f"{call.header}; only S21 is simulated")
        if self.continuous:
            data = self.front_end.measure(self._sweep_config(), self.front_end.scene_time())
        else:
            self._commit()
            data = self._trace_data
            if data is None or data.size != self.settings.points:
                data = np.zeros(self.settings.points, np.complex64)
        values = np.empty(2 * data.size, dtype=np.float64)
        values[0::2] = data.real
        values[1::2] = data.imag
        if self.fault == "nan":
            values[0] = np.nan
        if self.data_format == "ascii":
            return scpi.encode_ascii(values)
        block = scpi.encode_block(scpi.encode_real(values, self.data_format, self.byte_order))
        if self.fault == "bad-header":
            return b"#4AB12" + block[2 + int(block[1:2]) :]
        if self.fault == "long-block":
            return block + b"XY"
        return block


def scpi_float(value: float) -> str:
    """How instruments answer numeric queries: scientific notation, enough digits for 1 Hz steps."""
    return f"{value:.12E}"


class VnaServer(LineServer):
    """Serves one SimulatedVna on a TCP port: one program message per line, one response per query."""

    label = "simulated VNA"

    def __init__(self, instrument: SimulatedVna, *, max_clients: int = MAX_CLIENTS) -> None:
        super().__init__(max_clients=max_clients)
        self.instrument = instrument

    async def _serve_lines(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = BoundedLineReader(reader, MAX_MESSAGE_BYTES)
        while True:
            line = await lines.readline()
            if line is None:
                break
            if isinstance(line, LineTooLong):
                self.instrument.push_error(-223, f"program message of {line.size} bytes")
                continue
            try:
                text = line.rstrip(b"\r").decode("ascii")
            except UnicodeDecodeError:
                self.instrument.push_error(-102, "non-ASCII characters in program message")
                continue
            response = await self.instrument.execute(text)
            fault = self.instrument.fault
            if response is None or fault == "silent":
                continue
            if fault == "truncated" and response.startswith(b"#"):
                writer.write(response[: len(response) // 2])  # and never the rest
            else:
                writer.write(response + b"\n")
            await writer.drain()
