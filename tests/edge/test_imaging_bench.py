"""`vrclip-edge bench imaging` writes the documented JSON and a table (tiny settings: seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner
from vrclip.edge.config import EdgeConfig
from vrclip.edge.imaging import bench as bench_module
from vrclip.edge.imaging.bench import bench_app

KEYS = {"impl", "grid", "channels", "points", "pad_factor", "fps", "ms_per_frame", "rel_err"}


def _cli() -> typer.Typer:
    """Mounted as the lead mounts it: `vrclip-edge bench imaging ...`."""
    root = typer.Typer()
    root.add_typer(bench_app, name="bench")

    @root.command()
    def version() -> None:  # a second command so that `bench` stays a sub-command
        typer.echo("0")

    return root


def test_bench_writes_json_of_the_documented_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_module, "gpu_available", lambda: False)
    out = tmp_path / "sub" / "bench.json"
    args = ["bench", "imaging", "--json", str(out), "--nx", "16", "--ny", "16", "--points", "101"]
    result = CliRunner().invoke(_cli(), [*args, "--frames", "2", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "rel_err" in result.output and "16x16x4" in result.output  # the rich table
    doc = json.loads(out.read_text())
    assert set(doc) == {"results"}
    rows = doc["results"]
    assert [(r["impl"], r["grid"]) for r in rows] == [
        ("exact", "16x16"), ("cpu", "16x16"), ("exact", "16x16x4"), ("cpu", "16x16x4"),
    ]  # fmt: skip
    for row in rows:
        assert set(row) == KEYS
        assert row["channels"] == 144 and row["points"] == 101
        assert row["fps"] > 0 and row["ms_per_frame"] == pytest.approx(1e3 / row["fps"])
    assert rows[0]["rel_err"] == 0.0
    assert 0.0 < rows[1]["rel_err"] <= 1e-3 and 0.0 < rows[3]["rel_err"] <= 1e-3
    assert rows[0]["pad_factor"] is None and rows[1]["pad_factor"] == 8


def test_more_zero_padding_lowers_the_fast_imagers_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """--pad-factor is how a GPU run buys float accuracy: the interpolation error falls with padding."""
    monkeypatch.setattr(bench_module, "gpu_available", lambda: False)
    cfg = EdgeConfig()
    cfg.imaging.nx = cfg.imaging.ny = 16
    cases = [bench_module.Case(101, "2d")]
    errors = {}
    for pad in (4, 32):
        rows = bench_module.run_bench(cfg, cases, ["cpu"], 1, 1, 1, pad_factor=pad)["results"]
        assert [r["pad_factor"] for r in rows] == [pad]
        errors[pad] = rows[0]["rel_err"]
    assert errors[32] < errors[4] / 4


def test_bench_refuses_an_unknown_or_missing_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_module, "gpu_available", lambda: False)
    result = CliRunner().invoke(_cli(), ["bench", "imaging", "--impl", "fpga"])
    assert result.exit_code != 0 and "--impl 'fpga'" in str(result.exception or result.output)
    result = CliRunner().invoke(_cli(), ["bench", "imaging", "--impl", "gpu"])
    assert result.exit_code != 0 and "no CUDA device" in str(result.exception or result.output)
