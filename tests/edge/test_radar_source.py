"""RadarSource over the simulated VNA + switch: whole frames, timestamps, pacing, and surviving restarts."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from vrclip.edge.config import RadarConfig, SweepConfig
from vrclip.edge.frames import CLOCK_REALTIME
from vrclip.edge.geometry import ArrayGeometry, load_geometry
from vrclip.edge.radar.errors import RadarError, VnaIdentityError, VnaProtocolError
from vrclip.edge.radar.sim_vna import SIM_MODELS
from vrclip.edge.radar.simulated import SimulatedRadar
from vrclip.edge.radar.source import RadarSource
from vrclip.edge.radar.switch import SwitchClient
from vrclip.edge.radar.vna import VnaDriver
from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator
from vrclip.edge.sim.scene import Scene, SceneSpec

from tests.edge.scripted_vna import KEYSIGHT_REPLIES, KEYSIGHT_SWEEP, ScriptedVna

SWEEP = SweepConfig(start_hz=0.8e9, stop_hz=2.8e9, points=21, if_bandwidth_hz=1e6)
SPEC = SceneSpec(people=("person-00",), seed=3)
T_SCENE = 2.0


def small_geometry() -> ArrayGeometry:
    """3 Tx x 2 Rx of the real array, rx-major order: 6 channels keep the restart tests fast."""
    full = load_geometry()
    pairs = np.array([(t, r) for r in range(2) for t in range(3)])
    return ArrayGeometry(
        "test-3x2", full.tx_names[:3], full.rx_names[:2], full.tx_positions[:3], full.rx_positions[:2], pairs
    )


def simulator(geometry: ArrayGeometry, **kwargs: object) -> SimulatedRadar:
    options: dict[str, object] = {
        "scene_spec": SPEC,
        "sweep": SWEEP,
        "geometry": geometry,
        "dialect": "keysight",
        "errors": FrontEndErrors.draw(geometry.n_channels, seed=5, noise_std=0.0),
        "clock": lambda: T_SCENE,
        "sweep_time_s": 0.1e-3,
    }
    options.update(kwargs)
    return SimulatedRadar(**options)


def make_source(sim: SimulatedRadar, geometry: ArrayGeometry, **kwargs: object) -> RadarSource:
    vna = VnaDriver(sim.vna_resource, "keysight", SWEEP, timeout_ms=300, reconnect_max_backoff_s=0.2)
    switch = SwitchClient(sim.switch_url, timeout_ms=300)
    options: dict[str, object] = {"reconnect_initial_s": 0.05, "reconnect_max_backoff_s": 0.2}
    options.update(kwargs)
    return RadarSource(vna, switch, geometry, **options)  # type: ignore[arg-type]


def test_full_frame_equals_the_radar_model_in_switching_order() -> None:
    geometry = load_geometry()
    with simulator(geometry) as sim:
        source = make_source(sim, geometry)
        with source:
            before = time.time_ns()
            frame = source.read_frame()
            second = source.read_frame()
        assert frame is not None and second is not None
        assert frame.s21.shape == (144, SWEEP.points) and frame.s21.dtype == np.complex64
        assert frame.clock == CLOCK_REALTIME and before <= frame.t_ns <= second.t_ns <= time.time_ns()
        assert (frame.seq, second.seq) == (0, 1)
        model = RadarSimulator(Scene(SPEC), geometry, SWEEP, FrontEndErrors.draw(144, seed=5, noise_std=0.0))
        expected = model.frame(model.scene.state(T_SCENE), np.random.default_rng(0))
        np.testing.assert_array_equal(frame.s21, expected)
        assert source.stats.frames == 2 and source.stats.drops == 0


@pytest.mark.parametrize("pipelined", [True, False])
def test_every_acquisition_schedule_gives_the_same_frame(pipelined: bool) -> None:
    geometry = small_geometry()
    with simulator(geometry) as sim:
        with make_source(sim, geometry, pipelined=pipelined) as source:
            frame = source.read_frame()
        model = RadarSimulator(Scene(SPEC), geometry, SWEEP, FrontEndErrors.draw(6, seed=5, noise_std=0.0))
        np.testing.assert_array_equal(
            frame.s21, model.frame(model.scene.state(T_SCENE), np.random.default_rng(0))
        )


def test_reconnects_after_the_instruments_restart_and_keeps_counting() -> None:
    geometry = small_geometry()
    sim = simulator(geometry).start()
    vna_port, switch_port = sim.vna_port, sim.switch_port
    source = make_source(sim, geometry)
    replacement: list[SimulatedRadar] = []
    try:
        first = source.read_frame()
        assert first is not None and first.seq == 0
        sim.stop()  # power cut: connections drop, nothing listens

        def reboot() -> None:
            time.sleep(0.4)
            replacement.append(simulator(geometry, vna_port=vna_port, switch_port=switch_port).start())

        threading.Thread(target=reboot, daemon=True).start()
        frame = source.read_frame()  # blocks through the outage
        assert frame is not None
        assert frame.seq >= 2  # the dropped attempt left a gap in seq
        stats = source.stats
        assert stats.frames == 2 and stats.drops >= 1 and stats.reconnects == 1
        assert stats.last_error is not None
        assert source.read_frame().seq == frame.seq + 1
    finally:
        source.close()
        sim.stop()
        for r in replacement:
            r.stop()


def test_setup_errors_are_not_retried() -> None:
    geometry = small_geometry()
    with simulator(geometry, dialect="rs") as sim:
        source = make_source(sim, geometry)  # the driver speaks keysight
        with pytest.raises(VnaIdentityError):
            source.read_frame()
        assert source.stats.reconnects == 0


def test_a_garbled_idn_is_retried_until_the_vna_answers_properly() -> None:
    """An empty *IDN? reply (a VNA still booting) once stopped the radar for good, as a setup error."""
    geometry = small_geometry()
    healthy = SIM_MODELS["keysight"]
    with simulator(geometry, vna_model=replace(healthy, idn="")) as sim:
        source = make_source(sim, geometry)  # not `with`: entering opens once and fails fast
        threading.Timer(0.3, lambda: setattr(sim.state.vna, "model", healthy)).start()
        try:
            frame = source.read_frame()  # blocks through the failed identifications
        finally:
            source.close()
        assert frame is not None and frame.s21.shape == (geometry.n_channels, SWEEP.points)
        assert "'*IDN?'" in (source.stats.last_error or "")


def test_an_unusable_readback_is_a_radar_fault_that_is_retried() -> None:
    """A NaN points read-back once escaped read_frame() as a bare ValueError and killed the caller."""
    geometry = small_geometry()
    with (
        simulator(geometry, with_vna=False) as sim,
        ScriptedVna({**KEYSIGHT_REPLIES, "SENS1:SWE:POIN?": "NAN"}) as peer,
    ):
        vna = VnaDriver(peer.resource, "keysight", KEYSIGHT_SWEEP, timeout_ms=300)
        switch = SwitchClient(sim.switch_url, timeout_ms=300)
        options = {"reconnect_initial_s": 0.01, "reconnect_max_backoff_s": 0.01, "max_reconnect_attempts": 3}
        source = RadarSource(vna, switch, geometry, **options)  # type: ignore[arg-type]
        try:
            with pytest.raises(VnaProtocolError, match=r"'SENS1:SWE:POIN\?': expected a finite number"):
                source.read_frame()
        finally:
            source.close()
        assert peer.received.count("*IDN?") == 3  # retried like any instrument fault


def test_gives_up_after_max_reconnect_attempts() -> None:
    geometry = small_geometry()
    sim = simulator(geometry).start()
    source = make_source(sim, geometry, max_reconnect_attempts=2)
    sim.stop()
    t0 = time.perf_counter()
    with pytest.raises(RadarError):
        source.read_frame()
    assert time.perf_counter() - t0 < 3.0


def test_close_from_another_thread_ends_the_reconnect_wait() -> None:
    geometry = small_geometry()
    sim = simulator(geometry).start()
    source = make_source(sim, geometry, reconnect_initial_s=5.0, reconnect_max_backoff_s=5.0)
    sim.stop()
    threading.Timer(0.3, source.close).start()
    t0 = time.perf_counter()
    assert source.read_frame() is None
    assert time.perf_counter() - t0 < 3.0
    assert source.closed


def test_frames_are_paced_to_the_frame_rate() -> None:
    geometry = small_geometry()
    with simulator(geometry) as sim:
        source = make_source(sim, geometry, frame_rate_hz=20.0)
        with source:
            stamps = []
            for frame in source.frames():
                stamps.append(frame.t_ns)
                if len(stamps) == 4:
                    break
        gaps = np.diff(stamps) / 1e9
        assert np.all(gaps >= 0.045) and np.all(gaps < 0.2)


def test_the_live_pipeline_radar_reads_no_faster_than_the_configured_frame_rate() -> None:
    """The engine was trained at radar.frame_rate_hz: a VNA that sweeps faster (here about 10
    frames/s unpaced) must still deliver frames at the configured 4 per second to the pipeline."""
    from vrclip.edge.config import EdgeConfig, parse_config
    from vrclip.edge.pipeline.sources import ScpiRadarSource

    with simulator(load_geometry(), sweep_time_s=0.2e-3, clock=None) as sim:
        data = EdgeConfig().model_dump(mode="json")
        data["radar"].update(
            sweep=SWEEP.model_dump(mode="json"),
            vna={"resource": sim.vna_resource, "timeout_ms": 500, "dialect": "keysight"},
            switch={"port": sim.switch_url},
            frame_rate_hz=4.0,
        )
        source = ScpiRadarSource(parse_config(data, source="test"))
        source.open()
        try:
            stamps = [source.read().t_ns for _ in range(4)]  # type: ignore[union-attr]
        finally:
            source.close()
    # Frame k starts on the 0.25 s grid or later (a slow acquisition may push one frame late; the
    # grid then catches up), never sooner: the pacing's guarantee, whatever the machine's load.
    since_first = (np.asarray(stamps) - stamps[0]) / 1e9
    assert np.all(since_first >= 0.25 * np.arange(4) - 0.01), since_first


def test_from_config() -> None:
    with simulator(load_geometry()) as sim:
        config = RadarConfig.model_validate(
            {
                "vna": {"resource": sim.vna_resource, "timeout_ms": 500},
                "sweep": SWEEP.model_dump(),
                "switch": {"port": sim.switch_url},
                "frame_rate_hz": 5.0,
            }
        )
        source = RadarSource.from_config(config)
        assert source.frame_rate_hz == 5.0 and source.geometry.n_channels == 144
        with source:
            assert source.read_frame().s21.shape == (144, 21)


def make_triggered_source(sim: SimulatedRadar, geometry: ArrayGeometry, dialect: str, **kwargs: object):
    """The switch steps on the VNA's sweep-end pulse (radar.switch.step = "trigger")."""
    vna = VnaDriver(sim.vna_resource, dialect, SWEEP, timeout_ms=300, trigger_output=True)
    switch = SwitchClient(sim.switch_url, timeout_ms=300)
    options: dict[str, object] = {
        "reconnect_initial_s": 0.05,
        "reconnect_max_backoff_s": 0.2,
        "step": "trigger",
    }
    options.update(kwargs)
    return RadarSource(vna, switch, geometry, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("dialect", "pipelined"), [("keysight", True), ("rs", True), ("keysight", False)])
def test_hardware_stepped_frames_equal_the_model_frame_after_frame(dialect: str, pipelined: bool) -> None:
    geometry = small_geometry()
    with simulator(geometry, dialect=dialect) as sim:
        with make_triggered_source(sim, geometry, dialect, pipelined=pipelined) as source:
            frames = [source.read_frame() for _ in range(3)]
        model = RadarSimulator(Scene(SPEC), geometry, SWEEP, FrontEndErrors.draw(6, seed=5, noise_std=0.0))
        expected = model.frame(model.scene.state(T_SCENE), np.random.default_rng(0))
        for frame in frames:  # each frame starts on the first pair again: the sequence wrapped
            np.testing.assert_array_equal(frame.s21, expected)
        assert sim.state.switch.steps == 3 * geometry.n_channels and sim.state.switch.armed
        assert source.stats.drops == 0


def test_a_missed_trigger_pulse_drops_one_frame_and_rearms() -> None:
    """A loose cable: the controller misses pulses. The frame is dropped, never mislabelled."""
    geometry = small_geometry()
    with simulator(geometry) as sim:
        with make_triggered_source(sim, geometry, "keysight") as source:
            assert source.read_frame() is not None
            listeners = sim.front_end.trigger_listeners
            cable = listeners.pop()
            dropped_pulses = [0]

            def loose() -> None:  # passes every pulse but the third
                dropped_pulses[0] += 1
                if dropped_pulses[0] != 3:
                    cable()

            listeners.append(loose)
            frame = source.read_frame()
            assert frame is not None and frame.seq == 2  # seq 1 was dropped; the switch was re-armed
            assert source.stats.drops == 1 and "missed or doubled trigger pulses" in source.stats.last_error
        model = RadarSimulator(Scene(SPEC), geometry, SWEEP, FrontEndErrors.draw(6, seed=5, noise_std=0.0))
        np.testing.assert_array_equal(
            frame.s21, model.frame(model.scene.state(T_SCENE), np.random.default_rng(0))
        )


def test_trigger_stepping_needs_a_driver_with_the_trigger_output() -> None:
    geometry = small_geometry()
    vna = VnaDriver("TCPIP0::127.0.0.1::1::SOCKET", "keysight", SWEEP)
    with pytest.raises(ValueError, match="trigger_output=True"):
        RadarSource(vna, SwitchClient("tcp://127.0.0.1:1"), geometry, step="trigger")
    with pytest.raises(ValueError, match=r"radar\.switch\.step = 'sideways'"):
        RadarSource(vna, SwitchClient("tcp://127.0.0.1:1"), geometry, step="sideways")


def test_from_config_wires_the_trigger_output_for_trigger_stepping() -> None:
    radar = RadarConfig()
    radar.switch.step = "trigger"
    source = RadarSource.from_config(radar)
    assert source.step == "trigger" and source.vna.trigger_output


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("nan", "data holds nan"),
        ("truncated", "does not end after its header"),
        ("bad-header", "block header"),
        ("long-block", "does not end after its header"),
    ],
)
def test_chained_acquisition_refuses_bad_traces_and_recovers(fault: str, message: str) -> None:
    """The exact-length reads of hardware-stepped frames check every reply as the slow path does."""
    geometry = small_geometry()
    with simulator(geometry) as sim, make_triggered_source(sim, geometry, "keysight") as source:
        assert source.read_frame() is not None
        sim.state.vna.fault = fault

        def heal() -> None:
            time.sleep(0.5)
            sim.state.vna.fault = None

        threading.Thread(target=heal, daemon=True).start()
        frame = source.read_frame()  # blocks through the dropped frames and the reconnection
        assert frame is not None and source.stats.drops >= 1
        assert message in (source.stats.last_error or "")


def _radar_goes_down_and_up_again(fault: str, said: str, **vna: object) -> None:
    """Run the runtime's radar capture on the simulated rig, act out `fault` in the VNA once frames
    flow, and check the radar is marked down (its last error holding `said`), then up again once
    the fault clears."""
    from vrclip.edge.config import EdgeConfig, parse_config
    from vrclip.edge.events.health import Health
    from vrclip.edge.pipeline.queues import DropOldestQueue
    from vrclip.edge.pipeline.sources import CaptureThread, ScpiRadarSource

    with simulator(load_geometry(), sweep_time_s=0.1e-3, clock=None) as sim:
        data = EdgeConfig().model_dump(mode="json")
        data["radar"].update(
            sweep=SWEEP.model_dump(mode="json"),
            vna={"resource": sim.vna_resource, "timeout_ms": 500, "dialect": "keysight", **vna},
            switch={"port": sim.switch_url},
            frame_rate_hz=50.0,
        )
        config = parse_config(data, source="test")
        health = Health(("radar",))
        capture = CaptureThread(lambda: ScpiRadarSource(config), "radar", DropOldestQueue(4), health)

        def radar() -> dict:
            return health.snapshot()["modalities"]["radar"]

        def wait_for(condition, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if condition():
                    return True
                time.sleep(0.05)
            return False

        capture.start()
        try:
            assert wait_for(lambda: health.snapshot()["sources"].get("radar", {}).get("frames_in", 0) >= 1)
            assert radar()["state"] == "up"
            sim.state.vna.fault = fault
            assert wait_for(lambda: radar()["state"] == "down"), radar()
            assert radar()["last_error"] and said in radar()["last_error"], radar()
            sim.state.vna.fault = None
            assert wait_for(lambda: radar()["state"] == "up"), radar()  # reopened once the fault cleared
        finally:
            capture.stop()


def test_the_live_pipeline_marks_the_radar_down_while_every_sweep_fails() -> None:
    """A VNA that returns NaN on every sweep (overloaded, uncalibrated) reconnects fine each time, so
    the runtime's radar read dropped frames forever inside one read: /status kept saying "radar up"
    (no error) while thousands of "frame dropped" warnings a minute went to the journal. The capture
    thread must see the fault: the radar goes down with the reason and is reopened with backoff."""
    _radar_goes_down_and_up_again("nan", "data holds nan")


def test_the_live_pipeline_marks_the_radar_down_while_the_vna_is_silent() -> None:
    """A VNA that stops answering after start-up (unplugged, hung) was retried inside one read
    without end, so /status kept showing the radar up, at 0 frames/s, where the same outage at
    start-up shows it down. After RADAR_MAX_RECONNECT_ATTEMPTS failed reconnections the capture
    thread marks it down with the reason, and brings it back once the VNA answers again."""
    from vrclip.edge.config import EdgeConfig
    from vrclip.edge.pipeline.sources import ScpiRadarSource

    config = EdgeConfig.model_validate({"radar": {"vna": {"reconnect_max_backoff_s": 0.2}}})
    assert ScpiRadarSource(config).reopen_max_backoff_s == 0.2
    _radar_goes_down_and_up_again(
        "silent", "no reply within 300 ms", timeout_ms=300, reconnect_max_backoff_s=0.2
    )
