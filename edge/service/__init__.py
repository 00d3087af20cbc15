"""Running under systemd: readiness and watchdog notifications, graceful stop, and installation.

`notify` speaks the sd_notify datagram protocol (no libsystemd), `watchdog` pings only while the
pipeline makes progress, `shutdown` turns SIGTERM/SIGINT into a flag the run loop polls, and
`install` writes the unit, its service account and a default config (`vrclip-edge install-service`).
"""

from vrclip.edge.service.notify import Notifier, watchdog_interval_s
from vrclip.edge.service.shutdown import ShutdownFlag
from vrclip.edge.service.watchdog import WatchdogPinger

__all__ = ["Notifier", "ShutdownFlag", "WatchdogPinger", "watchdog_interval_s"]
