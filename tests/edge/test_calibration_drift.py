"""The running rig tells how far its radar channels have drifted since their calibration, from each
channel's direct coupling: nothing moved reads 1 whoever walks by, a common shift is harmless, and
paths that moved apart are reported with what to do."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import SPEED_OF_LIGHT, EdgeConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.frames import CLOCK_REALTIME, RadarFrame
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging import drift
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.imaging.drift import CouplingReference, DriftMonitor
from vrclip.edge.pipeline import calibration_watch
from vrclip.edge.pipeline.calibration_watch import CalibrationWatch
from vrclip.edge.pipeline.sync import SyncedFrame
from vrclip.edge.sim.radar import SIMULATED_FRONT_END_SEED, FrontEndErrors, RadarSimulator, sweep_frequencies
from vrclip.edge.sim.scene import Scene, SceneSpec

CONFIG = EdgeConfig()
FREQS = sweep_frequencies(CONFIG.radar.sweep)
ERRORS = FrontEndErrors.draw(144, SIMULATED_FRONT_END_SEED)


def reference(geometry: ArrayGeometry, errors: FrontEndErrors = ERRORS) -> CouplingReference:
    """What the wizard records: the empty room's mean frame, searched where coupling must be."""
    empty = Scene(SceneSpec(room=CONFIG.room, people=(), empty_room=True, seed=0))
    sim = RadarSimulator(empty, geometry, CONFIG.radar.sweep, errors)
    rng = np.random.default_rng(0)
    mean = np.mean([sim.frame(empty.state(0.1 * i), rng) for i in range(10)], axis=0)
    expected = errors.delay_s + geometry.direct_path_lengths() / SPEED_OF_LIGHT
    return CouplingReference.measure(mean, FREQS, expected)


def walking_frames(geometry: ArrayGeometry, errors: FrontEndErrors, n: int, seed: int = 3):  # type: ignore[no-untyped-def]
    scene = Scene(SceneSpec(room=CONFIG.room, people=("a", "b", "c"), seed=seed))
    sim = RadarSimulator(scene, geometry, CONFIG.radar.sweep, errors)
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield sim.frame(scene.state(0.1 * i), rng)


def drift_of(geometry: ArrayGeometry, errors: FrontEndErrors) -> drift.Drift:
    monitor = DriftMonitor(reference(geometry), FREQS)
    for frame in walking_frames(geometry, errors, drift.MIN_FRAMES):
        monitor.update(frame)
    result = monitor.drift()
    assert result is not None
    return result


def test_the_reference_is_each_channels_coupling(geometry: ArrayGeometry) -> None:
    ref = reference(geometry)
    expected = ERRORS.delay_s + geometry.direct_path_lengths() / SPEED_OF_LIGHT
    assert np.abs(ref.delay_s - expected).max() < 0.1e-9  # found where it is, not at a wall 15 ns out
    assert np.all(np.abs(ref.value) > 0.02)


def test_a_rig_as_calibrated_reads_one_whoever_walks_by(geometry: ArrayGeometry) -> None:
    steady = drift_of(geometry, ERRORS)
    assert steady.coherence > 0.999 and not steady.drifted and steady.weak_channels == ()
    # The whole rig shifted alike (the VNA's reference plane): the image does not blur.
    common = drift_of(geometry, dataclasses.replace(ERRORS, delay_s=ERRORS.delay_s + 100e-12))
    assert common.coherence > 0.999 and not common.drifted


def test_paths_that_moved_apart_or_weakened_are_reported(geometry: ArrayGeometry) -> None:
    rng = np.random.default_rng(9)
    moved = drift_of(
        geometry, dataclasses.replace(ERRORS, delay_s=ERRORS.delay_s + rng.normal(0, 50e-12, 144))
    )
    assert moved.drifted and moved.coherence < 0.9 and moved.phase_spread_deg > 25
    slight = drift_of(
        geometry, dataclasses.replace(ERRORS, delay_s=ERRORS.delay_s + rng.normal(0, 10e-12, 144))
    )
    assert not slight.drifted
    gain = ERRORS.gain.copy()
    gain[[7, 70]] *= 0.3  # 10 dB down: a loose connector
    weak = drift_of(geometry, dataclasses.replace(ERRORS, gain=gain))
    assert weak.weak_channels == (7, 70) and not weak.drifted


def test_the_reference_travels_in_the_calibration_file_and_is_checked(
    tmp_path: Path, geometry: ArrayGeometry
) -> None:
    calibration = dataclasses.replace(
        ChannelCalibration.from_front_end_errors(ERRORS), coupling=reference(geometry)
    )
    path = tmp_path / "calibration.json"
    calibration.save(path)
    loaded = ChannelCalibration.load(path, 144)
    assert loaded.coupling is not None
    np.testing.assert_allclose(loaded.coupling.value, calibration.coupling.value)  # type: ignore[union-attr]
    data = json.loads(path.read_text())
    for key, bad, said in (
        ("value_re", [0.1] * 143, "144 finite numbers"),
        ("delay_s", [float("nan")] * 144, "144 finite numbers"),
        ("delay_s", [1e-3] * 144, "delay_s outside"),
        # Finite and non-zero, but dividing by it overflows: the coherence would read NaN, which
        # /status (strict JSON) cannot serve, and a NaN never warns.
        ("value_re", [5e-324] * 144, "too small"),
    ):
        broken = json.loads(json.dumps(data))
        broken["coupling_reference"][key] = bad
        if key == "value_re":
            broken["coupling_reference"]["value_im"] = [0.0] * 144
        path.write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=said):
            ChannelCalibration.load(path, 144)
    # Files from before the reference (and hand-made ones) still load, without the watch.
    del data["coupling_reference"]
    path.write_text(json.dumps(data))
    assert ChannelCalibration.load(path, 144).coupling is None


def test_a_long_sweeps_reference_keeps_each_delay_next_to_the_expected_one(tmp_path: Path) -> None:
    """Delays were found modulo the sweep's unambiguous range (1 / step); a coupling just below zero
    read as nearly that range, 600 ns at 1201 points over 2 GHz, which the file check refuses: the
    wizard wrote a calibration that `run` then could not load."""
    freqs = np.linspace(0.8e9, 2.8e9, 1201)
    true_delay = np.array([-0.4e-9, 3e-9, 450e-9])
    empty = np.exp(-2j * np.pi * freqs[None, :] * true_delay[:, None])
    ref = CouplingReference.measure(empty, freqs, true_delay)
    np.testing.assert_allclose(ref.delay_s, true_delay, atol=0.05e-9)
    again = CouplingReference.from_dict(ref.to_dict(), 3, "calibration.json")
    np.testing.assert_allclose(again.delay_s, ref.delay_s)


def synced(s21: np.ndarray, seq: int) -> SyncedFrame:
    return SyncedFrame(
        RadarFrame(seq, seq * 100_000_000, CLOCK_REALTIME, s21.astype(np.complex64)), None, None
    )


def test_the_service_says_once_that_the_calibration_drifted(
    geometry: ArrayGeometry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calibration_watch, "CHECK_EVERY", 20)
    calibration = dataclasses.replace(
        ChannelCalibration.from_front_end_errors(ERRORS), coupling=reference(geometry)
    )
    warnings: list[str] = []
    watch = CalibrationWatch(calibration, FREQS, warnings.append)
    assert watch.active and watch.stats() == {}
    rng = np.random.default_rng(5)
    moved = dataclasses.replace(ERRORS, delay_s=ERRORS.delay_s + rng.normal(0, 60e-12, 144))
    for i, frame in enumerate(walking_frames(geometry, moved, 120)):
        watch.offer(synced(frame, i))
    assert len(warnings) == 1
    assert "drifted since their calibration" in warnings[0]
    assert "vrclip-calibrate channels" in warnings[0]
    figures = watch.stats()["coupling"]
    assert figures["coherence"] < 0.9 and figures["frames"] == 120
    assert not CalibrationWatch(
        ChannelCalibration.from_front_end_errors(ERRORS), FREQS, warnings.append
    ).active


def test_no_watch_on_another_sweep_than_the_reference_was_measured_on(geometry: ArrayGeometry) -> None:
    """The coupling's value at its delay belongs to the sweep it was measured on: on a sweep of 101
    points (50-ns unambiguous delay) an unchanged rig read 0.92 with four 'weakened' channels. The
    runtime already warns that the calibration is for another sweep; the watch stays off there rather
    than publish figures that mean nothing (or tell the operator the paths drifted)."""
    calibration = dataclasses.replace(
        ChannelCalibration.from_front_end_errors(ERRORS),
        coupling=reference(geometry),
        sweep=(CONFIG.radar.sweep.start_hz, CONFIG.radar.sweep.stop_hz, CONFIG.radar.sweep.points),
    )
    assert CalibrationWatch(calibration, FREQS, print).active
    other = sweep_frequencies(CONFIG.radar.sweep.model_copy(update={"points": 101}))
    assert not CalibrationWatch(calibration, other, print).active


class ScriptedMonitor:
    """Stands in for DriftMonitor: each look reads the next coherence."""

    def __init__(self, readings: list[float]) -> None:
        self.readings = iter(readings)

    def drift(self) -> drift.Drift:
        return drift.Drift(100, next(self.readings), 0.0, 0.0, ())


def test_a_rig_hovering_at_the_limit_is_not_warned_every_check() -> None:
    """Coherence wobbling around 0.9 must not repeat the warning every 10 s; a rig that clearly
    recovered and drifts again is told again."""
    readings = [0.85, 0.91, 0.88, 0.905, 0.95, 0.80]
    warnings: list[str] = []
    watch = CalibrationWatch(None, FREQS, warnings.append)
    watch.monitor = ScriptedMonitor(readings)  # type: ignore[assignment]
    for _ in readings:
        watch._check()
    assert len(warnings) == 2  # at 0.85, and at 0.80 after coming back to 0.95
