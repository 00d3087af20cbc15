"""Label a one-person recording from the real rig with the radar's own track, so it can train VRCLIP.

A recording from the real rig (`vrclip-edge record --identity NAME`) knows who walked but not where:
the trainer needs a floor position per frame (to gate the RF window and cut the person crop). With
one person in the room the runtime's radar chain finds it: the session's radar frames go through the
same imaging, detection and tracker as `vrclip-edge run`, and wherever exactly one confirmed track is
up, that is the person. Camera and depth frames take the position interpolated at their own time
stamps. Every stream's labels count the person visible (the schema's "visible to the camera") when
the crop box at that frame's position falls in the camera image, as the simulator's labels do for every
stream (a real rig cannot tell an occluder from the person; the gate learns from what the crop shows).

Frames with no confirmed track, or with two or more (someone else walked in), stay unlabelled: the
trainer skips them. A track that came through a gap of a second or more (a radar outage or a forward
clock step: `Track.gaps`, see `pipeline.tracker`) is labelled again as a new track would be, from its
`confirm_hits`-th detection after the gap: the tracker keeps its id, but its first position after the
gap is partly its own guess, and the frames left unlabelled end the labelled run there, so no training
segment (nor RF window) joins frames seconds apart as if consecutive. Shorter gaps (frames dropped)
keep their labels; the trainer itself ends runs at any gap over 3 frame periods (`radar_breaks`).

The output is a copy of the recording with only its labels and identity list changed; radar
samples and JPEG bytes are copied bit for bit. A recording whose recorder died (still marked open
by it, and held open by no process) is labelled too, over the frames it flushed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from vrclip.edge.crops import camera_from_config, in_view
from vrclip.edge.errors import RecordingError, UserError
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.imaging.pipeline import ImagingPipeline
from vrclip.edge.manifest import default_file_mode
from vrclip.edge.pipeline.tracker import Track, Tracker
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.recording.schema import CAMERA, NO_ID, RADAR
from vrclip.edge.recording.writers import writers_of
from vrclip.edge.timebase.clock_runs import clock_runs, run_owner

#: Where the processes holding a file cannot be listed: a file still marked open by its writer but
#: unchanged this long (s) belongs to a recorder that died (a live recorder flushes every second).
RECORDER_QUIET_S = 10.0

#: Camera or depth frames between labelled radar frames further apart than this stay unlabelled
#: (at least; a slower radar stretches it to GAP_FRAMES of its own frame period).
MAX_INTERPOLATION_GAP_NS = 250_000_000
#: Labelled radar frames this many frame periods apart still bridge a camera frame between them:
#: a real VNA sweeping 144 channels may give only ~3.5 frames/s (see `config check`).
GAP_FRAMES = 2.5


@dataclass(frozen=True)
class LabelResult:
    identity: str
    radar_frames: int
    labelled: int
    #: Radar frames with two or more confirmed tracks (left unlabelled).
    crowded: int
    labelled_camera: int
    camera_frames: int
    #: The source was still marked open by a recorder that died (kill -9, a power cut): labelled are
    #: the frames it had flushed, in a copy that is a finished recording.
    recorder_died: bool = False


class FreshTracks:
    """The tracks to label in a frame: detected in it, with `confirm_hits` detections counted from
    the track's start or its last gap (`Track.gaps`), whichever is later (see the module doc)."""

    def __init__(self, confirm_hits: int) -> None:
        self.confirm_hits = confirm_hits
        #: Per live track: its gap count and its hits before the first frame after its last gap
        #: (rebuilt every frame from the tracker's tracks, so it holds no ended track).
        self._since: dict[int, tuple[int, int]] = {}

    def select(self, tracks: list[Track]) -> list[Track]:
        since = {}
        for track in tracks:
            gaps, hits = self._since.get(track.track_id, (0, 0))
            if track.gaps != gaps:  # this frame is the first after a gap: count from its detection
                gaps, hits = track.gaps, track.hits - (1 if track.misses == 0 else 0)
            since[track.track_id] = (gaps, hits)
        self._since = since
        return [t for t in tracks if t.misses == 0 and t.hits - since[t.track_id][1] >= self.confirm_hits]


def radar_track(
    reader: SessionReader, progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, int]:
    """((N, 2) position per radar frame, NaN where not exactly one confirmed track; crowded count)."""
    config = reader.edge_config()
    calibration = (
        ChannelCalibration.from_dict(reader.calibration, source=f"{reader.path} calibration")
        if reader.calibration
        else None
    )
    imaging = ImagingPipeline(config, reader.array_geometry, calibration)
    tracker = Tracker(frame_period_s=1.0 / config.radar.frame_rate_hz)
    fresh = FreshTracks(tracker.confirm_hits)
    n = reader.count(RADAR)
    positions = np.full((n, 2), np.nan)
    crowded = 0
    try:
        for i, frame in enumerate(reader.iter_radar()):
            detections = imaging.process(frame.s21).detections
            found = np.array([[d.x_m, d.y_m] for d in detections], np.float64).reshape(-1, 2)
            tracker.update(found, frame.t_ns)
            confirmed = fresh.select(tracker.tracks)
            if len(confirmed) == 1:
                positions[i] = confirmed[0].position
            elif len(confirmed) > 1:
                crowded += 1
            if progress is not None:
                progress(i + 1, n)
    finally:
        imaging.imager.close()
    return positions, crowded


def max_gap_ns(t_radar: np.ndarray) -> int:
    """How far apart two labelled radar frames may be for frames between them to be labelled."""
    steps = np.diff(np.asarray(t_radar, np.int64))
    period = float(np.median(steps)) if steps.size else 0.0
    return int(max(MAX_INTERPOLATION_GAP_NS, GAP_FRAMES * period))


def interpolate(
    t_radar: np.ndarray, positions: np.ndarray, t_other: np.ndarray, max_gap: int | None = None
) -> np.ndarray:
    """(M, 2) positions at `t_other`, linear between the two labelled radar frames around each time;
    NaN where those are more than `max_gap` ns apart (default `max_gap_ns(t_radar)`) or either side
    is missing.

    Radar stamps that go back (NTP stepping the clock back during the recording) split the radar
    frames into runs, each interpolated on its own; a time takes its position from the run that
    owns it only (`timebase.clock_runs.run_owner`). A time within one run's span is that run's
    alone (a run with one labelled frame would otherwise lend it a position from the other side of
    the step); a time that falls within two runs' spans is one the clock showed twice: which side
    of the step its frame was taken on cannot be told from its stamp, so it stays unlabelled rather
    than get a position from the other side (a crop cut where the person was not)."""
    gap = max_gap_ns(t_radar) if max_gap is None else max_gap
    t_radar = np.asarray(t_radar, np.int64)
    t_other = np.asarray(t_other, np.int64)
    runs = clock_runs(t_radar)
    if len(runs) <= 1:
        return _interpolate_run(t_radar, positions, t_other, gap)
    got = [_interpolate_run(t_radar[run], positions[run], t_other, gap) for run in runs]
    owner = run_owner(t_radar, runs, t_other, [np.isfinite(g).all(axis=1) for g in got])
    out = np.full((len(t_other), 2), np.nan)
    for k, positions_k in enumerate(got):
        ours = owner == k
        out[ours] = positions_k[ours]
    return out


def _interpolate_run(t_radar: np.ndarray, positions: np.ndarray, t_other: np.ndarray, gap: int) -> np.ndarray:
    """`interpolate` over radar stamps that only go forward."""
    out = np.full((len(t_other), 2), np.nan)
    labelled = np.isfinite(positions).all(axis=1)
    t = t_radar[labelled]
    p = positions[labelled]
    if len(t) == 0:
        return out
    right = np.clip(np.searchsorted(t, t_other), 1, max(len(t) - 1, 1))
    left = right - 1
    if len(t) == 1:
        near = np.abs(t_other - t[0]) <= gap // 2
        out[near] = p[0]
        return out
    t0, t1 = t[left], t[right]
    inside = (t_other >= t0) & (t_other <= t1) & (t1 - t0 <= gap)
    frac = np.where(t1 > t0, (t_other - t0) / np.maximum(t1 - t0, 1), 0.0)[:, None]
    both = p[left] + frac * (p[right] - p[left])
    out[inside] = both[inside]
    return out


def _write_truth(group: h5py.Group, n: int, positions: np.ndarray, visible: np.ndarray) -> int:
    """Overwrite the first n label rows of a stream: identity 0 where a position is known."""
    known = np.isfinite(positions).all(axis=1)
    k = group["truth/ids"].shape[1]
    count = np.where(known, 1, NO_ID).astype(np.int16)
    ids = np.full((n, k), NO_ID, np.int16)
    ids[known, 0] = 0
    pos = np.full((n, k, 2), np.nan, np.float32)
    pos[known, 0] = positions[known]
    vis = np.zeros((n, k), bool)
    vis[known, 0] = visible[known]
    group["truth/count"][:n] = count
    group["truth/ids"][:n] = ids
    group["truth/positions"][:n] = pos
    group["truth/visible"][:n] = vis
    return int(known.sum())


def label_recording(
    source: Path,
    out: Path,
    *,
    identity: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> LabelResult:
    """Write `out`: `source` labelled with its one person's radar track (see the module doc)."""
    source, out = Path(source), Path(out)
    if not overwrite and (out.exists() or out.is_symlink()):
        raise UserError(f"{out}: file already exists; choose another path or pass --overwrite")
    if out.resolve() == source.resolve():
        raise UserError(f"{out}: write the labelled copy to another file than the recording")
    with SessionReader(source) as reader:
        recorder_died = reader.live
        if reader.live:
            _refuse_if_being_recorded(source)
        if identity is None:
            if len(reader.identities) != 1:
                named = ", ".join(reader.identities) or "nobody"
                raise UserError(
                    f"{source}: names {named}; labelling needs exactly one person per session: "
                    "give --identity NAME for who walked alone"
                )
            identity = reader.identities[0]
        if not identity or not identity.isprintable():
            raise UserError(f"--identity {identity!r}: give the person's name")
        positions, crowded = radar_track(reader, progress)
        if not np.isfinite(positions).any():
            raise UserError(
                f"{source}: the radar tracked nobody alone in this session ({crowded} frames with several "
                "tracks), so there is nothing to label; check the recording with `vrclip-edge inspect` "
                "and the rig's calibration (`vrclip-calibrate channels`)"
            )
        t_radar = reader.times(RADAR)
        streams = {name: reader.count(name) for name in reader.streams}
        other = {
            name: interpolate(t_radar, positions, reader.times(name)) for name in streams if name != RADAR
        }
        camera = camera_from_config(reader.edge_config())
        conditions = dict(reader.conditions)
    conditions["labels"] = "radar track of the one person walking (vrclip-edge label)"
    # Camera visibility on every stream, as the schema defines truth/visible (the radar's labels once
    # said "visible" wherever labelled, the depth stream's never).
    visible = {
        name: np.array([bool(np.isfinite(p).all()) and in_view(camera, p) for p in pos], bool)
        for name, pos in {RADAR: positions, **other}.items()
    }
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    except OSError as exc:
        raise UserError(
            f"{out}: cannot write there ({exc.strerror or exc}); choose a writable folder"
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file 0600: the labelled copy is a recording like any other, readable as
        # the umask allows (by a trainer running as another user).
        os.chmod(tmp, default_file_mode())
        if recorder_died:
            copy_recording_objects(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        labelled: dict[str, int] = {}
        with h5py.File(tmp, "r+") as f:
            f.attrs["identities_json"] = json.dumps([identity])
            f.attrs["conditions_json"] = json.dumps(conditions)
            for name, n in streams.items():
                pos = positions if name == RADAR else other[name]
                labelled[name] = _write_truth(f[name], n, pos, visible[name])
        with SessionReader(tmp):
            pass  # the copy opens as a recording, or nothing replaces `out`
        os.replace(tmp, out)
    except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError for a flush the disk refused
        reason = getattr(exc, "strerror", None) or exc
        raise UserError(f"{out}: cannot write the labelled copy ({reason})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return LabelResult(
        identity,
        streams[RADAR],
        labelled[RADAR],
        crowded,
        labelled.get(CAMERA, 0),
        streams.get(CAMERA, 0),
        recorder_died,
    )


def _refuse_if_being_recorded(source: Path) -> None:
    """A file marked open by its SWMR writer is being recorded, or its recorder died. The processes
    holding it open for writing tell which; where they cannot be listed (another user's processes),
    a file changed within RECORDER_QUIET_S counts as being recorded."""
    writers = writers_of(source)
    if writers:
        raise RecordingError(
            f"{source}: is being recorded (process {', '.join(map(str, writers))} holds it open for "
            "writing); label it once the recording has finished"
        )
    if writers is None:
        quiet_s = time.time() - source.stat().st_mtime
        if quiet_s < RECORDER_QUIET_S:
            raise RecordingError(
                f"{source}: is being recorded (marked open by its writer, changed {quiet_s:.0f} s ago); "
                "label it once the recording has finished, or, if its recorder died, once the file has "
                f"been unchanged for {RECORDER_QUIET_S:.0f} s"
            )


def copy_recording_objects(source: Path, target: Path) -> None:
    """Copy every group, dataset and attribute of `source` into a new file `target`.

    For a recording whose writer died: HDF5 keeps such a file marked open for writing, so a byte copy
    cannot be opened to write its labels (only `h5clear`, which this project does not install, lifts
    the mark). A copy made object by object is a finished file; the samples and JPEG bytes are the
    same values, and each stream's frame count travels with its `committed` dataset.
    """
    with h5py.File(source, "r", swmr=True) as src, h5py.File(target, "w", libver="latest") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name=name)
