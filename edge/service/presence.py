"""Is the service already running on this box? Commands that open the rig's sensors ask first.

The VNA, the switch controller and the cameras take one owner at a time. A command that opens them
while `vrclip-edge.service` holds them failed with whatever the first driver said (a refused VISA
connection, a camera OpenCV could not open), which reads like broken hardware. The running service
answers on its control socket, so the command can say what is really the matter, and what to do.
"""

from __future__ import annotations

from vrclip.edge.errors import UserError


def running_service(control_socket: str) -> str | None:
    """A sentence saying the service runs and holds the sensors, or None when none answers."""
    from vrclip.edge.service.control import ping

    if not control_socket:
        return None
    try:
        reply = ping(control_socket, timeout_s=2.0)
    except UserError:
        return None
    if reply.get("ok") is not True:
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


__all__ = ["refuse_if_service_runs", "running_service"]
