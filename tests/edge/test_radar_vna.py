"""VNA driver <-> simulated VNA over TCP through pyvisa-py: both dialects, every data format, byte order,
sweep timing, instrument-side errors and range checks.

The simulator runs with a frozen scene clock and (unless a test says otherwise) noise off, so the S21
the driver reads can be compared exactly with what `RadarSimulator` computes for the same channel.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from vrclip.edge.config import SweepConfig
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.dialects import DIALECTS, ModelLimits
from vrclip.edge.radar.errors import (
    RadarSetupError,
    VnaConnectionError,
    VnaDataError,
    VnaIdentityError,
    VnaInstrumentError,
    VnaRangeError,
)
from vrclip.edge.radar.simulated import SimulatedRadar
from vrclip.edge.radar.switch import SwitchClient
from vrclip.edge.radar.vna import VnaDriver
from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator
from vrclip.edge.sim.scene import Scene, SceneSpec

T_SCENE = 1.25
SWEEP = SweepConfig(start_hz=1e9, stop_hz=2e9, points=21, if_bandwidth_hz=1e6, power_dbm=-5.0)
SPEC = SceneSpec(people=("person-00", "person-01"), seed=7)
GEOMETRY = load_geometry()


class ScpiSession:
    """A raw SCPI conversation with a simulated VNA, below the driver: `send` lines, `ask` queries."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rwb")

    def send(self, line: str) -> None:
        self._file.write(line.encode() + b"\n")

    def ask(self, line: str) -> str:
        self.send(line)
        self._file.flush()
        return self._file.readline().decode().strip()


@contextlib.contextmanager
def scpi_session(port: int) -> Iterator[ScpiSession]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        yield ScpiSession(sock)


def quiet_errors(noise_std: float = 0.0) -> FrontEndErrors:
    return FrontEndErrors.draw(GEOMETRY.n_channels, seed=99, noise_std=noise_std)


def start_sim(dialect: str, **kwargs: object) -> SimulatedRadar:
    options: dict[str, object] = {
        "scene_spec": SPEC,
        "sweep": SWEEP,
        "dialect": dialect,
        "geometry": GEOMETRY,
        "errors": quiet_errors(),
        "clock": lambda: T_SCENE,
        "sweep_time_s": 0.5e-3,
    }
    options.update(kwargs)
    return SimulatedRadar(**options).start()


@pytest.fixture(scope="module", params=sorted(DIALECTS))
def sim(request: pytest.FixtureRequest):
    radar = start_sim(request.param)
    yield request.param, radar
    radar.stop()


@functools.cache
def radar_model(noise_std: float) -> RadarSimulator:
    return RadarSimulator(Scene(SPEC), GEOMETRY, SWEEP, quiet_errors(noise_std))


def expected_s21(channel: int, noise_std: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """What the radar model says the VNA must measure on `channel` at the frozen scene time."""
    simulator = radar_model(noise_std)
    rng = rng or np.random.default_rng(0)
    return simulator.frame(simulator.scene.state(T_SCENE), rng, channels=np.array([channel]))[0]


def channel_of(tx: int, rx: int) -> int:
    return int(np.flatnonzero((GEOMETRY.pairs[:, 0] == tx) & (GEOMETRY.pairs[:, 1] == rx))[0])


@pytest.mark.parametrize(
    ("data_format", "byte_order"),
    [("real32", "norm"), ("real32", "swap"), ("real64", "norm"), ("real64", "swap"), ("ascii", None)],
)
def test_s21_read_through_the_simulator_equals_the_radar_model(sim, data_format, byte_order) -> None:
    dialect, radar = sim
    vna = VnaDriver(radar.vna_resource, dialect, SWEEP, data_format=data_format, byte_order=byte_order)
    with vna, SwitchClient(radar.switch_url) as switch:
        assert radar.state.vna.data_format == data_format
        if byte_order is not None:
            assert radar.state.vna.byte_order == byte_order
        for tx, rx in ((0, 0), (3, 7), (11, 11)):
            switch.select(tx, rx)
            got = vna.measure()
            assert got.dtype == np.complex64 and got.shape == (SWEEP.points,)
            np.testing.assert_array_equal(got, expected_s21(channel_of(tx, rx)))


@pytest.mark.parametrize("data_format", ["real32", "ascii"])
@pytest.mark.parametrize("sweeps", [1, 2, 3])
def test_chained_sweeps_return_every_trace(sim, data_format: str, sweeps: int) -> None:
    """acquire_chained(1) (a one-channel array) once waited for a data query it never sent."""
    dialect, radar = sim
    vna = VnaDriver(radar.vna_resource, dialect, SWEEP, data_format=data_format, timeout_ms=500)
    with vna, SwitchClient(radar.switch_url) as switch:
        switch.select(3, 7)  # no trigger output: the switch stays put, every sweep measures one channel
        before = radar.state.vna.sweeps
        got = vna.acquire_chained(sweeps)
        assert got.shape == (sweeps, SWEEP.points) and got.dtype == np.complex64
        for trace in got:
            np.testing.assert_array_equal(trace, expected_s21(channel_of(3, 7)))
        assert radar.state.vna.sweeps - before == sweeps
        # Nothing left unread in the stream: the next plain measurement gets its own reply.
        switch.select(0, 0)
        np.testing.assert_array_equal(vna.measure(), expected_s21(channel_of(0, 0)))


def test_byte_order_matters(sim) -> None:
    """If the instrument sent the other byte order than the driver set, the values would be garbage."""
    dialect, radar = sim
    vna = VnaDriver(radar.vna_resource, dialect, SWEEP, data_format="real32", byte_order="swap")
    with vna, SwitchClient(radar.switch_url) as switch:
        switch.select(2, 5)
        radar.state.vna.byte_order = "norm"  # behind the driver's back
        try:
            garbled = vna.measure()
        except VnaDataError:  # NaN/inf from misread bytes is a valid way to notice, too
            return
        finally:
            radar.state.vna.byte_order = "swap"
        assert not np.allclose(garbled, expected_s21(channel_of(2, 5)))


def test_noise_follows_the_same_rng_as_the_radar_model() -> None:
    """With noise on, the simulator draws from its seeded rng in sweep order: replaying it matches."""
    radar = start_sim("rs", errors=quiet_errors(noise_std=1e-3))
    try:
        vna = VnaDriver(radar.vna_resource, "rs", SWEEP)
        with vna, SwitchClient(radar.switch_url) as switch:
            rng = np.random.default_rng(SPEC.seed)
            for tx, rx in ((1, 1), (4, 2)):
                switch.select(tx, rx)
                got = vna.measure()
                np.testing.assert_array_equal(got, expected_s21(channel_of(tx, rx), 1e-3, rng))
    finally:
        radar.stop()


def test_sweep_waits_for_the_configured_sweep_time() -> None:
    radar = start_sim("keysight", sweep_time_s=0.040)
    try:
        with VnaDriver(radar.vna_resource, "keysight", SWEEP) as vna:
            t0 = time.perf_counter()
            vna.sweep_once()
            elapsed = time.perf_counter() - t0
        assert 0.040 <= elapsed < 0.5
    finally:
        radar.stop()


def test_sweep_time_follows_points_and_if_bandwidth() -> None:
    radar = start_sim("rs", sweep_time_s=None)
    slow = SWEEP.model_copy(update={"if_bandwidth_hz": 1000.0})  # 21 points / 1 kHz = 21 ms
    try:
        with VnaDriver(radar.vna_resource, "rs", slow) as vna:
            t0 = time.perf_counter()
            vna.sweep_once()
            elapsed = time.perf_counter() - t0
        assert 0.021 <= elapsed < 0.5
    finally:
        radar.stop()


def test_trace_holds_the_previous_sweep_until_the_new_one_completes() -> None:
    """What makes the driver's *OPC? wait necessary: reading too early gives the old data."""
    radar = start_sim("rs", sweep_time_s=0.2)
    try:
        with scpi_session(radar.vna_port) as scpi:
            for cmd in ("INIT1:CONT OFF", "CALC1:PAR:SDEF 'T','S21'", "CALC1:PAR:SEL 'T'", "FORM:DATA ASC"):
                scpi.send(cmd)
            radar.front_end.select(0, 0)
            scpi.ask("INIT1:IMM;*OPC?")
            first = scpi.ask("CALC1:DATA? SDAT")
            radar.front_end.select(5, 5)
            scpi.send("INIT1:IMM")
            assert scpi.ask("CALC1:DATA? SDAT") == first  # sweep still running: old trace
            assert scpi.ask("*OPC?") == "1"
            assert scpi.ask("CALC1:DATA? SDAT") != first
            assert scpi.ask("SYST:ERR?") == '0,"No error"'
    finally:
        radar.stop()


def test_simulator_error_queue_is_scpi(sim) -> None:
    dialect, radar = sim
    other = "CALC1:PAR:SDEF 'x','S21'" if dialect == "keysight" else "SENS1:SWE:MODE SING"
    with scpi_session(radar.vna_port) as scpi:
        ask = scpi.ask
        assert ask("*CLS;SYST:ERR?") == '0,"No error"'
        scpi.send("SENS1:FROB 3")
        scpi.send(other)  # the other dialect's command
        scpi.send("SENS1:FREQ:STAR 1")  # below the instrument's range
        scpi.send("sense1:frequency:start 1.5e9;STOP 1.6e9")  # long form, lower case, relative path
        assert ask("SYST:ERR?") == '-113,"Undefined header;SENS1:FROB"'
        assert ask("SYST:ERR?").startswith("-113,")
        assert ask("SYST:ERR?") == '-222,"Data out of range;SENS1:FREQ:STAR 1"'
        assert ask("SYST:ERR?") == '0,"No error"'
        assert float(ask("SENS:FREQ:STOP?")) == 1.6e9


def test_instrument_errors_are_reported_verbatim_with_the_command(sim) -> None:
    dialect, radar = sim
    loud = SWEEP.model_copy(update={"power_dbm": 15.0})  # the simulated VNAs stop at +10 dBm
    vna = VnaDriver(radar.vna_resource, dialect, loud)
    with pytest.raises(VnaInstrumentError) as info:
        vna.connect()
    assert info.value.command == "SOUR1:POW 15"
    assert info.value.errors == ['-222,"Data out of range;SOUR1:POW 15"']
    assert radar.vna_resource in str(info.value) and radar.state.vna.model.idn in str(info.value)
    assert not vna.connected


def test_frequency_outside_the_model_is_refused_before_sending(sim) -> None:
    dialect, radar = sim
    too_high = SWEEP.model_copy(update={"stop_hz": 9.6e9})  # E5080B: 9 GHz, ZNB8: 8.5 GHz
    radar.state.vna.reset()
    before = radar.state.vna.settings.stop_hz
    with pytest.raises(VnaRangeError) as info:
        VnaDriver(radar.vna_resource, dialect, too_high).connect()
    assert info.value.command == "SENS1:FREQ:STOP 9600000000"
    assert "radar.sweep.stop_hz" in str(info.value) and radar.vna_resource in str(info.value)
    assert isinstance(info.value, RadarSetupError)
    assert radar.state.vna.settings.stop_hz == before  # nothing was sent


def test_range_check_needs_no_connection() -> None:
    narrow = replace(DIALECTS["rs"], models=(ModelLimits("ZNB4", 9e3, 1.5e9, 1001),))
    vna = VnaDriver("TCPIP0::127.0.0.1::9::SOCKET", narrow, SWEEP)  # nothing listens on port 9
    with pytest.raises(VnaRangeError, match=r"stop_hz = 2e\+09 Hz is outside"):
        vna.connect()


def test_wrong_dialect_is_a_clear_identity_error(sim) -> None:
    dialect, radar = sim
    other = "rs" if dialect == "keysight" else "keysight"
    with pytest.raises(VnaIdentityError) as info:
        VnaDriver(radar.vna_resource, other, SWEEP).connect()
    assert info.value.command == "*IDN?"
    assert radar.state.vna.model.idn in str(info.value) and "radar.vna.dialect" in str(info.value)


def test_reconnect_backs_off_and_gives_up_after_max_attempts() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        vna = VnaDriver(f"TCPIP0::127.0.0.1::{port}::SOCKET", "keysight", SWEEP, reconnect_max_backoff_s=0.2)
        delays: list[float] = []
        t0 = time.perf_counter()
        with pytest.raises(VnaConnectionError):
            vna.reconnect(max_attempts=4, on_failure=lambda exc, delay: delays.append(delay))
        assert delays == [0.1, 0.2, 0.2]  # doubling, capped at reconnect_max_backoff_s
        assert time.perf_counter() - t0 >= 0.5


def test_trigger_output_pulses_after_each_sweep(sim) -> None:
    """The driver turns the rear-panel trigger output on (per dialect); it pulses once a sweep."""
    dialect, radar = sim
    pulses: list[int] = []
    radar.front_end.trigger_listeners.append(lambda: pulses.append(1))
    try:
        with VnaDriver(radar.vna_resource, dialect, SWEEP, trigger_output=True) as vna:
            out = radar.state.vna.trigger_out
            assert out == {"ENAB": True, "INT": "SWE", "POS": "AFT", "POL": "POS"}
            for _ in range(3):
                vna.sweep_once()
            assert len(pulses) == 3
    finally:
        radar.front_end.trigger_listeners.pop()


def test_trigger_output_commands_are_checked(sim) -> None:
    dialect, radar = sim
    polarity = "OPOL" if dialect == "keysight" else "STYP"
    with scpi_session(radar.vna_port) as scpi:
        ask = scpi.ask
        assert ask("*CLS;TRIG:CHAN1:AUX1:INT POINT;:TRIG:CHAN1:AUX1:INT?") == "POIN"
        scpi.send("TRIG:CHAN1:AUX1:POS SIDEWAYS")
        scpi.send(f"TRIG:CHAN1:AUX1:{polarity} NEGATIVE")
        assert ask("SYST:ERR?") == '-224,"Illegal parameter value;TRIG:CHAN1:AUX1:POS SIDEWAYS"'
        assert ask("SYST:ERR?") == '0,"No error"'
        assert ask(f"TRIG:CHAN1:AUX1:{polarity}?") == "NEG"
        scpi.send("TRIG:CHAN2:AUX1 ON")  # the simulator has channel 1 only
        assert ask("SYST:ERR?").startswith("-114,")
        assert ask("*RST;TRIG:CHAN1:AUX1?") == "0"  # a preset turns the output off
