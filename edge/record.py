"""Record a session from the simulated rig into an HDF5 recording, with a progress bar.

The writer flushes periodically, so a recording cut off (power loss, kill -9) keeps every frame
up to its last flush.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vrclip.edge.config import EdgeConfig, config_to_toml
from vrclip.edge.errors import UserError
from vrclip.edge.frames import CLOCK_SIMULATED
from vrclip.edge.recording.writer import SessionWriter
from vrclip.edge.sim.rig import STREAMS, SimulatedRig
from vrclip.edge.sim.scene import SceneSpec


@dataclass(frozen=True)
class RecordRequest:
    out: Path
    seconds: float
    spec: SceneSpec
    streams: tuple[str, ...] = STREAMS
    overwrite: bool = False
    flush_interval_s: float = 1.0
    start_ns: int | None = None
    extra_conditions: dict | None = None


def check_session_seconds(seconds: float) -> None:
    """Refuse a session length that is not a positive finite number of seconds. The option parser
    lets `inf` through, which otherwise ended in an OverflowError deep in the simulator or the live
    recorder, and 0 wrote an empty recording."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--seconds {seconds}: a session lasts a positive, finite number of seconds")


def conditions_of(spec: SceneSpec, seconds: float, extra: dict | None = None) -> dict:
    return {
        "source": "simulated",
        "people": list(spec.people),
        "lighting": spec.lighting,
        "occlusion": spec.occlusion,
        "seed": spec.seed,
        "world_seed": spec.world_seed,
        "seconds": seconds,
        **(extra or {}),
    }


def simulated_calibration(rig: SimulatedRig) -> dict:
    """The per-channel calibration of the simulated front end, in the channel-calibration file format.

    On a real rig the calibration wizard measures these; the simulator knows them exactly, so its
    recordings carry them as if a perfect calibration had been run (marked as such).
    """
    errors = rig.radar.errors
    return {
        "format": "vrclip-channel-calibration",
        "version": 1,
        "channels": int(errors.gain.size),
        "gain_re": errors.gain.real.tolist(),
        "gain_im": errors.gain.imag.tolist(),
        "delay_s": errors.delay_s.tolist(),
        "source": "simulator ground truth",
    }


def simulated_session_id(config_toml: str, conditions: str, start_ns: int, streams: tuple[str, ...]) -> str:
    """The session_id of a simulated recording: a digest of what determines its content, not a random one.

    The simulator is deterministic for its settings, so the same settings write the same recording,
    and a checkpoint that records its sessions' ids (`vrclip-export train`) must accept a dataset
    made again with the same options (on another box, after deleting it), while refusing one made
    with others (another seed: other people under the same file names)."""
    digest = hashlib.sha256(
        json.dumps([config_toml, conditions, int(start_ns), list(streams)]).encode("utf-8")
    ).hexdigest()
    return digest[:32]


def record_simulated(
    config: EdgeConfig,
    request: RecordRequest,
    progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Run the simulated rig for `request.seconds` and write every frame; returns frames per stream.
    `stop()` turning true (Ctrl-C, through the CLI's signal flag) ends it early with the file closed."""
    check_session_seconds(request.seconds)
    rig = SimulatedRig(config, request.spec, start_ns=request.start_ns, streams=request.streams)
    total = rig.frame_count(request.seconds)
    cam = config.camera
    config_toml = config_to_toml(config)
    conditions = json.dumps(conditions_of(request.spec, request.seconds, request.extra_conditions))
    writer = SessionWriter(
        request.out,
        session_id=simulated_session_id(config_toml, conditions, rig.start_ns, request.streams),
        config_toml=config_toml,
        geometry=rig.geometry.to_dict(),
        freqs_hz=rig.freqs_hz,
        radar_channels=rig.geometry.n_channels,
        calibration=simulated_calibration(rig),
        conditions=conditions,
        identities=list(request.spec.people),
        camera_size=(cam.height, cam.width) if "camera" in request.streams else None,
        depth_size=(
            (config.zed.depth_height, config.zed.depth_width)
            if "depth" in request.streams and config.zed.enabled
            else None
        ),
        clock=CLOCK_SIMULATED,
        created_ns=rig.start_ns,
        max_people=max(8, len(request.spec.people)),
        flush_interval_s=request.flush_interval_s,
        jpeg_quality=cam.jpeg_quality,
        overwrite=request.overwrite,
    )
    with writer:
        for done, frame in enumerate(rig.frames(request.seconds), start=1):
            writer.write(frame)
            if progress is not None:
                progress(done, total)
            if stop is not None and stop():
                writer.mark_cut_short()
                break
        return dict(writer.counts)
