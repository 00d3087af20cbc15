"""`vrclip-edge gallery`: list, show, rename, delete, export/import (JSON and npz), and its error lines."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from vrclip.edge.gallery import GalleryError, GalleryStore
from vrclip.edge.gallery.cli import gallery_app
from vrclip.edge.gallery.transfer import export_gallery, import_gallery

DIM = 12
runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "gallery.sqlite"
    rng = np.random.default_rng(5)
    with GalleryStore(path, dim=DIM) as store:
        store.add_exemplars("alice", rng.normal(size=(3, DIM)), budget=8)
        store.add_exemplars("bob", rng.normal(size=(2, DIM)), budget=8)
    return path


def invoke(db: Path, *args: str, input: str | None = None):
    return runner.invoke(gallery_app, ["--db", str(db), *args], input=input)


def test_list_show_rename_delete(db: Path) -> None:
    listed = invoke(db, "list")
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.output and "3 exemplars" in listed.output
    assert "2 identities, 5 exemplars, dim 12" in listed.output
    shown = invoke(db, "show", "alice")
    assert shown.exit_code == 0, shown.output
    assert "exemplars:  3 (3 enrol)" in shown.output and "closest other identity: bob" in shown.output
    assert invoke(db, "rename", "alice", "carol").exit_code == 0
    declined = invoke(db, "delete", "bob", input="n\n")
    assert declined.exit_code != 0
    assert invoke(db, "delete", "bob", "--yes").exit_code == 0
    with GalleryStore(db) as store:
        assert [(i.name, i.exemplars) for i in store.identities()] == [("carol", 3)]


def test_errors_are_user_errors_naming_what_is_wrong(db: Path, tmp_path: Path) -> None:
    missing = invoke(db, "show", "zoe")
    assert isinstance(missing.exception, GalleryError) and "'zoe'" in str(missing.exception)
    no_db = invoke(tmp_path / "none.sqlite", "list")
    assert isinstance(no_db.exception, GalleryError) and "none.sqlite" in str(no_db.exception)
    assert not (tmp_path / "none.sqlite").exists()  # reading never creates a gallery


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_export_import_round_trip(db: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"export{suffix}"
    assert invoke(db, "export", str(out)).exit_code == 0
    target = tmp_path / "other.sqlite"
    result = invoke(target, "import", str(out))
    assert result.exit_code == 0, result.output
    with GalleryStore(db) as a, GalleryStore(target) as b:
        assert [(i.name, i.exemplars) for i in a.identities()] == [
            (i.name, i.exemplars) for i in b.identities()
        ]
        np.testing.assert_array_equal(a.exemplars("alice"), b.exemplars("alice"))
        assert b.dim == DIM and b.exemplar_sources("bob") == ["import", "import"]
    # a second import clashes: nothing changes without --overwrite, everything is replaced with it
    again = invoke(target, "import", str(out))
    assert isinstance(again.exception, GalleryError) and "--overwrite" in str(again.exception)
    assert invoke(target, "import", str(out), "--overwrite").exit_code == 0
    with GalleryStore(target) as b:
        assert b.info("alice").exemplars == 3


def test_import_is_all_or_nothing_and_checks_everything(db: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    with GalleryStore(db) as store:
        export_gallery(store, good)
    doc = json.loads(good.read_text())

    def variant(name: str, change) -> Path:
        bad = json.loads(json.dumps(doc))
        change(bad)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bad))
        return path

    cases = {
        variant("reserved", lambda d: d["identities"][1].update(name="unknown")): "reserved",
        variant("short", lambda d: d["identities"][1]["exemplars"][0].pop()): "12 finite numbers",
        variant("twice", lambda d: d["identities"].append(d["identities"][0])): "listed twice",
        variant(
            "twice-spelt",
            lambda d: d["identities"].extend(
                [{**d["identities"][0], "name": "Jos\u00e9"}, {**d["identities"][0], "name": "Jose\u0301"}]
            ),
        ): "listed twice",
        variant("version", lambda d: d.update(version=9)): "version 9",
        variant("version-true", lambda d: d.update(version=True)): "version True",
        variant("zero", lambda d: d["identities"][0].update(exemplars=[[0.0] * DIM])): "zero norm",
    }
    target = tmp_path / "t.sqlite"
    for path, fragment in cases.items():
        result = invoke(target, "import", str(path))
        assert isinstance(result.exception, GalleryError), (path, result.output)
        assert fragment in str(result.exception) and path.name in str(result.exception)
        assert not target.exists()  # a failed import leaves no empty gallery behind
    wrong_dim = tmp_path / "wrong.sqlite"
    GalleryStore(wrong_dim, dim=DIM + 1).close()
    result = invoke(wrong_dim, "import", str(good))
    assert isinstance(result.exception, GalleryError) and "13-dimensional" in str(result.exception)
    (tmp_path / "text.json").write_text("{not json")
    with GalleryStore(tmp_path / "x.sqlite") as store, pytest.raises(GalleryError, match="not valid JSON"):
        import_gallery(store, tmp_path / "text.json")


def test_json_import_refuses_a_number_too_large_for_a_float(db: Path, tmp_path: Path) -> None:
    """JSON allows an integer of any length; a 400-digit one in an exemplar ended the import with
    Python's OverflowError traceback ("int too large to convert to float") instead of naming it."""
    good = tmp_path / "good.json"
    with GalleryStore(db) as store:
        export_gallery(store, good)
    doc = json.loads(good.read_text())
    doc["identities"][1]["exemplars"][0][3] = 10**400
    bad = tmp_path / "huge.json"
    bad.write_text(json.dumps(doc))
    target = tmp_path / "t.sqlite"
    result = invoke(target, "import", str(bad))
    assert isinstance(result.exception, GalleryError), result.output
    assert str(result.exception).startswith(f"{bad}: identities[1] ('bob')")
    assert "12 finite numbers" in str(result.exception)
    assert not target.exists()


def test_import_refuses_exemplars_whose_norm_overflows(db: Path, tmp_path: Path) -> None:
    """Values near 1e200 are finite, but their squares overflow: the norm came out infinite and the
    exemplar was silently stored as a zero vector (cosine 0 with everyone), and the import succeeded."""
    good = tmp_path / "good.json"
    with GalleryStore(db) as store:
        export_gallery(store, good)
    doc = json.loads(good.read_text())
    doc["identities"][0]["exemplars"][1] = [1e200] * DIM
    bad = tmp_path / "overflow.json"
    bad.write_text(json.dumps(doc))
    target = tmp_path / "t.sqlite"
    result = invoke(target, "import", str(bad))
    assert isinstance(result.exception, GalleryError), result.output
    assert str(result.exception).startswith(f"{bad}: identity 'alice'")
    assert "too large" in str(result.exception)
    assert not target.exists()


def test_npz_import_refuses_bad_arrays(db: Path, tmp_path: Path) -> None:
    good = tmp_path / "g.npz"
    with GalleryStore(db) as store:
        export_gallery(store, good)
    arrays = dict(np.load(good))
    arrays["embeddings"] = arrays["embeddings"].copy()
    arrays["embeddings"][0, 0] = np.nan
    bad = tmp_path / "nan.npz"
    np.savez(bad, **arrays)
    objects = tmp_path / "pickle.npz"
    np.savez(objects, **{**dict(np.load(good)), "names": np.array([{"x": 1}], dtype=object)})
    with GalleryStore(tmp_path / "t.sqlite") as store:
        with pytest.raises(GalleryError, match="NaN"):
            import_gallery(store, bad)
        with pytest.raises(GalleryError, match="not a readable npz"):  # never unpickles
            import_gallery(store, objects)
        with pytest.raises(GalleryError, match=r"use \.json or \.npz"):
            import_gallery(store, tmp_path / "g.csv")
        assert store.identities() == []


MOUNTED = (
    "from vrclip.edge.cli_support import make_app, run\n"
    "from vrclip.edge.gallery.cli import gallery_app\n"
    "app = make_app('vrclip-edge', 'test')\n"
    "app.add_typer(gallery_app, name='gallery')\n"
    "run(app)\n"
)


def test_mounted_command_prints_one_line_errors(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MOUNTED, "gallery", "--db", str(tmp_path / "g.sqlite"), "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "g.sqlite" in result.stderr


def test_npz_bomb_is_refused_before_it_is_decompressed(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small npz of deflated zeros can expand to gigabytes: the arrays' uncompressed size is checked
    against the limit before anything is decompressed (the file size alone says nothing)."""
    from vrclip.edge.gallery import transfer

    good = tmp_path / "g.npz"
    with GalleryStore(db) as store:
        export_gallery(store, good)
    arrays = dict(np.load(good))
    rows = 40_000  # 1.9 MB of float32, ~10 kB deflated
    arrays["embeddings"] = np.ones((rows, DIM), "<f4")
    arrays["owner"] = np.zeros(rows, np.int32)
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, **arrays)
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(transfer, "MAX_IMPORT_ARRAY_BYTES", 1_000_000, raising=False)
    with GalleryStore(tmp_path / "t.sqlite") as store:
        with pytest.raises(GalleryError, match=r"bomb\.npz: its arrays take \d+ bytes uncompressed"):
            import_gallery(store, bomb)
        assert store.identities() == []


def test_npz_header_promising_a_huge_array_is_refused_before_allocating(db: Path, tmp_path: Path) -> None:
    import io

    good = tmp_path / "g.npz"
    with GalleryStore(db) as store:
        export_gallery(store, good)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**15, DIM)}
    )
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(liar, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "embeddings.npy":
                data = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 64
            dst.writestr(info.filename, data)
    with (
        GalleryStore(tmp_path / "t.sqlite") as store,
        pytest.raises(GalleryError, match=r"liar\.npz: member 'embeddings\.npy' declares .* holds only"),
    ):
        import_gallery(store, liar)


def test_damaged_or_odd_import_files_are_gallery_errors_naming_the_file(db: Path, tmp_path: Path) -> None:
    good = tmp_path / "g.npz"
    with GalleryStore(db) as store:
        export_gallery(store, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    bad_crc = tmp_path / "crc.npz"
    with zipfile.ZipFile(good) as archive:
        member = archive.getinfo("embeddings.npy")
    local = member.header_offset  # local header: 30 bytes, then the name and the extra field
    name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
    damaged = bytearray(data)
    damaged[local + 30 + name_len + extra_len + member.compress_size // 2] ^= 0xFF  # inside the deflated data
    bad_crc.write_bytes(bytes(damaged))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with GalleryStore(tmp_path / "t.sqlite") as store:
        for path in (truncated, bad_crc, deep, folder):
            with pytest.raises(GalleryError) as caught:
                import_gallery(store, path)
            assert str(caught.value).startswith(f"{path}: "), caught.value
        assert store.identities() == []


def test_export_to_an_unwritable_path_is_a_gallery_error_and_leaves_nothing(db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder.json"
    folder.mkdir()
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    with GalleryStore(db) as store:
        with pytest.raises(GalleryError, match=r"folder\.json: is a directory"):
            export_gallery(store, folder)
        with pytest.raises(GalleryError, match=r"file\.txt/g\.npz: cannot write the gallery export"):
            export_gallery(store, not_a_dir / "g.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.json", "gallery.sqlite"]
    assert list(folder.iterdir()) == []
    result = invoke(db, "export", str(folder))
    assert isinstance(result.exception, GalleryError) and "folder.json" in str(result.exception)


def test_json_export_is_valid_json_of_every_identity(db: Path, tmp_path: Path) -> None:
    """The JSON export is written one identity at a time; the result is still one valid document."""
    out = tmp_path / "g.json"
    with GalleryStore(db) as store:
        assert export_gallery(store, out) == 2
        alice = store.exemplars("alice")
    doc = json.loads(out.read_text())
    assert (doc["format"], doc["version"], doc["dim"]) == ("vrclip-gallery", 1, DIM)
    assert [p["name"] for p in doc["identities"]] == ["alice", "bob"]
    np.testing.assert_array_equal(np.array(doc["identities"][0]["exemplars"], np.float32), alice)


def test_json_too_large_is_refused_both_ways_with_a_pointer_to_npz(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON is parsed whole into Python floats, so its size is bounded; .npz carries any gallery."""
    from vrclip.edge.gallery import transfer

    big = tmp_path / "big.json"
    with GalleryStore(db) as store:
        export_gallery(store, big)
    size = big.stat().st_size
    monkeypatch.setattr(transfer, "MAX_JSON_BYTES", size - 1)
    with GalleryStore(tmp_path / "t.sqlite") as store:
        with pytest.raises(GalleryError, match=rf"big\.json: {size} bytes of JSON is more than .*\.npz"):
            import_gallery(store, big)
        assert store.identities() == []
    with GalleryStore(db) as store:
        with pytest.raises(
            GalleryError, match=r"again\.json: a gallery of 2 identities and 5 exemplars .*\.npz"
        ):
            export_gallery(store, tmp_path / "again.json")
        assert export_gallery(store, tmp_path / "fine.npz") == 2
    assert not (tmp_path / "again.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")], "no temporary file is left"


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_an_export_carries_its_model_and_is_not_imported_into_another_models_gallery(
    tmp_path: Path, suffix: str
) -> None:
    model_a, model_b = "a" * 64, "b" * 64
    source = tmp_path / "a.sqlite"
    with GalleryStore(source, dim=DIM) as store:
        store.ensure_embedding_space(model_a, "a.onnx")
        store.add_exemplars("alice", np.eye(DIM)[:2], budget=4)
        export_gallery(store, tmp_path / f"a{suffix}")
    with GalleryStore(tmp_path / "fresh.sqlite") as fresh:
        assert import_gallery(fresh, tmp_path / f"a{suffix}") == 1
        assert fresh.embedding_space == model_a  # the import tied the new gallery to that model
    with GalleryStore(tmp_path / "b.sqlite", dim=DIM) as other:
        other.ensure_embedding_space(model_b, "b.onnx")
        other.add_exemplars("bob", np.eye(DIM)[3:5], budget=4)
        with pytest.raises(GalleryError, match="enrolled with model bbbbbbbbbbbb"):
            import_gallery(other, tmp_path / f"a{suffix}")
        assert [i.name for i in other.identities()] == ["bob"]


def test_a_refused_import_does_not_tie_the_gallery_to_the_exports_model(db: Path, tmp_path: Path) -> None:
    """An import is all or nothing: one refused for a name clash tied the gallery to the export's
    model all the same, so the service's own engine was then refused on a gallery nobody imported
    into ("enrolled with model aaaaaaaaaaaa")."""
    source = tmp_path / "a.sqlite"
    with GalleryStore(source, dim=DIM) as store:
        store.ensure_embedding_space("a" * 64, "a.onnx")
        store.add_exemplars("alice", np.eye(DIM)[:2], budget=4)
        export_gallery(store, tmp_path / "a.npz")
    with GalleryStore(db) as store:  # holds alice already, and no model yet
        with pytest.raises(GalleryError, match="already has 'alice'"):
            import_gallery(store, tmp_path / "a.npz")
        assert store.embedding_space is None
        store.ensure_embedding_space("b" * 64, "b.onnx")  # the service's engine still binds it


def test_importing_another_models_export_says_what_to_do_with_the_export(tmp_path: Path) -> None:
    """The refusal told the operator to 'enrol everyone again with this engine', naming the export
    file as the engine: there is no engine in an import, and the export can be used, in a gallery
    of its own model."""
    with GalleryStore(tmp_path / "a.sqlite", dim=DIM) as store:
        store.ensure_embedding_space("a" * 64, "a.onnx")
        store.add_exemplars("alice", np.eye(DIM)[:2], budget=4)
        export_gallery(store, tmp_path / "a.npz")
    other = tmp_path / "b.sqlite"
    with GalleryStore(other, dim=DIM) as store:
        store.ensure_embedding_space("b" * 64, "b.onnx")
        store.add_exemplars("bob", np.eye(DIM)[3:5], budget=4)
    result = invoke(other, "import", str(tmp_path / "a.npz"))
    assert isinstance(result.exception, GalleryError), result.output
    text = str(result.exception)
    assert f"{tmp_path / 'a.npz'} holds embeddings of model aaaaaaaaaaaa" in text
    assert "enrolled with model bbbbbbbbbbbb" in text
    assert f"gallery --db NEW.sqlite import {tmp_path / 'a.npz'}" in text
    assert "engine" not in text.replace("engine of model", "")
    # What it says to do works.
    assert invoke(tmp_path / "NEW.sqlite", "import", str(tmp_path / "a.npz")).exit_code == 0
