"""The running service watches its own radar calibration (see `vrclip.edge.imaging.drift`).

Wired into the run loop's per-frame hook: every raw radar frame updates the drift monitor; every
CHECK_EVERY frames the figures are refreshed for /status and /metrics, and the operator is told once
when the channels have drifted apart enough to blur the image, with what to do. A calibration file
without a coupling reference (older wizards, hand-made files) turns the watch off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.imaging.drift import MIN_COHERENCE, Drift, DriftMonitor
from vrclip.edge.pipeline.sync import SyncedFrame

#: Frames between two looks at the drift (10 frames/s: every 10 s).
CHECK_EVERY = 100
#: How far above MIN_COHERENCE the channels must come back before a new drift is warned about.
REARM_MARGIN = 0.03


class CalibrationWatch:
    def __init__(
        self,
        calibration: ChannelCalibration | None,
        freqs_hz: np.ndarray,
        warn: Callable[[str], None],
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        reference = calibration.coupling if calibration is not None else None
        usable = reference is not None and reference.n_channels == calibration.n_channels  # type: ignore[union-attr]
        freqs = np.asarray(freqs_hz, np.float64)
        if usable and freqs.size >= 2:
            # The coupling's value at its delay belongs to the sweep it was measured on; on another
            # (already warned about at start-up) the figures would mean nothing, so no watch there.
            usable = calibration.sweep_mismatch(float(freqs[0]), float(freqs[-1]), freqs.size) is None  # type: ignore[union-attr]
        self.monitor = DriftMonitor(reference, freqs) if usable else None  # type: ignore[arg-type]
        self._shape = (reference.n_channels if reference is not None else 0, freqs.size)
        self.warn = warn
        self.count = count
        self.latest: Drift | None = None
        self._warned = False

    @property
    def active(self) -> bool:
        return self.monitor is not None

    def offer(self, synced: SyncedFrame) -> None:
        """The run loop's per-frame hook: cheap (one multiply-add per sample)."""
        if self.monitor is None:
            return
        s21 = synced.radar.s21
        if s21.shape != self._shape:
            return  # not the frames the reference describes: nothing to compare (and no crash)
        self.monitor.update(s21)
        if self.monitor.frames % CHECK_EVERY == 0:
            self._check()

    def _check(self) -> None:
        assert self.monitor is not None
        drift = self.monitor.drift()
        if drift is None:
            return
        self.latest = drift
        if drift.drifted and not self._warned:
            self._warned = True
            if self.count is not None:
                self.count("calibration_drift_warnings", 1)
            self.warn(
                f"the radar's channels have drifted since their calibration (coherence {drift.coherence:.2f} "
                f"< {MIN_COHERENCE}, phases spread {drift.phase_spread_deg:.0f} degrees): images blur and "
                "identities suffer; re-run `vrclip-calibrate channels --reflector X Y Z`"
            )
        elif drift.coherence >= MIN_COHERENCE + REARM_MARGIN:
            # Said again if it drifts again, but a rig hovering at the limit is not told every check.
            self._warned = False

    def stats(self) -> dict[str, dict[str, Any]]:
        """For Health.add_stats_source: {"coupling": figures} once there are some."""
        return {"coupling": self.latest.summary()} if self.latest is not None else {}


__all__ = ["CHECK_EVERY", "CalibrationWatch"]
