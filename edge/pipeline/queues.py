"""A bounded queue that drops the *oldest* item when full, and counts what it drops.

A live pipeline wants the newest sensor data: when processing falls behind, blocking the
capture thread would stall the instrument and queueing everything would grow memory without
bound, so the oldest frame is discarded and the drop is counted for the status line.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._cond = threading.Condition()
        self.put_count = 0
        self.dropped = 0
        self._closed = False

    def put(self, item: T) -> T | None:
        """Queue `item`; returns the oldest item it pushed out (None if there was room, or the queue
        is closed). A queue that several producers share must charge a drop to whose item was
        dropped, not to whose put caused it."""
        with self._cond:
            if self._closed:
                return None
            evicted = None
            if len(self._items) >= self._maxsize:
                evicted = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()
            return evicted

    def put_wait(self, item: T, timeout: float) -> bool:
        """Offline use (replaying a file as fast as possible): wait for room instead of dropping.

        Returns False if there was still no room after `timeout` (the caller retries or gives up).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) < self._maxsize or self._closed, timeout):
                return False
            if self._closed:
                return True
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Oldest item, waiting up to `timeout`; None on timeout or when closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()  # room for a waiting put_wait
            return item

    def drain(self) -> list[T]:
        """Everything queued now, oldest first, without waiting."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
