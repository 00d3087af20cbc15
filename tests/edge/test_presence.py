"""Commands that open the rig's sensors first ask whether the service holds them: whatever answers
on its control socket, even a refusal or nothing at all, is a service that is running."""

from __future__ import annotations

import socket
from pathlib import Path

from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.pipeline.live_enrolment import LiveEnrolment
from vrclip.edge.service import control
from vrclip.edge.service.control import ControlServer
from vrclip.edge.service.presence import running_service


def test_a_service_too_busy_to_answer_ping_still_holds_the_sensors(tmp_path: Path) -> None:
    """With MAX_CONNECTIONS clients connected the service answers 'busy' (ok: false): it runs."""
    sock = tmp_path / "control.sock"
    with GalleryStore(tmp_path / "g.sqlite") as store, ControlServer(sock, LiveEnrolment(store, 32)):
        assert running_service(str(sock)) is not None
        held = []
        try:
            for _ in range(control.MAX_CONNECTIONS):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(str(sock))
                held.append(client)
            assert "vrclip-edge is running" in (running_service(str(sock)) or "")
        finally:
            for client in held:
                client.close()


def test_a_service_that_does_not_answer_still_holds_the_sensors(tmp_path: Path) -> None:
    """A service whose control thread hangs still has its socket listening, and its sensors open."""
    path = tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    try:
        assert "vrclip-edge is running" in (running_service(str(path)) or "")
    finally:
        listener.close()


def test_a_socket_left_by_a_service_that_died_is_no_service(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: connecting is refused
    assert running_service(str(path)) is None
    assert running_service(str(tmp_path / "absent.sock")) is None
    assert running_service("") is None
