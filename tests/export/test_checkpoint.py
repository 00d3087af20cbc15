"""Checkpoints a user hands to `evaluate` and `onnx`: every way one can be damaged or foreign is a
CheckpointError that names the file and what is wrong, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from vrclip.export.checkpoint import load_checkpoint, model_from_checkpoint, save_atomic  # noqa: E402
from vrclip.export.data import PrepSpec  # noqa: E402
from vrclip.export.model import VRCLIP, CheckpointError, preset  # noqa: E402


def envelope() -> dict[str, Any]:
    """What training writes, for the micro model (random weights)."""
    cfg = preset("micro", rf_frames=4, rf_channels=8, rf_range_bins=8, num_classes=3)
    return {
        "model_config": cfg.to_dict(),
        "prep": PrepSpec().to_dict(),
        "classes": ["id-000", "id-001", "id-002"],
        "model": VRCLIP(cfg).state_dict(),
        "stage": "done",
        "epoch": 0,
    }


def damaged(path: Path, edit: Any) -> dict[str, Any]:
    data = envelope()
    edit(data)
    save_atomic(data, path)
    return load_checkpoint(path)


@pytest.mark.parametrize(
    ("name", "edit", "says"),
    [
        ("str-layers.pt", lambda d: d["model_config"]["rf"].update(layers="x"), "model configuration"),
        ("odd-width.pt", lambda d: d["model_config"]["vision"].update(width=97), "width 97"),
        ("no-rf.pt", lambda d: d["model_config"].pop("rf"), "model configuration"),
        ("weights-list.pt", lambda d: d.update(model=[1, 2]), "weights"),
        ("weights-ints.pt", lambda d: d.update(model={"a": 1}), "weights"),
    ],
)
def test_a_checkpoint_whose_model_cannot_be_built_is_named(
    tmp_path: Path, name: str, edit: Any, says: str
) -> None:
    path = tmp_path / name
    data = damaged(path, edit)
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(data, str(path))
    assert str(e.value).startswith(f"{path}: ") and says in str(e.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to stand for a full disk")
def test_a_full_disk_is_named_and_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """Before, a full disk surfaced from `train` and `pretrain-vision` as a traceback (OSError: No space
    left on device, after torch's RuntimeError) and left the half-written .tmp behind."""
    path = tmp_path / "checkpoint.pt"
    save_atomic(envelope(), path)
    before = path.read_bytes()
    tmp = tmp_path / "checkpoint.pt.tmp"
    tmp.symlink_to("/dev/full")  # every write to the temporary file fails as on a full disk
    with pytest.raises(CheckpointError) as e:
        save_atomic(envelope(), path)
    assert str(e.value).startswith(f"{path}: cannot write") and "No space left on device" in str(e.value)
    assert path.read_bytes() == before
    assert not tmp.exists() and not tmp.is_symlink()
