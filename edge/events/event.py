"""IdentityEvent: what the edge box tells the world, once per track per matched frame.

The JSON form is a contract with integrators (MQTT subscribers, log shippers), so it is versioned,
flat, and carries both a nanosecond integer (exact, sortable) and an ISO-8601 UTC string (readable,
what dashboards parse). Non-finite numbers are refused at construction: `NaN` is not JSON and would
break a strict consumer far from here.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["MODALITIES", "UNKNOWN", "IdentityEvent", "LiveModalities", "iso_utc"]

from vrclip.edge.frames import CLOCK_REALTIME
from vrclip.edge.gallery.store import UNKNOWN

EVENT_TYPE = "identity"
EVENT_VERSION = 1
MODALITIES = ("radar", "camera", "depth")


def iso_utc(t_ns: int) -> str:
    """Nanosecond epoch time -> '2025-01-31T12:00:00.123456789Z' (datetime alone stops at microseconds)."""
    seconds, nanos = divmod(int(t_ns), 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


@dataclass(frozen=True)
class LiveModalities:
    """Which sensors contributed to this event (a dead camera at night is normal, and worth knowing)."""

    radar: bool
    camera: bool
    depth: bool

    def to_dict(self) -> dict[str, bool]:
        return {"radar": self.radar, "camera": self.camera, "depth": self.depth}


@dataclass(frozen=True)
class IdentityEvent:
    t_ns: int
    track_id: int
    identity: str
    score: float
    #: Floor position (x, y) in metres, room coordinates.
    position_m: tuple[float, float]
    #: The fusion gate's reliability of the RGB contribution, in [0, 2] (W = 2·exp(-β·d)).
    reliability: float
    modalities: LiveModalities
    clock: str = CLOCK_REALTIME

    def __post_init__(self) -> None:
        if not isinstance(self.t_ns, int) or self.t_ns < 0:
            raise ValueError(f"t_ns must be a non-negative integer, got {self.t_ns!r}")
        if not isinstance(self.identity, str) or not self.identity:
            raise ValueError("identity must be a non-empty string (use 'unknown' for no match)")
        numbers = {"score": self.score, "reliability": self.reliability}
        numbers.update({f"position_m[{i}]": v for i, v in enumerate(self.position_m)})
        for key, value in numbers.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"IdentityEvent.{key} must be a finite number, got {value!r}")
        if len(self.position_m) != 2:
            raise ValueError(f"position_m must be (x, y), got {self.position_m!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": EVENT_TYPE,
            "version": EVENT_VERSION,
            "timestamp": iso_utc(self.t_ns),
            "timestamp_ns": self.t_ns,
            "clock": self.clock,
            "track_id": int(self.track_id),
            "identity": self.identity,
            "score": round(float(self.score), 6),
            "position_m": [round(float(self.position_m[0]), 4), round(float(self.position_m[1]), 4)],
            "reliability": round(float(self.reliability), 6),
            "modalities": self.modalities.to_dict(),
        }

    def to_json(self) -> str:
        """One compact line (no newline inside, so it is one JSON-lines record)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> IdentityEvent:
        """Parse and validate one event (for consumers and replay); raises ValueError naming the problem."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("type") != EVENT_TYPE:
            raise ValueError('not an identity event (missing "type": "identity")')
        if doc.get("version") != EVENT_VERSION:
            raise ValueError(f"identity event version {doc.get('version')!r}; this reads {EVENT_VERSION}")
        try:
            live = doc["modalities"]
            position = doc["position_m"]
            if not isinstance(live, dict) or not isinstance(position, list):
                raise TypeError("modalities must be an object and position_m a list")
            return cls(
                t_ns=doc["timestamp_ns"],
                track_id=int(doc["track_id"]),
                identity=doc["identity"],
                score=doc["score"],
                position_m=tuple(position),  # type: ignore[arg-type]
                reliability=doc["reliability"],
                modalities=LiveModalities(*(bool(live[m]) for m in MODALITIES)),
                clock=str(doc.get("clock", CLOCK_REALTIME)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"identity event is missing or mistypes a field: {exc}") from None
