"""`vrclip-export onnx`: the fused graph round-trips through ONNX Runtime at any batch size, its manifest
is what the edge runtime opens, and bad input fails with one line and overwrites nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("onnxruntime")

from vrclip.edge.cli_support import make_app, run  # noqa: E402
from vrclip.edge.inference.base import EngineMismatchError  # noqa: E402
from vrclip.edge.inference.factory import open_engine  # noqa: E402
from vrclip.edge.manifest import load_manifest  # noqa: E402
from vrclip.edge.pipeline.identify import Identifier, ModelFeeds  # noqa: E402
from vrclip.edge.rfwindow import RFWindowSpec  # noqa: E402
from vrclip.export.checkpoint import save_atomic  # noqa: E402
from vrclip.export.data import PrepSpec  # noqa: E402
from vrclip.export.export_cli import register  # noqa: E402
from vrclip.export.model import VRCLIP, CheckpointError, InferenceModel, preset  # noqa: E402
from vrclip.export.onnx_export import (  # noqa: E402
    ExportError,
    ExportOptions,
    export_checkpoint,
    random_inputs,
    window_for,
)

#: Every 18th of the 144 virtual channels: 8 channels, so the micro model stays tiny.
CHANNELS = tuple(range(0, 144, 18))


def make_checkpoint(
    path: Path,
    *,
    dataset: Path | None = None,
    segments: list[dict] | None = None,
    background: str = "session",
) -> Path:
    """A checkpoint as training writes it, for the micro model (random weights: export does not care)."""
    torch.manual_seed(0)
    window = RFWindowSpec(frames=4, range_bins=8, channels=CHANNELS, background=background)
    cfg = preset("micro", rf_frames=4, rf_channels=len(CHANNELS), rf_range_bins=8, num_classes=3)
    model = VRCLIP(cfg).eval()
    save_atomic(
        {
            "model_config": cfg.to_dict(),
            "prep": PrepSpec(rf=window).to_dict(),
            "classes": ["id-000", "id-001", "id-002"],
            "segments": segments or [],
            "train_config": {"dataset": str(dataset) if dataset else None},
            "model": model.state_dict(),
            "stage": "done",
            "epoch": 0,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(folder / "vrclip.pt")
    result = export_checkpoint(ckpt, folder / "micro.onnx", ExportOptions(max_batch=4))
    return ckpt, result.onnx_path


def torch_model(ckpt: Path) -> InferenceModel:
    from vrclip.export.checkpoint import load_checkpoint, model_from_checkpoint

    return InferenceModel(model_from_checkpoint(load_checkpoint(ckpt), str(ckpt))).eval()


def test_onnx_runtime_matches_torch_at_any_batch_size(exported: tuple[Path, Path]) -> None:
    import onnx
    import onnxruntime as ort

    ckpt, path = exported
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert {o.domain or "ai.onnx": o.version for o in graph.opset_import}["ai.onnx"] == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rgb", "rf", "anchor", "present"]
    assert [o.name for o in session.get_outputs()] == ["embedding", "position", "reliability"]
    model = torch_model(ckpt)
    for batch in (1, 2, 5):  # 2 is the traced batch; 1 and 5 only work if the axis is dynamic
        feeds = random_inputs(model.model.cfg, batch, seed=100 + batch)
        with torch.no_grad():
            want = model(*(torch.from_numpy(feeds[n]) for n in InferenceModel.INPUT_NAMES))
        got = session.run(None, feeds)
        assert got[0].shape == (batch, model.model.cfg.align_dim)
        assert np.max(np.abs(got[0] - want[0].numpy())) <= 1e-4
        assert np.max(np.abs(got[1] - want[1].numpy())) <= 1e-4
        assert np.max(np.abs(got[2] - want[2].numpy())) <= 1e-4


def test_manifest_configures_the_runtime_and_open_engine_runs_it(exported: tuple[Path, Path]) -> None:
    ckpt, path = exported
    manifest = load_manifest(path.with_suffix(".json"))
    assert manifest.precision == "fp32" and manifest.max_batch == 4
    assert manifest.input("anchor").shape == ("batch", 4, 2)
    assert manifest.input("rf").shape == ("batch", 4, len(CHANNELS), 8, 2)
    assert manifest.output("reliability").shape == ("batch",)
    # The RF window is the checkpoint's spec verbatim: the session background it was trained with.
    window = dict(manifest.preprocessing.rf.window)
    window.pop("sensor", None)
    assert window == RFWindowSpec(frames=4, range_bins=8, channels=CHANNELS).to_dict()
    assert manifest.accuracy["onnx_vs_torch"]["max_abs"]["embedding"] <= 1e-4
    feeds_builder = ModelFeeds(manifest)
    assert feeds_builder.window.channels == CHANNELS

    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (6, 256, 128, 3), dtype=np.uint8)
    rf = rng.normal(size=(6, 4, len(CHANNELS), 8, 2)).astype(np.float32)
    anchors = np.cumsum(rng.normal(0, 0.05, (6, 4, 2)), axis=1) + np.array([0.0, 3.0])
    feeds = feeds_builder.build(crops, rf, anchors, np.array([True, False] * 3))
    with open_engine(path, "onnxruntime", providers=["CPUExecutionProvider"]) as engine:
        out = engine.infer(feeds)  # 6 > max_batch 4: the backend splits, the graph takes both sizes
    model = torch_model(ckpt)
    with torch.no_grad():
        want = model(*(torch.from_numpy(np.asarray(feeds[n])) for n in InferenceModel.INPUT_NAMES))
    assert np.max(np.abs(out["embedding"] - want[0].numpy())) <= 1e-4
    assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, atol=1e-5)


def test_a_beam_window_must_give_the_model_its_channel_count() -> None:
    cfg = preset("micro", rf_frames=4, rf_channels=8, rf_range_bins=8, num_classes=3)
    fits = RFWindowSpec(
        frames=4, range_bins=8, beam_heights_m=(0.4, 0.8, 1.2, 1.6), beam_offsets_m=(-0.1, 0.1)
    )
    assert window_for(cfg, PrepSpec(rf=fits).to_dict()) == fits.to_dict()
    three = RFWindowSpec(frames=4, range_bins=8, beam_heights_m=(0.5, 1.0, 1.5))
    with pytest.raises(CheckpointError, match="forms 3 beams, the model takes 8"):
        window_for(cfg, PrepSpec(rf=three).to_dict())


def test_runtime_refuses_an_engine_its_window_cannot_feed(exported: tuple[Path, Path], geometry) -> None:
    """A manifest whose window gives another channel count than the engine's RF input (an engine
    trained for another array, or a hand-edited manifest) stops `run` with a one-line error."""
    from types import SimpleNamespace

    from vrclip.edge.config import EdgeConfig
    from vrclip.edge.sim.radar import sweep_frequencies

    _, path = exported
    manifest = load_manifest(path.with_suffix(".json"))
    rf = manifest.preprocessing.rf
    beams = RFWindowSpec(frames=4, range_bins=8, beam_heights_m=(0.5, 1.0, 1.5)).to_dict()
    pre = manifest.preprocessing.model_copy(update={"rf": rf.model_copy(update={"window": beams})})
    backend = SimpleNamespace(manifest=manifest.model_copy(update={"preprocessing": pre}))
    config = EdgeConfig()
    with pytest.raises(EngineMismatchError, match=r"takes 8 RF channels .* gives 3"):
        Identifier(config, geometry, sweep_frequencies(config.radar.sweep), backend)  # type: ignore[arg-type]


def test_running_background_is_recorded_only_when_trained_so(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "run.pt", background="running")
    result = export_checkpoint(ckpt, tmp_path / "m.onnx")
    assert result.manifest.preprocessing.rf.window["background"] == "running"


def test_unknown_opset_fails_and_overwrites_nothing(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = exported
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous model")
    with pytest.raises(ExportError, match="--opset 18"):
        export_checkpoint(ckpt, out, ExportOptions(opset=18))
    assert out.read_bytes() == b"previous model"
    assert not (tmp_path / "m.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporaries left


def test_failed_verification_is_loud_and_leaves_no_file(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = exported
    with pytest.raises(ExportError, match="ONNX Runtime and PyTorch disagree"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", ExportOptions(tolerance=-1.0))
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_that_does_not_match_its_config_is_refused(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "bad.pt")
    data = torch.load(ckpt, weights_only=True)
    data["model_config"]["align_dim"] = 24  # the weights are for align_dim 16
    torch.save(data, ckpt)
    with pytest.raises(CheckpointError, match="do not fit the model configuration"):
        export_checkpoint(ckpt, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("edit", "error", "says"),
    [
        (lambda prep: prep["rf"].update(frames="x"), CheckpointError, "RF window spec is malformed"),
        (lambda prep: prep["rf"].update(frames=7), CheckpointError, "window frames 7 vs model frames 4"),
        (lambda prep: prep["crop"].update(height=64), CheckpointError, "crops are 64x"),
        (lambda prep: prep["crop"].update(half_width_m=0.5), ExportError, "the edge runtime cuts"),
    ],
)
def test_preprocessing_that_does_not_fit_the_model_names_the_checkpoint(
    tmp_path: Path, edit, error: type[Exception], says: str
) -> None:
    """These messages used to start "the checkpoint's ..." without saying which file was meant."""
    ckpt = make_checkpoint(tmp_path / "odd.pt")
    data = torch.load(ckpt, weights_only=True)
    edit(data["prep"])
    torch.save(data, ckpt)
    with pytest.raises(error) as e:
        export_checkpoint(ckpt, tmp_path / "m.onnx")
    assert str(e.value).startswith(f"{ckpt}: ") and says in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_errors_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    app = make_app("vrclip-export", "test")
    register(app)
    report = tmp_path / "report.json"  # a report of some checkpoint: the missing one is what is wrong
    report.write_text(json.dumps({"open_set": None, "meta": {"checkpoint_sha256": "0" * 64}}))
    for args, expected in (
        (["onnx", str(tmp_path / "missing.pt")], "no such checkpoint"),
        (
            ["onnx", str(tmp_path / "missing.pt"), "--threshold-from", str(report)],
            "missing.pt: no such checkpoint",
        ),
        (["onnx", str(make_checkpoint(tmp_path / "c.pt")), "--opset", "13"], "--opset 13"),
    ):
        monkeypatch.setattr(sys, "argv", ["vrclip-export", *args])
        with pytest.raises(SystemExit) as exit_info:
            run(app)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_writes_the_package(tmp_path: Path, monkeypatch, capsys) -> None:
    app = make_app("vrclip-export", "test")
    register(app)
    ckpt = make_checkpoint(tmp_path / "vrclip.pt")
    monkeypatch.setattr(sys, "argv", ["vrclip-export", "onnx", str(ckpt), "--max-batch", "2"])
    run(app)  # returns normally on success (errors exit 2)
    manifest = json.loads((tmp_path / "vrclip.json").read_text())
    assert manifest["max_batch"] == 2 and manifest["precision"] == "fp32"
    assert "wrote" in capsys.readouterr().out


def test_threshold_from_and_the_source_hash_vouch_for_the_checkpoint_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training replaces checkpoint.pt every epoch: the report check and the manifest's source hash must be
    of the bytes the exported model came from, not of whatever the path holds after loading."""
    import hashlib

    import vrclip.export.checkpoint as checkpoint_module
    from vrclip.edge.errors import UserError

    ckpt = make_checkpoint(tmp_path / "checkpoint.pt")
    loaded_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    data = torch.load(ckpt, weights_only=True)
    data["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in data["model"].items()}
    later = tmp_path / "next-epoch.pt"
    torch.save(data, later)
    later_sha = hashlib.sha256(later.read_bytes()).hexdigest()

    def report_of(sha: str) -> Path:
        path = tmp_path / f"report-{sha[:8]}.json"
        open_set = {"threshold": 0.6, "identity_accuracy": 0.9, "unknown_accuracy": 0.8, "queries": 10}
        path.write_text(json.dumps({"open_set": open_set, "meta": {"checkpoint_sha256": sha}}))
        return path

    real_load = checkpoint_module.torch.load

    def load_then_training_writes(*args: object, **kwargs: object) -> object:
        out = real_load(*args, **kwargs)
        if ckpt.read_bytes() != later.read_bytes():
            (tmp_path / "tmp.pt").write_bytes(later.read_bytes())
            (tmp_path / "tmp.pt").replace(ckpt)  # as save_atomic does
        return out

    monkeypatch.setattr(checkpoint_module.torch, "load", load_then_training_writes)
    with pytest.raises(UserError, match="it evaluated another checkpoint"):
        export_checkpoint(ckpt, tmp_path / "m.onnx", threshold_from=report_of(later_sha))
    assert not (tmp_path / "m.onnx").exists()

    make_checkpoint(ckpt)  # the model as it was loaded, and its report
    result = export_checkpoint(ckpt, tmp_path / "m.onnx", threshold_from=report_of(loaded_sha))
    assert ckpt.read_bytes() == later.read_bytes()  # replaced while it was exported
    assert result.manifest.accuracy["source_checkpoint_sha256"] == loaded_sha
    # The model the engine's embeddings belong to, which a gallery is tied to, is that checkpoint.
    assert result.manifest.embedding_space == loaded_sha
    assert result.manifest.open_set is not None and result.manifest.open_set.threshold == 0.6
