"""The VRCLIP model: CLIP visual encoder with residual adapters, an RF sequence encoder, CCA-aligned
embeddings and an RF-anchored reliability gate that scales the RGB contribution to the fused embedding.

Shapes (B = batch):
- rgb: (B, 3, H, W) float32 in [0, 1], RGB order (H x W = 256 x 128 by default); CLIP's mean/std
  normalisation happens inside the model, so the runtime only divides uint8 pixels by 255.
- rf: (B, T, C, R, 2) float32, (real, imaginary) of the gated range profiles (vrclip.edge.rfwindow).
- anchor: (B, T, 2) float32 floor positions (metres) the T RF frames were gated around: the track's
  positions at those frames, newest last, with the radar array's horizontal centre as origin (room
  axes; the runtime subtracts it, and adds it back to `position`). The embedding reads only their
  frame-to-frame step lengths (walking speed, a gait cue); the position head reads the newest one's
  direction from the array, the beams' range axis, and adds its offset to it.
- present: (B, 2) float32 flags (rgb, rf): 1 = the modality's input is live, 0 = absent. Absence is a
  flag, not a Python branch, so one exported graph serves every case.

`inference()` returns (embedding (B, D) L2-normalised, position (B, 2) metres, reliability (B,)):
reliability = exp(-beta d) = W / 2 in [0, 1], where W = 2 exp(-beta d) is the weight of the RGB
embedding in the fusion and d = |v - r|^2 / 4 = (1 - cos) / 2 in [0, 1] is the distance between the two
modalities' L2-normalised aligned embeddings (so beta = 5 spans W from 2 down to 2 e^-5). With RF absent
there is nothing to check RGB against and reliability is 1; with RGB absent it is 0.

Everything in `inference()` is plain tensor ops with no data-dependent control flow (the state-space
recurrence is unrolled over the configured T), so it exports to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vrclip.edge.errors import UserError

#: OpenAI CLIP's pixel statistics (the visual encoder was pre-trained with them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CheckpointError(UserError):
    """A checkpoint or weights file is missing, damaged, or does not fit the model configuration."""


# ------------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class VisionConfig:
    image_size: tuple[int, int] = (256, 128)
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    output_dim: int = 512
    #: Residual adapters in the first K transformer blocks.
    adapter_blocks: int = 4
    #: x_enh = lambda x + (1 - lambda) Norm(Act(x W)).
    adapter_lambda: float = 0.8
    #: OpenAI's CLIP weights were trained with QuickGELU; open_clip's ViT-B-16 config matches them.
    quick_gelu: bool = True
    #: Gray-world input normalisation: each crop's channels to zero mean and unit variance instead of
    #: CLIP's fixed statistics. Removes the overall light level and colour cast (what day, dusk and night
    #: change) before the first layer; off for pre-trained CLIP weights, which expect CLIP's statistics.
    gray_world: bool = False


@dataclass(frozen=True)
class RFConfig:
    frames: int = 12
    channels: int = 144
    range_bins: int = 16
    #: Width of the learnable projection of (Re, Im) that joins |c| in the complex->real mapping.
    mapping_dim: int = 3
    #: Per-channel feature width after the range encoder (shared across channels).
    channel_dim: int = 16
    #: Channels are pooled (mean and max) in this many contiguous groups (switching order: groups of
    #: transmitters); 0 keeps every channel's features apart (more capacity, more position-specific).
    channel_groups: int = 4
    d_model: int = 256
    state_dim: int = 16
    layers: int = 2
    output_dim: int = 256
    dropout: float = 0.1
    #: Beam windows (channels height-major, `grid_offsets` cross-range beams per height, range bins
    #: along the array->person line): the position head reads the power centroid of the newest
    #: frame's grid, a physical measurement of where the body sits around its anchor, through a 2x2
    #: linear map (plus bias) in the grid's own axes. 0 = windows of Tx/Rx pairs, where an MLP on the
    #: pooled sequence predicts the offset instead. On vrr-sim3 that MLP learned its training
    #: segments' tracker errors (0.089 m there) and nothing that carried over (0.127 m on the test
    #: sessions against the anchor's own 0.125 m); a least-squares fit of this centroid map on the
    #: same training windows scored 0.072 m on the test ones.
    grid_offsets: int = 0
    #: Spacing of the cross-range beams and of the range bins (m).
    grid_offset_step_m: float = 0.1
    grid_range_step_m: float = 0.1


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    rf: RFConfig = field(default_factory=RFConfig)
    num_classes: int = 31
    align_dim: int = 128
    cca_k: int = 5
    #: Relative ridge of the CCA whitening. At batch 50 with 64-dim projections a small ridge (1e-3) gives
    #: top-5 correlations of 1.0 even between independent embeddings (measured), i.e. no training signal.
    cca_ridge: float = 1.0
    gate_beta: float = 5.0
    #: Temperature (scale) of the cosine classifier over the shared identity prototypes.
    prototype_scale: float = 16.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        try:
            vision = dict(data["vision"])
            vision["image_size"] = tuple(vision["image_size"])
            rest = {k: v for k, v in data.items() if k not in ("vision", "rf")}
            return cls(vision=VisionConfig(**vision), rf=RFConfig(**data["rf"]), **rest)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"model configuration is malformed ({e!r})") from e


#: Named configurations: the real one, and a tiny one that trains on two CPU cores.
PRESETS: dict[str, ModelConfig] = {
    "vit-b-16": ModelConfig(),
    "tiny": ModelConfig(
        vision=VisionConfig(
            patch_size=32,
            width=96,
            layers=3,
            heads=3,
            mlp_ratio=2.0,
            output_dim=128,
            adapter_blocks=1,
            quick_gelu=False,
            gray_world=True,
        ),
        # Dropout 0.5 in the RF frame encoder: each identity trains on ~90 overlapping windows of one
        # session and the RF encoder memorises them; on vrr-sim3 radio-only mAP went 75.6 (0.1) ->
        # 76.6 (0.3) -> 79.3 (0.5) -> 79.5 (0.7).
        rf=RFConfig(d_model=128, state_dim=8, layers=1, output_dim=128, channel_dim=16, dropout=0.5),
        align_dim=64,
    ),
    # For unit tests: the same architecture, a few thousand parameters.
    "micro": ModelConfig(
        vision=VisionConfig(
            patch_size=32,
            width=32,
            layers=1,
            heads=2,
            mlp_ratio=2.0,
            output_dim=32,
            adapter_blocks=1,
            quick_gelu=False,
            gray_world=True,
        ),
        rf=RFConfig(d_model=32, state_dim=4, layers=1, output_dim=32, channel_dim=8, dropout=0.0),
        align_dim=16,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"--preset {name!r}: unknown model configuration; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    vision = {k[len("vision_") :]: v for k, v in overrides.items() if k.startswith("vision_")}
    rf = {k[len("rf_") :]: v for k, v in overrides.items() if k.startswith("rf_")}
    top = {k: v for k, v in overrides.items() if not k.startswith(("vision_", "rf_"))}
    return replace(cfg, vision=replace(cfg.vision, **vision), rf=replace(cfg.rf, **rf), **top)


# ---------------------------------------------------------------------------------- visual encoder
class ResidualAdapter(nn.Module):
    """x_enh = lambda x + (1 - lambda) Norm(Act(x W)): re-targets a pre-trained block's output to person
    crops while keeping a fixed share (lambda) of what CLIP already computes."""

    def __init__(self, width: int, lam: float) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"adapter lambda must be in [0, 1], got {lam}")
        self.lam = float(lam)
        self.proj = nn.Linear(width, width, bias=False)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam * x + (1.0 - self.lam) * self.norm(self.act(self.proj(x)))


class VisualEncoder(nn.Module):
    """open_clip's VisionTransformer at the crop size, with adapters after the first K blocks."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        from open_clip.transformer import QuickGELU, VisionTransformer

        if cfg.width % cfg.heads:
            raise ValueError(f"vision width {cfg.width} is not divisible by heads {cfg.heads}")
        if not 0 <= cfg.adapter_blocks <= cfg.layers:
            raise ValueError(f"adapter_blocks {cfg.adapter_blocks} must be within 0..{cfg.layers} blocks")
        self.cfg = cfg
        self.vit = VisionTransformer(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            width=cfg.width,
            layers=cfg.layers,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            output_dim=cfg.output_dim,
            act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
        )
        self.adapters = nn.ModuleList(
            ResidualAdapter(cfg.width, cfg.adapter_lambda) for _ in range(cfg.adapter_blocks)
        )
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, output_dim) image embedding."""
        vit = self.vit
        if self.cfg.gray_world:
            mu = rgb.mean(dim=(2, 3), keepdim=True)
            sigma = torch.sqrt((rgb - mu).pow(2).mean(dim=(2, 3), keepdim=True) + 1e-6)
            x = (rgb - mu) / sigma
        else:
            x = (rgb - self.mean) / self.std
        x = vit.conv1(x)  # (B, width, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, width)
        cls = vit.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + vit.positional_embedding.to(x.dtype)
        x = vit.ln_pre(x)
        batch_first = getattr(vit.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(vit.transformer.resblocks):
            x = block(x)
            if i < len(self.adapters):
                x = self.adapters[i](x)
        if not batch_first:
            x = x.transpose(0, 1)
        pooled = vit.ln_post(x[:, 0])
        return pooled @ vit.proj

    def trunk_parameters(self) -> list[nn.Parameter]:
        """The pre-trained part (everything but the adapters and the output projection)."""
        keep = {id(p) for p in self.adapters.parameters()} | {id(self.vit.proj)}
        keep |= {id(p) for p in self.vit.ln_post.parameters()}
        return [p for p in self.parameters() if id(p) not in keep]


#: The `format` of a `vrclip-export pretrain-vision` weights file, which also records the visual
#: configuration it was trained with (`vision`).
PRETRAINED_VISION_FORMAT = "vrclip-vision-pretrain"


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, the visual configuration the file records or None): OpenAI/open_clip files record
    none; a `pretrain-vision` file records its own."""
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no such weights file; give the path of the OpenAI CLIP ViT-B/16 weights"
        )
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        return {k.removeprefix("module."): v for k, v in tensors.items()}, None  # records no config
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:
        try:  # OpenAI's original release is a TorchScript archive.
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise CheckpointError(
                f"{path}: neither a PyTorch state dict nor a TorchScript archive ({first}); "
                "give OpenAI's ViT-B-16.pt or an open_clip checkpoint"
            ) from first
    recorded = None
    if isinstance(obj, dict) and obj.get("format") == PRETRAINED_VISION_FORMAT:
        recorded = obj.get("vision") if isinstance(obj.get("vision"), dict) else {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, recorded


def resize_positional_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + g*g, width) square-grid embedding -> (1 + gh*gw, width): bicubic over the patch grid; the
    class token's embedding is kept as is."""
    cls, img = pos[:1], pos[1:]
    if img.shape[0] == grid[0] * grid[1]:
        return pos  # already this grid (e.g. weights saved from a model at the crop size)
    old = math.isqrt(img.shape[0])
    if old * old != img.shape[0]:
        raise ValueError(f"positional embedding of {img.shape[0]} patches is not a square grid")
    if (old, old) == tuple(grid):
        return pos
    img = img.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=False, antialias=True)
    img = img.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls, img], dim=0)


def _check_recorded_vision(path: Path, recorded: dict[str, Any], cfg: VisionConfig) -> None:
    """A pretrained tower whose input handling differs (gray-world vs CLIP statistics, crop size) would
    load, every shape agreeing, and then see inputs unlike those it learned from: refuse it."""
    expected = asdict(cfg)
    keys = ("image_size", "patch_size", "width", "layers", "heads", "gray_world", "quick_gelu")
    differs = [
        f"{k} {recorded[k]} in the file vs {expected[k]}"
        for k in keys
        if k in recorded and _as_list(recorded[k]) != _as_list(expected[k])
    ]
    if differs:
        raise CheckpointError(
            f"{path}: was pretrained for another visual encoder ({'; '.join(differs)}); "
            "run `vrclip-export pretrain-vision` with the --preset you train"
        )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, tuple | list) else [value]


def load_clip_visual_weights(encoder: VisualEncoder, path: str | Path) -> int:
    """Load the visual tower of a CLIP checkpoint (OpenAI or open_clip layout) from a local file into
    `encoder`, resizing the positional embedding to the crop's patch grid. Returns tensors loaded."""
    path = Path(path)
    state, recorded = _read_state_dict(path)
    if recorded is not None:
        _check_recorded_vision(path, recorded, encoder.cfg)
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        visual = state  # a visual-tower-only file
    target = encoder.vit.state_dict()
    if "positional_embedding" in visual:
        try:
            visual["positional_embedding"] = resize_positional_embedding(
                visual["positional_embedding"], encoder.vit.grid_size
            )
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; expected CLIP weights with a square patch grid") from e
    missing = [k for k in target if k not in visual]
    mismatched = [
        f"{k}: file {tuple(visual[k].shape)} vs model {tuple(v.shape)}"
        for k, v in target.items()
        if k in visual and visual[k].shape != v.shape
    ]
    if missing or mismatched:
        detail = "; ".join([*(f"missing {k}" for k in missing[:5]), *mismatched[:5]])
        raise CheckpointError(
            f"{path}: does not fit the visual encoder "
            f"(width {encoder.cfg.width}, {encoder.cfg.layers} layers, "
            f"patch {encoder.cfg.patch_size}): {detail}; use --preset vit-b-16 with CLIP ViT-B/16 weights"
        )
    encoder.vit.load_state_dict({k: visual[k].float() for k in target}, strict=True)
    # A `pretrain-vision` file also carries the adapters it was trained with: without them the first
    # block's output is mixed with an untrained projection. Loaded where they fit this encoder.
    adapters = encoder.adapters.state_dict()
    saved = {k.removeprefix("adapters."): v for k, v in visual.items() if k.startswith("adapters.")}
    fitting = {k: v.float() for k, v in saved.items() if k in adapters and adapters[k].shape == v.shape}
    encoder.adapters.load_state_dict(fitting, strict=False)
    return len(target) + len(fitting)


# -------------------------------------------------------------------------------------- RF encoder
class ComplexMapping(nn.Module):
    """Complex -> real: |c| plus a learnable linear projection of (Re, Im) for every sample."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = torch.sqrt(x.pow(2).sum(dim=-1, keepdim=True) + 1e-12)
        return torch.cat([magnitude, self.proj(x)], dim=-1)


class SelectiveSSM(nn.Module):
    """A selective state-space block (Mamba-style: input-dependent step, B and C) written in plain tensor
    ops and unrolled over the fixed sequence length, so it traces and exports to ONNX as is."""

    def __init__(self, d_model: int, d_state: int, expand: int = 2) -> None:
        super().__init__()
        inner = expand * d_model
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * inner)
        self.dt_proj = nn.Linear(inner, inner)
        self.b_proj = nn.Linear(inner, d_state, bias=False)
        self.c_proj = nn.Linear(inner, d_state, bias=False)
        self.a_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1)
        )
        self.d_skip = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d_model)
        with torch.no_grad():  # steps of ~0.01..0.1 at start, as in Mamba
            self.dt_proj.bias.copy_(torch.log(torch.expm1(torch.empty(inner).uniform_(0.01, 0.1))))

    def forward(self, h: torch.Tensor, steps: int) -> torch.Tensor:
        x, z = self.in_proj(self.norm(h)).chunk(2, dim=-1)  # (B, T, inner) each
        x = F.silu(x)
        dt = F.softplus(self.dt_proj(x))  # (B, T, inner)
        b = self.b_proj(x)  # (B, T, N)
        c = self.c_proj(x)
        a = -torch.exp(self.a_log)  # (inner, N)
        outputs = []
        state = dt[:, 0, :, None] * b[:, 0, None, :] * x[:, 0, :, None]  # zero initial state folded in
        outputs.append((state * c[:, 0, None, :]).sum(-1))
        for t in range(1, steps):
            decay = torch.exp(dt[:, t, :, None] * a)
            state = decay * state + dt[:, t, :, None] * b[:, t, None, :] * x[:, t, :, None]
            outputs.append((state * c[:, t, None, :]).sum(-1))
        y = torch.stack(outputs, dim=1) + self.d_skip * x
        return h + self.out_proj(y * F.silu(z))


class RFEncoder(nn.Module):
    """(B, T, C, R, 2) echoes + (B, T, 2) track -> (embedding (B, D), offset from the newest anchor (B, 2)).

    Per frame it sees the echo pattern (scale-free: divided by the sample's RMS level), the frame's
    log echo level (range-compensated upstream, so a body-size cue) and the track's step length.
    """

    def __init__(self, cfg: RFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mapping = ComplexMapping(cfg.mapping_dim)
        per_channel = cfg.range_bins * (cfg.mapping_dim + 1)
        # Shared across channels: the same range pattern means the same thing on every channel.
        self.range_encoder = nn.Sequential(nn.Linear(per_channel, cfg.channel_dim), nn.GELU())
        if cfg.channel_groups and cfg.channels % cfg.channel_groups:
            raise ValueError(
                f"{cfg.channels} RF channels do not split into {cfg.channel_groups} equal groups"
            )
        per_frame = (2 * cfg.channel_groups if cfg.channel_groups else cfg.channels) * cfg.channel_dim
        self.frame_encoder = nn.Sequential(
            nn.Linear(per_frame + 2, cfg.d_model),
            nn.LayerNorm(cfg.d_model),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
        )
        self.blocks = nn.ModuleList(SelectiveSSM(cfg.d_model, cfg.state_dim) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.embed = nn.Linear(2 * cfg.d_model, cfg.output_dim)
        if cfg.grid_offsets:
            if cfg.channels % cfg.grid_offsets:
                raise ValueError(
                    f"{cfg.channels} RF channels are not a whole number of heights of "
                    f"{cfg.grid_offsets} cross-range beams"
                )
            self.grid_position = nn.Linear(2, 2)
            with torch.no_grad():  # start from the centroid itself: unbiased for a point target
                self.grid_position.weight.copy_(torch.eye(2))
                self.grid_position.bias.zero_()
            half_o, half_r = (cfg.grid_offsets - 1) / 2, (cfg.range_bins - 1) / 2
            self.register_buffer(
                "grid_across_m",
                (torch.arange(cfg.grid_offsets) - half_o) * cfg.grid_offset_step_m,
                persistent=False,
            )
            self.register_buffer(
                "grid_along_m",
                (torch.arange(cfg.range_bins) - half_r) * cfg.grid_range_step_m,
                persistent=False,
            )
        else:
            self.position_head = nn.Sequential(
                nn.Linear(2 * cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, 2)
            )

    def forward(self, rf: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        batch = rf.shape[0]
        frame_power = rf.pow(2).mean(dim=(2, 3, 4))  # (B, T)
        rms = torch.sqrt(frame_power.mean(dim=1) + 1e-20).view(-1, 1, 1, 1, 1)
        x = self.mapping(rf / rms)  # (B, T, C, R, m+1)
        x = self.range_encoder(x.reshape(batch, cfg.frames, cfg.channels, -1))  # (B, T, C, channel_dim)
        if cfg.channel_groups:
            g = x.reshape(
                batch, cfg.frames, cfg.channel_groups, cfg.channels // cfg.channel_groups, cfg.channel_dim
            )
            x = torch.cat([g.mean(dim=3), g.amax(dim=3)], dim=-1)  # (B, T, G, 2 channel_dim)
        level = 0.5 * torch.log(frame_power + 1e-20) / 5.0  # log RMS, roughly unit scale
        steps = (anchor[:, 1:] - anchor[:, :-1]).pow(2).sum(-1).add(1e-12).sqrt()  # (B, T-1) metres
        steps = torch.cat([steps[:, :1], steps], dim=1) * 5.0  # first frame: its successor's step
        frame = torch.cat(
            [x.reshape(batch, cfg.frames, -1), level.unsqueeze(-1), steps.unsqueeze(-1)], dim=-1
        )
        h = self.frame_encoder(frame)  # (B, T, d_model)
        for block in self.blocks:
            h = block(h, cfg.frames)
        h = self.norm(h)
        pooled = torch.cat([h.mean(dim=1), h[:, -1]], dim=-1)
        if cfg.grid_offsets:
            return self.embed(pooled), self.grid_offset(rf, anchor[:, -1])
        return self.embed(pooled), self.position_head(pooled)

    def grid_offset(self, rf: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """(B, 2) floor offset from the newest anchor (array-centred, (B, 2)) to the body: the echo
        power's centroid over the newest frame's beam grid (heights summed), mapped linearly in the
        grid's axes (across, along the array->anchor line) and turned into floor axes."""
        cfg = self.cfg
        power = rf[:, -1].pow(2).sum(dim=-1)  # (B, C, R)
        power = power.reshape(power.shape[0], -1, cfg.grid_offsets, cfg.range_bins).sum(dim=1)  # (B, O, R)
        share = power / (power.sum(dim=(1, 2), keepdim=True) + 1e-20)
        across = (share.sum(dim=2) * self.grid_across_m).sum(dim=1)
        along = (share.sum(dim=1) * self.grid_along_m).sum(dim=1)
        local = self.grid_position(torch.stack([across, along], dim=1))  # (B, 2): across, along
        u, v = beam_axes(anchor)
        return local[:, 0:1] * v + local[:, 1:2] * u


def beam_axes(offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(along, across) unit vectors, each (B, 2), of the beam grids laid around points `offset` (B, 2)
    from the array's centre: along points from the array to the point, across is it turned +90
    degrees; (0, 1) along at the centre itself. The runtime's `RFWindowExtractor.beam_points` lays
    its grids out the same way."""
    norm = offset.norm(dim=1, keepdim=True)
    along = torch.where(norm > 1e-6, offset / norm.clamp_min(1e-6), torch.tensor([0.0, 1.0]))
    return along, torch.stack([-along[:, 1], along[:, 0]], dim=1)


# ------------------------------------------------------------------------------------------- VRCLIP
def gate_distance(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(B,) distance d = |v - r|^2 / 4 = (1 - cos) / 2 in [0, 1] between unit-norm aligned embeddings:
    what the reliability gate W = 2 exp(-beta d) reads, and what training calibrates it on."""
    return 0.5 * (1.0 - (v * r).sum(dim=-1))


@dataclass
class ModelOutputs:
    """Everything a training step may need; `inference()` returns the deployable subset."""

    vision: torch.Tensor  # (B, Dv) raw visual embedding
    rf: torch.Tensor  # (B, Dr) raw RF embedding
    aligned_vision: torch.Tensor  # (B, A) projection into the shared space (un-normalised)
    aligned_rf: torch.Tensor
    embedding: torch.Tensor  # (B, A) fused, L2-normalised
    position: torch.Tensor  # (B, 2) metres
    gate: torch.Tensor  # (B,) W = 2 exp(-beta d)
    reliability: torch.Tensor  # (B,)


def cosine_logits(embedding: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * cos(embedding, each class weight): the logits of a cosine classifier, which puts identity
    in the embedding's direction, what retrieval by cosine distance later reads."""
    return scale * F.normalize(embedding, dim=-1) @ F.normalize(weight, dim=-1).T


class VRCLIP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisualEncoder(cfg.vision)
        self.rf_encoder = RFEncoder(cfg.rf)
        #: Stage-1 identity classifier on the visual embedding.
        self.vision_head = nn.Linear(cfg.vision.output_dim, cfg.num_classes)
        #: Stage-2 identity classifier on the RF embedding.
        self.rf_head = nn.Linear(cfg.rf.output_dim, cfg.num_classes)
        #: Projections of both embeddings into the shared (CCA-aligned) space.
        self.align_vision = nn.Linear(cfg.vision.output_dim, cfg.align_dim)
        self.align_rf = nn.Linear(cfg.rf.output_dim, cfg.align_dim)
        #: Identity prototypes in the shared space: one cosine classifier for vision, RF and fused.
        self.prototypes = nn.Parameter(F.normalize(torch.randn(cfg.num_classes, cfg.align_dim), dim=-1))

    def fuse(
        self, aligned_vision: torch.Tensor, aligned_rf: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding, W, reliability) from the two aligned embeddings and the presence flags."""
        v = F.normalize(aligned_vision, dim=-1)
        r = F.normalize(aligned_rf, dim=-1)
        rgb_on = present[:, 0:1]
        rf_on = present[:, 1:2]
        distance = gate_distance(v, r).unsqueeze(-1)
        gate = 2.0 * torch.exp(-self.cfg.gate_beta * distance)
        # RF absent: nothing anchors the check, RGB counts with weight 1; RGB absent: weight 0.
        weight = rgb_on * (rf_on * gate + (1.0 - rf_on))
        fused = F.normalize(weight * v + rf_on * r, dim=-1, eps=1e-12)
        reliability = rgb_on * (rf_on * 0.5 * gate + (1.0 - rf_on))
        return fused, gate.squeeze(-1), reliability.squeeze(-1)

    def outputs(
        self, rgb: torch.Tensor, rf: torch.Tensor, anchor: torch.Tensor, present: torch.Tensor
    ) -> ModelOutputs:
        vision = self.visual(rgb)
        rf_embedding, offset = self.rf_encoder(rf, anchor)
        aligned_vision = self.align_vision(vision)
        aligned_rf = self.align_rf(rf_embedding)
        fused, gate, reliability = self.fuse(aligned_vision, aligned_rf, present)
        position = anchor[:, -1] + present[:, 1:2] * offset
        return ModelOutputs(
            vision, rf_embedding, aligned_vision, aligned_rf, fused, position, gate, reliability
        )

    def prototype_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine-classifier logits of any shared-space embedding against the identity prototypes."""
        return cosine_logits(embedding, self.prototypes, self.cfg.prototype_scale)

    def inference(
        self, rgb: torch.Tensor, rf: torch.Tensor, anchor: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.outputs(rgb, rf, anchor, present)
        return out.embedding, out.position, out.reliability

    def forward(
        self, rgb: torch.Tensor, rf: torch.Tensor, anchor: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward: (embedding, position, reliability, fused identity logits)."""
        out = self.outputs(rgb, rf, anchor, present)
        return out.embedding, out.position, out.reliability, self.prototype_logits(out.embedding)


class InferenceModel(nn.Module):
    """The deployable graph: forward(rgb, rf, anchor, present) -> (embedding, position, reliability)."""

    INPUT_NAMES = ("rgb", "rf", "anchor", "present")
    OUTPUT_NAMES = ("embedding", "position", "reliability")

    def __init__(self, model: VRCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, rgb: torch.Tensor, rf: torch.Tensor, anchor: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.inference(rgb, rf, anchor, present)


def example_inputs(cfg: ModelConfig, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right shapes (tests, ONNX export)."""
    h, w = cfg.vision.image_size
    r = cfg.rf
    return (
        torch.rand(batch, 3, h, w),
        torch.randn(batch, r.frames, r.channels, r.range_bins, 2),
        torch.cumsum(torch.full((batch, r.frames, 2), 0.1), dim=1),
        torch.ones(batch, 2),
    )


__all__ = [
    "PRESETS",
    "VRCLIP",
    "CheckpointError",
    "InferenceModel",
    "ModelConfig",
    "RFConfig",
    "VisionConfig",
    "beam_axes",
    "example_inputs",
    "load_clip_visual_weights",
    "preset",
]
