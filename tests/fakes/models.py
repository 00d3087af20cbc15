"""Tiny ONNX models with VRCLIP's interface, and their engine-package manifests, for inference tests.

The graph has the real model's inputs (rgb [batch,3,H,W], rf [batch,T,C,R,2], anchor [batch,2]) and
outputs (embedding [batch,D] L2-normalised, position [batch,2], reliability [batch]), built with
`onnx.helper` in milliseconds. Its outputs depend on every input and on each sample alone, so a
backend that mixes up inputs, samples or chunks gives different numbers. `qdq=True` gives the
explicitly quantised (S8S8 Q/DQ, opset 17) form the TensorRT INT8 path builds from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from vrclip.edge.manifest import EngineManifest, Preprocessing, RfPreprocessing, RgbPreprocessing, sha256_file
from vrclip.edge.manifest import write_manifest as _write_manifest


@dataclass(frozen=True)
class TinySpec:
    height: int = 16
    width: int = 8
    frames: int = 2
    channels: int = 3
    range_bins: int = 4
    dim: int = 8
    names: tuple[str, str, str, str, str, str] = (
        "rgb",
        "rf",
        "anchor",
        "embedding",
        "position",
        "reliability",
    )


def tiny_model(spec: TinySpec = TinySpec(), *, qdq: bool = False, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    rgb, rf, anchor, emb, pos, rel = spec.names
    features = 3 + 2 * spec.channels + 2
    w1 = rng.normal(0, 0.8, (features, spec.dim)).astype(np.float32)
    wp = rng.normal(0, 0.3, (features, 2)).astype(np.float32)
    wr = rng.normal(0, 0.5, (spec.dim, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, spec.dim).astype(np.float32), "b1"),
        numpy_helper.from_array(wp, "wp"),
        numpy_helper.from_array(wr, "wr"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("ReduceMean", [rgb], ["rgb_feat"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceMean", [rf], ["rf_mean"], axes=[1, 3], keepdims=0),
        helper.make_node("Flatten", ["rf_mean"], ["rf_feat"], axis=1),
        helper.make_node("Concat", ["rgb_feat", "rf_feat", anchor], ["feat"], axis=1),
    ]
    if qdq:
        w_scale = np.abs(w1).max(axis=0) / 127.0  # per-output-channel, symmetric
        w_q = np.clip(np.round(w1 / w_scale), -127, 127).astype(np.int8)
        inits += [
            numpy_helper.from_array(w_q, "w1_q"),
            numpy_helper.from_array(w_scale.astype(np.float32), "w1_scale"),
            numpy_helper.from_array(np.zeros(spec.dim, np.int8), "w1_zp"),
            numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "a_zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["feat", "a_scale", "a_zp"], ["feat_q"]),
            helper.make_node("DequantizeLinear", ["feat_q", "a_scale", "a_zp"], ["feat_dq"]),
            helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], axis=1),
            helper.make_node("MatMul", ["feat_dq", "w1"], ["h_lin"]),
        ]
    else:
        inits.append(numpy_helper.from_array(w1, "w1"))
        nodes.append(helper.make_node("MatMul", ["feat", "w1"], ["h_lin"]))
    nodes += [
        helper.make_node("Add", ["h_lin", "b1"], ["h_pre"]),
        helper.make_node("Tanh", ["h_pre"], ["h"]),
        helper.make_node("ReduceSumSquare", ["h"], ["h_sq"], axes=[1], keepdims=1),
        helper.make_node("Add", ["h_sq", "eps"], ["h_sq_eps"]),
        helper.make_node("Sqrt", ["h_sq_eps"], ["h_norm"]),
        helper.make_node("Div", ["h", "h_norm"], [emb]),
        helper.make_node("MatMul", ["feat", "wp"], ["pos_delta"]),
        helper.make_node("Add", ["pos_delta", anchor], [pos]),
        helper.make_node("MatMul", ["h", "wr"], ["rel_logit"]),
        helper.make_node("Squeeze", ["rel_logit", "axis1"], ["rel_flat"]),
        helper.make_node("Sigmoid", ["rel_flat"], [rel]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny_vrclip",
        [
            helper.make_tensor_value_info(rgb, f, ["batch", 3, spec.height, spec.width]),
            helper.make_tensor_value_info(rf, f, ["batch", spec.frames, spec.channels, spec.range_bins, 2]),
            helper.make_tensor_value_info(anchor, f, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info(emb, f, ["batch", spec.dim]),
            helper.make_tensor_value_info(pos, f, ["batch", 2]),
            helper.make_tensor_value_info(rel, f, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="vrclip-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_manifest(
    onnx_path: Path, spec: TinySpec = TinySpec(), *, precision: str = "fp32", max_batch: int = 4
):
    rgb, rf, anchor, emb, pos, rel = spec.names
    return EngineManifest(
        model_name="tiny-vrclip",
        inputs=[
            {"name": rgb, "shape": ["batch", 3, spec.height, spec.width], "dtype": "float32"},
            {"name": rf, "shape": [-1, spec.frames, spec.channels, spec.range_bins, 2], "dtype": "float32"},
            {"name": anchor, "shape": ["batch", 2], "dtype": "float32"},
        ],
        outputs=[
            {"name": emb, "shape": ["batch", spec.dim], "dtype": "float32", "description": "L2-normalised"},
            {"name": pos, "shape": ["batch", 2], "dtype": "float32"},
            {"name": rel, "shape": ["batch"], "dtype": "float32"},
        ],
        preprocessing=Preprocessing(
            rgb=RgbPreprocessing(input=rgb, height=spec.height, width=spec.width),
            rf=RfPreprocessing(
                input=rf,
                frames=spec.frames,
                channels=spec.channels,
                range_bins=spec.range_bins,
                zero_pad_factor=8,
            ),
        ),
        precision=precision,
        source_onnx_sha256=sha256_file(onnx_path),
        max_batch=max_batch,
        embedding_space="e" * 64,
        created_by="tests",
    )


def tiny_package(
    folder: Path,
    name: str = "model",
    spec: TinySpec = TinySpec(),
    *,
    qdq: bool = False,
    max_batch: int = 4,
    seed: int = 0,
) -> Path:
    """Write `<name>.onnx` and `<name>.json` into `folder`; return the ONNX path."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(tiny_model(spec, qdq=qdq, seed=seed), onnx_path)
    manifest = tiny_manifest(onnx_path, spec, precision="int8" if qdq else "fp32", max_batch=max_batch)
    _write_manifest(folder / f"{name}.json", manifest)
    return onnx_path


def tiny_feeds(batch: int, spec: TinySpec = TinySpec(), seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb, rf, anchor = spec.names[:3]
    return {
        rgb: rng.random((batch, 3, spec.height, spec.width), dtype=np.float32),
        rf: rng.normal(0, 1, (batch, spec.frames, spec.channels, spec.range_bins, 2)).astype(np.float32),
        anchor: rng.uniform(-3, 3, (batch, 2)).astype(np.float32),
    }


def reference_outputs(onnx_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ONNX Runtime computes for `feeds`, straight from the file (the tests' ground truth)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))
