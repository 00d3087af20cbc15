"""The radar step of the on-site wizard: empty room, then a reflector, then the calibration file.

The two measurements go through the runtime's own radar drivers (VNA + switch matrix), on the real
rig or on the SCPI simulators (`--simulate`: the same simulated front end as `vrclip-edge run
--simulate`, served first as an empty room and then with a reflector where the operator was asked
to put one). The file is written only when the measurement passes `check_quality`, atomically, and
the calibration it replaces is kept beside it as `<file>.prev`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.calibration.channels import (
    Averaged,
    ChannelFit,
    average_frames,
    check_quality,
    fit_channels,
    reflector_response,
)
from vrclip.calibration.files import replace_keeping_previous
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import ArrayGeometry, load_geometry
from vrclip.edge.imaging.drift import CouplingReference
from vrclip.edge.radar.errors import RadarError
from vrclip.edge.sim.radar import sweep_frequencies

#: The simulated reflector's strength (a corner reflector of a few dBsm in the simulator's units).
SIMULATED_REFLECTOR_AMPLITUDE = 3.0
#: Consecutive failed reconnections, or consecutive frames the radar failed to measure, after which
#: a measurement gives up instead of waiting (or retrying) forever.
RECONNECT_ATTEMPTS = 3

STEPS = ("empty", "reflector")


@dataclass(frozen=True)
class WizardResult:
    fit: ChannelFit
    path: Path
    previous: Path | None


@contextlib.contextmanager
def _radar(config: EdgeConfig) -> Iterator[Callable[[], np.ndarray]]:
    """A reader of radar frames through the real drivers, raising UserError on a radar fault."""
    from vrclip.edge.radar.source import RadarSource

    where = f"radar (VNA {config.radar.vna.resource}, switch {config.radar.switch.port})"
    try:
        source = RadarSource.from_config(
            config, max_reconnect_attempts=RECONNECT_ATTEMPTS, max_dropped_frames=RECONNECT_ATTEMPTS
        )
        source.open()
    except RadarError as exc:
        raise UserError(f"{where}: cannot connect: {exc}") from None

    def read() -> np.ndarray:
        try:
            frame = source.read_frame()
        except RadarError as exc:
            raise UserError(f"{where}: measurement failed: {exc}") from None
        if frame is None:
            raise UserError(f"{where}: the radar closed during the measurement")
        return frame.s21

    try:
        yield read
    finally:
        source.close()


@contextlib.contextmanager
def _simulated_radar(
    config: EdgeConfig, step: str, reflector: np.ndarray, geometry: ArrayGeometry
) -> Iterator[Callable[[], np.ndarray]]:
    """The SCPI simulators serving the empty room or the room with the reflector, read through the
    real drivers."""
    from vrclip.edge.radar.sim_process import SimulatorProcess
    from vrclip.edge.sim.radar import SIMULATED_FRONT_END_SEED, FrontEndErrors
    from vrclip.edge.sim.scene import SceneSpec

    target = ((*map(float, reflector), SIMULATED_REFLECTOR_AMPLITUDE),) if step == "reflector" else ()
    # The scene seed seeds the simulated VNA's thermal noise: each step gets its own, as on a real rig.
    # With one seed for both, the two measurements drew the same noise and their difference (the
    # reflector alone) came out noise-free, so the simulated rig hid how noise limits the fit.
    spec = SceneSpec(room=config.room, people=(), empty_room=True, reflectors=target, seed=STEPS.index(step))
    errors = FrontEndErrors.draw(geometry.n_channels, SIMULATED_FRONT_END_SEED)
    with (
        SimulatorProcess(
            spec,
            config.radar.sweep,
            dialect=config.radar.vna.dialect,
            errors=errors,
            array=config.radar.array,
        ) as simulator,
        _radar(simulator.edge_config(config)) as read,
    ):
        yield read


def write_calibration(path: Path, fit: ChannelFit, extra: dict[str, Any]) -> Path | None:
    """Write the calibration file atomically (through a symbolic link); returns where the one it
    replaced was kept, if any."""
    doc = {**fit.calibration.to_dict(), **extra}
    data = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
    _, previous = replace_keeping_previous(
        path,
        data,
        "the calibration",
        "choose a writable path with --out or run as a user who may write there",
    )
    return previous


def run_wizard(
    config: EdgeConfig,
    reflector: np.ndarray,
    out: Path,
    *,
    frames: int,
    simulate: bool,
    prompt: Callable[[str], None],
    tick: Callable[[str], Callable[[], None]],
) -> WizardResult:
    """Measure the empty room and the reflector, fit, check, write. `prompt(step)` waits for the
    operator before each measurement; `tick(step)` makes a per-frame progress callback."""
    geometry = load_geometry(config.radar.array)
    freqs = sweep_frequencies(config.radar.sweep)
    position = np.asarray(reflector, np.float64)
    reflector_response(
        geometry, freqs, position
    )  # refuses a position too close to the array, before measuring
    measured: dict[str, Averaged] = {}
    for step in STEPS:
        prompt(step)
        opened = _simulated_radar(config, step, position, geometry) if simulate else _radar(config)
        with opened as read:
            measured[step] = average_frames(read, frames, tick(step))
    fit = fit_channels(measured["empty"], measured["reflector"], geometry, freqs, position)
    check_quality(fit)
    # Each channel's direct coupling in the empty room, where the fitted cable delay and the antennas'
    # separation put it: what the running rig compares itself with to see its paths drift.
    coupling = CouplingReference.of_rig(measured["empty"].mean, freqs, geometry, fit.calibration.delay_s)
    fit = replace(fit, calibration=replace(fit.calibration, coupling=coupling))
    extra = {
        "source": "vrclip-calibrate channels" + (" (simulated rig)" if simulate else ""),
        "measured_ns": time.time_ns(),
        "reflector_m": [float(v) for v in position],
        "frames": frames,
        "snr_db_median": round(float(np.median(fit.snr_db)), 2),
        "coherence": round(fit.coherence, 5),
        "coherence_uncalibrated": round(fit.coherence_uncalibrated, 5),
    }
    previous = write_calibration(out, fit, extra)
    return WizardResult(fit, out, previous)
