"""Health of the running pipeline: frame counters per source, latency percentiles, modality states.

One object, updated by the pipeline thread and read by the HTTP thread, the console and the systemd
STATUS= line; a single lock keeps the two sides consistent, and every structure is bounded (a ring
of recent latencies, a ring of recent arrival times) so a box that runs for a year uses the same
memory as on day one. Percentiles come from the recent window, not the lifetime: an operator asks
"is it slow now?", and a lifetime p99 would hide a degradation that started an hour ago.
"""

from __future__ import annotations

import collections
import enum
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vrclip.edge import __version__
from vrclip.edge.values import finite_number

#: Recent latencies kept per stage for p50/p99.
LATENCY_WINDOW = 2048
#: Recent arrivals kept per source for its frame rate.
RATE_WINDOW = 64
#: Longest error text kept per modality (it goes into one status line).
MAX_ERROR_CHARS = 200


class ModalityState(enum.StrEnum):
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


class LatencyWindow:
    """The last `size` latencies in a ring buffer, plus lifetime count and sum (for Prometheus)."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._ring = np.zeros(size, dtype=np.float64)
        self._next = 0
        self.count = 0
        self.total_s = 0.0

    def record(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return  # a clock step backwards must not poison the percentiles
        self._ring[self._next] = seconds
        self._next = (self._next + 1) % len(self._ring)
        self.count += 1
        self.total_s += seconds

    def quantiles(self, qs: Iterable[float] = (0.5, 0.99)) -> dict[float, float]:
        n = min(self.count, len(self._ring))
        if n == 0:
            return {}
        values = np.quantile(self._ring[:n] if n < len(self._ring) else self._ring, list(qs))
        return {q: float(v) for q, v in zip(qs, values, strict=True)}


@dataclass
class SourceStats:
    frames_in: int = 0
    dropped: int = 0
    arrivals: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=RATE_WINDOW))

    def rate_hz(self, now: float) -> float:
        """Frames per second over the recent arrivals; 0 once the source went quiet."""
        if len(self.arrivals) < 2:
            return 0.0
        span = self.arrivals[-1] - self.arrivals[0]
        if span <= 0:
            return 0.0
        interval = span / (len(self.arrivals) - 1)
        if now - self.arrivals[-1] > max(2.0, 3.0 * interval):
            return 0.0
        return 1.0 / interval


@dataclass
class Modality:
    state: ModalityState = ModalityState.DOWN
    last_error: str = "no data yet"
    since_s: float = 0.0
    changes: int = 0


#: Nesting kept in a stats provider's value on /status; deeper is cut (a provider bug, not data).
MAX_STATS_DEPTH = 8


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` as strict JSON can carry it: NaN and infinity become null, numpy scalars and arrays
    plain numbers and lists, anything else its repr. /status is encoded without NaN, and one
    provider's NaN or numpy integer made every /status request fail."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return json_safe(value.item(), depth)
    if depth >= MAX_STATS_DEPTH:
        return _short(repr(value), MAX_ERROR_CHARS)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_safe(v, depth + 1) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    return _short(repr(value), MAX_ERROR_CHARS)


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())  # one line whatever the exception text looked like
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metric_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Health:
    """Counters and states of one running pipeline. Thread-safe; every method is cheap."""

    def __init__(
        self,
        modalities: Iterable[str] = ("radar", "camera", "depth"),
        *,
        latency_window: int = LATENCY_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._latency_window = latency_window
        self.sources: dict[str, SourceStats] = {}
        self.latencies: dict[str, LatencyWindow] = {}
        self.modalities: dict[str, Modality] = {m: Modality(since_s=self._started) for m in modalities}
        self.counters: collections.Counter[str] = collections.Counter()
        self._stats_sources: dict[str, Callable[[], dict[str, dict[str, Any]]]] = {}

    # ---- the pipeline side -------------------------------------------------------------------------

    def frame_in(self, source: str, n: int = 1) -> None:
        now = self._clock()
        with self._lock:
            stats = self.sources.setdefault(source, SourceStats())
            stats.frames_in += n
            stats.arrivals.append(now)

    def dropped(self, source: str, n: int = 1) -> None:
        with self._lock:
            self.sources.setdefault(source, SourceStats()).dropped += n

    def latency(self, stage: str, seconds: float) -> None:
        with self._lock:
            window = self.latencies.get(stage)
            if window is None:
                window = self.latencies[stage] = LatencyWindow(self._latency_window)
            window.record(seconds)

    def count(self, name: str, n: int = 1) -> None:
        """A free-form lifetime counter (events, unknown_tracks, sensor_errors, ...)."""
        with self._lock:
            self.counters[name] += n

    def set_modality(
        self, name: str, state: ModalityState | str, error: str | BaseException | None = None
    ) -> None:
        """Record a modality's state; `error` says why it is degraded or down (kept after recovery)."""
        state = ModalityState(state)
        with self._lock:
            modality = self.modalities.setdefault(name, Modality(since_s=self._clock()))
            if modality.state != state:
                modality.state = state
                modality.since_s = self._clock()
                modality.changes += 1
            if error is not None:
                text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
                modality.last_error = _short(text, MAX_ERROR_CHARS)

    def add_stats_source(self, label: str, provider: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Include `provider()` ({name: {key: value}}, e.g. EventSinks.stats) in /status and /metrics."""
        self._stats_sources[label] = provider

    # ---- the reading side --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain JSON-able data (GET /status)."""
        now = self._clock()
        with self._lock:
            doc: dict[str, Any] = {
                "version": __version__,
                "uptime_s": round(now - self._started, 3),
                "sources": {
                    name: {
                        "frames_in": s.frames_in,
                        "dropped": s.dropped,
                        "rate_hz": round(s.rate_hz(now), 3),
                    }
                    for name, s in sorted(self.sources.items())
                },
                "latency_ms": {
                    stage: {
                        "count": w.count,
                        "mean": round(1e3 * w.total_s / w.count, 3) if w.count else None,
                        **{f"p{round(q * 100)}": round(1e3 * v, 3) for q, v in w.quantiles().items()},
                    }
                    for stage, w in sorted(self.latencies.items())
                },
                "modalities": {
                    name: {
                        "state": m.state.value,
                        "last_error": m.last_error,
                        "for_s": round(now - m.since_s, 3),
                        "changes": m.changes,
                    }
                    for name, m in self.modalities.items()
                },
                "counters": dict(sorted(self.counters.items())),
            }
            providers = dict(self._stats_sources)
        for label, provider in providers.items():
            try:
                doc[label] = json_safe(provider())
            except Exception as exc:  # a broken provider must not take the status page down
                doc[label] = {"error": {"last_error": _short(repr(exc), MAX_ERROR_CHARS)}}
        doc["status"] = self._status_line(doc)
        return doc

    @staticmethod
    def _status_line(doc: dict[str, Any]) -> str:
        parts = []
        for name, m in doc["modalities"].items():
            text = f"{name} {m['state']}"
            rate = doc["sources"].get(name, {}).get("rate_hz")
            if m["state"] == "up" and rate:
                text += f" {rate:.1f}/s"
            elif m["state"] != "up":
                text += f" ({_short(m['last_error'], 40)})"
            parts.append(text)
        line = ", ".join(parts)
        total = doc["latency_ms"].get("total") or next(iter(doc["latency_ms"].values()), None)
        if total and "p50" in total:
            line += f" | p50 {total['p50']:.0f} ms p99 {total['p99']:.0f} ms"
        drops = sum(s["dropped"] for s in doc["sources"].values())
        line += f" | drops {drops}"
        if "events" in doc["counters"]:
            line += f" | events {doc['counters']['events']}"
        return line

    def status_line(self) -> str:
        """One line for the console and systemd's STATUS= (no newlines, a few hundred chars at most)."""
        return self.snapshot()["status"]

    def prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4 (GET /metrics)."""
        doc = self.snapshot()
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value!r}" for labels, value in samples)

        family(
            "vrclip_build_info",
            "gauge",
            "Version of vrclip-edge.",
            [(f'{{version="{_label(doc["version"])}"}}', 1)],
        )
        family(
            "vrclip_uptime_seconds", "gauge", "Seconds since the pipeline started.", [("", doc["uptime_s"])]
        )
        sources = doc["sources"].items()
        family(
            "vrclip_frames_total",
            "counter",
            "Frames received per source.",
            [(f'{{source="{_label(n)}"}}', s["frames_in"]) for n, s in sources],
        )
        family(
            "vrclip_frames_dropped_total",
            "counter",
            "Frames dropped per source.",
            [(f'{{source="{_label(n)}"}}', s["dropped"]) for n, s in sources],
        )
        family(
            "vrclip_source_rate_hz",
            "gauge",
            "Recent frame rate per source.",
            [(f'{{source="{_label(n)}"}}', s["rate_hz"]) for n, s in sources],
        )
        with self._lock:
            windows = [
                (stage, w.quantiles(), w.count, w.total_s) for stage, w in sorted(self.latencies.items())
            ]
        out.append("# HELP vrclip_latency_seconds Pipeline latency per stage (quantiles over recent frames).")
        out.append("# TYPE vrclip_latency_seconds summary")
        for stage, qs, count, total in windows:
            label = _label(stage)
            for q, value in qs.items():
                out.append(f'vrclip_latency_seconds{{stage="{label}",quantile="{q}"}} {value!r}')
            out.append(f'vrclip_latency_seconds_sum{{stage="{label}"}} {total!r}')
            out.append(f'vrclip_latency_seconds_count{{stage="{label}"}} {count!r}')
        states = [
            (f'{{modality="{_label(n)}",state="{s.value}"}}', 1 if m["state"] == s.value else 0)
            for n, m in doc["modalities"].items()
            for s in ModalityState
        ]
        family("vrclip_modality_state", "gauge", "1 for the current state of each modality.", states)
        for name, value in doc["counters"].items():
            family(f"vrclip_{_metric_name(name)}_total", "counter", f"Count of {name}.", [("", value)])
        for label in self._stats_sources:
            by_key: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
            section = doc.get(label, {})
            for member, values in section.items() if isinstance(section, dict) else ():
                if not isinstance(values, dict):  # a provider's odd shape: /status shows it, not metrics
                    continue
                for key, value in values.items():
                    if isinstance(value, bool) or finite_number(value):
                        labels = f'{{{_metric_name(label)}="{_label(member)}"}}'
                        by_key[key].append((labels, float(value)))
            for key, key_samples in sorted(by_key.items()):
                name = f"vrclip_{_metric_name(label)}_{_metric_name(key)}"
                family(name, "gauge", f"{key} per {label}.", key_samples)
        return "\n".join(out) + "\n"
