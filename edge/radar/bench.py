"""Acquisition benchmark: how close does one 144-channel frame get to 144 x the sweep time?

The sweeps themselves cannot be made faster by software; everything on top of them (switch round
trips, trigger and completion messages, data transfer and parsing) is acquisition overhead, and this
measures it end to end through the real driver, the real switch client and the simulators over TCP.

The simulator runs in its own process by default, as an instrument would: in the same process its
event loop would compete with the acquisition loop for the GIL and inflate the overhead.

Two ways to step the switch (radar.switch.step). "command": a NEXT round trip per channel, so per
channel the sweep-complete reply, a switch round trip and the next trigger separate two sweeps;
those do not shrink with the sweep time. "trigger" (the default here): the VNA's sweep-end pulse
steps the switch through a cable and the driver chains the sweeps inside the instrument
(`VnaDriver.acquire_chained`), so only the instrument's own command handling separates them.

The simulator runs in its own process and, by default, busy-polls instead of sleeping between
messages (`BusyPollSelector`): an instrument is always awake, and a sleeping Python process would
add the kernel's wake-up latency to every message and have it counted as driver overhead. On a
loaded machine the wake-up latency of normal-priority processes (a scheduler slice, milliseconds)
adds to every round trip; `realtime=True` runs the bench and the simulator under SCHED_FIFO, as
an acquisition service can be run, to measure the software rather than the neighbours.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vrclip.edge.config import SweepConfig
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.dialects import DataFormat
from vrclip.edge.radar.sim_process import SimulatorProcess
from vrclip.edge.radar.sim_vna import DEFAULT_SETTLE_PER_POINT_S
from vrclip.edge.radar.simulated import SimulatedRadar
from vrclip.edge.radar.source import RadarSource
from vrclip.edge.radar.switch import SwitchClient
from vrclip.edge.radar.vna import VnaDriver
from vrclip.edge.sim.scene import SceneSpec

#: SCHED_FIFO priority for --realtime: above normal tasks, well below kernel threads (50) and watchdogs.
_REALTIME_PRIORITY = 10


@dataclass(frozen=True)
class BenchResult:
    channels: int
    points: int
    sweep_time_s: float
    frame_times_s: tuple[float, ...]
    pipelined: bool
    simulator: str
    step: str = "command"

    @property
    def ideal_s(self) -> float:
        """Pure sweep time of one frame: channels x sweep time."""
        return self.channels * self.sweep_time_s

    @property
    def median_s(self) -> float:
        return statistics.median(self.frame_times_s)

    @property
    def best_s(self) -> float:
        return min(self.frame_times_s)

    @property
    def overhead_pct(self) -> float:
        """Median frame time over the ideal, in percent above it."""
        return 100.0 * (self.median_s / self.ideal_s - 1.0)

    @property
    def best_overhead_pct(self) -> float:
        return 100.0 * (self.best_s / self.ideal_s - 1.0)

    @property
    def per_channel_overhead_s(self) -> float:
        """Median time per channel beyond the sweep: the number that does not depend on sweep time."""
        return (self.median_s - self.ideal_s) / self.channels


def bench_acquisition(
    *,
    points: int = 201,
    sweep_time_s: float | None = 1e-3,
    if_bandwidth_hz: float = 100e3,
    frames: int = 5,
    dialect: str = "keysight",
    data_format: DataFormat = "real32",
    pipelined: bool = True,
    separate_process: bool = True,
    people: tuple[str, ...] = ("person-00",),
    realtime: bool = False,
    step: str = "command",
    busy_poll: bool = False,
) -> BenchResult:
    """Acquire one warm-up frame and then `frames` timed frames; return their durations.

    step = "trigger" wires the simulated VNA's trigger output to the switch's step input
    (radar.switch.step = "trigger"); "command" steps it with a NEXT round trip per channel.
    busy_poll makes the separate simulator process poll instead of sleep (see BusyPollSelector).
    """
    if frames < 1:
        raise UserError(f"--frames {frames}: need at least 1 frame")
    with _realtime_priority(realtime):
        return _bench(points, sweep_time_s, if_bandwidth_hz, frames, dialect, data_format, pipelined,
                      separate_process, people, realtime, step, busy_poll)  # fmt: skip


@contextlib.contextmanager
def _realtime_priority(enabled: bool) -> Iterator[None]:
    """SCHED_FIFO for this process (and the simulator it starts, which inherits it), then restore."""
    if not enabled:
        yield
        return
    if not hasattr(os, "sched_setscheduler"):
        raise UserError("--realtime needs Linux (sched_setscheduler)")
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_REALTIME_PRIORITY))
    except PermissionError:
        raise UserError("--realtime needs root or CAP_SYS_NICE (SCHED_FIFO was refused)") from None
    try:
        yield
    finally:
        os.sched_setscheduler(0, policy, param)


def _bench(
    points: int,
    sweep_time_s: float | None,
    if_bandwidth_hz: float,
    frames: int,
    dialect: str,
    data_format: DataFormat,
    pipelined: bool,
    separate_process: bool,
    people: tuple[str, ...],
    realtime: bool,
    step: str,
    busy_poll: bool,
) -> BenchResult:
    sweep = SweepConfig(start_hz=0.8e9, stop_hz=2.8e9, points=points, if_bandwidth_hz=if_bandwidth_hz)
    effective = (
        sweep_time_s
        if sweep_time_s is not None
        else points / if_bandwidth_hz + points * DEFAULT_SETTLE_PER_POINT_S
    )
    geometry = load_geometry()
    spec = SceneSpec(people=people)
    server: SimulatorProcess | SimulatedRadar
    if separate_process:
        server = SimulatorProcess(
            spec, sweep, dialect=dialect, sweep_time_s=sweep_time_s, busy_poll=busy_poll
        )
        where = "separate process" + (", busy-polling" if busy_poll else "")
    else:
        server = SimulatedRadar(scene_spec=spec, sweep=sweep, dialect=dialect, sweep_time_s=sweep_time_s)
        where = "same process (background thread)"
    with server:
        vna = VnaDriver(
            server.vna_resource, dialect, sweep, data_format=data_format, trigger_output=step == "trigger"
        )
        times = _run(vna, SwitchClient(server.switch_url), geometry, pipelined, frames, step)
    if realtime:
        where += ", SCHED_FIFO"
    return BenchResult(geometry.n_channels, points, effective, tuple(times), pipelined, where, step)


def _run(
    vna: VnaDriver, switch: SwitchClient, geometry: Any, pipelined: bool, frames: int, step: str
) -> list[float]:
    source = RadarSource(vna, switch, geometry, pipelined=pipelined, max_reconnect_attempts=3, step=step)
    times = []
    with source:
        source.read_frame()  # warm-up: first-use costs are not acquisition overhead
        for _ in range(frames):
            t0 = time.perf_counter()
            frame = source.read_frame()
            times.append(time.perf_counter() - t0)
            if frame is None:
                raise UserError("the radar source closed during the benchmark")
    if source.stats.drops:
        raise UserError(
            f"{source.stats.drops} frame(s) dropped during the benchmark: {source.stats.last_error}"
        )
    return times
