"""Layout of a vrclip session recording (one HDF5 file per session), schema version 1.

The file is written with HDF5's single-writer/multiple-reader mode (SWMR): the writer creates every
group, dataset and attribute up front, switches the file to SWMR, and from then on only appends rows.
That is what lets the replay source and the trainer read a session while it is being recorded, and what
lets a file whose writer was killed (kill -9, power cut) still open and yield every frame up to the last
flush. SWMR cannot append variable-length data, so every per-frame value is fixed-width: JPEG bytes go
into one flat byte array with an (offset, length) index, and label lists are padded to ``max_people``.

Root attributes::

    format            "vrclip-session"      (files with another or no value are refused)
    schema_version    1                     (readers refuse newer versions: upgrade vrclip-edge)
    session_id        str
    created_ns        int, CLOCK_REALTIME nanoseconds when the writer created the file
    writer            "vrclip-edge <version>"
    config_toml       str, the edge TOML config the session was recorded with
    geometry_json     str, JSON object: antenna/room geometry
    calibration_json  str, JSON object, or "" when the session was recorded uncalibrated
    conditions_json   str, JSON object: session conditions (e.g. lighting, occlusion, people, seed)
    identities_json   str, JSON list of every identity name in the session; label ids index into it
    max_people        int Kmax: width of every padded per-frame label array

Streams (one group each; ``/radar`` is always present, ``/camera`` and ``/depth`` only when recorded).
N is the stream's frame count, growing along axis 0; each stream has its own clock::

    /radar      attrs: clock (str), channels C, points P
        freqs_hz        (P,)       float64   sweep frequencies (fixed, not per frame)
        s21             (N, C, P)  complex64 one frame per chunk
        t_ns            (N,)       int64     timestamp on the stream's clock
        seq             (N,)       int64     source sequence number (gaps = frames the source dropped)
        committed       (1,)       int64     frames made durable by the last completed flush
        truth/...                            ground truth, see below
    /camera     attrs: clock, height H, width W, jpeg_quality, encoding="jpeg", colour="RGB"
        jpeg            (M,)       uint8     concatenated JPEG files (decode to RGB, H x W)
        jpeg_index      (N, 2)     int64     (byte offset into jpeg, byte length) per frame
        t_ns, seq, committed, truth/...
    /depth      attrs: clock, height h, width w, unit="m"
        depth           (N, h, w)  float16   metres, NaN where unknown; one frame per chunk
        positions       (N, K, 2)  float32   floor positions the depth camera reported, NaN padded
        count           (N,)       int16     how many rows of positions are real
        t_ns, seq, committed, truth/...

Ground truth under each stream's ``truth/`` (the simulator's labels; absent on real rigs)::

        truth/count     (N,)       int16     people in the frame, -1 = frame has no ground truth
        truth/ids       (N, K)     int16     index into identities_json, -1 padded
        truth/positions (N, K, 2)  float32   floor position in metres (room coordinates), NaN padded
        truth/visible   (N, K)     bool      visible to the camera, False padded

Frame count rule (what makes a killed file safe): a stream holds
``min(committed, len of every per-frame dataset)`` frames. The writer resizes datasets one by one and
HDF5 may write any of them to disk between flushes, so dataset lengths alone can describe a frame whose
data never reached the disk; ``committed`` is written only after a flush has completed, so it never
counts such a frame. A file still marked open for writing is opened only if it is at least as long
as its superblock says (vrclip.edge.recording.integrity), so a copy cut short is refused, not misread.
A file whose writer died stays marked as open for SWMR writing; our reader opens it as is (``h5clear
-s FILE`` clears the mark for other HDF5 tools).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT = "vrclip-session"
SCHEMA_VERSION = 1

RADAR = "radar"
CAMERA = "camera"
DEPTH = "depth"
STREAMS = (RADAR, CAMERA, DEPTH)

#: Name of the per-stream dataset holding the durable frame count.
COMMITTED = "committed"
#: Frames per chunk for the small per-frame datasets (timestamps, labels): small enough that a flush
#: rewrites little, large enough that a long session does not need millions of chunks.
ROW_CHUNK = 1024
#: Chunk size of the flat JPEG byte array.
JPEG_CHUNK_BYTES = 1 << 16
#: Largest single frame a reader will allocate; a file claiming more is damaged or hostile.
MAX_FRAME_BYTES = 256 << 20
#: Most sweep points a recording may hold (radar.sweep.points' own limit).
MAX_SWEEP_POINTS = 100_001
#: Most identities a session can name: label ids are int16.
MAX_IDENTITIES = int(np.iinfo(np.int16).max)
#: Most people one frame's labels can hold (`max_people`): every frame's label arrays are padded to it.
MAX_PEOPLE = 1024
#: Padding value of truth/ids and of truth/count meaning "no ground truth for this frame".
NO_ID = -1


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a stream group: shape after the frame axis, dtype, and chunking."""

    #: Path relative to the stream group, e.g. "truth/ids".
    name: str
    dtype: np.dtype
    #: Shape of one row (everything after axis 0).
    tail: tuple[int, ...]
    #: Rows per chunk along axis 0.
    chunk_rows: int
    #: HDF5 fill value (what an unwritten row reads as).
    fill: float | int | bool | None = None
    #: True: grows by exactly one row per frame. False: the flat JPEG byte array.
    per_frame: bool = True

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize


def _timing() -> list[DatasetSpec]:
    # Written last for each frame, so they are the last datasets to grow.
    return [
        DatasetSpec("t_ns", np.dtype(np.int64), (), ROW_CHUNK, 0),
        DatasetSpec("seq", np.dtype(np.int64), (), ROW_CHUNK, -1),
    ]


def truth_specs(max_people: int) -> list[DatasetSpec]:
    """The padded ground-truth datasets of a stream."""
    k = max_people
    return [
        DatasetSpec("truth/count", np.dtype(np.int16), (), ROW_CHUNK, NO_ID),
        DatasetSpec("truth/ids", np.dtype(np.int16), (k,), ROW_CHUNK, NO_ID),
        DatasetSpec("truth/positions", np.dtype(np.float32), (k, 2), ROW_CHUNK, np.nan),
        DatasetSpec("truth/visible", np.dtype(np.bool_), (k,), ROW_CHUNK, False),
    ]


def radar_specs(channels: int, points: int, max_people: int) -> list[DatasetSpec]:
    """Datasets of /radar in write order (bulk data first, timing last)."""
    return [
        DatasetSpec("s21", np.dtype(np.complex64), (channels, points), 1),
        *truth_specs(max_people),
        *_timing(),
    ]


def camera_specs(max_people: int) -> list[DatasetSpec]:
    """Datasets of /camera in write order."""
    return [
        DatasetSpec("jpeg", np.dtype(np.uint8), (), JPEG_CHUNK_BYTES, 0, per_frame=False),
        DatasetSpec("jpeg_index", np.dtype(np.int64), (2,), ROW_CHUNK, -1),
        *truth_specs(max_people),
        *_timing(),
    ]


def depth_specs(height: int, width: int, max_people: int) -> list[DatasetSpec]:
    """Datasets of /depth in write order."""
    return [
        DatasetSpec("depth", np.dtype(np.float16), (height, width), 1, np.nan),
        DatasetSpec("positions", np.dtype(np.float32), (max_people, 2), ROW_CHUNK, np.nan),
        DatasetSpec("count", np.dtype(np.int16), (), ROW_CHUNK, 0),
        *truth_specs(max_people),
        *_timing(),
    ]
