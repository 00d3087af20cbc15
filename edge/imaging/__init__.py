"""Radar imaging: S21 frames -> calibrated -> clutter-free -> back-projected heatmap -> people.

- `calibration`: per-channel gain/delay correction and its versioned JSON file.
- `clutter`: running-mean background / MTI removal of everything that does not move.
- `profiles`: window + zero-padded IFFT, and the exact sum every imager approximates.
- `imager`: the `Imager` interface and `make_imager` (exact | cpu | gpu, 'auto' picks).
- `detect`: CA-CFAR + non-maximum suppression -> `Detection(x_m, y_m, score)`.
- `pipeline`: all of the above for one radar stream.
- `bench`: `vrclip-edge bench imaging`.
"""

from vrclip.edge.imaging.calibration import ChannelCalibration, ChannelCorrector
from vrclip.edge.imaging.clutter import ClutterFilter
from vrclip.edge.imaging.detect import Detection, Detector
from vrclip.edge.imaging.grid import ImagingGrid
from vrclip.edge.imaging.imager import Imager, gpu_available, make_imager
from vrclip.edge.imaging.pipeline import ImagingPipeline, ImagingResult

__all__ = [
    "ChannelCalibration",
    "ChannelCorrector",
    "ClutterFilter",
    "Detection",
    "Detector",
    "Imager",
    "ImagingGrid",
    "ImagingPipeline",
    "ImagingResult",
    "gpu_available",
    "make_imager",
]
