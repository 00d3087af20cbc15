"""Person crops and RF windows (vrclip.edge.crops / vrclip.edge.rfwindow, shared by trainer and runtime)."""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import CropSpec, camera_from_config, crop_person, person_box
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.rfwindow import RFSequence, RFWindowExtractor, RFWindowSpec, to_model_input
from vrclip.edge.sim.camera import PinholeCamera
from vrclip.edge.sim.radar import FrontEndErrors, point_response, sweep_frequencies


@pytest.fixture(scope="module")
def camera() -> PinholeCamera:
    cfg = EdgeConfig().model_copy(deep=True)
    cam = camera_from_config(cfg)
    return PinholeCamera(320, 180, cam.hfov_deg, cam.position)


def test_crop_box_is_2_to_1_and_centred_on_the_person(camera: PinholeCamera) -> None:
    box = person_box(camera, np.array([0.3, 3.0]))
    assert box is not None
    x0, y0, x1, y1 = box
    assert (y1 - y0) / (x1 - x0) == pytest.approx(2.0)
    centre, _ = camera.project(np.array([[0.3, 3.0, 0.975]]))
    assert (x0 + x1) / 2 == pytest.approx(centre[0, 0], abs=0.1 * (x1 - x0))
    # Farther away -> smaller box.
    far = person_box(camera, np.array([0.3, 6.0]))
    assert far is not None and (far[3] - far[1]) < (y1 - y0)


def test_crop_shows_what_is_in_the_box_and_black_outside_the_frame(camera: PinholeCamera) -> None:
    image = np.zeros((camera.height, camera.width, 3), np.uint8)
    box = person_box(camera, np.array([0.0, 3.0]))
    x0, y0, x1, y1 = (round(v) for v in box)
    image[max(y0, 0) : y1, max(x0, 0) : x1] = (200, 30, 60)
    crop, ok = crop_person(image, camera, np.array([0.0, 3.0]))
    assert ok and crop.shape == (256, 128, 3) and crop.dtype == np.uint8
    inner = crop[16:-16, 8:-8].reshape(-1, 3)
    assert np.mean(np.all(np.abs(inner.astype(int) - (200, 30, 60)) < 3, axis=1)) > 0.95
    # A person at the edge of the view: the part outside the frame is black, not smeared border pixels.
    image[:] = 255
    crop, ok = crop_person(image, camera, np.array([-2.9, 2.0]))
    assert ok and (crop.reshape(-1, 3).sum(axis=1) == 0).any() and (crop == 255).any()


def test_unprojectable_positions_give_a_black_crop_not_an_error(camera: PinholeCamera) -> None:
    image = np.full((camera.height, camera.width, 3), 99, np.uint8)
    for where in ([0.0, -1.0], [0.0, 0.1], [np.nan, 2.0]):
        crop, ok = crop_person(image, camera, np.array(where))
        assert not ok and crop.shape == (256, 128, 3) and not crop.any()
    with pytest.raises(ValueError, match="camera model"):
        crop_person(np.zeros((10, 10, 3), np.uint8), camera, np.array([0.0, 3.0]))
    with pytest.raises(ValueError, match="both sides"):
        CropSpec(height=4)


def _scene(
    geometry: ArrayGeometry, freqs: np.ndarray, people: np.ndarray, errors: FrontEndErrors
) -> np.ndarray:
    """(n, C, P) frames: a static wall reflector plus one moving point per frame, through the front end."""
    wall = point_response(geometry, freqs, np.array([[0.5, 6.5, 1.2]]), np.array([3.0]))
    frames = []
    for p in people:
        clean = wall + point_response(geometry, freqs, p[None, :], np.array([1.0]))
        frames.append(
            clean * errors.gain[:, None] * np.exp(-2j * np.pi * freqs[None, :] * errors.delay_s[:, None])
        )
    return np.asarray(frames, np.complex64)


def test_window_puts_the_person_in_the_centre_bin_after_calibration(geometry: ArrayGeometry) -> None:
    freqs = sweep_frequencies(EdgeConfig().radar.sweep)
    errors = FrontEndErrors.draw(geometry.n_channels, seed=5)
    people = np.array([[0.2 + 0.1 * i, 2.5 + 0.15 * i, 1.0] for i in range(8)])
    s21 = _scene(geometry, freqs, people, errors)
    spec = RFWindowSpec(frames=4, range_bins=15, span_m=1.5)
    calibrated = RFWindowExtractor(spec, geometry, freqs, ChannelCalibration.from_front_end_errors(errors))
    windows = calibrated.windows(s21, people[:, :2])
    assert windows.shape == (8, geometry.n_channels, 15) and windows.dtype == np.complex64
    peak = np.abs(windows).argmax(axis=2)
    assert np.mean(peak == 7) > 0.9  # every channel sees the person at its own bistatic range
    # Carrier-compensated: the channels add up in phase at the centre bin.
    coherent = np.abs(windows[:, :, 7].sum(axis=1))
    incoherent = np.abs(windows[:, :, 7]).sum(axis=1)
    assert np.all(coherent > 0.8 * incoherent)
    # Without the front-end calibration (up to 0.75 m of extra path) the person is not where the gate looks.
    uncalibrated = RFWindowExtractor(spec, geometry, freqs, None).windows(s21, people[:, :2])
    assert np.mean(np.abs(uncalibrated).argmax(axis=2) == 7) < 0.3
    # The calibration also arrives as the dict stored in recordings.
    from_dict = RFWindowExtractor(
        spec, geometry, freqs, ChannelCalibration.from_front_end_errors(errors).to_dict()
    )
    np.testing.assert_allclose(from_dict.windows(s21, people[:, :2]), windows, rtol=1e-5, atol=1e-6)


def test_session_background_removes_the_static_scene(geometry: ArrayGeometry) -> None:
    freqs = sweep_frequencies(EdgeConfig().radar.sweep)
    errors = FrontEndErrors.ideal(geometry.n_channels)
    people = np.array([[-1.5 + 0.4 * i, 2.0 + 0.35 * i, 1.0] for i in range(10)])
    s21 = _scene(geometry, freqs, people, errors)
    gate_at = np.array([[0.5, 6.5]] * 10)  # gate on the wall, not on the person
    with_bg = RFWindowExtractor(RFWindowSpec(background="none"), geometry, freqs).windows(s21, gate_at)
    without = RFWindowExtractor(RFWindowSpec(background="session"), geometry, freqs).windows(s21, gate_at)
    assert np.abs(without).mean() < 0.05 * np.abs(with_bg).mean()


def test_channel_subset_and_bad_specs(geometry: ArrayGeometry) -> None:
    freqs = sweep_frequencies(EdgeConfig().radar.sweep)
    spec = RFWindowSpec(channels=(0, 5, 143), range_bins=8)
    ex = RFWindowExtractor(spec, geometry, freqs)
    out = ex.windows(np.ones((2, 144, freqs.size), np.complex64), np.array([[0.0, 3.0], [np.nan, np.nan]]))
    assert out.shape == (2, 3, 8) and not out[1].any()  # unlabelled frame -> zeros, not NaN
    with pytest.raises(ValueError, match="does not exist"):
        RFWindowExtractor(RFWindowSpec(channels=(144,)), geometry, freqs)
    with pytest.raises(ValueError, match="background"):
        RFWindowSpec(background="median")  # type: ignore[arg-type]
    assert RFWindowSpec.from_dict(spec.to_dict()) == spec


BEAM_SPEC = RFWindowSpec(
    frames=4,
    range_bins=7,
    span_m=0.7,
    beam_heights_m=tuple(round(0.1 + 0.15 * i, 3) for i in range(13)),
    beam_offsets_m=(-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3),
)


def _reflectors(
    geometry: ArrayGeometry, freqs: np.ndarray, points: np.ndarray, amps: np.ndarray
) -> np.ndarray:
    return point_response(geometry, freqs, points, amps)[None].astype(np.complex64)


def test_beams_find_a_reflector_at_its_height_offset_and_range(geometry: ArrayGeometry) -> None:
    freqs = sweep_frequencies(EdgeConfig().radar.sweep)
    ex = RFWindowExtractor(BEAM_SPEC, geometry, freqs)
    person = np.array([0.8, 3.2])
    along = (person - geometry.virtual_positions.mean(axis=0)[:2]) / np.hypot(*person)
    across = np.array([-along[1], along[0]])
    target = np.array([*(person + 0.1 * across), 1.3])  # 0.1 m across, on the range gate, 1.3 m high
    beams = ex.windows(
        _reflectors(geometry, freqs, target[None], np.ones(1)), person[None], np.zeros((144, 1))
    )
    assert ex.n_channels == 13 * 7 and ex.n_pairs == 144
    assert beams.shape == (1, 13 * 7, 7) and beams.dtype == np.complex64
    beam, radial = np.unravel_index(np.abs(beams[0]).argmax(), beams[0].shape)
    height, offset = divmod(int(beam), 7)
    assert BEAM_SPEC.beam_heights_m[height] == pytest.approx(1.3)
    assert BEAM_SPEC.beam_offsets_m[offset] == pytest.approx(0.1)
    assert radial == 3
    # The pairs add up in phase there: the beam holds the mean of 144 aligned echoes, not a random sum.
    pairs = RFWindowExtractor(RFWindowSpec(range_bins=7, span_m=0.7, centre_height_m=1.3), geometry, freqs)
    per_pair = pairs.windows(
        _reflectors(geometry, freqs, target[None], np.ones(1)),
        (person + 0.1 * across)[None],
        np.zeros((144, 1)),
    )
    assert np.abs(beams[0]).max() > 0.8 * np.abs(per_pair[0, :, 3]).mean()


def _height_profile(windows: np.ndarray) -> np.ndarray:
    profile = np.abs(windows[0]).reshape(13, -1).max(axis=1)
    return profile / np.linalg.norm(profile)


def test_beams_see_the_same_body_wherever_it_stands_and_pairs_do_not(geometry: ArrayGeometry) -> None:
    """Why beams: the height profile of a body is the same at two floor positions (the identity cue
    survives walking around); the per-pair windows of the same body differ."""
    freqs = sweep_frequencies(EdgeConfig().radar.sweep)
    body = np.array([[0.0, 0.0, 0.4], [0.1, 0.0, 1.0], [-0.05, 0.05, 1.6]])
    amps = np.array([1.0, 0.3, 0.7])
    other_amps = np.array([0.3, 1.0, 0.4])
    beams = RFWindowExtractor(BEAM_SPEC, geometry, freqs)
    pairs = RFWindowExtractor(RFWindowSpec(range_bins=7, span_m=0.7), geometry, freqs)
    empty = np.zeros((144, 1))

    def look(ex: RFWindowExtractor, xy: tuple[float, float], a: np.ndarray) -> np.ndarray:
        pts = body + np.array([*xy, 0.0])
        return ex.windows(_reflectors(geometry, freqs, pts, a), np.array([xy]), empty)

    here, there = (-1.0, 2.5), (1.2, 4.5)
    same = float(_height_profile(look(beams, here, amps)) @ _height_profile(look(beams, there, amps)))
    other = float(_height_profile(look(beams, here, amps)) @ _height_profile(look(beams, here, other_amps)))
    assert same > 0.9 and other < 0.8  # measured: 0.95 and 0.68

    def flat(w: np.ndarray) -> np.ndarray:
        v = np.abs(w).ravel()
        return v / np.linalg.norm(v)

    pairs_same = float(flat(look(pairs, here, amps)) @ flat(look(pairs, there, amps)))
    assert pairs_same < 0.9  # measured: 0.85


def test_beam_specs_round_trip_and_bad_ones_are_named() -> None:
    assert RFWindowSpec.from_dict(BEAM_SPEC.to_dict()) == BEAM_SPEC
    assert BEAM_SPEC.beamformed and not RFWindowSpec().beamformed
    assert BEAM_SPEC.n_channels(144) == 91 and BEAM_SPEC.n_pairs(144) == 144
    with pytest.raises(ValueError, match="beam_offsets_m"):
        RFWindowSpec(beam_heights_m=(1.0,), beam_offsets_m=())
    with pytest.raises(ValueError, match="beam_heights_m"):
        RFWindowSpec(beam_heights_m=(-0.5,))


def test_rf_sequence_is_bounded_and_yields_model_input() -> None:
    seq = RFSequence(3)
    for i in range(5):
        seq.push(np.full((4, 2), i + 1j * i, np.complex64))
    assert seq.ready
    sample = seq.sample()
    assert sample.shape == (3, 4, 2, 2) and sample.dtype == np.float32
    np.testing.assert_array_equal(sample[:, 0, 0, 0], [2, 3, 4])  # the last three frames, oldest first
    np.testing.assert_array_equal(to_model_input(np.array([1 + 2j]))[0], [1.0, 2.0])
    with pytest.raises(ValueError, match="needs"):
        RFSequence(4).sample()


def test_preprocessing_pairs_cameras_by_time_stamps_without_decoding_frames_for_them(
    small_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairing reads the camera clock in bulk; a frame is decoded only to cut a crop from it."""
    from vrclip.edge.frames import CameraFrame
    from vrclip.edge.recording.reader import SessionReader
    from vrclip.export import data

    session = data.discover_sessions(small_dataset)[0]
    decoded: list[int] = []
    real_camera = SessionReader.camera

    def counting_camera(self: SessionReader, i: int) -> CameraFrame:
        decoded.append(i)
        return real_camera(self, i)

    monkeypatch.setattr(SessionReader, "camera", counting_camera)
    with SessionReader(session.path) as reader:
        count = reader.count("camera")
        times = data._camera_times(reader, count)
        expected = reader.times("camera")
    assert count > 0 and decoded == []
    np.testing.assert_array_equal(times, expected)
    assert times.dtype == np.int64
