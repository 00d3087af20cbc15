"""`vrclip-export pretrain-vision`: pretrain the visual tower on people nobody will be asked to find.

VRCLIP's visual encoder starts from CLIP, trained on 400 M image-text pairs; the real ViT-B-16 loads
those weights with `--weights`. The tiny config has no such weights, and trained from scratch on a
dataset's training split it sees each identity in one session only (one lighting, one occluder), so
it learns the session as much as the person. This module stands in for that pretraining with the
simulator: it renders crops of many *other* synthetic people (names `pretrain-NNNNN`, never in a
dataset) in every lighting and occlusion the simulator has, through the dataset's own rig (camera,
room, JPEG), and trains the tower to tell them apart with a cosine classifier under the same
darkening-and-noise degradation as stage 1. The result is a visual-tower state dict that
`vrclip-export train --weights` loads like CLIP's; the pretraining identities are disjoint from the
dataset's, so the evaluation stays a test on unseen people's unseen sessions.

Rendered crops are cached on disk (a memory-mapped array, ~0.1 MB a crop); training checkpoints
every epoch and resumes after a kill. A checkpoint records the rig its crops were rendered through, and
is resumed only with the same settings and a dataset of the same rig (camera, room, JPEG quality).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tomllib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vrclip.edge.config import ConfigError, RoomConfig, parse_config
from vrclip.edge.crops import CropSpec, camera_from_config, crop_person
from vrclip.edge.errors import UserError
from vrclip.edge.recording.jpeg import decode_rgb, encode_rgb
from vrclip.edge.sim.camera import PinholeCamera, SceneRenderer
from vrclip.edge.sim.scene import LIGHTING_PRESETS, OCCLUSION_PRESETS, Scene, SceneSpec
from vrclip.export.checkpoint import save_atomic
from vrclip.export.model import PRETRAINED_VISION_FORMAT, VisualEncoder, cosine_logits, preset
from vrclip.export.train import TrainConfig, degrade, warmup_cosine

NAME_PREFIX = "pretrain-"
WEIGHTS_NAME = "vision-pretrained.pt"
CHECKPOINT_NAME = "pretrain-checkpoint.pt"
#: Ground truth calls a person visible from this share of body points in view (as the rig does).
VISIBLE_FRACTION = 0.25
FORMAT = PRETRAINED_VISION_FORMAT


@dataclass(frozen=True)
class PretrainConfig:
    """Every knob of a pretraining run; the defaults are what the tiny demo model was trained from."""

    dataset: Path
    out: Path
    preset: str = "tiny"
    identities: int = 400
    #: Sessions per identity (each a random lighting, occluder, path and sensor noise).
    sessions: int = 6
    #: Crops per session, at random instants of the walk.
    frames: int = 10
    #: Who the pretraining people are (body, clothing); their names never occur in a dataset.
    world_seed: int = 7
    epochs: int = 16
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    min_lr: float = 1e-6
    seed: int = 0
    #: Tracker error the crop is cut around (m, std), as in the dataset's preprocessing.
    anchor_jitter_m: float = 0.1
    #: Share of each batch degraded (darkened, tinted, noisier), with d ~ U[min_degradation, 1]; the
    #: degradation itself is stage 1's (the same defaults, from TrainConfig).
    degrade_prob: float = 0.5
    min_degradation: float = TrainConfig.min_degradation
    degradation_noise: float = TrainConfig.degradation_noise
    degradation_cast: float = TrainConfig.degradation_cast
    #: Temperature (scale) of the cosine classifier.
    logit_scale: float = 16.0
    threads: int = 2
    jobs: int = 2

    def render_key(self) -> dict[str, Any]:
        """What the rendered crops depend on: a cache with another key is rendered afresh."""
        keys = ("identities", "sessions", "frames", "world_seed", "anchor_jitter_m")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def validate(self) -> None:
        checks = [
            (self.identities >= 2, f"--identities {self.identities}: need at least 2 people to tell apart"),
            (self.sessions >= 1, f"--sessions {self.sessions}: must be >= 1"),
            (self.frames >= 1, f"--frames {self.frames}: must be >= 1"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (self.batch_size >= 2, f"--batch {self.batch_size}: must be >= 2"),
            (
                self.lr > 0 and 0 <= self.min_lr <= self.lr,
                f"--lr {self.lr} / --min-lr {self.min_lr}: need lr > 0 and 0 <= min-lr <= lr",
            ),
            (0.0 <= self.warmup < 1.0, f"--warmup {self.warmup}: must be a fraction in [0, 1)"),
            (0.0 <= self.degrade_prob <= 1.0, f"degrade_prob {self.degrade_prob}: must be in [0, 1]"),
            (0.0 < self.min_degradation <= 1.0, f"min_degradation {self.min_degradation}: must be in (0, 1]"),
            (self.anchor_jitter_m >= 0, f"--anchor-jitter {self.anchor_jitter_m}: must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


#: Bump when the same settings render another set of crops, so caches are re-rendered and checkpoints
#: trained on the old set are not resumed on the new one. 2: a person whose box lies wholly outside
#: the image gives no crop (`crop_person`); the default run renders 23,998 crops instead of 24,000.
CROP_RENDER_VERSION = 2
#: Settings a checkpoint must match to be resumed (everything that changes data, model or optimiser).
RESUME_KEYS = tuple(
    f.name for f in fields(PretrainConfig) if f.name not in ("dataset", "out", "threads", "jobs")
)


# ------------------------------------------------------------------------------------------ the rig
@dataclass(frozen=True)
class Rig:
    """The camera and room the dataset was recorded with: pretraining crops must look like its crops."""

    camera: PinholeCamera
    room: RoomConfig
    jpeg_quality: int

    def key(self) -> dict[str, Any]:
        """What of the rig the rendered crops depend on (part of the crop cache's key). A camera
        with no yaw, principal-point offset or distortion leaves the key as it was before the camera
        model had them, so the caches and checkpoints of those rigs stay valid."""
        camera = asdict(self.camera)
        for key, unset in (("yaw_deg", 0.0), ("principal", None), ("distortion", ())):
            if camera[key] == unset:
                del camera[key]
        return {"camera": camera, "room": self.room.model_dump(), "jpeg": self.jpeg_quality}

    def settings(self) -> dict[str, Any]:
        """`key()` as plain JSON values (lists, floats, strings): what a checkpoint records and compares."""
        settings: dict[str, Any] = json.loads(json.dumps(self.key(), sort_keys=True, default=str))
        return settings


def rig_of_dataset(dataset: Path) -> Rig:
    """Read the rig from DATASET/dataset.json (written by `vrclip-edge dataset`)."""
    meta_path = Path(dataset) / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{meta_path}: not found; give the folder `vrclip-edge dataset` wrote (it holds dataset.json)"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{meta_path}: unreadable ({e}); regenerate the dataset") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("config_toml"), str):
        raise UserError(f"{meta_path}: has no config_toml (the rig it was recorded with); regenerate it")
    try:
        config = parse_config(tomllib.loads(meta["config_toml"]), source=f"{meta_path} config_toml")
    except (tomllib.TOMLDecodeError, ConfigError) as e:
        raise UserError(f"{meta_path}: its config_toml is not a valid rig configuration ({e})") from e
    return Rig(camera_from_config(config), config.room, int(config.camera.jpeg_quality))


# ---------------------------------------------------------------------------------------- rendering
def pretrain_name(index: int) -> str:
    return f"{NAME_PREFIX}{index:05d}"


def render_identity(
    rig: Rig, index: int, sessions: int, frames: int, world_seed: int, jitter_m: float, crop: CropSpec
) -> tuple[np.ndarray, np.ndarray]:
    """(crops (N, h, w, 3) uint8, visible (N,) bool) of one pretraining person, N <= sessions*frames:
    each session draws a lighting, an occluder, a path and sensor noise; each crop a random instant
    and a tracker error. Crops whose box cannot be projected are skipped. Deterministic in its args."""
    rng = np.random.default_rng([world_seed, index])
    name = pretrain_name(index)
    crops, visible = [], []
    for _ in range(sessions):
        spec = SceneSpec(
            room=rig.room,
            people=(name,),
            occlusion=str(rng.choice(OCCLUSION_PRESETS)),
            lighting=str(rng.choice(LIGHTING_PRESETS)),
            seed=int(rng.integers(1 << 31)),
            world_seed=world_seed,
        )
        scene = Scene(spec)
        renderer = SceneRenderer(scene, rig.camera, seed=int(rng.integers(1 << 31)))
        for t in rng.uniform(0.0, 120.0, size=frames):
            state = scene.state(float(t))
            person = state.people[0]
            rgb, _ = renderer.render(state)
            assert rgb is not None  # colour rendering is on
            # Through JPEG like the recordings: the encoder must not learn to rely on clean pixels.
            decoded = decode_rgb(encode_rgb(rgb, rig.jpeg_quality), *rgb.shape[:2], what=name)
            anchor = person.position + rng.normal(0.0, jitter_m, size=2)
            image, ok = crop_person(decoded, rig.camera, anchor, crop)
            if ok:
                crops.append(image)
                visible.append(renderer.visible_fraction(person) >= VISIBLE_FRACTION)
    shape = (0, crop.height, crop.width, 3)
    return (np.stack(crops) if crops else np.zeros(shape, np.uint8)), np.asarray(visible, bool)


def _render_job(args: tuple[Rig, int, int, int, int, float, CropSpec]) -> tuple[int, np.ndarray, np.ndarray]:
    rig, index, *rest = args
    crops, visible = render_identity(rig, index, *rest)
    return index, crops, visible


@dataclass
class CropSet:
    crops: np.ndarray  # (N, h, w, 3) uint8, memory-mapped
    labels: np.ndarray  # (N,) int64 identity index
    visible: np.ndarray  # (N,) bool


def render_crops(
    cfg: PretrainConfig, rig: Rig, crop: CropSpec, progress: Callable[[int, int], None] | None = None
) -> CropSet:
    """Render (or load from OUT/crops) every pretraining crop. The cache is written under a temporary
    name and renamed when complete, so a kill mid-render leaves nothing half-valid behind."""
    folder = cfg.out / "crops"
    key = {**cfg.render_key(), "crop": asdict(crop), **rig.key(), "render_version": CROP_RENDER_VERSION}
    key_json = json.dumps(key, sort_keys=True, default=str)
    cached = _load_crops(folder, key_json)
    if cached is not None:
        return cached
    for stale in folder.parent.glob("crops.tmp*"):  # left by a render that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f"crops.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    capacity = cfg.identities * cfg.sessions * cfg.frames
    crops = np.lib.format.open_memmap(
        tmp / "crops.npy", mode="w+", dtype=np.uint8, shape=(capacity, crop.height, crop.width, 3)
    )
    labels = np.full(capacity, -1, np.int64)
    visible = np.zeros(capacity, bool)
    jobs = [
        (rig, i, cfg.sessions, cfg.frames, cfg.world_seed, cfg.anchor_jitter_m, crop)
        for i in range(cfg.identities)
    ]
    count = 0
    done = 0

    def store(index: int, c: np.ndarray, v: np.ndarray) -> None:
        nonlocal count, done
        crops[count : count + len(c)] = c
        labels[count : count + len(c)] = index
        visible[count : count + len(c)] = v
        count += len(c)
        done += 1
        if progress:
            progress(done, cfg.identities)

    if cfg.jobs <= 1:
        for job in jobs:
            store(*_render_job(job))
    else:
        with ProcessPoolExecutor(max_workers=cfg.jobs) as pool:
            for result in pool.map(_render_job, jobs, chunksize=4):
                store(*result)
    crops.flush()
    np.save(tmp / "labels.npy", labels[:count])
    np.save(tmp / "visible.npy", visible[:count])
    (tmp / "count.txt").write_text(str(count))
    (tmp / "key.json").write_text(key_json)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    loaded = _load_crops(folder, key_json)
    if loaded is None:
        raise UserError(f"{folder}: could not read back the crops just rendered; is the disk full?")
    return loaded


def _load_crops(folder: Path, key_json: str) -> CropSet | None:
    """The cached crops when they were rendered with the same settings; None otherwise (re-render)."""
    try:
        if (folder / "key.json").read_text() != key_json:
            return None
        count = int((folder / "count.txt").read_text())
        crops = np.load(folder / "crops.npy", mmap_mode="r")[:count]
        labels = np.load(folder / "labels.npy")
        visible = np.load(folder / "visible.npy")
    except (OSError, ValueError):
        return None
    if len(labels) != count or len(visible) != count:
        return None
    return CropSet(crops, labels, visible)


# ----------------------------------------------------------------------------------------- training
class CosineClassifier(nn.Module):
    """A cosine classifier over the pretraining people (`cosine_logits`, as VRCLIP's prototypes)."""

    def __init__(self, dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(x, self.weight, self.scale)


ProgressFn = Callable[[int, int, int, int, float, float], None]


def pretrain(
    cfg: PretrainConfig,
    progress: ProgressFn | None = None,
    render_progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
    restart: bool = False,
) -> Path:
    """Render, train, and write OUT/vision-pretrained.pt; returns its path."""
    cfg.validate()
    rig = rig_of_dataset(cfg.dataset)
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {cfg.out}: cannot create the folder ({e.strerror})") from e
    ckpt_path = cfg.out / CHECKPOINT_NAME
    # The dataset's rig is part of what a checkpoint must match: crops of another camera are other data.
    settings = {
        **{k: cfg.to_dict()[k] for k in RESUME_KEYS},
        "rig": rig.settings(),
        "render_version": CROP_RENDER_VERSION,
    }
    # Checked before rendering: a refused resume must not cost a render, nor replace the crops cache.
    state = _load_resumable(ckpt_path, settings, cfg.dataset) if ckpt_path.exists() and not restart else None
    vision_cfg = preset(cfg.preset).vision
    crop = CropSpec(height=vision_cfg.image_size[0], width=vision_cfg.image_size[1])
    data = render_crops(cfg, rig, crop, render_progress)
    rows = np.flatnonzero(data.visible & (data.labels >= 0))
    classes = int(data.labels.max()) + 1 if len(data.labels) else 0
    if len(rows) < cfg.batch_size or classes < 2:
        raise UserError(
            f"only {len(rows)} visible crops of {classes} people rendered; raise --identities or --frames"
        )
    log(f"{len(rows)} visible crops of {classes} pretraining identities")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    encoder = VisualEncoder(vision_cfg)
    head = CosineClassifier(vision_cfg.output_dim, classes, cfg.logit_scale)
    params = [*encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(rows) // cfg.batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, warmup_cosine(steps * cfg.epochs, cfg.warmup, cfg.min_lr / cfg.lr)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch = 0
    if state is not None:
        try:
            encoder.load_state_dict(state["encoder"])
            head.load_state_dict(state["head"])
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            start_epoch = int(state["epoch"]) + 1
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"{ckpt_path}: its training state does not fit this model ({first_line}); "
                "delete it or pass --restart"
            ) from e
        log(f"resuming from {ckpt_path} after epoch {start_epoch}")
    for epoch in range(start_epoch, cfg.epochs):
        encoder.train()
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        total_loss, correct, seen = 0.0, 0, 0
        for step in range(steps):
            batch = np.sort(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
            rgb = (
                torch.from_numpy(np.asarray(data.crops[batch]))
                .permute(0, 3, 1, 2)
                .contiguous()
                .float()
                .div_(255.0)
            )
            labels = torch.from_numpy(data.labels[batch])
            rgb = augment(rgb, cfg, generator)
            logits = head(encoder(rgb))
            loss = F.cross_entropy(logits, labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise UserError(f"pretraining diverged at epoch {epoch + 1} (loss {value}); lower --lr")
            total_loss += value
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(batch)
            if progress:
                progress(epoch, cfg.epochs, step + 1, steps, total_loss / (step + 1), correct / seen)
        save_atomic(
            {
                "format": FORMAT,
                "settings": settings,
                "epoch": epoch,
                "encoder": encoder.state_dict(),
                "head": head.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
            },
            ckpt_path,
        )
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {total_loss / steps:.3f}, accuracy {correct / seen:.3f}")
    out = cfg.out / WEIGHTS_NAME
    save_atomic(
        {
            "format": FORMAT,
            "vision": asdict(vision_cfg),
            "identities": classes,
            "world_seed": cfg.world_seed,
            "state_dict": {
                **encoder.vit.state_dict(),
                **{f"adapters.{k}": v for k, v in encoder.adapters.state_dict().items()},
            },
        },
        out,
    )
    return out


def augment(rgb: torch.Tensor, cfg: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Mirror half the crops (people walk both ways) and degrade a share of them as stage 1 does.

    Works in place on `rgb` and touches only the rows it changes: this augmentation used to cost
    more than the encoder's forward and backward passes together (85 ms against 75 ms a batch).
    """
    b = rgb.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    d = cfg.min_degradation + (1.0 - cfg.min_degradation) * torch.rand(b, generator=generator)
    dark = torch.rand(b, generator=generator) < cfg.degrade_prob
    if flip.any():
        rgb[flip] = rgb[flip].flip(-1)
    if dark.any():
        rgb[dark] = degrade(rgb[dark], d[dark], cfg.degradation_noise, generator, cfg.degradation_cast)
    return rgb


def _load_resumable(path: Path, settings: dict[str, Any], dataset: Path) -> dict[str, Any]:
    """The checkpoint's state when it was written with `settings` (the rig under "rig"); else a
    UserError that names what differs and points to --restart."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"{path}: unreadable pretraining checkpoint ({e}); delete it or pass --restart"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a vision pretraining checkpoint; delete it or pass --restart")
    saved = state.get("settings")
    if not isinstance(saved, dict):
        raise UserError(f"{path}: records no settings, so it cannot be resumed; delete it or pass --restart")
    if "rig" not in saved:
        # Written before checkpoints recorded the rig. Nothing in it shows which camera its crops came
        # through (the crop cache beside it is replaced whenever the dataset's rig changes, and that
        # version resumed across such a change), so resuming could continue another rig's training.
        raise UserError(
            f"{path}: written by an older vrclip-export that did not record the dataset's rig (camera, "
            f"room, JPEG quality), so nothing shows its epochs were trained on crops of {dataset}'s "
            "camera; pass --restart to pretrain afresh (or delete it)"
        )
    differs = sorted(k for k in settings if k != "rig" and saved.get(k) != settings[k])
    if differs:
        raise UserError(
            f"{path}: was written with other settings ({', '.join(differs)}); "
            "use the same options to resume, or pass --restart"
        )
    was, now = saved["rig"], settings["rig"]
    if was != now:
        names = {"camera": "camera", "room": "room", "jpeg": "JPEG quality"}
        parts = [
            names.get(k, k)
            for k in sorted({*now, *(was if isinstance(was, dict) else {})})
            if not isinstance(was, dict) or was.get(k) != now.get(k)
        ]
        differ = "differs" if len(parts) == 1 else "differ"
        raise UserError(
            f"{path}: was pretrained on crops rendered through another rig ({' and '.join(parts)} {differ}) "
            f"than {dataset}'s; resuming would go on training on another camera's crops. Pass --restart to "
            "pretrain afresh for this dataset, or give another --out"
        )
    return state


__all__ = [
    "PretrainConfig",
    "Rig",
    "pretrain",
    "pretrain_name",
    "render_crops",
    "render_identity",
    "rig_of_dataset",
]
