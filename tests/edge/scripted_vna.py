"""A scripted raw-socket SCPI peer: each query gets a fixed reply, one no simulated VNA model gives.

The TCP simulator (vrclip.edge.radar.sim_vna) always answers read-backs with the setting it holds; to see
how the driver copes with a read-back of "NAN" or "21.5" a test needs an instrument that says exactly that.
Setting commands are accepted silently and `SYST:ERR?` answers "No error" unless the script says otherwise;
a query the script does not know gets no reply (the driver then times out). A message in `hang_up_on`
makes the peer send that entry's bytes (a partial reply, or nothing) and close the connection.
"""

from __future__ import annotations

import socketserver
import threading
from types import TracebackType

from vrclip.edge.config import SweepConfig

#: The replies of a healthy Keysight E5080B configured with `KEYSIGHT_SWEEP`.
KEYSIGHT_SWEEP = SweepConfig(start_hz=1e9, stop_hz=2e9, points=21, if_bandwidth_hz=1e6)
KEYSIGHT_REPLIES = {
    "*IDN?": "Keysight Technologies,E5080B,MY59100001,A.15.20.06",
    "SYST:ERR?": '+0,"No error"',
    "SENS1:SWE:POIN?": "21",
    "SENS1:FREQ:STAR?": "1.000000000000E+09",
    "SENS1:FREQ:STOP?": "2.000000000000E+09",
}


class ScriptedVna:
    """Serve `replies` (query -> reply, without the terminator) on 127.0.0.1 until closed.

    A reply is text (ASCII) or bytes (a binary block); `terminator` follows every one: b"\n" as
    IEEE 488.2 says, b"\r\n" as some instruments send, or anything a broken one might.
    """

    def __init__(self, replies: dict[str, str | bytes], terminator: bytes = b"\n") -> None:
        self.replies = dict(replies)
        self.terminator = terminator
        #: Every program message received, in order.
        self.received: list[str] = []
        #: message -> bytes sent before closing the connection on receiving it.
        self.hang_up_on: dict[str, bytes] = {}
        script = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for raw in self.rfile:
                    message = raw.decode("ascii", "replace").strip()
                    script.received.append(message)
                    if message in script.hang_up_on:
                        self.wfile.write(script.hang_up_on[message])
                        return  # the server closes the connection
                    reply = script.replies.get(message)
                    if reply is not None:
                        data = reply.encode("ascii") if isinstance(reply, str) else reply
                        self.wfile.write(data + script.terminator)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        # A short poll interval: close() waits for the serve loop to notice, 0.5 s by default per peer.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def resource(self) -> str:
        return f"TCPIP0::127.0.0.1::{self._server.server_address[1]}::SOCKET"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedVna:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
