"""Read a session recording (layout: vrclip.edge.recording.schema), including one still being written.

The replay source and the trainer both read through this class, so it trusts nothing in the file: it
validates format, schema version, dataset shapes and dtypes on open, bounds every allocation, reads
frames on demand (never the whole file) and turns every problem into a RecordingError that names the
file, what is wrong and what to do.

A file marked open for SWMR writing is either being recorded right now or its writer died; both open
in SWMR mode, where HDF5 does not compare the file's length with the length it expects, so the reader
checks that itself (vrclip.edge.recording.integrity) and never counts a frame that is not wholly on
disk. A cleanly closed file opens normally and HDF5's own checks apply.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from vrclip.edge.config import EdgeConfig, parse_config
from vrclip.edge.errors import ConfigError, RecordingError
from vrclip.edge.frames import CameraFrame, DepthFrame, GroundTruth, RadarFrame
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.recording import schema
from vrclip.edge.recording.integrity import missing_bytes, read_superblock
from vrclip.edge.recording.jpeg import decode_rgb
from vrclip.edge.recording.labels import TruthRow, unpack_truth
from vrclip.edge.recording.schema import CAMERA, COMMITTED, DEPTH, RADAR, STREAMS, DatasetSpec

#: Frames read per HDF5 call by the iterators: bounded memory, few calls.
_ITER_BLOCK_BYTES = 32 << 20
#: How long a live file may stay shorter than its superblock says before it counts as cut short: a
#: writer is in that state only between writing the superblock and extending the file in a flush.
_SHORT_FILE_GRACE_S = 0.5


class _StreamView:
    """One stream group: its validated datasets and its current frame count."""

    def __init__(self, name: str, group: h5py.Group, specs: list[DatasetSpec], where: str) -> None:
        self.name = name
        self.group = group
        self.specs = specs
        self.datasets: dict[str, h5py.Dataset] = {}
        clock = group.attrs.get("clock")
        if isinstance(clock, bytes):
            clock = clock.decode("utf-8", "replace")
        if not isinstance(clock, str) or not clock:
            raise RecordingError(f"{where}: /{name} has no clock attribute; the file is damaged")
        self.clock: str = clock
        for spec in specs:
            ds = group.get(spec.name)
            if not isinstance(ds, h5py.Dataset):
                raise RecordingError(f"{where}: dataset /{name}/{spec.name} is missing; the file is damaged")
            if ds.dtype != spec.dtype or ds.ndim != 1 + len(spec.tail) or ds.shape[1:] != spec.tail:
                raise RecordingError(
                    f"{where}: /{name}/{spec.name} is {ds.dtype} {ds.shape}, expected {spec.dtype} "
                    f"(N, {', '.join(map(str, spec.tail))}); the file is damaged or was not written by "
                    "vrclip-edge"
                )
            if ds.chunks is None:
                raise RecordingError(f"{where}: /{name}/{spec.name} is not chunked; the file is damaged")
            if spec.row_bytes > schema.MAX_FRAME_BYTES:
                raise RecordingError(
                    f"{where}: /{name}/{spec.name} claims {spec.row_bytes} bytes per frame, more than the "
                    f"{schema.MAX_FRAME_BYTES} a recording may hold; the file is damaged"
                )
            self.datasets[spec.name] = ds
        committed = group.get(COMMITTED)
        if not isinstance(committed, h5py.Dataset) or committed.shape != (1,) or committed.dtype.kind != "i":
            raise RecordingError(f"{where}: /{name}/{COMMITTED} is missing or malformed; the file is damaged")
        self.committed = committed
        self.count = 0


class SessionReader:
    """Random and sequential access to one session recording. Use as a context manager.

    Frame counts are fixed at open and updated by ``refresh()``, which a live reader calls to see
    frames flushed since; everything between 0 and the count is complete.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._where = str(self.path)
        self._file = self._open()
        try:
            self._load()
        except RecordingError:
            self._file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            self._file.close()
            raise RecordingError(
                f"{self._where}: cannot read the recording's layout ({e}); the file is damaged"
            ) from e

    # ----------------------------------------------------------------------------------- opening
    def _open(self) -> h5py.File:
        p = self.path
        if not p.exists():
            raise RecordingError(f"{p}: no such file; check the recording path")
        if not p.is_file():
            raise RecordingError(f"{p}: not a regular file; give the path of a session .h5 recording")
        try:
            sb = read_superblock(p)
        except OSError as e:
            raise RecordingError(f"{p}: cannot read the file ({e})") from e
        if sb is None:
            raise RecordingError(
                f"{p}: not an HDF5 file (no HDF5 signature); a session recording is the .h5 file that "
                "vrclip-edge writes"
            )
        #: True while the file is marked open by a SWMR writer: live, or its writer died.
        self.live = sb.open_for_swmr_write
        if self.live:
            self._check_whole()  # before HDF5 reads anything: it would wait on a missing part
        try:
            return h5py.File(p, "r", swmr=self.live)
        except OSError as e:
            if sb.open_for_write and not self.live:
                hint = (
                    "it is marked open by a writer that had not started recording; if no process is writing "
                    "it, the recording was interrupted before its first frame"
                )
            else:
                hint = "the file is truncated or damaged; recover it from its source or re-record the session"
            raise RecordingError(f"{p}: cannot be opened as HDF5 ({e}); {hint}") from e

    def _load(self) -> None:
        f, where = self._file, self._where
        fmt = _str_attr(f.attrs, "format")
        if fmt is None:
            raise RecordingError(
                f"{where}: HDF5 file without a 'format' attribute - not a vrclip session recording; "
                "give the path of a file that vrclip-edge recorded"
            )
        if fmt != schema.FORMAT:
            raise RecordingError(
                f"{where}: format is {fmt!r}, not {schema.FORMAT!r} - not a vrclip session recording"
            )
        version = f.attrs.get("schema_version")
        if not isinstance(version, (int, np.integer)):
            raise RecordingError(f"{where}: schema_version is missing or not an integer; the file is damaged")
        if version > schema.SCHEMA_VERSION:
            raise RecordingError(
                f"{where}: written with recording schema version {int(version)}, this vrclip-edge "
                f"reads up to {schema.SCHEMA_VERSION}; upgrade vrclip-edge to read it"
            )
        if version < 1:
            raise RecordingError(f"{where}: schema_version {int(version)} is not a version that ever existed")
        self.schema_version = int(version)
        self.session_id = _str_attr(f.attrs, "session_id") or ""
        self.created_ns = int(f.attrs.get("created_ns", 0))
        self.writer = _str_attr(f.attrs, "writer") or ""
        self.config_toml = self._required_str("config_toml")
        self.geometry: dict[str, Any] = self._json_object("geometry_json")
        try:
            #: The radar array the recording was made with, checked when the file is opened.
            self.array_geometry = ArrayGeometry.from_dict(self.geometry)
        except ValueError as exc:
            raise RecordingError(f"{where}: geometry_json is not an antenna array geometry ({exc})") from None
        self.conditions: dict[str, Any] = self._json_object("conditions_json")
        self.calibration: dict[str, Any] | None = self._json_object("calibration_json", allow_empty=True)
        ids = json.loads(self._required_str("identities_json"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RecordingError(f"{where}: identities_json is not a JSON list of names; the file is damaged")
        self.identities: tuple[str, ...] = tuple(ids)
        k = f.attrs.get("max_people")
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= schema.MAX_PEOPLE:
            raise RecordingError(
                f"{where}: max_people is {k!r}, expected an integer 1..{schema.MAX_PEOPLE}; "
                "the file is damaged"
            )
        self.max_people = int(k)

        if RADAR not in f:
            raise RecordingError(f"{where}: the /radar stream is missing; the file is damaged")
        radar = f[RADAR]
        freqs = radar.get("freqs_hz")
        if not isinstance(freqs, h5py.Dataset) or freqs.ndim != 1 or freqs.dtype != np.float64:
            raise RecordingError(
                f"{where}: /radar/freqs_hz is missing or not 1-D float64; the file is damaged"
            )
        if not 2 <= freqs.shape[0] <= schema.MAX_SWEEP_POINTS:
            raise RecordingError(
                f"{where}: /radar/freqs_hz holds {freqs.shape[0]} frequencies, expected 2.."
                f"{schema.MAX_SWEEP_POINTS}; the file is damaged"
            )
        self.freqs_hz: np.ndarray = freqs[()]
        # The writer refuses such an axis; a damaged one would put every echo at a NaN range.
        if not np.all(np.isfinite(self.freqs_hz)):
            raise RecordingError(f"{where}: /radar/freqs_hz holds NaN or infinity; the file is damaged")
        channels = self._dim(radar, "channels")
        geometry_channels = self.array_geometry.n_channels
        if channels != geometry_channels:
            raise RecordingError(
                f"{where}: the radar stream has {channels} channels but geometry_json pairs "
                f"{geometry_channels}; the file is damaged"
            )
        self.radar_shape = (channels, int(self.freqs_hz.size))
        self._streams: dict[str, _StreamView] = {
            RADAR: _StreamView(RADAR, radar, schema.radar_specs(*self.radar_shape, k), where)
        }
        self.camera_size: tuple[int, int] | None = None
        self.depth_size: tuple[int, int] | None = None
        if CAMERA in f:
            g = f[CAMERA]
            self.camera_size = self._camera_dims(g)
            self._streams[CAMERA] = _StreamView(CAMERA, g, schema.camera_specs(k), where)
        if DEPTH in f:
            g = f[DEPTH]
            self.depth_size = (self._dim(g, "height"), self._dim(g, "width"))
            self._streams[DEPTH] = _StreamView(DEPTH, g, schema.depth_specs(*self.depth_size, k), where)
        self.refresh()

    def _required_str(self, name: str) -> str:
        value = _str_attr(self._file.attrs, name)
        if value is None:
            raise RecordingError(f"{self._where}: attribute {name!r} is missing; the file is damaged")
        return value

    def _json_object(self, name: str, allow_empty: bool = False) -> Any:
        text = self._required_str(name)
        if allow_empty and text == "":
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordingError(
                f"{self._where}: attribute {name!r} is not valid JSON ({e}); the file is damaged"
            ) from e
        if not isinstance(value, dict):
            raise RecordingError(
                f"{self._where}: attribute {name!r} is not a JSON object; the file is damaged"
            )
        return value

    def _camera_dims(self, group: h5py.Group) -> tuple[int, int]:
        """(height, width) of the camera stream. An RGB frame of that size is bounded as every other
        frame is: the JPEG bytes a frame may claim grow with it, and the reader allocates them."""
        h, w = self._dim(group, "height"), self._dim(group, "width")
        if h * w * 3 > schema.MAX_FRAME_BYTES:
            raise RecordingError(
                f"{self._where}: /camera claims {h} x {w} images, {h * w * 3} bytes per frame, more than "
                f"the {schema.MAX_FRAME_BYTES} a recording may hold; the file is damaged"
            )
        return h, w

    def _dim(self, group: h5py.Group, name: str) -> int:
        v = group.attrs.get(name)
        if not isinstance(v, (int, np.integer)) or not 0 < v <= 1 << 20:
            raise RecordingError(
                f"{self._where}: {group.name} attribute {name!r} is {v!r}, expected a positive size; "
                "the file is damaged"
            )
        return int(v)

    # ----------------------------------------------------------------------------------- counts
    def refresh(self) -> dict[str, int]:
        """Re-read frame counts (a live file grows); returns frames per stream."""
        self._check_open()
        if self.live:
            self._check_whole()
        for s in self._streams.values():
            try:
                if self.live:
                    for ds in s.datasets.values():
                        ds.refresh()
                    s.committed.refresh()
                lengths = [len(s.datasets[sp.name]) for sp in s.specs if sp.per_frame]
                s.count = max(0, min(int(s.committed[0]), *lengths))
            except OSError as e:
                raise RecordingError(
                    f"{self._where}: cannot read the {s.name} stream ({e}); the file is damaged"
                ) from e
        return self.counts

    def _check_whole(self) -> None:
        """Refuse a SWMR-marked file shorter than its superblock says (see integrity): HDF5 would wait
        forever on, or read zeros from, the missing part."""
        deadline = time.monotonic() + _SHORT_FILE_GRACE_S
        while True:
            try:
                sb = read_superblock(self.path)
                if sb is None:
                    raise RecordingError(f"{self._where}: no longer an HDF5 file; was it overwritten?")
                missing = missing_bytes(self.path, sb)
            except OSError as e:
                raise RecordingError(f"{self._where}: cannot read the file ({e})") from e
            if missing == 0:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        size = self.path.stat().st_size
        raise RecordingError(
            f"{self._where}: the file is {missing} bytes shorter than its HDF5 header says "
            f"({size} of {size + missing}): it is a copy cut short - copy it again from the source. "
            "Only if it is the original file of a writer killed while flushing, extending it makes it "
            f"readable: truncate -s {size + missing} {self.path}"
        )

    @property
    def counts(self) -> dict[str, int]:
        """Complete frames per stream (0 for a stream the session did not record)."""
        return {name: self.count(name) for name in STREAMS}

    def count(self, stream: str) -> int:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; streams are {STREAMS}")
        s = self._streams.get(stream)
        return s.count if s else 0

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams this session recorded."""
        return tuple(self._streams)

    def clock(self, stream: str) -> str:
        """Name of the clock the stream's t_ns values were read on."""
        return self._view(stream).clock

    # ----------------------------------------------------------------------------------- frames
    def radar(self, i: int) -> RadarFrame:
        """Radar frame i (negative counts from the end) with its ground truth."""
        s = self._view(RADAR)
        i = self._index(s, i)
        what = f"{self._where}: radar frame {i}"
        s21 = self._read(s, "s21", i, what)
        return RadarFrame(
            seq=int(self._read(s, "seq", i, what)),
            t_ns=int(self._read(s, "t_ns", i, what)),
            clock=s.clock,
            s21=s21,
            truth=self._truth(s, i, what),
        )

    def radar_block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [start, stop) as (s21 (n, C, P) complex64, t_ns (n,) int64) in one read: the trainer's
        bulk path. The caller bounds stop - start (memory is n * C * P * 8 bytes)."""
        s = self._view(RADAR)
        start, stop = self._range(s, start, stop)
        what = f"{self._where}: radar frames {start}..{stop - 1}"
        return self._read(s, "s21", slice(start, stop), what), self._read(s, "t_ns", slice(start, stop), what)

    def times(self, stream: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n,) int64 ns time stamps of frames [start, stop) of a stream, without the frames themselves."""
        s = self._view(stream)
        start, stop = self._range(s, start, s.count if stop is None else stop)
        return np.asarray(
            self._read(s, "t_ns", slice(start, stop), f"{self._where}: {stream} times"), np.int64
        )

    def truth_block(self, stream: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Padded ground truth of frames [start, stop) of a stream: count (n,) (-1 = none), ids (n, K)
        (index into `identities`, -1 padded), positions (n, K, 2), visible (n, K)."""
        s = self._view(stream)
        start, stop = self._range(s, start, stop)
        what = f"{self._where}: {stream} frames {start}..{stop - 1}"
        sl = slice(start, stop)
        return {
            key: self._read(s, f"truth/{key}", sl, what) for key in ("count", "ids", "positions", "visible")
        }

    def camera(self, i: int) -> CameraFrame:
        """Camera frame i, decoded to (H, W, 3) uint8 RGB."""
        s = self._view(CAMERA)
        i = self._index(s, i)
        what = f"{self._where}: camera frame {i}"
        assert self.camera_size is not None
        rgb = decode_rgb(self._jpeg(s, i, what), *self.camera_size, what)
        return CameraFrame(
            seq=int(self._read(s, "seq", i, what)),
            t_ns=int(self._read(s, "t_ns", i, what)),
            clock=s.clock,
            rgb=rgb,
            truth=self._truth(s, i, what),
        )

    def camera_jpeg(self, i: int) -> bytes:
        """The stored JPEG file of camera frame i, undecoded (for replay to a JPEG consumer)."""
        s = self._view(CAMERA)
        i = self._index(s, i)
        return self._jpeg(s, i, f"{self._where}: camera frame {i}").tobytes()

    def depth(self, i: int) -> DepthFrame:
        """Depth frame i: depth (h, w) float32 metres (float16 precision) and the reported positions."""
        s = self._view(DEPTH)
        i = self._index(s, i)
        what = f"{self._where}: depth frame {i}"
        k = int(self._read(s, "count", i, what))
        if not 0 <= k <= self.max_people:
            raise RecordingError(
                f"{what}: position count {k} is outside 0..{self.max_people}; the file is damaged"
            )
        return DepthFrame(
            seq=int(self._read(s, "seq", i, what)),
            t_ns=int(self._read(s, "t_ns", i, what)),
            clock=s.clock,
            depth=self._read(s, "depth", i, what).astype(np.float32),
            positions=np.array(self._read(s, "positions", i, what)[:k], dtype=np.float32),
            truth=self._truth(s, i, what),
        )

    def iter_radar(self, start: int = 0, stop: int | None = None) -> Iterator[RadarFrame]:
        """Radar frames [start, stop) in order, read in bounded blocks (the count at the call is used)."""
        s = self._view(RADAR)
        start, stop = self._range(s, start, s.count if stop is None else stop)
        row_bytes = max(1, self.radar_shape[0] * self.radar_shape[1] * 8)
        block = max(1, _ITER_BLOCK_BYTES // row_bytes)
        for b in range(start, stop, block):
            e = min(stop, b + block)
            what = f"{self._where}: radar frames {b}..{e - 1}"
            sl = slice(b, e)
            s21 = self._read(s, "s21", sl, what)
            t_ns = self._read(s, "t_ns", sl, what)
            seq = self._read(s, "seq", sl, what)
            truth = {
                key: self._read(s, f"truth/{key}", sl, what)
                for key in ("count", "ids", "positions", "visible")
            }
            for j in range(e - b):
                row = TruthRow(
                    int(truth["count"][j]), truth["ids"][j], truth["positions"][j], truth["visible"][j]
                )
                yield RadarFrame(
                    seq=int(seq[j]),
                    t_ns=int(t_ns[j]),
                    clock=s.clock,
                    s21=s21[j],
                    truth=unpack_truth(row, self.identities, f"{self._where}: radar frame {b + j}"),
                )

    def iter_camera(self, start: int = 0, stop: int | None = None) -> Iterator[CameraFrame]:
        """Camera frames [start, stop) in order, decoded to RGB."""
        s = self._view(CAMERA)
        start, stop = self._range(s, start, s.count if stop is None else stop)
        for i in range(start, stop):
            yield self.camera(i)

    def iter_depth(self, start: int = 0, stop: int | None = None) -> Iterator[DepthFrame]:
        """Depth frames [start, stop) in order."""
        s = self._view(DEPTH)
        start, stop = self._range(s, start, s.count if stop is None else stop)
        for i in range(start, stop):
            yield self.depth(i)

    # ----------------------------------------------------------------------------------- helpers
    def _view(self, stream: str) -> _StreamView:
        self._check_open()
        s = self._streams.get(stream)
        if s is None:
            if stream not in STREAMS:
                raise ValueError(f"unknown stream {stream!r}; streams are {STREAMS}")
            raise RecordingError(f"{self._where}: the session recorded no {stream} stream")
        return s

    def _check_open(self) -> None:
        if not self._file.id.valid:
            raise RecordingError(f"{self._where}: the reader is closed")

    @staticmethod
    def _index(s: _StreamView, i: int) -> int:
        j = int(i) + s.count if int(i) < 0 else int(i)
        if not 0 <= j < s.count:
            raise IndexError(f"{s.name} frame {i} out of range: the stream has {s.count} frames")
        return j

    @staticmethod
    def _range(s: _StreamView, start: int, stop: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= s.count:
            raise IndexError(
                f"{s.name} frames [{start}, {stop}) out of range: the stream has {s.count} frames"
            )
        return start, stop

    def _read(self, s: _StreamView, name: str, index: int | slice, what: str) -> Any:
        try:
            return s.datasets[name][index]
        except OSError as e:
            raise RecordingError(f"{what}: reading /{s.name}/{name} failed ({e}); the file is damaged") from e

    def _jpeg(self, s: _StreamView, i: int, what: str) -> np.ndarray:
        off, length = (int(v) for v in self._read(s, "jpeg_index", i, what))
        jpeg = s.datasets["jpeg"]
        assert self.camera_size is not None
        h, w = self.camera_size
        limit = 2 * h * w * 3 + (64 << 10)
        if off < 0 or not 0 < length <= limit or off + length > jpeg.shape[0]:
            raise RecordingError(
                f"{what}: JPEG index (offset {off}, length {length}) lies outside the stored "
                f"{jpeg.shape[0]} bytes; the file is damaged"
            )
        return self._read(s, "jpeg", slice(off, off + length), what)

    def _truth(self, s: _StreamView, i: int, what: str) -> GroundTruth | None:
        row = TruthRow(
            int(self._read(s, "truth/count", i, what)),
            self._read(s, "truth/ids", i, what),
            self._read(s, "truth/positions", i, what),
            self._read(s, "truth/visible", i, what),
        )
        return unpack_truth(row, self.identities, what)

    def edge_config(self) -> EdgeConfig:
        """The edge config the session was recorded with (camera model, imaging, sweep), validated;
        RecordingError naming the file when it is not a config this version reads."""
        try:
            return parse_config(tomllib.loads(self.config_toml), source=f"{self._where} config")
        except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, ConfigError) as e:
            raise RecordingError(f"{self._where}: its stored config is unreadable ({e})") from e

    def close(self) -> None:
        """Close the file. Idempotent."""
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _str_attr(attrs: h5py.AttributeManager, name: str) -> str | None:
    value = attrs.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


__all__ = ["SessionReader"]
