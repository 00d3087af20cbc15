"""The radar half of the edge data flow: S21 frame -> calibrated -> clutter-free -> image -> people.

One object per radar stream, because the clutter filter keeps state across frames. The image
comes back as the imager made it (on the GPU for the GPU imager, for the next GPU stage); the
floor map and the detections are host-side numpy, for the tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import ConfigError
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.calibration import ChannelCalibration, ChannelCorrector
from vrclip.edge.imaging.clutter import ClutterFilter
from vrclip.edge.imaging.detect import Detection, Detector
from vrclip.edge.imaging.grid import ImagingGrid
from vrclip.edge.imaging.imager import Imager, make_imager


@dataclass(frozen=True)
class ImagingResult:
    #: The imager's output of `grid.shape` (numpy, or CuPy for the GPU imager).
    image: Any
    #: (ny, nx) numpy floor heatmap: the image itself in 2D; in 3D the root-sum-square over heights
    #: (incoherent integration: each body part counts at the height where it is in focus).
    floor: np.ndarray
    detections: list[Detection]


class ImagingPipeline:
    """calibration correction -> clutter removal -> back-projection -> CFAR/NMS detections."""

    def __init__(
        self,
        cfg: EdgeConfig,
        geometry: ArrayGeometry,
        calibration: ChannelCalibration | None = None,
        imager: Imager | None = None,
        detector: Detector | None = None,
        **imager_kwargs: Any,
    ) -> None:
        """calibration None means an ideal front end (no correction), e.g. a pre-corrected replay.

        imager_kwargs go to `make_imager` (impl, grid, height_m, pad_factor, threads).
        """
        self.imager = imager or make_imager(cfg, geometry, **imager_kwargs)
        calibration = calibration or ChannelCalibration.identity(geometry.n_channels)
        if calibration.n_channels != geometry.n_channels:
            raise ConfigError(
                f"the channel calibration has {calibration.n_channels} channels but the array "
                f"{geometry.name!r} has {geometry.n_channels}; re-run the calibration wizard for this array"
            )
        self.corrector = ChannelCorrector(calibration, self.imager.layout.freqs_hz)
        self.clutter = ClutterFilter(cfg.imaging.clutter, cfg.imaging.background_alpha)
        self.detector = detector or Detector.from_config(cfg, self.imager.grid)

    @property
    def grid(self) -> ImagingGrid:
        return self.imager.grid

    def condition(self, s21: np.ndarray) -> np.ndarray:
        """Calibrated, clutter-free frame (advances the clutter filter's state)."""
        return self.clutter(self.corrector(s21))

    def process(self, s21: np.ndarray) -> ImagingResult:
        image = self.imager.image(self.condition(s21))
        host = self.imager.to_numpy(image)
        floor = np.sqrt(np.square(host, dtype=np.float64).sum(axis=0)) if self.grid.is_3d else host
        return ImagingResult(image, floor, self.detector(floor))

    def close(self) -> None:
        self.imager.close()
