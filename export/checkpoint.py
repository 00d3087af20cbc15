"""Checkpoints: written atomically (temp file + os.replace), read back with every failure named.

A training checkpoint holds the model, optimiser and scheduler state of the running stage, plus what
is needed to rebuild the exact model and data: the model configuration, the preprocessing spec, the
identity list and the training segments (evaluation must test on exactly what training left out).
Files are plain torch.save dicts of tensors and JSON-like values, loaded with weights_only=True, so
opening a checkpoint never runs code from it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from vrclip.export.model import VRCLIP, CheckpointError, ModelConfig

FORMAT = "vrclip-checkpoint"
VERSION = 1


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to `<path>.tmp`, fsync, then rename: a kill leaves the previous checkpoint intact.

    A write that fails (a full disk, an I/O error) removes the half-written `.tmp` and is a
    CheckpointError naming the file: the previous checkpoint is still there to resume from.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({_io_reason(e)}); the previous one, if any, is intact - "
            "free disk space (or give another --out) and re-run: it resumes from its last complete epoch"
        ) from e
    os.replace(tmp, path)


def _io_reason(error: BaseException) -> str:
    """The operating system's words for a failed write (torch's RuntimeError wraps the OSError)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


#: What a damaged checkpoint's message tells the user to do by default: right for a run's final
#: vrclip.pt, which training rewrites from its resume checkpoint. A run's own resume checkpoint
#: (OUT/checkpoint.pt) needs another remedy (`train` passes it): resuming would read it again.
RERUN_TRAINING = "re-run training (it resumes from its last complete epoch)"


def load_checkpoint(path: str | Path, *, remedy: str | None = None) -> dict[str, Any]:
    """Read and validate a checkpoint's envelope; raises CheckpointError naming the file and the problem.

    `remedy`: what to do about a file that is damaged, truncated or not a VRCLIP checkpoint (default
    for a damaged one: `RERUN_TRAINING`).
    """
    return load_checkpoint_with_digest(path, remedy=remedy)[0]


def load_checkpoint_with_digest(path: str | Path, *, remedy: str | None = None) -> tuple[dict[str, Any], str]:
    """`load_checkpoint`, plus the sha256 of the very bytes the checkpoint was loaded from.

    The file is read once, hashed, and unpickled from those bytes: hashing the path before or after
    loading could vouch for another model when training replaces checkpoint.pt meanwhile.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `vrclip-export train`")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; give the path of a checkpoint (.pt) written by training")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror})") from e
    digest = hashlib.sha256(raw).hexdigest()
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line}); "
            f"the file is damaged or truncated - {remedy or RERUN_TRAINING}"
        ) from e
    also = f"; {remedy}" if remedy else ""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a VRCLIP checkpoint (no format {FORMAT!r} marker){also}")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {data.get('version')!r}; this vrclip-export reads version "
            f"{VERSION}{also}"
        )
    for key in ("model_config", "model", "classes", "prep"):
        if key not in data:
            raise CheckpointError(
                f"{path}: the checkpoint lacks {key!r}; it is damaged or from another tool{also}"
            )
    return data, digest


def load_model_state(model: VRCLIP, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning any key or shape mismatch into a CheckpointError that lists them."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{source}: its weights are a {type(state).__name__}, not a state dict of named tensors; "
            "the checkpoint is damaged or from another tool"
        )
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
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    The configuration comes from the file, so one that names no buildable model (a missing section,
    a size of the wrong type, a width the heads do not divide) is the file's fault: a CheckpointError
    naming `source`, not the traceback the model's constructor would give.
    """
    try:
        cfg = ModelConfig.from_dict(data["model_config"])
        model = VRCLIP(cfg)
    except (CheckpointError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{source}: its model configuration does not describe a model this vrclip-export can build "
            f"({e}); the checkpoint is damaged or from another version - re-run training"
        ) from e
    load_model_state(model, data["model"], source)
    model.eval()
    return model


__all__ = [
    "RERUN_TRAINING",
    "load_checkpoint",
    "load_checkpoint_with_digest",
    "load_model_state",
    "model_from_checkpoint",
    "save_atomic",
]
