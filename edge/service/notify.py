"""sd_notify(3) without libsystemd: tell systemd we are ready, alive, busy, or stopping.

The protocol is one datagram of newline-separated `KEY=value` lines sent to the AF_UNIX socket named
in $NOTIFY_SOCKET; a name starting with '@' is in the abstract namespace (a leading NUL byte). That is
all libsystemd does for sd_notify, so a few lines of socket code spare the edge box a C dependency
and keep the runtime importable where systemd is absent (development machines, containers): with no
$NOTIFY_SOCKET every call is a cheap no-op.

Sends never block (MSG_DONTWAIT) and never raise: a lost notification is counted, while a pipeline
stalled on a full socket would be the very failure the watchdog is there to catch.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: STATUS= text longer than this is cut (it is one line in `systemctl status`).
MAX_STATUS_CHARS = 1000


def socket_address(value: str | None) -> str | bytes | None:
    """$NOTIFY_SOCKET -> an address for sendto(); None if unset or not a unix socket we can use."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace (Linux)
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (systemd >= 254 for VMs): not for an edge box


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of WatchdogSec (sd_watchdog_enabled's advice), from $WATCHDOG_USEC; None if not for us."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # set for another process (our parent); inherited by accident
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2e6 if value > 0 else None


def _clean(text: str) -> str:
    text = " ".join(str(text).split())  # a newline would start a new KEY=value line
    return text[:MAX_STATUS_CHARS]


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET (or an explicit socket name, for tests)."""

    def __init__(self, socket_name: str | None = None, *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        name = socket_name if socket_name is not None else env.get("NOTIFY_SOCKET")
        self.socket_name = name
        self.address = socket_address(name)
        if name and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; systemd notifications are off", name)
        self._sock: socket.socket | None = None
        self.sent = 0
        self.errors = 0
        self.last_error = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; True if it left, False if disabled or it failed."""
        for field in fields:  # checked even when disabled, so a bad field shows up in development
            key, sep, _ = field.partition("=")
            if not sep or not key or "\n" in field:
                raise ValueError(f"sd_notify field must be one KEY=value line, got {field!r}")
        if self.address is None:
            return False
        payload = "\n".join(fields).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("sd_notify to %s failed (%d so far): %s", self.socket_name, self.errors, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_clean(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_clean(text)}")

    def watchdog(self, status: str | None = None) -> bool:
        return self.send("WATCHDOG=1", *([f"STATUS={_clean(status)}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_clean(status)}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up (or stop) time, e.g. while a large engine loads."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(int(seconds * 1e6), 0)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
