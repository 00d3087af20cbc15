"""The engine package manifest: `<name>.json` beside `<name>.onnx` and `<name>.engine`.

Export writes it, `vrclip-export build` adds the TensorRT record, and the edge runtime reads it to
configure itself (input names and shapes, crop size, RF window) and to refuse an engine that does not
belong to this box or to this ONNX. It is the one contract between the torch side and the edge box, so:

- it lives in vrclip.edge and imports neither torch nor onnx (the edge box has neither);
- it is strict (`extra='forbid'`): a misspelt key is an error, not a silently ignored setting;
- it carries a schema version; a manifest newer than this code is refused with an upgrade hint
  instead of being half-understood;
- it is written atomically, so a crash mid-write never leaves a truncated manifest beside a good engine.

Shapes mark the batch axis as "batch" (-1 is accepted on input and read as "batch"); it must be axis 0
of every tensor, because the runtime batches (and splits batches larger than the engine's maximum)
along axis 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from vrclip.edge.errors import UserError
from vrclip.edge.rfwindow import RFWindowSpec
from vrclip.edge.textfiles import MAX_MANIFEST_BYTES, read_text_capped

#: Schema version this code writes and the newest it reads. 2 added `open_set` (the model's open-set
#: threshold), which a version-1 reader would reject as an unknown key instead of asking for an upgrade;
#: 3 added `embedding_space` (which model's embeddings the engine computes).
MANIFEST_SCHEMA_VERSION = 3
#: Name of the batch axis in manifest shapes.
BATCH = "batch"

Dtype = Literal["float32", "float16", "int8", "uint8", "int32", "int64", "bool"]
#: Precision of a graph: fp32/fp16 floating point; int8 = symmetric S8S8 Q/DQ (the TensorRT artefact);
#: int8-cpu = the ONNX Runtime CPU variant (U8S8 Q/DQ or dynamic INT8 MatMul), never built into an engine.
Precision = Literal["fp32", "fp16", "int8", "int8-cpu"]
#: Precisions an engine can be built with.
EnginePrecision = Literal["fp32", "fp16", "int8"]

_HEX = "0123456789abcdef"


class ManifestError(UserError):
    """The manifest is missing, unreadable, malformed, or of a schema version this code cannot read."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_sha256(value: str) -> str:
    """`value` as a lower-case sha256 hex digest, or ValueError (upper-case hex is accepted)."""
    v = value.lower()
    if len(v) != 64 or any(c not in _HEX for c in v):
        raise ValueError(f"{value!r} is not a sha256 hex digest (64 hex characters)")
    return v


class TensorSpec(_Strict):
    """One input or output of the graph: name, shape (axis 0 = "batch") and element type."""

    name: str = Field(min_length=1)
    shape: tuple[int | Literal["batch"], ...]
    dtype: Dtype
    description: str = ""

    @field_validator("shape", mode="before")
    @classmethod
    def _normalise_batch(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(BATCH if d == -1 or d == BATCH else d for d in value)
        return value

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, shape: tuple[int | str, ...]) -> tuple[int | str, ...]:
        if not shape or shape[0] != BATCH:
            raise ValueError(
                f'shape {list(shape)}: axis 0 must be the batch axis ("batch" or -1); '
                "export the model with a dynamic batch axis"
            )
        for axis, d in enumerate(shape[1:], start=1):
            if d == BATCH:
                raise ValueError(
                    f"shape {list(shape)}: only axis 0 may be the batch axis (axis {axis} is too)"
                )
            if not isinstance(d, int) or d < 1:
                raise ValueError(f"shape {list(shape)}: axis {axis} = {d!r} must be a positive integer")
        return shape

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (every axis but the batch axis)."""
        return tuple(int(d) for d in self.shape[1:])

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def concrete(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.sample_shape)


class RgbPreprocessing(_Strict):
    """How a person crop becomes the RGB input: uint8 HxWx3 -> float NCHW, x * scale, then (x - mean) / std.

    `normalized_in_model` says the graph applies mean/std itself (VRCLIP does: CLIP's statistics sit in
    the exported graph), so the runtime only scales; mean/std are then recorded for reference.
    """

    input: str = "rgb"
    height: int = Field(256, ge=8)
    width: int = Field(128, ge=8)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    scale: float = Field(1.0 / 255.0, gt=0)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    normalized_in_model: bool = True

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in std):
            raise ValueError(f"std {list(std)}: every value must be positive")
        return std

    def to_input(self, crops: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 crops in `channel_order` -> the model's float32 (B, 3, H, W) input."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"RGB crops of shape {crops.shape}: expected (batch, {self.height}, {self.width}, 3)"
            )
        x = crops.astype(np.float32) * np.float32(self.scale)
        if not self.normalized_in_model:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class RfPreprocessing(_Strict):
    """The RF input: T gated frames of C channels x R range bins, complex as a trailing (re, im) axis.

    `window` carries the full window specification the model was trained with
    (`vrclip.edge.rfwindow.RFWindowSpec.to_dict()`), so the runtime gates echoes exactly as in training.
    """

    input: str = "rf"
    representation: Literal["complex_range_window"] = "complex_range_window"
    frames: int = Field(ge=1)
    channels: int = Field(ge=1)
    range_bins: int = Field(ge=1)
    zero_pad_factor: int = Field(8, ge=1)
    layout: Literal["T,C,R,complex"] = "T,C,R,complex"
    window: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _window_agrees(self) -> RfPreprocessing:
        for key, mine in (
            ("frames", self.frames),
            ("range_bins", self.range_bins),
            ("pad_factor", self.zero_pad_factor),
        ):
            if key in self.window and self.window[key] != mine:
                raise ValueError(f"window.{key} = {self.window[key]!r} disagrees with {mine}")
        if self.window:
            # The runtime builds its RF windows from this; a value it cannot use must fail here,
            # where the error names the manifest, not at the first radar frame.
            RFWindowSpec.from_dict(self.window)
        return self

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.frames, self.channels, self.range_bins, 2)


class Preprocessing(_Strict):
    rgb: RgbPreprocessing | None = None
    rf: RfPreprocessing | None = None


class TensorRTBuild(_Strict):
    """What `vrclip-export build` recorded: an engine runs only on this TensorRT version and GPU class."""

    version: str = Field(min_length=1)
    precision: EnginePrecision
    gpu_name: str
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    build_flags: list[str] = Field(default_factory=list)
    max_batch: int = Field(ge=1)
    opt_batch: int = Field(ge=1)
    workspace_mb: int | None = Field(None, ge=1)
    engine_file: str
    engine_sha256: str
    source_onnx_sha256: str
    built_at: str = ""
    build_seconds: float | None = None

    @field_validator("engine_sha256", "source_onnx_sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        return check_sha256(value)

    @model_validator(mode="after")
    def _batches(self) -> TensorRTBuild:
        if self.opt_batch > self.max_batch:
            raise ValueError(f"opt_batch {self.opt_batch} exceeds max_batch {self.max_batch}")
        return self


class OpenSetThreshold(_Strict):
    """The open-set threshold the model's evaluation suggests (`vrclip-export evaluate`, `open_set`).

    The runtime uses it when `gallery.threshold` is not set: the right threshold moves with the
    model, so it travels with the engine rather than with the site's config.
    """

    threshold: float = Field(ge=-1.0, le=1.0)
    #: At that threshold, on the evaluation: enrolled people named right, strangers reported unknown.
    identity_accuracy: float = Field(ge=0.0, le=1.0)
    unknown_accuracy: float = Field(ge=0.0, le=1.0)
    #: Where it was measured (the evaluation report and its dataset).
    source: str = ""


class EngineManifest(_Strict):
    """Everything the runtime needs to know about one engine package (see module docstring)."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    model_name: str = Field(min_length=1)
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    #: Precision of the ONNX graph this manifest describes (the engine's is in `tensorrt.precision`).
    precision: Precision
    source_onnx_sha256: str
    max_batch: int = Field(8, ge=1)
    tensorrt: TensorRTBuild | None = None
    accuracy: dict[str, Any] = Field(default_factory=dict)
    open_set: OpenSetThreshold | None = None
    #: Which model's embedding space the engine computes: the sha256 of the checkpoint it was exported
    #: from (of the ONNX itself for a model without one). Quantised graphs and TensorRT engines keep
    #: their float model's, since their embeddings match it; a gallery holds one model's embeddings
    #: (`GalleryStore.ensure_embedding_space`). "" in manifests from before schema 3: not checked.
    embedding_space: str = ""
    created_by: str = ""

    @field_validator("source_onnx_sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        return check_sha256(value)

    @field_validator("embedding_space")
    @classmethod
    def _space(cls, value: str) -> str:
        return check_sha256(value) if value else value

    @model_validator(mode="after")
    def _consistent(self) -> EngineManifest:
        names = [t.name for t in (*self.inputs, *self.outputs)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tensor names must be unique across inputs and outputs; repeated: {dupes}")
        by_name = {t.name: t for t in self.inputs}
        rgb, rf = self.preprocessing.rgb, self.preprocessing.rf
        if rgb is not None:
            spec = by_name.get(rgb.input)
            if spec is None:
                raise ValueError(
                    f"preprocessing.rgb.input {rgb.input!r} is not one of the inputs {list(by_name)}"
                )
            if spec.sample_shape != (3, rgb.height, rgb.width):
                raise ValueError(
                    f"input {rgb.input!r} has sample shape {list(spec.sample_shape)} but preprocessing.rgb "
                    f"says [3, {rgb.height}, {rgb.width}]"
                )
        if rf is not None:
            spec = by_name.get(rf.input)
            if spec is None:
                raise ValueError(
                    f"preprocessing.rf.input {rf.input!r} is not one of the inputs {list(by_name)}"
                )
            if spec.sample_shape != rf.sample_shape:
                raise ValueError(
                    f"input {rf.input!r} has sample shape {list(spec.sample_shape)} but preprocessing.rf "
                    f"says {list(rf.sample_shape)} (frames, channels, range_bins, 2)"
                )
        return self

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, "input")

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, "output")

    def engine_precision(self) -> EnginePrecision:
        """The precision to (re)build an engine with: the recorded one, else what the graph implies."""
        if self.tensorrt is not None:
            return self.tensorrt.precision
        return "int8" if self.precision == "int8" else "fp16"

    def rebuild_command(self, onnx_name: str) -> str:
        """The command that rebuilds this package's engine on the box it should run on."""
        batch = self.tensorrt.max_batch if self.tensorrt is not None else self.max_batch
        return f"vrclip-export build {onnx_name} --precision {self.engine_precision()} --max-batch {batch}"


def _find(specs: tuple[TensorSpec, ...], name: str, kind: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"no {kind} named {name!r}; the manifest has {[s.name for s in specs]}")


# ------------------------------------------------------------------------------------------- files
def manifest_path_for(path: str | Path) -> Path:
    """`<name>.json` for `<name>.onnx`, `<name>.engine`, `<name>.json` or the bare `<name>`."""
    p = Path(path)
    if p.suffix in (".onnx", ".engine", ".json", ".plan"):
        p = p.with_suffix("")
    return p.parent / f"{p.name}.json"


def load_manifest(path: str | Path) -> EngineManifest:
    """Read and validate a manifest; every problem names the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(
            f"{path}: no engine manifest here; an engine package is <name>.onnx/.engine plus <name>.json, "
            "written by the export (re-export the model) and updated by `vrclip-export build`"
        )
    try:
        raw = json.loads(read_text_capped(path, MAX_MANIFEST_BYTES))
    except (OSError, ValueError, RecursionError) as e:
        # ValueError: JSONDecodeError and UnicodeDecodeError, and also what json raises on its own
        # for an integer of thousands of digits; RecursionError: nesting too deep to parse.
        raise ManifestError(f"{path}: not a readable JSON manifest ({e})") from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: a manifest is a JSON object, found {type(raw).__name__}")
    version = raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError(f"{path}: schema_version is {version!r}; expected an integer")
    if version > MANIFEST_SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: manifest schema version {version} is newer than this vrclip-edge reads "
            f"(up to {MANIFEST_SCHEMA_VERSION}); upgrade vrclip-edge on this box"
        )
    if version < 1:
        raise ManifestError(f"{path}: schema_version {version} is not a valid version (>= 1)")
    try:
        return EngineManifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()
        )
        raise ManifestError(f"{path}: invalid manifest: {problems}") from e


#: Keys added by a schema version, with the value that means "not given". quantize and build rewrite
#: the manifest they read and keep its schema_version; written with such a key, an older manifest
#: would be refused as unknown by the code its version number promises can read it.
_KEYS_SINCE: dict[str, tuple[int, Any]] = {"open_set": (2, None), "embedding_space": (3, "")}


def manifest_json(manifest: EngineManifest) -> str:
    """The manifest as written: without the keys its schema version predates, where they hold nothing."""
    omit = {
        key
        for key, (since, empty) in _KEYS_SINCE.items()
        if manifest.schema_version < since and getattr(manifest, key) == empty
    }
    return json.dumps(manifest.model_dump(mode="json", exclude=omit), indent=2, sort_keys=False) + "\n"


def write_manifest(path: str | Path, manifest: EngineManifest) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename): readers see old or new, never half."""
    path = Path(path)
    atomic_write_bytes(path, manifest_json(manifest).encode("utf-8"))
    return path


def default_file_mode() -> int:
    """rw for all, minus the process umask: what open() would have created. Files made through
    mkstemp (0600) get it before they are renamed into place, so that what the exporter or the
    labeller writes is readable by the service user or a trainer running as someone else."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_temporary(path: Path, data: bytes | memoryview) -> Path:
    """`data` in a new fsynced file beside `path`, readable as the package's files are; returns its
    path. The caller renames it over `path` (or removes it): a reader never sees half a file."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Replace `path` with `data` in one rename; on any failure the old file is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in bounded chunks (engines and ONNX files run to hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "BATCH",
    "MANIFEST_SCHEMA_VERSION",
    "EngineManifest",
    "ManifestError",
    "OpenSetThreshold",
    "Preprocessing",
    "RfPreprocessing",
    "RgbPreprocessing",
    "TensorRTBuild",
    "TensorSpec",
    "atomic_write_bytes",
    "check_sha256",
    "default_file_mode",
    "load_manifest",
    "manifest_json",
    "manifest_path_for",
    "sha256_file",
    "write_manifest",
    "write_temporary",
]
