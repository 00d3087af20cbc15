"""Time base of the rig: named clocks and the TCP start protocol that gives every device one start instant.

All sensors share one disciplined clock (NTP/PTP); a recording starts when the time server broadcasts a
target instant and each device sleeps until it on its own clock (see start_protocol for why).
"""

from vrclip.edge.timebase.clock import CLOCK_MONOTONIC, known_clocks, now_ns, sleep_until_ns
from vrclip.edge.timebase.start_protocol import (
    StartServer,
    StartSignal,
    parse_start_message,
    start_at,
    wait_for_start,
)

__all__ = [
    "CLOCK_MONOTONIC",
    "StartServer",
    "StartSignal",
    "known_clocks",
    "now_ns",
    "parse_start_message",
    "sleep_until_ns",
    "start_at",
    "wait_for_start",
]
