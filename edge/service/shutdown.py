"""Graceful stop on SIGTERM/SIGINT: set a flag the run loop polls, and tell systemd STOPPING=1.

Why a flag rather than raising in the signal handler: an exception can land anywhere, in the middle
of writing an HDF5 chunk or a gallery transaction; a flag is checked by the run loop between frames,
where closing sensors, flushing the recording and draining the MQTT outbox is safe. A second SIGINT
(Ctrl-C twice at a terminal) raises KeyboardInterrupt for someone who cannot wait; systemd sends
SIGTERM once and SIGKILL after TimeoutStopSec, which bounds a stop that hangs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

from vrclip.edge.service.notify import Notifier


class ShutdownFlag:
    """Install in the main thread; poll `is_set()` (or `wait()`) in the run loop."""

    def __init__(
        self,
        notifier: Notifier | None = None,
        signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    ) -> None:
        self.notifier = notifier
        self.signals = tuple(signals)
        self.reason: str | None = None
        self._event = threading.Event()
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> ShutdownFlag:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("ShutdownFlag.install() must run in the main thread (signal handlers)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        """Ask the run loop to stop (signals call this; so can a fatal error elsewhere)."""
        if self._event.is_set():
            return
        self.reason = reason
        self._event.set()
        if self.notifier is not None:
            self.notifier.stopping(f"stopping ({reason})")

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to `timeout` or until a stop is requested; True if it was (use instead of sleep)."""
        return self._event.wait(timeout)

    def __enter__(self) -> ShutdownFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
