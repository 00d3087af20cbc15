"""Is the service already running on this box? Commands that open the rig's sensors ask first.

The VNA, the switch controller and the cameras take one owner at a time. A command that opens them
while `vrclip-edge.service` holds them failed with whatever the first driver said (a refused VISA
connection, a camera OpenCV could not open), which reads like broken hardware. The running service
answers on its control socket, so the command can say what is really the matter, and what to do.
"""

from __future__ import annotations

import contextlib
import socket

from vrclip.edge.errors import UserError

#: How long to wait for the connection (a service whose listen backlog is full keeps it waiting).
CONNECT_TIMEOUT_S = 2.0


def something_listens(control_socket: str) -> bool:
    """Whether a live process listens on the Unix socket at `control_socket`.

    Whether something listens is the test, not whether it answers a ping: a service with all its
    control connections taken answers 'busy', and one whose control thread hangs answers nothing,
    and both still hold the sensors. A socket file a dead service left behind refuses the connection.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(CONNECT_TIMEOUT_S)
    try:
        try:
            probe.connect(control_socket)
        except (TimeoutError, BlockingIOError):
            return True  # a listener whose backlog is full (a Unix socket says EAGAIN)
        except OSError:
            return False  # absent, refused (stale), or not ours to open
        # A well-formed request, so the service does not log a broken request for the probe.
        with contextlib.suppress(OSError):
            probe.sendall(b'{"op": "ping"}\n')
            probe.recv(4096)
        return True
    finally:
        probe.close()


def running_service(control_socket: str) -> str | None:
    """A sentence saying the service runs and holds the sensors, or None when nothing listens on its
    control socket (then the sensors' own errors will say what is wrong)."""
    if not control_socket or not something_listens(control_socket):
        return None
    return (
        f"vrclip-edge is running (it answers on {control_socket}) and holds the rig's sensors; "
        "stop it first (systemctl stop vrclip-edge.service)"
    )


def refuse_if_service_runs(control_socket: str, alternative: str = "") -> None:
    """Raise UserError when the service holds the sensors; `alternative` says what else to do."""
    message = running_service(control_socket)
    if message is not None:
        raise UserError(message + (f", or {alternative}" if alternative else ""))


__all__ = ["refuse_if_service_runs", "running_service", "something_listens"]
