"""From HDF5 session recordings to (crop, RF window sequence, anchor, position, identity) samples.

Each recording is read once per preprocessing spec and cached as plain .npy files beside nothing
else (memory-mapped on later runs), because decoding JPEGs and running a 144-channel IFFT per radar
frame costs far more than a training epoch of the tiny model.

A *track* is one identity in one session: per radar frame, its ground-truth floor position, an
anchor (the position jittered by `anchor_jitter_m`, standing in for the tracker's estimate that the
runtime gates around), the person crop from the camera frame nearest in time (cut around the anchor
projected to that frame), whether the camera saw the person, and the gated RF window. A *sample* is
the end frame e of T consecutive frames of a track: RF frames e-T+1..e, crop and anchor of frame e.

The split follows the published protocol: per identity one random contiguous segment (10 s) of one
random session is the training set; everything not overlapping it is the test set. The segment is
drawn only where the person is labelled throughout, so nobody is left without training samples.

Radar time breaks. A recording made on site can hold a radar outage (a VNA reconnecting: seconds with
no frames) or an NTP clock step forward or back. A frame interval that is not positive, or longer than
GAP_FRAMES typical frame periods (the tracker's rule, `pipeline.tracker`), is a break: neither a
sample's T frames nor a training segment spans one, so no RF window feeds the model frames seconds (or
an hour) apart as if consecutive, and a segment's 10 s are counted in frames of one unbroken run.
A clock step back is no reason to refuse the recording any more: camera frames are paired within the
camera's own runs between steps back (`_pair_camera`, `edge.timebase.clock_runs`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.edge.crops import CropSpec, camera_from_config, crop_person
from vrclip.edge.dataset import segment_frames
from vrclip.edge.errors import ConfigError, RecordingError, UserError
from vrclip.edge.pipeline.tracker import GAP_FRAMES
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.rfwindow import RFWindowExtractor, RFWindowSpec
from vrclip.edge.timebase.clock_runs import clock_runs, run_owner

#: Bump when the cached arrays change meaning, so stale caches are rebuilt rather than misread.
#: 3: a crop whose box lies wholly outside the image is no longer marked ok (`crop_person`).
CACHE_VERSION = 3
#: Camera frames further than this from a radar frame are not paired with it (the RGB is "absent").
PAIR_SLOP_NS = 60_000_000


class DatasetError(UserError):
    """The dataset cannot be used: missing or unlabelled recordings, or too little data for the split."""


@dataclass(frozen=True)
class SessionInfo:
    """One recording of the dataset and what the index says about it."""

    path: Path
    #: Stable name of the session: its path relative to the dataset root.
    name: str
    lighting: str
    occlusion: str


@dataclass(frozen=True)
class PrepSpec:
    """Everything that shapes the cached arrays; its hash names the cache."""

    rf: RFWindowSpec = field(default_factory=RFWindowSpec)
    crop: CropSpec = field(default_factory=CropSpec)
    anchor_jitter_m: float = 0.1
    #: Frame-to-frame correlation of the anchor error (AR(1)): a tracker's error drifts, it does not jump.
    anchor_correlation: float = 0.9
    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        return {
            "rf": self.rf.to_dict(),
            "crop": asdict(self.crop),
            "anchor_jitter_m": self.anchor_jitter_m,
            "anchor_correlation": self.anchor_correlation,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepSpec:
        return cls(
            RFWindowSpec.from_dict(data["rf"]),
            CropSpec(**data["crop"]),
            float(data["anchor_jitter_m"]),
            float(data["anchor_correlation"]),
            int(data["seed"]),
        )

    def digest(self) -> str:
        text = json.dumps({"v": CACHE_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Track:
    """One identity in one session, frame-aligned to the radar stream."""

    session: SessionInfo
    identity: str
    #: (n,) radar timestamps (ns).
    t_ns: np.ndarray
    #: (n, 2) float32 true floor position (NaN where the person is not in the frame's labels).
    position: np.ndarray
    #: (n, 2) float32 anchor the RF window and the crop were cut around.
    anchor: np.ndarray
    #: (n,) bool: a camera frame was paired and the person could be projected into it.
    rgb_ok: np.ndarray
    #: (n,) bool: the camera saw the person (not occluded, in view) in the paired frame.
    visible: np.ndarray
    #: (n, H, W, 3) uint8 person crops (possibly memory-mapped).
    crops: np.ndarray
    #: (n, C, R) complex64 gated RF windows (possibly memory-mapped).
    rf: np.ndarray
    #: (2,) horizontal centre of the radar array (m): beams' range axis points from here to the anchor.
    array_xy: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.t_ns.size)

    @property
    def labelled(self) -> np.ndarray:
        return np.all(np.isfinite(self.position), axis=1)

    @cached_property
    def breaks(self) -> np.ndarray:
        """(n,) bool: the interval from the frame before is a radar time break (`radar_breaks`)."""
        return radar_breaks(self.t_ns)

    def rate_hz(self) -> float:
        """Frames per second: the median interval within unbroken runs (an outage or a clock step
        says nothing about the radar's rate; without breaks this is the median of all intervals)."""
        steps = np.diff(self.t_ns)[~self.breaks[1:]]
        if steps.size == 0:
            return 0.0
        return float(1e9 / np.median(steps))

    def longest_unbroken(self) -> int:
        """Frames in the longest run without a radar time break (all of them when there is none)."""
        return _longest_true_run(~self.breaks[1:]) + 1 if self.frames else 0


def radar_breaks(t_ns: np.ndarray) -> np.ndarray:
    """(n,) bool, True at frame i when the interval from frame i-1 is a break: not positive (the
    clock stepped back or stood still) or over GAP_FRAMES typical frame periods (an outage, or the
    clock stepped forward). The typical period is the median of the positive intervals, so one
    hour's step or a few stamps standing still do not move it."""
    t = np.asarray(t_ns, np.int64)
    breaks = np.zeros(t.size, bool)
    if t.size < 2:
        return breaks
    steps = np.diff(t)
    forward = steps[steps > 0]
    period = float(np.median(forward)) if forward.size else 0.0
    breaks[1:] = (steps <= 0) | (steps > GAP_FRAMES * period)
    return breaks


def _longest_true_run(flags: np.ndarray) -> int:
    """Length of the longest run of True in `flags` (0 when there is none)."""
    edges = np.diff(np.concatenate([[0], np.asarray(flags, np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((stops - starts).max()) if starts.size else 0


def break_report(tracks: Sequence[Track]) -> list[str]:
    """Log lines: each recording's radar time breaks, by kind, or one line saying there were none."""
    lines = []
    sessions: dict[str, Track] = {}
    for tr in tracks:  # the tracks of one session share its radar stamps
        sessions.setdefault(tr.session.name, tr)
    for tr in sessions.values():
        count = int(tr.breaks.sum())
        if count:
            back = int((np.diff(tr.t_ns)[tr.breaks[1:]] <= 0).sum())
            lines.append(
                f"{tr.session.path}: {count} radar time break(s) ({count - back} outage or clock step "
                f"forward, {back} clock step back or stamp standing still); no RF window or training "
                f"segment spans one (longest unbroken run: {tr.longest_unbroken()} of {tr.frames} frames)"
            )
    if not lines:
        lines.append(f"radar time breaks: none in {len(sessions)} recording(s)")
    return lines


# -------------------------------------------------------------------------------------- the index
def discover_sessions(root: str | Path) -> list[SessionInfo]:
    """Sessions of a dataset folder: from its dataset.json when present, else every *.h5 below it."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root}: no such dataset folder; make one with `vrclip-edge dataset make --out {root}`"
        )
    index = root / "dataset.json"
    sessions: list[SessionInfo] = []
    if index.is_file():
        try:
            data = json.loads(index.read_text())
            entries = data["sessions"]
            for e in entries:
                path = root / str(e["path"])
                sessions.append(SessionInfo(path, str(e["path"]), str(e["lighting"]), str(e["occlusion"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(
                f"{index}: not a dataset index ({exc!r}); "
                "expected {'sessions': [{path, lighting, occlusion}, ...]}"
            ) from exc
        missing = [s.name for s in sessions if not s.path.is_file()]
        if missing:
            raise DatasetError(
                f"{index}: lists {len(missing)} recordings that do not exist (first: {root / missing[0]}); "
                "finish the dataset with the same `vrclip-edge dataset make` command"
            )
    else:
        for path in sorted(root.rglob("*.h5")):
            with SessionReader(path) as reader:
                cond = reader.conditions
            sessions.append(
                SessionInfo(
                    path,
                    str(path.relative_to(root)),
                    str(cond.get("lighting", "unknown")),
                    str(cond.get("occlusion", "unknown")),
                )
            )
    if not sessions:
        raise DatasetError(f"{root}: holds no recordings (*.h5) and no dataset.json")
    return sessions


def recorded_channels(sessions: Sequence[SessionInfo]) -> int:
    """The virtual channel count of the radar array the sessions were recorded with (each recording's
    stored geometry); a DatasetError when they disagree: one model takes one array's RF windows."""
    first: tuple[str, int] | None = None
    for session in sessions:
        with SessionReader(session.path) as reader:
            count = reader.array_geometry.n_channels
        if first is None:
            first = (session.name, count)
        elif count != first[1]:
            raise DatasetError(
                f"{session.path}: recorded with a {count}-channel radar array, but {first[0]} with a "
                f"{first[1]}-channel one; train on recordings of one array"
            )
    if first is None:
        raise DatasetError("no recordings to read the radar array's channel count from")
    return first[1]


# ---------------------------------------------------------------------------------- preprocessing
def _pair_camera(radar_t: np.ndarray, camera_t: np.ndarray) -> np.ndarray:
    """Index of the nearest camera frame for every radar frame, -1 where none lies within the slop
    or where it is ambiguous.

    The camera's stamps step back with the clock (one clock stamps both streams), so they are split
    into runs (`clock_runs`), each searched on its own, and a radar frame takes its camera frame from
    the run that owns its time only (`run_owner`). A radar frame within one run's span was taken on
    that side of the step: a frame of the other run within the slop of it was taken seconds away
    from its RF window. A radar frame within two runs' spans has a stamp the clock showed twice
    (before and after a step back): which of the two moments it was taken at is unknown, so it gets
    no camera frame (its RGB counts as absent).
    """
    runs = clock_runs(camera_t)
    if len(runs) <= 1:
        return _pair_sorted(radar_t, camera_t)
    got = [_pair_sorted(radar_t, camera_t[run]) for run in runs]
    owner = run_owner(camera_t, runs, radar_t, [j >= 0 for j in got])
    pair = np.full(radar_t.shape, -1, np.int64)
    for k, (run, j) in enumerate(zip(runs, got, strict=True)):
        ours = owner == k
        pair[ours] = j[ours] + run.start
    return pair


def _pair_sorted(radar_t: np.ndarray, camera_t: np.ndarray) -> np.ndarray:
    """`_pair_camera` over camera stamps that never go back (a binary search needs them sorted)."""
    if camera_t.size == 0:
        return np.full(radar_t.shape, -1, np.int64)
    j = np.clip(np.searchsorted(camera_t, radar_t), 1, max(camera_t.size - 1, 1))
    if camera_t.size == 1:
        j = np.zeros_like(j)
    else:
        left = camera_t[j - 1]
        j = np.where(np.abs(radar_t - left) <= np.abs(camera_t[j] - radar_t), j - 1, j)
    return np.where(np.abs(camera_t[j] - radar_t) <= PAIR_SLOP_NS, j, -1)


def _positions_of(truth: dict[str, np.ndarray], ident: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) positions and (n,) visible flags of identity index `ident` (NaN/False where absent)."""
    ids = truth["ids"].astype(np.int64)
    count = truth["count"].astype(np.int64)
    slots = np.arange(ids.shape[1])[None, :]
    hit = (ids == ident) & (slots < count[:, None])
    found = hit.any(axis=1)
    slot = hit.argmax(axis=1)
    rows = np.arange(ids.shape[0])
    pos = truth["positions"][rows, slot].astype(np.float32)
    pos[~found] = np.nan
    vis = truth["visible"][rows, slot].astype(bool) & found
    return pos, vis


def preprocess_session(session: SessionInfo, spec: PrepSpec) -> list[dict[str, np.ndarray]]:
    """Read one recording and build one array dict per labelled identity (see `Track`)."""
    where = str(session.path)
    with SessionReader(session.path) as reader:
        if "camera" not in reader.streams:
            raise DatasetError(f"{where}: has no camera stream; VRCLIP trains on RGB + radar recordings")
        n = reader.count("radar")
        if n == 0:
            raise DatasetError(f"{where}: holds no radar frames")
        truth = reader.truth_block("radar", 0, n)
        if not reader.identities or int(np.max(truth["count"])) <= 0:
            raise DatasetError(
                f"{where}: has no identity labels (no ground truth per frame); "
                "VRCLIP needs labelled recordings"
            )
        config = reader.edge_config()
        geometry = reader.array_geometry
        try:
            extractor = RFWindowExtractor(
                spec.rf, geometry, reader.freqs_hz, reader.calibration, source=where
            )
        except (ValueError, ConfigError) as e:
            raise DatasetError(f"{where}: cannot gate RF windows ({e})") from e
        camera = camera_from_config(config)
        if reader.camera_size != (camera.height, camera.width):
            raise RecordingError(
                f"{where}: camera frames are {reader.camera_size} but its config says "
                f"{camera.height}x{camera.width}; the file is inconsistent"
            )
        cam_n = reader.count("camera")
        cam_truth = reader.truth_block("camera", 0, cam_n)
        # Radar in bounded blocks; the per-session background needs every calibrated frame once.
        block = 64
        calibrated_sum = np.zeros((extractor.n_pairs, reader.freqs_hz.size), np.complex128)
        t_parts = []
        for b in range(0, n, block):
            s21, t = reader.radar_block(b, min(n, b + block))
            _require_finite(s21, b, where)
            calibrated_sum += extractor.calibrate(s21).astype(np.complex128).sum(axis=0)
            t_parts.append(t)
        background = (calibrated_sum / n).astype(np.complex64)
        t_ns = np.concatenate(t_parts).astype(np.int64)
        _require_radar_clock(t_ns, where)
        pair = _pair_camera(t_ns, _camera_times(reader, cam_n))
        tracks = []
        for ident_index, identity in enumerate(reader.identities):
            position, _ = _positions_of(truth, ident_index)
            if not np.isfinite(position).all(axis=1).any():
                continue
            cam_pos, cam_vis = _positions_of(cam_truth, ident_index)
            _require_plausible_positions(position, "radar", identity, where)
            _require_plausible_positions(cam_pos, "camera", identity, where)
            rng = np.random.default_rng(_track_seed(spec.seed, session.name, identity))
            jitter = ar1_noise(rng, n, spec.anchor_jitter_m, spec.anchor_correlation)
            anchor = position + jitter
            extractor.reset()
            rf = np.zeros((n, extractor.n_channels, spec.rf.range_bins), np.complex64)
            for b in range(0, n, block):
                e = min(n, b + block)
                s21, _ = reader.radar_block(b, e)
                rf[b:e] = extractor.windows(s21, anchor[b:e], background)
            crops = np.zeros((n, spec.crop.height, spec.crop.width, 3), np.uint8)
            rgb_ok = np.zeros(n, bool)
            visible = np.zeros(n, bool)
            decoded: dict[int, np.ndarray] = {}
            for i in range(n):
                j = int(pair[i])
                if j < 0 or not np.isfinite(cam_pos[j]).all() or not np.isfinite(anchor[i]).all():
                    continue
                if j not in decoded:
                    decoded.clear()  # radar and camera advance together: keep one decoded frame
                    decoded[j] = reader.camera(j).rgb
                # Crop around where the person was at the camera frame, with this frame's anchor error.
                crops[i], rgb_ok[i] = crop_person(decoded[j], camera, cam_pos[j] + jitter[i], spec.crop)
                visible[i] = bool(cam_vis[j])
            tracks.append(
                {
                    "identity": np.array(identity),
                    "t_ns": t_ns,
                    "position": position,
                    "anchor": anchor,
                    "rgb_ok": rgb_ok,
                    "visible": visible,
                    "crops": crops,
                    "rf": rf,
                }
            )
        if not tracks:
            raise DatasetError(f"{where}: no frame carries a position label for any identity")
        return tracks


def _require_finite(s21: np.ndarray, first: int, where: str) -> None:
    """Refuse radar frames with NaN or infinite samples (frames `first`.. of the block `s21`).

    One such sample spreads through the session's background into every RF window of the session,
    and training would fail much later in the CCA's factorisation, naming no file.
    """
    bad = ~np.isfinite(s21).all(axis=tuple(range(1, s21.ndim)))
    if bad.any():
        raise DatasetError(
            f"{where}: radar frame {first + int(np.argmax(bad))} holds NaN or infinite S-parameters; "
            "the recording is damaged - re-record the session or leave it out of the dataset"
        )


#: Largest floor coordinate (m) a label may hold: far beyond any room a 2 GHz UWB array images.
MAX_LABEL_COORDINATE_M = 100.0


def _require_plausible_positions(position: np.ndarray, stream: str, identity: str, where: str) -> None:
    """Refuse labelled floor positions no room holds (a damaged file, a label in millimetres).

    Used as is, such a position gates the RF window and cuts the crop nowhere near the person, and
    training failed much later in the CCA's factorisation (torch._LinAlgError), naming no file.
    """
    labelled = np.isfinite(position).all(axis=1)
    far = labelled & (np.abs(np.where(labelled[:, None], position, 0.0)).max(axis=1) > MAX_LABEL_COORDINATE_M)
    if far.any():
        i = int(np.argmax(far))
        raise DatasetError(
            f"{where}: {identity}'s label at {stream} frame {i} is "
            f"({position[i, 0]:.4g}, {position[i, 1]:.4g}) m, over "
            f"{MAX_LABEL_COORDINATE_M:g} m from the origin; labels are floor positions in metres - "
            "relabel the session or leave it out of the dataset"
        )


def _require_radar_clock(t_ns: np.ndarray, where: str) -> None:
    """Refuse radar stamps that mostly do not advance: a damaged timing dataset, not a clock step.

    A clock step back or an outage is a break the split keeps windows and segments from spanning
    (`radar_breaks`), but the frame rate is the median interval within unbroken runs: with most
    intervals zero or negative there is no rate to count the training segment's seconds in.
    """
    steps = np.diff(t_ns)
    if steps.size and np.median(steps) <= 0:
        i = int(np.argmax(steps <= 0)) + 1
        raise DatasetError(
            f"{where}: radar frame {i} is time-stamped {int(t_ns[i])} ns, not after frame {i - 1} "
            f"({int(t_ns[i - 1])} ns), and so are {int((steps <= 0).sum())} of its {steps.size} frame "
            "intervals: the radar stamps do not advance, the file is damaged - re-record the session "
            "or leave it out of the dataset"
        )


def _camera_times(reader: SessionReader, count: int) -> np.ndarray:
    """The first `count` camera time stamps, read in bulk without decoding a single JPEG.

    Pairing needs only the times; reading them through `camera(i)` would decode every frame of the
    session once more just to throw the pixels away.
    """
    return reader.times("camera", 0, count)


def ar1_noise(rng: np.random.Generator, n: int, std: float, rho: float) -> np.ndarray:
    """(n, 2) float32 stationary AR(1) noise with standard deviation `std` and lag-1 correlation `rho`."""
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"anchor correlation {rho}: must be in [0, 1)")
    eps = rng.normal(0.0, std, size=(n, 2))
    out = np.empty((n, 2))
    if n:
        out[0] = eps[0]
    innovation = np.sqrt(1.0 - rho * rho)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + innovation * eps[i]
    return out.astype(np.float32)


def _track_seed(seed: int, session: str, identity: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{session}:{identity}".encode()).digest()[:8], "little")


def _cache_dir(cache_root: Path, spec: PrepSpec, session: SessionInfo) -> Path:
    st = session.path.stat()
    stamp = hashlib.sha256(f"{session.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    safe = session.name.replace("/", "__").removesuffix(".h5")
    return cache_root / spec.digest() / f"{safe}-{stamp}"


_ARRAYS = ("t_ns", "position", "anchor", "rgb_ok", "visible", "crops", "rf")


def _write_cache(folder: Path, tracks: list[dict[str, np.ndarray]]) -> None:
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for k, tr in enumerate(tracks):
        for name in _ARRAYS:
            np.save(tmp / f"{k}.{name}.npy", tr[name])
    (tmp / "tracks.json").write_text(json.dumps([str(tr["identity"]) for tr in tracks]))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same session first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(folder: Path, session: SessionInfo) -> list[Track] | None:
    index = folder / "tracks.json"
    if not index.is_file():
        return None
    centre = array_centre(session)  # the recording, not the cache: its failure must not wipe the cache
    try:
        identities = json.loads(index.read_text())
        tracks = []
        for k, identity in enumerate(identities):
            arrays = {name: np.load(folder / f"{k}.{name}.npy", mmap_mode="r") for name in _ARRAYS}
            small = {
                name: np.array(arrays[name]) for name in ("t_ns", "position", "anchor", "rgb_ok", "visible")
            }
            tracks.append(
                Track(
                    session,
                    str(identity),
                    crops=arrays["crops"],
                    rf=arrays["rf"],
                    array_xy=centre,
                    **small,
                )
            )
        return tracks
    except (OSError, ValueError) as e:  # a damaged cache is rebuilt, never trusted
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        _ = e
        return None


def array_centre(session: SessionInfo) -> np.ndarray:
    """(2,) horizontal centre of the recording's radar array (the beams' origin), from its geometry."""
    with SessionReader(session.path) as reader:
        return np.asarray(reader.array_geometry.centre_xy, np.float32)


def _prepare_one(args: tuple[SessionInfo, PrepSpec, str]) -> str:
    session, spec, cache_root = args
    folder = _cache_dir(Path(cache_root), spec, session)
    if not (folder / "tracks.json").is_file():
        _write_cache(folder, preprocess_session(session, spec))
    return session.name


def session_ids(sessions: Sequence[SessionInfo]) -> dict[str, str]:
    """{session name: its recording's session_id}: what tells one dataset's recordings from another's
    with the same file names (`dataset make` with another seed writes the same names)."""
    ids = {}
    for session in sessions:
        with SessionReader(session.path) as reader:
            ids[session.name] = reader.session_id
    return ids


def other_recordings(saved: Any, now: dict[str, str]) -> list[str]:
    """The session names whose recording is not the one `saved` ({name: session_id}, from a
    checkpoint; anything else, from an older checkpoint, checks nothing) recorded. A session with no
    id on either side (a recording made before recordings carried one) checks nothing either."""
    if not isinstance(saved, dict):
        return []
    return sorted(name for name, sid in now.items() if sid and saved.get(name) and saved[name] != sid)


def load_tracks(
    sessions: Sequence[SessionInfo],
    spec: PrepSpec,
    cache_root: str | Path,
    jobs: int = 1,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Track]:
    """Preprocess (or load from the cache) every session; returns all tracks in session order."""
    cache_root = Path(cache_root)
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"{cache_root}: cannot create the preprocessing cache ({e.strerror}); "
            "pass --cache DIR on a writable disk"
        ) from e
    todo = [s for s in sessions if not (_cache_dir(cache_root, spec, s) / "tracks.json").is_file()]
    done = len(sessions) - len(todo)
    if progress:
        progress(done, len(sessions), "")
    if todo:
        work = [(s, spec, str(cache_root)) for s in todo]
        if jobs <= 1 or len(todo) == 1:
            for item in work:
                name = _prepare_one(item)
                done += 1
                if progress:
                    progress(done, len(sessions), name)
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
                for name in pool.map(_prepare_one, work):
                    done += 1
                    if progress:
                        progress(done, len(sessions), name)
    tracks: list[Track] = []
    for s in sessions:
        got = _read_cache(_cache_dir(cache_root, spec, s), s)
        if got is None:  # damaged cache: rebuild once in this process
            _prepare_one((s, spec, str(cache_root)))
            got = _read_cache(_cache_dir(cache_root, spec, s), s)
        if got is None:
            raise DatasetError(f"{cache_root}: cannot write or read the preprocessing cache for {s.name}")
        tracks.extend(got)
    return tracks


# -------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class Segment:
    """The training segment of one identity: radar frames [start, stop) of one session."""

    identity: str
    session: str
    start: int
    stop: int


@dataclass(frozen=True)
class SampleIndex:
    """Samples as (track index, end frame) pairs."""

    track: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return int(self.track.size)

    def subset(self, mask: np.ndarray) -> SampleIndex:
        return SampleIndex(self.track[mask], self.end[mask])


def labelled_starts(track: Track, length: int) -> np.ndarray:
    """Start frames of every `length`-frame run of `track` that is labelled throughout and spans no
    radar time break (ascending).

    A training segment must lie where the person is labelled: samples need labelled frames, so a
    segment drawn over frames where they had left the room would give that identity no training data.
    Across a break the frames are not consecutive in time (module docstring).
    """
    if length < 1 or track.frames < length:
        return np.zeros(0, np.int64)
    unlabelled = np.concatenate([[0], np.cumsum(~track.labelled, dtype=np.int64)])
    # breaks[k]: breaks among frames 0..k-1; a run s..s+length-1 must hold none at s+1..s+length-1.
    breaks = np.concatenate([[0], np.cumsum(track.breaks, dtype=np.int64)])
    whole = unlabelled[length:] == unlabelled[:-length]
    unbroken = breaks[length:] == breaks[1 : track.frames - length + 2]
    return np.flatnonzero(whole & unbroken).astype(np.int64)


def choose_segments(tracks: Sequence[Track], seconds: float, frames: int, seed: int) -> list[Segment]:
    """One random `seconds`-long segment of one random session per identity (the published split).

    Only sessions with at least one fully labelled run that long are drawn from, and the start is
    drawn among that session's fully labelled runs. Where every frame is labelled this makes exactly
    the random calls (and so picks exactly the segments) the published split always made: the
    session by `rng.integers(len(candidates))`, the start by `rng.integers(frames - need + 1)`.
    No run spans a radar time break, and `seconds` is counted in frames at the rate within runs.
    """
    rng = np.random.default_rng(seed)
    by_identity: dict[str, list[int]] = {}
    for i, tr in enumerate(tracks):
        by_identity.setdefault(tr.identity, []).append(i)
    segments = []
    for identity in sorted(by_identity):
        long_enough = False
        candidates: list[tuple[int, int, np.ndarray]] = []
        for i in by_identity[identity]:
            tr = tracks[i]
            need = segment_frames(tr.rate_hz(), seconds, frames)
            if tr.longest_unbroken() >= need:
                long_enough = True
                starts = labelled_starts(tr, need)
                if starts.size:
                    candidates.append((i, need, starts))
        if not long_enough:
            longest = max(by_identity[identity], key=lambda i: tracks[i].longest_unbroken())
            tr = tracks[longest]
            run = tr.longest_unbroken()
            broken = int(tr.breaks.sum())
            between = f" in a row between its {broken} radar time breaks" if broken else ""
            raise DatasetError(
                f"{identity}: its longest recording {tr.session.path} has {run} radar frames{between} "
                f"({run / max(tr.rate_hz(), 1e-9):.1f} s) but the training segment needs {seconds:g} s "
                f"(and at least T = {frames} frames); record longer sessions or "
                f"{_shorter_segment(run, tr.rate_hz(), seconds, frames)}"
            )
        if not candidates:
            best, run = _longest_labelled_run(tracks, by_identity[identity])
            shorter = _shorter_segment(run, tracks[best].rate_hz(), seconds, frames)
            raise DatasetError(
                f"{identity}: no recording labels them for {seconds:g} s in a row (at least T = {frames} "
                f"frames), so the split has no training segment for them; their longest labelled run is "
                f"{run} radar frames in {tracks[best].session.path}; record a session where they stay in "
                f"view of the labels that long, or {shorter}"
            )
        i, need, starts = candidates[int(rng.integers(len(candidates)))]
        start = int(starts[int(rng.integers(starts.size))])
        segments.append(Segment(identity, tracks[i].session.name, start, start + need))
    return segments


def _shorter_segment(run: int, rate_hz: float, seconds: float, frames: int) -> str:
    """Advice for a segment that does not fit in `run` frames: which limits to lower, and how far.

    A segment is max(T, `seconds` at the rate) frames, so lowering --segment-seconds alone does
    nothing when T (--frames) is what exceeds the run, and lowering --frames alone does nothing when
    the seconds do: name each option that binds, with the largest value that fits."""
    lower = []
    if round(seconds * rate_hz) > run:
        exact = run / max(rate_hz, 1e-9)
        # Two significant digits at least, not two decimals: 5 frames at 1000 frames/s (the config's
        # top rate) are 0.005 s, which two decimals floored to "0", a value train refuses.
        digits = max(2, 1 - math.floor(math.log10(exact))) if exact > 0 else 2
        fits = math.floor(exact * 10**digits + 1e-6) / 10**digits  # round(fits * rate) <= run
        lower.append(f"--segment-seconds {fits:g} or less")
    if frames > run:
        lower.append(f"--frames {run} or less")
    return "lower " + " and ".join(lower)


def _longest_labelled_run(tracks: Sequence[Track], indices: Sequence[int]) -> tuple[int, int]:
    """(track index, length) of the longest run of labelled frames, spanning no radar time break,
    among `indices` (for errors)."""
    best, best_run = indices[0], 0
    for i in indices:
        run = longest = 0
        for ok, broken in zip(tracks[i].labelled, tracks[i].breaks, strict=True):
            run = (1 if broken else run + 1) if ok else 0
            longest = max(longest, run)
        if longest > best_run:
            best, best_run = i, longest
    return best, best_run


def all_samples(tracks: Sequence[Track], frames: int) -> SampleIndex:
    """Every (track, end) whose T frames are all labelled and span no radar time break."""
    ti, ends = [], []
    for i, tr in enumerate(tracks):
        if tr.frames < frames:
            continue
        good = labelled_starts(tr, frames) + frames - 1
        ti.append(np.full(good.size, i, np.int64))
        ends.append(good.astype(np.int64))
    if not ti:
        return SampleIndex(np.zeros(0, np.int64), np.zeros(0, np.int64))
    return SampleIndex(np.concatenate(ti), np.concatenate(ends))


def split_samples(
    tracks: Sequence[Track], segments: Sequence[Segment], frames: int
) -> tuple[SampleIndex, SampleIndex]:
    """(train, test): train = windows inside the segments; test = windows not overlapping them."""
    samples = all_samples(tracks, frames)
    train = np.zeros(len(samples), bool)
    overlap = np.zeros(len(samples), bool)
    for seg in segments:
        for i, tr in enumerate(tracks):
            if tr.identity != seg.identity or tr.session.name != seg.session:
                continue
            mine = samples.track == i
            first = samples.end - frames + 1
            inside = mine & (first >= seg.start) & (samples.end < seg.stop)
            touches = mine & (samples.end >= seg.start) & (first < seg.stop)
            train |= inside
            overlap |= touches
    test = ~overlap
    if not train.any():
        raise DatasetError(
            "the split left no training samples; the training segments hold fewer than T frames"
        )
    if not test.any():
        raise DatasetError(
            "the split left no test samples: every recording is used for training; record more sessions "
            "or longer ones than the training segment"
        )
    return samples.subset(train), samples.subset(test)


# ------------------------------------------------------------------------------------------ batches
@dataclass
class Batch:
    """Model feeds and targets. Every floor position here (anchor, position, first_position) is in
    array-centred coordinates, the frame the model reads: the radar array's horizontal centre at the
    origin, the room's axes. The beams' range axis then points along the anchor itself, which is how
    the position head turns where the body sits in its beam grid into a floor position."""

    rgb: np.ndarray  # (B, H, W, 3) uint8
    rf: np.ndarray  # (B, T, C, R, 2) float32
    anchor: np.ndarray  # (B, T, 2) float32: the track over the RF window, newest last
    position: np.ndarray  # (B, 2) float32: at the window's newest frame
    first_position: np.ndarray  # (B, 2) float32: at its oldest frame (the newest once played backwards)
    present: np.ndarray  # (B, 2) float32
    visible: np.ndarray  # (B,) bool
    label: np.ndarray  # (B,) int64


def make_batch(
    tracks: Sequence[Track], index: SampleIndex, rows: np.ndarray, frames: int, classes: dict[str, int]
) -> Batch:
    rgb, rf, anchor, position, present, visible, label = [], [], [], [], [], [], []
    first_position = []
    for r in rows:
        tr = tracks[int(index.track[r])]
        e = int(index.end[r])
        centre = np.asarray(tr.array_xy, np.float32)
        rgb.append(tr.crops[e])
        w = tr.rf[e - frames + 1 : e + 1]
        rf.append(np.stack([w.real, w.imag], axis=-1))
        anchor.append(tr.anchor[e - frames + 1 : e + 1] - centre)
        position.append(tr.position[e] - centre)
        first_position.append(tr.position[e - frames + 1] - centre)
        present.append((float(tr.rgb_ok[e]), 1.0))
        visible.append(bool(tr.visible[e]) and bool(tr.rgb_ok[e]))
        label.append(classes[tr.identity])
    return Batch(
        np.stack(rgb),
        np.stack(rf).astype(np.float32),
        np.asarray(anchor, np.float32),
        np.asarray(position, np.float32),
        np.asarray(first_position, np.float32),
        np.asarray(present, np.float32),
        np.asarray(visible, bool),
        np.asarray(label, np.int64),
    )


__all__ = [
    "Batch",
    "DatasetError",
    "PrepSpec",
    "SampleIndex",
    "Segment",
    "SessionInfo",
    "Track",
    "all_samples",
    "break_report",
    "choose_segments",
    "discover_sessions",
    "load_tracks",
    "make_batch",
    "preprocess_session",
    "radar_breaks",
    "recorded_channels",
    "split_samples",
]
