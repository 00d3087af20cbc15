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
