"""Keep stable ids for people across radar frames: nearest-neighbour association with gating.

Detections come from the radar heatmap every frame; a track is confirmed after a few hits so a
clutter blip does not produce an identity event, and it is dropped after a few misses so a
person leaving the room frees its id. Positions are smoothed with an alpha-beta filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Shortest time between two detections of a track that a velocity is learnt from (a fifth of the
#: 10 frames/s radar's period); closer ones correct the position only.
MIN_VELOCITY_DT_S = 0.02


@dataclass
class Track:
    track_id: int
    position: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    hits: int = 1
    misses: int = 0
    last_t_ns: int = 0

    def predict(self, dt_s: float) -> np.ndarray:
        return self.position + self.velocity * dt_s


class Tracker:
    def __init__(
        self,
        gate_m: float = 0.6,
        confirm_hits: int = 3,
        max_misses: int = 5,
        alpha: float = 0.6,
        beta: float = 0.2,
        max_tracks: int = 64,
        coast_frames: int = 2,
    ) -> None:
        self.gate_m = gate_m
        self.confirm_hits = confirm_hits
        self.max_misses = max_misses
        self.alpha = alpha
        self.beta = beta
        self.max_tracks = max_tracks
        #: A confirmed track stays reported through this many missed detections (a far or partly
        #: shadowed person drops below the CFAR threshold now and then), at its predicted position.
        self.coast_frames = coast_frames
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, detections: np.ndarray, t_ns: int) -> list[Track]:
        """Associate (K,2) detections at time t_ns; returns the confirmed tracks after the update."""
        detections = np.asarray(detections, dtype=np.float64).reshape(-1, 2)
        predicted = []
        for track in self.tracks:
            dt = max(0.0, (t_ns - track.last_t_ns) / 1e9) if track.last_t_ns else 0.0
            predicted.append(track.predict(dt))
        assigned_tracks: set[int] = set()
        assigned_dets: set[int] = set()
        if self.tracks and len(detections):
            cost = np.linalg.norm(np.asarray(predicted)[:, None, :] - detections[None, :, :], axis=-1)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] <= self.gate_m:
                    self._correct(self.tracks[r], predicted[r], detections[c], t_ns)
                    assigned_tracks.add(r)
                    assigned_dets.add(c)
        survivors = []
        for i, track in enumerate(self.tracks):
            if i not in assigned_tracks:
                # Coast: the track moves to its prediction AT t_ns, so the next prediction adds one
                # step of motion from here (not from the last hit again: that would compound).
                track.misses += 1
                track.position = predicted[i]
                if track.last_t_ns:
                    track.last_t_ns = t_ns
            if track.misses <= self.max_misses:
                survivors.append(track)
        self.tracks = survivors
        for c in range(len(detections)):
            if c not in assigned_dets and len(self.tracks) < self.max_tracks:
                self.tracks.append(Track(self._next_id, detections[c].copy(), last_t_ns=t_ns))
                self._next_id += 1
        return self.confirmed()

    def _correct(self, track: Track, predicted: np.ndarray, measured: np.ndarray, t_ns: int) -> None:
        dt = (t_ns - track.last_t_ns) / 1e9 if track.last_t_ns else 0.1
        residual = measured - predicted
        track.position = predicted + self.alpha * residual
        if dt >= MIN_VELOCITY_DT_S:
            # A frame stamped like the last one (a repeated time stamp), before it (the clock stepped
            # back) or a moment after gives no time to divide by: its residual, over a tiny dt, would
            # make a person standing still race off beyond the gate and lose their track. It corrects
            # the position only.
            track.velocity = track.velocity + (self.beta / dt) * residual
        track.hits += 1
        track.misses = 0
        track.last_t_ns = t_ns

    def confirmed(self) -> list[Track]:
        return [t for t in self.tracks if t.hits >= self.confirm_hits and t.misses <= self.coast_frames]
