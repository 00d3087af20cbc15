"""Pair radar frames with the camera and depth frames nearest in time.

Radar is the anchor (it runs at the pipeline's rate and sees through occluders); each radar frame
takes the nearest camera and depth frame within the slop, every frame is used at most once, and
frames that can no longer be paired are counted as dropped. A modality with no frame in the slop
is simply absent from that pair: the fused model handles missing modalities.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vrclip.edge.frames import CameraFrame, DepthFrame, RadarFrame, stream_of


@dataclass(frozen=True)
class SyncedFrame:
    radar: RadarFrame
    camera: CameraFrame | None
    depth: DepthFrame | None


@dataclass
class SyncStats:
    paired: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"camera": 0, "depth": 0})
    clock_mismatch: int = 0


class Synchronizer:
    """Nearest-timestamp pairing within `slop_ns`; buffers are bounded by `max_buffer` per stream."""

    def __init__(self, slop_ns: int, max_buffer: int = 64) -> None:
        self.slop_ns = int(slop_ns)
        self.max_buffer = max_buffer
        self._buffers: dict[str, deque] = {"camera": deque(), "depth": deque()}
        self.stats = SyncStats()

    def add(self, frame: CameraFrame | DepthFrame) -> None:
        name = stream_of(frame)
        buffer = self._buffers[name]
        buffer.append(frame)
        while len(buffer) > self.max_buffer:
            buffer.popleft()
            self.stats.dropped[name] += 1

    def pair(self, radar: RadarFrame) -> SyncedFrame:
        """Take the best partners for this radar frame; older unmatched frames are dropped."""
        partners = {name: self._take(name, radar) for name in self._buffers}
        self.stats.paired += 1
        return SyncedFrame(radar, partners["camera"], partners["depth"])

    def _take(self, name: str, radar: RadarFrame) -> CameraFrame | DepthFrame | None:
        buffer = self._buffers[name]
        best_index, best_gap = None, None
        for i, frame in enumerate(buffer):
            if frame.clock != radar.clock:
                continue
            gap = abs(frame.t_ns - radar.t_ns)
            if gap <= self.slop_ns and (best_gap is None or gap < best_gap):
                best_index, best_gap = i, gap
        # Frames stamped no later than the chosen one (or older than the slop) can never pair with a
        # later radar frame. By stamp, not by place in the buffer: a frame delivered out of order sits
        # before an older one and may still be the best partner of the next radar frame.
        horizon = radar.t_ns - self.slop_ns
        chosen_t = None if best_index is None else buffer[best_index].t_ns
        keep: deque = deque()
        chosen = None
        for i, frame in enumerate(buffer):
            if i == best_index:
                chosen = frame
            elif frame.clock != radar.clock:
                self.stats.clock_mismatch += 1
                self.stats.dropped[name] += 1
            elif (chosen_t is not None and frame.t_ns <= chosen_t) or frame.t_ns < horizon:
                self.stats.dropped[name] += 1
            else:
                keep.append(frame)
        self._buffers[name] = keep
        return chosen
