"""The frames that flow from sources to the synchronizer, the recorder and the trainer.

Every frame carries a nanosecond timestamp and the name of the clock it was read on, so frames
from different machines are only compared when their clocks agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Name of the system wall clock (NTP/PTP disciplined on the rig).
CLOCK_REALTIME = "CLOCK_REALTIME"
#: Name of the simulated clock: time advanced by the simulator, not read from the OS.
CLOCK_SIMULATED = "SIMULATED"


@dataclass(frozen=True)
class GroundTruth:
    """What the simulator knows and a real sensor does not: who is where."""

    identities: tuple[str, ...]
    #: (K, 2) float32 floor positions in metres, room coordinates.
    positions: np.ndarray
    #: (K,) bool: person visible to the camera (not hidden behind an occluder, inside the view).
    visible: np.ndarray

    def named_positions(self) -> list[tuple[str, np.ndarray]]:
        """[(name, (x, y) float64)]: the form the simulated-run scorers take (pipeline.app)."""
        return list(zip(self.identities, np.asarray(self.positions, np.float64), strict=True))


@dataclass(frozen=True)
class RadarFrame:
    """One full MIMO snapshot: S21 of every virtual channel over the whole sweep."""

    seq: int
    t_ns: int
    clock: str
    #: (channels, points) complex64, channel order = switching order of the geometry.
    s21: np.ndarray
    truth: GroundTruth | None = None


@dataclass(frozen=True)
class CameraFrame:
    """One RGB image, (H, W, 3) uint8 in RGB order."""

    seq: int
    t_ns: int
    clock: str
    rgb: np.ndarray
    truth: GroundTruth | None = None


@dataclass(frozen=True)
class DepthFrame:
    """What the ZED reports: a depth image in metres and the floor position of each person it sees."""

    seq: int
    t_ns: int
    clock: str
    #: (h, w) float32 depth in metres, NaN where unknown.
    depth: np.ndarray
    #: (K, 2) float32 floor positions in metres of the people the ZED detected.
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    truth: GroundTruth | None = None


def stream_of(frame: RadarFrame | CameraFrame | DepthFrame) -> str:
    """ "radar", "camera" or "depth": the stream (and sensor) a frame belongs to, as recordings,
    the synchroniser and the health counters name it."""
    if isinstance(frame, RadarFrame):
        return "radar"
    if isinstance(frame, CameraFrame):
        return "camera"
    if isinstance(frame, DepthFrame):
        return "depth"
    raise TypeError(f"not a sensor frame: {type(frame).__name__}")
