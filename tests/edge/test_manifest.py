"""The engine-package manifest: strict, versioned, atomically written, and consistent with its inputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.errors import UserError
from vrclip.edge.manifest import (
    MANIFEST_SCHEMA_VERSION,
    EngineManifest,
    ManifestError,
    RgbPreprocessing,
    TensorRTBuild,
    load_manifest,
    manifest_path_for,
    sha256_file,
    write_manifest,
)

SHA = "ab" * 32


def manifest_dict(**overrides: object) -> dict:
    data = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "model_name": "vrclip-vit-b-16",
        "inputs": [
            {"name": "rgb", "shape": ["batch", 3, 256, 128], "dtype": "float32"},
            {"name": "rf", "shape": [-1, 12, 144, 16, 2], "dtype": "float32"},
            {"name": "anchor", "shape": ["batch", 2], "dtype": "float32"},
            {"name": "present", "shape": ["batch", 2], "dtype": "float32"},
        ],
        "outputs": [
            {"name": "embedding", "shape": ["batch", 512], "dtype": "float32"},
            {"name": "position", "shape": ["batch", 2], "dtype": "float32"},
            {"name": "reliability", "shape": ["batch"], "dtype": "float32"},
        ],
        "preprocessing": {
            "rgb": {"height": 256, "width": 128},
            "rf": {"frames": 12, "channels": 144, "range_bins": 16, "zero_pad_factor": 8},
        },
        "precision": "int8",
        "source_onnx_sha256": SHA,
        "max_batch": 8,
    }
    data.update(overrides)
    return data


def write_raw(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_round_trip_keeps_every_field_and_names_the_batch_axis(tmp_path: Path) -> None:
    manifest = EngineManifest.model_validate(manifest_dict(accuracy={"map": 0.93}))
    path = write_manifest(tmp_path / "model.json", manifest)
    assert load_manifest(path) == manifest
    raw = json.loads(path.read_text())
    assert raw["inputs"][1]["shape"] == ["batch", 12, 144, 16, 2]  # -1 is written as "batch"
    assert manifest.input("rf").sample_shape == (12, 144, 16, 2)
    assert manifest.output("reliability").concrete(3) == (3,)


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "m.json", manifest_dict(precison="int8"))
    with pytest.raises(ManifestError, match=r"m\.json.*precison"):
        load_manifest(path)


def test_newer_schema_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "m.json", manifest_dict(schema_version=MANIFEST_SCHEMA_VERSION + 1, new_field=1)
    )
    with pytest.raises(ManifestError, match=r"newer.*upgrade vrclip-edge"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in manifest_dict().items() if k != "schema_version"}), "schema_version"),
        # corrupt or hostile: json raises plain ValueError / RecursionError, not JSONDecodeError
        ('{"schema_version": ' + "9" * 5000 + "}", "not a readable JSON"),
        ('{"schema_version": 2, "accuracy": ' + "[" * 100_000 + "]" * 100_000 + "}", "not a readable JSON"),
    ],
)
def test_unreadable_manifests_are_user_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_missing_manifest_says_what_a_package_is(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nothere\.json.*<name>\.json"):
        load_manifest(tmp_path / "nothere.json")
    assert issubclass(ManifestError, UserError)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([3, "batch", 256, 128], "axis 0 must be the batch axis"),
        (["batch", 3, -1, 128], "only axis 0"),
        (["batch", 3, 0, 128], "positive integer"),
    ],
)
def test_batch_axis_must_be_axis_zero_and_the_rest_fixed(shape: list, message: str) -> None:
    data = manifest_dict()
    data["inputs"][0]["shape"] = shape
    with pytest.raises(ValueError, match=message):
        EngineManifest.model_validate(data)


def test_preprocessing_must_agree_with_the_input_it_feeds() -> None:
    data = manifest_dict()
    data["preprocessing"]["rgb"] = {"height": 224, "width": 224}
    with pytest.raises(ValueError, match=r"'rgb'.*\[3, 224, 224\]"):
        EngineManifest.model_validate(data)
    data = manifest_dict()
    data["preprocessing"]["rf"]["channels"] = 12
    with pytest.raises(ValueError, match=r"'rf'.*frames, channels"):
        EngineManifest.model_validate(data)
    data = manifest_dict()
    data["preprocessing"]["rf"]["input"] = "radar"
    with pytest.raises(ValueError, match="'radar' is not one of the inputs"):
        EngineManifest.model_validate(data)


def test_rf_window_spec_must_match_the_declared_sizes() -> None:
    data = manifest_dict()
    data["preprocessing"]["rf"]["window"] = {"frames": 12, "range_bins": 32, "span_m": 1.6}
    with pytest.raises(ValueError, match=r"window.range_bins"):
        EngineManifest.model_validate(data)
    data["preprocessing"]["rf"]["window"]["range_bins"] = 16
    assert EngineManifest.model_validate(data).preprocessing.rf.window["span_m"] == 1.6


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("background", "mean", "must be session, running or none"),
        ("channels", "abc", "expected a list of numbers"),
        ("span_m", -1, "must be a positive finite length"),
        ("beam_heights_m", [1.0, "x"], "expected a list of numbers"),
        ("range_compensation", "yes", "expected true or false"),
        ("background_alpha", -1.0, "must be in \\(0, 1\\]"),
        ("beam_offsets_m", [0.0, float("nan")], "must be finite offsets"),
        ("centre_height_m", float("inf"), "must be finite"),
        # Sizes from a damaged file: an out-of-memory kill at the first track, not an error.
        ("beam_heights_m", [0.1] * 20_000, "beams = 20000: at most 10000"),
    ],
)
def test_an_rf_window_the_runtime_cannot_build_is_refused_naming_the_manifest(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    data = manifest_dict()
    data["preprocessing"]["rf"]["window"] = {"frames": 12, "range_bins": 16, key: value}
    path = write_raw(tmp_path / "tiny.json", data)
    with pytest.raises(ManifestError, match=message) as e:
        load_manifest(path)
    assert str(path) in str(e.value) and "preprocessing.rf" in str(e.value)


def test_an_rf_window_of_absurd_size_is_refused_by_key() -> None:
    """A checkpoint's window (training preprocessing, `vrclip-export onnx`) is checked as untrusted
    input too; sizes had no upper bound."""
    from vrclip.edge.rfwindow import RFWindowSpec

    for key, value in (("frames", 10**6), ("range_bins", 10**6), ("pad_factor", 10**6)):
        with pytest.raises(ValueError, match=f"RF window {key} = 1000000: at most"):
            RFWindowSpec.from_dict({"frames": 12, "range_bins": 8, key: value})
    # Each size within its bound, all together ~41 GB per track.
    heights = [0.1 * i for i in range(100)]
    with pytest.raises(ValueError, match=r"values per track: at most"):
        RFWindowSpec.from_dict(
            {"frames": 1000, "range_bins": 4096, "beam_heights_m": heights, "beam_offsets_m": [0.0]}
        )


def test_tensor_names_are_unique_and_digests_are_sha256() -> None:
    data = manifest_dict()
    data["outputs"][0]["name"] = "rgb"
    with pytest.raises(ValueError, match=r"repeated.*rgb"):
        EngineManifest.model_validate(data)
    with pytest.raises(ValueError, match="sha256"):
        EngineManifest.model_validate(manifest_dict(source_onnx_sha256="1234"))
    assert (
        EngineManifest.model_validate(manifest_dict(source_onnx_sha256=SHA.upper())).source_onnx_sha256 == SHA
    )


def test_tensorrt_record_is_validated() -> None:
    record = {
        "version": "10.8.0.43",
        "precision": "int8",
        "gpu_name": "NVIDIA GeForce RTX 4090",
        "compute_capability": "8.9",
        "max_batch": 8,
        "opt_batch": 4,
        "engine_file": "model.engine",
        "engine_sha256": SHA,
        "source_onnx_sha256": SHA,
    }
    assert TensorRTBuild.model_validate(record).compute_capability == "8.9"
    with pytest.raises(ValueError, match="opt_batch 9 exceeds max_batch 8"):
        TensorRTBuild.model_validate({**record, "opt_batch": 9})
    with pytest.raises(ValueError, match="compute_capability"):
        TensorRTBuild.model_validate({**record, "compute_capability": "sm_89"})


def test_rebuild_command_uses_the_recorded_build() -> None:
    manifest = EngineManifest.model_validate(manifest_dict(precision="fp32", max_batch=8))
    assert (
        manifest.rebuild_command("model.onnx")
        == "vrclip-export build model.onnx --precision fp16 --max-batch 8"
    )
    int8 = EngineManifest.model_validate(manifest_dict(precision="int8", max_batch=16))
    assert int8.rebuild_command("q.onnx") == "vrclip-export build q.onnx --precision int8 --max-batch 16"


def test_write_is_atomic_old_file_survives_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.json"
    old = EngineManifest.model_validate(manifest_dict(model_name="old"))
    write_manifest(path, old)
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(path, EngineManifest.model_validate(manifest_dict(model_name="new")))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]  # no temp file left behind


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_manifest_path_for_every_member_of_a_package(tmp_path: Path) -> None:
    for name in ("model.onnx", "model.engine", "model.json", "model"):
        assert manifest_path_for(tmp_path / name) == tmp_path / "model.json"
    assert manifest_path_for(tmp_path / "vrclip.int8.onnx") == tmp_path / "vrclip.int8.json"


def test_rgb_preprocessing_builds_the_model_input() -> None:
    crops = np.zeros((2, 16, 8, 3), np.uint8)
    crops[0, :, :, 0] = 255
    crops[1, :, :, 2] = 51
    in_model = RgbPreprocessing(height=16, width=8)
    x = in_model.to_input(crops)
    assert x.shape == (2, 3, 16, 8) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x[0, 0].min() == 1.0 and x[0, 1].max() == 0.0 and np.allclose(x[1, 2], 0.2)
    outside = RgbPreprocessing(
        height=16, width=8, normalized_in_model=False, mean=(0.5, 0.5, 0.5), std=(0.5, 1, 2)
    )
    y = outside.to_input(crops)
    assert np.allclose(y[0, 0], 1.0) and np.allclose(y[0, 1], -0.5) and np.allclose(y[1, 2], (0.2 - 0.5) / 2)
    with pytest.raises(ValueError, match=r"expected \(batch, 16, 8, 3\)"):
        in_model.to_input(np.zeros((2, 8, 16, 3), np.uint8))


def test_written_manifests_are_readable_by_other_users(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import stat

    from vrclip.edge.manifest import atomic_write_bytes

    target = tmp_path / "m.json"
    atomic_write_bytes(target, b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_a_version_1_manifest_still_opens(tmp_path) -> None:
    """Engines exported before `open_set` existed keep working; they simply carry no threshold."""
    data = json.loads((Path(__file__).parents[2] / "models" / "vrclip-tiny.json").read_text())
    data["schema_version"] = 1
    data.pop("open_set", None)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    manifest = load_manifest(path)
    assert manifest.schema_version == 1 and manifest.open_set is None


def test_a_schema_2_manifest_rewritten_stays_readable_by_schema_2_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """quantize and build rewrite the manifest they read, keeping its schema_version. A schema-2
    manifest came back as schema 2 plus `"embedding_space": ""`, a key schema-2 code (strict, an
    edge box not yet upgraded) refuses as unknown, where the version number promised it could read
    the file."""
    data = json.loads((Path(__file__).parents[2] / "models" / "vrclip-tiny.json").read_text())
    data["schema_version"] = 2
    data.pop("embedding_space")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    manifest = load_manifest(path)
    rewritten = json.loads(write_manifest(tmp_path / "again.json", manifest).read_text())
    assert rewritten["schema_version"] == 2
    assert set(rewritten) <= set(data), sorted(set(rewritten) - set(data))
    assert load_manifest(tmp_path / "again.json") == manifest
