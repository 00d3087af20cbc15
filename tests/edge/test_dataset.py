"""`vrclip-edge dataset make --config SITE.toml`: the site's rig at the dataset's camera size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import camera_from_config
from vrclip.edge.dataset import DatasetRequest, dataset_config


def test_a_measured_lens_is_scaled_to_the_dataset_camera_size() -> None:
    """A site whose 1280x720 lens was measured makes a 640x360 dataset (the default size): the same
    lens at half the size, not the site's principal point in pixels of the small image (which no
    longer loads, or points the camera a quarter of the image off)."""
    for principal in ((652.0, 352.0), (600.0, 380.0)):
        site = EdgeConfig.model_validate(
            {
                "camera": {
                    "width": 1280,
                    "height": 720,
                    "principal_px": list(principal),
                    "distortion": [-0.12, 0.03, 0.001, -0.0007, 0.0],
                }
            }
        )
        small = dataset_config(DatasetRequest(Path("unused")), site)
        assert (small.camera.width, small.camera.height) == (640, 360)
        points = np.array([[0.5, 3.0, 1.0], [-2.0, 2.5, 0.2], [1.8, 4.0, 1.8], [0.0, 2.0, 0.0]])
        big, _ = camera_from_config(site).project(points)
        half, _ = camera_from_config(small).project(points)
        np.testing.assert_allclose(half, big / 2, atol=1e-6)
