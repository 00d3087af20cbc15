"""Frame sources and the capture threads that feed the pipeline.

Every modality has interchangeable sources: real hardware (VNA + switch over VISA, OpenCV camera,
ZED through pyzed), the simulated rig, and replay of a recording. A `CaptureThread` owns one
source: it reads frames into a bounded drop-oldest queue, marks the modality down on a fault and
reopens the source with backoff, so a sensor fault degrades the output instead of killing the
process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import SensorError, UserError
from vrclip.edge.events.health import Health, ModalityState
from vrclip.edge.frames import CLOCK_REALTIME, CameraFrame, DepthFrame, RadarFrame, stream_of
from vrclip.edge.pipeline.queues import DropOldestQueue
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.sim.rig import SimulatedRig

Frame = RadarFrame | CameraFrame | DepthFrame


@dataclass(frozen=True)
class Captured:
    """A frame and the monotonic instant it reached the process (for capture-to-event latency)."""

    frame: Frame
    received_ns: int


class FrameSource(Protocol):
    """One sensor stream. `read` blocks until the next frame; None means the stream has ended."""

    modality: str

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


class _Pacer:
    """Sleeps so that frames come out at a fixed rate; falls behind gracefully (no catch-up burst)."""

    def __init__(self, rate_hz: float) -> None:
        self.period_ns = int(1e9 / rate_hz)
        self.next_ns: int | None = None

    def wait(self, stop: threading.Event | None = None) -> int:
        now = time.monotonic_ns()
        if self.next_ns is None:
            self.next_ns = now
        delay = (self.next_ns - now) / 1e9
        if delay > 0:
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
        else:
            self.next_ns = now  # behind: restart the grid instead of bursting
        self.next_ns += self.period_ns
        return time.time_ns()


class SimulatedSource:
    """One stream of the in-process simulated rig, paced in real time and stamped CLOCK_REALTIME.

    Scene time is wall time since `epoch_ns`, shared by every simulated source (and by the SCPI
    VNA simulator when it serves the radar), so all modalities see the same people at once.
    """

    def __init__(self, rig: SimulatedRig, modality: str, rate_hz: float, epoch_ns: int) -> None:
        self.rig = rig
        self.modality = modality
        self.epoch_ns = epoch_ns
        self._pacer = _Pacer(rate_hz)
        self._seq = 0
        makers = {"radar": rig.radar_frame, "camera": rig.camera_frame, "depth": rig.depth_frame}
        self._make = makers[modality]

    def open(self) -> None:
        pass

    def read(self) -> Frame | None:
        t_ns = self._pacer.wait()
        frame = self._make(self._seq, (t_ns - self.epoch_ns) / 1e9)
        self._seq += 1
        # The rig stamps its own simulated clock; on the live path the frame was taken "now".
        return type(frame)(**{**frame.__dict__, "t_ns": t_ns, "clock": CLOCK_REALTIME})

    def close(self) -> None:
        pass


#: Consecutive dropped radar frames after which a read raises the last frame's fault. A fault that
#: every sweep repeats (a VNA returning NaN, a wrong point count) leaves the reconnections succeeding,
#: so without a bound the read dropped frames forever: the radar stayed "up" in /status while hundreds
#: of warnings a second went to the journal. Raised, the capture thread marks the radar down with the
#: reason and reopens it with its own backoff.
RADAR_MAX_DROPPED_FRAMES = 3
#: Consecutive failed reconnections (the VNA or switch gone from the network, or silent) after which a
#: read raises. Retried inside the read without a bound, an outage after start-up left the radar "up"
#: in /status at 0 frames/s, where the same outage at start showed it down. Raised, the capture thread
#: marks it down with the reason and reopens it, waiting up to radar.vna.reconnect_max_backoff_s.
RADAR_MAX_RECONNECT_ATTEMPTS = 3


class ScpiRadarSource:
    """The radar through its real drivers: VNA over VISA + switch controller (hardware or simulators)."""

    modality = "radar"

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self._source = None
        #: The capture thread's longest wait between reopening attempts (see CaptureThread).
        self.reopen_max_backoff_s = config.radar.vna.reconnect_max_backoff_s

    def open(self) -> None:
        from vrclip.edge.radar.source import RadarSource

        self._source = RadarSource.from_config(
            self.config,
            max_dropped_frames=RADAR_MAX_DROPPED_FRAMES,
            max_reconnect_attempts=RADAR_MAX_RECONNECT_ATTEMPTS,
        )
        self._source.open()

    @property
    def last_activity_ns(self) -> int:
        """Monotonic time of the driver's last frame or (re)connection attempt (see CaptureThread)."""
        return self._source.last_activity_ns if self._source is not None else 0

    def read(self) -> Frame | None:
        """The next radar frame, no faster than radar.frame_rate_hz (the rate the engine expects)."""
        assert self._source is not None
        return self._source.read_paced_frame()

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


#: Pause between the end of a looped recording and its next pass (ns of replayed time).
LOOP_GAP_NS = 100_000_000


def loop_timing(reader: SessionReader, modality: str) -> tuple[int, int]:
    """(t0, period) of a looped replay: the time origin for pacing and the offset added per pass.

    Both come from the whole recording, not from the one stream replayed, so every stream of the
    recording (each has its own ReplaySource) shifts by the same amount each pass and frames taken
    together stay together. t0 is the earliest frame on `modality`'s clock; the period is the longest
    stream's span plus a gap, so no pass overlaps the previous one in any stream.
    """
    clock = reader.clock(modality)
    firsts, spans = [], []
    for name in reader.streams:
        if reader.count(name) == 0:
            continue
        times = reader.times(name)
        spans.append(int(times[-1] - times[0]))
        if reader.clock(name) == clock:
            firsts.append(int(times[0]))
    return min(firsts), max(spans) + LOOP_GAP_NS


class ReplaySource:
    """One stream of a recording, paced by its own timestamps (or as fast as possible), optionally looped.

    Looped, every pass adds the recording's loop period (`loop_timing`) to the time stamps, the same
    for all streams, so the synchroniser keeps pairing the frames that were recorded together.
    """

    def __init__(self, path: str, modality: str, *, paced: bool = True, loop: bool = False) -> None:
        self.path = path
        self.modality = modality
        self.paced = paced
        self.loop = loop
        self._reader: SessionReader | None = None
        self._index = 0
        self._offset_ns = 0
        self._wall0: int | None = None
        self._t0 = 0
        self._period_ns = 0

    def open(self) -> None:
        self._reader = SessionReader(self.path)
        if self.modality not in self._reader.streams or self._reader.count(self.modality) == 0:
            raise UserError(f"{self.path}: the recording has no {self.modality} frames to replay")
        self._t0, self._period_ns = loop_timing(self._reader, self.modality)

    def read(self) -> Frame | None:
        reader = self._reader
        assert reader is not None
        n = reader.count(self.modality)
        if self._index >= n:
            if not self.loop:
                return None
            self._offset_ns += self._period_ns
            self._index = 0
        readers = {"radar": reader.radar, "camera": reader.camera, "depth": reader.depth}
        frame = readers[self.modality](self._index)
        if self._wall0 is None:
            self._wall0 = time.monotonic_ns()
        self._index += 1
        t_ns = frame.t_ns + self._offset_ns
        if self.paced:
            delay = (self._wall0 + (t_ns - self._t0) - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
        return type(frame)(**{**frame.__dict__, "t_ns": t_ns})

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _opencv_target(device: str) -> tuple[int | str, int]:
    """Device index, file/URL, or GStreamer pipeline (contains '!'), with the OpenCV backend to use."""
    if device.isdigit():
        return int(device), cv2.CAP_ANY
    if "!" in device:
        info = cv2.getBuildInformation()
        line = next((ln for ln in info.splitlines() if "GStreamer" in ln), "GStreamer: (not mentioned)")
        if "YES" not in line:
            raise UserError(
                f"camera.device looks like a GStreamer pipeline, but this OpenCV build has no GStreamer "
                f"support ({line.strip()}); install an OpenCV built with GStreamer (e.g. Debian's "
                f"python3-opencv or NVIDIA's JetPack OpenCV) or give a device index"
            )
        return device, cv2.CAP_GSTREAMER
    return device, cv2.CAP_ANY


#: A live camera's sensor noise changes some pixel in every frame: an image with detail that has not
#: changed for this long means the camera or its driver froze and keeps handing out its last frame
#: (a USB camera's firmware does, for months-long runs). Reopening it usually brings it back.
FROZEN_AFTER_S = 3.0
#: Every 8th pixel of every 8th row: enough to see sensor noise, 14,400 pixels at 1280x720.
FROZEN_STRIDE = 8
#: An image whose sample spans fewer grey levels than this is dark or blank, not frozen: a camera in
#: a dark room can deliver identical black frames, and that is night, not a fault.
FROZEN_MIN_DETAIL = 16
#: Share of the sample that must lie strictly between its darkest and brightest level. Sensor noise
#: only shows there: pixels clipped to black or white never change. A dark room with an exit sign or
#: a standby LED spans 0..255 yet is all clipped, identical frame after frame, and that is night too.
FROZEN_MIN_MIDTONES = 0.25


def _has_detail(sample: np.ndarray) -> bool:
    """Whether an unchanged image can only be a frozen one: it spans FROZEN_MIN_DETAIL grey levels,
    and enough of it is unclipped (FROZEN_MIN_MIDTONES) for sensor noise to have changed it."""
    low, high = int(sample.min()), int(sample.max())
    if high - low < FROZEN_MIN_DETAIL:
        return False
    midtones = np.count_nonzero((sample > low) & (sample < high))
    return midtones >= FROZEN_MIN_MIDTONES * sample.size


class OpenCvCameraSource:
    """An RGB camera through OpenCV; keeps the driver buffer at one frame so reads are the newest."""

    modality = "camera"

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self._cap: cv2.VideoCapture | None = None
        self._seq = 0
        self._last_sample: np.ndarray | None = None
        self._changed_at = 0.0

    def open(self) -> None:
        target, backend = _opencv_target(self.config.camera.device)
        cap = cv2.VideoCapture(target, backend)
        if not cap.isOpened():
            raise SensorError(f"camera {self.config.camera.device!r}: OpenCV could not open it")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.camera.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.camera.height)
        cap.set(cv2.CAP_PROP_FPS, self.config.camera.fps)
        self._cap = cap

    def read(self) -> Frame | None:
        assert self._cap is not None
        ok, bgr = self._cap.read()
        # When the image was taken, on the radar's time line: the stamp minus the camera's latency.
        t_ns = time.time_ns() - round(self.config.camera.latency_ms * 1e6)
        if not ok or bgr is None:
            raise SensorError(f"camera {self.config.camera.device!r}: no frame (unplugged or end of file)")
        # OpenCV ignores a size the camera does not support and delivers its own: the person crops are
        # cut with the camera model of camera.width x camera.height, so another size is a camera fault.
        height, width = bgr.shape[:2]
        want = self.config.camera
        if (width, height) != (want.width, want.height):
            raise SensorError(
                f"camera {want.device!r}: delivers {width}x{height} frames but camera.width x "
                f"camera.height = {want.width}x{want.height}; set camera.width and camera.height to a "
                "size the camera supports (the person crops are cut for that size)"
            )
        self._check_not_frozen(bgr)
        frame = CameraFrame(self._seq, t_ns, CLOCK_REALTIME, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        self._seq += 1
        return frame

    def _check_not_frozen(self, bgr: np.ndarray) -> None:
        sample = bgr[::FROZEN_STRIDE, ::FROZEN_STRIDE]
        now = time.monotonic()
        if self._last_sample is None or not np.array_equal(sample, self._last_sample):
            self._last_sample, self._changed_at = sample.copy(), now
            return
        if now - self._changed_at >= FROZEN_AFTER_S and _has_detail(sample):
            self._last_sample = None  # a reopened camera starts afresh
            raise SensorError(
                f"camera {self.config.camera.device!r}: the image has not changed for "
                f"{now - self._changed_at:.0f} s; the camera or its driver froze (reopening it)"
            )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ZedDepthSource:
    """The ZED through pyzed (ZED SDK): depth image and body-tracking floor positions, or SVO playback."""

    modality = "depth"

    def __init__(self, config: EdgeConfig, svo_path: str | None = None) -> None:
        self.config = config
        self.svo_path = svo_path
        self._camera = None
        self._seq = 0

    def open(self) -> None:
        try:
            import pyzed.sl as sl  # type: ignore[import-not-found]
        except ImportError:
            raise SensorError(
                "ZED: pyzed is not installed; install the ZED SDK (it ships pyzed) "
                "or set [zed] enabled = false"
            ) from None
        init = sl.InitParameters()
        init.depth_mode = sl.DEPTH_MODE.NEURAL
        init.coordinate_units = sl.UNIT.METER
        init.coordinate_system = sl.COORDINATE_SYSTEM.RIGHT_HANDED_Z_UP
        init.camera_fps = int(self.config.zed.fps)
        init.depth_maximum_distance = self.config.zed.max_depth_m
        if self.svo_path:
            init.set_from_svo_file(self.svo_path)
        elif self.config.zed.serial:
            init.set_from_serial_number(self.config.zed.serial)
        camera = sl.Camera()
        status = camera.open(init)
        if status != sl.ERROR_CODE.SUCCESS:
            raise SensorError(f"ZED: open failed ({status})")
        camera.enable_positional_tracking(sl.PositionalTrackingParameters())
        body = sl.BodyTrackingParameters()
        body.enable_tracking = True
        camera.enable_body_tracking(body)
        self._sl = sl
        self._camera = camera
        self._depth = sl.Mat()
        self._bodies = sl.Bodies()
        self._runtime = sl.RuntimeParameters()
        self._body_runtime = sl.BodyTrackingRuntimeParameters()

    def read(self) -> Frame | None:
        sl, camera = self._sl, self._camera
        assert camera is not None
        status = camera.grab(self._runtime)
        if status == sl.ERROR_CODE.END_OF_SVOFILE_REACHED:
            return None
        if status != sl.ERROR_CODE.SUCCESS:
            raise SensorError(f"ZED: grab failed ({status})")
        t_ns = int(camera.get_timestamp(sl.TIME_REFERENCE.IMAGE).get_nanoseconds())
        resolution = sl.Resolution(self.config.zed.depth_width, self.config.zed.depth_height)
        camera.retrieve_measure(self._depth, sl.MEASURE.DEPTH, sl.MEM.CPU, resolution)
        depth = np.array(self._depth.get_data(), dtype=np.float32, copy=True)
        depth[~np.isfinite(depth)] = np.nan
        camera.retrieve_bodies(self._bodies, self._body_runtime)
        origin = np.asarray(self.config.zed.position_m[:2])
        positions = [
            origin + np.asarray(body.position[:2], dtype=np.float64)
            for body in self._bodies.body_list
            if np.all(np.isfinite(body.position))
        ]
        floor = np.asarray(positions, np.float32).reshape(-1, 2)
        frame = DepthFrame(self._seq, t_ns, CLOCK_REALTIME, depth, floor)
        self._seq += 1
        return frame

    def close(self) -> None:
        if self._camera is not None:
            self._camera.close()
            self._camera = None


class CaptureThread:
    """Reads one source into a bounded queue; on a fault marks the modality down and reopens with backoff."""

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        modality: str,
        queue: DropOldestQueue[Captured],
        health: Health,
        *,
        max_backoff_s: float = 10.0,
        lossless: bool = False,
    ) -> None:
        self.factory = factory
        self.modality = modality
        self.queue = queue
        self.health = health
        self.max_backoff_s = max_backoff_s
        #: Wait for room instead of dropping (replaying a file offline, where every frame counts).
        self.lossless = lossless
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{modality}", daemon=True)
        self._source: FrameSource | None = None
        self._alive_ns = time.monotonic_ns()

    def last_alive_ns(self) -> int:
        """Monotonic time of this capture's last sign of life: a frame, a fault, a reopen attempt, or
        (for a source that retries inside `read`, such as the SCPI radar) its own last attempt. A
        read that hangs shows none, which is how the run loop tells a stall from an outage."""
        source = self._source
        inner = getattr(source, "last_activity_ns", None) if source is not None else None
        return max(self._alive_ns, inner if isinstance(inner, int) else 0)

    def _touch(self) -> None:
        self._alive_ns = time.monotonic_ns()

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        self.join(timeout)

    def request_stop(self) -> None:
        """Ask the thread to end without waiting for it, so several sensors stop side by side."""
        self._stop.set()
        source = self._source
        if source is not None:
            # Closing unblocks a read waiting on an instrument. From a thread of its own: a driver
            # whose close hangs too (a camera gone inside its driver call) must not hold up the
            # other sensors' stop, nor the shutdown's deadline.
            threading.Thread(
                target=_close_quietly, args=(source,), name=f"close-{self.modality}", daemon=True
            ).start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.2
        cap = self.max_backoff_s
        while not self._stop.is_set():
            try:
                self._source = self.factory()
                # A source may name its own longest wait (the radar: radar.vna.reconnect_max_backoff_s).
                cap = float(getattr(self._source, "reopen_max_backoff_s", self.max_backoff_s))
                self._source.open()
                self.health.set_modality(self.modality, ModalityState.UP)
                while not self._stop.is_set():
                    frame = self._source.read()
                    self._touch()
                    if frame is None:
                        self.ended.set()
                        return
                    # Reset by a frame, not by the open: a sensor that opens but fails every read (a
                    # VNA whose every sweep is NaN) was otherwise reopened every 0.2 s for good.
                    backoff = 0.2
                    captured = Captured(frame, time.monotonic_ns())
                    if self.lossless:
                        while not self.queue.put_wait(captured, 0.25):
                            if self._stop.is_set():
                                return
                        self.health.frame_in(self.modality)
                        continue
                    evicted = self.queue.put(captured)
                    self.health.frame_in(self.modality)
                    if evicted is not None:
                        # `record` shares one queue among the sensors: the frame pushed out may
                        # be another stream's.
                        self.health.dropped(stream_of(evicted.frame), 1)
            except UserError as exc:
                # A configuration mistake will not heal by retrying: report it and stop this source.
                self.health.set_modality(self.modality, ModalityState.DOWN, exc)
                self.health.count(f"{self.modality}_config_errors")
                self.ended.set()
                return
            except Exception as exc:  # any sensor fault degrades the output, never kills the process
                self._touch()
                if self._stop.is_set():
                    return
                self.health.set_modality(self.modality, ModalityState.DOWN, exc)
                self.health.count("sensor_errors")
            finally:
                source, self._source = self._source, None
                if source is not None:
                    _close_quietly(source)
            self._stop.wait(min(backoff, cap))
            self._touch()
            backoff = min(cap, backoff * 2)


def _close_quietly(source: FrameSource) -> None:
    """Close a source at shutdown; a faulty sensor must not raise there."""
    with contextlib.suppress(Exception):
        source.close()


def stop_side_by_side(threads: Iterable[CaptureThread], budget_s: float) -> None:
    """Stop every capture thread within `budget_s` in all: one by one, each sensor whose read hangs
    in its driver would add its own wait, and systemd kills a service that outlasts TimeoutStopSec."""
    threads = list(threads)
    for thread in threads:
        thread.request_stop()
    deadline = time.monotonic() + budget_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
