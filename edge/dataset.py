"""Make a synthetic VRR-like dataset: many identities, several sessions each, under varied conditions.

One HDF5 recording per (identity, session), one person per recording, like the VRR captures the
trainer is written for. Sessions are written to `<name>.h5.partial` and renamed when complete,
so an interrupted run is resumed by running the same command again: finished sessions are kept
(once checked to have been made with the same settings).
A `dataset.json` index lists every session with its identity and conditions.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from vrclip.edge.config import EdgeConfig, config_to_toml, parse_config
from vrclip.edge.errors import UserError
from vrclip.edge.record import RecordRequest, check_session_seconds, conditions_of, record_simulated
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.sim.scene import LIGHTING_PRESETS, OCCLUSION_PRESETS, SceneSpec

INDEX_NAME = "dataset.json"
#: The training segment `vrclip-export train` draws per identity by default (its --segment-seconds):
#: one contiguous, fully labelled stretch of one session, so a shorter session cannot hold it.
TRAINING_SEGMENT_S = 10.0
#: Radar frames per RF sample (T) `vrclip-export train` uses by default (its --frames): the segment
#: holds at least this many frames, whatever --segment-seconds says.
TRAINING_FRAMES = 12
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
    check_session_seconds(request.seconds)
    if request.seed < 0:  # it seeds every session's numpy generators, which take no negative seed
        raise UserError(f"--seed {request.seed}: a dataset seed is a non-negative integer")
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


def session_frames(seconds: float, rate_hz: float) -> int:
    """Radar frames a simulated session of `seconds` at `rate_hz` holds (one at 0 s, one per period)."""
    return math.ceil(seconds * rate_hz - 1e-9)


def segment_frames(rate_hz: float, seconds: float = TRAINING_SEGMENT_S, frames: int = TRAINING_FRAMES) -> int:
    """Radar frames a training segment of `seconds` takes at `rate_hz`: the seconds counted in frames
    at the recorded rate, and at least T = `frames` (one RF sample). The trainer's own rule
    (`export.data.choose_segments`); the defaults are `vrclip-export train`'s."""
    return max(frames, round(seconds * rate_hz))


def shortest_training_seconds(rate_hz: float) -> float:
    """The shortest --seconds (to 0.1 s) whose sessions train with the defaults: they hold
    `segment_frames`. At 10 Hz that is 10 s (100 frames; 9.9 s hold 99); the trainer counts the
    segment in frames, so at 4 Hz 9.8 s (40 frames) do, and below 1.2 Hz the T frames take longer."""
    need = segment_frames(rate_hz)
    # Closed form, not a search in 0.1-s steps from a shorter length: at a rate of 1e-16 Hz (the
    # config takes any positive rate) that search never ended, 0.1 s being below the float's
    # resolution there. A session holds `need` frames once seconds * rate - 1e-9 > need - 1; the
    # few steps after it only absorb float rounding, and end however far that is.
    seconds = (math.floor((need - 1 + 1e-9) / rate_hz * 10) + 1) / 10
    for _ in range(3):
        if session_frames(seconds, rate_hz) >= need:
            break
        seconds = round(seconds + 0.1, 1)
    return seconds


def short_session_warning(seconds: float, rate_hz: float) -> str | None:
    """A warning for sessions too short for the trainer's default segment, else None.

    A warning, not a refusal: short datasets have their uses (a smoke test of the whole chain in
    seconds, calibration recordings for `vrclip-export quantize`, training with a lower
    --segment-seconds), but a user who meant to train with the defaults should learn it now, not
    after making the whole dataset. A session of fewer radar frames than one RF sample (T) is
    refused whatever --segment-seconds says, so then the warning names --frames too. The --seconds
    it advises is the shortest that trains with the defaults (the trainer's own rule, in frames),
    not a guess with a margin: a user sizing a long render by it pays for no seconds nobody needs."""
    if not (math.isfinite(seconds) and seconds > 0 and math.isfinite(rate_hz) and rate_hz > 0):
        # Refused with their own messages (check_session_seconds, the config) once the dataset is
        # planned: no warning about sessions of -50 frames first, and no OverflowError on `inf`.
        return None
    if not math.isfinite(seconds * rate_hz * TRAINING_SEGMENT_S):
        return None  # a rate far beyond the config's range, refused there: no frame count to judge
    frames = session_frames(seconds, rate_hz)
    if frames >= segment_frames(rate_hz):
        return None
    needs = []
    if frames < round(TRAINING_SEGMENT_S * rate_hz):
        needs.append(f"--segment-seconds {seconds:g} or less")
    if frames < TRAINING_FRAMES:
        needs.append(
            f"--frames {frames} or less ({frames} are fewer than the {TRAINING_FRAMES} of one RF sample)"
        )
    return (
        f"--seconds {seconds:g}: sessions hold {frames} radar frames at {rate_hz:g} Hz, too few for the "
        f"{TRAINING_SEGMENT_S:g}-s training segment ({segment_frames(rate_hz)} frames at that rate); "
        f"`vrclip-export train` refuses this dataset unless given {' and '.join(needs)} "
        f"(give --seconds {shortest_training_seconds(rate_hz):g} or more to train with the defaults)"
    )


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


def _scene_spec(config: EdgeConfig, plan: SessionPlan) -> SceneSpec:
    """The simulated scene of one planned session."""
    return SceneSpec(
        room=config.room,
        people=(plan.identity,),
        occlusion=plan.occlusion,
        lighting=plan.lighting,
        seed=plan.seed,
        world_seed=plan.world_seed,
    )


def _extra_conditions(plan: SessionPlan) -> dict:
    return {"session": plan.session}


def _flat(table: dict, prefix: str = "") -> dict[str, object]:
    """A parsed TOML table as {"camera.width": 640, ...}."""
    out: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: The config sections that shape what a session records: the radar and its array, the cameras and
#: the room. The others (engine, gallery, sinks, paths, imaging, sync) only matter to a runtime, so
#: editing them must not block resuming a dataset.
DATA_SECTIONS = ("radar", "camera", "zed", "room")


def _check_kept(path: Path, plan: SessionPlan, config: EdgeConfig, config_toml: str) -> None:
    """Refuse to keep a finished session that another run made with other settings.

    Resuming keeps every session file already there; one made with another --seed (another world:
    its id-000 is someone else), camera size, rate, length or site rig (DATA_SECTIONS of the config)
    would be mixed silently into a dataset whose index describes only this run. Config keys only one
    side has are skipped, so sessions from an older vrclip-edge with fewer settings still resume."""
    want = json.loads(
        json.dumps(conditions_of(_scene_spec(config, plan), plan.seconds, _extra_conditions(plan)))
    )
    with SessionReader(path) as reader:
        have, stored = reader.conditions, _flat(tomllib.loads(reader.config_toml))
    differ = [
        f"{key} {have.get(key)!r}, not {value!r}" for key, value in want.items() if have.get(key) != value
    ]
    current = _flat(tomllib.loads(config_toml))
    differ += [
        f"{key} {stored[key]!r}, not {current[key]!r}"
        for key in sorted(current.keys() & stored.keys())
        if key.split(".", 1)[0] in DATA_SECTIONS and stored[key] != current[key]
    ]
    if differ:
        shown = "; ".join(differ[:6]) + (f"; and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise UserError(
            f"{path}: made with other settings than this run ({shown}); rerun with the options that "
            "made it to resume, give another --out, or delete the folder to make it anew"
        )


def _make_session(config_toml: str, plan: SessionPlan, out_dir: str) -> str:
    """Worker: write one session to a .partial file, then rename it into place."""
    config = parse_config(tomllib.loads(config_toml))
    final = Path(out_dir) / plan.path
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    partial.unlink(missing_ok=True)
    record_simulated(
        config,
        RecordRequest(
            partial,
            plan.seconds,
            _scene_spec(config, plan),
            start_ns=plan.seed * 1_000_000_000,
            extra_conditions=_extra_conditions(plan),
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
    toml_text = config_to_toml(config)
    for plan in plans:
        if (out / plan.path).is_file():
            _check_kept(out / plan.path, plan, config, toml_text)
    done = len(plans) - len(todo)
    if progress:
        progress(done, len(plans), "")
    jobs = max(1, min(request.jobs, len(todo) or 1))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(_make_session, toml_text, p, str(out)) for p in todo}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    path = future.result()
                except BaseException:
                    # The sessions not started yet would only delay the error (leaving the pool waits
                    # for every one of them); those running finish, and a rerun resumes.
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                done += 1
                if progress:
                    progress(done, len(plans), path)
    index_path = out / INDEX_NAME
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, index_path)
    return index_path
