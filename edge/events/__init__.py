"""What the running edge box reports: identity events, where they go, and how healthy it is.

`event` is the IdentityEvent contract, `sinks` delivers events (JSON-lines file, stdout, MQTT),
`health` counts frames, latencies and modality states, and `http` serves /status and /metrics.
"""

from vrclip.edge.events.event import UNKNOWN, IdentityEvent, LiveModalities, iso_utc
from vrclip.edge.events.health import Health, LatencyWindow, ModalityState
from vrclip.edge.events.http import HealthServer
from vrclip.edge.events.sinks import EventSinks, MqttSink, RotatingJsonlSink, StdoutSink, build_sinks

__all__ = [
    "UNKNOWN",
    "EventSinks",
    "Health",
    "HealthServer",
    "IdentityEvent",
    "LatencyWindow",
    "LiveModalities",
    "ModalityState",
    "MqttSink",
    "RotatingJsonlSink",
    "StdoutSink",
    "build_sinks",
    "iso_utc",
]
