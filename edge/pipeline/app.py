"""Assemble a running edge system from the config: sources, engine, gallery, sinks, health, systemd.

Three ways to feed it: hardware (the config's VNA, switch, camera and ZED), the simulated rig
(`--simulate`: SCPI VNA and switch simulators on loopback, simulated camera and ZED, all on one
scene clock) and replay of a recording. The same Identifier runs in every case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.edge.config import (
    EMPTY_CALIBRATION_FILE,
    MAX_SOCKET_PATH_BYTES,
    EdgeConfig,
    PathsConfig,
    SweepConfig,
    parse_config,
)
from vrclip.edge.crops import camera_from_config
from vrclip.edge.errors import ConfigError, UserError
from vrclip.edge.events.event import IdentityEvent
from vrclip.edge.events.health import Health
from vrclip.edge.gallery.matcher import Matcher, resolve_threshold
from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.geometry import ArrayGeometry, load_geometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.imaging.drift import CouplingReference
from vrclip.edge.inference.base import InferenceBackend
from vrclip.edge.inference.factory import open_engine
from vrclip.edge.pipeline.identify import Identifier
from vrclip.edge.pipeline.sources import (
    FrameSource,
    OpenCvCameraSource,
    ReplaySource,
    ScpiRadarSource,
    SimulatedSource,
    ZedDepthSource,
)
from vrclip.edge.record import simulated_calibration
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.sim.radar import sweep_frequencies
from vrclip.edge.sim.rig import SimulatedRig
from vrclip.edge.sim.scene import SceneSpec

SourceFactories = dict[str, Callable[[], FrameSource]]


@dataclass
class Feed:
    """Where frames come from, plus what the Identifier needs to know about that rig."""

    sources: SourceFactories
    config: EdgeConfig
    geometry: ArrayGeometry
    freqs_hz: np.ndarray
    calibration: ChannelCalibration | None
    #: Ground truth, when the feed is simulated: scene time (s) -> [(name, (x, y))].
    truth: Callable[[int], list[tuple[str, np.ndarray]]] | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: Offline feed (a file replayed as fast as possible): capture waits for the pipeline, never drops.
    lossless: bool = False
    #: What the operator must hear before the run starts (e.g. running uncalibrated).
    warnings: list[str] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()


def load_rig_calibration(
    path: str | Path, n_channels: int | None, *, may_be_absent: bool = False, sweep: SweepConfig | None = None
) -> tuple[ChannelCalibration | None, str | None]:
    """(calibration, warning) for the real rig from `path` (paths.calibration_file); `n_channels`
    None leaves its channel count unchecked (the self-test, when the array geometry cannot be read).

    A missing, unreadable or invalid file raises the ConfigError naming it: a typo in the path must
    not run the rig uncalibrated unnoticed. Only with `may_be_absent` (the built-in default location,
    on a rig not calibrated yet) does an absent file give (None, warning) instead, and the run goes
    on uncalibrated with that warning on the console and in the health counters.
    """
    path = Path(path)
    if may_be_absent and not path.exists():
        return None, (
            f"paths.calibration_file = {path}: no channel calibration there yet; running the radar "
            "UNCALIBRATED (images blur, identities suffer). Measure it with `vrclip-calibrate "
            "channels --reflector X Y Z` (it writes there), or set paths.calibration_file"
        )
    calibration = ChannelCalibration.load(path, n_channels)
    mismatch = (
        calibration.sweep_mismatch(sweep.start_hz, sweep.stop_hz, sweep.points) if sweep is not None else None
    )
    return calibration, (f"paths.calibration_file = {path}: {mismatch}" if mismatch else None)


def configured_calibration(
    config: EdgeConfig, n_channels: int | None
) -> tuple[ChannelCalibration | None, str | None]:
    """`load_rig_calibration` of paths.calibration_file for this config's sweep: only the built-in
    default location may be absent (a rig set up with the defaults, not calibrated yet)."""
    path = config.paths.calibration_file
    if not path.strip():
        raise ConfigError(EMPTY_CALIBRATION_FILE)
    default = PathsConfig.model_fields["calibration_file"].default
    return load_rig_calibration(path, n_channels, may_be_absent=path == default, sweep=config.radar.sweep)


def hardware_feed(config: EdgeConfig) -> Feed:
    """The real rig as the config describes it, calibrated from paths.calibration_file.

    A file the config names must be there (else a start-up error naming it); only the built-in
    default location may be absent, as on a rig set up with the defaults before its calibration:
    `Feed.warnings` then says loudly that the radar runs uncalibrated.
    """
    geometry = load_geometry(config.radar.array)
    calibration, warning = configured_calibration(config, geometry.n_channels)
    sources: SourceFactories = {
        "radar": lambda: ScpiRadarSource(config),
        "camera": lambda: OpenCvCameraSource(config),
    }
    if config.zed.enabled:
        sources["depth"] = lambda: ZedDepthSource(config)
    feed = Feed(sources, config, geometry, sweep_frequencies(config.radar.sweep), calibration)
    if warning is not None:
        feed.warnings.append(warning)
    return feed


def simulated_feed(
    config: EdgeConfig, spec: SceneSpec, *, scpi: bool = True, sweep_time_ms: float | None = None
) -> Feed:
    """The simulated rig. With scpi=True the radar goes through the real VNA/switch drivers to the
    SCPI simulators on loopback; otherwise the radar frames come straight from the simulator."""
    epoch_ns = time.time_ns()
    streams = ("radar", "camera", "depth") if config.zed.enabled else ("radar", "camera")
    rig = SimulatedRig(config, spec, start_ns=epoch_ns, streams=streams)
    closers: list[Callable[[], None]] = []
    if scpi:
        from vrclip.edge.radar.sim_process import SimulatorProcess

        # Its own process: served from a thread here, every SCPI message would wait for the GIL.
        simulator = SimulatorProcess(
            spec,
            config.radar.sweep,
            dialect=config.radar.vna.dialect,
            sweep_time_s=None if sweep_time_ms is None else sweep_time_ms / 1e3,
            errors=rig.radar.errors,
            array=config.radar.array,
            epoch_ns=epoch_ns,
        ).start()
        closers.append(simulator.stop)
        radar_config = simulator.edge_config(config)
        radar: Callable[[], FrameSource] = lambda: ScpiRadarSource(radar_config)  # noqa: E731
    else:
        radar = lambda: SimulatedSource(rig, "radar", config.radar.frame_rate_hz, epoch_ns)  # noqa: E731
    sources: SourceFactories = {
        "radar": radar,
        "camera": lambda: SimulatedSource(rig, "camera", config.camera.fps, epoch_ns),
    }
    if config.zed.enabled:
        sources["depth"] = lambda: SimulatedSource(rig, "depth", config.zed.fps, epoch_ns)

    def truth(t_ns: int) -> list[tuple[str, np.ndarray]]:
        state = rig.scene.state((t_ns - epoch_ns) / 1e9)
        return [(p.identity.name, p.position) for p in state.people]

    calibration = ChannelCalibration.from_dict(simulated_calibration(rig), source="simulated rig")
    # As a perfect wizard would record it: the rig's coupling in the empty room, for the drift monitor.
    coupling = CouplingReference.of_rig(
        rig.radar.empty_room(), rig.freqs_hz, rig.geometry, calibration.delay_s
    )
    calibration = dataclasses.replace(calibration, coupling=coupling)
    return Feed(sources, config, rig.geometry, rig.freqs_hz, calibration, truth, closers)


def replay_feed(path: Path, *, paced: bool = True, loop: bool = False) -> Feed:
    """A recording played back (at its own pace, or as fast as the pipeline goes)."""
    with SessionReader(path) as reader:
        config = reader.edge_config()
        geometry = reader.array_geometry
        freqs = np.asarray(reader.freqs_hz)
        calibration = (
            ChannelCalibration.from_dict(reader.calibration, source=f"{path} calibration")
            if reader.calibration
            else None
        )
        streams = reader.streams
    sources: SourceFactories = {
        name: (lambda name=name: ReplaySource(str(path), name, paced=paced, loop=loop)) for name in streams
    }
    return Feed(sources, config, geometry, freqs, calibration, lossless=not paced)


def with_workdir(config: EdgeConfig, workdir: Path) -> EdgeConfig:
    """The config with gallery and event files moved under `workdir` (simulated runs, benches)."""
    data = config.model_dump(mode="json")
    data["gallery"]["path"] = str(workdir / "gallery.sqlite")
    data["gallery"]["backup_dir"] = ""  # a simulated run's gallery is made afresh each time
    data["sinks"]["jsonl_path"] = str(workdir / "events.jsonl")
    data["sinks"]["http"]["enabled"] = False
    # Its own control socket (`enroll --service` against the simulated run), where the path fits one.
    socket_path = str(workdir.absolute() / "control.sock")
    fits = len(socket_path.encode()) <= MAX_SOCKET_PATH_BYTES
    data["paths"]["control_socket"] = socket_path if fits else ""
    # Rendering 1280x720 frames costs CPU; the synchroniser only needs a frame near each radar frame.
    data["camera"]["fps"] = min(data["camera"]["fps"], 2 * data["radar"]["frame_rate_hz"])
    data["zed"]["fps"] = min(data["zed"]["fps"], data["radar"]["frame_rate_hz"])
    return parse_config(data, source="simulated run")


def open_backend(config: EdgeConfig, engine: str | None = None) -> InferenceBackend:
    return open_engine(engine or config.engine.path, config.engine.backend)


def make_matcher(
    config: EdgeConfig,
    backend: InferenceBackend,
    gallery_path: str | Path,
    echo: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
) -> tuple[Matcher, str]:
    """The gallery matcher at the open-set threshold `resolve_threshold` picks (config, else the engine
    manifest, else the fallback), and where that came from; `echo` tells the operator which one."""
    threshold, source = resolve_threshold(config.gallery.threshold, backend.manifest)
    echo(f"open-set threshold {threshold:.2f} ({source})")
    return Matcher(GalleryStore(gallery_path), threshold, on_error=warn), source


def make_identifier(
    feed: Feed,
    backend: InferenceBackend,
    match=None,
    event_interval_s: float = 1.0,
    warn: Callable[[str], None] | None = None,
    count: Callable[[str, int], None] | None = None,
) -> Identifier:
    """The Identifier for `feed`; `count` (Health.count) receives the per-frame faults it survives."""
    camera = camera_from_config(feed.config) if "camera" in feed.sources else None
    return Identifier(
        feed.config,
        feed.geometry,
        feed.freqs_hz,
        backend,
        calibration=feed.calibration,
        camera=camera,
        match=match,
        event_interval_s=event_interval_s,
        warn=warn,
        count=count,
    )


#: A detection farther than this from every simulated person is a ghost, not anyone (metres).
GHOST_DISTANCE_M = 0.75


def nearest_person(position: Any, people: list[tuple[str, np.ndarray]]) -> str | None:
    """Name of the simulated person nearest `position` (x, y), or None for a ghost or an empty room."""
    if not people:
        return None
    distances = [float(np.hypot(*(np.asarray(position) - xy))) for _, xy in people]
    nearest = int(np.argmin(distances))
    return people[nearest][0] if distances[nearest] <= GHOST_DISTANCE_M else None


@dataclass
class TruthScore:
    """How often events name the right person (simulated feeds only)."""

    known_total: int = 0
    known_right: int = 0
    unknown_total: int = 0
    unknown_right: int = 0

    def score(self, event: IdentityEvent, people: list[tuple[str, np.ndarray]], enrolled: set[str]) -> None:
        name = nearest_person(event.position_m, people)
        if name is None:
            return
        if name in enrolled:
            self.known_total += 1
            self.known_right += event.identity == name
        else:
            self.unknown_total += 1
            self.unknown_right += event.identity == "unknown"

    def summary(self) -> dict[str, float | int | None]:
        return {
            "known_events": self.known_total,
            "known_accuracy": self.known_right / self.known_total if self.known_total else None,
            "unknown_events": self.unknown_total,
            "unknown_accuracy": self.unknown_right / self.unknown_total if self.unknown_total else None,
        }


@dataclass
class ThresholdSweep:
    """Every per-frame match of a simulated run, re-scored at many open-set thresholds.

    The events of one run show one threshold; the site engineer choosing `gallery.threshold` needs
    the trade-off: how many enrolled people keep their name and how many visitors stay unknown as
    the threshold moves. Each frame's match of each track counts (best identity and its score, before
    thresholding), scored against the nearest simulated person.
    """

    #: (score, best identity was right, person is enrolled) per scored match.
    records: list[tuple[float, bool, bool]] = field(default_factory=list)

    def add(
        self,
        score: float,
        best: str | None,
        position: Any,
        people: list[tuple[str, np.ndarray]],
        enrolled: set[str],
    ) -> None:
        name = nearest_person(position, people)
        if name is None:
            return
        self.records.append((float(score), best == name, name in enrolled))

    def at(self, threshold: float) -> tuple[float | None, float | None]:
        """(identity accuracy of enrolled people, unknown accuracy of visitors) at `threshold`."""
        known = [(s >= threshold and right) for s, right, enrolled in self.records if enrolled]
        unknown = [s < threshold for s, _, enrolled in self.records if not enrolled]
        return (
            sum(known) / len(known) if known else None,
            sum(unknown) / len(unknown) if unknown else None,
        )

    def table(self, thresholds: np.ndarray) -> list[dict[str, float | None]]:
        rows = []
        for t in thresholds:
            known, unknown = self.at(float(t))
            rows.append(
                {"threshold": round(float(t), 3), "identity_accuracy": known, "unknown_accuracy": unknown}
            )
        return rows

    def best_threshold(self, thresholds: np.ndarray) -> float | None:
        """The threshold with the best worse-of-the-two accuracy (both figures matter to a site)."""
        scored = [
            (min(k, u), t)
            for t in thresholds
            for k, u in [self.at(float(t))]
            if k is not None and u is not None
        ]
        return round(float(max(scored)[1]), 3) if scored else None


def health_for(feed: Feed) -> Health:
    return Health(tuple(feed.sources))


def require_engine_exists(config: EdgeConfig, engine: str | None) -> None:
    path = Path(engine or config.engine.path)
    if not path.with_suffix(".json").exists() and not path.exists():
        raise UserError(
            f"engine {path}: not found; export one with `vrclip-export onnx CHECKPOINT --out {path}` "
            "or set [engine] path in the config"
        )
