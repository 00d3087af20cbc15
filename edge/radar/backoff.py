"""Exponential backoff between reconnection attempts.

Why exponential with a cap: a VNA that reboots takes tens of seconds; hammering it every 100 ms
floods its LAN stack and the log, while waiting the cap from the first failure would lose frames after
a one-off glitch. Doubling from a short first delay recovers fast from glitches and backs off from
long outages; the cap (config `radar.vna.reconnect_max_backoff_s`) bounds the wait after recovery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Backoff:
    """Delays initial, 2*initial, 4*initial, ... capped at `max_s`; `reset()` after a success."""

    def __init__(self, initial_s: float = 0.1, max_s: float = 30.0, factor: float = 2.0) -> None:
        if not (initial_s > 0 and max_s >= initial_s and factor >= 1.0):
            raise ValueError(
                f"backoff needs 0 < initial_s <= max_s and factor >= 1, got initial_s={initial_s}, "
                f"max_s={max_s}, factor={factor}"
            )
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self._next = initial_s

    def next_delay(self) -> float:
        """The delay to wait before the next attempt; each call doubles the following one."""
        delay = self._next
        self._next = min(self._next * self.factor, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


def retry_with_backoff(
    attempt: Callable[[], None],
    backoff: Backoff,
    *,
    retry_on: tuple[type[BaseException], ...],
    give_up_on: tuple[type[BaseException], ...] = (),
    max_attempts: int | None = None,
    stop: threading.Event | None = None,
    on_failure: Callable[[BaseException, float], None] | None = None,
) -> int:
    """Call `attempt` until it returns; return how many attempts it took.

    Exceptions in `give_up_on` propagate at once (a configuration that cannot work); exceptions in
    `retry_on` are followed by a backoff wait. After `max_attempts` failures the last error propagates.
    Setting `stop` ends the waiting early and re-raises the last error, so `close()` from another
    thread never waits a whole backoff period.
    """
    attempts = 0
    while True:
        attempts += 1
        try:
            attempt()
        except give_up_on:
            raise
        except retry_on as exc:
            if max_attempts is not None and attempts >= max_attempts:
                raise
            delay = backoff.next_delay()
            if on_failure is not None:
                on_failure(exc, delay)
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                time.sleep(delay)
            continue
        backoff.reset()
        return attempts
