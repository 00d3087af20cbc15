"""Graceful stop on SIGTERM/SIGINT: set a flag the run loop polls, and tell systemd STOPPING=1.

Why a flag rather than raising in the signal handler: an exception can land anywhere, in the middle
of writing an HDF5 chunk or a gallery transaction; a flag is checked by the run loop between frames,
where closing sensors, flushing the recording and draining the MQTT outbox is safe. A second SIGINT
(Ctrl-C twice at a terminal) raises KeyboardInterrupt for someone who cannot wait; systemd sends
SIGTERM once and SIGKILL after TimeoutStopSec, which bounds a stop that hangs.

Why a pipe rather than a threading.Event: the handler runs in the main thread between two bytecodes,
possibly while that same thread is inside Event.wait() holding the Event's internal lock; Event.set()
from the handler then waits for a lock its own thread holds, and the process hangs for good (seen in
CI). The handler therefore takes no lock: it stores the reason and writes one byte to a non-blocking
pipe, and `wait()` sleeps in poll() on the pipe's other end, which that byte wakes at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import weakref
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
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        weakref.finalize(self, _close_fds, self._wake_read, self._wake_write)
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
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        """Ask the run loop to stop (signals call this; so can a fatal error elsewhere). Takes no lock."""
        if self.reason is not None:
            return
        self.reason = reason
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes every waiter
            os.write(self._wake_write, b"!")
        if self.notifier is not None:
            self.notifier.stopping(f"stopping ({reason})")

    def is_set(self) -> bool:
        return self.reason is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to `timeout` or until a stop is requested; True if it was (use instead of sleep).

        Any thread may wait; the wake-up byte is never read, so every waiter, present or future,
        sees the pipe readable once a stop was requested.
        """
        if self.reason is None:
            poller = select.poll()  # poll, not select: no FD_SETSIZE limit in a long-lived process
            poller.register(self._wake_read, select.POLLIN)
            poller.poll(None if timeout is None else max(timeout, 0.0) * 1000.0)
        return self.reason is not None

    def __enter__(self) -> ShutdownFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
