"""Channel health: a dead path is told from a live one by level and range-profile structure,
whatever moves in the room between frames."""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.edge.geometry import ArrayGeometry
from vrclip.firmware_tools.channel_health import channel_health, duplicated_channels, port_pattern

POINTS = 201
FREQS = 0.8e9 + 10e6 * np.arange(POINTS)


def echoes(rng: np.random.Generator, delays_s: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """One sweep holding point echoes at `delays_s`."""
    phase = -2j * np.pi * FREQS[None, :] * delays_s[:, None]
    return (amplitudes[:, None] * np.exp(phase)).sum(axis=0)


def noise(rng: np.random.Generator, std: float) -> np.ndarray:
    return std * (rng.standard_normal(POINTS) + 1j * rng.standard_normal(POINTS))


def rig_frames(channels: int, dead: list[int], frames: int = 4, seed: int = 0) -> np.ndarray:
    """Frames of a rig whose live channels see coupling, walls and a person who moves a lot between
    frames, and whose dead channels see the noise floor only."""
    rng = np.random.default_rng(seed)
    out = np.empty((frames, channels, POINTS), complex)
    statics = [rng.uniform(2e-9, 60e-9, 4) for _ in range(channels)]
    for f in range(frames):
        person = rng.uniform(10e-9, 50e-9)  # somewhere else on every frame
        for c in range(channels):
            if c in dead:
                out[f, c] = noise(rng, 2e-4)
            else:
                static = echoes(rng, statics[c], np.array([0.1, 0.05, 0.03, 0.02]))
                out[f, c] = static + echoes(rng, np.array([person]), np.array([0.2])) + noise(rng, 2e-4)
    return out


def test_dead_paths_are_found_however_much_the_room_changes() -> None:
    health = channel_health(rig_frames(12, dead=[3, 7]))
    assert health.dead() == [3, 7]
    assert health.suspect() == []
    live = [c for c in range(12) if c not in (3, 7)]
    assert health.structure[live].min() > 0.7
    assert health.level_db[[3, 7]].max() < -40


def test_a_live_but_weak_path_is_suspect_not_dead() -> None:
    frames = rig_frames(12, dead=[])
    frames[:, 5] *= 0.2  # 14 dB down: a loose connector
    health = channel_health(frames)
    assert health.dead() == []
    assert health.suspect() == [5]


def test_a_loud_channel_of_pure_noise_is_dead() -> None:
    """Interference on an open path can be as loud as a live one; it has no echoes in it."""
    frames = rig_frames(12, dead=[])
    rng = np.random.default_rng(3)
    frames[:, 9] = [noise(rng, 0.1) for _ in range(frames.shape[0])]
    health = channel_health(frames)
    assert abs(health.level_db[9]) < 10
    assert health.dead() == [9]


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="frames >= 1"):
        channel_health(np.zeros((4, POINTS)))


def test_copies_of_one_path_mean_the_switch_did_not_move() -> None:
    rng = np.random.default_rng(1)
    one = echoes(rng, np.array([5e-9, 20e-9]), np.array([0.1, 0.04]))
    stuck = np.stack([one * 1.01**c * np.exp(1j * c) + noise(rng, 1e-6) for c in range(6)])
    assert duplicated_channels(stuck) == [1, 2, 3, 4, 5]
    working = rig_frames(6, dead=[])[0]
    assert duplicated_channels(working) == []


def test_failures_sharing_a_port_name_the_port(geometry: ArrayGeometry) -> None:
    tx3 = [c for c in range(geometry.n_channels) if geometry.pairs[c][0] == 3]
    rx0 = [c for c in range(geometry.n_channels) if geometry.pairs[c][1] == 0]
    assert port_pattern([*tx3, 50], geometry) == ["Tx port 3 (T4)"]
    assert port_pattern(sorted(set(tx3) | set(rx0)), geometry) == ["Tx port 3 (T4)", "Rx port 0 (R1)"]
    assert port_pattern([50, 51], geometry) == []
