"""`vrclip-export verify`: engine vs ONNX Runtime on held-out feeds, latency, and the pass/fail verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import typer
from vrclip.edge.cli_support import make_app, run
from vrclip.edge.errors import UserError
from vrclip.edge.manifest import load_manifest
from vrclip.export.trt_build import BuildOptions, build_engine
from vrclip.export.trt_cli import register
from vrclip.export.trt_verify import (
    MAX_POSITION_ERROR_M,
    VerifyOptions,
    compare,
    load_feeds,
    verify_engine,
)

from tests.fakes import fake_modules
from tests.fakes.models import tiny_feeds, tiny_package

FAST = VerifyOptions(iterations=3, warmup=1)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    with fake_modules(monkeypatch, "tensorrt", "cupy") as modules:
        yield modules


@pytest.fixture
def package(tmp_path: Path, fakes: dict[str, ModuleType]) -> Path:
    onnx_path = tiny_package(tmp_path, "model", max_batch=4)
    build_engine(onnx_path, BuildOptions(precision="fp16", timing_cache=None), echo=lambda _: None)
    np.savez(tmp_path / "heldout.npz", **tiny_feeds(10, seed=3), labels=np.arange(10))
    return onnx_path.with_suffix(".engine")


def cli_app() -> typer.Typer:
    app = make_app("vrclip-export", "test")
    register(app)
    return app


def test_fp16_engine_agrees_with_onnx_runtime(package: Path) -> None:
    report = verify_engine(package, package.parent / "heldout.npz", FAST)
    assert report["passed"] and not report["failing"]
    assert report["samples"] == 10 and report["precision"] == "fp16" and report["inputs_on"] == "device"
    for name in ("embedding", "position", "reliability"):
        r = report["outputs"][name]
        assert 0 < r["max_abs"] < 1e-2  # the fake rounds through float16: close, not identical
        assert r["cosine"] > 0.9999 and r["rel_l2"] < 1e-2
    assert report["outputs"]["embedding"]["min_row_cosine"] > 0.999
    assert report["outputs"]["reliability"]["min_row_cosine"] is None  # one value per sample
    assert set(report["latency"]) == {"batch_1", "batch_4"}
    for t in report["latency"].values():
        assert 0 < t["p50_ms"] <= t["p99_ms"] and t["throughput_per_s"] > 0


def test_a_wrong_engine_fails_and_names_the_output(
    package: Path, fakes: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    engine_cls = fakes["tensorrt"].ICudaEngine
    honest = engine_cls._run

    def broken(self, feeds):  # a miscompiled engine: the position head comes out scrambled
        out = honest(self, feeds)
        out["position"] = out["position"][:, ::-1] * np.float32(-1)
        return out

    monkeypatch.setattr(engine_cls, "_run", broken)
    report = verify_engine(package, package.parent / "heldout.npz", FAST)
    assert not report["passed"] and set(report["failing"]) == {"position"}
    out_json = package.parent / "report.json"
    argv = ["vrclip-export", "verify", str(package), "--data", str(package.parent / "heldout.npz")]
    monkeypatch.setattr(sys, "argv", [*argv, "--json", str(out_json), "--iterations", "2"])
    with pytest.raises(SystemExit) as exit_:
        run(cli_app())
    assert exit_.value.code == 2
    assert "disagrees with ONNX Runtime: position: max |diff|" in capsys.readouterr().err
    assert json.loads(out_json.read_text())["failing"].keys() == {"position"}  # report written before failing


def test_each_sample_must_agree_not_the_whole_output_on_average(
    package: Path, fakes: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positions 0.3 m off, one embedding of ten at cosine 0.95, reliabilities 0.1 off: each keeps
    a cosine over the whole flattened output above 0.99, and each must fail the engine."""
    engine_cls = fakes["tensorrt"].ICudaEngine
    honest = engine_cls._run
    noise = np.random.default_rng(5).normal(0.0, 0.3, (10, 2)).astype(np.float32)
    damage: dict[str, bool] = {}

    def off(self, feeds):
        out = honest(self, feeds)
        n = len(out["position"])
        if damage.get("position"):
            out["position"] = out["position"] + noise[:n]
        if damage.pop("embedding", False):  # the first chunk of the comparison run
            e = out["embedding"].copy()
            away = e[1] - (e[1] @ e[0]) * e[0]
            e[0] = 0.95 * e[0] + np.sqrt(1 - 0.95**2) * away / np.linalg.norm(away)  # cosine 0.95
            out["embedding"] = e
        if damage.get("reliability"):
            out["reliability"] = np.clip(out["reliability"] + np.float32(0.1), 0, 1)
        return out

    monkeypatch.setattr(engine_cls, "_run", off)
    for name in ("position", "embedding", "reliability"):
        damage.clear()
        damage[name] = True
        report = verify_engine(package, package.parent / "heldout.npz", FAST)
        r = report["outputs"][name]
        assert r["cosine"] > 0.99, name  # what the old check looked at: it would pass
        assert not report["passed"] and set(report["failing"]) == {name}, name
    assert "max |diff|" in report["failing"]["reliability"]
    assert report["max_position_error_m"] == MAX_POSITION_ERROR_M


def test_cli_writes_the_report_and_records_a_summary(
    package: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out_json = package.parent / "out" / "verify.json"
    argv = ["vrclip-export", "verify", str(package), "--data", str(package.parent / "heldout.npz")]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--json", str(out_json), "--iterations", "2", "--batch", "3", "--record"]
    )
    run(cli_app())
    out = capsys.readouterr().out
    assert "passed" in out and "p50" in out and "embedding" in out
    report = json.loads(out_json.read_text())
    assert set(report["latency"]) == {"batch_1", "batch_3"}
    summary = load_manifest(package.with_suffix(".json")).accuracy["tensorrt_verify"]
    assert summary["passed"] and summary["cosine"]["embedding"] > 0.9999


def test_feeds_file_problems_are_user_errors(package: Path) -> None:
    manifest = load_manifest(package.with_suffix(".json"))
    folder = package.parent
    with pytest.raises(UserError, match="no such feeds file"):
        load_feeds(folder / "missing.npz", manifest)
    np.savez(folder / "partial.npz", rgb=tiny_feeds(2)["rgb"])
    with pytest.raises(UserError, match=r"lacks the engine's inputs \['rf', 'anchor'\]"):
        load_feeds(folder / "partial.npz", manifest)
    bad = tiny_feeds(2)
    bad["rf"] = bad["rf"][:, :1]
    np.savez(folder / "bad.npz", **bad)
    with pytest.raises(UserError, match=r"bad\.npz: input 'rf': shape"):
        load_feeds(folder / "bad.npz", manifest)
    (folder / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"not a readable .npz"):
        load_feeds(folder / "junk.npz", manifest)
    assert len(load_feeds(folder / "heldout.npz", manifest, max_samples=4)["rgb"]) == 4


def test_without_tensorrt_verify_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(
        sys, "argv", ["vrclip-export", "verify", str(tmp_path / "m.engine"), "--data", "x.npz"]
    )
    with pytest.raises(SystemExit) as exit_:
        run(cli_app())
    assert exit_.value.code == 2
    assert "TensorRT is not installed: pip install 'vrclip-edge[trt]'" in capsys.readouterr().err


def test_compare_metrics() -> None:
    ref = {"e": np.array([[1.0, 0.0], [0.0, 1.0]]), "r": np.array([0.5, 0.5]), "z": np.zeros((2, 2))}
    got = {"e": np.array([[1.0, 0.0], [1.0, 0.0]]), "r": np.array([0.5, 0.6]), "z": np.zeros((2, 2))}
    report = compare(ref, got)
    assert report["e"]["max_abs"] == 1.0 and report["e"]["min_row_cosine"] == 0.0
    assert report["e"]["cosine"] == pytest.approx(0.5)
    assert report["r"]["max_abs"] == pytest.approx(0.1) and report["r"]["min_row_cosine"] is None
    assert report["r"]["cosine"] == pytest.approx(0.55 / (np.sqrt(0.5) * np.sqrt(0.61)))
    assert report["z"]["cosine"] == 1.0 and report["z"]["rel_l2"] == 0.0  # identical zeros agree
