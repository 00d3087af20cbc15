"""The run loop of `vrclip-edge run`: capture threads in, identity events out, health all along.

One process, bounded everywhere: each source has its own capture thread and a small drop-oldest
queue, the synchroniser's buffers are bounded, track state is bounded by the tracker. The loop
is driven by radar frames; a camera or ZED that is down only removes its modality from events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from vrclip.edge.config import EdgeConfig
from vrclip.edge.events.event import IdentityEvent
from vrclip.edge.events.health import Health
from vrclip.edge.pipeline.identify import Identifier, TrackResult
from vrclip.edge.pipeline.queues import DropOldestQueue
from vrclip.edge.pipeline.sources import Captured, CaptureThread, FrameSource, stop_side_by_side
from vrclip.edge.pipeline.sync import SyncedFrame, Synchronizer

#: Frames each capture queue holds before it drops the oldest (about half a second of radar).
QUEUE_FRAMES = {"radar": 6, "camera": 4, "depth": 4}

log = logging.getLogger(__name__)


class StopSignal(Protocol):
    """Anything with is_set(): a threading.Event or the service's ShutdownFlag."""

    def is_set(self) -> bool: ...


@dataclass
class RunSummary:
    frames: int = 0
    events: int = 0
    started_s: float = field(default_factory=time.monotonic)
    ended_s: float = 0.0
    reason: str = ""

    @property
    def seconds(self) -> float:
        return (self.ended_s or time.monotonic()) - self.started_s


#: How long the radar capture may show no sign of life (no frame, fault or reconnection attempt)
#: before the run loop stops feeding the watchdog. Longer than the VNA driver's largest reconnection
#: backoff (radar.vna.reconnect_max_backoff_s, 30 s by default) plus an attempt's timeouts.
RADAR_STALL_S = 90.0


#: Radar frames in a row whose processing may raise before the run gives up and ends with the error
#: (about 10 s at 10 frames/s): one odd frame costs that frame, a fault that every frame hits (an
#: engine or GPU gone bad) gets the service restarted instead of idling on with the watchdog fed.
MAX_CONSECUTIVE_STEP_ERRORS = 100


#: How long stopping waits for the capture threads, all of them together (seconds). A read that hangs
#: leaves its daemon thread behind; the process exits anyway.
CAPTURE_STOP_S = 5.0


def radar_stall_s(config: EdgeConfig) -> float:
    """`RADAR_STALL_S`, or more where the config lets the driver wait longer: between reconnections,
    or within one attempt, which may wait out the VNA's timeout a few times (connecting, *IDN?, the
    sweep set-up) and the switch controller's."""
    vna, switch = config.radar.vna, config.radar.switch
    attempt_s = 3 * vna.timeout_ms / 1000 + 2 * switch.timeout_ms / 1000 + 30.0
    return max(RADAR_STALL_S, vna.reconnect_max_backoff_s + 60.0, attempt_s)


class EdgeRunner:
    """Owns the capture threads and drives the Identifier with synchronised frames.

    `heartbeat` (WatchdogPinger.heartbeat) is first called once a frame has gone through the whole
    pipeline, then on every turn of the loop, also when no radar frame came within its short wait as
    long as the radar capture shows signs of life (`radar_stall_s`): a radar that is down and being
    reopened must not get the service killed by the watchdog, while a step or a radar read that
    hangs stops the heartbeats.

    A frame whose processing raises is skipped, counted (`step_errors`) and warned about once per
    kind of error; `MAX_CONSECUTIVE_STEP_ERRORS` in a row end the run with the last error.
    """

    def __init__(
        self,
        identifier: Identifier,
        sources: dict[str, Callable[[], FrameSource]],
        health: Health,
        *,
        slop_ns: int,
        emit: Callable[[IdentityEvent], None] | None = None,
        on_results: Callable[[SyncedFrame, list[TrackResult]], None] | None = None,
        on_frame: Callable[[SyncedFrame], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        status_stream: TextIO | None = None,
        status_interval_s: float = 5.0,
        lossless: bool = False,
        radar_stall_s: float = RADAR_STALL_S,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if "radar" not in sources:
            raise ValueError("the pipeline is driven by radar frames: a radar source is required")
        self.identifier = identifier
        self.health = health
        self.emit = emit
        self.on_results = on_results
        self.on_frame = on_frame
        self.heartbeat = heartbeat
        self.status_stream = status_stream
        self.status_interval_s = status_interval_s
        self.queues: dict[str, DropOldestQueue[Captured]] = {
            name: DropOldestQueue(QUEUE_FRAMES.get(name, 4)) for name in sources
        }
        self.threads = {
            name: CaptureThread(factory, name, self.queues[name], health, lossless=lossless)
            for name, factory in sources.items()
        }
        self.radar_stall_s = radar_stall_s
        self.sync = Synchronizer(slop_ns)
        self.lossless = lossless
        self._latest: dict[str, int] = {}
        # Without a caller's warn (enrolment, the benchmark) the warning still reaches stderr.
        self.warn = warn or (lambda message: log.warning("%s", message))
        self._step_errors_in_a_row = 0
        self._warned_errors: set[str] = set()

    def _radar_alive(self) -> bool:
        quiet_ns = time.monotonic_ns() - self.threads["radar"].last_alive_ns()
        return quiet_ns < self.radar_stall_s * 1e9

    def run(
        self, stop: StopSignal, duration_s: float | None = None, max_frames: int | None = None
    ) -> RunSummary:
        summary = RunSummary()
        for thread in self.threads.values():
            thread.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_status = time.monotonic() + self.status_interval_s
        radar_q = self.queues["radar"]
        try:
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    summary.reason = "duration reached"
                    break
                if max_frames is not None and summary.frames >= max_frames:
                    summary.reason = "frame count reached"
                    break
                # Short wait: camera/ZED queues are drained at least every 0.1 s even when radar is slow.
                item = radar_q.get(timeout=0.1)
                self._collect_partners(None if item is None else item.frame.t_ns)
                if item is None:
                    if summary.frames and self.heartbeat is not None and self._radar_alive():
                        # The loop is alive, waiting for a radar that is down and being reopened
                        # (frames, faults or reconnection attempts keep coming): a degraded service,
                        # not a stalled one. A radar read that hangs shows no sign of life, and after
                        # `radar_stall_s` the heartbeats stop so systemd restarts the service.
                        self.heartbeat()
                    if self.threads["radar"].ended.is_set() and not len(radar_q):
                        summary.reason = "radar stream ended"
                        break
                    next_status = self._status(next_status)
                    continue
                try:
                    self._process(item, summary)
                except Exception as exc:
                    if not self._step_failed(exc):
                        raise
                    next_status = self._status(next_status)
                    continue
                self.health.frame_in("pipeline")
                summary.frames += 1
                if self.heartbeat is not None:
                    self.heartbeat()
                next_status = self._status(next_status)
            else:
                # The service's ShutdownFlag knows why (SIGTERM, SIGINT, a fatal error); an Event does not.
                summary.reason = getattr(stop, "reason", None) or "stop requested"
        finally:
            self._stop_captures()
            self._sync_drops()
            summary.ended_s = time.monotonic()
        return summary

    def _stop_captures(self) -> None:
        """Stop every capture thread within one `CAPTURE_STOP_S` in all: one by one, each sensor whose
        read hangs would add its own wait, and systemd kills the service TimeoutStopSec after SIGTERM,
        before the recording and the event sinks (the last events) have closed."""
        stop_side_by_side(self.threads.values(), CAPTURE_STOP_S)

    def _process(self, item: Captured, summary: RunSummary) -> None:
        """One radar frame through pairing, the frame hooks, the Identifier and the event sinks."""
        synced = self.sync.pair(item.frame)  # type: ignore[arg-type]
        if self.on_frame is not None:
            self.on_frame(synced)
        results, events = self.identifier.step(synced)
        for event in events:
            if self.emit is not None:
                self.emit(event)
            self.health.count("events")
            self.health.count("unknown_events" if event.identity == "unknown" else "known_events")
        summary.events += len(events)
        if self.on_results is not None:
            self.on_results(synced, results)
        self.health.latency("capture_to_event", (time.monotonic_ns() - item.received_ns) / 1e9)
        self._step_errors_in_a_row = 0

    def _step_failed(self, exc: Exception) -> bool:
        """Count a frame whose processing raised; False once too many in a row (the caller re-raises).

        The frame earns no heartbeat. Warned once per kind of error: a fault that repeats every frame
        must not flood the console, the counter says how often it happens."""
        self.health.count("step_errors")
        self._step_errors_in_a_row += 1
        kind = type(exc).__name__
        if kind not in self._warned_errors:
            self._warned_errors.add(kind)
            self.warn(
                f"processing a radar frame failed ({kind}: {exc}); the frame is skipped and the run goes "
                "on (counted as step_errors in the health status)"
            )
        return self._step_errors_in_a_row < MAX_CONSECUTIVE_STEP_ERRORS

    def _collect_partners(self, radar_t_ns: int | None) -> None:
        """Move camera/depth frames into the synchroniser. Live: whatever has arrived. Lossless
        (offline replay): first wait until each stream has passed the radar frame's time plus the
        slop, so a slower decoder cannot make a radar frame miss its partner."""
        partners = [name for name in ("camera", "depth") if name in self.queues]
        waited_until = time.monotonic() + 5.0
        while True:
            for name in partners:
                for captured in self.queues[name].drain():
                    self.sync.add(captured.frame)
                    self._latest[name] = captured.frame.t_ns
            if not self.lossless or radar_t_ns is None:
                return
            behind = [
                name
                for name in partners
                if self._latest.get(name, -1) < radar_t_ns + self.sync.slop_ns
                and not self.threads[name].ended.is_set()
            ]
            if not behind or time.monotonic() > waited_until:
                return
            time.sleep(0.002)

    def _sync_drops(self) -> None:
        # A camera faster than the radar leaves frames no radar frame pairs with: counted, not "dropped".
        for name, n in self.sync.stats.dropped.items():
            if n:
                self.health.count(f"unpaired_{name}", n)
                self.sync.stats.dropped[name] = 0

    def _status(self, next_status: float) -> float:
        now = time.monotonic()
        if now < next_status:
            return next_status
        self._sync_drops()
        if self.status_stream is not None:
            print(self.health.status_line(), file=self.status_stream, flush=True)
        return now + self.status_interval_s
