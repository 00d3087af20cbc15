"""`vrclip-export quantize`: explicit S8S8 Q/DQ with zero zero-points and the sensitive layers in float,
calibrated on recordings, gated on accuracy (a broken quantisation fails and writes nothing), and the
errors a user sees for too little or foreign calibration data."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402
from vrclip.edge.cli_support import make_app, run  # noqa: E402
from vrclip.edge.inference.factory import open_engine  # noqa: E402
from vrclip.edge.manifest import load_manifest, manifest_path_for, write_manifest  # noqa: E402
from vrclip.export import quantize as q  # noqa: E402
from vrclip.export.export_cli import register  # noqa: E402
from vrclip.export.model import preset  # noqa: E402
from vrclip.export.onnx_export import ExportOptions, export_checkpoint, random_inputs  # noqa: E402
from vrclip.export.quantize import (  # noqa: E402
    GateError,
    GateThresholds,
    QuantizeError,
    QuantizeOptions,
    quantize_model,
)

from tests.export.test_onnx_export import make_checkpoint  # noqa: E402

#: Random weights score near chance, so mAP can move by more than a point from noise alone: the
#: structural tests use a lenient mAP limit; the gate itself is tested with a broken quantisation.
LENIENT = GateThresholds(min_cosine_mean=0.9, max_map_drop=100.0, max_loc_increase_m=1.0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One preprocessing cache for the module: the recordings are gated once, not once per test."""
    return tmp_path_factory.mktemp("cache")


def options(cache: Path, **kw) -> QuantizeOptions:
    base = dict(samples=32, holdout=32, jobs=1, gate=LENIENT, cache=cache)
    base.update(kw)
    return QuantizeOptions(**base)


@pytest.fixture(scope="module")
def float_model(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("quant")
    # The checkpoint names the dataset and a session it was trained on: the export records that
    # recording's radar signature (sweep, geometry), which calibration recordings are checked against.
    segment = {"identity": "id-000", "session": "id-000/session-00_day_none.h5", "start": 0, "stop": 8}
    ckpt = make_checkpoint(folder / "vrclip.pt", dataset=small_dataset, segments=[segment])
    return export_checkpoint(ckpt, folder / "micro.onnx", ExportOptions(max_batch=4)).onnx_path


@pytest.fixture(scope="module")
def int8(float_model: Path, small_dataset: Path, cache: Path) -> q.QuantizeResult:
    return quantize_model(float_model, [small_dataset], options(cache))


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


def test_int8_is_explicit_symmetric_qdq_with_zero_zero_points(
    int8: q.QuantizeResult, float_model: Path
) -> None:
    assert int8.onnx_path.name == "micro.int8.onnx"
    model = onnx.load(str(int8.onnx_path))
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert any(n.op_type == "QuantizeLinear" for n in qdq) and any(
        n.op_type == "DequantizeLinear" for n in qdq
    )
    for n in qdq:
        zero_point = init[n.input[2]]
        assert zero_point.dtype == np.int8, n.name
        assert not np.any(zero_point), n.name
    # Weights per output channel: some weight DequantizeLinear carries a scale vector, not a scalar.
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in init]
    assert weight_dq and all(init[n.input[0]].dtype == np.int8 for n in weight_dq)
    assert any(init[n.input[1]].size > 1 for n in weight_dq)


def test_layernorm_softmax_gelu_patch_embed_and_projections_stay_float(int8: q.QuantizeResult) -> None:
    model = onnx.load(str(int8.onnx_path))
    made_by = producers(model)
    init = {i.name for i in model.graph.initializer}

    def quantised(node: onnx.NodeProto) -> bool:
        return any(i in made_by and made_by[i].op_type == "DequantizeLinear" for i in node.input)

    by_type: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        by_type.setdefault(n.op_type, []).append(n)
    for op in ("LayerNormalization", "Softmax", "Erf", "Conv"):
        assert by_type.get(op), f"the graph has no {op}"
        assert not any(quantised(n) for n in by_type[op]), op
    float_weights = ("model.visual.vit.proj", "model.align_vision.weight", "model.align_rf.weight")
    for name in float_weights:
        users = [n for n in model.graph.node if name in n.input]
        assert name in init and users and not any(quantised(n) for n in users), name
    assert sum(quantised(n) for n in by_type["MatMul"]) >= 4  # the blocks' linear layers are INT8
    kept = " ".join(int8.manifest.accuracy["quantization"]["kept_float"])
    assert "patch embedding" in kept and "visual output projection" in kept


def test_int8_package_runs_in_the_runtime_backend_and_records_the_gate(
    int8: q.QuantizeResult, float_model: Path
) -> None:
    from vrclip.edge.inference.onnxruntime_backend import OnnxRuntimeBackend

    manifest = load_manifest(manifest_path_for(int8.onnx_path))
    assert manifest.precision == "int8" and manifest.tensorrt is None
    # Its embeddings are the float model's: a gallery enrolled with one serves the other.
    float_space = load_manifest(manifest_path_for(float_model)).embedding_space
    assert float_space and manifest.embedding_space == float_space
    gate = manifest.accuracy["gate"]
    for key in ("cosine_min", "cosine_mean", "map_float", "map_quantized", "map_drop_points"):
        assert key in gate
    assert gate["cosine_mean"] >= 0.9 and gate["samples"] == 32
    cfg = preset("micro", rf_frames=4, rf_channels=8, rf_range_bins=8, num_classes=3)
    feeds = random_inputs(cfg, 3)
    backend = OnnxRuntimeBackend(int8.onnx_path, manifest, providers=["CPUExecutionProvider"])
    with backend:
        out = backend.infer(feeds)
    assert out["embedding"].shape == (3, 16) and np.all(np.isfinite(out["embedding"]))


def test_open_engine_opens_the_int8_package(int8: q.QuantizeResult) -> None:
    with open_engine(int8.onnx_path, "onnxruntime", providers=["CPUExecutionProvider"]) as engine:
        assert engine.source == int8.onnx_path


def test_quantising_again_gives_the_same_bytes(
    int8: q.QuantizeResult, float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path
) -> None:
    """A site re-running the same quantisation (to rebuild an engine, or to check one it was sent) must
    get the same file: calibration, sample choice and the gate are all fixed by the seed."""
    again = quantize_model(float_model, [small_dataset], options(cache, out=tmp_path / "again.int8.onnx"))
    assert again.onnx_path.read_bytes() == int8.onnx_path.read_bytes()
    assert again.manifest.accuracy["gate"] == int8.manifest.accuracy["gate"]


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def int8_nodes(path: Path) -> list[str]:
    """Names of the nodes that compute in int8: fed by an activation DequantizeLinear (Q/DQ) or
    integer MatMuls (dynamic)."""
    model = onnx.load(str(path))
    init = {i.name for i in model.graph.initializer}
    made_by = producers(model)
    names = []
    for n in model.graph.node:
        if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") or any(
            i in made_by and made_by[i].op_type == "DequantizeLinear" and made_by[i].input[0] not in init
            for i in n.input
        ):
            names.append(n.name)
    return names


def test_only_the_quantised_matmuls_read_int8_rounded_activations(int8: q.QuantizeResult) -> None:
    """The float ops that share an input with a quantised MatMul (the adapter's lambda * x on the
    residual stream, the SSM's Gather and skip Mul, the RF normalisation's Pow) read that input as
    float: an activation DequantizeLinear feeds MatMul/Gemm only."""
    model = onnx.load(str(int8.onnx_path))
    init = {i.name for i in model.graph.initializer}
    readers = consumers(model)
    activation_dq = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in init
    ]
    assert activation_dq
    read_by = {c.op_type for d in activation_dq for c in readers.get(d.output[0], [])}
    assert read_by and read_by <= {"MatMul", "Gemm"}, read_by
    # The adapter's MatMul is quantised; the Mul beside it reads the very tensor its Q node reads.
    made_by = producers(model)
    adapter_mm = next(n for n in model.graph.node if n.name == "/visual/adapters.0/proj/MatMul")
    quant = made_by[made_by[adapter_mm.input[0]].input[0]]
    assert quant.op_type == "QuantizeLinear"
    assert {c.op_type for c in readers[quant.input[0]]} >= {"QuantizeLinear", "Mul"}
    assert not [n.name for n in model.graph.node if q.DEDICATED_INPUT in n.name and n.op_type == "Identity"]


def test_a_float_block_keeps_its_adapter_float(
    float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path
) -> None:
    plan = q.plan_nodes(onnx.load(str(float_model)), (0,))
    assert "/visual/adapters.0/proj/MatMul" in plan.exclude
    out = tmp_path / "block0.int8.onnx"
    result = quantize_model(float_model, [small_dataset], options(cache, out=out, float_blocks=(0,)))
    quantised = int8_nodes(out)
    assert quantised  # the RF encoder is still INT8
    assert not [n for n in quantised if n.startswith(("/visual/resblocks.0/", "/visual/adapters.0/"))]
    assert "transformer block 0 and its adapter" in " ".join(
        result.manifest.accuracy["quantization"]["kept_float"]
    )


@pytest.fixture(scope="module")
def cpu(float_model: Path, small_dataset: Path, cache: Path) -> q.QuantizeResult:
    return quantize_model(float_model, [small_dataset], options(cache, variant="cpu"))


def test_cpu_variant_keeps_the_excluded_gemms_float(
    cpu: q.QuantizeResult, float_model: Path, tmp_path: Path
) -> None:
    """ONNX Runtime's dynamic quantiser renames each Gemm `<name>_MatMul`: the alignment heads (and a
    float block's Gemm) must stay float all the same, as the manifest's kept_float says."""
    quantised = int8_nodes(cpu.onnx_path)
    assert quantised
    for head in ("/align_vision/Gemm", "/align_rf/Gemm"):
        assert not [n for n in quantised if n.startswith(head)], head
        assert head in " ".join(cpu.manifest.accuracy["quantization"]["kept_float"])
    weights = q.quantised_weights(onnx.load(str(cpu.onnx_path)))
    assert weights and not weights & {"model.align_vision.weight", "model.align_rf.weight"}
    out = tmp_path / "block0.int8-cpu.onnx"
    q.quantize_dynamic_matmul(float_model, out, q.plan_nodes(onnx.load(str(float_model)), (0,)))
    block0 = [n for n in int8_nodes(out) if n.startswith(("/visual/resblocks.0/", "/visual/adapters.0/"))]
    assert not block0


def test_a_quantiser_that_ignores_the_exclusions_is_caught_before_anything_is_written(
    float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path, monkeypatch
) -> None:
    """Should ONNX Runtime rename nodes again, the manifest must not claim float layers that are not."""
    monkeypatch.setattr(q, "dynamic_exclusions", lambda model, plan: list(plan.exclude))  # the old names
    out = tmp_path / "m.int8-cpu.onnx"
    with pytest.raises(QuantizeError, match=r"quantised 2 weight\(s\) of nodes kept in float"):
        quantize_model(float_model, [small_dataset], options(cache, variant="cpu", out=out))
    assert list(tmp_path.iterdir()) == []


def test_verify_position_limit_is_the_quantize_gates_localisation_tolerance() -> None:
    from vrclip.export.trt_verify import MAX_POSITION_ERROR_M

    assert GateThresholds().max_loc_increase_m == MAX_POSITION_ERROR_M


def test_cpu_variant(cpu: q.QuantizeResult) -> None:
    result = cpu
    assert result.onnx_path.name == "micro.int8-cpu.onnx"
    assert result.manifest.precision == "int8-cpu"
    ops = {n.op_type for n in onnx.load(str(result.onnx_path)).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}
    assert result.manifest.accuracy["gate"]["cosine_mean"] >= 0.9


def test_cpu_variant_u8s8_uses_uint8_activations(
    float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "u8s8.int8-cpu.onnx"
    result = quantize_model(
        float_model, [small_dataset], options(cache, variant="cpu", cpu_method="u8s8", out=out)
    )
    graph = onnx.load(str(result.onnx_path)).graph
    zero_points = {i.name: i.data_type for i in graph.initializer if i.name.endswith("_zero_point")}
    activation_zps = [
        zero_points[n.input[2]]
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[2] in zero_points
    ]
    assert activation_zps and all(t == onnx.TensorProto.UINT8 for t in activation_zps)
    assert result.manifest.precision == "int8-cpu"


def test_gate_fails_on_a_broken_quantisation_and_writes_nothing(
    float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "broken.int8.onnx"
    real = q.FeedReader.get_next

    def zeros(self):  # calibrate on all-zero inputs: every activation range collapses
        item = real(self)
        return None if item is None else {k: np.zeros_like(v) for k, v in item.items()}

    monkeypatch.setattr(q.FeedReader, "get_next", zeros)
    strict = GateThresholds(min_cosine_mean=0.99, max_map_drop=1.0)
    with pytest.raises(GateError, match="cosine mean"):
        quantize_model(float_model, [small_dataset], options(cache, out=out, gate=strict))
    assert list(tmp_path.iterdir()) == []  # neither the model, its manifest nor a temporary


def test_calibration_ranges_cover_every_batch(tmp_path: Path) -> None:
    """The activation scale is max|x| / 127 over *all* calibration batches, the largest one first
    (ORT's CalibMaxIntermediateOutputs would keep only the last chunk)."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    src, dst = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    batches = [{"x": np.full((2, 4), 8.0 if i == 0 else 1.0, np.float32)} for i in range(9)]
    q.quantize_s8s8(src, dst, q.FeedReader.of_batches(batches), q.QuantPlan(("MatMul",), (), ()))
    model = onnx.load(str(dst))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quant_x = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert float(init[quant_x.input[1]]) == pytest.approx(8.0 / 127.0, rel=1e-4)
    assert q.check_symmetric(dst) >= 2


def test_too_few_calibration_samples(float_model: Path, small_dataset: Path, cache: Path) -> None:
    with pytest.raises(QuantizeError, match="--samples 4: too few"):
        quantize_model(float_model, [small_dataset], options(cache, samples=4))
    with pytest.raises(QuantizeError, match="fewer than --samples 5000"):
        quantize_model(float_model, [small_dataset], options(cache, samples=5000))


def test_recordings_from_another_sensor_config_are_refused(
    float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "pkg"
    folder.mkdir()
    onnx_copy = folder / "micro.onnx"
    onnx_copy.write_bytes(float_model.read_bytes())
    manifest = load_manifest(manifest_path_for(float_model))
    rf = manifest.preprocessing.rf
    sensor = dict(rf.window["sensor"], sweep_points=101)  # as if trained on a 101-point sweep
    window = {**rf.window, "sensor": sensor}
    moved = manifest.model_copy(
        update={
            "preprocessing": manifest.preprocessing.model_copy(
                update={"rf": rf.model_copy(update={"window": window})}
            )
        }
    )
    write_manifest(folder / "micro.json", moved)
    with pytest.raises(QuantizeError, match=r"another sensor configuration.*sweep_points 201 vs 101"):
        quantize_model(onnx_copy, [small_dataset], options(cache))


def test_quantising_a_quantised_model_or_a_missing_file_is_a_user_error(
    int8: q.QuantizeResult, small_dataset: Path, cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    with pytest.raises(QuantizeError, match="quantise the float"):
        quantize_model(int8.onnx_path, [small_dataset], options(cache))
    app = make_app("vrclip-export", "test")
    register(app)
    monkeypatch.setattr(
        sys, "argv", ["vrclip-export", "quantize", str(tmp_path / "none.onnx"), "--calib", str(small_dataset)]
    )
    with pytest.raises(SystemExit) as exit_info:
        run(app)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "no such ONNX model" in err and len(err.splitlines()) == 1


def test_an_output_that_would_overwrite_the_float_manifest_is_refused(
    float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`--out pkg/micro` (no .onnx) would put the int8 manifest at pkg/micro.json, the float model's:
    refused before any work, with one line naming --out, and the float package left as it was."""
    import shutil

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    src = pkg / "micro.onnx"
    shutil.copy(float_model, src)
    shutil.copy(manifest_path_for(float_model), manifest_path_for(src))
    float_manifest = manifest_path_for(src).read_bytes()
    app = make_app("vrclip-export", "test")
    register(app)
    # Settings under which this quantisation passes the gate, so only the --out check can stop it.
    argv = ["vrclip-export", "quantize", str(src), "--calib", str(small_dataset), "--out", str(pkg / "micro")]
    argv += ["--samples", "32", "--holdout", "32", "--jobs", "1", "--cache", str(cache)]
    argv += ["--min-cosine", "0.9", "--max-map-drop", "100", "--max-loc-increase", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        run(app)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert f"--out {pkg / 'micro'}: the model file must end in .onnx" in err
    assert manifest_path_for(src).read_bytes() == float_manifest
    assert sorted(p.name for p in pkg.iterdir()) == ["micro.json", "micro.onnx"]

    # A float model named without .onnx shares its manifest with <name>.onnx: that --out is refused too.
    bare = pkg / "micro"
    shutil.copy(src, bare)
    with pytest.raises(QuantizeError, match=r"micro\.json is the float model's own manifest"):
        quantize_model(bare, [small_dataset], options(cache, out=src))
    assert manifest_path_for(src).read_bytes() == float_manifest


def test_unknown_float_block_is_refused(float_model: Path, small_dataset: Path, cache: Path) -> None:
    with pytest.raises(QuantizeError, match="--float-block 7"):
        quantize_model(float_model, [small_dataset], replace(options(cache), float_blocks=(7,)))


def test_find_float_blocks_reports_each_visual_block(
    float_model: Path, small_dataset: Path, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.int8.onnx"
    result = quantize_model(float_model, [small_dataset], options(cache, out=out), find_float_blocks=True)
    assert [row["block"] for row in result.sensitivity] == [0]  # the micro model has one block
    assert {"passed", "cosine_min", "cosine_mean", "map_drop_points"} <= set(result.sensitivity[0])
    assert result.manifest.accuracy["float_block_sensitivity"] == result.sensitivity
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.int8.json", "s.int8.onnx"]  # no leftovers


def test_the_training_radars_frame_rate_travels_with_the_engine(
    float_model: Path, int8: q.QuantizeResult
) -> None:
    """The dataset was recorded at 10 frames/s; the runtime compares its radar's rate with this one."""
    from vrclip.edge.manifest import load_manifest
    from vrclip.edge.pipeline.ratecheck import training_frame_rate

    assert training_frame_rate(load_manifest(float_model.with_suffix(".json"))) == pytest.approx(
        10.0, rel=0.01
    )
    assert training_frame_rate(int8.manifest) == pytest.approx(10.0, rel=0.01)
