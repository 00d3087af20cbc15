"""Training recipe: three stages, each an AdamW run with 10 % linear warm-up then cosine decay (LambdaLR).

1. vision: the visual encoder (with adapters; from `--weights` when given: CLIP's for ViT-B-16,
   `vrclip-export pretrain-vision`'s for the tiny config) and its identity head; ID cross-entropy on clean and
   degraded crops of people the camera sees, plus the illumination objective
   L_corr = 1 - Pearson(delta, 1/d), delta = |f(x at degradation d) - f(x)|, d ~ U[d_min, 1].
2. rf: the RF encoder, its identity head and both shared-space projections, vision frozen;
   L_CCA between the projected visual and RF embeddings, position MSE, RF ID cross-entropy; each RF
   window's beam grid is shifted by up to a bin and some windows play backwards (`shift_beams`,
   `reverse_time`), so the encoder cannot memorise a training window's tracker error and direction.
   The position target follows both: a shifted grid shows the body where the shift put it
   (`shifted_position`), and a reversed window ends at its oldest frame.
3. gate: the shared-space projections and the identity prototypes, both encoders frozen; cosine-
   classifier cross-entropy of the fused, the visual and the RF embedding against one set of
   prototypes (which is what puts the two modalities into one space, so the gate's distance means
   agreement), plus L_CCA. RGB inputs are degraded at random and sometimes swapped with another
   sample's crop, so the gate sees RGB that disagrees with the radio and learns to discount it; RF
   inputs are embedded with dropout and dropped channels, so it also sees fallible radio. Geometry
   distillation keeps each projection's pairwise cosines its frozen encoder's, so fitting the
   projections to one segment per person does not undo what the encoders know about unseen sessions.

Determinism: every epoch draws its shuffling, degradations and dropout from generators seeded with
(seed, stage, epoch), and a checkpoint is written atomically after every epoch; so on a CPU a run
killed and resumed gives bit-identical weights to one that ran through.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vrclip.edge.crops import CropSpec
from vrclip.edge.dataset import TRAINING_FRAMES, TRAINING_SEGMENT_S
from vrclip.edge.errors import UserError
from vrclip.edge.rfwindow import RFWindowSpec
from vrclip.export.cca import cca_loss
from vrclip.export.checkpoint import load_checkpoint, load_model_state, save_atomic
from vrclip.export.data import (
    Batch,
    PrepSpec,
    Segment,
    Track,
    break_report,
    choose_segments,
    discover_sessions,
    load_tracks,
    make_batch,
    other_recordings,
    recorded_channels,
    session_ids,
    split_samples,
)
from vrclip.export.model import (
    VRCLIP,
    CheckpointError,
    ModelConfig,
    beam_axes,
    gate_distance,
    load_clip_visual_weights,
    preset,
)

STAGES = ("vision", "rf", "gate")
CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "vrclip.pt"
#: Beam heights of the "beams" RF input (m above the floor): feet to above the tallest head, 0.15 m
#: apart (the array's height resolution at 3 m is about 0.5 m; finer steps interpolate).
BEAM_HEIGHTS_M = tuple(round(0.1 + 0.15 * i, 3) for i in range(13))
#: Cross-range offsets of the beams at every height: +-0.3 m covers a body's width plus the tracker's
#: ~0.1 m error; the RF encoder pools over them (mean and max) per height.
BEAM_OFFSETS_M = tuple(round(0.1 * i, 3) for i in range(-3, 4))


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run; defaults are the published recipe (tiny model for CPU training)."""

    dataset: Path
    out: Path
    preset: str = "tiny"
    weights: Path | None = None
    epochs: int = 50
    #: Per-stage epoch overrides (None = `epochs`).
    vision_epochs: int | None = None
    rf_epochs: int | None = None
    gate_epochs: int | None = None
    batch_size: int = 50
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: float = 0.1
    min_lr: float = 1e-6
    seed: int = 42
    segment_seconds: float = TRAINING_SEGMENT_S
    frames: int = TRAINING_FRAMES
    #: What the RF encoder sees: "beams" (every pair summed in phase at a grid of heights and
    #: cross-range offsets around the person, `BEAM_HEIGHTS_M` x `BEAM_OFFSETS_M`) or "pairs" (each
    #: Tx/Rx pair's own window). Beams carry the person's reflectivity against height, which does not
    #: change with where they walk: on vrr-sim3 radio-only mAP went from 25.9 (pairs) to 71.1 (beams,
    #: same recipe otherwise) and fused from 35.2 to 77.2.
    rf_input: str = "beams"
    range_bins: int = 8
    #: Extent of the range samples: one-way metres along the array->person line for beams, bistatic
    #: path metres for pairs.
    span_m: float = 0.8
    #: RF channels used: every `channel_stride`-th virtual channel (1 = all).
    channel_stride: int = 1
    anchor_jitter_m: float = 0.1
    anchor_correlation: float = 0.9
    adapter_blocks: int | None = None
    adapter_lambda: float | None = None
    #: Train the whole visual tower (True), only adapters + output (False), or decide by weights (None).
    full_finetune: bool | None = None
    corr_weight: float = 1.0
    cca_weight: float = 1.0
    position_weight: float = 1.0
    rf_id_weight: float = 1.0
    #: Darkest degradation drawn (d = 0 would be a black image and 1/d infinite).
    min_degradation: float = 0.05
    #: Noise standard deviation (pixel scale 0..1) added at full degradation.
    degradation_noise: float = 0.06
    #: Colour cast (per-channel gain spread) at full degradation.
    degradation_cast: float = 0.3
    #: Stage 2: probability of zeroing each RF channel of a training sample. Off by default: with
    #: beams a channel is a height's view of the person, and dropping heights cost radio-only mAP
    #: on vrr-sim3 (71.1 with 0.2, 75.6 with 0; the earlier per-pair recipe used 0.2).
    channel_dropout: float = 0.0
    #: Stage 2 (beams only): largest random shift of a sample's beam grid, in range bins and cross-range
    #: offsets. With the window reversal below it took radio-only mAP on vrr-sim3 from 79.3 to 89.5
    #: and fused from 84.1 to 91.9 (same stage 1): the RF encoder memorised each training window's
    #: fixed tracker error and direction of travel.
    rf_shift: int = 1
    #: Stage 2: probability of playing an RF window backwards.
    rf_reverse: float = 0.5
    #: Stage 3: probability that a sample's crop is replaced by another sample's.
    swap_prob: float = 0.2
    #: Stage 3: weight of the gate-calibration loss, which pulls a sample's two aligned embeddings
    #: together when its crop is lit and shows the right person, and pushes them at least
    #: `align_margin` apart (gate distance, 0..1) when the crop shows someone else. Without it the
    #: gate learns on training segments the radio has memorised, trusts the radio alone (W ~ 0.25)
    #: and the fused embedding ends up worse than vision on unseen sessions (measured on vrr-sim3:
    #: fused 31.7 vs vision 47.8 mAP without it, 35.2 vs 47.2 with it; weight 5 gave 35.7).
    #: With the geometry distillation below, the two losses pull against each other (the distillation
    #: keeps each modality's own angles, which lowers the cross-modal cosine and with it W), so both
    #: are strong by default; see `geometry_weight` for what that measured.
    align_weight: float = 10.0
    align_margin: float = 0.5
    #: Stage 3: the darkest degradation level (d of L_corr) still pulled towards the radio.
    align_min_light: float = 0.5
    #: Stage 3: weight of the geometry distillation that keeps the pairwise cosines of a batch's aligned
    #: embeddings equal to those of their encoder's own embeddings, for each modality. The encoders
    #: tell unseen sessions apart better than projections fitted to one segment per identity (the
    #: visual tower is pretrained on hundreds of other people): on vrr-sim3, same stages 1-2, the raw
    #: tower scored 76.1 vision mAP and its aligned projection 72.7 without the term, 75.3 with weight
    #: 5; radio went from 89.3 to 90.0 and fused from 93.6 to 94.3. Raising it lowers W (mean W on
    #: crops that show the person: 0.94 at 5, 0.78 at 40) unless `align_weight` rises with it. Stage 3
    #: rerun from the same stage-2 weights, fused (night / furniture / wall margin over radio):
    #: weights 5 and 1: 94.4 (4.0 / 4.6 / 3.1); 15 and 3: 94.7; 40 and 10: 94.9 (4.2 / 4.9 / 3.3);
    #: 100 and 30: 94.9. Stage 3's own seed barely matters (43 and 44 with the split and stage 2
    #: unchanged: within 0.05 of seed 42's figures).
    geometry_weight: float = 40.0
    threads: int = 2
    jobs: int = 2
    cache: Path | None = None

    def stage_epochs(self, stage: str) -> int:
        value = {"vision": self.vision_epochs, "rf": self.rf_epochs, "gate": self.gate_epochs}[stage]
        return self.epochs if value is None else value

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def prep_spec(self, n_channels: int | None = None) -> PrepSpec:
        """The preprocessing spec of this run's data.

        `n_channels`: the virtual channel count of the recordings' array (`recorded_channels`), which
        `channel_stride` > 1 picks every n-th of; with stride 1 every channel is used, whatever the count
        (the spec then names none, so it and the cache key do not depend on the array).
        """
        if self.channel_stride == 1:
            channels: tuple[int, ...] = ()
        elif n_channels is None:
            raise ValueError("channel_stride > 1 needs the recordings' channel count (recorded_channels)")
        else:
            channels = tuple(range(0, n_channels, self.channel_stride))
        beams = self.rf_input == "beams"
        rf = RFWindowSpec(
            frames=self.frames,
            range_bins=self.range_bins,
            span_m=self.span_m,
            channels=channels,
            beam_heights_m=BEAM_HEIGHTS_M if beams else (),
            beam_offsets_m=BEAM_OFFSETS_M if beams else (0.0,),
        )
        return PrepSpec(
            rf=rf,
            crop=CropSpec(),
            anchor_jitter_m=self.anchor_jitter_m,
            anchor_correlation=self.anchor_correlation,
            seed=self.seed,
        )

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (
                self.batch_size >= 8,
                f"--batch {self.batch_size}: must be >= 8 (CCA needs a batch to correlate)",
            ),
            (
                self.lr > 0 and self.min_lr >= 0 and self.min_lr <= self.lr,
                f"--lr {self.lr} / --min-lr {self.min_lr}",
            ),
            (0.0 <= self.warmup < 1.0, f"--warmup {self.warmup}: must be a fraction in [0, 1)"),
            (self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0"),
            (self.frames >= 1, f"--frames {self.frames}: must be >= 1"),
            (self.channel_stride >= 1, f"--channel-stride {self.channel_stride}: must be >= 1"),
            (
                self.rf_input in ("beams", "pairs"),
                f"--rf-input {self.rf_input!r}: must be beams or pairs",
            ),
            (self.range_bins >= 1, f"--range-bins {self.range_bins}: must be >= 1"),
            (self.span_m > 0, f"--span-m {self.span_m}: must be positive"),
            (
                0 <= self.rf_shift < min(self.range_bins, len(BEAM_OFFSETS_M)),
                f"--rf-shift {self.rf_shift}: must be 0 or more and less than --range-bins "
                f"({self.range_bins}) and the {len(BEAM_OFFSETS_M)} cross-range beams",
            ),
            (
                0.0 <= self.rf_reverse <= 1.0,
                f"--rf-reverse {self.rf_reverse}: must be a probability in [0, 1]",
            ),
            (0.0 < self.min_degradation <= 1.0, f"min_degradation {self.min_degradation}: must be in (0, 1]"),
            (self.align_weight >= 0, f"--align-weight {self.align_weight}: must be >= 0"),
            (0.0 <= self.align_margin <= 1.0, f"align_margin {self.align_margin}: must be in [0, 1]"),
            (0.0 < self.align_min_light <= 1.0, f"align_min_light {self.align_min_light}: must be in (0, 1]"),
            (
                self.geometry_weight >= 0,
                f"--geometry-weight {self.geometry_weight}: must be >= 0",
            ),
            (self.segment_seconds > 0, f"--segment-seconds {self.segment_seconds}: must be positive"),
            (
                self.anchor_jitter_m >= 0,
                f"--anchor-jitter {self.anchor_jitter_m}: must be >= 0 (m, std of the tracker error)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        for stage in STAGES:
            if self.stage_epochs(stage) < 0:
                raise UserError(f"--{stage}-epochs {self.stage_epochs(stage)}: must be >= 0")


#: Settings that change the model, the data or the optimisation: a checkpoint is resumed only if they match.
RESUME_KEYS = tuple(
    f.name for f in fields(TrainConfig) if f.name not in ("out", "threads", "jobs", "cache", "dataset")
)


def warmup_cosine(total_steps: int, warmup: float, min_ratio: float) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over `warmup` of the steps, then cosine from 1 to `min_ratio`."""
    warm = max(1, round(total_steps * warmup)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def degrade(
    rgb: torch.Tensor, d: torch.Tensor, noise_std: float, generator: torch.Generator, cast: float = 0.0
) -> torch.Tensor:
    """Darken by d (1 = untouched) and add sensor noise growing as the light goes: x g d + (1 - d) s n.

    g is a per-channel colour cast 1 + (1 - d) u, u ~ U[-cast, cast]^3: dim light is also tinted light
    (dusk is warm, night lighting blue), and the cast vanishes with the degradation at d = 1.
    """
    b = rgb.shape[0]
    dd = d.view(-1, 1, 1, 1)
    noise = torch.randn(rgb.shape, generator=generator)
    tint = 1.0 + (1.0 - dd) * cast * (2.0 * torch.rand(b, 3, 1, 1, generator=generator) - 1.0)
    # In place on the noise buffer: on two cores the full-image temporaries cost more than the
    # encoder's forward pass (measured 35 -> 19 ms for 64 crops of 256x128).
    out = noise.mul_((1.0 - dd) * noise_std)
    out.addcmul_(rgb, tint * dd)
    return out.clamp_(0.0, 1.0)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (torch.sqrt((a * a).sum() * (b * b).sum()) + 1e-12)


def illumination_loss(delta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """L_corr = 1 - Pearson(delta, 1/d)."""
    return 1.0 - pearson(delta, 1.0 / d)


def gate_calibration_loss(
    aligned_vision: torch.Tensor,
    aligned_rf: torch.Tensor,
    *,
    trusted: torch.Tensor,
    impostor: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Mean gate distance of trusted pairs plus the hinge max(0, margin - distance) of impostor pairs.

    The distance is the reliability gate's own (`gate_distance`, in [0, 1]); trusted pairs (a lit
    crop of the right person) should reach W = 2 exp(-beta d) near 2, impostors (another person's
    crop) near 2 exp(-beta margin).
    """
    distance = gate_distance(F.normalize(aligned_vision, dim=-1), F.normalize(aligned_rf, dim=-1))
    zero = distance.sum() * 0.0
    pull = distance[trusted].mean() if bool(trusted.any()) else zero
    push = F.relu(margin - distance[impostor]).mean() if bool(impostor.any()) else zero
    return pull + push


def geometry_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the pairwise cosine similarities of a batch in `student` and in
    `teacher` (B, any dims each): zero for a projection that keeps the teacher's angles (a rotation,
    a scale), whatever the two widths, and only the student gets gradient."""
    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher.detach(), dim=-1)
    return ((s @ s.T - t @ t.T) ** 2).mean()


def to_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    return {
        "rgb": torch.from_numpy(np.ascontiguousarray(batch.rgb)).permute(0, 3, 1, 2).float() / 255.0,
        "rf": torch.from_numpy(batch.rf),
        "anchor": torch.from_numpy(batch.anchor),
        "position": torch.from_numpy(batch.position),
        "first_position": torch.from_numpy(batch.first_position),
        "present": torch.from_numpy(batch.present),
        "visible": torch.from_numpy(batch.visible),
        "label": torch.from_numpy(batch.label),
    }


def rotate_phase(rf: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random global phase per sample: the carrier phase at the gate point is not an identity cue."""
    phi = torch.rand(rf.shape[0], generator=generator) * (2 * math.pi)
    c, s = torch.cos(phi).view(-1, 1, 1, 1), torch.sin(phi).view(-1, 1, 1, 1)
    re, im = rf[..., 0], rf[..., 1]
    return torch.stack([re * c - im * s, re * s + im * c], dim=-1)


def drop_channels(rf: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """Zero each virtual channel of a sample with probability p: no single Tx/Rx pair may carry identity
    (in the field channels fail, and which ones see the person's front depends on where they walk)."""
    if p <= 0:
        return rf
    keep = (torch.rand(rf.shape[0], 1, rf.shape[2], 1, 1, generator=generator) >= p).to(rf.dtype)
    return rf * keep


def shift_beams(
    rf: torch.Tensor, generator: torch.Generator, offsets: int, max_shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each sample's beam grid by up to +-`max_shift` range bins and cross-range offsets (zero
    fill), the same for all its frames: what a tracker position off by a bin or two does to the
    window. The cached windows carry one fixed tracker error per training sample, which the encoder
    can memorise; this varies it. `offsets` = cross-range beams per height (channels are
    height-major). Returns (rf, (B, 2) shifts: cross-range offsets, range bins)."""
    if max_shift <= 0:
        return rf, torch.zeros(rf.shape[0], 2, dtype=torch.long)
    b, t, c, r, two = rf.shape
    grid = rf.reshape(b, t, c // offsets, offsets, r, two)
    out = torch.zeros_like(grid)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
    for i in range(b):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        src_x = slice(max(0, -dx), r - max(0, dx))
        dst_x = slice(max(0, dx), r - max(0, -dx))
        src_y = slice(max(0, -dy), offsets - max(0, dy))
        dst_y = slice(max(0, dy), offsets - max(0, -dy))
        out[i, :, :, dst_y, dst_x] = grid[i, :, :, src_y, src_x]
    return out.reshape(rf.shape), shifts


def shifted_position(
    position: torch.Tensor,
    anchor: torch.Tensor,
    array_xy: torch.Tensor,
    shifts: torch.Tensor,
    range_step_m: float,
    offset_step_m: float,
) -> torch.Tensor:
    """Where a person seems to stand once their beam grid is shifted by `shifts` (cross-range offsets,
    range bins): a grid moved one range bin outwards shows the body one bin further from the array
    along the array->anchor line, and one offset to the side shows it that far across it. `anchor` is
    the newest frame's (B, 2) track position the beams were laid around."""
    along, across = beam_axes(anchor - array_xy)
    s = shifts.to(position.dtype)
    return position + s[:, 1:2] * range_step_m * along + s[:, 0:1] * offset_step_m * across


def reverse_time(
    rf: torch.Tensor, anchor: torch.Tensor, generator: torch.Generator, p: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Play a sample's window backwards with probability p: a body's echo against height does not
    depend on which way the sequence runs, and it doubles the distinct windows a training segment
    offers. Returns (rf, anchor, reversed mask)."""
    if p <= 0:
        return rf, anchor, torch.zeros(rf.shape[0], dtype=torch.bool)
    flip = torch.rand(rf.shape[0], generator=generator) < p
    if not bool(flip.any()):
        return rf, anchor, flip
    rf = torch.where(flip.view(-1, 1, 1, 1, 1), rf.flip(1), rf)
    anchor = torch.where(flip.view(-1, 1, 1), anchor.flip(1), anchor)
    return rf, anchor, flip


@dataclass
class StageContext:
    """What a stage's loss function sees besides the batch."""

    model: VRCLIP
    cfg: TrainConfig
    generator: torch.Generator
    #: Precomputed frozen embeddings of every training sample (row-aligned with the train index).
    cache: dict[str, torch.Tensor] = field(default_factory=dict)


Progress = Callable[[str, int, int, int, int, float], None]
"""progress(stage, epoch, epochs, step, steps, loss)."""


class Trainer:
    """Runs the three stages over one dataset, checkpointing and resuming."""

    def __init__(
        self, cfg: TrainConfig, progress: Progress | None = None, log: Callable[[str], None] = print
    ):
        cfg.validate()
        self.cfg = cfg
        self.progress = progress
        self.log = log
        self.out = Path(cfg.out)
        self.tracks: list[Track] = []
        self.classes: list[str] = []
        self.segments: list[Segment] = []
        self.session_ids: dict[str, str] = {}

    # ------------------------------------------------------------------------------------ data
    def prepare(self, prep_progress: Callable[[int, int, str], None] | None = None) -> None:
        cfg = self.cfg
        sessions = discover_sessions(cfg.dataset)
        self._make_out()  # before the (slow) preprocessing: a bad --out should fail at once
        prep = cfg.prep_spec(recorded_channels(sessions) if cfg.channel_stride > 1 else None)
        cache = cfg.cache or Path(cfg.dataset) / ".vrclip-cache"
        self.prep = prep
        self.tracks = load_tracks(sessions, prep, cache, cfg.jobs, prep_progress)
        for line in break_report(self.tracks):
            self.log(line)
        self.session_ids = session_ids(sessions)
        self.classes = sorted({t.identity for t in self.tracks})
        if len(self.classes) < 2:
            raise UserError(
                f"{cfg.dataset}: holds {len(self.classes)} identity; re-identification needs at least 2"
            )
        self.segments = choose_segments(self.tracks, cfg.segment_seconds, cfg.frames, cfg.seed)
        self.train_index, self.test_index = split_samples(self.tracks, self.segments, cfg.frames)
        if len(self.train_index) < cfg.batch_size:
            raise UserError(
                f"the training segments hold {len(self.train_index)} samples, fewer than one batch of "
                f"{cfg.batch_size}; lower --batch or lengthen --segment-seconds"
            )
        self.class_index = {name: i for i, name in enumerate(self.classes)}

    def model_config(self) -> ModelConfig:
        cfg = self.cfg
        n_channels = self.tracks[0].rf.shape[1]
        overrides: dict[str, Any] = {
            "num_classes": len(self.classes),
            "rf_frames": cfg.frames,
            "rf_channels": int(n_channels),
            "rf_range_bins": cfg.range_bins,
        }
        if self.prep.rf.beamformed:
            # One channel group per height: the encoder pools each height's cross-range beams.
            overrides["rf_channel_groups"] = len(self.prep.rf.beam_heights_m)
            # The position head reads where the echo sits in the beam grid (see RFConfig.grid_offsets).
            overrides["rf_grid_offsets"] = len(self.prep.rf.beam_offsets_m)
            overrides["rf_grid_offset_step_m"] = float(self.prep.rf.beam_offset_step_m)
            overrides["rf_grid_range_step_m"] = float(self.prep.rf.range_step_m)
        if cfg.adapter_blocks is not None:
            overrides["vision_adapter_blocks"] = cfg.adapter_blocks
        if cfg.adapter_lambda is not None:
            overrides["vision_adapter_lambda"] = cfg.adapter_lambda
        return preset(cfg.preset, **overrides)

    def _make_out(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise UserError(
                f"--out {self.out}: is a file, not a folder; give the run folder (it is created if missing)"
            )
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {self.out}: cannot create the run folder ({e.strerror})") from e

    # ---------------------------------------------------------------------------------- checkpoint
    def _envelope(self, model: VRCLIP) -> dict[str, Any]:
        return {
            "model_config": model.cfg.to_dict(),
            "prep": self.prep.to_dict(),
            "classes": list(self.classes),
            "segments": [asdict(s) for s in self.segments],
            # Which recordings those names were: another dataset can reuse every file name.
            "session_ids": dict(self.session_ids),
            "train_config": self.cfg.to_dict(),
            "model": model.state_dict(),
        }

    def _check_resumable(self, data: dict[str, Any], path: Path) -> None:
        stage, epoch = data.get("stage"), data.get("epoch")
        if stage not in STAGES or not isinstance(epoch, int) or epoch < 0:
            raise CheckpointError(
                f"{path}: is not a training run's resume checkpoint (stage {stage!r}, epoch {epoch!r}); "
                "pass --restart to train afresh (or delete it)"
            )
        saved = data.get("train_config")
        if not isinstance(saved, dict):
            saved = {}
        mine = self.cfg.to_dict()
        diff = [
            f"{k}: checkpoint {saved.get(k)!r}, now {mine[k]!r}"
            for k in RESUME_KEYS
            if saved.get(k) != mine[k]
        ]
        if data.get("classes") != self.classes:
            diff.append("identities differ (another dataset?)")
        if diff:
            raise CheckpointError(
                f"{path}: was written by a run with other settings ({'; '.join(diff[:6])}); "
                "use the same settings to resume, another --out, or --restart to start over"
            )
        self._check_same_split(data, path)

    def _check_same_split(self, data: dict[str, Any], path: Path) -> None:
        """Refuse to resume when the dataset as it is now gives other training segments.

        Recomputing the split silently would train the remaining epochs on other frames, some of
        which the epochs so far (and evaluation, which reads the stored segments) treat as test data.
        Reusing the stored segments is not honest either: the checkpoint names them by session and
        frame range only, not by the recordings' contents, so after the dataset changed nothing shows
        those frames are still the ones trained on; and the finished run would no longer be what its
        settings give on this dataset, breaking the promise (module docstring) that a resumed run
        equals one that ran through. So stop, and let the user restore the dataset or restart.
        """
        replaced = other_recordings(data.get("session_ids"), self.session_ids)
        if replaced:
            raise CheckpointError(
                f"{path}: {self.cfg.dataset} holds other recordings under the names this run trained on "
                f"(first: {replaced[0]}; {len(replaced)} in all): another dataset, or one made again. "
                "Restore the dataset the run started on to resume, or pass --restart to train afresh"
            )
        saved = data.get("segments")
        mine = [asdict(s) for s in self.segments]
        if saved == mine:
            return
        if not isinstance(saved, list):
            raise CheckpointError(
                f"{path}: holds no training segments, so it cannot show that resuming trains on the "
                "same data; pass --restart (or another --out) to train afresh"
            )
        # Segments are in identity order and the identity lists already match (checked above).
        pairs = list(itertools.zip_longest(saved, mine))
        was, now = next(p for p in pairs if p[0] != p[1])

        def describe(seg: Any) -> str:
            if not isinstance(seg, dict):
                return "no segment"
            return f"{seg.get('session')} frames {seg.get('start')}-{seg.get('stop')}"

        identity = next((seg.get("identity") for seg in (was, now) if isinstance(seg, dict)), "?")
        raise CheckpointError(
            f"{path}: the dataset {self.cfg.dataset} no longer gives the training split this run started "
            f"with (first difference: identity {identity}: checkpoint trains on {describe(was)}, the "
            f"dataset now gives {describe(now)}); training on the new split would use frames the epochs "
            "so far left for testing. Restore the dataset as it was when training started to resume, or pass "
            "--restart (or another --out) to train afresh on the dataset as it is"
        )

    # ---------------------------------------------------------------------------------------- run
    def run(self, restart: bool = False) -> Path:
        cfg = self.cfg
        torch.set_num_threads(max(1, cfg.threads))
        self._make_out()
        if not self.tracks:
            self.prepare()
        torch.manual_seed(cfg.seed)
        model = VRCLIP(self.model_config())
        pretrained = False
        if cfg.weights is not None:
            loaded = load_clip_visual_weights(model.visual, cfg.weights)
            pretrained = True
            self.log(f"loaded {loaded} visual tensors from {cfg.weights}")
        self.full_finetune = (not pretrained) if cfg.full_finetune is None else cfg.full_finetune
        ckpt_path = self.out / CHECKPOINT_NAME
        resume: dict[str, Any] | None = None
        if ckpt_path.exists() and not restart:
            # "Re-run training" cannot mend the run's own resume checkpoint: it would read it again.
            resume = load_checkpoint(
                ckpt_path, remedy=f"pass --restart to train afresh (or delete {ckpt_path})"
            )
            self._check_resumable(resume, ckpt_path)
            load_model_state(model, resume["model"], str(ckpt_path))
            self.log(f"resuming from {ckpt_path}: stage {resume['stage']}, {resume['epoch']} epochs done")
        history: list[dict[str, Any]] = list(resume.get("history", [])) if resume else []
        started = time.perf_counter()
        for stage_no, stage in enumerate(STAGES):
            if resume is not None and STAGES.index(resume["stage"]) > stage_no:
                continue
            stage_resume = resume if resume is not None and resume["stage"] == stage else None
            self._run_stage(model, stage, stage_resume, history)
            resume = None
        final = self.out / FINAL_NAME
        env = self._envelope(model)
        env.update(stage="done", epoch=0, history=history, train_seconds=time.perf_counter() - started)
        save_atomic(env, final)
        return final

    def _parameters(self, model: VRCLIP, stage: str) -> list[nn.Parameter]:
        if stage == "vision":
            if self.full_finetune:
                params = list(model.visual.parameters())
            else:
                trunk = {id(p) for p in model.visual.trunk_parameters()}
                params = [p for p in model.visual.parameters() if id(p) not in trunk]
            return params + list(model.vision_head.parameters())
        if stage == "rf":
            return [
                *model.rf_encoder.parameters(),
                *model.rf_head.parameters(),
                *model.align_vision.parameters(),
                *model.align_rf.parameters(),
            ]
        return [*model.align_vision.parameters(), *model.align_rf.parameters(), model.prototypes]

    def _run_stage(
        self, model: VRCLIP, stage: str, resume: dict[str, Any] | None, history: list[dict[str, Any]]
    ) -> None:
        cfg = self.cfg
        epochs = cfg.stage_epochs(stage)
        n = len(self.train_index)
        steps = n // cfg.batch_size
        params = self._parameters(model, stage)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(max(1, epochs * steps), cfg.warmup, cfg.min_lr / cfg.lr)
        )
        start_epoch = 0
        if resume is not None:
            try:
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
            except (KeyError, ValueError) as e:
                raise CheckpointError(
                    f"{self.out / CHECKPOINT_NAME}: optimiser state does not fit ({e}); "
                    "pass --restart to train afresh"
                ) from e
            start_epoch = int(resume["epoch"])
        if start_epoch >= epochs:
            return
        ctx = StageContext(model, cfg, torch.Generator())
        self._precompute(stage, ctx)
        loss_fn = {"vision": self._vision_loss, "rf": self._rf_loss, "gate": self._gate_loss}[stage]
        for epoch in range(start_epoch, epochs):
            seed = cfg.seed * 1_000_003 + STAGES.index(stage) * 10_007 + epoch
            ctx.generator.manual_seed(seed)
            torch.manual_seed(seed)  # dropout
            self._set_modes(model, stage)
            order = torch.randperm(n, generator=ctx.generator).numpy()
            total, count = 0.0, 0
            for step in range(steps):
                rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                batch = to_tensors(
                    make_batch(self.tracks, self.train_index, rows, cfg.frames, self.class_index)
                )
                loss, parts = loss_fn(ctx, batch, torch.from_numpy(rows))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach())
                count += 1
                if self.progress:
                    self.progress(stage, epoch, epochs, step + 1, steps, total / count)
            record = {
                "stage": stage,
                "epoch": epoch + 1,
                "loss": total / max(count, 1),
                **parts,
                "lr": scheduler.get_last_lr()[0],
            }
            history.append(record)
            env = self._envelope(model)
            env.update(
                stage=stage,
                epoch=epoch + 1,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                history=history,
            )
            save_atomic(env, self.out / CHECKPOINT_NAME)

    @staticmethod
    def _set_modes(model: VRCLIP, stage: str) -> None:
        model.eval()
        if stage == "vision":
            model.visual.train()
        elif stage == "rf":
            model.rf_encoder.train()

    # -------------------------------------------------------------------------------- frozen parts
    @torch.no_grad()
    def _precompute(self, stage: str, ctx: StageContext) -> None:
        """Embeddings of frozen encoders over the whole training set, computed once per stage."""
        if stage != "rf":
            return  # stage 1 trains vision; stage 3 embeds both modalities on the fly (augmented)
        model = ctx.model
        model.eval()
        rows_all = np.arange(len(self.train_index))
        vision = []
        for b in range(0, rows_all.size, 100):
            rows = rows_all[b : b + 100]
            batch = to_tensors(
                make_batch(self.tracks, self.train_index, rows, self.cfg.frames, self.class_index)
            )
            vision.append(model.visual(batch["rgb"]))
        ctx.cache["vision"] = torch.cat(vision)

    # ------------------------------------------------------------------------------------- losses
    def _vision_loss(
        self, ctx: StageContext, batch: dict[str, torch.Tensor], rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, model, g = ctx.cfg, ctx.model, ctx.generator
        rgb = batch["rgb"]
        flip = torch.rand(rgb.shape[0], generator=g) < 0.5
        rgb = torch.where(flip.view(-1, 1, 1, 1), rgb.flip(-1), rgb)
        d = cfg.min_degradation + (1.0 - cfg.min_degradation) * torch.rand(rgb.shape[0], generator=g)
        dark = degrade(rgb, d, cfg.degradation_noise, g, cfg.degradation_cast)
        both = model.visual(torch.cat([rgb, dark]))
        clean, degraded = both.chunk(2)
        seen = batch["visible"]
        labels = batch["label"]
        if seen.any():
            ce = 0.5 * (
                F.cross_entropy(model.vision_head(clean[seen]), labels[seen])
                + F.cross_entropy(model.vision_head(degraded[seen]), labels[seen])
            )
        else:
            ce = clean.sum() * 0.0
        ok = batch["present"][:, 0] > 0
        delta = (F.normalize(degraded, dim=-1) - F.normalize(clean, dim=-1)).norm(dim=-1)
        corr = illumination_loss(delta[ok], d[ok]) if int(ok.sum()) >= 3 else delta.sum() * 0.0
        loss = ce + cfg.corr_weight * corr
        return loss, {"ce": float(ce.detach()), "corr": float(corr.detach())}

    def _rf_loss(
        self, ctx: StageContext, batch: dict[str, torch.Tensor], rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, model = ctx.cfg, ctx.model
        rf = drop_channels(rotate_phase(batch["rf"], ctx.generator), ctx.generator, cfg.channel_dropout)
        shifts = torch.zeros(rf.shape[0], 2, dtype=torch.long)
        if self.prep.rf.beamformed:
            rf, shifts = shift_beams(rf, ctx.generator, len(self.prep.rf.beam_offsets_m), cfg.rf_shift)
        rf, anchor, backwards = reverse_time(rf, batch["anchor"], ctx.generator, cfg.rf_reverse)
        emb, offset = model.rf_encoder(rf, anchor)
        # The position target follows the augmentation: a reversed window ends at its oldest frame,
        # and a shifted grid shows the body where the shift put it.
        newest = torch.where(backwards.view(-1, 1), batch["first_position"], batch["position"])
        newest = shifted_position(
            newest,
            anchor[:, -1],
            torch.zeros(2),  # batches are array-centred
            shifts,
            self.prep.rf.range_step_m,
            self.prep.rf.beam_offset_step_m,
        )
        pos = F.mse_loss(offset, newest - anchor[:, -1])
        ce = F.cross_entropy(model.rf_head(emb), batch["label"])
        seen = batch["visible"]
        if int(seen.sum()) > model.cfg.cca_k + 1:
            vision = ctx.cache["vision"][rows]
            cca = cca_loss(
                model.align_vision(vision[seen]),
                model.align_rf(emb[seen]),
                model.cfg.cca_k,
                model.cfg.cca_ridge,
            )
        else:
            cca = emb.sum() * 0.0
        loss = cfg.cca_weight * cca + cfg.position_weight * pos + cfg.rf_id_weight * ce
        return loss, {"cca": float(cca.detach()), "pos_mse": float(pos.detach()), "ce": float(ce.detach())}

    def _gate_loss(
        self, ctx: StageContext, batch: dict[str, torch.Tensor], rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, model, g = ctx.cfg, ctx.model, ctx.generator
        rgb = batch["rgb"]
        b = rgb.shape[0]
        d = cfg.min_degradation + (1.0 - cfg.min_degradation) * torch.rand(b, generator=g)
        d = torch.where(torch.rand(b, generator=g) < 0.3, torch.ones(b), d)
        swap = torch.rand(b, generator=g) < cfg.swap_prob
        partner = torch.randint(0, b, (b,), generator=g)
        swap &= batch["label"][partner] != batch["label"]
        rgb = torch.where(swap.view(-1, 1, 1, 1), rgb[partner], rgb)
        with torch.no_grad():
            vision = model.visual(degrade(rgb, d, cfg.degradation_noise, g, cfg.degradation_cast))
        with torch.no_grad():
            # The RF encoder has memorised its training segment; embedding it with its dropout on and
            # channels dropped makes the radio as fallible here as it is on unseen sessions, so the gate
            # does not learn that the radio is always right.
            model.rf_encoder.train()
            noisy = drop_channels(rotate_phase(batch["rf"], g), g, cfg.channel_dropout)
            rf = model.rf_encoder(noisy, batch["anchor"])[0]
            model.rf_encoder.eval()
        av, ar = model.align_vision(vision), model.align_rf(rf)
        present = batch["present"]
        fused, _, _ = model.fuse(av, ar, present)
        labels = batch["label"]
        ce_fused = F.cross_entropy(model.prototype_logits(fused), labels)
        ce_rf = F.cross_entropy(model.prototype_logits(ar), labels)
        seen = batch["visible"] & ~swap
        ce_vision = (
            F.cross_entropy(model.prototype_logits(av[seen]), labels[seen]) if seen.any() else av.sum() * 0
        )
        if int(seen.sum()) > model.cfg.cca_k + 1:
            cca = cca_loss(av[seen], ar[seen], model.cfg.cca_k, model.cfg.cca_ridge)
        else:
            cca = av.sum() * 0.0
        align = gate_calibration_loss(
            av, ar, trusted=seen & (d >= cfg.align_min_light), impostor=swap, margin=cfg.align_margin
        )
        geometry = geometry_distillation_loss(av, vision) + geometry_distillation_loss(ar, rf)
        loss = (
            ce_fused
            + ce_rf
            + ce_vision
            + cfg.cca_weight * cca
            + cfg.align_weight * align
            + cfg.geometry_weight * geometry
        )
        parts = {
            "ce_fused": ce_fused,
            "ce_rf": ce_rf,
            "ce_vision": ce_vision,
            "cca": cca,
            "align": align,
            "geometry": geometry,
        }
        return loss, {k: float(v.detach()) for k, v in parts.items()}


__all__ = [
    "STAGES",
    "TrainConfig",
    "Trainer",
    "degrade",
    "gate_calibration_loss",
    "geometry_distillation_loss",
    "illumination_loss",
    "warmup_cosine",
]
