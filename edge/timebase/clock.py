"""Named clocks and a precise "sleep until this instant".

Every timestamp on the rig travels with the name of the clock it was read on, so a start target read on
one clock is never compared against another. The start protocol needs a sleep that wakes *at* an
absolute instant, not *after* a duration: a plain ``time.sleep`` overshoots by the scheduler's timer
slack and wake-up latency (often 0.1-1 ms, worse under load), so we sleep coarsely until shortly before
the target and then busy-wait the last stretch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from vrclip.edge.errors import UserError
from vrclip.edge.frames import CLOCK_REALTIME

#: Name of the monotonic clock: never steps, but its epoch is per machine (boot), so it only works for
#: devices that share one host (loopback tests, several processes on one edge box).
CLOCK_MONOTONIC = "CLOCK_MONOTONIC"

#: Clock name -> reader returning integer nanoseconds. CLOCK_REALTIME is the NTP/PTP-disciplined wall
#: clock that all sensors of the rig share.
_CLOCKS: dict[str, Callable[[], int]] = {
    CLOCK_REALTIME: time.time_ns,
    CLOCK_MONOTONIC: time.monotonic_ns,
}

#: Default length of the final busy-wait before a target. 2 ms covers the usual wake-up latency of a
#: loaded Linux box while keeping the CPU burn per start negligible.
DEFAULT_SPIN_NS = 2_000_000

#: Longest single coarse sleep. Sleeping in bounded chunks means a wall-clock step (NTP slew/step, PTP
#: correction) during a long lead is noticed within this time instead of at the end of one long sleep.
_MAX_COARSE_SLEEP_S = 0.25


def _sleep0() -> None:
    time.sleep(0)


#: Give up the CPU and the GIL for as short a time as the platform allows (see sleep_until_ns).
_yield: Callable[[], None] = getattr(os, "sched_yield", _sleep0)


def known_clocks() -> tuple[str, ...]:
    """The clock names this module can read, in a stable order (for messages and validation)."""
    return tuple(_CLOCKS)


def clock_reader(clock: str) -> Callable[[], int]:
    """Return the nanosecond reader for ``clock``; raise UserError naming it if the name is unknown."""
    try:
        return _CLOCKS[clock]
    except (KeyError, TypeError):
        raise UserError(f"unknown clock {clock!r}: known clocks are {', '.join(known_clocks())}") from None


def now_ns(clock: str = CLOCK_REALTIME) -> int:
    """Current time on the named clock, in integer nanoseconds."""
    return clock_reader(clock)()


def sleep_until_ns(target_ns: int, clock: str = CLOCK_REALTIME, *, spin_ns: int = DEFAULT_SPIN_NS) -> int:
    """Block until ``clock`` reads at least ``target_ns``; return the clock reading at wake-up.

    The returned value is the actual start instant (never earlier than the target). Coarse sleeps stop
    ``spin_ns`` before the target; the rest is a busy-wait that yields on each turn. The yield releases
    the GIL, so several threads of one process waiting for the same instant (the loopback bench, a
    process driving several sensors) do not starve each other for a whole GIL switch interval (5 ms)
    while spinning. ``os.sched_yield`` costs about 1 µs; ``time.sleep(0)`` (the fallback where there is
    no sched_yield) costs ~80 µs on Linux because of timer slack, which would eat the precision.
    """
    if isinstance(target_ns, bool) or not isinstance(target_ns, int):
        raise UserError(f"target_ns must be an integer number of nanoseconds, got {target_ns!r}")
    if spin_ns < 0:
        raise UserError(f"spin_ns must be >= 0, got {spin_ns}")
    read = clock_reader(clock)
    while True:
        now = read()
        remaining = target_ns - now
        if remaining <= 0:
            return now
        if remaining > spin_ns:
            time.sleep(min((remaining - spin_ns) / 1e9, _MAX_COARSE_SLEEP_S))
        else:
            _yield()
