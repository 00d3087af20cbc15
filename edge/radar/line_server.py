"""The TCP lifecycle both simulated instruments share: listen, bound the clients, drop them all on close.

Each instrument only says how it answers one connection's lines (`_serve_lines`); accepting,
counting, refusing past `max_clients` and the "switched off" behaviour of `close()` live here once.
"""

from __future__ import annotations

import asyncio

from vrclip.edge.errors import UserError


class LineServer:
    #: How errors name the instrument this server plays.
    label = "simulated instrument"

    def __init__(self, *, max_clients: int) -> None:
        self.max_clients = max_clients
        self._clients = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (useful with port 0).

        A port already taken (another simulator still running) or a host that does not resolve is a
        UserError naming the address: it is a usage mistake, not a fault to print a traceback for.
        """
        try:
            self._server = await asyncio.start_server(self._serve_client, host, port)
        except OSError as exc:
            raise UserError(
                f"the {self.label} cannot listen on {host}:{port} ({exc.strerror or exc}); stop what "
                "holds that port or choose another (port 0 picks a free one)"
            ) from None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every client, as an instrument does when switched off."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= self.max_clients:
            writer.close()
            return
        self._clients += 1
        self._writers.add(writer)
        try:
            await self._serve_lines(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients -= 1
            self._writers.discard(writer)
            writer.close()

    async def _serve_lines(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
