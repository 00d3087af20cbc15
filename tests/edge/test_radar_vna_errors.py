"""Error paths of the VNA driver: every fault gives a clear error that names the instrument and the command.

Three kinds of misbehaving instrument: pyvisa-sim devices (tests/edge/data/vna_errors.yaml), the TCP
simulator acting out a fault (wrong identity, silence, NaN, truncated/garbled/over-long blocks) and a
scripted peer for read-backs no simulated model gives (tests/edge/scripted_vna.py).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import SweepConfig
from vrclip.edge.radar import scpi
from vrclip.edge.radar.errors import (
    RadarSetupError,
    VnaConnectionError,
    VnaDataError,
    VnaIdentityError,
    VnaInstrumentError,
    VnaProtocolError,
    VnaResourceError,
    VnaTimeoutError,
)
from vrclip.edge.radar.sim_vna import SIM_MODELS
from vrclip.edge.radar.simulated import SimulatedRadar
from vrclip.edge.radar.switch import SwitchClient
from vrclip.edge.radar.vna import VnaDriver

from tests.edge.scripted_vna import KEYSIGHT_REPLIES, KEYSIGHT_SWEEP, ScriptedVna

pytest.importorskip("pyvisa_sim", reason="pyvisa-sim (dev extra) simulates the misbehaving instruments")

YAML = Path(__file__).parent / "data" / "vna_errors.yaml"
BACKEND = f"{YAML}@sim"
SWEEP = SweepConfig(start_hz=1e9, stop_hz=2e9, points=3, if_bandwidth_hz=1e5, power_dbm=0.0)
KEYSIGHT_IDN = "Keysight Technologies,E5080B,MY59100001,A.15.20.06"


def sim_driver(host: str, **kwargs: object) -> VnaDriver:
    options: dict[str, object] = {"backend": BACKEND, "timeout_ms": 150}
    options.update(kwargs)
    sweep = options.pop("sweep", SWEEP)
    return VnaDriver(f"TCPIP0::{host}.lab::5025::SOCKET", "keysight", sweep, **options)  # type: ignore[arg-type]


# --- pyvisa-sim instruments ---------------------------------------------------------------------


def test_wrong_idn_names_what_was_found_and_what_was_expected() -> None:
    vna = sim_driver("wrong-idn")
    with pytest.raises(VnaIdentityError) as info:
        vna.connect()
    message = str(info.value)
    assert "TCPIP0::wrong-idn.lab::5025::SOCKET" in message and "Tektronix,MSO64" in message
    assert info.value.command == "*IDN?" and "E5080[AB]" in message
    assert isinstance(info.value, RadarSetupError)  # retrying cannot fix it
    assert not vna.connected


def test_silent_instrument_times_out_naming_the_command() -> None:
    with pytest.raises(VnaTimeoutError) as info:
        sim_driver("silent").connect()
    assert info.value.command == "*IDN?"
    assert "TCPIP0::silent.lab::5025::SOCKET" in str(info.value) and "150 ms" in str(info.value)


def test_truncated_block_is_reported_as_truncated() -> None:
    vna = sim_driver("truncated")
    vna.connect()
    assert vna.idn == KEYSIGHT_IDN
    with pytest.raises(VnaProtocolError, match="truncated block: the header announced 24 data bytes") as info:
        vna.measure()
    assert info.value.command == "CALC1:DATA? SDATA" and KEYSIGHT_IDN in str(info.value)
    assert not vna.connected  # the byte stream cannot be trusted any more


def test_nan_in_ascii_data_is_refused() -> None:
    vna = sim_driver("nan", data_format="ascii")
    vna.connect()
    with pytest.raises(VnaDataError, match=r"data holds nan at value 2 \(point 1\)") as info:
        vna.measure()
    assert info.value.command == "CALC1:DATA? SDATA" and "TCPIP0::nan.lab" in str(info.value)


def test_wrong_number_of_values_is_refused() -> None:
    vna = sim_driver("short", data_format="ascii")
    vna.connect()
    with pytest.raises(VnaDataError, match=r"got 4 values, expected 6 \(re/im of 3 points\)"):
        vna.measure()


def test_error_queue_entries_are_reported_verbatim() -> None:
    # The pyvisa-sim device knows "SOUR1:POW 0" only; -5 dBm is an unknown command to it.
    vna = sim_driver("nan", sweep=SWEEP.model_copy(update={"power_dbm": -5.0}))
    with pytest.raises(VnaInstrumentError) as info:
        vna.connect()
    assert info.value.command == "SOUR1:POW -5"
    assert info.value.errors == ['-113,"Undefined header"']


@pytest.mark.parametrize("backend", ["@py", BACKEND])
def test_bad_resource_string_is_a_setup_error(backend: str) -> None:
    with pytest.raises(VnaResourceError, match=r"radar\.vna\.resource is not a valid VISA resource string"):
        VnaDriver("TCPIP0::", "keysight", SWEEP, backend=backend).connect()


# --- the TCP simulator acting out faults ---------------------------------------------------------


@pytest.fixture(scope="module")
def radar():
    sim = SimulatedRadar(sweep=SWEEP, dialect="rs", sweep_time_s=0.2e-3).start()
    yield sim
    sim.stop()


@pytest.fixture
def vna(radar: SimulatedRadar):
    radar.state.vna.fault = None
    driver = VnaDriver(radar.vna_resource, "rs", SWEEP, timeout_ms=300)
    driver.connect()
    with SwitchClient(radar.switch_url) as switch:
        switch.select(1, 2)
    yield driver
    radar.state.vna.fault = None
    driver.close()


@pytest.mark.parametrize(
    ("fault", "error", "pattern"),
    [
        ("nan", VnaDataError, r"data holds nan at value 0 \(point 0\)"),
        ("truncated", VnaProtocolError, "truncated block"),
        ("bad-header", VnaProtocolError, r"block header b'#4AB': the length field is not decimal digits"),
        ("long-block", VnaProtocolError, "block does not end after its header's 24 bytes"),
    ],
)
def test_misbehaving_data_replies(radar: SimulatedRadar, vna: VnaDriver, fault, error, pattern) -> None:
    vna.sweep_once()
    radar.state.vna.fault = fault
    with pytest.raises(error, match=pattern) as info:
        vna.read_s21()
    assert info.value.command == "CALC1:DATA? SDAT"
    assert radar.vna_resource in str(info.value) and SIM_MODELS["rs"].idn in str(info.value)
    assert not vna.connected


def test_instrument_that_goes_silent_mid_run(radar: SimulatedRadar, vna: VnaDriver) -> None:
    radar.state.vna.fault = "silent"
    with pytest.raises(VnaTimeoutError) as info:
        vna.sweep_once()
    assert info.value.command == "INIT1:IMM;*OPC?"
    with pytest.raises(VnaConnectionError, match="not connected"):
        vna.read_s21()


def test_binary_nan_in_real64(radar: SimulatedRadar) -> None:
    radar.state.vna.fault = "nan"
    try:
        with (
            VnaDriver(radar.vna_resource, "rs", SWEEP, data_format="real64") as vna,
            pytest.raises(VnaDataError, match="nan"),
        ):
            vna.measure()
    finally:
        radar.state.vna.fault = None


def test_instrument_with_another_identity() -> None:
    imposter = replace(SIM_MODELS["keysight"], idn="Anritsu,MS46122B,1234567,1.2.3")
    with SimulatedRadar(sweep=SWEEP, dialect="keysight", vna_model=imposter) as sim:
        with pytest.raises(VnaIdentityError, match="Anritsu,MS46122B") as info:
            VnaDriver(sim.vna_resource, "keysight", SWEEP).connect()
        assert sim.vna_resource in str(info.value)


# --- read-backs and identity replies the instrument should never give ---------------------------


@pytest.mark.parametrize(
    ("query", "reply"),
    [
        ("SENS1:SWE:POIN?", "NAN"),
        ("SENS1:SWE:POIN?", "INF"),
        ("SENS1:SWE:POIN?", "21.5"),
        ("SENS1:FREQ:STAR?", "NAN"),
        ("SENS1:FREQ:STOP?", "-INF"),
        ("SENS1:FREQ:STOP?", "9.9E+999"),
        # float() reads these as 21 points and 1 GHz; no instrument sends them.
        ("SENS1:SWE:POIN?", "2_1"),
        ("SENS1:FREQ:STAR?", "1_000_000_000"),
        ("SENS1:FREQ:STAR?", "\x0b1E+09"),
    ],
)
def test_unusable_readback_is_a_protocol_error_naming_the_query(query: str, reply: str) -> None:
    """A NaN start/stop once passed the tolerance check silently; NaN/inf points crashed with ValueError."""
    with ScriptedVna({**KEYSIGHT_REPLIES, query: reply}) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=1000)
        with pytest.raises(VnaProtocolError) as info:
            vna.connect()
        assert info.value.command == query
        assert peer.resource in str(info.value) and "E5080B" in str(info.value)
        assert repr(reply) in str(info.value) or f"got {reply}" in str(info.value)  # what it answered
        assert not isinstance(info.value, RadarSetupError)  # a glitch: the reconnect loop retries it
        assert not vna.connected


@pytest.mark.parametrize("bad", ["1_0", " inf", "0x1", "1e999"])
def test_ascii_trace_value_float_would_take_is_a_protocol_error(bad: str) -> None:
    """ "1_0" once became 10.0 and "1e999" an infinity reported as an overloaded instrument."""
    values = ["1.0E-01"] * (2 * KEYSIGHT_SWEEP.points)
    values[5] = bad
    replies = {**KEYSIGHT_REPLIES, "SENS1:SWE:MODE SING;*OPC?": "1", "CALC1:DATA? SDATA": ",".join(values)}
    with ScriptedVna(replies) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=1000, data_format="ascii")
        vna.connect()
        with pytest.raises(VnaProtocolError, match=f"value 5: {bad!r}") as info:
            vna.measure()
        assert info.value.command == "CALC1:DATA? SDATA" and peer.resource in str(info.value)
        assert not vna.connected


def test_healthy_scripted_readback_connects() -> None:
    """The scripted peer's defaults are a valid instrument: the failures above come from the one reply."""
    with ScriptedVna(KEYSIGHT_REPLIES) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=1000)
        vna.connect()
        assert vna.connected and vna.idn == KEYSIGHT_REPLIES["*IDN?"]
        vna.close()


@pytest.fixture
def rs_model(radar: SimulatedRadar):
    model = radar.state.vna.model
    yield model
    radar.state.vna.model = model


@pytest.mark.parametrize("idn", ["", "BOOTING", "Rohde-Schwarz,,1311601062100001,3.45"])
def test_garbled_idn_is_a_retryable_protocol_error(radar: SimulatedRadar, rs_model, idn: str) -> None:
    """An empty or unparsable *IDN? reply says nothing about the instrument: retry, do not stop the radar."""
    radar.state.vna.model = replace(rs_model, idn=idn)
    vna = VnaDriver(radar.vna_resource, "rs", SWEEP, timeout_ms=300)
    with pytest.raises(VnaProtocolError, match="is not '<manufacturer>,<model>,<serial>,<firmware>'") as info:
        vna.connect()
    assert info.value.command == "*IDN?" and radar.vna_resource in str(info.value)
    assert "radar.vna.resource" in str(info.value)
    assert not isinstance(info.value, RadarSetupError)
    assert not vna.connected


@pytest.mark.parametrize(
    "idn",
    ["Keysight Technologies,E5080B,MY59100001,\x1b[2J\x1b[31mA.15", KEYSIGHT_IDN + "," + "x" * 300],
)
def test_idn_with_control_characters_or_kilobytes_is_a_protocol_error(idn: str) -> None:
    """Such an IDN was accepted and then named the device in every error, log line and /status."""
    with ScriptedVna({**KEYSIGHT_REPLIES, "*IDN?": idn}) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=1000)
        with pytest.raises(VnaProtocolError, match="is not a printable identity of at most 256") as info:
            vna.connect()
        assert info.value.command == "*IDN?" and vna.idn == "" and not vna.connected
        assert not isinstance(info.value, RadarSetupError)


def test_reconnect_gets_past_a_garbled_idn(radar: SimulatedRadar, rs_model) -> None:
    radar.state.vna.model = replace(rs_model, idn="")
    failures: list[BaseException] = []

    def instrument_finishes_booting(exc: BaseException, delay: float) -> None:
        failures.append(exc)
        radar.state.vna.model = rs_model

    vna = VnaDriver(radar.vna_resource, "rs", SWEEP, timeout_ms=300, reconnect_max_backoff_s=0.05)
    try:
        assert vna.reconnect(max_attempts=3, on_failure=instrument_finishes_booting) == 2
        assert vna.connected and vna.idn == rs_model.idn
        assert [type(e) for e in failures] == [VnaProtocolError]
    finally:
        vna.close()


# --- terminators: "\n" (IEEE 488.2) and "\r\n" (some instruments) on every read path ---------------

KEYSIGHT_TRIGGER, KEYSIGHT_DATA = "SENS1:SWE:MODE SING;*OPC?", "CALC1:DATA? SDATA"
TRACE = (np.arange(2 * KEYSIGHT_SWEEP.points, dtype=np.float32) - 7.5) / 4


def trace_reply(data_format: str) -> str | bytes:
    """The scripted trace in `data_format` (big-endian REAL, the keysight dialect's default)."""
    if data_format == "ascii":
        return scpi.encode_ascii(TRACE).decode()
    return scpi.encode_block(scpi.encode_real(TRACE, data_format, "norm"))  # type: ignore[arg-type]


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
@pytest.mark.parametrize("opc", ["1", "+1"])
@pytest.mark.parametrize("data_format", ["real32", "real64", "ascii"])
@pytest.mark.parametrize("sweeps", [0, 1, 3])  # 0: measure(); n: acquire_chained(n) (hardware stepping)
def test_every_read_path_accepts_both_terminators(terminator, opc, data_format, sweeps) -> None:
    """*OPC? answered "1\r\n" was refused on the chained raw-socket path, and a block ending "\r\n" on all."""
    replies = {**KEYSIGHT_REPLIES, KEYSIGHT_TRIGGER: opc, KEYSIGHT_DATA: trace_reply(data_format)}
    expected = TRACE.view(np.complex64)
    with ScriptedVna(replies, terminator=terminator) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=1000, data_format=data_format)
        with vna:
            got = vna.acquire_chained(sweeps) if sweeps else vna.measure()[None]
            assert got.shape == (max(sweeps, 1), KEYSIGHT_SWEEP.points)
            for trace in got:
                np.testing.assert_array_equal(trace, expected)
            # Nothing was left in the stream: the next exchange reads its own reply.
            np.testing.assert_array_equal(vna.measure(), expected)
            assert vna.drain_errors() == []


@pytest.mark.parametrize("opc", ["0", "11", "1XYZ", "++1", " 1", "1\r\r", "\r"])
@pytest.mark.parametrize("sweeps", [0, 2])
def test_anything_but_1_to_opc_is_refused_on_every_path(opc: str, sweeps: int) -> None:
    replies = {**KEYSIGHT_REPLIES, KEYSIGHT_TRIGGER: opc, KEYSIGHT_DATA: trace_reply("real32")}
    with ScriptedVna(replies) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=300)
        vna.connect()
        with pytest.raises(VnaProtocolError, match=r"expected \*OPC\? reply '1'") as info:
            vna.acquire_chained(sweeps) if sweeps else vna.measure()
        assert info.value.command == KEYSIGHT_TRIGGER and peer.resource in str(info.value)
        assert not vna.connected


@pytest.mark.parametrize("end", [b"\r", b"\rX", b"X", b"\r\r\n", b""])
@pytest.mark.parametrize("sweeps", [0, 1])
def test_block_followed_by_anything_but_a_terminator_is_refused(end: bytes, sweeps: int) -> None:
    with ScriptedVna(KEYSIGHT_REPLIES) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=300)
        vna.connect()
        peer.terminator = b""  # from here on, each reply carries its own ending
        peer.replies.update({KEYSIGHT_TRIGGER: b"1\n", KEYSIGHT_DATA: trace_reply("real32") + end})  # type: ignore[operator]
        with pytest.raises(VnaProtocolError, match=r"block does not end|truncated") as info:
            vna.acquire_chained(sweeps) if sweeps else vna.measure()
        assert info.value.command == KEYSIGHT_DATA and peer.resource in str(info.value)
        assert not vna.connected


@pytest.mark.parametrize(
    ("data_format", "value"),
    [("real64", 1e300), ("real64", -4e38), ("ascii", 9.91e37), ("ascii", -9.9e37), ("real32", 9.9e37)],
)
def test_scpi_nan_markers_and_values_beyond_float32_are_refused(data_format: str, value: float) -> None:
    """9.91E37 (SCPI's NaN) once passed as a reading; 1e300 in REAL,64 became inf in the complex64 trace."""
    trace = TRACE.astype(np.float64)
    trace[3] = value
    reply = scpi.encode_ascii(trace).decode() if data_format == "ascii" else (
        scpi.encode_block(scpi.encode_real(trace, data_format, "norm"))  # type: ignore[arg-type]
    )  # fmt: skip
    replies = {**KEYSIGHT_REPLIES, KEYSIGHT_TRIGGER: "1", KEYSIGHT_DATA: reply}
    with ScriptedVna(replies) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=300, data_format=data_format)
        vna.connect()
        with pytest.raises(VnaDataError, match=r"at value 3 \(point 1\), not a reading") as info:
            vna.measure()
        assert info.value.command == KEYSIGHT_DATA and not vna.connected


# --- an instrument that closes the connection, on every read path ----------------------------------

BLOCK = trace_reply("real32")
assert isinstance(BLOCK, bytes)


@pytest.mark.parametrize(
    ("data_format", "sweeps", "message", "sent"),
    [
        ("real32", None, "*IDN?", b""),  # connect(): the first reply
        ("real32", None, "SENS1:SWE:POIN?", b""),  # connect(): a read-back
        ("real32", 0, KEYSIGHT_TRIGGER, b""),  # measure(): the sweep-complete reply
        ("real32", 0, KEYSIGHT_DATA, b""),  # measure(): the block header
        ("real32", 0, KEYSIGHT_DATA, BLOCK[:30]),  # measure(): inside the block's payload
        ("real32", 0, KEYSIGHT_DATA, BLOCK + b"\r"),  # measure(): between CR and NL
        ("ascii", 0, KEYSIGHT_DATA, b"0.25,1.5,"),  # measure(): inside an ASCII trace
        ("real32", 2, KEYSIGHT_TRIGGER, b""),  # acquire_chained(): the sweep-complete reply
        ("real32", 2, KEYSIGHT_TRIGGER, b"+"),  # acquire_chained(): inside it
        ("real32", 1, KEYSIGHT_DATA, BLOCK[:30]),  # acquire_chained(): inside the exact-length block
    ],
)
def test_an_instrument_that_closes_the_connection_is_named_at_once(
    data_format: str, sweeps: int | None, message: str, sent: bytes
) -> None:
    """A VNA that serves one client, or restarts, closes the socket: pyvisa-py read that as "no data
    yet" until the timeout, and the driver blamed a busy or hung instrument 5 s later."""
    replies = {**KEYSIGHT_REPLIES, KEYSIGHT_TRIGGER: "1", KEYSIGHT_DATA: trace_reply(data_format)}
    with ScriptedVna(replies) as peer:
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=3000, data_format=data_format)
        peer.hang_up_on[message] = sent
        started = time.monotonic()
        with pytest.raises(VnaConnectionError, match="the instrument closed the connection") as info:
            vna.connect()
            vna.acquire_chained(sweeps) if sweeps else vna.measure()
        assert time.monotonic() - started < 1.0  # not the 3-s timeout
        assert info.value.command == message and peer.resource in str(info.value)
        assert not isinstance(info.value, RadarSetupError)  # the runtime reconnects, as for any link fault
        assert not vna.connected
