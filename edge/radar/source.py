"""RadarSource: full 144-channel MIMO frames from the VNA and the switch matrix.

For each frame it steps the switch through the geometry's switching order and takes one VNA sweep per
pair. The loop is pipelined where physics allows: once a sweep has finished (`*OPC?`), the trace is in
the VNA's memory, so the switch is told to move to the next pair *while* the driver reads that trace.
That hides one of the three round trips per channel; the other two (trigger/complete, switch settle)
are inherent to software-stepped switching.

Faults never end the stream: on any instrument error the frame is dropped (counted in `stats.drops`),
both instruments are reconnected with exponential backoff (`stats.reconnects`), and acquisition goes
on. `seq` counts frame *attempts*, so a dropped frame leaves a gap in `seq` that consumers can see.
Only setup errors (wrong instrument, sweep out of range, too few switch ports) propagate, because
retrying them would loop forever without a chance of success.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from vrclip.edge.config import EdgeConfig, RadarConfig
from vrclip.edge.frames import CLOCK_REALTIME, RadarFrame
from vrclip.edge.geometry import ArrayGeometry, load_geometry
from vrclip.edge.radar.backoff import Backoff, retry_with_backoff
from vrclip.edge.radar.dialects import ByteOrder, DataFormat
from vrclip.edge.radar.errors import RadarError, RadarSetupError, SwitchProtocolError
from vrclip.edge.radar.switch import SwitchClient
from vrclip.edge.radar.vna import VnaDriver
from vrclip.edge.timebase.clock import clock_reader

log = logging.getLogger(__name__)

#: First reconnection delay; doubles up to the configured maximum (radar.vna.reconnect_max_backoff_s).
DEFAULT_RECONNECT_INITIAL_S = 0.1


@dataclass
class RadarStats:
    """Health counters, read by the status endpoint and the tests."""

    #: Frames delivered.
    frames: int = 0
    #: Frames lost to an instrument error.
    drops: int = 0
    #: Successful reconnections after an error.
    reconnects: int = 0
    #: Message of the most recent error (None if there never was one).
    last_error: str | None = None


class RadarSource:
    """Iterator of `RadarFrame`s from a VNA + switch matrix (real, simulated or anything in between)."""

    def __init__(
        self,
        vna: VnaDriver,
        switch: SwitchClient,
        geometry: ArrayGeometry,
        *,
        frame_rate_hz: float | None = None,
        clock: str = CLOCK_REALTIME,
        reconnect_initial_s: float = DEFAULT_RECONNECT_INITIAL_S,
        reconnect_max_backoff_s: float = 30.0,
        max_reconnect_attempts: int | None = None,
        max_dropped_frames: int | None = None,
        pipelined: bool = True,
        step: str = "command",
    ) -> None:
        """step: "command" (a NEXT per channel) or "trigger" (the controller steps on the VNA's pulse)."""
        if step not in ("command", "trigger"):
            raise ValueError(f"radar.switch.step = {step!r}: must be 'command' or 'trigger'")
        if step == "trigger" and not vna.trigger_output:
            raise ValueError("step='trigger' needs a VnaDriver built with trigger_output=True")
        self.vna = vna
        self.switch = switch
        self.geometry = geometry
        self.frame_rate_hz = frame_rate_hz
        self.clock = clock
        self._now_ns: Callable[[], int] = clock_reader(clock)
        self.reconnect_initial_s = min(reconnect_initial_s, reconnect_max_backoff_s)
        self.reconnect_max_backoff_s = reconnect_max_backoff_s
        #: Consecutive failed reconnection attempts after which read_frame() raises (None: never).
        self.max_reconnect_attempts = max_reconnect_attempts
        #: Consecutive dropped frames after which read_frame() raises the last one's error (None:
        #: never). A fault that every sweep repeats (the VNA returning NaN, a wrong point count) leaves
        #: the reconnections succeeding, so without this read_frame() would drop frames forever.
        self.max_dropped_frames = max_dropped_frames
        self._dropped_in_a_row = 0
        self.pipelined = pipelined
        self.step = step
        #: Hardware steps the armed controller should have counted (step = "trigger").
        self._steps_expected = 0
        self.stats = RadarStats()
        #: Monotonic time of the last frame, dropped frame or (re)connection attempt: the run loop's
        #: watchdog tells an outage being retried (this keeps moving) from a hung driver call.
        self.last_activity_ns = time.monotonic_ns()
        self._pairs = [(int(t), int(r)) for t, r in np.asarray(geometry.pairs).reshape(-1, 2)]
        self._seq = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        #: Held while the controller is armed, so that cancel() returns only once no ARM is in flight.
        self._arming = threading.Lock()
        self._next_start_ns: int | None = None
        self._ever_connected = False
        self._prepared = False

    @classmethod
    def from_config(
        cls,
        config: RadarConfig | EdgeConfig,
        *,
        geometry: ArrayGeometry | None = None,
        backend: str = "@py",
        data_format: DataFormat = "real32",
        byte_order: ByteOrder | None = None,
        **kwargs: object,
    ) -> RadarSource:
        """Build the source from `[radar]` of the edge config (the whole config is accepted too)."""
        radar = config.radar if isinstance(config, EdgeConfig) else config
        return cls(
            VnaDriver.from_config(radar, backend=backend, data_format=data_format, byte_order=byte_order),
            SwitchClient.from_config(radar.switch),
            geometry or load_geometry(radar.array),
            frame_rate_hz=radar.frame_rate_hz,
            reconnect_max_backoff_s=radar.vna.reconnect_max_backoff_s,
            step=radar.switch.step,
            **kwargs,  # type: ignore[arg-type]
        )

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Both instruments connected *by this source* (so the switch holds our sequence)."""
        return self._prepared and self.vna.connected and self.switch.connected

    def open(self) -> None:
        """Connect both instruments once; raise at once on failure (fail fast at start-up)."""
        if self._closed.is_set():
            raise RuntimeError("this RadarSource was closed; create a new one")
        with self._lock:
            self._connect_once()

    def close(self) -> None:
        """Stop for good: interrupts a reconnection wait; a frame in progress finishes or fails first."""
        self._closed.set()
        if self._lock.acquire(timeout=30.0):
            try:
                self.vna.close()
                self.switch.close()
            finally:
                self._lock.release()

    def cancel(self) -> None:
        """Stop for good from another thread without waiting for the frame in progress, which
        `close()` does (up to 30 s). For an owner that gave up on a reader stuck in a driver call:
        once the call returns, the reader neither reconnects nor arms the controller, and
        `read_frame()` returns None. Returns once no arming is in flight, so a DISARM the caller
        sends next lands after any ARM of this source. The reader's thread still closes the source.
        """
        self._closed.set()
        # An ARM in flight ends within the controller's timeout; a little more sees it through.
        wait_s = getattr(self.switch, "timeout_ms", 1000) / 1e3 + 1.0
        if self._arming.acquire(timeout=wait_s):
            self._arming.release()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> RadarSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect_once(self) -> None:
        self._prepared = False
        self._refuse_if_closed()
        try:
            self.switch.connect()
            self.switch.prepare(np.asarray(self._pairs))
            self.vna.connect()
            if self.step == "trigger":
                # Armed last: the VNA's setup holds its sweep, so no stray pulse steps the switch.
                with self._arming:
                    # cancel() may have come while connecting: its caller may have disarmed already.
                    self._refuse_if_closed()
                    self._check_pair(0, self.switch.arm())
                self._steps_expected = 0
        except BaseException:
            self.vna.close()
            self.switch.close()
            raise
        self._prepared = True
        self._ever_connected = True

    def _refuse_if_closed(self) -> None:
        """A (re)connection after close() or cancel() would act on instruments the owner let go of."""
        if self._closed.is_set():
            raise RadarError(self.switch.device, None, "the radar source was closed; not connecting")

    def _reconnect(self) -> None:
        """Reconnect both instruments with backoff; setup errors and close() end it by raising."""
        self.vna.close()
        self.switch.close()

        def note(exc: BaseException, delay: float) -> None:
            self.last_activity_ns = time.monotonic_ns()
            self.stats.last_error = str(exc)
            log.warning("radar reconnect failed (%s); next attempt in %.2f s", exc, delay)

        retry_with_backoff(
            self._connect_once,
            Backoff(self.reconnect_initial_s, self.reconnect_max_backoff_s),
            retry_on=(RadarError,),
            give_up_on=(RadarSetupError,),
            max_attempts=self.max_reconnect_attempts,
            stop=self._closed,
            on_failure=note,
        )

    # --- acquisition --------------------------------------------------------------------------

    def read_frame(self) -> RadarFrame | None:
        """Acquire the next frame now; None once the source is closed.

        Blocks through reconnections. Raises RadarSetupError for configurations that cannot work, the
        last RadarError after `max_reconnect_attempts` consecutive failed reconnections, and the last
        frame's RadarError after `max_dropped_frames` consecutive dropped frames.
        """
        with self._lock:
            while not self._closed.is_set():
                if not self.connected:
                    # Connecting for the first time is not a *re*connection.
                    is_reconnect = self._ever_connected
                    try:
                        self._reconnect()
                    except RadarSetupError:
                        raise
                    except RadarError:
                        if self._closed.is_set():
                            return None
                        raise
                    self.last_activity_ns = time.monotonic_ns()
                    if is_reconnect:
                        self.stats.reconnects += 1
                seq = self._seq
                self._seq += 1
                t_ns = self._now_ns()
                try:
                    s21 = self._acquire()
                except RadarSetupError:
                    raise
                except RadarError as exc:
                    self.last_activity_ns = time.monotonic_ns()
                    self.stats.drops += 1
                    self.stats.last_error = str(exc)
                    log.warning("radar frame %d dropped: %s", seq, exc)
                    self.vna.close()
                    self.switch.close()
                    self._dropped_in_a_row += 1
                    if (
                        self.max_dropped_frames is not None
                        and self._dropped_in_a_row >= self.max_dropped_frames
                    ):
                        self._dropped_in_a_row = 0
                        raise
                    continue
                self._dropped_in_a_row = 0
                self.stats.frames += 1
                self.last_activity_ns = time.monotonic_ns()
                return RadarFrame(seq=seq, t_ns=t_ns, clock=self.clock, s21=s21)
            return None

    def read_paced_frame(self) -> RadarFrame | None:
        """The next frame, started no sooner than frame_rate_hz allows (a late one starts at once);
        None once the source is closed.

        The engine was trained on windows of T frames at the config's rate: a VNA that sweeps faster
        must not shorten the time an RF window spans, so the live pipeline reads through this.
        """
        period_ns = int(1e9 / self.frame_rate_hz) if self.frame_rate_hz else 0
        if self._closed.is_set():
            return None
        if period_ns and self._next_start_ns is not None:
            wait_ns = self._next_start_ns - self._now_ns()
            if wait_ns > 0 and self._closed.wait(wait_ns / 1e9):
                return None
        frame = self.read_frame()
        if frame is not None and period_ns:
            planned = self._next_start_ns
            # Keep the grid while on time; after an overrun (or a reconnection) re-anchor it at the
            # frame's real start instead of bursting frames to catch up.
            late = planned is None or frame.t_ns > planned + period_ns // 2
            self._next_start_ns = (frame.t_ns if late else planned) + period_ns
        return frame

    def frames(self) -> Iterator[RadarFrame]:
        """Frames until close(), paced as `read_paced_frame`."""
        while (frame := self.read_paced_frame()) is not None:
            yield frame

    def _acquire(self) -> np.ndarray:
        """One frame: (channels, points) complex64 in switching order."""
        if self.step == "trigger":
            return self._acquire_hardware_stepped()
        if not self.pipelined:
            return self._acquire_sequential()
        if self.vna.can_pipeline:
            return self._acquire_overlapped()
        return self._acquire_switch_during_read()

    def _acquire_sequential(self) -> np.ndarray:
        """Switch, sweep, read, one after the other: three round trips per channel, for reference."""
        vna, switch = self.vna, self.switch
        out = np.empty((len(self._pairs), vna.sweep.points), dtype=np.complex64)
        for k in range(len(self._pairs)):
            self._check_pair(k, switch.next())
            vna.sweep_once()
            out[k] = vna.read_s21()
        return out

    def _acquire_switch_during_read(self) -> np.ndarray:
        """Any VISA transport: after each sweep, move the switch while reading that sweep's trace."""
        vna, switch = self.vna, self.switch
        n = len(self._pairs)
        out = np.empty((n, vna.sweep.points), dtype=np.complex64)
        self._check_pair(0, switch.next())
        for k in range(n):
            vna.sweep_once()
            more = k + 1 < n
            if more:
                switch.send_next()
            out[k] = vna.read_s21()
            if more:
                self._check_pair(k + 1, switch.receive_next())
        return out

    def _acquire_overlapped(self) -> np.ndarray:
        """Raw-socket VNA: also overlap each trace's transfer and parsing with the next sweep.

        Per channel the gap between sweeps is then the sweep-complete reply, one switch round trip
        and the trigger; the data query is answered (in stream order) before the next sweep starts.
        """
        vna, switch = self.vna, self.switch
        n = len(self._pairs)
        out = np.empty((n, vna.sweep.points), dtype=np.complex64)
        self._check_pair(0, switch.next())
        vna.trigger()
        for k in range(n):
            vna.wait_for_sweep()
            more = k + 1 < n
            if more:
                switch.send_next()
            vna.request_s21()
            if more:
                self._check_pair(k + 1, switch.receive_next())
                vna.trigger()
            out[k] = vna.receive_s21()
        return out

    def _acquire_hardware_stepped(self) -> np.ndarray:
        """The controller steps on each sweep-end pulse: per channel only the VNA is talked to.

        Over a raw socket the sweeps are chained inside the instrument (`VnaDriver.acquire_chained`):
        no network round trip separates two sweeps, and each trace is read during the next sweep.
        Once per frame the controller's step count is checked against the sweeps, so a loose
        trigger cable costs one frame, never a mislabelled one.
        """
        vna, n = self.vna, len(self._pairs)
        if vna.can_pipeline and self.pipelined:
            out = vna.acquire_chained(n)
        else:
            out = np.empty((n, vna.sweep.points), dtype=np.complex64)
            for k in range(n):
                vna.sweep_once()
                out[k] = vna.read_s21()
        self._steps_expected += n
        position, steps = self.switch.position()
        if (position, steps) != (0, self._steps_expected):
            self.switch.close()
            raise SwitchProtocolError(
                self.switch.device, "POS?",
                f"controller at position {position} after {steps} hardware steps, expected 0 after "
                f"{self._steps_expected}: it missed or doubled trigger pulses; check the cable from the "
                "VNA's trigger output to the controller's STEP IN (frame dropped, switch re-armed)",
            )  # fmt: skip
        return out

    def _check_pair(self, channel: int, got: tuple[int, int]) -> None:
        want = self._pairs[channel]
        if got != want:
            self.switch.close()
            raise SwitchProtocolError(
                self.switch.device, "NEXT",
                f"controller selected {got} for channel {channel}, expected {want}: sequence out of step",
            )  # fmt: skip
