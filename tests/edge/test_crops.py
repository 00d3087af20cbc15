"""Person crops at the edge of the camera's view: a box the image does not reach is not a live crop."""

from __future__ import annotations

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import camera_from_config, crop_person, person_box


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
