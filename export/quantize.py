"""`vrclip-export quantize`: static INT8 of an exported graph, calibrated on recordings, gated on accuracy.

Two artefacts, because one INT8 form does not serve both targets (DESIGN "Measured facts"):

- `<name>.int8.onnx` (precision "int8"): explicit quantisation, Q/DQ nodes, activations and weights
  symmetric QInt8 (every zero point 0), weights per output channel, opset 17. It is what TensorRT's
  strongly typed INT8 build consumes. ONNX Runtime runs it too (slowly on a CPU without VNNI), which is
  how its accuracy is checked here without a GPU.
- `<name>.int8-cpu.onnx` (precision "int8-cpu", `--variant cpu`): for ONNX Runtime on the CPU.
  Dynamic INT8 of the weight MatMuls by default (DynamicQuantizeLinear computes each activation's
  scale at run time, so no calibration range can clip; it computes one scale per tensor, over the
  whole batch, so a sample's result would depend on the samples batched with it: the ONNX Runtime
  backend runs an int8-cpu package one sample at a time, and the gate scores it the same way), or
  static U8S8 Q/DQ (`--cpu-method u8s8`).

What stays in float, and why: LayerNorm, Softmax and GELU (their inputs have outliers a single int8
scale cannot hold; TensorRT runs them in higher precision anyway), the patch embedding (the first Conv,
its input is the raw image) and the final projections into the identity space (the visual output
projection and the two alignment heads: the reliability gate compares their outputs, small errors
there move the gate). Concretely only MatMul/Gemm with a constant weight are quantised
(MatMulConstBOnly; activation-activation MatMuls of attention stay float), the named nodes are
excluded, and `--float-block i` keeps transformer block i, and the residual adapter after it,
entirely in float.

In the Q/DQ variants the quantisation is confined to the MatMul/Gemm inputs: ONNX Runtime's
quantiser puts one Q/DQ pair on an activation tensor and points every consumer at it, so the float
ops that share an input with a quantised MatMul (the residual stream feeding an adapter's Mul, the
SSM input feeding Gather and the skip Mul) would read int8-rounded values. Before quantising, each
quantised MatMul/Gemm therefore gets its own Identity on its activation input, so the Q/DQ lands on
that Identity's output and only the MatMul reads it; the Identities are removed afterwards (the Q
node reads the shared tensor, the float consumers still read it unrounded). In the dynamic variant
ONNX Runtime rewrites every Gemm as `<name>_MatMul` + `<name>_Add` before it applies the exclusion
list, so an excluded Gemm is excluded under both names; the quantised graph is checked to have left
every excluded node's weight in float.

Calibration and held-out samples are built exactly as the trainer builds them (vrclip.export.data:
crops via vrclip.edge.crops, RF windows via vrclip.edge.rfwindow, the manifest's window spec) and fed
as the runtime feeds them (the manifest's RGB preprocessing and anchor shape). Each track is split in
time: windows in its first half calibrate, windows wholly in its second half are held out, so the gate
never scores a sample the ranges were fitted on.

The gate runs the quantised and the float graph on ONNX Runtime over the held-out samples (an
int8-cpu graph one sample at a time, as the runtime runs it): embedding
cosine (min, mean), mAP of both (vrclip.export.metrics, same-session matches excluded), localisation
error of both. A figure past its limit fails the command with a UserError naming it, and nothing is
written; on success the figures go into the manifest's `accuracy`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from vrclip.edge.errors import RecordingError, UserError
from vrclip.edge.manifest import EngineManifest, load_manifest, manifest_path_for, sha256_file, write_manifest
from vrclip.export.onnx_export import (
    ort_session,
    publish,
    signature_of,
    temporary_sibling,
)

Variant = Literal["int8", "cpu"]
CpuMethod = Literal["dynamic", "u8s8"]

#: Fewest calibration / held-out samples accepted at all (the defaults are far above).
MIN_CALIBRATION_SAMPLES = 16
MIN_HOLDOUT_SAMPLES = 16
DEFAULT_CALIBRATION_SAMPLES = 500
DEFAULT_HOLDOUT_SAMPLES = 300
#: Op types whose constant-weight instances are quantised; everything else stays float.
QUANTISED_OP_TYPES = ("MatMul", "Gemm")
#: Initialisers (parameter names as exported) of the layers kept in float, and why.
FLOAT_WEIGHTS = {
    "model.visual.vit.conv1.weight": "patch embedding",
    "model.visual.vit.proj": "visual output projection",
    "model.align_vision.weight": "RGB alignment head",
    "model.align_rf.weight": "RF alignment head",
}
#: The float ops kept float by construction (they are not in QUANTISED_OP_TYPES); listed in reports.
FLOAT_OP_TYPES = ("LayerNormalization", "Softmax", "Erf (GELU)", "Conv (patch embedding)")


class QuantizeError(UserError):
    """Quantisation cannot be done as asked, or the quantised model failed its accuracy gate."""


class GateError(QuantizeError):
    """The quantised model is less accurate than the gate allows; the message names the figure."""


@dataclass(frozen=True)
class GateThresholds:
    min_cosine_mean: float = 0.99
    #: mAP drop in points (percent): float mAP - quantised mAP.
    max_map_drop: float = 1.0
    #: Increase of the mean localisation error, metres.
    max_loc_increase_m: float = 0.05


@dataclass(frozen=True)
class QuantizeOptions:
    variant: Variant = "int8"
    cpu_method: CpuMethod = "dynamic"
    samples: int = DEFAULT_CALIBRATION_SAMPLES
    holdout: int = DEFAULT_HOLDOUT_SAMPLES
    seed: int = 42
    #: Calibration batch (the float graph's batch axis is dynamic).
    batch: int = 8
    calibrate_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    #: Transformer blocks of the visual encoder kept entirely in float.
    float_blocks: tuple[int, ...] = ()
    gate: GateThresholds = field(default_factory=GateThresholds)
    #: Preprocessing cache (default: <dataset root>/.vrclip-cache, shared with the trainer).
    cache: Path | None = None
    jobs: int = 2
    #: Output path (default: <name>.int8.onnx / <name>.int8-cpu.onnx beside the float model).
    out: Path | None = None

    @property
    def precision(self) -> str:
        """The manifest precision the variant produces: "int8" or "int8-cpu"."""
        return "int8" if self.variant == "int8" else "int8-cpu"


Progress = Callable[[str, int, int | None], None]
"""progress(task, done, total): task is 'preprocess', 'samples', 'calibrate' or 'gate'."""


# -------------------------------------------------------------------------------------- samples
@dataclass
class SampleSet:
    """Model feeds (as the runtime builds them) plus the labels the gate scores with."""

    rgb: np.ndarray  # (n, H, W, 3) uint8 crops (converted per batch: float crops would be 4x larger)
    rf: np.ndarray  # (n, T, C, R, 2) float32
    anchor: np.ndarray  # (n, T, 2) float32
    present: np.ndarray  # (n, 2) float32
    position: np.ndarray  # (n, 2) float32 true floor position
    identity: np.ndarray  # (n,) int64
    session: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return int(self.rf.shape[0])

    def feeds(self, manifest: EngineManifest, rows: slice | np.ndarray) -> dict[str, np.ndarray]:
        """The engine's inputs for `rows`, converted exactly as vrclip.edge.pipeline.identify does."""
        pre = manifest.preprocessing
        assert pre.rgb is not None and pre.rf is not None
        out = {pre.rgb.input: pre.rgb.to_input(self.rgb[rows]), pre.rf.input: self.rf[rows]}
        names = {s.name: s for s in manifest.inputs}
        if "anchor" in names:
            shape = names["anchor"].sample_shape
            anchors = self.anchor[rows]
            out["anchor"] = np.ascontiguousarray(
                anchors[:, -shape[0] :] if len(shape) == 2 else anchors[:, -1]
            )
        if "present" in names:
            out["present"] = self.present[rows]
        return out

    def batches(self, manifest: EngineManifest, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield self.feeds(manifest, slice(start, min(len(self), start + size)))


def resolve_recordings(paths: Sequence[str | Path]) -> tuple[list[Any], Path]:
    """Recordings given as files or folders -> (SessionInfo list, dataset root for the cache).

    A file inside a dataset folder (one with dataset.json above it) gets the name the trainer gives it
    (its path relative to the dataset root), so the trainer's preprocessing cache is reused.
    """
    from vrclip.export.data import SessionInfo, discover_sessions

    sessions: list[SessionInfo] = []
    roots: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            sessions.extend(discover_sessions(p))
            roots.append(p)
        elif p.is_file():
            root = next((a for a in list(p.parents)[:3] if (a / "dataset.json").is_file()), p.parent)
            lighting, occlusion = _conditions(p)
            sessions.append(SessionInfo(p, str(p.relative_to(root)), lighting, occlusion))
            roots.append(root)
        else:
            raise RecordingError(
                f"{p}: no such recording or folder; give session .h5 files or a dataset folder"
            )
    unique: dict[Path, SessionInfo] = {}
    for s in sessions:
        unique.setdefault(s.path.resolve(), s)
    if not unique:
        raise QuantizeError(f"{', '.join(map(str, paths))}: holds no recordings (*.h5)")
    return list(unique.values()), roots[0]


def _conditions(path: Path) -> tuple[str, str]:
    from vrclip.edge.recording.reader import SessionReader

    with SessionReader(path) as reader:
        cond = reader.conditions
    return str(cond.get("lighting", "unknown")), str(cond.get("occlusion", "unknown"))


def check_sensor(sessions: Sequence[Any], manifest: EngineManifest, source: str) -> None:
    """Refuse recordings whose radar differs from the model's: sweep, channel count, array geometry.

    The reference is the training radar's signature in the manifest's RF window record when the export
    found one, else the first recording (they must then at least agree with each other and with the
    model's channel count).
    """
    from vrclip.edge.recording.reader import SessionReader
    from vrclip.edge.rfwindow import RFWindowSpec

    rf = manifest.preprocessing.rf
    if rf is None:
        raise QuantizeError(f"{source}: the manifest has no RF preprocessing; re-export the model")
    window = RFWindowSpec.from_dict(rf.window) if rf.window else RFWindowSpec(rf.frames, rf.range_bins)
    reference: dict[str, Any] | None = rf.window.get("sensor") if rf.window else None
    ref_name = "the model's training radar" if reference else None
    for s in sessions:
        with SessionReader(s.path) as reader:
            if "camera" not in reader.streams:
                raise RecordingError(f"{s.path}: has no camera stream; calibration needs RGB + radar")
            mine = signature_of(np.asarray(reader.freqs_hz, np.float64), reader.array_geometry)
        used = window.n_channels(mine["array_channels"])
        if window.channels and max(window.channels) >= mine["array_channels"]:
            raise QuantizeError(
                f"{s.path}: its array has {mine['array_channels']} channels but the model's RF window uses "
                f"channel {max(window.channels)}; it was recorded with another radar configuration"
            )
        if used != rf.channels:
            raise QuantizeError(
                f"{s.path}: gives {used} RF channels but the model takes {rf.channels}; calibrate on "
                "recordings from the radar configuration the model was trained on"
            )
        if reference is None:
            reference, ref_name = mine, str(s.path)
            continue
        diff = [
            f"{k} {mine[k]} vs {reference.get(k)}"
            for k in ("sweep_points", "sweep_start_hz", "sweep_stop_hz", "array_channels", "geometry_sha256")
            if k in reference and mine[k] != reference[k]
        ]
        if diff:
            raise QuantizeError(
                f"{s.path}: recorded with another sensor configuration than {ref_name} "
                f"({'; '.join(diff)}); calibrate on recordings of the radar configuration the model was "
                "trained on"
            )


def prep_spec_for(manifest: EngineManifest) -> Any:
    """The trainer's PrepSpec for this model: the manifest's window and crop size, trainer defaults
    for the rest (so, for a default-trained model, the trainer's preprocessing cache is hit)."""
    from vrclip.edge.crops import CropSpec
    from vrclip.edge.rfwindow import RFWindowSpec
    from vrclip.export.data import PrepSpec

    pre = manifest.preprocessing
    assert pre.rgb is not None and pre.rf is not None
    window = (
        RFWindowSpec.from_dict(pre.rf.window)
        if pre.rf.window
        else RFWindowSpec(pre.rf.frames, pre.rf.range_bins)
    )
    return PrepSpec(rf=window, crop=CropSpec(height=pre.rgb.height, width=pre.rgb.width))


def split_in_time(tracks: Sequence[Any], frames: int) -> tuple[Any, Any]:
    """(calibration, held-out) sample indices: per track, windows ending in its first half vs windows
    starting in its second half (disjoint frames)."""
    from vrclip.export.data import all_samples

    index = all_samples(tracks, frames)
    cut = np.array([tracks[t].frames // 2 for t in index.track], np.int64)
    calib = index.end < cut
    held = index.end - frames + 1 >= cut
    return index.subset(calib), index.subset(held)


def _gather(tracks: Sequence[Any], index: Any, rows: np.ndarray, frames: int) -> SampleSet:
    from vrclip.export.data import make_batch

    names = sorted({t.identity for t in tracks})
    ids = {n: i for i, n in enumerate(names)}
    sessions = {n: i for i, n in enumerate(sorted({t.session.name for t in tracks}))}
    parts = []
    for start in range(0, rows.size, 64):  # bounded: make_batch copies every crop and window it takes
        parts.append(make_batch(tracks, index, rows[start : start + 64], frames, ids))
    return SampleSet(
        rgb=np.concatenate([p.rgb for p in parts]),
        rf=np.concatenate([p.rf for p in parts]),
        anchor=np.concatenate([p.anchor for p in parts]),
        present=np.concatenate([p.present for p in parts]),
        position=np.concatenate([p.position for p in parts]),
        identity=np.concatenate([p.label for p in parts]),
        session=np.array([sessions[tracks[int(index.track[r])].session.name] for r in rows], np.int64),
    )


def load_samples(
    recordings: Sequence[str | Path],
    manifest: EngineManifest,
    options: QuantizeOptions,
    source: str = "<model>",
    progress: Progress | None = None,
) -> tuple[SampleSet, SampleSet]:
    """(calibration, held-out) samples from recordings; raises when there are too few."""
    from vrclip.export.data import load_tracks

    if options.samples < MIN_CALIBRATION_SAMPLES:
        raise QuantizeError(
            f"--samples {options.samples}: too few to calibrate on; use at least {MIN_CALIBRATION_SAMPLES} "
            f"(default {DEFAULT_CALIBRATION_SAMPLES})"
        )
    if options.holdout < MIN_HOLDOUT_SAMPLES:
        raise QuantizeError(
            f"--holdout {options.holdout}: use at least {MIN_HOLDOUT_SAMPLES} held-out samples"
        )
    sessions, root = resolve_recordings(recordings)
    check_sensor(sessions, manifest, source)
    prep = prep_spec_for(manifest)
    cache = options.cache or root / ".vrclip-cache"
    tracks = load_tracks(
        sessions,
        prep,
        cache,
        options.jobs,
        (lambda d, t, n: progress("preprocess", d, t)) if progress else None,
    )
    frames = prep.rf.frames
    calib_pool, held_pool = split_in_time(tracks, frames)
    if len(calib_pool) < options.samples:
        raise QuantizeError(
            f"the calibration recordings give {len(calib_pool)} calibration samples (T = {frames}-frame "
            f"windows in the first half of each of {len(tracks)} tracks), fewer than --samples "
            f"{options.samples}; "
            "add recordings (--calib) or lower --samples"
        )
    if len(held_pool) < MIN_HOLDOUT_SAMPLES:
        raise QuantizeError(
            f"the calibration recordings leave {len(held_pool)} held-out samples (windows in the second "
            f"half of each track) for the accuracy gate, fewer than {MIN_HOLDOUT_SAMPLES}; add or lengthen "
            "recordings"
        )
    rng = np.random.default_rng(options.seed)
    calib_rows = np.sort(rng.choice(len(calib_pool), options.samples, replace=False))
    held_rows = np.sort(rng.choice(len(held_pool), min(options.holdout, len(held_pool)), replace=False))
    if progress:
        progress("samples", 0, 2)
    calib = _gather(tracks, calib_pool, calib_rows, frames)
    if progress:
        progress("samples", 1, 2)
    held = _gather(tracks, held_pool, held_rows, frames)
    if progress:
        progress("samples", 2, 2)
    return calib, held


# ----------------------------------------------------------------------------------- node choice
@dataclass(frozen=True)
class QuantPlan:
    op_types: tuple[str, ...]
    exclude: tuple[str, ...]
    #: Human-readable: what stays float and why.
    kept_float: tuple[str, ...]


def plan_nodes(model: Any, float_blocks: Sequence[int] = ()) -> QuantPlan:
    """Which nodes the quantiser may touch (see the module docstring)."""
    exclude: list[str] = []
    kept: list[str] = []
    for node in model.graph.node:
        weight = next((i for i in node.input if i in FLOAT_WEIGHTS), None)
        if weight is not None and node.op_type in ("Conv", "MatMul", "Gemm"):
            exclude.append(node.name)
            kept.append(f"{FLOAT_WEIGHTS[weight]} ({node.name})")
    # MatMuls of two activations (attention scores Q.K^T and the Softmax-weighted sum) have no weight
    # to quantise per channel and would put Q/DQ around Softmax; ORT's Q/DQ quantiser ignores
    # MatMulConstBOnly, so they are excluded by name.
    constant = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    activation_mm = [
        n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in constant for i in n.input)
    ]
    if activation_mm:
        exclude.extend(activation_mm)
        kept.append(f"{len(activation_mm)} activation x activation MatMuls (attention)")
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if convs and convs[0].name not in exclude:  # the first Conv is the patch embedding whatever its name
        exclude.append(convs[0].name)
        kept.append(f"patch embedding ({convs[0].name})")
    blocks = _blocks(model)
    for b in float_blocks:
        if b not in blocks:
            raise QuantizeError(
                f"--float-block {b}: the visual encoder has blocks {sorted(blocks) or 'none'} (0-based)"
            )
        names = [
            n.name for n in model.graph.node if n.op_type in QUANTISED_OP_TYPES and _block_of(n.name) == b
        ]
        exclude.extend(names)
        adapter = " and its adapter" if any("/adapters." in n for n in names) else ""
        kept.append(f"transformer block {b}{adapter} ({len(names)} MatMul/Gemm)")
    kept.extend(f"every {t}" for t in FLOAT_OP_TYPES)
    return QuantPlan(QUANTISED_OP_TYPES, tuple(dict.fromkeys(exclude)), tuple(kept))


def _block_of(node_name: str) -> int | None:
    """The visual transformer block a node belongs to: `/visual/resblocks.i/...`, and the residual
    adapter applied after block i, `/visual/adapters.i/...`; None for every other node."""
    for marker in ("/resblocks.", "/adapters."):
        at = node_name.find(marker)
        if at < 0 or "/visual/" not in node_name[: at + 1]:
            continue
        digits = node_name[at + len(marker) :].split("/", 1)[0]
        return int(digits) if digits.isdigit() else None
    return None


def _blocks(model: Any) -> set[int]:
    return {b for n in model.graph.node if (b := _block_of(n.name)) is not None}


def visual_blocks(onnx_path: str | Path) -> list[int]:
    import onnx

    return sorted(_blocks(onnx.load(str(onnx_path), load_external_data=False)))


# ---------------------------------------------------------------------------------- quantisation
class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over `count` batches produced on demand by `get`.

    It also implements the ranged protocol (`__len__`, `set_range`) that CalibStridedMinMax uses:
    the quantiser then reduces every slice of batches to its min/max before reading the next, so
    calibration memory stays at one slice of intermediate tensors however many samples there are.
    (ORT's other bound, CalibMaxIntermediateOutputs, discards the collected batches without reducing
    them in ORT 1.32 - only the last partial chunk would calibrate - so it is not used.)
    """

    def __init__(
        self,
        count: int,
        get: Callable[[int], dict[str, np.ndarray]],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.count, self.get, self.progress = count, get, progress
        self._next, self._stop, self._done = 0, count, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._stop:
            return None
        item = self.get(self._next)
        self._next += 1
        self._done += 1
        if self.progress:
            self.progress(self._done)
        return item

    def __len__(self) -> int:
        return self.count

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._stop = start_index, min(end_index, self.count)

    @classmethod
    def of_samples(
        cls, samples: SampleSet, manifest: EngineManifest, batch: int, progress: Progress | None
    ) -> FeedReader:
        count = -(-len(samples) // batch)

        def get(i: int) -> dict[str, np.ndarray]:
            # Every batch full: the histogram calibrators (percentile, entropy) stack batches and fail
            # on a short last one, so it is topped up from the start of the set (a few repeats).
            rows = np.arange(i * batch, (i + 1) * batch) % len(samples)
            return samples.feeds(manifest, rows)

        def tick(done: int) -> None:
            if progress:
                progress("calibrate", min(len(samples), done * batch), len(samples))

        return cls(count, get, tick)

    @classmethod
    def of_batches(cls, batches: Sequence[dict[str, np.ndarray]]) -> FeedReader:
        return cls(len(batches), lambda i: batches[i])


def _strided(reader: Any, method: str) -> dict[str, Any]:
    """CalibStridedMinMax for MinMax calibration over a ranged reader (see FeedReader)."""
    if method == "minmax" and hasattr(reader, "set_range") and len(reader) > 1:
        return {"CalibStridedMinMax": 1}
    return {}


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


#: Suffix of the Identity that gives a quantised MatMul/Gemm its own copy of an activation input.
DEDICATED_INPUT = "/dedicated_input_"


def _constants(model: Any) -> set[str]:
    return {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }


def quantised_nodes(model: Any, plan: QuantPlan) -> list[Any]:
    """The nodes the quantiser will quantise under `plan`: its op types, not excluded, and a MatMul
    only with a constant B (MatMulConstBOnly)."""
    constant = _constants(model)
    return [
        n
        for n in model.graph.node
        if n.op_type in plan.op_types
        and n.name not in plan.exclude
        and len(n.input) > 1
        and (n.op_type != "MatMul" or n.input[1] in constant)
    ]


def dedicate_activation_inputs(model: Any, plan: QuantPlan) -> list[str]:
    """Give every node the quantiser will quantise its own Identity on its activation input, in place.

    ONNX Runtime's Q/DQ quantiser quantises a tensor once and points *every* consumer at the
    DequantizeLinear output; with the Identity in between, only the MatMul/Gemm reads the int8-rounded
    copy and the tensor's float consumers keep reading it unrounded. Returns the Identity names (for
    `remove_dedicated_inputs`).
    """
    from onnx import helper

    constant = _constants(model)
    taken = {t for n in model.graph.node for t in (*n.input, *n.output)} | constant
    taken |= {v.name for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    targets = {n.name for n in quantised_nodes(model, plan) if n.name}
    inserts: list[tuple[int, Any]] = []
    for index, node in enumerate(model.graph.node):
        activation = node.input[0] if node.name in targets and node.input else ""
        if not activation or activation in constant:
            continue
        name = f"{node.name}{DEDICATED_INPUT}0"
        while name in taken:
            name += "_"
        taken.add(name)
        inserts.append((index, helper.make_node("Identity", [activation], [name], name=name)))
        node.input[0] = name
    for index, identity in reversed(inserts):  # protobuf lists: insert, never rebuild from references
        model.graph.node.insert(index, identity)
    return [identity.name for _, identity in inserts]


def remove_dedicated_inputs(model: Any, identities: Sequence[str]) -> int:
    """Drop the Identities `dedicate_activation_inputs` added, in place: whatever read an Identity's
    output (its QuantizeLinear) reads the Identity's input. Returns how many were removed."""
    wanted = set(identities)
    rename: dict[str, str] = {}
    drop = []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Identity" and node.name in wanted:
            rename[node.output[0]] = node.input[0]
            drop.append(index)
    for index in reversed(drop):
        del model.graph.node[index]
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    for index in reversed([i for i, v in enumerate(model.graph.value_info) if v.name in rename]):
        del model.graph.value_info[index]
    return len(rename)


def _quantize_static_qdq(
    src: Path,
    dst: Path,
    reader: Any,
    plan: QuantPlan,
    method: str,
    calibration_cache: Path | None,
    *,
    symmetric_activations: bool,
    extra: dict[str, Any],
) -> None:
    """Static Q/DQ with per-channel symmetric int8 weights; activations int8 (symmetric) or uint8.

    Q/DQ reach only the quantised MatMul/Gemm (see `dedicate_activation_inputs`)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    identities = dedicate_activation_inputs(model, plan)
    with _quiet_ort_logging():
        quantize_static(
            model,
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(plan.op_types),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(plan.exclude),
            calibrate_method=_calibrate_method(method),
            calibration_cache_path=str(calibration_cache) if calibration_cache else None,
            extra_options={
                "WeightSymmetric": True,
                "MatMulConstBOnly": True,
                "OpTypesToExcludeOutputQuantization": list(QUANTISED_OP_TYPES),
                **extra,
                **_strided(reader, method),
            },
        )
    quantised = onnx.load(str(dst))
    remove_dedicated_inputs(quantised, identities)
    onnx.save(quantised, str(dst))


def quantize_s8s8(
    src: Path,
    dst: Path,
    reader: Any,
    plan: QuantPlan,
    method: str = "minmax",
    calibration_cache: Path | None = None,
) -> None:
    """Symmetric S8S8 Q/DQ, per-channel weights: the TensorRT explicit-quantisation form.

    Q/DQ on the inputs and weights of MatMul/Gemm only, not on their outputs (so what follows, GELU,
    residual adds, LayerNorm, sees float), each MatMul/Gemm with its own Q/DQ on its input (so the
    float ops reading the same tensor see it unrounded, see `dedicate_activation_inputs`), and biases
    stay float (no int32 DequantizeLinear): the placement TensorRT's explicit quantisation fuses best.
    """
    _quantize_static_qdq(
        src, dst, reader, plan, method, calibration_cache,
        symmetric_activations=True,
        extra={"ActivationSymmetric": True, "QuantizeBias": False},
    )  # fmt: skip


def quantize_u8s8(
    src: Path,
    dst: Path,
    reader: Any,
    plan: QuantPlan,
    method: str = "minmax",
    calibration_cache: Path | None = None,
) -> None:
    """Static U8S8 Q/DQ (asymmetric uint8 activations, int8 weights): ONNX Runtime's fast CPU form."""
    _quantize_static_qdq(
        src, dst, reader, plan, method, calibration_cache, symmetric_activations=False, extra={}
    )


def dynamic_exclusions(model: Any, plan: QuantPlan) -> list[str]:
    """`plan.exclude` as ONNX Runtime's dynamic quantiser must be given it: it rewrites every Gemm
    `<name>` as MatMul `<name>_MatMul` (+ Add) before it reads the exclusion list, so an excluded Gemm
    is listed under both names."""
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
    names = list(plan.exclude)
    names += [f"{n}_MatMul" for n in plan.exclude if n in gemms]
    return list(dict.fromkeys(names))


def quantize_dynamic_matmul(src: Path, dst: Path, plan: QuantPlan) -> None:
    """Dynamic INT8 of the weight MatMul/Gemm (one activation scale per tensor, computed per run over
    the whole batch): no calibration."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = dynamic_exclusions(onnx.load(str(src), load_external_data=False), plan)
    with _quiet_ort_logging():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(plan.op_types),
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": True},
        )


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """The quantiser logs a pre-processing hint per call on the root logger at WARNING; not actionable."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def qdq_zero_points(path: str | Path) -> dict[str, np.ndarray]:
    """Every Q/DQ node's zero point (name of the node -> values): for checks and tests."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {
        n.output[0]: numpy_helper.to_array(a.t)
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }
    out = {}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) < 3 or not n.input[2]:
                out[n.name] = np.zeros(1, np.int8)  # absent zero point means 0 (uint8 by the spec)
                continue
            zp = n.input[2]
            out[n.name] = init[zp] if zp in init else consts.get(zp, np.array([-1]))
    return out


def quantised_weights(model: Any) -> set[str]:
    """The float initialisers the quantiser replaced by int8 copies: `<w>_quantized` (Q/DQ and dynamic
    MatMul), `<w>_Transposed[_k]_quantized` (a Gemm the dynamic quantiser rewrote as a MatMul)."""
    import re

    from onnx import TensorProto

    names = set()
    for init in model.graph.initializer:
        if init.name.endswith("_quantized") and init.data_type in (TensorProto.INT8, TensorProto.UINT8):
            names.add(re.sub(r"_Transposed(_\d+)?$", "", init.name.removesuffix("_quantized")))
    return names


def check_kept_float(model: Any, path: Path, plan: QuantPlan) -> None:
    """Every excluded node's constant weight is still float in the quantised graph at `path` (what the
    manifest's kept_float says)."""
    import onnx

    constant = {i.name for i in model.graph.initializer}
    weights = {
        w: n.name for n in model.graph.node if n.name in plan.exclude for w in n.input if w in constant
    }
    hit = sorted(quantised_weights(onnx.load(str(path))) & weights.keys())
    if hit:
        raise QuantizeError(
            f"{path}: the quantiser quantised {len(hit)} weight(s) of nodes kept in float "
            f"(first: {weights[hit[0]]}); this ONNX Runtime names nodes differently from what "
            "vrclip-export expects"
        )


def check_symmetric(path: Path) -> int:
    """The S8S8 contract: Q/DQ present, every zero point an int8 0. Returns the Q/DQ node count."""
    zps = qdq_zero_points(path)
    if not zps:
        raise QuantizeError(f"{path}: the quantiser inserted no Q/DQ nodes; nothing was quantised")
    bad = [k for k, v in zps.items() if v.dtype != np.int8 or np.any(v != 0)]
    if bad:
        raise QuantizeError(
            f"{path}: {len(bad)} Q/DQ nodes have non-zero or non-int8 zero points (first: {bad[0]})"
        )
    return len(zps)


# ------------------------------------------------------------------------------------------ gate
def run_graph(
    path: Path,
    samples: SampleSet,
    manifest: EngineManifest,
    batch: int = 16,
    progress: Progress | None = None,
    done0: int = 0,
    total: int | None = None,
) -> dict[str, np.ndarray]:
    session = ort_session(path)
    names = [o.name for o in manifest.outputs]
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    done = done0
    for feeds in samples.batches(manifest, batch):
        for n, v in zip(names, session.run(names, feeds), strict=True):
            outs[n].append(v)
        done += len(next(iter(feeds.values())))
        if progress:
            progress("gate", done, total)
    return {n: np.concatenate(v) for n, v in outs.items()}


def gate_batch(precision: str) -> int:
    """The batch the gate runs a quantised graph at: 1 where the runtime runs the package one sample
    at a time (int8-cpu, see vrclip.edge.inference.onnxruntime_backend), so the gate scores what runs."""
    from vrclip.edge.inference.onnxruntime_backend import runs_per_sample

    return 1 if runs_per_sample(precision) else 16


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def gate_figures(
    float_out: dict[str, np.ndarray], quant_out: dict[str, np.ndarray], held: SampleSet
) -> dict[str, Any]:
    """The gate's figures: embedding cosine, mAP and localisation error of both models."""
    from vrclip.export.metrics import cosine_distance, evaluate_ranking

    cos = np.sum(_unit(float_out["embedding"]) * _unit(quant_out["embedding"]), axis=1)
    cos = np.where(np.isfinite(cos), cos, -1.0)

    def m_ap(emb: np.ndarray) -> float:
        r = evaluate_ranking(
            cosine_distance(emb, emb), held.identity, held.identity, held.session, held.session
        )
        return float(r.mean_ap)

    def loc(pos: np.ndarray) -> float:
        return float(np.mean(np.linalg.norm(np.asarray(pos, np.float64) - held.position, axis=1)))

    map_f, map_q = m_ap(float_out["embedding"]), m_ap(quant_out["embedding"])
    rel_f = float_out.get("reliability")
    rel_q = quant_out.get("reliability")
    return {
        "samples": len(held),
        "cosine_min": round(float(np.min(cos)), 6),
        "cosine_mean": round(float(np.mean(cos)), 6),
        "map_float": round(map_f, 6),
        "map_quantized": round(map_q, 6),
        "map_drop_points": round(100.0 * (map_f - map_q), 4) if np.isfinite(map_f - map_q) else None,
        "loc_err_m_float": round(loc(float_out["position"]), 5),
        "loc_err_m_quantized": round(loc(quant_out["position"]), 5),
        "reliability_max_abs_diff": (
            round(float(np.max(np.abs(rel_f - rel_q))), 6)
            if rel_f is not None and rel_q is not None
            else None
        ),
    }


def gate_failures(fig: dict[str, Any], gate: GateThresholds) -> list[str]:
    """The figures past their limits, each as 'name value vs limit' (empty = passed)."""
    failures = []
    if not fig["cosine_mean"] >= gate.min_cosine_mean:
        failures.append(f"embedding cosine mean {fig['cosine_mean']:.4f} < {gate.min_cosine_mean:g}")
    drop = fig["map_drop_points"]
    if drop is None:
        failures.append("mAP could not be scored on the held-out samples (no identity seen in two sessions)")
    elif drop > gate.max_map_drop:
        failures.append(
            f"mAP drop {drop:.2f} points ({100 * fig['map_float']:.2f} -> {100 * fig['map_quantized']:.2f}) "
            f"> {gate.max_map_drop:g}"
        )
    loc_inc = fig["loc_err_m_quantized"] - fig["loc_err_m_float"]
    if not loc_inc <= gate.max_loc_increase_m:
        failures.append(
            f"localisation error +{loc_inc:.3f} m ({fig['loc_err_m_float']:.3f} -> "
            f"{fig['loc_err_m_quantized']:.3f}) > {gate.max_loc_increase_m:g} m"
        )
    return failures


# ------------------------------------------------------------------------------------- the command
@dataclass
class QuantizeResult:
    onnx_path: Path
    manifest_path: Path
    manifest: EngineManifest
    figures: dict[str, Any]
    seconds: float
    #: --find-float-blocks: per block, the figures with that block in float and whether the gate passed.
    sensitivity: list[dict[str, Any]] = field(default_factory=list)


def output_path(src: Path, options: QuantizeOptions) -> Path:
    if options.out is not None:
        return Path(options.out)
    stem = src.name.removesuffix(".onnx")
    return src.with_name(f"{stem}.{options.precision}.onnx")


def check_output_path(src: Path, dst: Path) -> None:
    """Refuse an output that would overwrite the float package it is quantised from.

    The manifest goes beside the model as `manifest_path_for(dst)`, which drops the suffix: without
    `.onnx`, `--out pkg/tiny` would write the quantised manifest over `pkg/tiny.json`, the float
    model's own, and leave the float package unusable. So the name must end in .onnx (as for
    `vrclip-export onnx --out`) and neither file may be the float package's.
    """
    if dst.suffix != ".onnx":
        raise QuantizeError(
            f"--out {dst}: the model file must end in .onnx (its manifest <name>.json goes beside it); "
            "name the quantised model e.g. <name>.int8.onnx"
        )
    if dst.resolve() == src.resolve():
        raise QuantizeError(f"--out {dst}: would overwrite the float model it is quantised from")
    if manifest_path_for(dst).resolve() == manifest_path_for(src).resolve():
        raise QuantizeError(
            f"--out {dst}: its manifest {manifest_path_for(dst)} is the float model's own manifest; "
            "give the quantised model another name"
        )


def open_float_model(src: str | Path) -> tuple[Path, EngineManifest]:
    """The float package to quantise: ONNX + its manifest, checked to belong together and to be fp32."""
    src = Path(src)
    if not src.is_file():
        raise QuantizeError(f"{src}: no such ONNX model; export one with `vrclip-export onnx CHECKPOINT`")
    manifest = load_manifest(manifest_path_for(src))
    if manifest.precision != "fp32":
        raise QuantizeError(
            f"{src}: its manifest says precision {manifest.precision!r}; quantise the float (fp32) export"
        )
    if sha256_file(src) != manifest.source_onnx_sha256:
        raise QuantizeError(
            f"{src}: is not the ONNX its manifest {manifest_path_for(src).name} was written for; re-export"
        )
    if manifest.preprocessing.rgb is None or manifest.preprocessing.rf is None:
        raise QuantizeError(f"{src}: the manifest lacks RGB or RF preprocessing; re-export the model")
    return src, manifest


def _quantize_once(
    src: Path,
    dst: Path,
    calib: SampleSet,
    manifest: EngineManifest,
    options: QuantizeOptions,
    plan: QuantPlan,
    cache: Path | None,
    progress: Progress | None,
) -> None:
    import onnx

    reader = FeedReader.of_samples(calib, manifest, options.batch, progress)
    if options.variant == "int8":
        quantize_s8s8(src, dst, reader, plan, options.calibrate_method, cache)
        check_symmetric(dst)
    elif options.cpu_method == "u8s8":
        quantize_u8s8(src, dst, reader, plan, options.calibrate_method, cache)
    else:
        quantize_dynamic_matmul(src, dst, plan)
    check_kept_float(onnx.load(str(src), load_external_data=False), dst, plan)


def quantize_model(
    src: str | Path,
    recordings: Sequence[str | Path],
    options: QuantizeOptions = QuantizeOptions(),
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    find_float_blocks: bool = False,
) -> QuantizeResult:
    """`vrclip-export quantize`: see the module docstring. Writes nothing unless the gate passed."""
    import onnx

    started = time.perf_counter()
    src, manifest = open_float_model(src)
    dst = output_path(src, options)
    check_output_path(src, dst)
    if options.batch < 1:
        raise QuantizeError(f"--batch {options.batch}: must be >= 1")
    plan = plan_nodes(onnx.load(str(src), load_external_data=False), options.float_blocks)
    calib, held = load_samples(recordings, manifest, options, str(src), progress)
    total_gate = 2 * len(held)
    float_out = run_graph(src, held, manifest, progress=progress, total=total_gate)
    precision = options.precision
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(temporary_sibling(dst, ".onnx"))
        cache = stack.enter_context(temporary_sibling(dst, ".calib.json")) if find_float_blocks else None
        if cache is not None:
            cache.unlink()  # the quantiser writes it on first use
        _quantize_once(src, tmp, calib, manifest, options, plan, cache, progress)
        quant_out = run_graph(
            tmp, held, manifest, gate_batch(precision), progress=progress, done0=len(held), total=total_gate
        )
        figures = gate_figures(float_out, quant_out, held)
        failures = gate_failures(figures, options.gate)
        sensitivity: list[dict[str, Any]] = []
        if find_float_blocks:
            sensitivity = _sensitivity(
                src, dst, calib, held, manifest, options, float_out, cache, progress, log
            )
        if failures:
            fixes = [s["block"] for s in sensitivity if s["passed"]]
            hint = (
                f"; keeping block(s) {fixes} in float passes (--float-block)"
                if fixes
                else "; try --find-float-blocks, --calibrate-method percentile, or more calibration samples"
            )
            raise GateError(f"{dst.name} fails the accuracy gate: {'; '.join(failures)}{hint}")
        accuracy = {
            "gate": {**figures, "thresholds": vars(options.gate)},
            "float_onnx_sha256": manifest.source_onnx_sha256,
            "quantization": {
                "variant": options.variant,
                "method": "static S8S8 Q/DQ"
                if options.variant == "int8"
                else ("dynamic INT8 MatMul" if options.cpu_method == "dynamic" else "static U8S8 Q/DQ"),
                "per_channel": options.variant == "int8" or options.cpu_method == "u8s8",
                "calibration_samples": 0
                if options.variant == "cpu" and options.cpu_method == "dynamic"
                else len(calib),
                "calibrate_method": options.calibrate_method,
                "kept_float": list(plan.kept_float),
                "recordings": len(set(calib.session.tolist()) | set(held.session.tolist())),
            },
        }
        if sensitivity:
            accuracy["float_block_sensitivity"] = sensitivity
        out_manifest = manifest.model_copy(
            update={
                "precision": precision,
                "source_onnx_sha256": sha256_file(tmp),
                "accuracy": accuracy,
                "tensorrt": None,
            }
        )
        out_manifest = EngineManifest.model_validate(out_manifest.model_dump())  # model_copy skips checks
        publish(tmp, dst)
    manifest_path = write_manifest(manifest_path_for(dst), out_manifest)
    return QuantizeResult(
        dst, manifest_path, out_manifest, figures, time.perf_counter() - started, sensitivity
    )


def _sensitivity(
    src: Path,
    dst: Path,
    calib: SampleSet,
    held: SampleSet,
    manifest: EngineManifest,
    options: QuantizeOptions,
    float_out: dict[str, np.ndarray],
    cache: Path | None,
    progress: Progress | None,
    log: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    """Quantise once per visual transformer block with that block kept in float; gate each."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    batch = gate_batch(options.precision)
    rows = []
    for block in sorted(_blocks(model)):
        if block in options.float_blocks:
            continue
        plan = plan_nodes(model, (*options.float_blocks, block))
        with temporary_sibling(dst, f".block{block}.onnx") as tmp:
            _quantize_once(src, tmp, calib, manifest, replace(options), plan, cache, None)
            fig = gate_figures(float_out, run_graph(tmp, held, manifest, batch), held)
        passed = not gate_failures(fig, options.gate)
        rows.append(
            {
                "block": block,
                "passed": passed,
                **{k: fig[k] for k in ("cosine_min", "cosine_mean", "map_drop_points")},
            }
        )
        if log:
            verdict = "passes" if passed else "fails"
            log(f"block {block} in float: cosine mean {fig['cosine_mean']:.5f}, gate {verdict}")
    return rows


__all__ = [
    "DEFAULT_CALIBRATION_SAMPLES",
    "DEFAULT_HOLDOUT_SAMPLES",
    "FeedReader",
    "GateError",
    "GateThresholds",
    "QuantPlan",
    "QuantizeError",
    "QuantizeOptions",
    "QuantizeResult",
    "SampleSet",
    "check_sensor",
    "check_symmetric",
    "gate_failures",
    "gate_figures",
    "load_samples",
    "open_float_model",
    "plan_nodes",
    "qdq_zero_points",
    "quantize_dynamic_matmul",
    "quantize_model",
    "quantize_s8s8",
    "quantize_u8s8",
    "visual_blocks",
]
