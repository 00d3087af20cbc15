"""Record a session from a live feed: the real rig, or the simulators through the real drivers.

The simulated path (`vrclip.edge.record`) steps the scene itself and never waits; a live feed runs at
the sensors' pace, can fault and can be told when to start. So this path reads every configured
sensor through the runtime's own capture threads (bounded drop-oldest queues, a faulty sensor marked
down and reopened with backoff), writes what arrives inside the session's time window, and reports
per stream what it recorded, dropped and which sensor was down. The writer flushes every second, so a
recording cut short (Ctrl-C, kill, power loss) keeps everything up to its last flush.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vrclip.edge.config import config_to_toml
from vrclip.edge.errors import FrameRejected, RecordingError, UserError
from vrclip.edge.events.health import Health, Modality, ModalityState
from vrclip.edge.frames import CLOCK_REALTIME, stream_of
from vrclip.edge.pipeline.app import Feed
from vrclip.edge.pipeline.queues import DropOldestQueue
from vrclip.edge.pipeline.sources import Captured, CaptureThread, stop_side_by_side
from vrclip.edge.record import check_session_seconds
from vrclip.edge.recording.schema import MAX_PEOPLE
from vrclip.edge.recording.writer import SessionWriter
from vrclip.edge.timebase.clock import now_ns
from vrclip.edge.timebase.start_protocol import check_wait_request, host_port, wait_for_start

#: Frames held between the capture threads and the writer (all streams together). A camera frame is
#: ~0.7 MB and a depth frame ~0.9 MB, so this bounds the backlog to ~60 MB; a writer that falls behind
#: (a slow disk) drops the oldest frames, counted per stream, instead of growing without limit.
QUEUE_FRAMES = 64
#: How long after the window's end frames already captured are still written (they are stamped
#: inside the window but may reach the queue a little later).
DRAIN_S = 0.5
#: How long the sensors may take to open before the session starts anyway (the time server is told
#: this device is ready, or a session without a given start begins): each sensor counts as settled once
#: it is open or has failed once; one still opening after this long misses the start.
OPEN_WAIT_S = 30.0
#: Free space a live recording leaves on its disk (checked every second): below it the session stops
#: and keeps its file. A disk that does fill up leaves an HDF5 file that opens only once extended by
#: hand (see the reader's message), so the recording stops well before: at a whole rig's ~10 MB/s this
#: is some 25 s of data.
MIN_FREE_BYTES = 256 << 20
#: Seconds between two checks of the free space (on the monotonic clock, which never steps).
DISK_CHECK_S = 1.0
#: A session in which no sensor has come up this long after its start is given up (every fault is
#: reported): on a machine without the rig, or with a config that points at none of it, the user
#: should not have to wait out the whole session to learn that.
NOTHING_UP_S = 5.0


@dataclass(frozen=True)
class LiveRecordRequest:
    out: Path
    seconds: float
    #: Who is in the session (the labels a trainer needs; a live rig cannot know them itself).
    identities: tuple[str, ...] = ()
    overwrite: bool = False
    #: The session's start on CLOCK_REALTIME (from the time server); None starts once the sensors
    #: have opened (or failed, see OPEN_WAIT_S).
    start_ns: int | None = None
    session_id: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    flush_interval_s: float = 1.0


@dataclass
class LiveRecordResult:
    frames: dict[str, int]
    dropped: dict[str, int]
    #: Per stream that was down at some point: the last reason (the recording went on without it).
    faults: dict[str, str]
    seconds: float
    stopped_early: bool
    #: True when the session was given up because no sensor came up (see NOTHING_UP_S).
    nothing_up: bool = False
    #: Why the recording itself ended early: its disk nearly full (see MIN_FREE_BYTES) or refusing a
    #: write. The file keeps what was written before.
    error: str | None = None

    def missing(self) -> list[str]:
        """Streams that recorded no frame at all."""
        return [name for name, n in self.frames.items() if n == 0]


def feed_writer(
    feed: Feed,
    path: Path,
    *,
    identities: tuple[str, ...],
    conditions: dict[str, Any],
    session_id: str | None = None,
    created_ns: int | None = None,
    flush_interval_s: float = 1.0,
    overwrite: bool = False,
) -> SessionWriter:
    """A recording of `feed`'s streams, as the live sources deliver them (all on CLOCK_REALTIME),
    with the rig's config, geometry and calibration: what `run --replay` and the trainer read."""
    cfg = feed.config
    streams = set(feed.sources)
    return SessionWriter(
        path,
        config_toml=config_to_toml(cfg),
        geometry=feed.geometry.to_dict(),
        freqs_hz=feed.freqs_hz,
        radar_channels=feed.geometry.n_channels,
        calibration=feed.calibration.to_dict() if feed.calibration is not None else None,
        conditions=json.dumps(conditions),
        identities=list(identities),
        camera_size=(cfg.camera.height, cfg.camera.width) if "camera" in streams else None,
        depth_size=(cfg.zed.depth_height, cfg.zed.depth_width) if "depth" in streams else None,
        clock=CLOCK_REALTIME,
        session_id=session_id,
        created_ns=created_ns,
        max_people=max(8, len(identities)),
        flush_interval_s=flush_interval_s,
        jpeg_quality=cfg.camera.jpeg_quality,
        overwrite=overwrite,
    )


def _writer_for(
    feed: Feed, request: LiveRecordRequest, start_ns: int, session_id: str | None
) -> SessionWriter:
    conditions = {
        "source": "live",
        "people": list(request.identities),
        "seconds": request.seconds,
        **request.notes,
    }
    return feed_writer(
        feed,
        request.out,
        identities=request.identities,
        conditions=conditions,
        session_id=session_id,
        created_ns=start_ns,
        flush_interval_s=request.flush_interval_s,
        overwrite=request.overwrite,
    )


#: Blocks until the session's start is known: (start instant on CLOCK_REALTIME in ns, session id).
StartWaiter = Callable[[], tuple[int, str]]


def time_server_start(host: str, port: int, name: str, timeout_s: float) -> StartWaiter:
    """A StartWaiter that asks the rig's time server (`vrclip-edge timebase serve`) for the start.

    The name and timeout are checked now, not when the waiter runs after the sensors have opened."""
    check_wait_request(name, timeout_s)

    def wait() -> tuple[int, str]:
        signal = wait_for_start(host, port, name, timeout_s)
        if signal.clock != CLOCK_REALTIME:
            raise UserError(
                f"time server {host_port(host, port)} gives its start on {signal.clock}, but the sensors "
                f'stamp their frames on {CLOCK_REALTIME}: set sync.clock = "{CLOCK_REALTIME}" for the server'
            )
        return signal.target_ns, signal.session

    return wait


class StopSignal(Protocol):
    """What ends a session early: a threading.Event, or the CLI's Ctrl-C flag (`ShutdownFlag`)."""

    def is_set(self) -> bool: ...


def record_feed(
    feed: Feed,
    request: LiveRecordRequest,
    progress: Callable[[float, float], None] | None = None,
    stop: StopSignal | None = None,
    wait_start: StartWaiter | None = None,
) -> LiveRecordResult:
    """Record `request.seconds` of every stream `feed` offers into `request.out`.

    The sensors are opened first (each until it is open or has failed once, at most OPEN_WAIT_S) and
    only then is the start awaited (`wait_start`, e.g. the time server's signal; else
    `request.start_ns`, else now), so instruments that take a while to connect do not miss the
    start. Frames stamped before the start or after the end of the window are not
    written. A frame the writer refuses (a camera delivering another size than configured, labels
    naming someone not in the session) is counted as dropped with the reason kept in `faults`, never
    written half. `stop` (or Ctrl-C) ends the session early; what was written stays readable.
    """
    check_session_seconds(request.seconds)
    _check_identities(request.identities)
    _check_not_over(request.start_ns, request.seconds)
    stop = stop if stop is not None else threading.Event()
    health = Health(tuple(feed.sources))
    queue: DropOldestQueue[Captured] = DropOldestQueue(QUEUE_FRAMES)
    frames = dict.fromkeys(feed.sources, 0)
    rejected: dict[str, int] = dict.fromkeys(feed.sources, 0)
    faults: dict[str, str] = {}
    threads = [
        CaptureThread(factory, modality, queue, health).start() for modality, factory in feed.sources.items()
    ]
    stopped_early = nothing_up = False
    error: str | None = None
    try:
        _await_sensors(threads, health, stop)
        if stop.is_set():  # before the start: no session, and a file --overwrite would replace is kept
            raise KeyboardInterrupt
        if wait_start is not None:
            start_ns, session_id = _wait_unless_stopped(wait_start, stop)
            _check_not_over(start_ns, request.seconds)
        else:
            start_ns = request.start_ns if request.start_ns is not None else now_ns(CLOCK_REALTIME)
            session_id = request.session_id
        end_ns = start_ns + int(request.seconds * 1e9)
        dropped_before = _dropped(health)
        writer = _writer_for(feed, request, start_ns, session_id)

        def take(captured: Captured) -> None:
            """Write a frame stamped inside the window; a refused one is counted, its reason kept."""
            if not start_ns <= captured.frame.t_ns < end_ns:
                return
            modality = stream_of(captured.frame)
            try:
                writer.write(captured.frame)
            except FrameRejected as exc:
                rejected[modality] += 1
                faults[modality] = str(exc)
                return
            frames[modality] += 1

        try:
            try:
                # On the monotonic clock: a wall clock stepped back (NTP) would otherwise hold the
                # next check off for the size of the step while the file keeps growing.
                next_disk_check = 0.0
                while True:
                    now = now_ns(CLOCK_REALTIME)
                    if now >= end_ns + DRAIN_S * 1e9 or all(t.ended.is_set() for t in threads):
                        break
                    if stop.is_set():
                        stopped_early = True
                        break
                    if now >= start_ns + NOTHING_UP_S * 1e9 and _nothing_up(health):
                        stopped_early = nothing_up = True
                        break
                    if time.monotonic() >= next_disk_check:
                        next_disk_check = time.monotonic() + DISK_CHECK_S
                        error = disk_nearly_full(request.out)
                        if error is not None:
                            stopped_early = True
                            break
                    captured = queue.get(timeout=0.1)
                    if progress is not None:
                        progress(min(max(now - start_ns, 0) / 1e9, request.seconds), request.seconds)
                    if captured is not None:
                        take(captured)
            except KeyboardInterrupt:  # the file is closed (flushed) on the way out, and kept
                stopped_early = True
            # Once the capture threads have stopped, the queue holds all that is left: frames stamped
            # inside the window that the writer had not reached yet (it fell behind) are written too.
            _stop_all(threads)
            if error is None:
                for captured in queue.drain():
                    take(captured)
        except RecordingError as exc:  # the disk refused a write: the session ends, the file is kept
            error, stopped_early = str(exc), True
        finally:
            if stopped_early:
                writer.mark_cut_short()
            try:
                writer.close()
            except RecordingError as exc:
                error = error or str(exc)
    finally:
        _stop_all(threads)
        queue.close()  # a capture thread that did not stop in time can no longer fill it
    snapshot = health.snapshot()
    for name, state in snapshot["modalities"].items():
        went_down = state["changes"] > 1 or state["state"] != ModalityState.UP.value
        if name not in faults and went_down and state["last_error"]:
            faults[name] = state["last_error"]
    dropped_after = _dropped(health)
    dropped = {
        name: dropped_after.get(name, 0) - dropped_before.get(name, 0) + rejected[name]
        for name in feed.sources
    }
    elapsed = min(max(now_ns(CLOCK_REALTIME) - start_ns, 0) / 1e9, request.seconds)
    return LiveRecordResult(frames, dropped, faults, elapsed, stopped_early, nothing_up, error)


def disk_nearly_full(out: Path) -> str | None:
    """Why `out` must not grow any further (its disk has less than MIN_FREE_BYTES free), else None."""
    try:
        free = _free_bytes(out.parent)
    except OSError:
        return None  # unknown: the writer still reports a write the disk refuses
    if free >= MIN_FREE_BYTES:
        return None
    return (
        f"{out}: only {free / 1e6:.0f} MB free on its disk (a recording leaves {MIN_FREE_BYTES >> 20} MiB "
        "free, as HDF5 leaves a file that hit a full disk unreadable), so the session was stopped; free "
        "some space or record elsewhere"
    )


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


#: How long `record` waits for its sensors to stop, all together.
SENSORS_STOP_S = 2.0


def _stop_all(threads: list[CaptureThread]) -> None:
    stop_side_by_side(threads, SENSORS_STOP_S)


def _check_identities(identities: tuple[str, ...]) -> None:
    """Refuse the names the session's writer would refuse, before the sensors open: the writer is
    made only at the start instant, when the other boxes of a multi-box rig begin recording."""
    seen: set[str] = set()
    for name in identities:
        if not isinstance(name, str) or not name:
            raise UserError(f"--identity {name!r}: give the person's name")
        if name in seen:
            raise UserError(f"--identity {name!r} is given twice; name each person once")
        seen.add(name)
    if len(identities) > MAX_PEOPLE:  # the writer pads every frame's labels to max(8, people)
        raise UserError(f"--identity is given {len(identities)} times; a session names at most {MAX_PEOPLE}")


def _check_not_over(start_ns: int | None, seconds: float) -> None:
    if start_ns is not None and start_ns + seconds * 1e9 <= now_ns(CLOCK_REALTIME):
        raise UserError("the session's start and end have both passed already; ask for a later start")


def _wait_unless_stopped(wait_start: StartWaiter, stop: StopSignal) -> tuple[int, str]:
    """`wait_start()`, which blocks on the time server for up to its timeout, given up when `stop` is
    set (Ctrl-C): that raises KeyboardInterrupt, as Ctrl-C did before the CLI read it as a flag, and
    nothing has been recorded yet. The waiting thread is a daemon left to its own timeout."""
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["start"] = wait_start()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    waiter = threading.Thread(target=wait, name="wait-start", daemon=True)
    waiter.start()
    while waiter.is_alive():
        if stop.is_set():
            raise KeyboardInterrupt
        waiter.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["start"]


def _await_sensors(threads: list[CaptureThread], health: Health, stop: StopSignal) -> None:
    """Wait until every sensor is open, has failed once or has ended (at most OPEN_WAIT_S)."""
    deadline = time.monotonic() + OPEN_WAIT_S
    while not stop.is_set() and time.monotonic() < deadline:
        modalities = health.snapshot()["modalities"]
        if all(t.ended.is_set() or _settled(modalities[t.modality]) for t in threads):
            return
        time.sleep(0.05)


def _settled(state: dict[str, Any]) -> bool:
    return (
        state["state"] == ModalityState.UP.value or state["changes"] > 0 or state["last_error"] != _NO_ERROR
    )


_NO_ERROR = Modality().last_error


def _nothing_up(health: Health) -> bool:
    """No sensor has opened or delivered a frame yet (each is still in its initial down state)."""
    snapshot = health.snapshot()
    return not snapshot["sources"] and all(m["changes"] == 0 for m in snapshot["modalities"].values())


def _dropped(health: Health) -> dict[str, int]:
    return {name: int(s["dropped"]) for name, s in health.snapshot()["sources"].items()}
