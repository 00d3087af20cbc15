"""Make a synthetic VRR-like dataset: many identities, several sessions each, under varied conditions.

One HDF5 recording per (identity, session), one person per recording, like the VRR captures the
trainer is written for. Sessions are written to `<name>.h5.partial` and renamed when complete,
so an interrupted run is resumed by running the same command again: finished sessions are kept.
A `dataset.json` index lists every session with its identity and conditions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from vrclip.edge.config import EdgeConfig, config_to_toml, parse_config
from vrclip.edge.errors import UserError
from vrclip.edge.record import RecordRequest, record_simulated
from vrclip.edge.sim.scene import LIGHTING_PRESETS, OCCLUSION_PRESETS, SceneSpec

INDEX_NAME = "dataset.json"
#: Condition cycle: every identity gets the hard cases (dark, occluded) as well as the easy one.
CONDITIONS: tuple[tuple[str, str], ...] = (
    ("day", "none"),
    ("night", "none"),
    ("dusk", "furniture"),
    ("day", "wall"),
    ("night", "furniture"),
    ("dusk", "none"),
)


@dataclass(frozen=True)
class SessionPlan:
    identity: str
    session: int
    lighting: str
    occlusion: str
    seed: int
    seconds: float
    path: str
    #: Who the identities are; one value for the whole dataset so id-007 is one person throughout.
    world_seed: int = 0


@dataclass(frozen=True)
class DatasetRequest:
    out_dir: Path
    identities: int = 20
    sessions: int = 3
    seconds: float = 12.0
    seed: int = 42
    jobs: int = 2
    camera_width: int = 640
    camera_height: int = 360
    rate_hz: float = 10.0


def plan_sessions(request: DatasetRequest) -> list[SessionPlan]:
    if request.identities < 1:
        raise UserError(f"--identities {request.identities}: need at least one identity")
    if request.sessions < 1:
        raise UserError(f"--sessions {request.sessions}: need at least one session per identity")
    if request.seconds <= 0:
        raise UserError(f"--seconds {request.seconds}: must be positive")
    plans = []
    for i in range(request.identities):
        name = f"id-{i:03d}"
        for s in range(request.sessions):
            lighting, occlusion = CONDITIONS[(s + i) % len(CONDITIONS)]
            assert lighting in LIGHTING_PRESETS and occlusion in OCCLUSION_PRESETS
            seed = request.seed * 100_003 + i * 101 + s
            path = f"{name}/session-{s:02d}_{lighting}_{occlusion}.h5"
            plans.append(SessionPlan(name, s, lighting, occlusion, seed, request.seconds, path, request.seed))
    return plans


def dataset_config(request: DatasetRequest, base: EdgeConfig) -> EdgeConfig:
    """The base config with the dataset's camera size and one common rate for radar and camera. A
    measured principal point moves with the size: its offset from the image centre scales with the
    focal length in pixels (hfov_deg stays), in OpenCV's convention (centre (W - 1) / 2)."""
    data = base.model_dump(mode="json")
    cam = base.camera
    if cam.principal_px is not None:
        scale = request.camera_width / cam.width
        data["camera"]["principal_px"] = [
            (request.camera_width - 1) / 2 + (cam.principal_px[0] - (cam.width - 1) / 2) * scale,
            (request.camera_height - 1) / 2 + (cam.principal_px[1] - (cam.height - 1) / 2) * scale,
        ]
    data["camera"].update(width=request.camera_width, height=request.camera_height, fps=request.rate_hz)
    data["radar"]["frame_rate_hz"] = request.rate_hz
    data["zed"]["fps"] = request.rate_hz / 2
    return parse_config(data, source="dataset settings")


def _make_session(config_toml: str, plan: SessionPlan, out_dir: str) -> str:
    """Worker: write one session to a .partial file, then rename it into place."""
    import tomllib

    config = parse_config(tomllib.loads(config_toml))
    final = Path(out_dir) / plan.path
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    partial.unlink(missing_ok=True)
    spec = SceneSpec(
        room=config.room,
        people=(plan.identity,),
        occlusion=plan.occlusion,
        lighting=plan.lighting,
        seed=plan.seed,
        world_seed=plan.world_seed,
    )
    record_simulated(
        config,
        RecordRequest(
            partial,
            plan.seconds,
            spec,
            start_ns=plan.seed * 1_000_000_000,
            extra_conditions={"session": plan.session},
        ),
    )
    os.replace(partial, final)
    return plan.path


def make_dataset(
    request: DatasetRequest, base: EdgeConfig, progress: Callable[[int, int, str], None] | None = None
) -> Path:
    """Write every planned session not already present; returns the path of the dataset index."""
    out = Path(request.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dataset_config(request, base)
    plans = plan_sessions(request)
    index = {
        "format": "vrclip-dataset",
        "version": 1,
        "request": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(request).items()},
        "config_toml": config_to_toml(config),
        "sessions": [asdict(p) for p in plans],
    }
    todo = [p for p in plans if not (out / p.path).is_file()]
    done = len(plans) - len(todo)
    if progress:
        progress(done, len(plans), "")
    toml_text = config_to_toml(config)
    jobs = max(1, min(request.jobs, len(todo) or 1))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(_make_session, toml_text, p, str(out)) for p in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                path = future.result()
                done += 1
                if progress:
                    progress(done, len(plans), path)
    index_path = out / INDEX_NAME
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, index_path)
    return index_path
