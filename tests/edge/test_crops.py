"""Person crops: a box the image does not reach is not a live crop; the anti-alias blur touches only
what the warp reads, cuts training-size crops bit for bit as before and a close 4K person in ms."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import CROP_HEIGHT, CropSpec, camera_from_config, crop_box, crop_person, person_box
from vrclip.edge.dataset import DatasetRequest, dataset_config
from vrclip.edge.sim.camera import PinholeCamera, SceneRenderer
from vrclip.edge.sim.scene import Scene, SceneSpec


def test_a_person_the_camera_cannot_frame_gives_no_live_crop() -> None:
    """The radar covers more of the room than the camera: a person beside the view must reach the
    engine and the identity event as camera-absent, not as a live black crop."""
    camera = camera_from_config(EdgeConfig())
    image = np.full((camera.height, camera.width, 3), 120, np.uint8)
    for where in ([5.0, 2.0], [-6.0, 1.5]):
        box = person_box(camera, np.array(where))
        assert box is not None and (box[0] >= camera.width or box[2] <= 0)  # projects, but off-image
        crop, ok = crop_person(image, camera, np.array(where))
        assert not ok and not crop.any()
    # Partly in view still counts: the part inside the frame shows the person.
    x = 0.0
    while (box := person_box(camera, np.array([x, 3.0]))) is not None and box[0] < camera.width - 20:
        x += 0.05
    assert box is not None and box[0] < camera.width < box[2]
    crop, ok = crop_person(image, camera, np.array([x, 3.0]))
    assert ok and (crop == 120).any() and not crop.all()


def test_a_person_beside_a_slightly_barrelled_camera_gives_no_live_crop() -> None:
    """A slight barrel (k1 = -0.02) folds back only 80-odd degrees off the axis: a person standing
    beside the camera must not be projected into the middle of the image and cropped as live."""
    config = EdgeConfig.model_validate(
        {"camera": {"position_m": [0.0, 0.0, 1.6], "pitch_deg": 0.0, "distortion": [-0.02, 0, 0, 0, 0]}}
    )
    camera = camera_from_config(config)
    pixels, depth = camera.project(np.array([[2.8, 0.4, 1.6]]))  # 82 degrees to the right
    assert depth[0] > 0 and pixels[0, 0] > camera.width, "beyond the right edge, not folded into view"
    image = np.full((camera.height, camera.width, 3), 120, np.uint8)
    for where in ([4.0, 1.0], [6.0, 1.0], [-5.0, 1.0]):
        crop, ok = crop_person(image, camera, np.array(where))
        assert not ok and not crop.any(), f"a person at {where} is beside the camera, not in its view"


def _whole_frame_crop(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The slow reference: the crop as cut before the blur was limited to what the warp reads
    (the whole frame low-passed, then warped; the code of crop_box up to this change)."""
    spec = CropSpec()
    x0, y0, x1, y1 = box
    sx = spec.width / max(x1 - x0, 1e-6)
    sy = spec.height / max(y1 - y0, 1e-6)
    matrix = np.array(
        [[sx, 0.0, -sx * x0 - 0.5 + 0.5 * sx], [0.0, sy, -sy * y0 - 0.5 + 0.5 * sy]], dtype=np.float64
    )
    if sx < 0.5 or sy < 0.5:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=max(0.5 / sx, 0.01), sigmaY=max(0.5 / sy, 0.01))
    return cv2.warpAffine(
        np.ascontiguousarray(rgb),
        matrix,
        (spec.width, spec.height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _rendered_frame(camera: PinholeCamera) -> np.ndarray:
    scene = Scene(SceneSpec(people=("a",), occlusion="furniture", seed=3))
    rgb, _ = SceneRenderer(scene, camera, seed=3).render(scene.state(2.0))
    assert rgb is not None
    return rgb


def _camera(width: int, height: int) -> PinholeCamera:
    return camera_from_config(EdgeConfig.model_validate({"camera": {"width": width, "height": height}}))


def test_training_size_crops_are_bit_for_bit_those_of_a_whole_frame_blur() -> None:
    """The model was trained on crops of `dataset make`'s 640x360 frames: blurring only the region
    the warp reads must not change one of them, from the nearest croppable person to the far wall."""
    camera = camera_from_config(dataset_config(DatasetRequest(Path("unused")), EdgeConfig()))
    assert (camera.width, camera.height) == (640, 360)
    frames = [_rendered_frame(camera), np.random.default_rng(0).integers(0, 256, (360, 640, 3), np.uint8)]
    minified = compared = 0
    for x in np.arange(-3.0, 3.01, 0.5):
        for y in [*np.arange(0.7, 1.25, 0.05), *np.arange(1.5, 6.1, 0.75)]:
            box = person_box(camera, np.array([x, y]))
            if box is None:
                continue
            minified += (box[3] - box[1]) > 4 * CROP_HEIGHT  # blurred with sigma > 2
            for frame in frames:
                crop, ok = crop_person(frame, camera, np.array([x, y]))
                if ok:
                    np.testing.assert_array_equal(crop, _whole_frame_crop(frame, box), f"at {x}, {y}")
                    compared += 1
    assert compared > 200 and minified > 20


def test_a_4k_region_within_the_budget_is_cut_bit_for_bit() -> None:
    """Within the exact budget a 4K crop is bit for bit the whole-frame one too, at sub-pixel box
    positions and half outside the frame: the region is blurred into a frame-sized image, since a
    cut-out region with a shifted warp matrix moves warpAffine's fixed-point sample positions."""
    frame = np.random.default_rng(1).integers(0, 256, (2160, 3840, 3), np.uint8)
    for x0, y0, height in ((1234.37, 301.61, 600.0), (-300.3, 512.2, 1000.0), (3000.7, 1200.9, 1500.0)):
        box = (x0, y0, x0 + height / 2, y0 + height)
        np.testing.assert_array_equal(crop_box(frame, box), _whole_frame_crop(frame, box), str(box))


def test_a_person_close_to_a_4k_camera_is_cropped_in_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A person close to a 4K camera blurred the whole frame with a kernel of hundreds of taps:
    0.1 to 1.5 s a crop on a 2-core box (8 s seen), stalling the pipeline. Now the blur does at most
    100 million pixel-taps and a crop takes milliseconds."""
    camera = _camera(3840, 2160)
    frame = np.random.default_rng(2).integers(0, 256, (2160, 3840, 3), np.uint8)
    blur = cv2.GaussianBlur
    work: list[float] = []

    def counted(src: np.ndarray, ksize: tuple[int, int], sigmaX: float, sigmaY: float = 0, **kw):
        taps = 2 * np.ceil(3 * sigmaX) + 2 * np.ceil(3 * (sigmaY or sigmaX)) + 2
        work.append(src.shape[0] * src.shape[1] * taps)
        return blur(src, ksize, sigmaX=sigmaX, sigmaY=sigmaY, **kw)

    monkeypatch.setattr(cv2, "GaussianBlur", counted)
    huge = (1920 - 5750.0, 1080 - 11500.0, 1920 + 5750.0, 1080 + 11500.0)  # sigma 45, centred
    for crop in (
        lambda: crop_person(frame, camera, np.array([0.0, 0.76])),
        lambda: crop_person(frame, camera, np.array([0.8, 0.76])),
        lambda: crop_box(frame, huge),
    ):
        work.clear()
        started = time.perf_counter()
        crop()
        elapsed = time.perf_counter() - started
        assert sum(work) <= 100e6 and elapsed < 0.25, (sum(work), elapsed)


def test_a_close_person_at_4k_looks_as_a_whole_frame_blur_makes_them() -> None:
    """Past the budget the region is averaged down before the blur: not bit for bit, but within a
    grey level almost everywhere, and no black seam or smear at the frame's edges."""
    rendered = cv2.resize(_rendered_frame(_camera(640, 360)), (3840, 2160), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(3).integers(0, 256, (2160, 3840, 3), np.uint8)
    camera = _camera(3840, 2160)
    diffs = []
    for where in ([0.0, 0.76], [0.8, 0.76], [-1.5, 1.0], [2.0, 1.2]):
        box = person_box(camera, np.array(where))
        assert box is not None and box[3] - box[1] > 20 * CROP_HEIGHT  # sigma > 10: the reduced path
        for frame in (rendered, noise):
            crop, ok = crop_person(frame, camera, np.array(where))
            assert ok
            diffs.append(np.abs(crop.astype(int) - _whole_frame_crop(frame, box).astype(int)))
    every = np.concatenate([d.ravel() for d in diffs])
    assert np.percentile(every, 99.9) <= 1 and every.max() <= 8 and every.mean() < 0.1, (
        np.percentile(every, 99.9),
        every.max(),
        every.mean(),
    )


def test_a_box_that_is_not_finite_is_refused_naming_it() -> None:
    frame = np.zeros((360, 640, 3), np.uint8)
    with pytest.raises(ValueError, match=r"crop box .*nan.*finite"):
        crop_box(frame, (0.0, float("nan"), 10.0, 20.0))
