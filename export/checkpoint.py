"""Checkpoints: written atomically (temp file + os.replace), read back with every failure named.

A training checkpoint holds the model, optimiser and scheduler state of the running stage, plus what
is needed to rebuild the exact model and data: the model configuration, the preprocessing spec, the
identity list and the training segments (evaluation must test on exactly what training left out).
Files are plain torch.save dicts of tensors and JSON-like values, loaded with weights_only=True, so
opening a checkpoint never runs code from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from vrclip.export.model import VRCLIP, CheckpointError, ModelConfig

FORMAT = "vrclip-checkpoint"
VERSION = 1


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to `<path>.tmp`, fsync, then rename: a kill leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **obj}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint's envelope; raises CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `vrclip-export train`")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; give the path of a checkpoint (.pt) written by training")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line}); "
            "the file is damaged or truncated - re-run training (it resumes from its last complete epoch)"
        ) from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a VRCLIP checkpoint (no format {FORMAT!r} marker)")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {data.get('version')!r}; this vrclip-export reads version {VERSION}"
        )
    for key in ("model_config", "model", "classes", "prep"):
        if key not in data:
            raise CheckpointError(f"{path}: the checkpoint lacks {key!r}; it is damaged or from another tool")
    return data


def load_model_state(model: VRCLIP, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning any key or shape mismatch into a CheckpointError that lists them."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(wrong[:4]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:4]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:4]))
        raise CheckpointError(
            f"{source}: the weights do not fit the model configuration ({'; '.join(parts)}); "
            "the checkpoint and the configuration come from different models"
        )
    model.load_state_dict(state, strict=True)


def model_from_checkpoint(data: dict[str, Any], source: str) -> VRCLIP:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    cfg = ModelConfig.from_dict(data["model_config"])
    model = VRCLIP(cfg)
    load_model_state(model, data["model"], source)
    model.eval()
    return model


__all__ = ["load_checkpoint", "load_model_state", "model_from_checkpoint", "save_atomic"]
