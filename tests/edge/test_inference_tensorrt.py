"""The TensorRT backend and `open_engine`'s refusals, against the fake TensorRT and CuPy (tests/fakes).

The fakes run the engine's ONNX with ONNX Runtime, reading and writing the "device" addresses the
backend binds, so these tests check real numbers through the name-based tensor API, and that the
backend never hands TensorRT host memory or misaligned addresses (the fake refuses both).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from vrclip.edge.errors import UserError
from vrclip.edge.inference import EngineMismatchError, open_engine
from vrclip.edge.inference.tensorrt_backend import TensorRTBackend
from vrclip.edge.manifest import EngineManifest, load_manifest, sha256_file, write_manifest
from vrclip.export.trt_build import BuildOptions, build_engine

from tests.fakes import fake_modules, unreadable
from tests.fakes.models import reference_outputs, tiny_feeds, tiny_manifest, tiny_model, tiny_package


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    with fake_modules(monkeypatch, "tensorrt", "cupy") as modules:
        yield modules


@pytest.fixture
def built(tmp_path: Path, fakes: dict[str, ModuleType]) -> Path:
    """A float package with an fp32 engine (exact, so results compare tightly); returns the ONNX path."""
    onnx_path = tiny_package(tmp_path, "model", max_batch=4)
    build_engine(onnx_path, BuildOptions(precision="fp32", timing_cache=None), echo=lambda _: None)
    return onnx_path


def test_host_feeds_give_host_outputs_equal_to_onnx_runtime(built: Path) -> None:
    feeds = tiny_feeds(10)  # chunks of 4 + 4 + 2
    expected = reference_outputs(built, feeds)
    with open_engine(built) as backend:
        assert isinstance(backend, TensorRTBackend)
        assert backend.max_batch == 4
        assert backend.describe()["tensorrt"] == backend.tensorrt_version
        got = backend.infer(feeds)
    for name, value in expected.items():
        assert isinstance(got[name], np.ndarray)
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)


def test_device_feeds_stay_on_the_device(built: Path, fakes: dict[str, ModuleType]) -> None:
    cp = fakes["cupy"]
    feeds = tiny_feeds(7)
    expected = reference_outputs(built, feeds)
    device = {k: cp.asarray(v) for k, v in feeds.items()}
    with open_engine(built, backend="tensorrt") as backend:
        got = backend.infer(device)  # chunk 2 of anchor starts 32 bytes in: must be staged, not refused
        again = backend.infer(device)
    for name, value in expected.items():
        assert isinstance(got[name], cp.ndarray)  # fake CuPy refuses np.asarray: no hidden host copy
        np.testing.assert_allclose(got[name].get(), value, rtol=1e-6, atol=1e-6)
        # results are copies, not views of the backend's buffers that the next call overwrites
        assert got[name].data.ptr != again[name].data.ptr


def test_device_feeds_of_another_dtype_or_layout_are_converted_on_the_device(
    built: Path, fakes: dict[str, ModuleType]
) -> None:
    cp = fakes["cupy"]
    feeds = tiny_feeds(3)
    wide = cp.asarray(np.concatenate([feeds["anchor"], feeds["anchor"]], axis=1).astype(np.float64))
    device = {"rgb": cp.asarray(feeds["rgb"]), "rf": cp.asarray(feeds["rf"]), "anchor": wide[:, :2]}
    with open_engine(built, backend="tensorrt") as backend:
        got = backend.infer(device)
    np.testing.assert_allclose(got["position"].get(), reference_outputs(built, feeds)["position"], rtol=1e-6)


def test_engine_from_another_tensorrt_version_is_refused_with_the_rebuild_command(
    built: Path, fakes: dict[str, ModuleType]
) -> None:
    fakes["tensorrt"].fake_emulate("10.9.0.34")
    with pytest.raises(EngineMismatchError) as err:
        open_engine(built, backend="tensorrt")
    message = str(err.value)
    assert "built with TensorRT 10.8.0.43, this box has 10.9.0.34" in message
    assert "vrclip-export build model.onnx --precision fp32 --max-batch 4" in message


def test_engine_for_another_gpu_is_refused(built: Path, fakes: dict[str, ModuleType]) -> None:
    fakes["cupy"].cuda.runtime.DEVICE_PROPERTIES.update(name=b"NVIDIA GeForce RTX 4090", major=8, minor=9)
    with pytest.raises(
        EngineMismatchError, match=r"compute capability 9\.0 \(NVIDIA Fake H100.*this GPU is 8\.9"
    ):
        open_engine(built, backend="tensorrt")


def test_tampered_engine_is_refused(built: Path) -> None:
    engine = built.with_suffix(".engine")
    engine.write_bytes(engine.read_bytes() + b"\0")
    with pytest.raises(EngineMismatchError, match="is not the one the manifest records"):
        open_engine(built, backend="tensorrt")


def test_stale_engine_after_a_re_export_is_refused_and_auto_falls_back(
    built: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Re-export: new ONNX and its manifest, but the engine and its record are the old build's.
    old = load_manifest(built.with_suffix(".json"))
    onnx.save(tiny_model(seed=5), built)
    fresh = tiny_manifest(built, max_batch=4)
    write_manifest(built.with_suffix(".json"), fresh.model_copy(update={"tensorrt": old.tensorrt}))
    with pytest.raises(EngineMismatchError, match="built from another ONNX"):
        open_engine(built, backend="tensorrt")
    with caplog.at_level(logging.WARNING), open_engine(built) as backend:
        assert backend.kind == "onnxruntime"
        got = backend.infer(tiny_feeds(2))
    assert "refusing" in caplog.text and "falling back to ONNX Runtime" in caplog.text
    np.testing.assert_allclose(
        got["embedding"], reference_outputs(built, tiny_feeds(2))["embedding"], rtol=1e-6
    )


def test_an_unreadable_engine_is_named_and_auto_falls_back(
    built: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    unreadable(monkeypatch, "model.engine")
    with pytest.raises(UserError, match=r"model\.engine: cannot read it \(Permission denied\)"):
        open_engine(built, backend="tensorrt")
    with caplog.at_level(logging.WARNING), open_engine(built) as backend:
        assert backend.kind == "onnxruntime"
    assert "model.engine: cannot read it" in caplog.text and "falling back" in caplog.text


def test_a_gpu_failure_while_opening_the_engine_lets_auto_fall_back(
    built: Path,
    fakes: dict[str, ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only UserErrors fell back to ONNX Runtime: CuPy running out of GPU memory for the engine's
    buffers (or any CUDA error) ended the run, though the ONNX beside the engine would have served."""

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError("Out of memory allocating 1,024 bytes")

    monkeypatch.setattr(fakes["cupy"], "empty", out_of_memory)
    with pytest.raises(MemoryError):
        open_engine(built, backend="tensorrt")
    with caplog.at_level(logging.WARNING), open_engine(built) as backend:
        assert backend.kind == "onnxruntime"
    assert "TensorRT could not open it (MemoryError: Out of memory" in caplog.text
    built.unlink()
    with pytest.raises(MemoryError):  # no ONNX to fall back on: the error itself
        open_engine(built.with_suffix(".engine"))


def test_onnx_edited_beside_the_engine_is_noticed(built: Path) -> None:
    onnx.save(tiny_model(seed=5), built)  # manifest untouched: the engine no longer matches the ONNX here
    with pytest.raises(EngineMismatchError, match=r"model.onnx changed since the engine was built"):
        open_engine(built, backend="tensorrt")


def test_engine_without_a_build_record_is_refused(built: Path) -> None:
    write_manifest(built.with_suffix(".json"), tiny_manifest(built, max_batch=4))
    with pytest.raises(EngineMismatchError, match="no TensorRT build record"):
        open_engine(built, backend="tensorrt")


def test_auto_with_a_bad_engine_and_no_onnx_raises(built: Path, fakes: dict[str, ModuleType]) -> None:
    built.unlink()
    with open_engine(built.with_suffix(".engine")) as backend:  # a good engine needs no ONNX beside it
        assert backend.kind == "tensorrt"
    fakes["tensorrt"].fake_emulate("10.9.0.34")
    with pytest.raises(EngineMismatchError, match="Rebuild it on this box"):
        open_engine(built.with_suffix(".engine"))


def test_engine_whose_io_differs_from_the_manifest_is_refused(built: Path) -> None:
    manifest = load_manifest(built.with_suffix(".json"))
    data = manifest.model_dump()
    data["outputs"][0]["shape"] = ("batch", 16)
    with pytest.raises(EngineMismatchError, match=r"output 'embedding': model shape \['\?', 8\]"):
        TensorRTBackend(built.with_suffix(".engine"), EngineManifest.model_validate(data))


def test_asking_for_more_than_the_profile_is_refused(built: Path) -> None:
    manifest = load_manifest(built.with_suffix(".json"))
    with pytest.raises(EngineMismatchError, match=r"profile stops at 4.*--max-batch"):
        TensorRTBackend(built.with_suffix(".engine"), manifest, max_batch=8)
    with TensorRTBackend(built.with_suffix(".engine"), manifest, max_batch=2) as small:
        assert small.infer(tiny_feeds(5))["reliability"].shape == (5,)


def test_unloadable_plan_is_refused(built: Path) -> None:
    engine = built.with_suffix(".engine")
    engine.write_bytes(b"not a plan")
    manifest = load_manifest(built.with_suffix(".json"))
    record = manifest.tensorrt.model_copy(update={"engine_sha256": sha256_file(engine)})
    write_manifest(built.with_suffix(".json"), manifest.model_copy(update={"tensorrt": record}))
    with pytest.raises(EngineMismatchError, match=r"could not load this engine.*rebuild it on this box"):
        open_engine(built, backend="tensorrt")


def test_close_releases_and_refuses_further_work(built: Path) -> None:
    backend = open_engine(built, backend="tensorrt")
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.infer(tiny_feeds(1))


def test_close_waits_for_the_stream_then_drops_it(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing must not free the engine or buffers under work still queued on the stream, nor keep
    the CUDA stream alive after the backend is done with it."""
    backend = open_engine(built, backend="tensorrt")
    backend.infer(tiny_feeds(2))
    stream = backend._stream
    seen: list[bool] = []  # at each synchronize: was the execution context still alive?
    monkeypatch.setattr(stream, "synchronize", lambda: seen.append(backend._context is not None))
    backend.close()
    assert seen == [True]
    assert backend._stream is None and backend._context is None


def test_close_after_a_cuda_error_still_lets_everything_go(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a sticky CUDA error the stream's synchronise raises; close() must not raise in its turn
    (it runs in `finally` blocks, where it would hide the error that stopped the run) and must still
    drop the context, engine and stream."""
    backend = open_engine(built, backend="tensorrt")
    backend.infer(tiny_feeds(2))

    def broken() -> None:
        raise RuntimeError("cudaErrorIllegalAddress (test)")

    monkeypatch.setattr(backend._stream, "synchronize", broken)
    backend.close()
    assert backend._stream is None and backend._context is None and backend._engine is None
