"""The fake TensorRT refuses what real TensorRT refuses; otherwise tests against it would prove little."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.fakes import fake_modules
from tests.fakes.models import reference_outputs, tiny_feeds, tiny_package


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    with fake_modules(monkeypatch, "tensorrt", "cupy") as modules:
        yield modules


def parsed(trt: ModuleType, onnx_path: Path, flags: int = 0):
    logger = trt.Logger(trt.Logger.INTERNAL_ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_path))
    return builder, network


def full_profile(builder, network, low: int = 1, high: int = 4):
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        rest = tuple(network.get_input(i).shape)[1:]
        profile.set_shape(network.get_input(i).name, (low, *rest), (high, *rest), (high, *rest))
    return profile


def test_parser_exposes_dynamic_inputs_and_outputs(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    trt = fakes["tensorrt"]
    _, network = parsed(trt, tiny_package(tmp_path, "m"))
    assert [network.get_input(i).name for i in range(network.num_inputs)] == ["rgb", "rf", "anchor"]
    assert tuple(network.get_input(0).shape) == (-1, 3, 16, 8)
    assert network.get_output(2).dtype == trt.DataType.FLOAT and tuple(network.get_output(2).shape) == (-1,)


def test_builder_refuses_what_tensorrt_refuses(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    trt = fakes["tensorrt"]
    onnx_path = tiny_package(tmp_path, "m")
    builder, network = parsed(trt, onnx_path)
    assert builder.create_network(1 << 9) is None  # no such creation flag
    config = builder.create_builder_config()
    assert builder.build_serialized_network(network, config) is None  # dynamic inputs, no profile
    assert "no optimization profile" in trt.LOG[-1][1]
    partial = builder.create_optimization_profile()
    partial.set_shape("rgb", (1, 3, 16, 8), (2, 3, 16, 8), (4, 3, 16, 8))
    config.add_optimization_profile(partial)
    assert builder.build_serialized_network(network, config) is None  # rf and anchor have no shapes
    strongly = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    trt.OnnxParser(strongly, trt.Logger()).parse_from_file(str(onnx_path))
    typed_config = builder.create_builder_config()
    typed_config.add_optimization_profile(full_profile(builder, strongly))
    typed_config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(strongly, typed_config) is None  # precision flag + strong typing
    qdq_builder, qdq = parsed(trt, tiny_package(tmp_path, "q", qdq=True))
    weak = qdq_builder.create_builder_config()
    weak.add_optimization_profile(full_profile(qdq_builder, qdq))
    assert qdq_builder.build_serialized_network(qdq, weak) is None  # Q/DQ, weakly typed, no INT8


def test_context_checks_shapes_addresses_and_memory(tmp_path: Path, fakes: dict[str, ModuleType]) -> None:
    trt, cp = fakes["tensorrt"], fakes["cupy"]
    onnx_path = tiny_package(tmp_path, "m")
    builder, network = parsed(trt, onnx_path)
    config = builder.create_builder_config()
    config.add_optimization_profile(full_profile(builder, network, 1, 4))
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(
        builder.build_serialized_network(network, config)
    )
    context = engine.create_execution_context()
    assert not context.set_input_shape("rgb", (5, 3, 16, 8))  # beyond the profile
    assert not context.set_input_shape("rgb", (2, 3, 8, 16))  # static dims differ
    feeds = tiny_feeds(2)
    inputs = {k: cp.asarray(v) for k, v in feeds.items()}
    outputs = {
        n: cp.empty(s, np.float32)
        for n, s in (("embedding", (2, 8)), ("position", (2, 2)), ("reliability", (2,)))
    }
    for name, x in inputs.items():
        assert context.set_input_shape(name, x.shape)
        assert context.set_tensor_address(name, x.data.ptr)
    assert tuple(context.get_tensor_shape("embedding")) == (2, 8)  # resolved through the batch symbol
    assert not context.execute_async_v3(0)  # outputs not bound yet
    for name, y in outputs.items():
        context.set_tensor_address(name, y.data.ptr)
    assert not context.set_tensor_address("anchor", inputs["anchor"].data.ptr + 8)  # misaligned
    host = np.zeros((2, 2), np.float32)
    context.set_tensor_address("anchor", host.ctypes.data - host.ctypes.data % 256)
    assert not context.execute_async_v3(0)  # host memory is not device memory
    context.set_tensor_address("anchor", inputs["anchor"].data.ptr)
    assert context.execute_async_v3(0)
    expected = reference_outputs(onnx_path, feeds)
    for name, y in outputs.items():
        np.testing.assert_allclose(y.get(), expected[name], rtol=1e-6, atol=1e-6)


def test_fake_cupy_refuses_implicit_host_copies(fakes: dict[str, ModuleType]) -> None:
    x = fakes["cupy"].asarray(np.arange(4, dtype=np.float32))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(x)
    assert x.data.ptr % 256 == 0 and x[1:].data.ptr == x.data.ptr + 4
