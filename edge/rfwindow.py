"""RF windows for the RF encoder: per-channel range profiles gated around one person's position.

The RF encoder does not look at the whole scene; it looks at the echoes of one person, which every
virtual channel receives at its own bistatic path length |p - tx| + |p - rx|. So for each radar
frame this module

1. applies the per-channel front-end calibration, S21 / (g exp(-j 2 pi f tau)) (without it each
   channel's echo sits up to ~0.75 m of path away from where the geometry says, and the window
   misses the person),
2. removes the static background (walls, furniture and antenna coupling are 10-100x a person's echo):
   either a per-session mean (training from recordings) or the runtime's running mean,
3. Hann-windows the sweep and IFFTs it zero-padded to a finely sampled range profile
   (`vrclip.edge.imaging.profiles.ProfileLayout`, the same layout the imager uses), and
4. samples each channel's profile at `range_bins` path lengths spanning `span_m` around that
   channel's path to the person (floor position at `centre_height_m`), multiplied by the carrier
   phase, so a scatterer at the gate point adds up in phase across channels, and
5. undoes the spherical spreading loss of each channel at the gate point (range compensation), so
   the echo level is the person's (body size, reflectivity), not their distance's.

Beamformed windows (`beam_heights_m` set) go one step further: instead of handing the model every
Tx/Rx pair's own window, they sum all pairs coherently (back-projection) at points around the person:
one *beam* per (height, cross-range offset), sampled at `range_bins` offsets along the line from the
array to the person. A pair's window depends on where the person stands relative to that pair, so a
model that sees pairs must learn a different pattern at every position; a beam's profile is the
person's own reflectivity against height (head, shoulders, what they carry, at what height), which
stays the same wherever they walk. Measured on vrr-sim3 with no learning at all (mean |beam| over 12
frames, max over the local grid, cosine distance, same-session matches excluded): 69.6 % mAP across
sessions, against 7.4 % for the same statistic of the per-pair windows (all 144 x 16).

`frames` consecutive gated frames of one person form one RF sample, (T, C, R) complex (C = pairs,
or beams ordered height-major), handed to the model as (T, C, R, 2) float32 (real, imaginary).
Trainer and runtime both build samples here (no torch), so the model sees the same representation in
the field as in training.
"""

from __future__ import annotations

import functools
import math
import numbers
import typing
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from vrclip.edge.config import SPEED_OF_LIGHT
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.imaging.clutter import ClutterFilter
from vrclip.edge.imaging.profiles import ProfileLayout

Background = Literal["session", "running", "none"]
#: Range at which range compensation leaves the echo level unchanged (metres).
REFERENCE_RANGE_M = 3.0


#: Largest RF window sizes a spec may ask for (the defaults: 12 frames, 8 range bins, padding 8 on
#: the CPU and 32 on the GPU, 13 x 7 beams): far beyond any model, far below an allocation that fails.
MAX_WINDOW_FRAMES = 1000
MAX_WINDOW_RANGE_BINS = 4096
MAX_WINDOW_PAD_FACTOR = 256
MAX_WINDOW_BEAMS = 10_000
#: ... and all of them together, per track and sample (the default: 12 x 8 x 91 = 8,736).
MAX_WINDOW_VALUES = 10_000_000


@dataclass(frozen=True)
class RFWindowSpec:
    """What one RF sample holds. Stored in checkpoints and engine manifests: change it, retrain."""

    #: Consecutive radar frames per sample (T).
    frames: int = 12
    #: Profile samples per channel (R).
    range_bins: int = 16
    #: Extent of the R samples, centred on the person (metres): bistatic path per pair, or one-way
    #: distance along the array->person line for beams.
    span_m: float = 1.6
    #: Height of the gate point above the floor position (metres): the trunk.
    centre_height_m: float = 1.0
    #: Virtual channels used, in switching order; empty = all of them.
    channels: tuple[int, ...] = ()
    #: IFFT length as a multiple of the sweep points (finer profile = less interpolation error).
    pad_factor: int = 8
    #: Static background removal: per-session mean, the runtime's running mean, or none.
    background: Background = "session"
    #: Weight of the newest frame in the running mean (background = "running").
    background_alpha: float = 0.05
    #: Undo spherical spreading: scale each channel by R_tx R_rx / (3 m)^2 at the gate point, so the
    #: echo level measures the person's radar cross-section instead of their distance to the array.
    range_compensation: bool = True
    #: Beamformed windows: heights (m above the floor) of the beams; empty = one window per Tx/Rx pair.
    #: With beams, `span_m` is a one-way distance along the array->person line, not a bistatic path.
    beam_heights_m: tuple[float, ...] = ()
    #: Cross-range offsets (m, perpendicular to the array->person line) of the beams at every height:
    #: a tracker's position is off by ~0.1 m, so the beams cover the body's width around it.
    beam_offsets_m: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.range_bins < 1:
            raise ValueError(
                f"RF window needs frames >= 1 and range_bins >= 1, got {self.frames}, {self.range_bins}"
            )
        # Upper bounds too: a spec comes from manifests and checkpoints, and each of these sizes the
        # buffers the runtime allocates per track (a damaged file asking for a million frames would
        # end in an out-of-memory kill rather than an error naming the key).
        beams = len(self.beam_heights_m) * max(1, len(self.beam_offsets_m))
        for key, value, most in (
            ("frames", self.frames, MAX_WINDOW_FRAMES),
            ("range_bins", self.range_bins, MAX_WINDOW_RANGE_BINS),
            ("pad_factor", self.pad_factor, MAX_WINDOW_PAD_FACTOR),
            ("beams", beams, MAX_WINDOW_BEAMS),
        ):
            if value > most:
                raise ValueError(f"RF window {key} = {value}: at most {most}")
        values = self.frames * self.range_bins * max(1, beams)
        if values > MAX_WINDOW_VALUES:
            raise ValueError(
                f"RF window of {self.frames} frames x {self.range_bins} range bins x {beams} beams = "
                f"{values} values per track: at most {MAX_WINDOW_VALUES}"
            )
        if not (math.isfinite(self.span_m) and self.span_m > 0):
            raise ValueError(f"RF window span_m = {self.span_m}: must be a positive finite length")
        if not math.isfinite(self.centre_height_m):
            raise ValueError(f"RF window centre_height_m = {self.centre_height_m}: must be finite")
        if self.pad_factor < 1:
            raise ValueError(f"RF window pad_factor = {self.pad_factor}: must be >= 1")
        if not 0.0 < self.background_alpha <= 1.0:
            raise ValueError(f"RF window background_alpha = {self.background_alpha}: must be in (0, 1]")
        if any(not math.isfinite(o) for o in self.beam_offsets_m):
            raise ValueError(f"RF window beam_offsets_m {self.beam_offsets_m}: must be finite offsets")
        if self.background not in ("session", "running", "none"):
            raise ValueError(f"RF window background = {self.background!r}: must be session, running or none")
        if len(set(self.channels)) != len(self.channels) or any(c < 0 for c in self.channels):
            raise ValueError(f"RF window channels {self.channels}: must be distinct non-negative indices")
        if self.beam_heights_m and not self.beam_offsets_m:
            raise ValueError("RF window beam_offsets_m is empty: give at least one offset, e.g. (0.0,)")
        if any(not np.isfinite(h) or h < 0 for h in self.beam_heights_m):
            raise ValueError(f"RF window beam_heights_m {self.beam_heights_m}: must be finite heights >= 0")

    @property
    def range_step_m(self) -> float:
        """Spacing of the R range samples (m of bistatic path, or of one-way distance for beams)."""
        return self.span_m / self.range_bins

    @property
    def beam_offset_step_m(self) -> float:
        """Spacing of the beams' cross-range offsets (m; they are evenly spaced), 0 with a single one."""
        offsets = np.asarray(self.beam_offsets_m, dtype=np.float64)
        return float(np.mean(np.diff(offsets))) if offsets.size > 1 else 0.0

    @property
    def beamformed(self) -> bool:
        return bool(self.beam_heights_m)

    def n_pairs(self, total: int) -> int:
        """Tx/Rx pairs read from each frame."""
        return len(self.channels) or total

    def n_channels(self, total: int) -> int:
        """Channels of the model input: beams when beamformed, else the pairs."""
        if self.beamformed:
            return len(self.beam_heights_m) * len(self.beam_offsets_m)
        return self.n_pairs(total)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, (kind, _) in _field_kinds().items():
            if kind is tuple:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RFWindowSpec:
        """The inverse of `to_dict`, for manifests and checkpoints: checked as untrusted input, so any
        malformed value is a ValueError naming its key (unknown keys are ignored, as older files
        may carry fields this version dropped)."""
        if not isinstance(data, dict):
            raise ValueError(f"RF window is a {type(data).__name__}, not a mapping")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        for key, (kind, element) in _field_kinds().items():
            if key not in known or kind is None:
                continue
            value = known[key]
            try:
                if kind is tuple:
                    whole = element is int
                    if isinstance(value, str | bytes) or not all(_is_number(v, whole) for v in value):
                        raise TypeError
                    known[key] = tuple(element(v) for v in value)
                elif kind is bool:
                    if not isinstance(value, bool | np.bool_):
                        raise TypeError
                    known[key] = bool(value)
                elif not _is_number(value, kind is int):
                    raise TypeError
                else:
                    known[key] = kind(value)
            except (TypeError, ValueError, OverflowError):
                wanted = _WINDOW_TYPE_WORDS[kind]
                raise ValueError(f"RF window {key} = {value!r}: expected {wanted}") from None
        return cls(**known)


@functools.cache
def _field_kinds() -> dict[str, tuple[type | None, type | None]]:
    """{field: (kind, element)} of RFWindowSpec from its annotations: int, float, bool, or tuple with
    its element type; kind None for a Literal (`background`, which the class checks itself)."""
    kinds: dict[str, tuple[type | None, type | None]] = {}
    for name, hint in typing.get_type_hints(RFWindowSpec).items():
        origin = typing.get_origin(hint)
        if origin is tuple:
            kinds[name] = (tuple, typing.get_args(hint)[0])
        elif origin is Literal:
            kinds[name] = (None, None)
        else:
            kinds[name] = (hint, None)
    return kinds


def _is_number(value: object, whole: bool) -> bool:
    """A real number (an integer when `whole`), numpy scalars included, booleans not."""
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, numbers.Integral if whole else numbers.Real)


_WINDOW_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", tuple: "a list of numbers"}


class RFWindowExtractor:
    """One radar (geometry + sweep + calibration) bound to a window spec; gates frames for any position."""

    def __init__(
        self,
        spec: RFWindowSpec,
        geometry: ArrayGeometry,
        freqs_hz: np.ndarray,
        calibration: ChannelCalibration | dict[str, Any] | None = None,
        source: str = "<radar>",
    ) -> None:
        self.spec = spec
        self.geometry = geometry
        total = geometry.n_channels
        if spec.channels and max(spec.channels) >= total:
            raise ValueError(
                f"{source}: RF window channel {max(spec.channels)} does not exist; "
                f"the array has {total} channels"
            )
        self.channel_index = np.asarray(spec.channels or range(total), dtype=np.int64)
        if isinstance(calibration, dict):
            calibration = ChannelCalibration.from_dict(calibration, source=f"{source} calibration")
        calibration = calibration or ChannelCalibration.identity(total)
        if calibration.n_channels != total:
            raise ValueError(
                f"{source}: the calibration holds {calibration.n_channels} channels but the array has {total}"
            )
        self.layout = ProfileLayout.build(freqs_hz, spec.pad_factor)
        self._correction = calibration.correction(freqs_hz)[self.channel_index]
        # Window (with the imager's pre-emphasis) applied before the IFFT; float32 keeps the hot loop cheap.
        self._weights = self.layout.fft_weights.astype(np.float32)
        half = (spec.range_bins - 1) / 2
        step = spec.range_step_m
        #: (R,) offsets of the samples around the gate point (metres): of bistatic path per pair, or of
        #: distance along the array->person line for beams.
        self.offsets_m = (np.arange(spec.range_bins) - half) * step
        self._tx = geometry.channel_tx[self.channel_index]
        self._rx = geometry.channel_rx[self.channel_index]
        self._tx32 = self._tx.astype(np.float32)
        self._rx32 = self._rx.astype(np.float32)
        #: Horizontal centre of the array: beams' range axis points from here to the person.
        self._array_xy = geometry.centre_xy
        self._clutter: ClutterFilter | None = (
            ClutterFilter("mean", spec.background_alpha) if spec.background == "running" else None
        )

    @property
    def array_xy(self) -> np.ndarray:
        """(2,) horizontal centre of the array in room coordinates: the origin of the array-centred
        floor positions an engine reads and writes (its `anchor` input and `position` output)."""
        return self._array_xy.copy()

    @property
    def n_pairs(self) -> int:
        """Tx/Rx pairs read from each frame (what calibration and background work on)."""
        return int(self.channel_index.size)

    @property
    def n_channels(self) -> int:
        """Channels of each output window (the model's C): beams, or the pairs."""
        return self.spec.n_channels(self.geometry.n_channels)

    # ------------------------------------------------------------------------------- conditioning
    def calibrate(self, s21: np.ndarray) -> np.ndarray:
        """(..., C_all, P) raw S21 -> (..., C, P) calibrated S21 of the selected channels, complex64."""
        x = np.asarray(s21)
        return np.multiply(x[..., self.channel_index, :], self._correction, dtype=np.complex64)

    @staticmethod
    def session_background(calibrated: np.ndarray) -> np.ndarray:
        """Per-session static background: the mean of every calibrated frame (n, C, P) of the session.

        A walking person's echo moves and averages out; what stays is what did not move.
        """
        return np.mean(np.asarray(calibrated, dtype=np.complex128), axis=0).astype(np.complex64)

    def profiles(self, conditioned: np.ndarray) -> np.ndarray:
        """(..., C, P) background-free frames -> (..., C, N) complex64 baseband range profiles."""
        x = np.asarray(conditioned)
        lay = self.layout
        k = lay.k_ref
        buf = np.zeros((*x.shape[:-1], lay.n_fft), np.complex64)
        weighted = x * self._weights
        buf[..., : lay.points - k] = weighted[..., k:]
        buf[..., lay.n_fft - k :] = weighted[..., :k]
        return np.fft.ifft(buf, axis=-1).astype(np.complex64)

    # ------------------------------------------------------------------------------------ gating
    def gate_paths(self, position_xy: np.ndarray) -> np.ndarray:
        """(C, R) bistatic path lengths sampled for a person at floor position (x, y)."""
        p = np.array([float(position_xy[0]), float(position_xy[1]), self.spec.centre_height_m])
        centre = self.geometry.path_lengths(p)[self.channel_index]
        return centre[:, None] + self.offsets_m[None, :]

    def beam_points(self, position_xy: np.ndarray) -> np.ndarray:
        """(B, R, 3) points the beams sample for a person at floor position (x, y), B height-major."""
        spec = self.spec
        xy = np.array([float(position_xy[0]), float(position_xy[1])])
        along = xy - self._array_xy
        norm = float(np.hypot(*along))
        along = along / norm if norm > 1e-6 else np.array([0.0, 1.0])
        across = np.array([-along[1], along[0]])
        heights = np.asarray(spec.beam_heights_m, dtype=np.float64)
        offsets = np.asarray(spec.beam_offsets_m, dtype=np.float64)
        horizontal = (
            xy[None, None, :]
            + offsets[:, None, None] * across[None, None, :]
            + self.offsets_m[None, :, None] * along[None, None, :]
        )  # (O, R, 2)
        pts = np.empty((heights.size, offsets.size, self.offsets_m.size, 3))
        pts[..., :2] = horizontal[None]
        pts[..., 2] = heights[:, None, None]
        return pts.reshape(heights.size * offsets.size, self.offsets_m.size, 3)

    def _sample(self, profiles: np.ndarray, paths: np.ndarray) -> np.ndarray:
        """Profiles (C, N) read at path lengths (C, ...) metres: linear interpolation between profile
        samples, times the carrier exp(+j 2 pi f_ref path / c), complex64.

        The runtime calls this per track per radar frame (for beams 144 pairs x ~700 points), so it
        works in float32 on flat indices: path lengths of a few metres keep ~1e-6 m in float32, i.e.
        ~1e-4 rad of carrier phase, far below the noise. The profile repeats every N samples (c / df
        of path), so indices wrap.
        """
        path = np.asarray(paths, dtype=np.float32)
        n = self.layout.n_fft
        pos = path * np.float32(1.0 / self.layout.bin_m)
        below = np.floor(pos)
        frac = pos - below
        i0 = below.astype(np.int32) % n
        rows = (np.arange(profiles.shape[0], dtype=np.int32) * n).reshape((-1,) + (1,) * (path.ndim - 1))
        flat = np.ascontiguousarray(profiles, dtype=np.complex64).ravel()
        a = flat[i0 + rows]
        values = a + (flat[(i0 + 1) % n + rows] - a) * frac
        cycles = path * np.float32(self.layout.f_ref_hz / SPEED_OF_LIGHT)
        phase = (cycles - np.floor(cycles)) * np.float32(2.0 * np.pi)
        carrier = np.empty(phase.shape, np.complex64)  # cos + j sin: ~25x faster than a complex exp
        carrier.real = np.cos(phase)
        carrier.imag = np.sin(phase)
        values *= carrier
        return values

    def beams(self, profiles: np.ndarray, position_xy: np.ndarray) -> np.ndarray:
        """(C_pairs, N) profiles of one frame -> (B, R) complex64: every pair summed in phase at each
        beam point (with each pair's spreading loss undone there), divided by the number of pairs."""
        pts = self.beam_points(position_xy).reshape(-1, 3).astype(np.float32)
        d_tx = _distances(self._tx32, pts)
        d_rx = _distances(self._rx32, pts)
        values = self._sample(profiles, d_tx + d_rx)  # (C, P)
        if self.spec.range_compensation:
            values *= d_tx * d_rx * np.float32(1.0 / REFERENCE_RANGE_M**2)
        out = values.sum(axis=0) * np.float32(1.0 / profiles.shape[0])
        return out.reshape(self.n_channels, self.spec.range_bins).astype(np.complex64)

    def gate(self, profiles: np.ndarray, position_xy: np.ndarray) -> np.ndarray:
        """(C_pairs, N) profiles of one frame -> (C, R) complex64 window around the person: each pair's
        carrier-compensated profile, or the beams when the spec asks for them."""
        if self.spec.beamformed:
            return self.beams(profiles, position_xy)
        out = self._sample(profiles, self.gate_paths(position_xy))
        if self.spec.range_compensation:
            out = out * self._spreading(position_xy)[:, None]
        return out.astype(np.complex64)

    def _spreading(self, position_xy: np.ndarray) -> np.ndarray:
        """(C,) R_tx R_rx / R_ref^2 of the gate point: the 1/(R_tx R_rx) loss of every channel, undone."""
        p = np.array([float(position_xy[0]), float(position_xy[1]), self.spec.centre_height_m])
        d_tx = np.linalg.norm(self._tx - p, axis=1)
        return d_tx * np.linalg.norm(self._rx - p, axis=1) / REFERENCE_RANGE_M**2

    def windows(
        self, s21: np.ndarray, positions: np.ndarray, background: np.ndarray | None = None
    ) -> np.ndarray:
        """Gate a block of frames: s21 (n, C_all, P) raw, positions (n, 2) -> (n, C, R) complex64.

        `background` (C, P) is subtracted from the calibrated frames (spec.background == "session":
        pass `session_background` of the whole session; None computes it from this block). With
        "running" the extractor's own running-mean filter is advanced frame by frame, exactly as the
        runtime does; with "none" nothing is subtracted.
        """
        cal = self.calibrate(s21)
        if self.spec.background == "session":
            cal = cal - (self.session_background(cal) if background is None else background)
        elif self.spec.background == "running":
            assert self._clutter is not None
            cal = np.stack([self._clutter(frame) for frame in cal]) if len(cal) else cal
        prof = self.profiles(cal)
        out = np.zeros((len(prof), self.n_channels, self.spec.range_bins), np.complex64)
        for i, (frame, xy) in enumerate(zip(prof, np.asarray(positions), strict=True)):
            if np.all(np.isfinite(xy)):
                out[i] = self.gate(frame, xy)
        return out

    def reset(self) -> None:
        """Forget the running background (after the rig moved or the sweep changed)."""
        if self._clutter is not None:
            self._clutter.reset()


def _distances(origins: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(C, 3) x (P, 3) -> (C, P) Euclidean distances, in the inputs' dtype."""
    total = np.square(points[None, :, 0] - origins[:, 0:1])
    total += np.square(points[None, :, 1] - origins[:, 1:2])
    total += np.square(points[None, :, 2] - origins[:, 2:3])
    return np.sqrt(total)


def to_model_input(windows: np.ndarray) -> np.ndarray:
    """(..., T, C, R) complex -> (..., T, C, R, 2) float32 (real, imaginary): the model's RF input."""
    w = np.asarray(windows)
    return np.stack([w.real, w.imag], axis=-1).astype(np.float32)


class RFSequence:
    """The last T gated windows of one track, bounded: the runtime feeds one per radar frame."""

    def __init__(self, frames: int) -> None:
        if frames < 1:
            raise ValueError(f"RF sequence length must be >= 1, got {frames}")
        self.frames = frames
        self._buffer: deque[np.ndarray] = deque(maxlen=frames)

    def push(self, window: np.ndarray) -> None:
        self._buffer.append(np.asarray(window, dtype=np.complex64))

    @property
    def ready(self) -> bool:
        return len(self._buffer) == self.frames

    def sample(self) -> np.ndarray:
        """(T, C, R, 2) float32 model input; raises if fewer than T frames were pushed."""
        if not self.ready:
            raise ValueError(
                f"RF sequence holds {len(self._buffer)} of the {self.frames} frames a sample needs"
            )
        return to_model_input(np.stack(self._buffer))


__all__ = ["RFSequence", "RFWindowExtractor", "RFWindowSpec", "to_model_input"]
