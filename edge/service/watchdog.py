"""Tie systemd's watchdog to the pipeline's progress, not merely to the process being alive.

A thread that pings WATCHDOG=1 on a timer would keep a deadlocked pipeline "healthy" for ever. Here
the pipeline calls `heartbeat()` on every turn of its run loop (an integer increment): after each
processed frame, and also on each short wait in which no radar frame came while the radar capture
still shows signs of life (a sensor that is down is reopened by its capture thread while the loop
goes on; restarting the service would not bring it back sooner). A radar read that hangs shows none,
and after the runner's `radar_stall_s` the heartbeats stop. The pinger thread sends WATCHDOG=1
every WatchdogSec/2 only if at least one heartbeat happened since its previous ping. A stalled
pipeline (a step stuck in a deadlock or on a GPU that stopped answering) therefore stops the pings,
and systemd kills and restarts the service after WatchdogSec.

READY=1 is sent on the first heartbeat: "started" means a frame went through the whole pipeline,
not that Python imported its modules; until then systemd's start timeout applies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from vrclip.edge.service.notify import Notifier, watchdog_interval_s

log = logging.getLogger(__name__)


class WatchdogPinger:
    """Heartbeat-gated WATCHDOG=1 pings (plus READY=1 on the first heartbeat).

    `interval_s` defaults to WatchdogSec/2 from $WATCHDOG_USEC; None (no watchdog configured) keeps
    the thread off while heartbeats still trigger READY=1. `status` (e.g. Health.status_line) is sent
    as STATUS= with each ping, so `systemctl status` shows live figures.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        interval_s: float | None = None,
        status: Callable[[], str] | None = None,
        ready_status: str = "running",
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        if self.interval_s is not None and self.interval_s <= 0:
            raise ValueError(f"watchdog interval must be positive, got {self.interval_s}")
        self._status = status
        self._ready_status = ready_status
        self._beats = 0
        self._seen = 0
        self.ready = False
        self.pings = 0
        self.skipped = 0
        self._last_ping = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def heartbeat(self) -> None:
        """Called by the pipeline on every turn of its loop once frames flow. Cheap: no lock, no I/O
        after the first (which sends READY=1, so the pipeline makes it after its first frame)."""
        self._beats += 1
        if not self.ready:
            self.ready = True
            self.notifier.ready(self._ready_status)
            self._last_ping = time.monotonic()

    @property
    def beats(self) -> int:
        return self._beats

    def tick(self) -> bool:
        """One check: ping if the pipeline advanced since the last ping. True if it pinged."""
        beats = self._beats
        if not self.ready or beats == self._seen:
            if self.ready:
                self.skipped += 1
                if self.skipped == 1 or self.skipped % 10 == 0:
                    stalled = time.monotonic() - self._last_ping
                    log.warning("pipeline made no progress for %.1f s: not pinging the watchdog", stalled)
            return False
        self._seen = beats
        status = None
        if self._status is not None:
            try:
                status = self._status()
            except Exception as exc:  # a status bug must not cost the ping
                status = f"status unavailable: {exc}"
        self.notifier.watchdog(status)
        self.pings += 1
        self.skipped = 0
        self._last_ping = time.monotonic()
        return True

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            self.tick()

    def start(self) -> WatchdogPinger:
        if self.interval_s is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="watchdog-pinger", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WatchdogPinger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
