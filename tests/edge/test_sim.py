"""The synthetic world: physically sane radar, consistent identities, occlusion and lighting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import SPEED_OF_LIGHT, EdgeConfig, SweepConfig
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.sim.camera import PinholeCamera, SceneRenderer
from vrclip.edge.sim.depth import DepthSimulator
from vrclip.edge.sim.identity import make_identity
from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator, point_response, sweep_frequencies
from vrclip.edge.sim.rig import SimulatedRig
from vrclip.edge.sim.scene import Scene, SceneSpec


@pytest.mark.parametrize("target", [(0.0, 2.0, 1.0), (1.3, 4.1, 0.6), (-2.0, 5.5, 1.5)])
def test_point_target_range_profile_peaks_at_true_range(geometry: ArrayGeometry, target: tuple) -> None:
    sweep = SweepConfig()
    freqs = sweep_frequencies(sweep)
    s21 = point_response(geometry, freqs, np.array([target]), np.array([1.0]))
    pad = 16 * len(freqs)
    profile = np.abs(np.fft.ifft(s21 * np.hanning(len(freqs)), n=pad, axis=1))
    # IFFT bin k of a sweep with step df corresponds to round-trip path c*k/(pad*df); report one-way range.
    bin_path = SPEED_OF_LIGHT / (pad * sweep.step_hz)
    measured = profile.argmax(axis=1) * bin_path / 2
    true = geometry.path_lengths(np.array(target)) / 2
    assert np.all(np.abs(measured - true) <= sweep.range_resolution_m)


@pytest.mark.parametrize("even", [True, False])
def test_point_response_is_the_direct_sum_on_even_and_uneven_sweeps(
    geometry: ArrayGeometry, even: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running-product evaluation (an even sweep) and the direct one (an uneven grid) both give
    sum_s a_s exp(-j k (R_tx + R_rx)) / (R_tx R_rx), computed here element by element in float64,
    also when the reflectors are summed in chunks."""
    from vrclip.edge.sim import radar

    monkeypatch.setattr(radar, "_MAX_TERMS", 3 * 201 * 7)  # chunks of 7 reflectors
    rng = np.random.default_rng(5)
    freqs = sweep_frequencies(SweepConfig())
    if not even:
        freqs = np.sort(freqs + rng.uniform(-2e6, 2e6, size=freqs.size))
    points = rng.uniform([-2.0, 1.0, 0.0], [2.0, 6.0, 2.0], size=(120, 3))
    amps = rng.uniform(0.2, 2.0, size=120)
    channels = np.array([0, 17, 143])
    got = point_response(geometry, freqs, points, amps, channels=channels)
    k = 2 * np.pi * freqs / SPEED_OF_LIGHT
    for row, c in enumerate(channels):
        r_tx = np.linalg.norm(points - geometry.channel_tx[c], axis=1)
        r_rx = np.linalg.norm(points - geometry.channel_rx[c], axis=1)
        want = (amps / (r_tx * r_rx))[:, None] * np.exp(-1j * (r_tx + r_rx)[:, None] * k[None, :])
        np.testing.assert_allclose(got[row], want.sum(axis=0), rtol=1e-9, atol=1e-12)


def test_same_seed_same_world_different_seed_different_noise(geometry: ArrayGeometry) -> None:
    cfg = EdgeConfig()
    spec = SceneSpec(people=("a", "b"), occlusion="furniture", seed=7)
    frames = []
    for _ in range(2):
        scene = Scene(spec)
        sim = RadarSimulator(scene, geometry, cfg.radar.sweep)
        frames.append(sim.frame(scene.state(1.25), np.random.default_rng(3)))
    np.testing.assert_array_equal(frames[0], frames[1])
    other = RadarSimulator(Scene(spec), geometry, cfg.radar.sweep).frame(
        Scene(spec).state(1.25), np.random.default_rng(4)
    )
    assert not np.array_equal(frames[0], other)


def test_identities_differ_in_body_gait_and_appearance() -> None:
    people = [make_identity(f"p{i}") for i in range(30)]
    signatures = {
        (
            round(p.body.height_m, 3),
            p.appearance.shirt_rgb,
            round(p.gait.speed_mps, 3),
            round(p.gait.cadence_hz, 3),
        )
        for p in people
    }
    assert len(signatures) == 30
    assert len({p.appearance.shirt_rgb for p in people}) >= 28
    assert np.std([p.body.height_m for p in people]) > 0.08
    again = make_identity("p3")
    assert again.appearance == people[3].appearance and again.gait == people[3].gait
    np.testing.assert_array_equal(again.body.scatterers, people[3].body.scatterers)


def test_people_walk_inside_the_room_at_their_own_speed() -> None:
    spec = SceneSpec(people=("a",), seed=1)
    scene = Scene(spec)
    positions = np.array([scene.state(t).people[0].position for t in np.arange(0, 30, 0.1)])
    room = spec.room
    assert positions[:, 0].min() >= room.x_min_m and positions[:, 0].max() <= room.x_max_m
    assert positions[:, 1].min() >= room.y_min_m and positions[:, 1].max() <= room.y_max_m
    speed = np.hypot(*np.diff(positions, axis=0).T) / 0.1
    assert np.median(speed) == pytest.approx(scene.identities[0].gait.speed_mps, rel=0.05)


def test_empty_scene_is_a_user_error() -> None:
    with pytest.raises(UserError, match="empty"):
        Scene(SceneSpec(people=()))


def test_a_negative_seed_is_a_user_error_naming_the_option(tmp_path: Path) -> None:
    """`record --simulate --seed -1` and `dataset make --seed -1` ended in a traceback (numpy's
    "ValueError: expected non-negative integer" from the rig's noise generator, or from a dataset
    worker); now the scene and the dataset plan name the option."""
    from vrclip.edge.dataset import DatasetRequest, plan_sessions

    with pytest.raises(UserError, match="--seed -1"):
        SimulatedRig(EdgeConfig(), SceneSpec(seed=-1))
    with pytest.raises(UserError, match="--seed -1"):
        plan_sessions(DatasetRequest(tmp_path, seed=-1))
    Scene(SceneSpec(seed=0, world_seed=-1))  # the world seed only names people: any integer


def test_wall_attenuates_radar_only_slightly(geometry: ArrayGeometry) -> None:
    cfg = EdgeConfig()
    behind = None
    open_scene = Scene(SceneSpec(people=("a",), occlusion="none"))
    walled = Scene(SceneSpec(people=("a",), occlusion="wall"))
    wall = walled.occluders[0]
    for t in np.arange(0, 60, 0.5):  # find a moment the person is behind the partition
        p = walled.state(t).people[0].position
        if p[1] > wall.y0 + 0.5 and wall.x0 + 0.3 < p[0] < wall.x1 - 0.3:
            behind = t
            break
    assert behind is not None
    ideal = FrontEndErrors.ideal(geometry.n_channels)
    free = RadarSimulator(open_scene, geometry, cfg.radar.sweep, ideal).people_response(
        open_scene.state(behind)
    )
    through = RadarSimulator(walled, geometry, cfg.radar.sweep, ideal).people_response(walled.state(behind))
    ratio = np.linalg.norm(through) / np.linalg.norm(free)
    assert 0.3 < ratio < 0.95  # attenuated, not blocked


def test_camera_hides_a_person_behind_the_wall_and_the_zed_does_not_report_them() -> None:
    cfg = EdgeConfig()
    scene = Scene(SceneSpec(people=("a",), occlusion="wall"))
    wall = scene.occluders[0]
    renderer = SceneRenderer(scene, PinholeCamera(320, 180, 90.0, (0.0, 0.0, 1.6)))
    zed = DepthSimulator(scene, cfg.zed)
    hidden = visible = 0
    for t in np.arange(0, 60, 0.5):
        state = scene.state(t)
        person = state.people[0]
        fraction = renderer.visible_fraction(person)
        _, positions, seen = zed.observe(state)
        far_side = person.position[1] > wall.y0 + 0.3 and wall.x0 < person.position[0] < wall.x1 - 0.5
        if far_side:
            hidden += 1
            assert fraction == 0.0 and not seen[0] and len(positions) == 0
        elif fraction > 0.9:
            visible += 1
            assert seen[0]
            distance = float(np.hypot(*person.position))
            # stereo error grows with distance squared; allow four standard deviations
            assert np.hypot(*(positions[0] - person.position)) < 4 * (0.01 + 0.004 * distance**2) * np.sqrt(2)
    assert hidden > 0 and visible > 0


def test_lighting_darkens_and_adds_noise() -> None:
    means, noise = {}, {}
    for lighting in ("day", "night"):
        scene = Scene(SceneSpec(people=("a",), lighting=lighting))
        rgb, _ = SceneRenderer(scene, PinholeCamera(320, 180, 90.0, (0.0, 0.0, 1.6))).render(scene.state(0.0))
        assert rgb.shape == (180, 320, 3) and rgb.dtype == np.uint8
        means[lighting] = rgb.mean()
        noise[lighting] = np.diff(rgb[5:40, 5:300].astype(float), axis=1).std() / max(
            rgb[5:40, 5:300].mean(), 1
        )
    assert means["night"] < 0.3 * means["day"]
    assert noise["night"] > noise["day"]


def test_person_appears_in_the_image_with_their_clothes() -> None:
    scene = Scene(SceneSpec(people=("a",), occlusion="none"))
    renderer = SceneRenderer(scene, PinholeCamera(640, 360, 90.0, (0.0, 0.0, 1.6)))
    state = scene.state(0.0)
    with_person, _ = renderer.render(state)
    empty = type(state)(state.t_s, ())
    without, _ = renderer.render(empty)
    changed = np.abs(with_person.astype(int) - without.astype(int)).sum(axis=2) > 60
    assert changed.sum() > 500
    shirt = np.array(scene.identities[0].appearance.shirt_rgb)
    accent = np.array(scene.identities[0].appearance.accent_rgb)
    pixels = with_person[changed].astype(int)
    near = np.minimum(np.abs(pixels - shirt).sum(axis=1), np.abs(pixels - accent).sum(axis=1)) < 80
    assert near.sum() > 100


def test_rig_streams_are_time_ordered_and_labelled() -> None:
    cfg = EdgeConfig.model_validate(
        {"camera": {"width": 320, "height": 180, "fps": 10}, "radar": {"frame_rate_hz": 5}}
    )
    rig = SimulatedRig(cfg, SceneSpec(people=("a", "b")), start_ns=1_000)
    frames = list(rig.frames(1.0))
    assert len(frames) == rig.frame_count(1.0) == 5 + 10 + 15
    stamps = [f.t_ns for f in frames]
    assert stamps == sorted(stamps) and stamps[0] == 1_000
    assert all(f.clock == "SIMULATED" for f in frames)
    radar = [f for f in frames if f.__class__.__name__ == "RadarFrame"]
    assert radar[0].s21.shape == (144, 201) and radar[0].s21.dtype == np.complex64
    assert radar[0].truth.identities == ("a", "b") and radar[0].truth.positions.shape == (2, 2)


def test_a_named_identity_is_the_same_person_in_every_session() -> None:
    sessions = [Scene(SceneSpec(people=("id-007",), seed=s, world_seed=42)) for s in (1, 2)]
    a, b = (scene.identities[0] for scene in sessions)
    assert a.appearance == b.appearance and a.gait == b.gait
    np.testing.assert_array_equal(a.body.scatterers, b.body.scatterers)
    # ... while the session seed still changes where they walk
    assert not np.allclose(
        sessions[0].state(3.0).people[0].position, sessions[1].state(3.0).people[0].position
    )
    other_world = Scene(SceneSpec(people=("id-007",), seed=1, world_seed=43)).identities[0]
    assert other_world.appearance != a.appearance


def test_a_distorted_camera_projects_each_point_back_onto_the_pixel_whose_ray_it_lies_on() -> None:
    """The renderer casts `rays()` and the crops use `project()`: with a lens's distortion and an
    off-centre principal point the two must stay each other's inverse, or the simulated person and
    the crop cut for them drift apart towards the image edges."""
    camera = PinholeCamera(
        320, 180, 90.0, (0.3, -0.1, 1.9), 12.0, -6.0, (165.0, 86.0), (-0.12, 0.02, 1e-3, -5e-4, 0.0)
    )
    rays = camera.rays()
    rows, cols = np.meshgrid(np.arange(0, 180, 7), np.arange(0, 320, 9), indexing="ij")
    points = np.asarray(camera.position) + 2.5 * rays[rows, cols].reshape(-1, 3)
    pixels, depth = camera.project(points)
    np.testing.assert_allclose(pixels, np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1), atol=1e-6)
    assert np.all(depth > 0)
    plain = PinholeCamera(320, 180, 90.0, (0.3, -0.1, 1.9), 12.0, -6.0)
    corner = np.asarray(camera.position) + 2.5 * rays[2, 2]
    assert np.linalg.norm(plain.project(corner[None])[0] - camera.project(corner[None])[0]) > 20, (
        "at the corner the lens moves the image by tens of pixels"
    )
    # Far off the axis, where this lens model folds back, a point must not land inside the image.
    folding = PinholeCamera(320, 180, 90.0, (0.0, 0.0, 1.6), 0.0, 0.0, None, (-0.3, 0.1, 0.0, 0.0, -0.02))
    aside, _ = folding.project(np.array([[6.0, 2.0, 1.6]]))  # 72 degrees to the right
    assert aside[0, 0] > 320, "a point far to the side lies beyond the right edge"
