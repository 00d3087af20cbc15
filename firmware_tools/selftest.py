"""The rig's self-test: is every part there and working, before calibration and after any change.

An installer who has just cabled a rig wants one command that says what is wrong and where, before
spending an hour on calibration. Each check talks to one part through the runtime's own drivers (so
what passes here is what `vrclip-edge run` will meet), is bounded in time, and turns any failure
into a result that names the part and what to do; one failing part never stops the checks of the
others. Only the radar's frames need the switch and the VNA to have answered first.

The checks:
- switch: the controller answers, speaks our protocol version, has the ports the geometry needs and
  passes its own self-test (`TEST?`);
- vna: the instrument identifies as the configured dialect and accepts the sweep (read back), and
  the sweep allows `radar.frame_rate_hz`;
- radar: whole frames through both (switching sequence included), the rate they come at, and every
  channel's health (`channel_health`): a dead path is named by channel, Tx/Rx antennas and, when
  all channels of a port fail, by port;
- calibration: `paths.calibration_file` is there, valid, and measured with this sweep;
- camera / depth: frames come, at the configured size and rate, not black, not frozen;
- engine: the engine package opens, fits this rig (channels, window), and runs one sample;
- gallery: `gallery.path` opens, is undamaged, and holds this engine's embeddings;
- disk: free space where the service writes;
- clock: the kernel says the system clock is synchronised.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import SensorError, UserError
from vrclip.edge.geometry import ArrayGeometry, load_geometry
from vrclip.edge.pipeline.sources import FrameSource
from vrclip.firmware_tools.channel_health import MIN_POINTS, channel_health, duplicated_channels, whole_ports

Status = Literal["pass", "warn", "fail", "skip"]
CHECKS = ("switch", "vna", "radar", "calibration", "camera", "depth", "engine", "gallery", "disk", "clock")
#: A measured frame rate below this share of the configured one is worth a warning.
RATE_TOLERANCE = 0.8
#: Mean pixel value (0..255) below which the camera sees nothing: a lens cap, no light.
DARK_MEAN = 8.0
#: Share of valid depth pixels below which the ZED is blind (lens covered, too close to a wall).
MIN_VALID_DEPTH = 0.2
#: Longest any one check may take before it is reported as hanging (seconds).
DEFAULT_TIMEOUT_S = 60.0
#: Free space below which a folder the service writes to is worth a warning (recordings run at
#: ~8 GB an hour of radar), and below which the service cannot record or enrol at all.
LOW_DISK_BYTES = 1 << 30
FULL_DISK_BYTES = 256 << 20


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    seconds: float = 0.0
    #: What the check measured, for the JSON report.
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckFailed(Exception):
    """A check's verdict of failure, with its figures."""

    def __init__(self, detail: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.figures = figures or {}


@dataclass(frozen=True)
class Verdict:
    status: Status
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rig:
    """What the self-test talks to: the config (its radar endpoints), and camera and depth sources."""

    config: EdgeConfig
    camera: Callable[[], FrameSource]
    depth: Callable[[], FrameSource] | None
    engine: str
    #: True for the simulated rig, whose calibration is the simulator's own.
    simulated: bool = False

    @functools.cached_property
    def geometry(self) -> ArrayGeometry:
        """The array, read once for all the checks that need it."""
        return load_geometry(self.config.radar.array)

    def geometry_problem(self) -> str | None:
        """Why the array geometry cannot be read (naming radar.array.geometry_file), or None.

        A check whose own part answered uses it to say so, and what it could not judge, instead of
        failing with the geometry's error as if its part were at fault.
        """
        try:
            self.geometry  # noqa: B018 (reading the property is the check)
        except UserError as exc:
            where = "" if "radar.array.geometry_file" in str(exc) else " (radar.array.geometry_file)"
            return f"the array geometry{where} cannot be read: {exc}"
        return None


class Cancel:
    """What the runner tells a check that ran out of time. Its thread, stuck in a driver call, goes
    on once the call returns; hooks the check registered (`on_cancel`) stop it acting on the rig
    after the self-test moved on: the radar check's source would reconnect and re-arm the
    controller after the self-test disarmed it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self.cancelled = False

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call `hook` when cancelled (at once if that happened already)."""
        with self._lock:
            if not self.cancelled:
                self._hooks.append(hook)
                return
        hook()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()


def run_bounded(
    name: str, check: Callable[[], Verdict], timeout_s: float, on_timeout: Callable[[], None] | None = None
) -> CheckResult:
    """Run one check in a thread of its own, so a driver call that hangs (an OpenCV read of an
    unplugged camera) costs `timeout_s`, not the whole self-test. `on_timeout` runs when it does."""
    outcome: list[Verdict | BaseException] = []

    def work() -> None:
        try:
            outcome.append(check())
        except BaseException as exc:  # every failure becomes this check's result
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=work, name=f"selftest-{name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    seconds = round(time.monotonic() - started, 3)
    if not outcome:
        if on_timeout is not None:
            on_timeout()
        return CheckResult(name, "fail", f"no answer within {timeout_s:g} s: the {name} hangs", seconds)
    got = outcome[0]
    if isinstance(got, Verdict):
        return CheckResult(name, got.status, got.detail, seconds, got.figures)
    if isinstance(got, CheckFailed):
        return CheckResult(name, "fail", str(got), seconds, got.figures)
    if isinstance(got, UserError | SensorError):
        return CheckResult(name, "fail", str(got), seconds)
    if isinstance(got, KeyboardInterrupt):
        raise got
    return CheckResult(name, "fail", f"unexpected error: {type(got).__name__}: {got}", seconds)


# --------------------------------------------------------------------------------------- the radar
def check_switch(rig: Rig) -> Verdict:
    from vrclip.edge.radar.errors import SwitchConnectionError, SwitchTimeoutError
    from vrclip.edge.radar.switch import SwitchClient

    switch = SwitchClient.from_config(rig.config.radar.switch)
    # This check owns the array geometry (the switching sequence the controller runs): it fails
    # naming the file, while checks of parts that answered say only what they could not judge.
    problem = rig.geometry_problem()
    try:
        try:
            switch.connect()
        except (SwitchConnectionError, SwitchTimeoutError) as exc:
            # The driver says what happened; the installer needs to know what to check.
            raise CheckFailed(
                f"{exc}; check that the controller is powered and cabled, and that radar.switch.port "
                f"({switch.port!r}) is its address" + (f"; and {problem}" if problem else "")
            ) from None
        n_tx, n_rx = switch.size()
        figures = {"version": switch.version, "ports": [n_tx, n_rx], "port": switch.port}
        if problem is not None:
            raise CheckFailed(
                f"controller at {switch.port} answers (protocol {switch.version}, {n_tx} Tx x {n_rx} Rx "
                f"ports), but {problem}",
                figures,
            )
        pairs = np.asarray(rig.geometry.pairs).reshape(-1, 2)
        need_tx, need_rx = int(pairs[:, 0].max()) + 1, int(pairs[:, 1].max()) + 1
        if need_tx > n_tx or need_rx > n_rx:
            raise CheckFailed(
                f"controller at {switch.port} has {n_tx} Tx x {n_rx} Rx ports but the array geometry "
                f"needs {need_tx} x {need_rx}; check radar.array.geometry_file and the controller",
                figures,
            )
        switch.self_test()
    finally:
        switch.close()
    return Verdict(
        "pass",
        f"controller at {switch.port}: protocol {switch.version}, {n_tx} Tx x {n_rx} Rx ports, "
        "its self-test passed",
        figures,
    )


def check_vna(rig: Rig) -> Verdict:
    from vrclip.edge.radar.budget import frame_rate_warning
    from vrclip.edge.radar.errors import VnaConnectionError, VnaTimeoutError
    from vrclip.edge.radar.vna import VnaDriver

    radar = rig.config.radar
    vna = VnaDriver.from_config(radar)
    try:
        vna.connect()  # identifies the model, sets the sweep up and reads it back
        idn = vna.idn
    except (VnaConnectionError, VnaTimeoutError) as exc:
        if vna.idn:  # it answered *IDN?: reachable, and the driver's message says what broke
            raise
        raise CheckFailed(
            f"{exc}; check that the VNA is on and on the network (or bus), and that radar.vna.resource "
            f"({radar.vna.resource!r}) names it"
        ) from None
    finally:
        vna.close()
    sweep = radar.sweep
    figures = {"idn": idn, "dialect": radar.vna.dialect, "resource": radar.vna.resource}
    detail = (
        f"{idn} at {radar.vna.resource}: accepts {sweep.start_hz / 1e9:g}-{sweep.stop_hz / 1e9:g} GHz, "
        f"{sweep.points} points, IF bandwidth {sweep.if_bandwidth_hz:g} Hz"
    )
    problem = rig.geometry_problem()
    if problem is not None:
        # The VNA answered; only the frame rate, which depends on the channel count, is unjudged.
        return Verdict("warn", f"{detail}; radar.frame_rate_hz not judged: {problem}", figures)
    warning = frame_rate_warning(rig.config, rig.geometry.n_channels)
    if warning is not None:
        return Verdict("warn", f"{detail}; but {warning}", figures)
    return Verdict("pass", detail, figures)


def check_radar(rig: Rig, frames: int, cancel: Cancel | None = None) -> Verdict:
    """Whole frames through the real drivers, their rate, and the health of every channel.
    `cancel` stops the source (no reconnection, no arming) if the check runs out of time."""
    from vrclip.edge.radar.errors import RadarError
    from vrclip.edge.radar.source import RadarSource

    geometry = rig.geometry
    source = RadarSource.from_config(
        rig.config, geometry=geometry, max_reconnect_attempts=1, max_dropped_frames=2
    )
    if cancel is not None:
        cancel.on_cancel(source.cancel)
    try:
        source.open()
        sweeps, started = [], time.monotonic()
        for _ in range(frames):
            frame = source.read_frame()
            if frame is None:
                raise CheckFailed("the radar closed while frames were read")
            sweeps.append(frame.s21)
        elapsed = time.monotonic() - started
    except RadarError as exc:
        raise CheckFailed(f"frames failed: {exc}") from None
    finally:
        source.close()
    stack = np.stack(sweeps)
    rate = frames / elapsed if elapsed > 0 else float("inf")
    if stack.shape[2] < MIN_POINTS:
        # The config allows sweeps this short; judging channels from them is what cannot be done.
        return Verdict(
            "warn",
            f"{frames} frames at {rate:.1f} frames/s; channel health not judged: it needs sweeps of at "
            f"least {MIN_POINTS} points, radar.sweep.points is {stack.shape[2]}",
            {"frames": frames, "frames_per_s": round(rate, 2), "dropped": source.stats.drops},
        )
    health = channel_health(stack)
    dead, suspect = health.dead(), health.suspect()
    copies = duplicated_channels(stack[-1])
    figures: dict[str, Any] = {
        "frames": frames,
        "frames_per_s": round(rate, 2),
        "level_db": np.round(health.level_db, 2).tolist(),
        "structure": np.round(health.structure, 4).tolist(),
        "dead": dead,
        "suspect": suspect,
        "duplicated": copies,
        "dropped": source.stats.drops,
    }
    if len(copies) > geometry.n_channels // 2:
        raise CheckFailed(
            f"{len(copies)} of {geometry.n_channels} channels measure the same path as another channel: "
            "the switch matrix does not switch between sweeps (check the controller's RF outputs and "
            'radar.switch.step; with step = "trigger", the cable from the VNA\'s trigger output)',
            figures,
        )
    if dead:
        raise CheckFailed(_dead_report(dead, health, geometry), figures)
    if copies:
        raise CheckFailed(_copies_report(copies, health, geometry), figures)
    lines = [
        f"{frames} frames at {rate:.1f} frames/s, all {geometry.n_channels} channels live "
        f"(weakest {health.level_db.min():+.1f} dB from the median channel)"
    ]
    status: Status = "pass"
    if suspect:
        status = "warn"
        lines.append(f"weak or noisy: {_channel_list(suspect, health, geometry)}; check their connectors")
    if source.stats.drops:
        # The source drops a failed frame and reconnects; the run does the same, so a fault that
        # recurs (a loose trigger cable, a flaky link) shows only in its log. Said here instead.
        status, drops = "warn", source.stats.drops
        lines.append(
            f"{drops} frame{'s' if drops > 1 else ''} dropped while {frames} came through "
            f"(last: {source.stats.last_error}): check the cables and the instruments' links"
        )
    wanted = rig.config.radar.frame_rate_hz
    if rate < RATE_TOLERANCE * wanted:
        status = "warn"
        lines.append(
            f"radar.frame_rate_hz is {wanted:g} but the rig delivers {rate:.1f}: raise "
            "radar.sweep.if_bandwidth_hz, use fewer points, or lower frame_rate_hz (and train at that rate)"
        )
    return Verdict(status, "; ".join(lines), figures)


def _dead_report(dead: list[int], health: Any, geometry: ArrayGeometry) -> str:
    """Which paths are dead, by port where a whole port is (its cable or switch path), by channel
    (its antennas) for the rest. When every channel is dead, the path they all share is at fault,
    not each of the 24 ports: one cable unplugged there kills them all."""
    if len(dead) == geometry.n_channels:
        return (
            f"all {geometry.n_channels} channels measure no signal: check the cables between the VNA and "
            "the switch matrix (its common Tx and Rx ports, the power divider) and that the VNA's source "
            "is on"
        )
    ports, rest = _by_port(dead, geometry)
    parts = []
    if ports:
        parts.append(f"every channel of {', '.join(ports)}: check that port's cable and switch path")
    if rest:
        parts.append(f"{_channel_list(rest, health, geometry)}: check those antennas' cables and connectors")
    return f"{len(dead)} of {geometry.n_channels} channels measure no signal: " + "; ".join(parts)


def _copies_report(copies: list[int], health: Any, geometry: ArrayGeometry) -> str:
    """Channels whose sweeps copy another channel's: live paths, so not dead, but the switch matrix
    selected another channel's ports for them (a relay stuck on its neighbour, a miswired control
    line), and imaging would place their echoes with the wrong antennas' geometry."""
    ports, rest = _by_port(copies, geometry)
    named = [f"every channel of {', '.join(ports)}"] if ports else []
    if rest:
        named.append(_channel_list(rest, health, geometry))
    return (
        f"{len(copies)} of {geometry.n_channels} channels measure the same path as another channel: "
        f"{'; '.join(named)}: the switch matrix does not select their ports (check its relays and the "
        "controller's wiring to them)"
    )


def disarm_switch(config: EdgeConfig) -> str | None:
    """Stop a hardware-stepped controller stepping, on a connection of its own; None when done, else
    what to do by hand.

    The radar check arms the controller (radar.switch.step = "trigger") and RadarSource leaves it
    armed when it closes, as the service expects to re-arm it. After the self-test, though, comes a
    technician typing `SEL <tx> <rx>` from `vrclip-firmware channels`, which an armed controller
    refuses (ERR 106), and every pulse of the VNA's trigger output would still move the switch.
    """
    from vrclip.edge.radar.errors import RadarError
    from vrclip.edge.radar.switch import SwitchClient

    switch = SwitchClient.from_config(config.radar.switch)
    try:
        switch.connect()
        switch.disarm()
    except RadarError as exc:
        return (
            f"the controller may still be armed for hardware stepping ({exc}); send it DISARM, or "
            "power-cycle it, before selecting pairs by hand"
        )
    finally:
        switch.close()
    return None


def run_radar_check(rig: Rig, check: Callable[[], Verdict], timeout_s: float, cancel: Cancel) -> CheckResult:
    """The radar check, then the controller disarmed whatever happened: a pass, a failure, a
    hang or Ctrl-C. A controller that cannot be disarmed turns a pass into a warning naming it.

    `cancel` (the one `check` registers its source with) is cancelled before disarming after a
    hang or Ctrl-C: the check's thread, still stuck in a driver call, cannot arm it again later.
    """
    if rig.config.radar.switch.step != "trigger":
        return run_bounded("radar", check, timeout_s, on_timeout=cancel.cancel)
    try:
        result = run_bounded("radar", check, timeout_s, on_timeout=cancel.cancel)
    except KeyboardInterrupt:
        cancel.cancel()
        disarm_switch(rig.config)  # best effort: the interrupt is what the user asked for
        raise
    problem = disarm_switch(rig.config)
    if problem is None:
        return result
    status: Status = "fail" if result.status == "fail" else "warn"
    return replace(result, status=status, detail=f"{result.detail}; {problem}")


def _by_port(channels: list[int], geometry: ArrayGeometry) -> tuple[list[str], list[int]]:
    """The ports all of whose channels are among `channels`, and the channels no such port covers."""
    found = whole_ports(channels, geometry)
    covered = set().union(*(of_port for _, of_port in found))
    return [name for name, _ in found], [c for c in channels if c not in covered]


def _channel_list(channels: list[int], health: Any, geometry: ArrayGeometry, most: int = 8) -> str:
    named = [
        f"channel {c} ({geometry.channel_name(c)}, {health.level_db[c]:+.0f} dB)" for c in channels[:most]
    ]
    more = f" and {len(channels) - most} more" if len(channels) > most else ""
    return ", ".join(named) + more


def check_calibration(rig: Rig) -> Verdict:
    from vrclip.edge.pipeline.app import configured_calibration

    if rig.simulated:
        return Verdict("pass", "the simulated rig carries its own calibration")
    path = rig.config.paths.calibration_file
    # The switch check owns the array geometry: unreadable, it leaves only the file's channel count
    # unjudged here, not the whole file failed with the geometry's error.
    problem = rig.geometry_problem()
    calibration, warning = configured_calibration(rig.config, None if problem else rig.geometry.n_channels)
    if problem is not None:
        said = warning or (
            f"{path}: no calibration"
            if calibration is None
            else f"{path}: {calibration.n_channels} channels, measured with this sweep"
        )
        return Verdict("warn", f"{said}; its channel count not judged: {problem}", {"path": path})
    if calibration is None or warning is not None:
        return Verdict("warn", warning or f"{path}: no calibration", {"path": path})
    return Verdict(
        "pass", f"{path}: {calibration.n_channels} channels, measured with this sweep", {"path": path}
    )


# ---------------------------------------------------------------------------------------- cameras
def _read_for(source: FrameSource, seconds: float, most: int, summarise: Callable[[Any], Any]) -> list[Any]:
    """`summarise(frame)` of each frame from an opened source for `seconds` (at most `most`). Only
    the summaries are kept: a minute of 1280x720 frames at 30 frames/s is 5 GB."""
    summaries, deadline = [], time.monotonic() + seconds
    while len(summaries) < most and time.monotonic() < deadline:
        frame = source.read()
        if frame is None:
            break
        summaries.append(summarise(frame))
    return summaries


def _measured_rate(t_ns: list[int]) -> float | None:
    if len(t_ns) < 2:
        return None
    span = (t_ns[-1] - t_ns[0]) / 1e9
    return (len(t_ns) - 1) / span if span > 0 else None


class _CameraSummary:
    """Per camera frame: its time, size and mean level, and whether the image differs from the
    first one (only the first image is kept to compare)."""

    def __init__(self) -> None:
        self.first: np.ndarray | None = None
        self.changed = False

    def __call__(self, frame: Any) -> tuple[int, tuple[int, ...], float]:
        if self.first is None:
            self.first = frame.rgb
        elif not self.changed:
            self.changed = not np.array_equal(self.first, frame.rgb)
        return frame.t_ns, frame.rgb.shape[:2], float(np.mean(frame.rgb))


def check_camera(rig: Rig, seconds: float) -> Verdict:
    want = rig.config.camera
    source = rig.camera()
    summary = _CameraSummary()
    try:
        source.open()
        frames = _read_for(source, seconds, most=int(want.fps * seconds) + 2, summarise=summary)
    finally:
        source.close()
    if len(frames) < 2:
        raise CheckFailed(
            f"camera {want.device!r}: {len(frames)} frame(s) in {seconds:g} s; is it connected?"
        )
    rate = _measured_rate([t_ns for t_ns, _, _ in frames])
    means = [mean for _, _, mean in frames]
    frozen = not summary.changed
    height, width = frames[0][1]
    figures = {"frames": len(frames), "frames_per_s": rate, "size": [width, height], "mean_level": means[-1]}
    rate_text = f"{rate:.1f} frames/s" if rate is not None else "an unknown rate"
    detail = f"{width}x{height} at {rate_text}, mean level {means[-1]:.0f}/255"
    problems = []
    if rate is None:
        # The synchroniser pairs frames by these times: frames that all carry one cannot be paired.
        problems.append("no frame rate can be measured: the frames' times do not advance")
    elif rate < RATE_TOLERANCE * want.fps:
        problems.append(f"camera.fps is {want.fps:g} but it delivers {rate:.1f}")
    if max(means) < DARK_MEAN:
        problems.append("the image is black: a lens cap, or no light in the room")
    if frozen:
        problems.append("every frame is the same image: the camera is not streaming live")
    if problems:
        return Verdict("warn", f"{detail}; " + "; ".join(problems), figures)
    return Verdict("pass", detail, figures)


def check_depth(rig: Rig, seconds: float) -> Verdict:
    if rig.depth is None:
        return Verdict("skip", "zed.enabled = false")
    want = rig.config.zed
    source = rig.depth()
    try:
        source.open()
        frames = _read_for(
            source,
            seconds,
            most=int(want.fps * seconds) + 2,
            summarise=lambda f: (f.t_ns, float(np.isfinite(f.depth).mean()), len(f.positions)),
        )
    finally:
        source.close()
    if not frames:
        raise CheckFailed(f"ZED: no depth frame in {seconds:g} s; is it connected?")
    valid = float(np.mean([share for _, share, _ in frames]))
    people = max(n for _, _, n in frames)
    rate = _measured_rate([t_ns for t_ns, _, _ in frames])
    figures = {"frames": len(frames), "frames_per_s": rate, "valid_depth": round(valid, 3), "people": people}
    rate_text = f" at {rate:.1f} frames/s" if rate is not None else ""
    detail = f"{len(frames)} depth frames{rate_text}, {valid:.0%} of pixels with depth, {people} people seen"
    if valid < MIN_VALID_DEPTH:
        return Verdict(
            "warn", f"{detail}; the ZED sees little depth: is its lens covered or facing a wall?", figures
        )
    if rate is not None and rate < RATE_TOLERANCE * want.fps:
        return Verdict("warn", f"{detail}; zed.fps is {want.fps:g}", figures)
    return Verdict("pass", detail, figures)


# ----------------------------------------------------------------------------------------- engine
def check_engine(rig: Rig) -> Verdict:
    from vrclip.edge.crops import camera_from_config
    from vrclip.edge.pipeline.app import open_backend, require_engine_exists
    from vrclip.edge.pipeline.identify import Identifier
    from vrclip.edge.sim.radar import sweep_frequencies

    config = rig.config
    require_engine_exists(config, rig.engine)
    # The switch check owns the array geometry: unreadable, it leaves only the engine's fit to the
    # array unjudged here; the engine still opens and runs a sample.
    problem = rig.geometry_problem()
    backend = open_backend(config, rig.engine)
    try:
        if problem is None:
            # What `run` builds around the engine: refuses an engine made for another array or window.
            Identifier(
                config,
                rig.geometry,
                sweep_frequencies(config.radar.sweep),
                backend,
                camera=camera_from_config(config),
            )
        feeds = {spec.name: np.zeros(spec.concrete(1), spec.numpy_dtype) for spec in backend.inputs}
        started = time.perf_counter()
        backend.infer(feeds)
        latency_ms = (time.perf_counter() - started) * 1e3
        described = backend.describe()
    finally:
        backend.close()
    figures = {**described, "latency_ms": round(latency_ms, 2)}
    engine = f"{described.get('model')} on {described.get('backend')} ({backend.source})"
    if problem is not None:
        return Verdict(
            "warn",
            f"{engine}: one sample in {latency_ms:.0f} ms; its fit to this rig not judged: {problem}",
            figures,
        )
    return Verdict("pass", f"{engine}: fits this rig, one sample in {latency_ms:.0f} ms", figures)


# ---------------------------------------------------------------------------------------- gallery
def _engine_model(engine: str) -> tuple[int, str] | None:
    """The engine's embedding length and model (`embedding_space`, "" if its manifest predates it),
    from its manifest; None where the manifest cannot be read (the engine check says why)."""
    from vrclip.edge.inference.factory import PackagePaths
    from vrclip.edge.manifest import load_manifest
    from vrclip.edge.pipeline.enrolment import manifest_embedding_dim

    try:
        manifest = load_manifest(PackagePaths.of(engine).manifest)
        return manifest_embedding_dim(manifest), manifest.embedding_space
    except (UserError, OSError, ValueError, IndexError):
        return None


def _restore_hint(rig: Rig) -> str:
    from vrclip.edge.gallery.backup import backups

    folder = rig.config.gallery.backup_dir
    copies = backups(Path(folder)) if folder else []
    if copies:
        # A power cut leaves the damaged gallery's write-ahead log beside it, and SQLite would replay
        # that log onto the restored copy (pages of another state: a damaged gallery again).
        gallery = rig.config.gallery.path
        return (
            f"stop the service, delete {gallery}-wal and {gallery}-shm if they are there, copy the newest "
            f"daily copy ({copies[-1]}) over gallery.path, and start it"
        )
    return "restore it from a copy (`vrclip-edge gallery export` makes one) or enrol everyone again"


def check_gallery(rig: Rig) -> Verdict:
    """The gallery the service matches against: readable, undamaged, made by this engine's model."""
    from vrclip.edge.gallery.store import GalleryDamaged, GalleryStore, model_mismatch

    if rig.simulated:
        return Verdict("skip", "the simulated rig enrols its own people")
    path = Path(rig.config.gallery.path)
    if not path.exists():
        return Verdict(
            "warn",
            f"{path} (gallery.path): nobody is enrolled yet, so everyone will be reported unknown; "
            "enrol people with `vrclip-edge enroll NAME`",
        )
    try:
        with GalleryStore(path, create=False) as store:
            integrity = store.integrity_check()
            infos = store.identities()
            dim = store.dim
            space = store.embedding_space
    except GalleryDamaged as exc:
        # A damaged page (a power cut mid-write) may open, then fail the integrity check itself.
        raise CheckFailed(f"{path}: the gallery is damaged ({exc.reason}); {_restore_hint(rig)}") from None
    exemplars = sum(i.exemplars for i in infos)
    figures = {"path": str(path), "identities": len(infos), "exemplars": exemplars, "dim": dim}
    if integrity != "ok":
        raise CheckFailed(
            f"{path}: the gallery is damaged (SQLite integrity check: {integrity[:200]}); "
            + _restore_hint(rig),
            figures,
        )
    model = _engine_model(rig.engine)
    wanted, engine_space = model if model is not None else (None, "")
    if wanted is not None and dim is not None and dim != wanted:
        raise CheckFailed(
            f"{path}: its embeddings have {dim} numbers but the engine {rig.engine} gives {wanted}: the "
            "gallery was enrolled with another model; enrol everyone again with this engine, or point "
            "gallery.path at that model's gallery",
            figures,
        )
    if space and engine_space and space != engine_space and exemplars:
        raise CheckFailed(model_mismatch(path, space, rig.engine, engine_space), figures)
    if space is None and engine_space and exemplars:
        return Verdict(
            "warn",
            f"{path}: {len(infos)} identities, {exemplars} exemplars, enrolled before galleries recorded "
            f"their model: the next run ties it to the model of {rig.engine}; if they were enrolled with "
            "another model (a retrained engine), enrol them again",
            figures,
        )
    return Verdict(
        "pass", f"{path}: {len(infos)} identities, {exemplars} exemplars, {dim} numbers each", figures
    )


# ------------------------------------------------------------------------------------------- disk
def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (a folder the service creates on first use)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(rig: Rig) -> Verdict:
    """Free space where the service writes: recordings, events, the gallery, its state."""
    config = rig.config
    places = {
        "paths.data_dir": Path(config.paths.data_dir),
        "paths.recordings_dir": Path(config.paths.recordings_dir),
        "gallery.path": Path(config.gallery.path).parent,
    }
    if config.sinks.jsonl_path:  # empty: no events file (not the folder the self-test runs in)
        places["sinks.jsonl_path"] = Path(config.sinks.jsonl_path).parent
    free = {key: shutil.disk_usage(_existing(folder)).free for key, folder in places.items()}
    figures = {key: {"folder": str(places[key]), "free_bytes": n} for key, n in free.items()}
    key = min(free, key=free.__getitem__)
    least = f"{free[key] / 2**30:.1f} GiB free for {key} ({places[key]})"
    if free[key] < FULL_DISK_BYTES:
        raise CheckFailed(
            f"{least}: the service cannot record or enrol there; free space on that disk", figures
        )
    if free[key] < LOW_DISK_BYTES:
        return Verdict("warn", f"{least}: recordings take ~8 GB an hour; free space on that disk", figures)
    return Verdict("pass", least, figures)


# ------------------------------------------------------------------------------------------ clock
def check_clock(rig: Rig) -> Verdict:
    """Every frame is stamped with CLOCK_REALTIME: recordings and events of several boxes line up
    only when each box's clock follows one reference."""
    from vrclip.edge.timebase.clock_sync import read_clock_sync

    sync = read_clock_sync()
    if sync is None:
        return Verdict(
            "skip", "the kernel does not say whether the clock is synchronised (not Linux, or refused)"
        )
    figures = asdict(sync)
    if not sync.synchronised:
        return Verdict(
            "warn",
            f"{sync.describe()}: this box's recordings and events will not line up with other boxes'; "
            "enable NTP (chrony or systemd-timesyncd) or PTP (ptp4l with phc2sys -r, which tells the kernel)",
            figures,
        )
    slop_ms = rig.config.sync.slop_ms
    if sync.est_error_s * 1e3 > slop_ms / 2:
        return Verdict(
            "warn",
            f"{sync.describe()}: more than half of sync.slop_ms ({slop_ms:g} ms), within which frames "
            "of different boxes are paired",
            figures,
        )
    return Verdict("pass", sync.describe(), figures)


# ----------------------------------------------------------------------------------------- driver
@dataclass(frozen=True)
class SelfTestOptions:
    frames: int = 4
    camera_seconds: float = 2.0
    timeout_s: float = DEFAULT_TIMEOUT_S
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.skip) - set(CHECKS))
        if unknown:
            raise UserError(f"--skip {','.join(unknown)}: not a check; the checks are {', '.join(CHECKS)}")


def run_selftest(
    rig: Rig, options: SelfTestOptions, announce: Callable[[str], None] | None = None
) -> list[CheckResult]:
    """Every check in order; `announce(name)` before each (for a progress line)."""
    radar_cancel = Cancel()
    plan: dict[str, Callable[[], Verdict]] = {
        "switch": lambda: check_switch(rig),
        "vna": lambda: check_vna(rig),
        "radar": lambda: check_radar(rig, options.frames, radar_cancel),
        "calibration": lambda: check_calibration(rig),
        "camera": lambda: check_camera(rig, options.camera_seconds),
        "depth": lambda: check_depth(rig, options.camera_seconds),
        "engine": lambda: check_engine(rig),
        "gallery": lambda: check_gallery(rig),
        "disk": lambda: check_disk(rig),
        "clock": lambda: check_clock(rig),
    }
    results: dict[str, CheckResult] = {}
    for name in CHECKS:
        if name in options.skip:
            results[name] = CheckResult(name, "skip", "skipped (--skip)")
            continue
        if name == "radar" and any(results[n].status in ("fail", "skip") for n in ("switch", "vna")):
            down = [n for n in ("switch", "vna") if results[n].status in ("fail", "skip")]
            results[name] = CheckResult(name, "skip", f"needs the {' and the '.join(down)} first")
            continue
        if announce is not None:
            announce(name)
        if name == "radar":
            results[name] = run_radar_check(rig, plan[name], options.timeout_s, radar_cancel)
        else:
            results[name] = run_bounded(name, plan[name], options.timeout_s)
    return [results[n] for n in CHECKS]


@contextlib.contextmanager
def simulated_rig(
    config: EdgeConfig, engine: str, *, errors: Any = None, people: int = 2, sweep_time_ms: float = 0.2
) -> Iterator[Rig]:
    """The simulated rig: the SCPI VNA and switch simulators on loopback (talked to by the real
    drivers), and the simulated camera and ZED, all seeing the same people walk. `errors`
    (FrontEndErrors) replaces the simulated front end's, e.g. with a dead path."""
    from vrclip.edge.pipeline.sources import SimulatedSource
    from vrclip.edge.radar.sim_process import SimulatorProcess
    from vrclip.edge.sim.rig import SimulatedRig
    from vrclip.edge.sim.scene import SceneSpec

    names = tuple(f"person-{i + 1:02d}" for i in range(people))
    spec = SceneSpec(room=config.room, people=names, seed=1)
    epoch_ns = time.time_ns()
    streams = ("radar", "camera", "depth") if config.zed.enabled else ("radar", "camera")
    sim_rig = SimulatedRig(config, spec, start_ns=epoch_ns, streams=streams)
    with SimulatorProcess(
        spec,
        config.radar.sweep,
        dialect=config.radar.vna.dialect,
        sweep_time_s=sweep_time_ms / 1e3,
        errors=errors if errors is not None else sim_rig.radar.errors,
        array=config.radar.array,
        epoch_ns=epoch_ns,
    ) as simulator:
        depth = (
            (lambda: SimulatedSource(sim_rig, "depth", config.zed.fps, epoch_ns))
            if config.zed.enabled
            else None
        )
        yield Rig(
            simulator.edge_config(config),
            camera=lambda: SimulatedSource(sim_rig, "camera", config.camera.fps, epoch_ns),
            depth=depth,
            engine=engine,
            simulated=True,
        )


def hardware_rig(config: EdgeConfig, engine: str | None) -> Rig:
    from vrclip.edge.pipeline.sources import OpenCvCameraSource, ZedDepthSource

    return Rig(
        config,
        camera=lambda: OpenCvCameraSource(config),
        depth=(lambda: ZedDepthSource(config)) if config.zed.enabled else None,
        engine=engine or config.engine.path,
    )


def check_report_path(path: Path) -> None:
    """Refuse a report path that cannot be written, before any check runs: a folder, a parent folder
    that is missing (never created: a typo there would put the report where nobody looks) or one
    that takes no new file. Nothing is written at `path`; what only the write can tell (a full
    disk) is still reported at the end, after the results were printed."""
    path = Path(path)
    parent = path.absolute().parent
    problem = None
    try:
        if path.is_dir():
            problem = f"it is a folder; give a file name, e.g. {path / 'selftest.json'}"
        elif not parent.exists():
            problem = f"the folder {parent} does not exist; create it first or choose another folder"
        elif not parent.is_dir():
            problem = f"{parent} is not a folder"
        else:
            # The report is written beside its final name and renamed: that is what must work here.
            with tempfile.TemporaryFile(dir=parent):
                pass
    except OSError as exc:
        problem = f"cannot create a file in {parent} ({exc.strerror or exc}); choose a writable folder"
    if problem is not None:
        raise UserError(f"cannot write the self-test report to {path}: {problem}")


def write_report(path: Path, results: list[CheckResult]) -> Path:
    """The results as JSON, written atomically (a crash leaves the old report or none). A path that
    cannot be written is the user's to fix: a UserError naming it, not a traceback. The path is
    checked again (`check_report_path`): a folder removed since the start is not created again."""
    from vrclip.edge.manifest import atomic_write_bytes

    check_report_path(path)
    doc = {
        "passed": not any(r.status == "fail" for r in results),
        "checks": [r.to_dict() for r in results],
    }
    try:
        atomic_write_bytes(Path(path), (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write the self-test report to {path}: {exc.strerror or exc}") from None
    return Path(path)


def format_results(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    return "\n".join(f"{r.name:<{width}}  {r.status.upper():<4}  {r.detail}" for r in results)


__all__ = [
    "CHECKS",
    "CheckResult",
    "Rig",
    "SelfTestOptions",
    "check_report_path",
    "format_results",
    "hardware_rig",
    "run_selftest",
    "simulated_rig",
    "write_report",
]
