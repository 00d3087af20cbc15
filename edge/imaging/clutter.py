"""Static clutter removal: keep what moves (people), drop what does not (walls, furniture, coupling).

A room's walls echo 10-100x stronger than a person, and the direct Tx->Rx coupling stronger still;
imaged as they are, a person is lost in their sidelobes. Both are constant from frame to frame, so
subtracting an estimate of the static response leaves the people.

Modes (`imaging.clutter`):

- ``mean``: subtract a running-mean background, b <- (1 - a) b + a x, with a = `background_alpha`.
  The frame is compared with the background *before* it is folded in, so a person is not
  subtracted from themself. During warm-up the weight is max(a, 1/n) for the n-th frame (a plain
  average of the frames so far): started with someone in the room, the exponential filter alone
  would keep that first position as a ghost at weight (1 - a)^n for many seconds.
- ``mti``: subtract the previous frame (moving-target indication). Adapts at once to a moved
  chair, but a walker shows twice (now and one frame ago) and someone standing still vanishes.
- ``none``: pass through (for calibration captures and tests of the raw scene).

The first frame of ``mean`` and ``mti`` has no reference yet, so it comes out as zeros.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ClutterMode = Literal["mean", "mti", "none"]
MODES: tuple[str, ...] = ("mean", "mti", "none")


class ClutterFilter:
    """Stateful per-stream filter; one instance per radar, `reset()` after the rig moved."""

    def __init__(self, mode: ClutterMode = "mean", alpha: float = 0.05) -> None:
        if mode not in MODES:
            raise ValueError(f"imaging.clutter = {mode!r}: must be one of {', '.join(MODES)}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"imaging.background_alpha = {alpha!r}: must be in (0, 1]")
        self.mode = mode
        self.alpha = float(alpha)
        self._reference: np.ndarray | None = None
        self._count = 0

    @property
    def frames_seen(self) -> int:
        return self._count

    @property
    def background(self) -> np.ndarray | None:
        """The current static estimate (mean) or the previous frame (mti); None before the first frame."""
        return self._reference

    def reset(self) -> None:
        self._reference = None
        self._count = 0

    def __call__(self, s21: np.ndarray) -> np.ndarray:
        """The moving part of one (channels, points) frame, complex64."""
        frame = np.asarray(s21)
        if self.mode == "none":
            return frame.astype(np.complex64, copy=False)
        if self._reference is not None and self._reference.shape != frame.shape:
            raise ValueError(
                f"radar frame shape changed from {self._reference.shape} to {frame.shape}; "
                "reset the clutter filter when the sweep or channel set changes"
            )
        self._count += 1
        if self._reference is None:
            # Accumulate in complex128: thousands of small updates would drift in float32.
            self._reference = frame.astype(np.complex128)
            return np.zeros(frame.shape, np.complex64)
        out = (frame - self._reference).astype(np.complex64)
        if self.mode == "mti":
            self._reference[...] = frame
        else:
            weight = max(self.alpha, 1.0 / self._count)
            self._reference += weight * (frame - self._reference)
        return out
