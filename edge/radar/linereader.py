"""Bounded line reading for the simulators' asyncio servers.

asyncio's `StreamReader.readline` either grows its buffer up to the stream limit or leaves an
over-long line stuck in the buffer; a server that must survive a misbehaving peer needs to drop the
over-long line, tell the peer once, and carry on with the next line. That is all this does.
"""

from __future__ import annotations

import asyncio


class LineTooLong:
    """Marker returned (once per offending line) when a line exceeded the limit and was discarded."""

    def __init__(self, size: int) -> None:
        self.size = size


class BoundedLineReader:
    """Read `\\n`-terminated lines of at most `limit` bytes (terminator excluded) from a StreamReader."""

    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        self._reader = reader
        self._limit = limit
        self._buf = bytearray()
        self._discarded = 0

    async def readline(self) -> bytes | LineTooLong | None:
        """The next line without its terminator (a trailing '\\r' is kept); None at end of stream."""
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 1]
                if self._discarded or len(line) > self._limit:
                    size = self._discarded + len(line)
                    self._discarded = 0
                    return LineTooLong(size)
                return line
            if len(self._buf) > self._limit:
                self._discarded += len(self._buf)
                self._buf.clear()
            chunk = await self._reader.read(65536)
            if not chunk:
                return None
            self._buf += chunk
