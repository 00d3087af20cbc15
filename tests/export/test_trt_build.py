"""`vrclip-export build`: TensorRT 8.6/10/11 API differences, profiles, timing cache, atomic outputs.

Runs against the fake TensorRT and CuPy (tests/fakes), which check the calls as TensorRT does
(flag bits per version, profile completeness, precision flags vs strong typing).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from types import ModuleType

import onnx
import pytest
import typer
from onnx import TensorProto, helper
from vrclip.edge.cli_support import make_app, run
from vrclip.edge.errors import UserError
from vrclip.edge.manifest import load_manifest, sha256_file, write_manifest
from vrclip.export.trt_build import BuildOptions, build_engine
from vrclip.export.trt_cli import register

from tests.fakes import fake_modules
from tests.fakes.models import tiny_manifest, tiny_package


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    with fake_modules(monkeypatch, "tensorrt", "cupy") as modules:
        yield modules


def quiet(_: str) -> None:
    pass


def build(onnx_path: Path, **options: object):
    options.setdefault("timing_cache", None)
    return build_engine(onnx_path, BuildOptions(**options), echo=quiet)


def engine_of(fakes: dict[str, ModuleType], path: Path):
    trt = fakes["tensorrt"]
    return trt.Runtime(trt.Logger()).deserialize_cuda_engine(path.read_bytes())


def test_fp16_build_records_everything_the_runtime_checks(
    tmp_path: Path, fakes: dict[str, ModuleType]
) -> None:
    onnx_path = tiny_package(tmp_path, "model", max_batch=8)
    result = build(onnx_path, precision="fp16", workspace_mb=512)
    engine = tmp_path / "model.engine"
    assert result.engine_path == engine and engine.is_file()
    record = load_manifest(tmp_path / "model.json").tensorrt
    assert record is not None and record == result.manifest.tensorrt
    assert load_manifest(tmp_path / "model.json").embedding_space == "e" * 64  # the ONNX's model
    assert record.version == fakes["tensorrt"].__version__
    assert (record.gpu_name, record.compute_capability) == ("NVIDIA Fake H100 80GB HBM3", "9.0")
    assert record.build_flags == ["FP16"]  # TensorRT 10: no EXPLICIT_BATCH (deprecated, ignored)
    assert (record.precision, record.max_batch, record.opt_batch, record.workspace_mb) == ("fp16", 8, 4, 512)
    assert record.engine_sha256 == sha256_file(engine)
    assert record.source_onnx_sha256 == sha256_file(onnx_path)
    assert record.engine_file == "model.engine" and record.built_at
    plan = engine_of(fakes, engine)
    for name in ("rgb", "rf", "anchor"):
        low, opt, high = plan.get_tensor_profile_shape(name, 0)
        assert (low[0], opt[0], high[0]) == (1, 4, 8)
        assert tuple(low[1:]) == tuple(high[1:])
    assert plan._header["workspace"] == 512 << 20


def test_max_and_opt_batch_overrides(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    onnx_path = tiny_package(tmp_path, "model", max_batch=8)
    record = build(onnx_path, precision="fp32", max_batch=16, opt_batch=2).manifest.tensorrt
    assert (record.max_batch, record.opt_batch) == (16, 2)
    assert next(iter(engine_of(fakes, tmp_path / "model.engine").get_tensor_profile_shape("rf", 0)[2])) == 16
    with pytest.raises(UserError, match="need 1 <= opt-batch <= max-batch"):
        build(onnx_path, precision="fp32", max_batch=2, opt_batch=4)


def test_int8_builds_the_qdq_model_strongly_typed(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    onnx_path = tiny_package(tmp_path, "int8", qdq=True)
    record = build(onnx_path, precision="int8").manifest.tensorrt
    assert record.build_flags == ["STRONGLY_TYPED"]
    assert engine_of(fakes, tmp_path / "int8.engine")._header["strongly_typed"]


def test_precision_must_fit_the_graph(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    float_onnx = tiny_package(tmp_path, "float")
    qdq_onnx = tiny_package(tmp_path, "qdq", qdq=True)
    with pytest.raises(UserError, match="no QuantizeLinear/DequantizeLinear nodes"):
        build(float_onnx, precision="int8")
    with pytest.raises(UserError, match=r"explicitly quantised .* --precision int8"):
        build(qdq_onnx, precision="fp16")
    assert not (tmp_path / "float.engine").exists() and not (tmp_path / "qdq.engine").exists()


def test_tensorrt_11_strongly_typed_by_name_and_no_weak_fp16(
    tmp_path: Path, fakes: dict[str, ModuleType]
) -> None:
    trt = fakes["tensorrt"]
    trt.fake_emulate("11.1.0.5")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0  # renumbered: never hard-code bits
    int8 = build(tiny_package(tmp_path, "int8", qdq=True), precision="int8").manifest.tensorrt
    assert (int8.version, int8.build_flags) == ("11.1.0.5", ["STRONGLY_TYPED"])
    with pytest.raises(UserError, match=r"removed BuilderFlag.FP16.*modelopt.onnx.autocast"):
        build(tiny_package(tmp_path, "float"), precision="fp16")
    assert build(tmp_path / "float.onnx", precision="fp32").manifest.tensorrt.build_flags == []


def test_tensorrt_8_needs_explicit_batch_and_the_int8_flag(
    tmp_path: Path, fakes: dict[str, ModuleType]
) -> None:
    fakes["tensorrt"].fake_emulate("8.6.1.6")
    record = build(tiny_package(tmp_path, "int8", qdq=True), precision="int8").manifest.tensorrt
    assert record.build_flags == ["EXPLICIT_BATCH", "INT8"]
    assert build(tiny_package(tmp_path, "f"), precision="fp16").manifest.tensorrt.build_flags == [
        "EXPLICIT_BATCH",
        "FP16",
    ]


def test_parser_errors_are_reported_with_the_node(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["rgb"], ["embedding"], name="fancy_0", domain="com.example")],
        "g",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["batch", 3, 16, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 8
    onnx_path = tmp_path / "custom.onnx"
    onnx.save(model, onnx_path)
    manifest = tiny_manifest(onnx_path).model_dump()
    manifest["inputs"] = manifest["inputs"][:1]
    manifest["outputs"] = manifest["outputs"][:1]
    manifest["preprocessing"]["rf"] = None
    write_manifest(tmp_path / "custom.json", type(tiny_manifest(onnx_path)).model_validate(manifest))
    with pytest.raises(
        UserError, match=r"ONNX parser failed: node 0 'fancy_0' \(FancyOp\): No importer.*FancyOp"
    ):
        build(onnx_path, precision="fp32")


def test_onnx_not_matching_its_manifest_is_refused(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    onnx_path = tiny_package(tmp_path, "model")
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(UserError, match=r"is not the model model.json was written for"):
        build(onnx_path, precision="fp32")
    onnx_path = tiny_package(tmp_path, "cpu")
    manifest = load_manifest(tmp_path / "cpu.json")
    write_manifest(tmp_path / "cpu.json", manifest.model_copy(update={"precision": "int8-cpu"}))
    with pytest.raises(UserError, match="CPU INT8 variant"):
        build(onnx_path, precision="int8")


def test_failed_build_overwrites_nothing(
    tmp_path: Path, fakes: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx_path = tiny_package(tmp_path, "model")
    build(onnx_path, precision="fp16")
    engine_before = (tmp_path / "model.engine").read_bytes()
    manifest_before = (tmp_path / "model.json").read_bytes()
    monkeypatch.setattr(fakes["tensorrt"].Builder, "build_serialized_network", lambda self, n, c: None)
    with pytest.raises(UserError, match="could not build an engine"):
        build(onnx_path, precision="fp32")
    assert (tmp_path / "model.engine").read_bytes() == engine_before
    assert (tmp_path / "model.json").read_bytes() == manifest_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.json", "model.onnx"]


@pytest.mark.parametrize("fails", ["manifest write", "manifest rename", "first build"])
def test_a_failed_manifest_write_leaves_the_previous_engine_and_manifest(
    tmp_path: Path, fakes: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """A new engine must never sit beside the old manifest (it records another engine's sha256): when
    the manifest cannot be written, the engine is not replaced either."""
    onnx_path = tiny_package(tmp_path, "model")
    if fails != "first build":
        build(onnx_path, precision="fp16")
    engine = tmp_path / "model.engine"
    engine_before = engine.read_bytes() if engine.exists() else None
    manifest_before = (tmp_path / "model.json").read_bytes()
    if fails == "manifest write":  # the disk fills up while the manifest is written
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if "model.json" in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:  # the manifest cannot be put in place
        real_replace = os.replace

        def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
            if Path(dst).name == "model.json":
                raise OSError(errno.EIO, "Input/output error")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UserError, match=r"could not write .*model\.engine and model\.json"):
        build(onnx_path, precision="fp32")
    monkeypatch.undo()
    assert (engine.read_bytes() if engine.exists() else None) == engine_before
    assert (tmp_path / "model.json").read_bytes() == manifest_before
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (
        ["model.json", "model.onnx"]
        if engine_before is None
        else ["model.engine", "model.json", "model.onnx"]
    )


def test_rebuild_drops_the_old_verification_report(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    onnx_path = tiny_package(tmp_path, "model")
    manifest = load_manifest(tmp_path / "model.json")
    write_manifest(
        tmp_path / "model.json",
        manifest.model_copy(update={"accuracy": {"map": 0.9, "tensorrt_verify": {"passed": True}}}),
    )
    assert build(onnx_path, precision="fp16").manifest.accuracy == {"map": 0.9}


def test_timing_cache_is_saved_reused_and_survives_a_foreign_one(
    tmp_path: Path, fakes: dict[str, ModuleType]
) -> None:
    trt = fakes["tensorrt"]
    onnx_path = tiny_package(tmp_path, "model")
    cache = tmp_path / "cache" / "timing.cache"
    first = build(onnx_path, precision="fp16", timing_cache=cache)
    assert first.timing_cache == "new" and cache.is_file()
    second = build(onnx_path, precision="fp16", timing_cache=cache)
    assert second.timing_cache == f"loaded {cache}" and not second.warnings

    trt.fake_emulate("10.9.0.34")  # the box's TensorRT was upgraded: the old cache no longer fits
    third = build(onnx_path, precision="fp16", timing_cache=cache)
    assert third.timing_cache.startswith("replaced") and "another TensorRT version" in third.warnings[0]
    assert third.manifest.tensorrt.version == "10.9.0.34"
    assert build(onnx_path, precision="fp16", timing_cache=cache).timing_cache == f"loaded {cache}"

    cache.write_bytes(b"garbage")
    fourth = build(onnx_path, precision="fp16", timing_cache=cache)
    assert fourth.timing_cache.startswith("replaced") and fourth.warnings
    assert cache.read_bytes().startswith(b"FAKETRT-TCACHE")


def test_without_tensorrt_build_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_path = tiny_package(tmp_path, "model")
    with pytest.raises(
        UserError, match=r"TensorRT is not installed: pip install 'vrclip-edge\[trt\]' on the GPU box"
    ):
        build(onnx_path, precision="fp16")
    app = cli_app()
    monkeypatch.setattr(sys, "argv", ["vrclip-export", "build", str(onnx_path), "--precision", "int8"])
    with pytest.raises(SystemExit) as exit_:
        run(app)
    assert exit_.value.code == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (tmp_path / "model.engine").exists()


def test_cli_build(
    tmp_path: Path, fakes: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    onnx_path = tiny_package(tmp_path, "model")
    cache = tmp_path / "tc.cache"
    argv = ["vrclip-export", "build", str(onnx_path), "--precision", "fp16", "--max-batch", "6"]
    monkeypatch.setattr(sys, "argv", [*argv, "--timing-cache", str(cache), "--workspace-mb", "256"])
    run(cli_app())
    out = capsys.readouterr().out
    assert "built in" in out and "batch 1..6" in out and "model.json: updated" in out
    record = load_manifest(tmp_path / "model.json").tensorrt
    assert (record.max_batch, record.workspace_mb) == (6, 256) and cache.is_file()


def cli_app() -> typer.Typer:
    app = make_app("vrclip-export", "test")
    register(app)
    return app
