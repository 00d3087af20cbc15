"""Build a TensorRT engine from an engine package's ONNX and record the build in its manifest.

`<name>.onnx` + `<name>.json` in, `<name>.engine` + an updated `<name>.json` out. The steps, and why:

- The ONNX must be the one the manifest describes (sha256), and its inputs/outputs as TensorRT's
  parser sees them must match the manifest: the runtime trusts the manifest to name and shape its feeds.
- Precision follows what TensorRT 10 recommends and TensorRT 11 requires. INT8 is explicit
  quantisation: a Q/DQ ONNX built as a *strongly typed* network, so TensorRT keeps exactly the
  precisions the graph states (LayerNorm/Softmax/GELU in float, as quantised). FP16 of a float32 ONNX
  uses BuilderFlag.FP16 where it still exists (TensorRT 10); TensorRT 11 removed it, so there the
  ONNX must already be mixed precision (ModelOpt AutoCast) and is built strongly typed.
  EXPLICIT_BATCH is only set on TensorRT < 10, where it still means something (10 deprecated and
  ignores it; 11 removed it). Flags are looked up by name, never by number: TensorRT 11 renumbered
  STRONGLY_TYPED.
- One optimisation profile spans batch 1..max on every input's batch axis (axis 0), tuned for
  `opt_batch`: the runtime batches the people in view, usually a few.
- A timing cache is loaded if present and saved after a build, so rebuilding on the same box takes
  seconds instead of minutes; a cache from another TensorRT version or GPU is set aside with a
  warning, never fatal.
- The new engine is deserialised and checked before anything is written; the engine and the manifest
  are then both written to temporary files, and only once both are on disk renamed into place, the
  engine first. Should the manifest's rename fail, the previous engine is put back; so a failed build
  or a failed write overwrites nothing. (A kill between the two renames leaves the new engine beside
  the old manifest, which the runtime refuses by its sha256 and says how to rebuild.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from vrclip.edge.errors import UserError
from vrclip.edge.inference.base import FoundTensor, io_problems
from vrclip.edge.inference.device import gpu_info
from vrclip.edge.inference.factory import PackagePaths
from vrclip.edge.inference.tensorrt_backend import (
    describe_engine_io,
    engine_max_batch,
    import_tensorrt,
    trt_dtype_name,
    trt_major,
)
from vrclip.edge.manifest import (
    EngineManifest,
    EnginePrecision,
    TensorRTBuild,
    atomic_write_bytes,
    load_manifest,
    manifest_json,
    sha256_file,
    write_temporary,
)

#: Batch the profile is tuned for unless told otherwise: a handful of people in view.
DEFAULT_OPT_BATCH = 4
#: Parser errors shown in full; the rest are counted.
MAX_PARSER_ERRORS = 10


def default_timing_cache() -> Path:
    """Per-user timing cache shared by all models (tactic timings depend on layers, not on the model)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vrclip" / "tensorrt-timing.cache"


@dataclass(frozen=True)
class BuildOptions:
    precision: EnginePrecision = "fp16"
    #: Largest batch the engine accepts (default: the manifest's max_batch).
    max_batch: int | None = None
    #: Batch the kernels are tuned for (default: min(max_batch, 4)).
    opt_batch: int | None = None
    #: Builder workspace limit in MiB (default: TensorRT's, the whole GPU).
    workspace_mb: int | None = None
    #: Timing cache file; None disables it.
    timing_cache: Path | None = field(default_factory=default_timing_cache)
    verbose: bool = False


@dataclass(frozen=True)
class GraphFacts:
    has_qdq: bool
    has_fp16: bool


@dataclass
class BuildResult:
    engine_path: Path
    manifest_path: Path
    manifest: EngineManifest
    seconds: float
    timing_cache: str
    warnings: list[str]


def graph_facts(onnx_path: Path) -> GraphFacts:
    """Whether the ONNX is explicitly quantised (Q/DQ nodes) or already holds float16 tensors."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        raise UserError(f"{onnx_path}: not a readable ONNX model ({e})") from e
    ops = {node.op_type for node in model.graph.node}
    fp16 = onnx.TensorProto.FLOAT16
    typed = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    has_fp16 = any(i.data_type == fp16 for i in model.graph.initializer) or any(
        v.type.tensor_type.elem_type == fp16 for v in typed
    )
    return GraphFacts(has_qdq=bool(ops & {"QuantizeLinear", "DequantizeLinear"}), has_fp16=has_fp16)


def plan_precision(
    trt: ModuleType, precision: str, facts: GraphFacts, onnx_name: str
) -> tuple[list[str], list[str]]:
    """(network creation flag names, builder flag names) for `precision` on this TensorRT."""
    net_flags = trt.NetworkDefinitionCreationFlag
    builder_flags = trt.BuilderFlag
    major = trt_major(trt)
    network: list[str] = []
    builder: list[str] = []
    if major < 10 and hasattr(net_flags, "EXPLICIT_BATCH"):
        network.append("EXPLICIT_BATCH")
    strongly_typed = hasattr(net_flags, "STRONGLY_TYPED")
    if precision == "int8":
        if not facts.has_qdq:
            raise UserError(
                f"{onnx_name} has no QuantizeLinear/DequantizeLinear nodes: --precision int8 builds the "
                "explicitly quantised (S8S8 Q/DQ) ONNX from the INT8 quantisation step, or use "
                "--precision fp16"
            )
        if strongly_typed:
            network.append("STRONGLY_TYPED")
        else:  # TensorRT 8.x: explicit quantisation still needs the INT8 flag
            builder.append("INT8")
    elif facts.has_qdq:
        raise UserError(f"{onnx_name} is explicitly quantised (Q/DQ nodes): build it with --precision int8")
    elif precision == "fp16":
        if facts.has_fp16 and strongly_typed:
            network.append("STRONGLY_TYPED")
        elif hasattr(builder_flags, "FP16"):
            builder.append("FP16")
        else:
            raise UserError(
                f"TensorRT {trt.__version__} removed BuilderFlag.FP16 (weak typing): convert {onnx_name} "
                "to mixed precision first (python -m modelopt.onnx.autocast --onnx_path "
                f"{onnx_name} --low_precision_type fp16 --keep_io_types) and build that model, or build "
                "this one with --precision fp32"
            )
    elif precision != "fp32":
        raise UserError(f"--precision {precision!r}: choose fp32, fp16 or int8")
    return network, builder


def describe_parser_error(error: Any) -> str:
    """One line per IParserError: where (node index, name, operator) and what."""
    try:
        desc = error.desc()
        node = int(error.node())
    except Exception:
        return str(error)
    if node < 0:
        return desc
    name = error.node_name() if hasattr(error, "node_name") else ""
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    where = f"node {node}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
    return f"{where}: {desc}"


def network_io(trt: ModuleType, network: Any) -> tuple[list[FoundTensor], list[FoundTensor]]:
    def one(t: Any) -> FoundTensor:
        return t.name, tuple(None if int(d) < 0 else int(d) for d in t.shape), trt_dtype_name(trt, t.dtype)

    inputs = [one(network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [one(network.get_output(i)) for i in range(network.num_outputs)]
    return inputs, outputs


def attach_timing_cache(config: Any, path: Path | None, warn: Callable[[str], None]) -> str:
    """Give the builder a timing cache (from `path` if usable); say what happened."""
    if path is None:
        return "disabled"
    blob = b""
    state = "new"
    if path.is_file():
        try:
            blob = path.read_bytes()
            state = f"loaded {path}"
        except OSError as e:
            warn(f"timing cache {path} unreadable ({e}); starting a new one")
    cache = None
    try:
        cache = config.create_timing_cache(blob)
    except Exception as e:  # some versions raise instead of returning None
        warn(f"timing cache {path} rejected ({e})")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if blob:
            warn(
                f"timing cache {path} is from another TensorRT version or GPU (or corrupt): "
                "building without it; it will be replaced"
            )
            state = "replaced (was from another TensorRT/GPU)"
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            warn("TensorRT refused a fresh timing cache; building without one")
            return "unavailable"
    return state


def build_engine(
    onnx_path: str | Path,
    options: BuildOptions = BuildOptions(),
    *,
    echo: Callable[[str], None] = print,
) -> BuildResult:
    """Build `<name>.engine` beside `onnx_path` and record the build in `<name>.json` (see module doc)."""
    onnx_path = Path(onnx_path)
    trt = import_tensorrt()
    if onnx_path.suffix != ".onnx":
        raise UserError(f"{onnx_path}: expected the package's .onnx file")
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: no such ONNX model")
    paths = PackagePaths.of(onnx_path)
    manifest = load_manifest(paths.manifest)
    if manifest.precision == "int8-cpu":
        raise UserError(
            f"{onnx_path} is the ONNX Runtime CPU INT8 variant (U8S8/dynamic), which TensorRT does "
            "not build; the S8S8 Q/DQ model instead"
        )
    digest = sha256_file(onnx_path)
    if digest != manifest.source_onnx_sha256:
        raise UserError(
            f"{onnx_path} (sha256 {digest[:12]}…) is not the model {paths.manifest.name} was written for "
            f"({manifest.source_onnx_sha256[:12]}…); re-export the model so both are written together"
        )
    max_batch = options.max_batch or manifest.max_batch
    opt_batch = options.opt_batch or min(max_batch, DEFAULT_OPT_BATCH)
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise UserError(
            f"--max-batch {max_batch} / --opt-batch {opt_batch}: need 1 <= opt-batch <= max-batch"
        )
    if options.workspace_mb is not None and options.workspace_mb < 1:
        raise UserError(f"--workspace-mb {options.workspace_mb}: must be a positive number of MiB")
    network_flags, builder_flags = plan_precision(
        trt, options.precision, graph_facts(onnx_path), onnx_path.name
    )
    gpu = gpu_info()
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        echo(f"warning: {msg}")

    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    if network is None:
        raise UserError(
            f"TensorRT {trt.__version__} refused network flags {network_flags} (see its log above)"
        )
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        more = len(errors) - MAX_PARSER_ERRORS
        shown = "; ".join(errors[:MAX_PARSER_ERRORS]) + (f"; and {more} more" if more > 0 else "")
        raise UserError(
            f"{onnx_path}: TensorRT's ONNX parser failed: {shown or 'no details (see the log above)'}"
        )
    found_in, found_out = network_io(trt, network)
    problems = io_problems("input", manifest.inputs, found_in) + io_problems(
        "output", manifest.outputs, found_out
    )
    if problems:
        raise UserError(
            f"{onnx_path} as TensorRT parses it does not match {paths.manifest.name}: {'; '.join(problems)}"
        )

    config = builder.create_builder_config()
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    for name in builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        extra = [axis for axis, d in enumerate(shape) if d < 0 and axis != 0]
        if extra:
            raise UserError(
                f"{onnx_path}: input {tensor.name!r} {list(shape)} is dynamic on axes {extra} besides "
                "the batch axis; "
                "export it with fixed sizes there"
            )
        rest = shape[1:]
        profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    if config.add_optimization_profile(profile) < 0:
        raise UserError(
            f"TensorRT rejected the optimisation profile for batch 1..{max_batch} (see its log above)"
        )
    cache_state = attach_timing_cache(config, options.timing_cache, warn)

    echo(
        f"building {paths.engine.name}: {options.precision}, batch 1..{max_batch} (tuned for {opt_batch}), "
        f"TensorRT {trt.__version__} on {gpu.name} (sm {gpu.compute_capability}); this can take minutes"
    )
    started = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - started
    if plan is None:
        raise UserError(
            f"TensorRT could not build an engine from {onnx_path} (its log above says why); "
            "if it ran out of memory, try a larger --workspace-mb"
        )
    data = memoryview(plan)
    engine_sha = hashlib.sha256(data).hexdigest()
    _check_plan(trt, logger, plan, manifest, max_batch, paths)

    build = TensorRTBuild(
        version=str(trt.__version__),
        precision=options.precision,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        build_flags=[*network_flags, *builder_flags],
        max_batch=max_batch,
        opt_batch=opt_batch,
        workspace_mb=options.workspace_mb,
        engine_file=paths.engine.name,
        engine_sha256=engine_sha,
        source_onnx_sha256=digest,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3),
    )
    # A verification report belongs to the engine it verified; the new engine has none yet.
    accuracy = {k: v for k, v in manifest.accuracy.items() if k != "tensorrt_verify"}
    updated = EngineManifest.model_validate(
        {**manifest.model_dump(), "tensorrt": build.model_dump(), "accuracy": accuracy}
    )
    publish_package(paths.engine, data, paths.manifest, manifest_json(updated).encode("utf-8"))
    if options.timing_cache is not None and cache_state != "unavailable":
        cache = config.get_timing_cache()
        if cache is not None:
            try:
                atomic_write_bytes(options.timing_cache, memoryview(cache.serialize()))
            except OSError as e:
                warn(f"could not save the timing cache to {options.timing_cache} ({e})")
    return BuildResult(paths.engine, paths.manifest, updated, seconds, cache_state, warnings)


def publish_package(
    engine: Path, engine_data: bytes | memoryview, manifest: Path, manifest_data: bytes
) -> None:
    """Replace `engine` and `manifest` together: on any failure both are as they were (see module doc).

    Raises a UserError naming the files when they cannot be written (a full disk, a read-only folder).
    """
    leftovers: list[Path] = []
    try:
        engine_tmp = write_temporary(engine, engine_data)
        leftovers.append(engine_tmp)
        manifest_tmp = write_temporary(manifest, manifest_data)
        leftovers.append(manifest_tmp)
        previous = _keep_previous(engine)
        if previous is not None:
            leftovers.append(previous)
        os.replace(engine_tmp, engine)
        try:
            os.replace(manifest_tmp, manifest)
        except BaseException as e:
            # Never a new engine beside the old manifest: put the previous engine back (or none).
            try:
                if previous is not None:
                    os.replace(previous, engine)
                else:
                    engine.unlink(missing_ok=True)
            except OSError as undo:
                raise UserError(
                    f"could not write {manifest} ({e}) nor put the previous {engine.name} back ({undo}); "
                    "the runtime refuses the new engine beside the old manifest - build again"
                ) from e
            raise
    except OSError as e:
        raise UserError(
            f"could not write {engine} and {manifest.name} ({e.strerror or e}); both are as they were "
            "before the build - free space or fix the folder's permissions and build again"
        ) from e
    finally:
        for path in leftovers:
            path.unlink(missing_ok=True)


def _keep_previous(path: Path) -> Path | None:
    """A second name for the file at `path` (a hard link, else a copy) to restore it from; None if none."""
    if not path.exists():
        return None
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".previous", dir=path.parent)
    os.close(fd)
    keep = Path(name)
    try:
        keep.unlink()
        try:
            os.link(path, keep)
        except OSError:  # a file system without hard links
            shutil.copy2(path, keep)
    except BaseException:
        keep.unlink(missing_ok=True)
        raise
    return keep


def _check_plan(
    trt: ModuleType, logger: Any, plan: Any, manifest: EngineManifest, max_batch: int, paths: PackagePaths
) -> None:
    """Deserialise the fresh plan and check its I/O and profile, before anything is written."""
    runtime = trt.Runtime(logger)  # must outlive the engine it deserialises
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(
            "TensorRT built an engine it cannot load back (see its log above); nothing was written"
        )
    found_in, found_out = describe_engine_io(trt, engine)
    problems = io_problems("input", manifest.inputs, found_in) + io_problems(
        "output", manifest.outputs, found_out
    )
    if problems:
        raise UserError(f"the built engine does not match {paths.manifest.name}: {'; '.join(problems)}")
    limit = engine_max_batch(engine, [s.name for s in manifest.inputs])
    del engine
    if limit != max_batch:
        raise UserError(f"the built engine accepts batches up to {limit}, not the {max_batch} asked for")
