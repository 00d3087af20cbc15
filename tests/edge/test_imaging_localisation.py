"""End to end on the simulated rig: a walking person is found within 0.15 m, in the open and behind a wall.

The pipeline runs as it would on site: front-end errors drawn for the rig, the calibration a
wizard would measure from them, a running-mean background that starts with the person already
in the room (no empty-room capture), 10 frames/s, the default 128 x 128 floor grid and the fast
CPU imager. The first 3 s prime the background; then every frame is scored against the torso's
ground-truth floor position (`PersonState.position`).
"""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.imaging.pipeline import ImagingPipeline
from vrclip.edge.sim.occlusion import crosses
from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator
from vrclip.edge.sim.scene import Scene, SceneSpec, SceneState

PRIME_S = 3.0
TOLERANCE_M = 0.15


def _fully_occluded(scene: Scene, geometry: ArrayGeometry, state: SceneState) -> bool:
    """Every antenna's straight path to every body scatterer goes through an occluder."""
    antennas = np.concatenate([geometry.tx_positions, geometry.rx_positions])[:, None, :]
    body = state.people[0].scatterers[None, :, :]
    return any(bool(crosses(antennas, body, occ).all()) for occ in scene.occluders)


def _longest_occluded_stretch(
    scene: Scene, geometry: ArrayGeometry, rate: float, horizon_s: float
) -> tuple[int, int]:
    """(first frame, length) of the longest run of fully occluded frames after the priming time."""
    flags = [_fully_occluded(scene, geometry, scene.state(k / rate)) for k in range(int(horizon_s * rate))]
    best, start = (0, 0), None
    for k, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            if start / rate >= PRIME_S and k - start > best[1]:
                best = (start, k - start)
            start = None
    return best


def _localisation_errors(
    scene: Scene, geometry: ArrayGeometry, first: int, count: int, scored: range
) -> tuple[np.ndarray, float]:
    """Top-detection error (m) on the scored frames, and false detections (> 0.5 m off) per scored frame."""
    cfg = EdgeConfig()
    rate = cfg.radar.frame_rate_hz
    errors = FrontEndErrors.draw(geometry.n_channels, seed=2024)
    sim = RadarSimulator(scene, geometry, cfg.radar.sweep, errors)
    pipe = ImagingPipeline(cfg, geometry, ChannelCalibration.from_front_end_errors(errors), impl="cpu")
    rng = np.random.default_rng(9)
    misses, false_alarms = [], 0
    try:
        for k in range(first, first + count):
            state = scene.state(k / rate)
            result = pipe.process(sim.frame(state, rng))
            if k not in scored:
                continue
            truth = state.people[0].position
            dist = [float(np.hypot(d.x_m - truth[0], d.y_m - truth[1])) for d in result.detections]
            misses.append(dist[0] if dist else np.inf)
            false_alarms += sum(d > 0.5 for d in dist)
    finally:
        pipe.close()
    return np.asarray(misses), false_alarms / len(scored)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 7])
def test_walking_person_is_localised_in_the_open(geometry: ArrayGeometry, seed: int) -> None:
    scene = Scene(SceneSpec(occlusion="none", seed=seed, world_seed=seed))
    prime = int(PRIME_S * EdgeConfig().radar.frame_rate_hz)
    scored = range(prime, prime + 40)
    err, false_alarms = _localisation_errors(scene, geometry, 0, prime + 40, scored)
    within = float(np.mean(err <= TOLERANCE_M))
    assert within >= 0.95, f"{within:.1%} of frames within {TOLERANCE_M} m; errors: {np.round(err, 3)}"
    assert false_alarms <= 0.25


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "horizon_s"), [(2, 20.0), (7, 60.0)])
def test_walking_person_is_localised_behind_the_wall(
    geometry: ArrayGeometry, seed: int, horizon_s: float
) -> None:
    scene = Scene(SceneSpec(occlusion="wall", seed=seed, world_seed=seed))
    rate = EdgeConfig().radar.frame_rate_hz
    start, length = _longest_occluded_stretch(scene, geometry, rate, horizon_s)
    assert length >= 30, "the scene no longer walks behind the wall long enough to test"
    prime = int(PRIME_S * rate)
    scored = range(start, start + length)
    for k in (scored[0], scored[-1]):
        state = scene.state(k / rate)
        pos = state.people[0].position
        partition = scene.occluders[0]
        assert pos[1] > partition.y0 and pos[0] < max(partition.x0, partition.x1)  # behind it, not beside it
    err, false_alarms = _localisation_errors(scene, geometry, start - prime, prime + length, scored)
    within = float(np.mean(err <= TOLERANCE_M))
    assert within >= 0.95, (
        f"{within:.1%} of {length} occluded frames within {TOLERANCE_M} m; errors: {np.round(err, 3)}"
    )
    assert false_alarms <= 0.25
