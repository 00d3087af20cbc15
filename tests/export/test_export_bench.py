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


def test_int8_cpu_is_timed_and_scored_one_sample_at_a_time_as_the_runtime_runs_it() -> None:
    """The runtime runs int8-cpu packages at batch 1 (one activation scale per tensor would make a
    sample depend on its batch partners); the bench must time what the runtime does."""
    import numpy as np
    from vrclip.export.bench import Variant, run_like_runtime

    class Session:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            n = feeds["rf"].shape[0]
            self.batches.append(n)
            return [feeds["rf"].reshape(n, -1) * (k + 1) for k in range(len(names))]

    feeds = {"rf": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "present": np.ones((8, 2), np.float32)}
    cpu, fp32 = Variant("int8-cpu", Path("x")), Variant("fp32", Path("y"))
    cpu.session, fp32.session = Session(), Session()
    out = run_like_runtime(cpu, ["embedding", "position"], feeds)
    assert cpu.session.batches == [1] * 8
    assert np.array_equal(out[0], feeds["rf"]) and np.array_equal(out[1], 2 * feeds["rf"])
    run_like_runtime(fp32, ["embedding"], feeds)
    assert fp32.session.batches == [8]
