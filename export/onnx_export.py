"""`vrclip-export onnx`: a trained checkpoint -> the fused inference graph as ONNX, plus its manifest.

Out come `<name>.onnx` (opset 17, dynamic batch axis; inputs rgb/rf/anchor/present, outputs
embedding/position/reliability, exactly `InferenceModel`'s) and `<name>.json`, the engine manifest the
edge runtime configures itself from (crop size, RF window spec as trained, tensor shapes), so the
package needs nothing else on the box. Why each step is there:

- Only opset 17 is produced: it is what TensorRT 10/11's explicit-quantisation path and the Q/DQ
  quantiser (vrclip.export.quantize) are written against, and the one this module verifies. At opset
  17 LayerNormalization is one node and GELU an Erf sub-graph (Gelu is an op only from opset 20); the
  quantiser keeps both in float by op type.
- The graph is checked twice before anything is written: the ONNX checker, then ONNX Runtime against
  PyTorch on random inputs at two batch sizes (1 and 3, so the dynamic batch axis is exercised, and with
  mixed presence flags so every fusion branch runs). A max |diff| above 1e-4 on the normalised embedding
  is an export bug and fails loudly.
- The legacy TorchScript exporter is used (dynamo=False): the model is plain tensor ops with its
  recurrence unrolled, which that exporter handles, and the dynamo exporter needs onnxscript, which the
  export extra does not install.
- The manifest's RF window is the checkpoint's preprocessing spec verbatim (background included: a
  model trained on per-session background removal says "session" even though the runtime can only run
  a running mean), plus, under "sensor", the sweep and array-geometry signature of one of its training
  recordings when reachable, so calibration recordings from another radar set-up can be refused.
- Files are written to temporary names in the target folder and renamed into place only after every
  check passed, so a failed export never leaves a half-written or mismatched package behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vrclip.edge import __version__
from vrclip.edge.errors import UserError
from vrclip.edge.manifest import (
    EngineManifest,
    OpenSetThreshold,
    Precision,
    Preprocessing,
    RfPreprocessing,
    RgbPreprocessing,
    default_file_mode,
    manifest_path_for,
    sha256_file,
    write_manifest,
)
from vrclip.edge.pipeline.ratecheck import median_rate_hz
from vrclip.edge.rfwindow import RFWindowSpec
from vrclip.export.model import CLIP_MEAN, CLIP_STD, VRCLIP, CheckpointError, InferenceModel, ModelConfig
from vrclip.export.openset import open_set_from_report

#: Opsets this exporter produces and verifies (see the module docstring for why only 17).
SUPPORTED_OPSETS = (17,)
DEFAULT_OPSET = 17
#: Largest |ONNX Runtime - PyTorch| allowed on the L2-normalised embedding.
EMBEDDING_TOLERANCE = 1e-4
#: Batch sizes the round trip is checked at: 1 and a batch other than the traced one.
CHECK_BATCHES = (1, 3)
#: Batch the graph is traced with (any size works; the axis is exported as dynamic).
TRACE_BATCH = 2


class ExportError(UserError):
    """The export cannot be done as asked, or its result failed verification."""


@dataclass(frozen=True)
class ExportOptions:
    opset: int = DEFAULT_OPSET
    #: Largest batch the runtime should run in one go (recorded in the manifest; the axis is dynamic).
    max_batch: int = 8
    tolerance: float = EMBEDDING_TOLERANCE
    check_batches: tuple[int, ...] = CHECK_BATCHES
    seed: int = 0


@dataclass
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: EngineManifest
    #: Per checked batch size: {output: max |ORT - torch|}.
    max_abs: dict[int, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------- inputs
def random_inputs(cfg: ModelConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds of the deployable shapes, roughly at the scale real ones have.

    Presence flags cycle through (1,1), (1,0), (0,1) so a batch of 3 runs every fusion branch; RF is
    zero-mean noise (gated echoes are), anchors a short random walk (the model reads step lengths).
    """
    rng = np.random.default_rng(seed)
    h, w = cfg.vision.image_size
    r = cfg.rf
    flags = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    steps = rng.normal(0.0, 0.08, (batch, r.frames, 2)).astype(np.float32)
    start = rng.uniform(-2.0, 2.0, (batch, 1, 2)).astype(np.float32) + np.array([0.0, 3.0], np.float32)
    return {
        "rgb": rng.random((batch, 3, h, w), dtype=np.float32),
        "rf": rng.normal(0.0, 1.0, (batch, r.frames, r.channels, r.range_bins, 2)).astype(np.float32),
        "anchor": (start + np.cumsum(steps, axis=1)).astype(np.float32),
        "present": flags[np.arange(batch) % 3],
    }


# -------------------------------------------------------------------------------------- manifest
def tensor_specs(cfg: ModelConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest input/output specs of `InferenceModel` for a model configuration."""
    h, w = cfg.vision.image_size
    r = cfg.rf
    inputs = [
        {
            "name": "rgb",
            "shape": ["batch", 3, h, w],
            "dtype": "float32",
            "description": "person crops, RGB, NCHW, uint8 / 255 (normalisation is inside the graph)",
        },
        {
            "name": "rf",
            "shape": ["batch", r.frames, r.channels, r.range_bins, 2],
            "dtype": "float32",
            "description": "gated RF windows (T, C, R, real/imag), vrclip.edge.rfwindow",
        },
        {
            "name": "anchor",
            "shape": ["batch", r.frames, 2],
            "dtype": "float32",
            "description": "track floor positions (m) over the T RF frames, newest last, with the "
            "radar array's horizontal centre as origin (room axes)",
        },
        {
            "name": "present",
            "shape": ["batch", 2],
            "dtype": "float32",
            "description": "(camera live, radar live) flags, 1 or 0",
        },
    ]
    outputs = [
        {
            "name": "embedding",
            "shape": ["batch", cfg.align_dim],
            "dtype": "float32",
            "description": "fused identity embedding, L2-normalised",
        },
        {
            "name": "position",
            "shape": ["batch", 2],
            "dtype": "float32",
            "description": "floor position (m), array-centred like the anchor",
        },
        {
            "name": "reliability",
            "shape": ["batch"],
            "dtype": "float32",
            "description": "RGB reliability exp(-beta d) in [0, 1]",
        },
    ]
    return inputs, outputs


def build_manifest(
    cfg: ModelConfig,
    window: dict[str, Any],
    onnx_path: Path,
    *,
    model_name: str,
    precision: Precision = "fp32",
    max_batch: int = 8,
    accuracy: dict[str, Any] | None = None,
    created_by: str = "",
) -> EngineManifest:
    """The manifest of an exported graph: shapes from the config, preprocessing as trained."""
    inputs, outputs = tensor_specs(cfg)
    h, w = cfg.vision.image_size
    rgb = RgbPreprocessing(
        input="rgb",
        height=h,
        width=w,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        normalized_in_model=True,
    )
    rf = RfPreprocessing(
        input="rf",
        frames=cfg.rf.frames,
        channels=cfg.rf.channels,
        range_bins=cfg.rf.range_bins,
        zero_pad_factor=int(window.get("pad_factor", 8)),
        window=window,
    )
    return EngineManifest(
        model_name=model_name,
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(rgb=rgb, rf=rf),
        precision=precision,
        source_onnx_sha256=sha256_file(onnx_path),
        max_batch=max_batch,
        accuracy=accuracy or {},
        created_by=created_by or f"vrclip-export {__version__}",
    )


def window_for(cfg: ModelConfig, prep: dict[str, Any] | None) -> dict[str, Any]:
    """The RF window dict for the manifest: exactly the checkpoint's, or (random-weight models) the
    default spec at the model's T and R. Refuses a window that disagrees with the model's input."""
    if prep is None:
        return RFWindowSpec(frames=cfg.rf.frames, range_bins=cfg.rf.range_bins).to_dict()
    try:
        spec = RFWindowSpec.from_dict(prep["rf"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's RF window spec is malformed ({e!r})") from e
    problems = []
    if spec.frames != cfg.rf.frames:
        problems.append(f"window frames {spec.frames} vs model frames {cfg.rf.frames}")
    if spec.range_bins != cfg.rf.range_bins:
        problems.append(f"window range_bins {spec.range_bins} vs model range_bins {cfg.rf.range_bins}")
    if spec.beamformed and spec.n_channels(0) != cfg.rf.channels:
        problems.append(f"window forms {spec.n_channels(0)} beams, the model takes {cfg.rf.channels}")
    elif not spec.beamformed and spec.channels and len(spec.channels) != cfg.rf.channels:
        problems.append(f"window selects {len(spec.channels)} channels, the model takes {cfg.rf.channels}")
    if problems:
        raise CheckpointError(
            f"the checkpoint's preprocessing does not fit its model configuration ({'; '.join(problems)}); "
            "it is damaged or was assembled from two runs - re-run training"
        )
    return spec.to_dict()


def crop_for(cfg: ModelConfig, prep: dict[str, Any] | None) -> None:
    """The runtime cuts crops with CropSpec defaults at the manifest's size: refuse a checkpoint trained
    on another crop box, which the manifest could not carry and the runtime would silently get wrong."""
    if prep is None or "crop" not in prep:
        return
    from vrclip.edge.crops import CropSpec

    try:
        trained = CropSpec(**prep["crop"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's crop spec is malformed ({e!r})") from e
    h, w = cfg.vision.image_size
    if (trained.height, trained.width) != (h, w):
        raise CheckpointError(
            f"the checkpoint's crops are {trained.height}x{trained.width} but its model takes {h}x{w}; "
            "it is damaged or was assembled from two runs"
        )
    runtime = CropSpec(height=h, width=w)
    if trained != runtime:
        raise ExportError(
            f"the checkpoint was trained on crops {trained} but the edge runtime cuts {runtime}; "
            "the manifest cannot carry a custom crop box - retrain with the default crop box"
        )


# -------------------------------------------------------------------------------------- sensor
def sensor_signature(recording: str | Path) -> dict[str, Any]:
    """What fixes the meaning of an RF window besides its spec: the sweep and the array geometry.

    Kept in the manifest's RF window record (key "sensor"; RFWindowSpec.from_dict ignores it) so the
    quantiser, and the runtime if it wishes, can refuse recordings from another radar configuration.
    """
    from vrclip.edge.recording.reader import SessionReader

    with SessionReader(recording) as reader:
        freqs = np.asarray(reader.freqs_hz, np.float64)
        geometry = reader.array_geometry
        times = reader.times("radar", 0, min(reader.count("radar"), 1000))
    signature = signature_of(freqs, geometry)
    # The rate the runtime's RadarRateCheck compares its radar with, measured by the same rule.
    rate = median_rate_hz(np.diff(times))
    if rate is not None:
        # What the RF window's T frames span in time; the runtime warns when its radar runs otherwise.
        signature["frame_rate_hz"] = round(rate, 3)
    return signature


def signature_of(freqs_hz: np.ndarray, geometry: Any) -> dict[str, Any]:
    canonical = {
        "tx": np.round(geometry.tx_positions, 4).tolist(),
        "rx": np.round(geometry.rx_positions, 4).tolist(),
        "pairs": geometry.pairs.tolist(),
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return {
        "sweep_start_hz": float(freqs_hz[0]),
        "sweep_stop_hz": float(freqs_hz[-1]),
        "sweep_points": int(freqs_hz.size),
        "array_channels": int(geometry.n_channels),
        "geometry_sha256": digest,
    }


def training_recording(data: dict[str, Any], dataset: Path | None) -> Path | None:
    """One recording the checkpoint was trained on (its first training segment's session), if reachable."""
    root = dataset
    if root is None:
        raw = (
            data.get("train_config", {}).get("dataset")
            if isinstance(data.get("train_config"), dict)
            else None
        )
        root = Path(raw) if raw else None
    segments = data.get("segments") or []
    if root is None or not segments or not isinstance(segments[0], dict):
        return None
    path = Path(root) / str(segments[0].get("session", ""))
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------ files
@contextlib.contextmanager
def temporary_sibling(path: Path, suffix: str) -> Iterator[Path]:
    """A temporary file in `path`'s folder (so os.replace is atomic), removed unless renamed away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, target: Path) -> None:
    """Rename a finished temporary file into place with ordinary permissions (mkstemp makes 0600, but
    a package is read by the runtime's service user, not only by whoever exported it)."""
    os.chmod(tmp, default_file_mode())
    os.replace(tmp, target)


# ------------------------------------------------------------------------------------ the export
def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"--opset {opset}: not supported; this exporter writes and verifies opset "
            f"{', '.join(map(str, SUPPORTED_OPSETS))} (what TensorRT's explicit INT8 path and the Q/DQ "
            "quantiser expect)"
        )


def torch_export(model: VRCLIP, path: Path, opset: int) -> None:
    """Trace `InferenceModel(model)` to ONNX at `path` with every tensor's axis 0 dynamic."""
    wrapper = InferenceModel(model).eval()
    feeds = random_inputs(model.cfg, TRACE_BATCH, seed=1)
    args = tuple(torch.from_numpy(feeds[n]) for n in InferenceModel.INPUT_NAMES)
    names = (*InferenceModel.INPUT_NAMES, *InferenceModel.OUTPUT_NAMES)
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention, taken under
    # no_grad with an even head count) has no ONNX symbolic: trace the plain ops instead.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                input_names=list(InferenceModel.INPUT_NAMES),
                output_names=list(InferenceModel.OUTPUT_NAMES),
                opset_version=opset,
                dynamic_axes={n: {0: "batch"} for n in names},
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def check_graph(path: Path, opset: int) -> None:
    """ONNX checker (with the file path, so models over 2 GB are checked too) and the opset stamp."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ExportError(f"the exported graph fails the ONNX checker: {e}") from e
    model = onnx.load(str(path), load_external_data=False)
    stamped = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if stamped.get("ai.onnx") != opset:
        raise ExportError(f"the exported graph carries opset {stamped.get('ai.onnx')}, expected {opset}")


def ort_session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def compare_with_torch(
    model: VRCLIP, path: Path, batches: Sequence[int], tolerance: float, seed: int = 0
) -> dict[int, dict[str, float]]:
    """Max |ORT - torch| per output at each batch size; raises ExportError past the tolerance."""
    session = ort_session(path)
    wrapper = InferenceModel(model).eval()
    result: dict[int, dict[str, float]] = {}
    for batch in batches:
        feeds = random_inputs(model.cfg, batch, seed=seed + batch)
        with torch.no_grad():
            expected = wrapper(*(torch.from_numpy(feeds[n]) for n in InferenceModel.INPUT_NAMES))
        got = session.run(list(InferenceModel.OUTPUT_NAMES), feeds)
        diffs = {}
        for name, want, have in zip(InferenceModel.OUTPUT_NAMES, expected, got, strict=True):
            if tuple(have.shape) != tuple(want.shape):
                raise ExportError(
                    f"ONNX Runtime returns {name} of shape {tuple(have.shape)} at batch {batch}, "
                    f"PyTorch {tuple(want.shape)}: the batch axis is not dynamic"
                )
            diffs[name] = float(np.max(np.abs(have - want.numpy()))) if have.size else 0.0
        result[batch] = diffs
        if not diffs["embedding"] <= tolerance:  # also catches NaN
            raise ExportError(
                f"ONNX Runtime and PyTorch disagree at batch {batch}: max |diff| of the normalised "
                f"embedding is {diffs['embedding']:.3g} > {tolerance:g}; the export is wrong - report this "
                "with the checkpoint"
            )
    return result


def export_model(
    model: VRCLIP,
    out: str | Path,
    options: ExportOptions = ExportOptions(),
    *,
    window: dict[str, Any] | None = None,
    model_name: str | None = None,
    accuracy: dict[str, Any] | None = None,
    open_set: OpenSetThreshold | None = None,
    echo: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export, verify and write `<out>` + its manifest; see the module docstring. Overwrites nothing
    unless every check passed."""
    check_opset(options.opset)
    if options.max_batch < 1:
        raise ExportError(f"--max-batch {options.max_batch}: must be >= 1")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"--out {out}: the model file must end in .onnx (the manifest goes beside it)")
    started = time.perf_counter()
    model = model.eval()
    window = window if window is not None else window_for(model.cfg, None)
    name = model_name or out.stem
    manifest_path = manifest_path_for(out)
    with temporary_sibling(out, ".onnx") as tmp:
        torch_export(model, tmp, options.opset)
        check_graph(tmp, options.opset)
        diffs = compare_with_torch(model, tmp, options.check_batches, options.tolerance, options.seed)
        if echo:
            worst = max(d["embedding"] for d in diffs.values())
            echo(
                f"ONNX Runtime vs PyTorch at batch {', '.join(map(str, diffs))}: "
                f"max |diff| embedding {worst:.2e} (limit {options.tolerance:g})"
            )
        report = {
            "onnx_vs_torch": {
                "batches": list(diffs),
                "max_abs": {k: max(d[k] for d in diffs.values()) for k in InferenceModel.OUTPUT_NAMES},
                "tolerance_embedding": options.tolerance,
            },
            **(accuracy or {}),
        }
        manifest = build_manifest(
            model.cfg,
            window,
            tmp,
            model_name=name,
            precision="fp32",
            max_batch=options.max_batch,
            accuracy=report,
        )
        # The checkpoint names the model; a model without one (random weights) is its own ONNX.
        space = str((accuracy or {}).get("source_checkpoint_sha256") or manifest.source_onnx_sha256)
        manifest = manifest.model_copy(update={"open_set": open_set, "embedding_space": space})
        publish(tmp, out)
    write_manifest(manifest_path, manifest)
    return ExportResult(out, manifest_path, manifest, diffs, time.perf_counter() - started)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    options: ExportOptions = ExportOptions(),
    *,
    dataset: str | Path | None = None,
    threshold_from: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> ExportResult:
    """`vrclip-export onnx`: load a checkpoint (config + weights checked against each other), export it.

    `threshold_from`: an evaluation report of this checkpoint; its open-set threshold goes into the
    manifest, where the runtime takes it from unless `gallery.threshold` is set.

    The manifest's RF window is the checkpoint's preprocessing spec verbatim, plus the training radar's
    sweep/geometry signature when one of its training recordings is reachable (`dataset`, default the
    dataset folder the checkpoint names).
    """
    from vrclip.export.checkpoint import load_checkpoint_with_digest, model_from_checkpoint

    check_opset(options.opset)  # before the (slow) load: a bad flag should fail at once
    checkpoint = Path(checkpoint)
    # The checkpoint first: the report is checked against its hash, and a missing checkpoint must read
    # as one ("no such checkpoint"), not as a failure inside the report check.
    # Hashed as loaded: the report check and the manifest's source hash vouch for the bytes exported,
    # even if training replaces the file meanwhile.
    data, checkpoint_sha256 = load_checkpoint_with_digest(checkpoint)
    open_set = (
        open_set_from_report(threshold_from, checkpoint, checkpoint_sha256=checkpoint_sha256)
        if threshold_from is not None
        else None
    )
    model = model_from_checkpoint(data, str(checkpoint))
    try:
        window = window_for(model.cfg, data["prep"])
        crop_for(model.cfg, data["prep"])
    except (CheckpointError, ExportError) as e:  # their messages say "the checkpoint", not which one
        raise type(e)(f"{checkpoint}: {e}") from e
    recording = training_recording(data, Path(dataset) if dataset is not None else None)
    if recording is not None:
        window["sensor"] = sensor_signature(recording)
    elif echo:
        echo(
            "note: no training recording reachable (give --dataset); the manifest carries no radar "
            "signature, so `quantize` can check calibration recordings only by channel count"
        )
    target = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    accuracy = {
        "source_checkpoint": checkpoint.name,
        "source_checkpoint_sha256": checkpoint_sha256,
        "classes": len(data.get("classes", [])),
    }
    return export_model(
        model, target, options, window=window, accuracy=accuracy, open_set=open_set, echo=echo
    )


__all__ = [
    "CHECK_BATCHES",
    "DEFAULT_OPSET",
    "EMBEDDING_TOLERANCE",
    "SUPPORTED_OPSETS",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "build_manifest",
    "check_opset",
    "compare_with_torch",
    "export_checkpoint",
    "export_model",
    "publish",
    "random_inputs",
    "sensor_signature",
    "signature_of",
    "tensor_specs",
    "window_for",
]
