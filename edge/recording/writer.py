"""Write a session recording (layout: vrclip.edge.recording.schema).

The writer creates the complete layout up front, switches the file to SWMR and then only appends, so
readers can follow the file live and a writer killed at any instant leaves a file that opens with every
frame up to its last flush. It writes to the final path directly: with a temp-file-and-rename scheme a
crash would leave the session under a name no reader follows and the user does not know, and a live
reader of the final path would see nothing until the end.

Replacing a file (``overwrite=True``) must not lose the old one either, so the old file is not deleted
up front: it is renamed aside to ``<name>.replaced-<random>`` next to it (not ``*.h5``, so dataset
scans skip it) and deleted only once the new recording has closed cleanly with at least one frame. A
new recording that holds no frame gives way to the old one again; one whose close failed, whose
``with`` body raised or that was cut short (`mark_cut_short`: Ctrl-C) keeps the old one aside (both
are on disk); after a kill both are on disk too.

Durability is bounded in time: besides explicit ``flush()``, the writer flushes whenever a write finds
the last flush older than ``flush_interval_s``, and a background thread flushes frames left pending
during a quiet spell, so no written frame stays undurable for longer than about ``flush_interval_s``.
All public methods take one lock, so sources on several threads may share one writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import vrclip.edge
from vrclip.edge.errors import FrameRejected, RecordingError, UserError
from vrclip.edge.frames import CLOCK_REALTIME, CameraFrame, DepthFrame, RadarFrame, stream_of
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.recording import schema
from vrclip.edge.recording.jpeg import encode_rgb
from vrclip.edge.recording.labels import pack_truth, pad_positions
from vrclip.edge.recording.schema import CAMERA, COMMITTED, DEPTH, RADAR, DatasetSpec

#: What h5py raises when the disk refuses a write (full, or failing): OSError, or RuntimeError from a
#: flush ("Unable to synchronously flush file ... errno = 28").
_HDF5_WRITE_ERRORS = (OSError, RuntimeError)


#: Recordings whose file HDF5 could not close (a write the disk refused), with the writer that holds
#: their HDF5 handles. See `unclosed_recordings`.
_UNCLOSED: list[tuple[Path, SessionWriter]] = []
_UNCLOSED_LOCK = threading.Lock()


def _keep_unclosed(path: Path, writer: SessionWriter) -> None:
    """Keep `writer`, and with it its HDF5 handles, for the life of the process (see below)."""
    with _UNCLOSED_LOCK:
        _UNCLOSED.append((path, writer))


def _set_aside(path: Path) -> Path:
    """Rename `path` to a new sibling `<name>.replaced-<random>` (same folder: an atomic rename, no
    copy) and return that name; the caller deletes or restores it once its replacement is settled."""
    while True:
        aside = path.with_name(f"{path.name}.replaced-{uuid.uuid4().hex[:8]}")
        if not (aside.exists() or aside.is_symlink()):
            break
    try:
        os.replace(path, aside)
    except OSError as exc:
        raise RecordingError(
            f"{path}: cannot set the existing file aside to replace it ({exc.strerror or exc}); check "
            "that its folder is writable, or choose another path"
        ) from exc
    return aside


def _creation_refused(path: Path, exc: BaseException) -> RecordingError:
    return RecordingError(f"{path}: cannot create the recording ({exc}); check free disk space and the disk")


def unclosed_recordings() -> tuple[Path, ...]:
    """Recordings this process could not close. HDF5 2.0 (h5py 3.16) keeps such a file open and,
    when the interpreter exits, crashes trying to close it again (segmentation fault, exit status
    139, after the command had already reported the failure). The command-line entry point checks
    this and ends the process without running HDF5's exit handler (`cli_support.run`)."""
    with _UNCLOSED_LOCK:
        return tuple(path for path, _ in _UNCLOSED)


@dataclass
class _Stream:
    name: str
    clock: str
    specs: list[DatasetSpec]
    datasets: dict[str, h5py.Dataset] = field(default_factory=dict)
    committed: h5py.Dataset | None = None
    #: Frames whose every dataset row has been written.
    count: int = 0
    #: Frames counted in the committed dataset on disk.
    flushed: int = 0
    #: Camera only: bytes used in the flat JPEG array.
    jpeg_bytes: int = 0


def _json_attr(value: Mapping[str, Any] | str | None, name: str, *, allow_none: bool = False) -> str:
    """Serialise a mapping (or validate a JSON string) for a root attribute; errors name the argument."""
    if value is None:
        if allow_none:
            return ""
        raise UserError(f"SessionWriter: {name} is required")
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise UserError(f"SessionWriter: {name} is a string but not valid JSON ({e})") from e
        if not isinstance(parsed, dict):
            raise UserError(f"SessionWriter: {name} must be a JSON object, got {type(parsed).__name__}")
        return value
    if not isinstance(value, Mapping):
        raise UserError(
            f"SessionWriter: {name} must be a mapping or a JSON string, got {type(value).__name__}"
        )
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise UserError(f"SessionWriter: {name} is not JSON-serialisable ({e})") from e


def _positive_size(value: tuple[int, int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise UserError(f"SessionWriter: {name} must be (height, width), got {value!r}") from e
    if h <= 0 or w <= 0:
        raise UserError(f"SessionWriter: {name} must be positive, got {value!r}")
    return h, w


class SessionWriter:
    """Append radar, camera and depth frames of one session to an HDF5 file readable while written.

    Streams are fixed at creation (SWMR cannot add datasets later): radar is always recorded; camera
    and depth only when their frame size is given. ``clock`` is one clock name for all streams or a
    mapping stream -> clock; a frame read on another clock is refused rather than silently mixed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        config_toml: str,
        geometry: Mapping[str, Any] | str,
        freqs_hz: Sequence[float] | np.ndarray,
        radar_channels: int,
        conditions: Mapping[str, Any] | str,
        identities: Sequence[str],
        camera_size: tuple[int, int] | None = None,
        depth_size: tuple[int, int] | None = None,
        calibration: Mapping[str, Any] | str | None = None,
        clock: str | Mapping[str, str] = CLOCK_REALTIME,
        session_id: str | None = None,
        created_ns: int | None = None,
        max_people: int = 8,
        flush_interval_s: float = 1.0,
        jpeg_quality: int = 90,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if not isinstance(config_toml, str):
            raise UserError(
                f"SessionWriter: config_toml must be the TOML text, got {type(config_toml).__name__}"
            )
        freqs = np.asarray(freqs_hz, dtype=np.float64)
        if (
            freqs.ndim != 1
            or not 2 <= freqs.size <= schema.MAX_SWEEP_POINTS
            or not np.all(np.isfinite(freqs))
        ):
            raise UserError(
                f"SessionWriter: freqs_hz must be a 1-D array of 2..{schema.MAX_SWEEP_POINTS} finite Hz, "
                f"got shape {freqs.shape}"
            )
        if int(radar_channels) <= 0:
            raise UserError(f"SessionWriter: radar_channels must be positive, got {radar_channels}")
        names = list(identities)
        if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise UserError("SessionWriter: identities must be distinct non-empty strings")
        if len(names) > schema.MAX_IDENTITIES:
            raise UserError(f"SessionWriter: at most {schema.MAX_IDENTITIES} identities, got {len(names)}")
        if not 1 <= int(max_people) <= schema.MAX_PEOPLE:
            raise UserError(f"SessionWriter: max_people must be in 1..{schema.MAX_PEOPLE}, got {max_people}")
        if not 0 <= int(jpeg_quality) <= 100:
            raise UserError(f"SessionWriter: jpeg_quality must be in 0..100, got {jpeg_quality}")
        if not flush_interval_s > 0:
            raise UserError(f"SessionWriter: flush_interval_s must be > 0, got {flush_interval_s}")
        geometry_json = _json_attr(geometry, "geometry")
        try:
            geometry_channels = ArrayGeometry.from_dict(json.loads(geometry_json)).n_channels
        except ValueError as exc:
            raise UserError(f"SessionWriter: geometry is not an antenna array geometry ({exc})") from None
        if geometry_channels != int(radar_channels):
            raise UserError(
                f"SessionWriter: geometry pairs {geometry_channels} channels but radar_channels is "
                f"{radar_channels}"
            )
        cam = _positive_size(camera_size, "camera_size")
        dep = _positive_size(depth_size, "depth_size")
        attrs: dict[str, Any] = {
            "format": schema.FORMAT,
            "schema_version": schema.SCHEMA_VERSION,
            "session_id": session_id or uuid.uuid4().hex,
            "created_ns": int(created_ns if created_ns is not None else time.time_ns()),
            "writer": f"vrclip-edge {vrclip.edge.__version__}",
            "config_toml": config_toml,
            "geometry_json": geometry_json,
            "calibration_json": _json_attr(calibration, "calibration", allow_none=True),
            "conditions_json": _json_attr(conditions, "conditions"),
            "identities_json": json.dumps(names),
            "max_people": int(max_people),
        }
        self._max_people = int(max_people)
        self._identity_index = {n: i for i, n in enumerate(names)}
        self._quality = int(jpeg_quality)
        self._interval = float(flush_interval_s)
        self._camera_size = cam
        self._depth_size = dep
        self._radar_shape = (int(radar_channels), int(freqs.size))

        present = [RADAR] + ([CAMERA] if cam else []) + ([DEPTH] if dep else [])
        clocks = {s: clock for s in present} if isinstance(clock, str) else dict(clock)
        missing = [s for s in present if not isinstance(clocks.get(s), str) or not clocks.get(s)]
        if missing:
            raise UserError(f"SessionWriter: clock names no clock for stream(s) {missing}")
        self._streams: dict[str, _Stream] = {}
        self._streams[RADAR] = _Stream(
            RADAR, clocks[RADAR], schema.radar_specs(*self._radar_shape, self._max_people)
        )
        if cam:
            self._streams[CAMERA] = _Stream(CAMERA, clocks[CAMERA], schema.camera_specs(self._max_people))
        if dep:
            self._streams[DEPTH] = _Stream(DEPTH, clocks[DEPTH], schema.depth_specs(*dep, self._max_people))

        #: Where the file this recording replaces is kept until the recording has finished (None when
        #: it replaces nothing, or once that file has been deleted or put back); see the module doc.
        self.replaced: Path | None = None
        #: The ``with`` body raised, or the owner said so (`mark_cut_short`): the replaced file is kept.
        self._cut_short = False
        self._file = self._create(overwrite, attrs, freqs)
        self._cond = threading.Condition(threading.Lock())
        self._dirty = False
        self._closing = False
        self._last_flush = time.monotonic()
        self._error: BaseException | None = None
        #: A write, flush or close the disk refused: HDF5 cannot close this file any more.
        self._refused = False
        self._thread = threading.Thread(target=self._flush_loop, name=f"flush {self.path.name}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------- creation
    def _create(self, overwrite: bool, attrs: dict[str, Any], freqs: np.ndarray) -> h5py.File:
        p = self.path
        if not p.parent.is_dir():
            raise UserError(f"{p}: directory {p.parent} does not exist; create it first")
        if p.exists() or p.is_symlink():
            if not overwrite:
                raise UserError(f"{p}: file already exists; choose another path or pass overwrite=True")
            if p.is_dir():
                raise UserError(f"{p}: is a directory, not a recording; choose another path")
            # Renamed, never truncated: a reader still holding the old session keeps a consistent file.
            self.replaced = _set_aside(p)
        try:
            f = h5py.File(p, "x", libver="latest")
        except FileExistsError as e:  # another process created it since the check above: theirs stays
            aside = f"; the file it was to replace is kept as {self.replaced}" if self.replaced else ""
            raise RecordingError(f"{p}: cannot create the recording ({e}){aside}") from e
        except OSError as e:
            # The path was free a moment ago: what is there now is this attempt's empty start. On a
            # read-only disk the removal fails too (EROFS even for no file); the error below says why.
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
            self._put_back()
            raise _creation_refused(p, e) from e
        try:
            self._lay_out(f, attrs, freqs)
        except BaseException:
            self._put_back()  # _lay_out removed the new file
            raise
        return f

    def _put_back(self) -> None:
        """Return the set-aside file to its path (nothing new is kept there). Never raises: a failure
        leaves it where it is, under its `.replaced-` name."""
        if self.replaced is not None:
            with contextlib.suppress(OSError):
                os.replace(self.replaced, self.path)
                self.replaced = None

    def _lay_out(self, f: h5py.File, attrs: dict[str, Any], freqs: np.ndarray) -> None:
        """Create every attribute, group and dataset, then switch to SWMR; on failure the new file is
        removed (and its handles kept if HDF5 cannot close it)."""
        p = self.path
        try:
            f.attrs.update(attrs)
            for s in self._streams.values():
                g = f.create_group(s.name)
                g.attrs["clock"] = s.clock
                for spec in s.specs:
                    s.datasets[spec.name] = g.create_dataset(
                        spec.name,
                        shape=(0, *spec.tail),
                        maxshape=(None, *spec.tail),
                        dtype=spec.dtype,
                        chunks=(spec.chunk_rows, *spec.tail),
                        fillvalue=spec.fill,
                    )
                s.committed = g.create_dataset(
                    COMMITTED, shape=(1,), maxshape=(1,), dtype=np.int64, chunks=(1,)
                )
                s.committed[0] = 0
            radar = f[RADAR]
            radar.attrs["channels"], radar.attrs["points"] = self._radar_shape
            radar.create_dataset("freqs_hz", data=freqs)
            if self._camera_size:
                cam = f[CAMERA]
                cam.attrs["height"], cam.attrs["width"] = self._camera_size
                cam.attrs.update({"jpeg_quality": self._quality, "encoding": "jpeg", "colour": "RGB"})
            if self._depth_size:
                dep = f[DEPTH]
                dep.attrs["height"], dep.attrs["width"] = self._depth_size
                dep.attrs["unit"] = "m"
            # From here on the file only grows by appends, and is consistent on disk after every flush.
            f.swmr_mode = True
        except BaseException as exc:
            refused = isinstance(exc, _HDF5_WRITE_ERRORS)
            try:
                if not refused:
                    f.close()
            except _HDF5_WRITE_ERRORS:
                refused = True
            finally:
                p.unlink(missing_ok=True)
            if refused:
                # The disk refused a write while the layout was made: HDF5 cannot close this file,
                # and freeing its handles crashes (see `unclosed_recordings`), so they are kept as
                # close() keeps them.
                self._file = f
                _keep_unclosed(p, self)
            if not isinstance(exc, _HDF5_WRITE_ERRORS):
                raise
            raise _creation_refused(p, exc) from exc

    # ----------------------------------------------------------------------------------- writing
    def write(self, frame: RadarFrame | CameraFrame | DepthFrame) -> None:
        """Append a frame of any stream to that stream (`write_radar`, `write_camera`, `write_depth`)."""
        writers = {"radar": self.write_radar, "camera": self.write_camera, "depth": self.write_depth}
        writers[stream_of(frame)](frame)  # type: ignore[operator]

    def write_radar(self, frame: RadarFrame) -> None:
        """Append one radar snapshot: s21 must be complex with shape (channels, len(freqs_hz))."""
        if not isinstance(frame, RadarFrame):
            raise TypeError(f"write_radar takes a RadarFrame, got {type(frame).__name__}")
        what = f"{self.path}: radar frame seq {frame.seq}"
        s21 = np.asarray(frame.s21)
        if s21.shape != self._radar_shape:
            raise FrameRejected(
                f"{what}: s21 has shape {s21.shape}, the session records {self._radar_shape} "
                "(radar_channels, len(freqs_hz)); the sweep changed mid-session - start a new recording"
            )
        if not np.iscomplexobj(s21):
            raise FrameRejected(f"{what}: s21 must be complex S-parameters, got dtype {s21.dtype}")
        with self._cond:
            s = self._stream(RADAR, frame.clock, what)
            row = {"s21": s21.astype(np.complex64, copy=False)}
            row.update(self._truth_row(frame.truth, what))
            row.update(t_ns=int(frame.t_ns), seq=int(frame.seq))
            self._append(s, row, what)

    def write_camera(self, frame: CameraFrame) -> None:
        """Append one RGB image, (height, width, 3) uint8, JPEG-encoded at the session's quality."""
        if not isinstance(frame, CameraFrame):
            raise TypeError(f"write_camera takes a CameraFrame, got {type(frame).__name__}")
        what = f"{self.path}: camera frame seq {frame.seq}"
        rgb = np.asarray(frame.rgb)
        if self._camera_size is None:
            raise FrameRejected(
                f"{what}: the session was created without camera_size, so has no camera stream"
            )
        expected = (*self._camera_size, 3)
        if rgb.shape != expected or rgb.dtype != np.uint8:
            raise FrameRejected(
                f"{what}: image is {rgb.shape} {rgb.dtype}, the session records {expected} uint8"
            )
        data = encode_rgb(rgb, self._quality)  # outside the lock: encoding is the slow part
        with self._cond:
            s = self._stream(CAMERA, frame.clock, what)
            row = {"jpeg_index": np.array([s.jpeg_bytes, data.size], np.int64)}
            row.update(self._truth_row(frame.truth, what))
            row.update(t_ns=int(frame.t_ns), seq=int(frame.seq))
            self._append(s, row, what, jpeg=data)

    def write_depth(self, frame: DepthFrame) -> None:
        """Append one depth image (metres, stored as float16) with the positions the depth camera saw."""
        if not isinstance(frame, DepthFrame):
            raise TypeError(f"write_depth takes a DepthFrame, got {type(frame).__name__}")
        what = f"{self.path}: depth frame seq {frame.seq}"
        depth = np.asarray(frame.depth)
        if self._depth_size is None:
            raise FrameRejected(f"{what}: the session was created without depth_size, so has no depth stream")
        if depth.shape != self._depth_size:
            raise FrameRejected(f"{what}: depth is {depth.shape}, the session records {self._depth_size}")
        try:
            positions, k = pad_positions(frame.positions, self._max_people, what)
        except (ValueError, UserError) as exc:
            raise FrameRejected(str(exc)) from exc
        with self._cond:
            s = self._stream(DEPTH, frame.clock, what)
            row: dict[str, Any] = {"depth": depth.astype(np.float16), "positions": positions, "count": k}
            row.update(self._truth_row(frame.truth, what))
            row.update(t_ns=int(frame.t_ns), seq=int(frame.seq))
            self._append(s, row, what)

    def _stream(self, name: str, clock: str, what: str) -> _Stream:
        """The open stream `name`, refusing a frame on a different clock. Call with the lock held."""
        self._check_usable()
        s = self._streams.get(name)
        if s is None:
            raise FrameRejected(f"{what}: the session has no {name} stream")
        if clock != s.clock:
            raise FrameRejected(
                f"{what}: frame is on clock {clock!r} but the session's {name} stream records {s.clock!r}; "
                "timestamps on different clocks cannot be compared - fix the source's clock or the "
                "writer's clock= argument"
            )
        return s

    def _truth_row(self, truth: Any, what: str) -> dict[str, Any]:
        try:
            t = pack_truth(truth, self._identity_index, self._max_people, what)
        except (ValueError, UserError) as exc:
            raise FrameRejected(str(exc)) from exc
        return {
            "truth/count": t.count,
            "truth/ids": t.ids,
            "truth/positions": t.positions,
            "truth/visible": t.visible,
        }

    def _append(self, s: _Stream, row: dict[str, Any], what: str, jpeg: np.ndarray | None = None) -> None:
        """Grow every dataset of `s` by one row (lock held). If it fails half-way, s.count is unchanged,
        so the next append overwrites the partial row and readers (min of lengths, committed) never
        count it."""
        n = s.count
        try:
            if jpeg is not None:
                ds = s.datasets["jpeg"]
                end = s.jpeg_bytes + jpeg.size
                ds.resize((end,))
                ds[s.jpeg_bytes : end] = jpeg
            for spec in s.specs:
                if spec.per_frame:
                    ds = s.datasets[spec.name]
                    ds.resize(n + 1, axis=0)
                    ds[n] = row[spec.name]
        except _HDF5_WRITE_ERRORS as e:
            self._refused = True
            raise RecordingError(f"{what}: writing failed ({e}); check free disk space and the disk") from e
        if jpeg is not None:
            s.jpeg_bytes += jpeg.size
        s.count = n + 1
        if not self._dirty:
            self._dirty = True
            self._cond.notify_all()
        if time.monotonic() - self._last_flush >= self._interval:
            self._flush_locked()

    # ----------------------------------------------------------------------------------- flushing
    def flush(self) -> dict[str, int]:
        """Make every frame written so far durable and visible to readers; returns frames per stream."""
        with self._cond:
            self._check_usable()
            self._flush_locked()
            return self.counts

    @property
    def counts(self) -> dict[str, int]:
        """Frames written per stream (durable or not)."""
        return {name: s.count for name, s in self._streams.items()}

    def _flush_locked(self) -> None:
        # Two phases: data first, then the committed counts. A kill between or during them leaves the
        # old counts, which describe frames that are fully on disk.
        try:
            self._file.flush()
            changed = False
            for s in self._streams.values():
                if s.committed is not None and s.flushed != s.count:
                    s.committed[0] = s.count
                    s.flushed = s.count
                    changed = True
            if changed:
                self._file.flush()
        except _HDF5_WRITE_ERRORS as e:
            self._refused = True
            raise RecordingError(
                f"{self.path}: flushing failed ({e}); check free disk space and the disk"
            ) from e
        self._dirty = False
        self._last_flush = time.monotonic()

    def _flush_loop(self) -> None:
        """Background: flush frames that have waited flush_interval_s (a quiet source still gets them
        on disk). A failure is kept and raised by the next call of the owner."""
        with self._cond:
            while not self._closing:
                if not self._dirty:
                    self._cond.wait()
                    continue
                due = self._last_flush + self._interval - time.monotonic()
                if due > 0:
                    self._cond.wait(due)
                    continue
                try:
                    self._flush_locked()
                except BaseException as e:
                    self._error = e
                    return

    def _check_usable(self) -> None:
        if self._closing:
            raise RecordingError(f"{self.path}: the writer is closed")
        if self._error is not None:
            raise RecordingError(f"{self.path}: a background flush failed: {self._error}") from self._error

    # ----------------------------------------------------------------------------------- closing
    def close(self) -> None:
        """Flush and close. Idempotent. The file is complete and readable by any HDF5 tool afterwards."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        failure: RecordingError | None = None
        with self._cond:
            try:
                if self._error is None:
                    self._flush_locked()
            except RecordingError as e:
                failure = e
            finally:
                try:
                    self._file.close()
                except _HDF5_WRITE_ERRORS as e:  # HDF5 writes its metadata on close: a full disk fails here
                    self._refused = True
                    if failure is None and self._error is None:
                        failure = RecordingError(
                            f"{self.path}: closing the file failed ({e}); check free disk space and the disk"
                        )
                        failure.__cause__ = e
                if self._refused:
                    # HDF5 keeps such a file open however the close went, and freeing its handles
                    # later crashed inside h5py 3.16 / HDF5 2.0 (a segmentation fault when the writer
                    # was garbage-collected, or at exit), after printing tracebacks from h5py's
                    # deallocator. So this writer, and with it those handles, is kept for the life
                    # of the process, which the command line ends past HDF5's exit handler.
                    _keep_unclosed(self.path, self)
        if self._error is not None:
            failure = RecordingError(f"{self.path}: a background flush failed: {self._error}")
            failure.__cause__ = self._error
        self._settle_replaced(keep=failure is not None or self._cut_short)
        if failure is not None:
            if self.replaced is not None:
                failure.add_note(f"the file it replaces is kept as {self.replaced}")
            raise failure

    def mark_cut_short(self) -> None:
        """Say that this session ends before its time (Ctrl-C, a nearly full disk): its frames are
        kept, and so is the file it replaces (see the module doc), since the user asked to replace
        that file with a whole session."""
        self._cut_short = True

    def _settle_replaced(self, *, keep: bool) -> None:
        """Decide the fate of the file this recording replaces, once the recording is closed: deleted
        when the new one holds frames and finished cleanly, put back when it holds none, else kept
        aside (see the module doc)."""
        if self.replaced is None:
            return
        if not any(self.counts.values()):
            self._put_back()  # the new recording holds nothing: the old one is worth more
        elif not keep:
            with contextlib.suppress(OSError):  # still aside, and named so, if it cannot be deleted
                self.replaced.unlink(missing_ok=True)
                self.replaced = None

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Close even when the body failed: the frames recorded so far are the point of a recording.
        # The file it replaces is kept too then: the new one may have been cut short.
        self._cut_short = self._cut_short or exc is not None
        self.close()
        if exc is not None and self.replaced is not None:
            exc.add_note(f"{self.path}: the file this recording replaces is kept as {self.replaced}")
