"""`vrclip-export bench`: the JSON it writes has the agreed shape (one row per config, precision and
batch with latency, throughput and cosine to fp32) and records the machine's load."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("onnxruntime")

from vrclip.edge.cli_support import make_app, run
from vrclip.edge.errors import UserError
from vrclip.export.bench import BenchOptions, run_bench
from vrclip.export.export_cli import register


def test_bench_json_shape_with_tiny_settings(tmp_path: Path, monkeypatch, capsys) -> None:
    app = make_app("vrclip-export", "test")
    register(app)
    out = tmp_path / "bench.json"
    argv = ["bench", "--json", str(out), "--config", "tiny", "--batch", "1", "--batch", "2"]
    monkeypatch.setattr(sys, "argv", ["vrclip-export", *argv, "--iterations", "3", "--warmup", "1"])
    run(app)
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {(r["config"], r["precision"], r["batch"]) for r in rows} == {
        ("tiny", p, b) for p in ("fp32", "int8", "int8-cpu") for b in (1, 2)
    }
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["throughput"] > 0
        assert -1.0 <= r["cosine_min"] <= r["cosine_mean"] <= 1.0 + 1e-6
        assert r["iterations"] == 3 and r["weights"] == "random"
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert all(r["cosine_min"] > 0.99999 for r in fp32)  # fp32 against itself
    int8 = [r for r in rows if r["precision"] != "fp32"]
    assert all(r["cosine_mean"] > 0.9 for r in int8)
    assert len(report["machine"]["loadavg_before"]) == 3 and len(report["machine"]["loadavg_after"]) == 3
    assert set(report["speedup_p50_vs_fp32"]) == {
        f"tiny/{p}/b{b}" for p in ("int8", "int8-cpu") for b in (1, 2)
    }
    assert "wrote" in capsys.readouterr().out


def test_unknown_config_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--config 'vit-l14'"):
        run_bench(BenchOptions(configs=("vit-l14",)))


def test_tiny_package_is_resolved_like_the_runtime_and_must_be_the_float_one(tmp_path: Path) -> None:
    """`--tiny-package` takes NAME.onnx, NAME.json or NAME as `open_engine` does, and refuses a quantised
    package, whose figures would otherwise be labelled fp32."""
    from tests.fakes.models import tiny_package

    fp32 = tiny_package(tmp_path, "m")
    tiny_package(tmp_path, "m.int8", qdq=True)  # its int8 sibling

    def bench(package: Path) -> list[dict]:
        options = BenchOptions(
            configs=("tiny",),
            batches=(1,),
            iterations={"tiny": 2},
            warmup=0,
            cosine_samples=2,
            tiny_package=package,
        )
        return run_bench(options, log=lambda _: None)["results"]

    for given in (fp32, tmp_path / "m.json", tmp_path / "m"):
        rows = bench(given)
        assert [(r["precision"], r["weights"]) for r in rows] == [("fp32", "trained"), ("int8", "trained")]
        assert rows[0]["cosine_min"] > 0.99999  # the float model against itself
    with pytest.raises(UserError, match=r"m\.int8\.json describes a model of precision 'int8'.*fp32"):
        bench(tmp_path / "m.int8.onnx")
    with pytest.raises(UserError, match=r"nothing\.json: no engine manifest"):
        bench(tmp_path / "nothing.onnx")
    fp32.write_bytes(fp32.read_bytes() + b"\0")  # not the model its manifest describes
    with pytest.raises(UserError, match=r"m\.onnx: sha256 .* is not the"):
        bench(tmp_path / "m")
