"""Warn when the radar runs at another frame rate than the engine's training data.

Why it matters: the RF encoder reads T consecutive frames, so its window spans T / rate seconds of
walking. A model trained on a 10 frames/s radar and run at 6 frames/s sees windows 1.7 times as
long, with gait and motion it never saw: on the simulated rig that is the SCPI path (~6 frames/s)
against the dataset's 10, and the radio side of the identification is visibly weaker there. The
runtime cannot resample echoes in time (the phase does not interpolate), so it says so instead,
once per departure and once on recovery. Recovery asks for half the tolerance: a rate that hovers at
the tolerance (a loaded box's SCPI path near 7.5 frames/s against 10) would otherwise warn and
recover again at every wobble of its median.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np
from vrclip.edge.manifest import EngineManifest

#: Relative departure from the training rate that is reported.
DEFAULT_TOLERANCE = 0.25
#: Share of the tolerance a departed rate must come back within before its recovery is reported.
RECOVERY_SHARE = 0.5
#: Frame intervals the measured rate is the median of.
DEFAULT_WINDOW = 50


def median_rate_hz(intervals_ns: Iterable[int]) -> float | None:
    """Frames per second from frame intervals (ns): the median, so a late frame or a stall does not
    move it; non-positive intervals (a clock step) are left out. None without two to go on."""
    steps = np.asarray(list(intervals_ns), np.int64)
    steps = steps[steps > 0]
    return 1e9 / float(np.median(steps)) if steps.size >= 2 else None


def training_frame_rate(manifest: EngineManifest) -> float | None:
    """The training radar's frame rate the export measured (manifest RF window, key sensor), if any."""
    rf = manifest.preprocessing.rf
    sensor = rf.window.get("sensor") if rf is not None and rf.window else None
    rate = sensor.get("frame_rate_hz") if isinstance(sensor, dict) else None
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and np.isfinite(rate) and rate > 0:
        return float(rate)
    return None


class RadarRateCheck:
    """Median radar frame rate over the last `window` intervals, compared with the training rate."""

    def __init__(
        self, expected_hz: float | None, tolerance: float = DEFAULT_TOLERANCE, window: int = DEFAULT_WINDOW
    ) -> None:
        self.expected_hz = expected_hz
        self.tolerance = tolerance
        self._intervals: collections.deque[int] = collections.deque(maxlen=window)
        self._last_ns: int | None = None
        self.off = False

    @property
    def measured_hz(self) -> float | None:
        if len(self._intervals) < self._intervals.maxlen:  # type: ignore[operator]
            return None
        return median_rate_hz(self._intervals)

    def observe(self, t_ns: int) -> str | None:
        """Feed one radar frame's time stamp; returns a message when the verdict changes, else None."""
        last, self._last_ns = self._last_ns, int(t_ns)
        if last is None or t_ns <= last:
            return None  # first frame, or a clock step: no interval to learn from
        self._intervals.append(int(t_ns) - last)
        measured, expected = self.measured_hz, self.expected_hz
        if measured is None or expected is None:
            return None
        departure = abs(measured - expected) / expected
        off = departure > self.tolerance * (RECOVERY_SHARE if self.off else 1.0)
        if off == self.off:
            return None
        self.off = off
        if off:
            return (
                f"the radar delivers {measured:.1f} frames/s but the engine was trained at {expected:.1f}: "
                f"its RF windows span {expected / measured:.2f} times the time they did in training, and "
                "radio identification suffers; run the radar at the training rate (radar.frame_rate_hz, "
                'radar.switch.step = "trigger") or train on recordings made at this rate'
            )
        return (
            f"the radar is back near the engine's training rate ({measured:.1f} of {expected:.1f} frames/s)"
        )


__all__ = [
    "DEFAULT_TOLERANCE",
    "DEFAULT_WINDOW",
    "RECOVERY_SHARE",
    "RadarRateCheck",
    "median_rate_hz",
    "training_frame_rate",
]
