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
