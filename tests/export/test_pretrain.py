"""`vrclip-export pretrain-vision`: rendered people outside the dataset, a tower `train --weights` loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from vrclip.edge.crops import CropSpec  # noqa: E402
from vrclip.edge.errors import UserError  # noqa: E402
from vrclip.export.model import (  # noqa: E402
    CheckpointError,
    VisualEncoder,
    load_clip_visual_weights,
    preset,
)
from vrclip.export.pretrain import (  # noqa: E402
    CHECKPOINT_NAME,
    CROP_RENDER_VERSION,
    PretrainConfig,
    augment,
    pretrain,
    pretrain_name,
    render_crops,
    render_identity,
    rig_of_dataset,
)

SMALL = {"identities": 4, "sessions": 2, "frames": 6, "epochs": 2, "batch_size": 8, "jobs": 1, "threads": 1}


def small_config(dataset: Path, out: Path, **overrides: object) -> PretrainConfig:
    return PretrainConfig(dataset=dataset, out=out, preset="micro", **{**SMALL, **overrides})  # type: ignore[arg-type]


def test_rendered_people_are_deterministic_and_never_a_dataset_identity(small_dataset: Path) -> None:
    rig = rig_of_dataset(small_dataset)
    crop = CropSpec(height=64, width=32)
    a, vis_a = render_identity(rig, 3, 2, 4, 7, 0.1, crop)
    b, vis_b = render_identity(rig, 3, 2, 4, 7, 0.1, crop)
    other, _ = render_identity(rig, 4, 2, 4, 7, 0.1, crop)
    assert a.shape[1:] == (64, 32, 3) and a.dtype == np.uint8 and 0 < len(a) <= 8
    assert np.array_equal(a, b) and np.array_equal(vis_a, vis_b)
    assert not np.array_equal(a[: len(other)], other[: len(a)])
    dataset_names = {
        s["identity"] for s in json.loads((small_dataset / "dataset.json").read_text())["sessions"]
    }
    assert pretrain_name(3) not in dataset_names and pretrain_name(3).startswith("pretrain-")


def test_pretraining_writes_a_tower_that_train_weights_loads(small_dataset: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    out = pretrain(small_config(small_dataset, tmp_path / "pre"), log=logs.append)
    assert out.name == "vision-pretrained.pt" and any("epoch 2/2" in line for line in logs)
    encoder = VisualEncoder(preset("micro").vision)
    before = {k: v.clone() for k, v in encoder.vit.state_dict().items()}
    adapters = {f"adapters.{k}": v for k, v in encoder.adapters.state_dict().items()}
    assert load_clip_visual_weights(encoder, out) == len(before) + len(adapters) and adapters
    saved = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in encoder.vit.state_dict().items():
        assert torch.equal(value, saved[key])
    for key, value in encoder.adapters.state_dict().items():
        assert torch.equal(value, saved[f"adapters.{key}"])
    assert any(not torch.equal(before[k], saved[k]) for k in before)


def test_a_tower_pretrained_for_other_inputs_is_refused(small_dataset: Path, tmp_path: Path) -> None:
    out = pretrain(small_config(small_dataset, tmp_path / "pre", epochs=1), log=lambda _: None)
    clip_statistics = replace(preset("micro").vision, gray_world=False)
    with pytest.raises(CheckpointError, match="gray_world True in the file vs False"):
        load_clip_visual_weights(VisualEncoder(clip_statistics), out)


def test_pretraining_resumes_bit_identically_after_a_kill(small_dataset: Path, tmp_path: Path) -> None:
    whole = pretrain(small_config(small_dataset, tmp_path / "whole"), log=lambda _: None)

    class Killed(Exception):
        pass

    def kill_in_second_epoch(epoch: int, *_: object) -> None:
        if epoch == 1:
            raise Killed

    cfg = small_config(small_dataset, tmp_path / "killed")
    with pytest.raises(Killed):
        pretrain(cfg, progress=kill_in_second_epoch, log=lambda _: None)
    assert (cfg.out / CHECKPOINT_NAME).is_file() and not (cfg.out / "vision-pretrained.pt").exists()
    logs: list[str] = []
    resumed = pretrain(cfg, log=logs.append)
    assert any("resuming" in line and "after epoch 1" in line for line in logs)
    a = torch.load(whole, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(resumed, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match=r"other settings.*lr"):
        pretrain(replace(cfg, lr=5e-4), log=lambda _: None)


def with_rig(dataset: Path, folder: Path, old: str, new: str) -> Path:
    """A dataset folder whose rig is `dataset`'s with `old` replaced by `new` in its TOML (pretraining
    reads nothing else of a dataset)."""
    meta = json.loads((dataset / "dataset.json").read_text())
    assert old in meta["config_toml"]
    meta["config_toml"] = meta["config_toml"].replace(old, new)
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_a_checkpoint_is_resumed_only_for_the_rig_it_was_pretrained_on(
    small_dataset: Path, tmp_path: Path
) -> None:
    """Re-running into the same --out with a dataset of another camera must not go on training the
    checkpoint on that camera's crops (the crops are re-rendered for it, the checkpoint was not)."""

    class Killed(Exception):
        pass

    def kill_in_second_epoch(epoch: int, *_: object) -> None:
        if epoch == 1:
            raise Killed

    cfg = small_config(small_dataset, tmp_path / "pre")
    with pytest.raises(Killed):
        pretrain(cfg, progress=kill_in_second_epoch, log=lambda _: None)
    checkpoint = cfg.out / CHECKPOINT_NAME
    crops_key = (cfg.out / "crops" / "key.json").read_text()
    wider = with_rig(small_dataset, tmp_path / "wider", "hfov_deg = 90.0", "hfov_deg = 100.0")
    assert rig_of_dataset(wider).camera != rig_of_dataset(small_dataset).camera
    with pytest.raises(
        UserError,
        match=r"pretrain-checkpoint\.pt: was pretrained on crops rendered through another rig "
        r"\(camera differs\).*--restart",
    ):
        pretrain(replace(cfg, dataset=wider), log=lambda _: None)
    assert (cfg.out / "crops" / "key.json").read_text() == crops_key  # refused before re-rendering
    duller = with_rig(small_dataset, tmp_path / "duller", "jpeg_quality = 90", "jpeg_quality = 60")
    with pytest.raises(UserError, match=r"\(JPEG quality differs\)"):
        pretrain(replace(cfg, dataset=duller), log=lambda _: None)

    # Trained on crops an older renderer made (other crops for the same settings): not resumed.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    older = {**state, "settings": {**state["settings"], "render_version": CROP_RENDER_VERSION - 1}}
    torch.save(older, checkpoint)
    with pytest.raises(UserError, match=r"other settings \(render_version\).*--restart"):
        pretrain(cfg, log=lambda _: None)

    # A checkpoint from before the rig was recorded cannot show which camera it was trained on.
    legacy = {**state, "settings": {k: v for k, v in state["settings"].items() if k != "rig"}}
    torch.save(legacy, checkpoint)
    with pytest.raises(UserError, match=r"did not record the dataset's rig.*pass --restart"):
        pretrain(cfg, log=lambda _: None)

    # --restart pretrains afresh for the new rig: the same tower as a run that started there.
    restarted = pretrain(replace(cfg, dataset=wider), log=lambda _: None, restart=True)
    straight = pretrain(small_config(wider, tmp_path / "straight"), log=lambda _: None)
    a = torch.load(restarted, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(straight, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augmentation_mirrors_or_darkens_each_crop_and_leaves_the_rest_as_they_were(tmp_path: Path) -> None:
    rgb = torch.rand(64, 3, 16, 8) * 0.5 + 0.25
    original = rgb.clone()
    cfg = PretrainConfig(dataset=tmp_path, out=tmp_path, degrade_prob=0.0)
    out = augment(rgb.clone(), cfg, torch.Generator().manual_seed(3))
    mirrored = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, original, strict=True)])
    kept = torch.tensor([torch.equal(o, x) for o, x in zip(out, original, strict=True)])
    assert bool((mirrored | kept).all()) and 16 < int(mirrored.sum()) < 48  # about half, nothing else
    dark = augment(rgb.clone(), replace(cfg, degrade_prob=1.0), torch.Generator().manual_seed(3))
    brightness = dark.mean(dim=(1, 2, 3))
    assert bool((brightness < original.mean(dim=(1, 2, 3)) + 0.02).all())
    assert float(brightness.min()) < 0.2 * float(original.mean())  # the darkest draws are near black


def test_bad_pretraining_input_names_the_file_or_option(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"dataset\.json: not found"):
        rig_of_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match=r"dataset\.json: unreadable"):
        rig_of_dataset(tmp_path)
    with pytest.raises(UserError, match="--identities 1"):
        small_config(tmp_path, tmp_path / "o", identities=1).validate()
    with pytest.raises(UserError, match="--lr"):
        small_config(tmp_path, tmp_path / "o", lr=0.0).validate()


def test_rendered_crops_are_cached_and_rendered_afresh_when_settings_change(
    small_dataset: Path, tmp_path: Path
) -> None:
    rig = rig_of_dataset(small_dataset)
    crop = CropSpec(height=64, width=32)
    cfg = small_config(small_dataset, tmp_path / "pre", identities=3, sessions=1, frames=3)
    calls: list[int] = []
    first = render_crops(cfg, rig, crop, lambda done, total: calls.append(done))
    assert calls == [1, 2, 3] and len(first.crops) == len(first.labels) == len(first.visible) > 0
    again = render_crops(cfg, rig, crop, lambda done, total: calls.append(done))
    assert calls == [1, 2, 3] and np.array_equal(np.asarray(first.crops), np.asarray(again.crops))
    more = render_crops(replace(cfg, frames=4), rig, crop, lambda done, total: calls.append(done))
    assert calls == [1, 2, 3, 1, 2, 3] and len(more.crops) > len(first.crops)
    assert not list(cfg.out.glob("crops.tmp*"))


def test_the_command_line_defaults_are_the_configuration_defaults(tmp_path: Path) -> None:
    """The CLI repeats PretrainConfig's defaults (it must not import torch to print --help)."""
    import inspect

    from vrclip.export.commands import pretrain_vision

    cfg = PretrainConfig(dataset=tmp_path, out=tmp_path)
    options = inspect.signature(pretrain_vision).parameters
    pairs = {
        "identities": "identities",
        "sessions": "sessions",
        "frames": "frames",
        "world_seed": "world_seed",
    }
    pairs |= {"epochs": "epochs", "batch": "batch_size", "lr": "lr", "seed": "seed", "threads": "threads"}
    for option, field in pairs.items():
        assert options[option].default.default == getattr(cfg, field), option
