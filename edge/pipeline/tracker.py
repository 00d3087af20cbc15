"""Keep stable ids for people across radar frames: nearest-neighbour association with gating.

Detections come from the radar heatmap every frame; a track is confirmed after a few hits so a
clutter blip does not produce an identity event, and it is dropped after a few misses so a
person leaving the room frees its id. Positions are smoothed with an alpha-beta filter.

Gaps. A detection more than GAP_FRAMES frame periods after a track's last update is a gap: the radar
was away (a VNA reconnecting) or its stamps jumped ahead (NTP stepping the clock). How far the person
moved meanwhile is unknown, so the prediction stops at GAP_FRAMES periods of motion instead of
extrapolating the velocity over the whole gap (an hour's clock step put a walker kilometres away, so
every person came back under a new id), and the gate widens at walking pace over the rest of the
gap, up to `max_gap_gate_m`: whoever stands that near the track's capped prediction keeps its id.
A gap teaches no velocity (its stamps may not be the time that passed). The track timeout is counted
in radar frames, not stamps: a track ends after `max_misses` frames in a row without a detection,
gap or not, so a track nobody is near after an outage still ends, a few frames later.

A track counts the long gaps it came through (`Track.gaps`): a frame that reaches it more than
GAP_FRAMES periods and at least HISTORY_GAP_S after its last update, with a detection or coasting,
adds one. Whoever keeps history per track (the RF window and embedding mean of `pipeline.identify`)
compares the count with the one they last saw and starts that history afresh when it changed: the
frames before the gap are seconds away from those after it, and the person near the prediction may
be someone else. Shorter gaps are frames the pipeline dropped under load (its queues drop the oldest
frame by design): resetting a name on each of those made a busy box keep renaming people.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from vrclip.edge.pipeline.ratecheck import median_rate_hz

#: Shortest time between two detections of a track that a velocity is learnt from, as a share of the
#: radar's frame period (20 ms at 10 frames/s, 0.2 ms at 1000); closer ones correct the position only.
MIN_VELOCITY_SHARE = 0.2
#: Frame intervals the tracker's frame period is the median of.
PERIOD_WINDOW = 50
#: Shortest frame period the tracker goes by: radar.frame_rate_hz allows up to 1000 frames/s.
MIN_FRAME_PERIOD_S = 1e-3
#: Frame periods since a track's last update beyond which a detection is a gap (see the module
#: docstring); up to it a frame or two may have been dropped, which the prediction covers.
GAP_FRAMES = 3
#: Shortest gap that ends a track's history (module docstring): in a second a person walks 1.4 m, far
#: enough for another to step into the gate; a few dropped frames on a busy box are not that.
HISTORY_GAP_S = 1.0
#: Pace at which the gate widens over a gap, beyond its first GAP_FRAMES periods (a brisk walk).
WALKING_SPEED_M_S = 1.5


@dataclass
class Track:
    track_id: int
    position: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    hits: int = 1
    misses: int = 0
    last_t_ns: int = 0
    #: Long gaps (module docstring) this track came through; history kept per track ends at each.
    gaps: int = 0
    #: The gate a gap widened, kept while the track coasts on after it (0 once detected again): when
    #: the person is missed in the first frame after an outage, the next frame is no gap by its
    #: stamps, and the plain gate would lose them though they are just as far from the prediction.
    gap_gate_m: float = 0.0

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
        frame_period_s: float = 0.1,
        max_gap_gate_m: float = 1.5,
    ) -> None:
        """`frame_period_s` is the configured radar frame period (1 / radar.frame_rate_hz); it is
        used until two frame intervals have been seen, then the median of the last ones is.
        `max_gap_gate_m` bounds the gate after a gap (module docstring)."""
        if not (np.isfinite(frame_period_s) and frame_period_s > 0):
            raise ValueError(
                f"tracker frame_period_s must be a positive number of seconds, got {frame_period_s!r}: "
                "pass 1 / radar.frame_rate_hz"
            )
        self.gate_m = gate_m
        self.confirm_hits = confirm_hits
        self.max_misses = max_misses
        self.alpha = alpha
        self.beta = beta
        self.max_tracks = max_tracks
        #: A confirmed track stays reported through this many missed detections (a far or partly
        #: shadowed person drops below the CFAR threshold now and then), at its predicted position.
        self.coast_frames = coast_frames
        self.max_gap_gate_m = max(max_gap_gate_m, gate_m)
        self.tracks: list[Track] = []
        self._next_id = 1
        self._period_s = float(frame_period_s)
        self._intervals: collections.deque[int] = collections.deque(maxlen=PERIOD_WINDOW)
        self._last_frame_ns: int | None = None

    @property
    def frame_period_s(self) -> float:
        """The radar's frame period as its stamps show it: the median of the last frame intervals, so
        a late frame or a clock step does not move it, and a radar that sweeps slower or faster than
        configured is tracked at its real rate. The configured period until two intervals are known."""
        return self._period_s

    def _observe_frame(self, t_ns: int) -> None:
        last, self._last_frame_ns = self._last_frame_ns, int(t_ns)
        if last is None or t_ns <= last:
            return  # the first frame, a repeated stamp or a clock step back: no interval
        self._intervals.append(int(t_ns) - last)
        rate = median_rate_hz(self._intervals)
        if rate is not None:
            self._period_s = max(1.0 / rate, MIN_FRAME_PERIOD_S)

    def update(self, detections: np.ndarray, t_ns: int) -> list[Track]:
        """Associate (K,2) detections at time t_ns; returns the confirmed tracks after the update."""
        detections = np.asarray(detections, dtype=np.float64).reshape(-1, 2)
        self._observe_frame(t_ns)
        predicted, gates = [], []
        horizon_s = self._gap_after_s()
        for track in self.tracks:
            dt = max(0.0, (t_ns - track.last_t_ns) / 1e9) if track.last_t_ns else 0.0
            predicted.append(track.predict(min(dt, horizon_s)))
            if dt > horizon_s:
                track.gap_gate_m = max(track.gap_gate_m, self._gate(dt, horizon_s))
                if dt >= HISTORY_GAP_S:
                    track.gaps += 1  # detected or coasting: this frame is the first after a long gap
            gates.append(max(self._gate(dt, horizon_s), track.gap_gate_m))
        assigned_tracks: set[int] = set()
        assigned_dets: set[int] = set()
        if self.tracks and len(detections):
            cost = np.linalg.norm(np.asarray(predicted)[:, None, :] - detections[None, :, :], axis=-1)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] <= gates[r]:
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

    def _gap_after_s(self) -> float:
        """Time since a track's last update beyond which the next detection is a gap."""
        return GAP_FRAMES * self.frame_period_s

    def _gate(self, dt_s: float, horizon_s: float) -> float:
        """The association gate for a track last updated dt_s ago: gate_m, widened over a gap at
        walking pace up to max_gap_gate_m (the person may have moved; no farther than that is kept)."""
        if dt_s <= horizon_s:
            return self.gate_m
        return min(self.gate_m + WALKING_SPEED_M_S * (dt_s - horizon_s), self.max_gap_gate_m)

    def _correct(self, track: Track, predicted: np.ndarray, measured: np.ndarray, t_ns: int) -> None:
        dt = (t_ns - track.last_t_ns) / 1e9 if track.last_t_ns else self.frame_period_s
        residual = measured - predicted
        track.position = predicted + self.alpha * residual
        if MIN_VELOCITY_SHARE * self.frame_period_s <= dt <= self._gap_after_s():
            # A frame stamped like the last one (a repeated time stamp), before it (the clock stepped
            # back) or a moment after gives no time to divide by: its residual, over a tiny dt, would
            # make a person standing still race off beyond the gate and lose their track. It corrects
            # the position only. "A moment" is relative to the frame period: a fixed 20 ms learnt no
            # velocity at all from a radar running at 50 frames/s or more. A gap teaches none either:
            # its residual is against a capped prediction, over a time its stamps may not measure.
            track.velocity = track.velocity + (self.beta / dt) * residual
        track.hits += 1
        track.misses = 0
        track.gap_gate_m = 0.0
        track.last_t_ns = t_ns

    def confirmed(self) -> list[Track]:
        return [t for t in self.tracks if t.hits >= self.confirm_hits and t.misses <= self.coast_frames]
