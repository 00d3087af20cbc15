"""The simulated instruments in a process of their own (what `run --simulate` and the bench use)."""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.edge.config import ArrayConfig, SweepConfig
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.sim_process import SimulatorProcess, _errors_from_dict, _errors_to_dict
from vrclip.edge.radar.source import RadarSource
from vrclip.edge.radar.switch import SwitchClient
from vrclip.edge.radar.vna import VnaDriver
from vrclip.edge.sim.radar import FrontEndErrors
from vrclip.edge.sim.scene import SceneSpec

SWEEP = SweepConfig(start_hz=0.8e9, stop_hz=2.8e9, points=21, if_bandwidth_hz=1e6)


def test_front_end_errors_survive_the_trip_to_the_child() -> None:
    errors = FrontEndErrors.draw(144, seed=5)
    back = _errors_from_dict(_errors_to_dict(errors))
    np.testing.assert_array_equal(back.gain, errors.gain)
    np.testing.assert_array_equal(back.delay_s, errors.delay_s)
    assert back.noise_std == errors.noise_std


def test_child_serves_whole_frames_and_exits_when_stopped() -> None:
    spec = SceneSpec(people=("person-00",), seed=3)
    child = SimulatorProcess(spec, SWEEP, sweep_time_s=0.1e-3, errors=FrontEndErrors.draw(144, seed=5))
    with child:
        proc = child._proc
        assert proc is not None and proc.poll() is None
        vna = VnaDriver(child.vna_resource, "keysight", SWEEP, trigger_output=True)
        source = RadarSource(vna, SwitchClient(child.switch_url), load_geometry(), step="trigger")
        with source:
            frame = source.read_frame()
        assert frame is not None and frame.s21.shape == (144, SWEEP.points)
        assert np.isfinite(frame.s21).all() and np.abs(frame.s21).max() > 0
    assert proc.wait(timeout=10) is not None  # stdin closed: the child is gone


def test_a_child_that_cannot_start_is_a_clear_error() -> None:
    bad = ArrayConfig(geometry_file="/nonexistent/array.toml")
    with pytest.raises(UserError, match="radar simulator process did not start"):
        SimulatorProcess(SceneSpec(), SWEEP, array=bad).start()
