"""The InferenceBackend contract on ONNX Runtime, and `open_engine`'s package checks (no GPU needed)."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from vrclip.edge.errors import UserError
from vrclip.edge.inference import EngineMismatchError, FeedError, open_engine
from vrclip.edge.inference.onnxruntime_backend import OnnxRuntimeBackend
from vrclip.edge.manifest import ManifestError, load_manifest, write_manifest

from tests.fakes import fake_modules, unreadable
from tests.fakes.models import (
    TinySpec,
    reference_outputs,
    tiny_feeds,
    tiny_manifest,
    tiny_model,
    tiny_package,
)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return tiny_package(tmp_path, "model", max_batch=4)


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import tensorrt` fail even on a box that has it: these tests are about the CPU path."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_outputs_match_onnx_runtime_and_big_batches_are_split(package: Path) -> None:
    feeds = tiny_feeds(11)
    expected = reference_outputs(package, feeds)
    with open_engine(package, backend="onnxruntime") as backend:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert backend.max_batch == 4
        assert [s.name for s in backend.inputs] == ["rgb", "rf", "anchor"]
        assert [s.name for s in backend.outputs] == ["embedding", "position", "reliability"]
        assert "CPUExecutionProvider" in backend.providers
        got = backend.infer(feeds)  # 11 samples = chunks of 4 + 4 + 3
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got["embedding"], axis=1), 1.0, atol=1e-5)


def test_each_sample_is_independent_of_its_batch(package: Path) -> None:
    feeds = tiny_feeds(6)
    with open_engine(package, backend="onnxruntime") as backend:
        whole = backend.infer(feeds)
        single = backend.infer({k: v[3:4] for k, v in feeds.items()})
    for name in whole:
        np.testing.assert_allclose(single[name][0], whole[name][3], rtol=1e-6, atol=1e-6)


def test_empty_batch_returns_empty_outputs(package: Path) -> None:
    with open_engine(package, backend="onnxruntime") as backend:
        got = backend.infer(tiny_feeds(0))
    assert {k: v.shape for k, v in got.items()} == {
        "embedding": (0, 8),
        "position": (0, 2),
        "reliability": (0,),
    }


def test_feed_mistakes_name_the_tensor(package: Path) -> None:
    feeds = tiny_feeds(2)
    with open_engine(package, backend="onnxruntime") as backend:
        with pytest.raises(FeedError, match=r"missing \['anchor'\]"):
            backend.infer({k: v for k, v in feeds.items() if k != "anchor"})
        with pytest.raises(FeedError, match=r"unknown \['depth'\]"):
            backend.infer({**feeds, "depth": feeds["anchor"]})
        with pytest.raises(FeedError, match=r"'rgb': shape \[2, 3, 8, 16\]"):
            backend.infer({**feeds, "rgb": np.zeros((2, 3, 8, 16), np.float32)})
        with pytest.raises(FeedError, match="'rf' has batch 3 but 'rgb' has 2"):
            backend.infer({**feeds, "rf": tiny_feeds(3)["rf"]})
        with pytest.raises(FeedError, match="'anchor': dtype complex64"):
            backend.infer({**feeds, "anchor": feeds["anchor"].astype(np.complex64)})
        with pytest.raises(FeedError, match="expected an array"):
            backend.infer({**feeds, "anchor": [[0.0, 0.0], [1.0, 1.0]]})
        # float64 is a caller's convenience, cast within its kind
        as64 = backend.infer({k: v.astype(np.float64) for k, v in feeds.items()})
        as32 = backend.infer(feeds)
    np.testing.assert_allclose(as64["position"], as32["position"], rtol=1e-6)


def test_closed_backend_refuses_work(package: Path) -> None:
    backend = open_engine(package, backend="onnxruntime")
    with backend:
        pass
    assert backend.closed
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(tiny_feeds(1))
    backend.close()  # idempotent


def test_concurrent_callers_get_their_own_results(package: Path) -> None:
    feeds = [tiny_feeds(5, seed=s) for s in range(4)]
    expected = [reference_outputs(package, f) for f in feeds]
    results: dict[int, dict] = {}
    with open_engine(package, backend="onnxruntime") as backend:

        def work(i: int) -> None:
            for _ in range(3):
                results[i] = backend.infer(feeds[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(4):
        np.testing.assert_allclose(results[i]["embedding"], expected[i]["embedding"], rtol=1e-6, atol=1e-6)


def test_onnx_changed_since_export_is_refused(package: Path) -> None:
    onnx.save(tiny_model(seed=7), package)  # re-exported ONNX, stale manifest
    with pytest.raises(EngineMismatchError, match=r"model\.onnx: sha256 .* re-export"):
        open_engine(package, backend="onnxruntime")


def test_manifest_that_does_not_describe_the_onnx_is_refused(tmp_path: Path) -> None:
    onnx_path = tiny_package(tmp_path, "model")
    manifest = load_manifest(tmp_path / "model.json")
    data = manifest.model_dump()
    data["outputs"][0]["shape"] = ("batch", 16)
    data["inputs"][2]["name"] = "track_xy"
    write_manifest(tmp_path / "model.json", type(manifest).model_validate(data))
    with pytest.raises(EngineMismatchError) as err:
        open_engine(onnx_path, backend="onnxruntime")
    message = str(err.value)
    assert "output 'embedding': model shape ['?', 8] vs manifest ['batch', 16]" in message
    assert "input 'track_xy' is in the manifest but not in the model" in message
    assert "input 'anchor' is in the model but not in the manifest" in message


def test_names_come_from_the_manifest(tmp_path: Path) -> None:
    spec = TinySpec(names=("image", "radar", "track_xy", "emb", "xy", "gate"))
    onnx_path = tiny_package(tmp_path, "renamed", spec)
    with open_engine(onnx_path) as backend:
        got = backend.infer(tiny_feeds(2, spec))
    assert set(got) == {"emb", "xy", "gate"}


def test_missing_manifest_or_onnx(tmp_path: Path, package: Path) -> None:
    with pytest.raises(ManifestError, match=r"other\.json"):
        open_engine(tmp_path / "other.onnx")
    package.unlink()
    with pytest.raises(EngineMismatchError, match=r"no ONNX model beside model\.json"):
        open_engine(package.with_suffix(".json"), backend="onnxruntime")
    with pytest.raises(UserError, match="choose auto, tensorrt or onnxruntime"):
        open_engine(tmp_path / "model.json", backend="tensorflow")  # type: ignore[arg-type]


def test_auto_without_tensorrt_falls_back_to_onnx_runtime(
    package: Path, no_tensorrt: None, caplog: pytest.LogCaptureFixture
) -> None:
    with open_engine(package) as backend:  # no engine file: ONNX Runtime, quietly
        assert backend.kind == "onnxruntime"
    assert not caplog.records
    package.with_suffix(".engine").write_bytes(b"plan")
    with caplog.at_level(logging.WARNING), open_engine(package.with_suffix(".engine")) as backend:
        assert backend.kind == "onnxruntime"
    assert "TensorRT is not installed" in caplog.text and "falling back to ONNX Runtime" in caplog.text
    with pytest.raises(UserError, match=r"TensorRT is not installed: pip install 'vrclip-edge\[trt\]'"):
        open_engine(package, backend="tensorrt")


def test_an_unreadable_onnx_is_named_not_a_traceback(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unreadable(monkeypatch, "model.onnx")
    with pytest.raises(UserError, match=r"model\.onnx: cannot read it \(Permission denied\)"):
        open_engine(package)


def test_cupy_feeds_are_accepted_by_the_cpu_backend(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feeds = tiny_feeds(3)
    with fake_modules(monkeypatch, "cupy") as fakes, open_engine(package, backend="onnxruntime") as backend:
        got = backend.infer({k: fakes["cupy"].asarray(v) for k, v in feeds.items()})
    np.testing.assert_allclose(got["position"], reference_outputs(package, feeds)["position"], rtol=1e-6)


def int8_cpu_package(folder: Path) -> Path:
    """The tiny model with its MatMuls dynamically quantised (DynamicQuantizeLinear: one activation
    scale per tensor over the whole batch), packaged as `vrclip-export quantize --variant cpu` does."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_path = tiny_package(folder / "float", "model")
    onnx_path = folder / "model.int8-cpu.onnx"
    quantize_dynamic(str(float_path), str(onnx_path), weight_type=QuantType.QInt8)
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    write_manifest(folder / "model.int8-cpu.json", tiny_manifest(onnx_path, precision="int8-cpu"))
    return onnx_path


def test_an_int8_cpu_sample_does_not_depend_on_its_batch_partners(tmp_path: Path) -> None:
    """One track's embedding must not change with the other tracks of the frame: the dynamic INT8
    scale is per tensor (the whole batch), so the backend runs such a package sample by sample."""
    onnx_path = int8_cpu_package(tmp_path)
    feeds = tiny_feeds(2)
    partner = {k: v.copy() for k, v in feeds.items()}
    partner["anchor"][1] = 400.0  # a far-off partner: its features dominate a batch-wide scale
    alone = {k: v[:1] for k, v in feeds.items()}
    batched = reference_outputs(onnx_path, partner)  # the graph itself, run as one batch
    assert not np.allclose(batched["embedding"][0], reference_outputs(onnx_path, alone)["embedding"][0])
    with open_engine(onnx_path, backend="onnxruntime") as backend:
        single = backend.infer(alone)
        with_partner = backend.infer(partner)
        with_other = backend.infer(feeds)
    for name in single:
        np.testing.assert_array_equal(with_partner[name][0], single[name][0])
        np.testing.assert_array_equal(with_other[name][0], single[name][0])
    assert backend.max_batch == 1
    with OnnxRuntimeBackend(onnx_path, load_manifest(onnx_path.with_suffix(".json")), max_batch=4) as b:
        assert b.max_batch == 1  # asking for batches does not bring the batch dependence back


def test_integer_or_bool_data_for_a_float_input_is_refused(package: Path) -> None:
    """Raw uint8 crops (not divided by 255) would run and give garbage: refused, naming the input."""
    feeds = tiny_feeds(2)
    raw = (feeds["rgb"] * 255).astype(np.uint8)
    with open_engine(package, backend="onnxruntime") as backend:
        with pytest.raises(FeedError, match=r"input 'rgb': dtype uint8 cannot be used as float32.*/ 255"):
            backend.infer({**feeds, "rgb": raw})
        with pytest.raises(FeedError, match=r"input 'anchor': dtype int64 cannot be used as float32"):
            backend.infer({**feeds, "anchor": feeds["anchor"].astype(np.int64)})
        with pytest.raises(FeedError, match=r"input 'anchor': dtype bool cannot be used as float32"):
            backend.infer({**feeds, "anchor": feeds["anchor"] > 0})
        as16 = backend.infer({**feeds, "anchor": feeds["anchor"].astype(np.float16)})  # floats cast
    assert as16["position"].shape == (2, 2)
