"""`vrclip-edge run --record FILE`: keep what the pipeline saw, for replay and for bug reports.

Each radar frame the pipeline processes is written with the camera and depth frames it was paired
with, so `vrclip-edge run --replay FILE` feeds the same engine the same inputs. The writing happens in
a thread of its own behind a bounded drop-oldest queue: the identity pipeline never waits on a disk,
and frames the disk cannot keep up with are dropped and counted (`record_dropped` in the health
status). Recording stops after its duration (a service may run for months; raw frames take ~8 GB an
hour of radar alone), when its disk gets nearly full (less than `record_live.MIN_FREE_BYTES` free:
HDF5 leaves a file that hit a full disk unreadable, and the service's gallery and event files may
share that disk) or on the first write failure, which is reported and leaves the pipeline running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from vrclip.edge.errors import FrameRejected, RecordingError
from vrclip.edge.events.health import Health
from vrclip.edge.frames import stream_of
from vrclip.edge.pipeline.app import Feed
from vrclip.edge.pipeline.queues import DropOldestQueue
from vrclip.edge.pipeline.sync import SyncedFrame
from vrclip.edge.record_live import disk_nearly_full, feed_writer

#: Synchronised frames waiting for the disk (a radar frame and up to two images: ~2 MB each at most).
QUEUE_FRAMES = 32
#: How long `close()` lets the writer finish what is queued (seconds), and then half that again for
#: the write in progress: with the sinks' own close, well inside systemd's TimeoutStopSec of 30 s.
CLOSE_TIMEOUT_S = 10.0
#: How often the writer thread checks the free space on the recording's disk (seconds).
DISK_CHECK_S = 1.0
#: How much more than the real time between two offers a radar frame interval may count towards the
#: recording's length (seconds): frames queued behind a slow step reach the recorder closer together
#: than they were taken, while a wall clock stepped forward (NTP) jumps by minutes or hours.
CLOCK_STEP_SLACK_S = 0.5


class FrameRecorder:
    """Feed it with `offer(synced)` from the pipeline loop; `close()` finishes the file."""

    def __init__(
        self,
        feed: Feed,
        path: Path,
        seconds: float,
        health: Health,
        *,
        identities: tuple[str, ...] = (),
        warn: Callable[[str], None] | None = None,
        source: str = "vrclip-edge run",
    ) -> None:
        """`source` names the command in the recording's conditions (`inspect` shows it), so a file
        kept from an enrolment is not taken for one of a run."""
        self.path = Path(path)
        self.seconds = seconds
        self.health = health
        self.warn = warn
        # The cap, not a length: the run may end (stop, --duration, a full disk) long before it, and
        # the conditions are fixed when the file is made (SWMR cannot rewrite them later). The real
        # length is in the frames' time stamps (`vrclip-edge inspect` shows it).
        conditions = {"source": source, "people": list(identities), "max_seconds": seconds}
        self.writer = feed_writer(feed, self.path, identities=identities, conditions=conditions)
        self.queue: DropOldestQueue[SyncedFrame] = DropOldestQueue(QUEUE_FRAMES)
        self._last_t_ns: int | None = None
        self._last_offer_ns = 0
        self._recorded_ns = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="record", daemon=True)
        self._thread.start()

    @property
    def recording(self) -> bool:
        return not self._done.is_set()

    def offer(self, synced: SyncedFrame) -> None:
        """Called by the pipeline for every frame it processes; never blocks."""
        if self._done.is_set():
            return
        if self._length_ns(synced.radar.t_ns) >= self.seconds * 1e9:
            self.queue.close()  # the writer finishes what is queued, then the file
            return
        if self.queue.put(synced) is not None:
            self.health.count("record_dropped")

    def _length_ns(self, t_ns: int) -> int:
        """The recording's length so far, in radar frame time, counted frame interval by frame
        interval so that a wall-clock step (NTP) neither ends it at once nor lets it run until the disk
        fills: an interval counts at least nothing and at most the real time between the two offers
        plus CLOCK_STEP_SLACK_S."""
        now_ns = time.monotonic_ns()
        if self._last_t_ns is not None:
            real_ns = now_ns - self._last_offer_ns + int(CLOCK_STEP_SLACK_S * 1e9)
            self._recorded_ns += min(max(t_ns - self._last_t_ns, 0), real_ns)
        self._last_t_ns, self._last_offer_ns = t_ns, now_ns
        return self._recorded_ns

    def _run(self) -> None:
        next_disk_check = 0.0
        try:
            while True:
                synced = self.queue.get(timeout=0.5)
                if synced is None and self.queue.closed:
                    break
                if time.monotonic() >= next_disk_check:
                    next_disk_check = time.monotonic() + DISK_CHECK_S
                    full = disk_nearly_full(self.path)
                    if full is not None:
                        raise RecordingError(full)
                if synced is not None:
                    self._write(synced)
        except RecordingError as exc:
            self.health.count("record_errors")
            if self.warn is not None:
                self.warn(f"recording to {self.path} stopped: {exc}; the pipeline goes on without it")
        finally:
            self._done.set()
            self.queue.close()
            self.queue.drain()  # frames left after a failure: not held for the rest of the run
            try:
                self.writer.close()
            except RecordingError as exc:
                self.health.count("record_errors")
                if self.warn is not None:
                    self.warn(f"recording to {self.path} could not be completed: {exc}")

    def _warn(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)

    def _write(self, synced: SyncedFrame) -> None:
        for frame in (synced.radar, synced.camera, synced.depth):
            if frame is None:
                continue
            stream = stream_of(frame)
            try:
                self.writer.write(frame)
            except FrameRejected as exc:
                self.health.count("record_rejected")
                if self.warn is not None and self.health.counters["record_rejected"] == 1:
                    self.warn(f"recording to {self.path}: a {stream} frame was refused ({exc})")
                continue
            self.health.count(f"recorded_{stream}")

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> dict[str, int]:
        """Finish the file: what is queued is written first, for up to `timeout_s`; returns frames
        written per stream.

        systemd gives the whole stop TimeoutStopSec (30 s) before SIGKILL, and the event sinks, which
        deliver identities, still close after this. So on a disk that has stalled, the frames still
        queued are dropped (counted in `record_dropped`) and the writer closes the file as soon as its
        write in progress returns; if even that does not return in time, the run goes on stopping
        and says the file may be left incomplete."""
        self.queue.close()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            left = len(self.queue.drain())
            self.health.count("record_dropped", left)
            self._warn(
                f"recording to {self.path}: the disk did not take the queued frames within {timeout_s:g} s "
                f"of shutdown; the {left} still queued were dropped so the file can close"
            )
            self._thread.join(timeout_s / 2)
            if self._thread.is_alive():
                self._warn(f"recording to {self.path}: still writing; the file may be left incomplete")
        return {
            stream: int(self.health.counters[f"recorded_{stream}"]) for stream in ("radar", "camera", "depth")
        }
