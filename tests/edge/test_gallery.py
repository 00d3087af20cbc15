"""The gallery store, matcher and enroller: what the service and an operator rely on."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.errors import UserError
from vrclip.edge.gallery import UNKNOWN, Enroller, GalleryError, GalleryStore, Match, Matcher
from vrclip.edge.gallery.store import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, choose_victim, normalise

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture
def centres() -> np.ndarray:
    """Four mutually far-apart identity centres."""
    return np.eye(DIM)[:4] * 1.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "gallery.sqlite"


def test_exemplars_round_trip_normalised_and_listed(db: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, DIM)) * 7.0
    with GalleryStore(db, dim=DIM) as store:
        results = store.add_exemplars("alice", vectors, budget=8)
        assert all(r.stored for r in results)
        store.add_exemplars("bob", vectors[:1], budget=8)
    with GalleryStore(db) as again:  # a second process/connection sees the committed state
        assert again.dim == DIM and again.schema_version == SCHEMA_VERSION
        assert [(i.name, i.exemplars) for i in again.identities()] == [("alice", 3), ("bob", 1)]
        stored = again.exemplars("alice")
        np.testing.assert_allclose(stored, normalise(vectors), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-6)
        assert again.integrity_check() == "ok"
        assert again._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_dimension_is_fixed_per_gallery(db: Path) -> None:
    with GalleryStore(db, dim=DIM) as store, pytest.raises(GalleryError, match="16-dimensional"):
        store.add_exemplars("alice", np.ones((1, 8)), budget=4)
    with pytest.raises(GalleryError) as err:
        GalleryStore(db, dim=512)
    text = str(err.value)
    assert str(db) in text and "16" in text and "512" in text
    assert isinstance(err.value, UserError)


MODEL_A, MODEL_B = "a" * 64, "b" * 64


def test_a_gallery_holds_one_models_embeddings(db: Path) -> None:
    """Two models' embeddings are unrelated even at the same length: matching across them names the
    wrong people without any error. The first engine that names its model ties the gallery to it."""
    with GalleryStore(db, dim=DIM) as store:
        assert store.embedding_space is None
        store.ensure_embedding_space("", "old.onnx")  # a manifest from before the field: no check
        assert store.embedding_space is None
        store.ensure_embedding_space(MODEL_A, "a.onnx")
        store.add_exemplars("alice", np.eye(DIM)[:2], budget=4)
        store.ensure_embedding_space(MODEL_A, "a.int8.onnx")  # the same model, quantised
        with pytest.raises(GalleryError) as err:
            store.ensure_embedding_space(MODEL_B, "retrained.onnx")
    text = str(err.value)
    assert str(db) in text and "aaaaaaaaaaaa" in text and "retrained.onnx is model bbbbbbbbbbbb" in text
    assert "Enrol everyone again" in text
    with GalleryStore(db) as store:
        assert store.embedding_space == MODEL_A


def test_a_gallery_enrolled_before_it_recorded_its_model_is_tied_with_a_warning(db: Path) -> None:
    """Nothing tells which model enrolled an older gallery: the first engine that names its model is
    taken for it, and the caller is told how many exemplars that covered. An emptied gallery takes a
    new model instead of refusing it."""
    with GalleryStore(db, dim=DIM) as store:
        store.add_exemplars("alice", np.eye(DIM)[:3], budget=4)
        assert store.ensure_embedding_space(MODEL_A, "a.onnx") == 3
        assert store.ensure_embedding_space(MODEL_A, "a.onnx") == 0
        store.delete("alice")
        assert store.ensure_embedding_space(MODEL_B, "retrained.onnx") == 0  # nothing to mismatch
        assert store.embedding_space == MODEL_B


def test_run_and_enrolment_refuse_a_gallery_of_another_model(db: Path) -> None:
    from types import SimpleNamespace

    from vrclip.edge.manifest import load_manifest
    from vrclip.edge.pipeline.enrolment import bind_gallery

    manifest = load_manifest(Path(__file__).resolve().parents[2] / "models" / "vrclip-tiny.json")
    demo = SimpleNamespace(manifest=manifest, source=Path("models/vrclip-tiny.onnx"))
    other = SimpleNamespace(
        manifest=manifest.model_copy(update={"embedding_space": MODEL_B}), source=Path("retrained.onnx")
    )
    with GalleryStore(db) as store:
        store.add_exemplars("alice", np.eye(64)[:2], budget=4)  # enrolled before galleries named a model
        warning = bind_gallery(store, demo)  # type: ignore[arg-type]
        assert warning is not None and "holds 2 exemplars enrolled before" in warning
        assert store.embedding_space == manifest.embedding_space != ""
        assert bind_gallery(store, demo) is None  # type: ignore[arg-type]
        with pytest.raises(GalleryError, match=r"retrained\.onnx is model bbbbbbbbbbbb"):
            bind_gallery(store, other)  # type: ignore[arg-type]


def test_gallery_from_a_newer_schema_is_refused_naming_file_and_versions(db: Path) -> None:
    GalleryStore(db, dim=DIM).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(GalleryError) as err:
        GalleryStore(db)
    text = str(err.value)
    assert str(db) in text and str(SCHEMA_VERSION + 5) in text and f"up to version {SCHEMA_VERSION}" in text


def test_v1_gallery_is_migrated_keeping_its_data(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    MIGRATIONS[0](conn)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute("PRAGMA user_version=1")
    conn.execute(f"INSERT INTO meta VALUES ('dim', '{DIM}')")
    conn.execute("INSERT INTO identities (name, created_ns, updated_ns) VALUES ('alice', 1, 1)")
    blob = np.eye(DIM, dtype="<f4")[3].tobytes()
    conn.execute("INSERT INTO exemplars (identity_id, embedding, added_ns) VALUES (1, ?, 5)", (blob,))
    conn.close()
    with GalleryStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        np.testing.assert_array_equal(store.exemplars("alice"), np.eye(DIM, dtype=np.float32)[3:4])
        assert store.exemplar_sources("alice") == ["enrol"]
        store.add_exemplars("alice", np.eye(DIM)[5], budget=4)  # the v2 column is writable
        assert store.info("alice").exemplars == 2


def test_foreign_files_are_refused_clearly(tmp_path: Path) -> None:
    hdf5_like = tmp_path / "gallery.h5"
    hdf5_like.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4000))
    with pytest.raises(GalleryError, match=r"gallery\.h5 is not a readable gallery database"):
        GalleryStore(hdf5_like)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(GalleryError, match="not a vrclip gallery"):
        GalleryStore(other)
    with pytest.raises(GalleryError, match="no gallery at"):
        GalleryStore(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


@pytest.mark.parametrize("name", ["", " alice", "Unknown", "a\nb", "x" * 65])
def test_bad_identity_names_are_refused(db: Path, name: str) -> None:
    with GalleryStore(db, dim=DIM) as store, pytest.raises(GalleryError):
        store.add_exemplars(name, np.ones(DIM), budget=2)


def test_one_name_typed_two_ways_is_one_identity(db: Path) -> None:
    """ "José" composed (one character) and decomposed ("e" + combining accent) look the same on every
    screen; stored as given they were two identities, and rename/delete of one missed the other."""
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    with GalleryStore(db, dim=DIM) as store:
        store.add_exemplars(decomposed, np.eye(DIM)[:1], budget=4)
        store.add_exemplars(composed, np.eye(DIM)[1:2], budget=4)
        assert [i.name for i in store.identities()] == [composed]
        assert len(store.exemplars(decomposed)) == 2
        store.rename(decomposed, "Jos\u00e9 M")
        assert store.delete("Jose\u0301 M") == 2


def test_a_name_stored_decomposed_by_an_older_version_stays_one_identity(db: Path) -> None:
    """A gallery written before names were normalised may hold "José" decomposed. Enrolling or
    importing that person again (typed either way) made a second "José" beside it, the look-alike
    pair normalising was meant to end; show/delete of the name typed composed did not find it, and an
    enrolment that must be new merged into an existing person typed the other way."""
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    with GalleryStore(db, dim=DIM) as store:
        store.add_exemplars("alice", np.eye(DIM)[:1], budget=4)
        with store._write():  # as an older version stored it
            store._conn.execute("UPDATE identities SET name = ? WHERE name = 'alice'", (decomposed,))
        for typed in (decomposed, composed):
            store.add_exemplars(typed, np.eye(DIM)[1:2] + 0.5 * np.eye(DIM)[2 + len(typed) % 2], budget=4)
        assert [(i.name, i.exemplars) for i in store.identities()] == [(decomposed, 3)]
        assert store.info(composed).exemplars == 3
        with pytest.raises(GalleryError, match="already exists"):
            store.add_identity(composed)
        with pytest.raises(GalleryError, match="already has"):
            store.replace_all([(composed, np.eye(DIM)[3:4])], overwrite=False, source="import")
        store.add_exemplars("bob", np.eye(DIM)[4:5], budget=4)
        with pytest.raises(GalleryError, match="already exists"):
            store.rename("bob", composed)
        store.rename(decomposed, composed)  # an operator may bring the stored form up to date
        assert [i.name for i in store.identities()] == [composed, "bob"]
        store.replace_all([(decomposed, np.eye(DIM)[3:4])], overwrite=True, source="import")
        assert [(i.name, i.exemplars) for i in store.identities()] == [(composed, 1), ("bob", 1)]
    with pytest.raises(GalleryError, match="already enrolled"):
        Enroller(GalleryStore(db), decomposed, must_be_new=True)


def test_rename_and_delete(db: Path, centres: np.ndarray) -> None:
    with GalleryStore(db, dim=DIM) as store:
        store.add_exemplars("alice", centres[0], budget=4)
        store.add_exemplars("bob", centres[1:3], budget=4)
        with pytest.raises(GalleryError, match="already exists"):
            store.rename("alice", "bob")
        store.rename("alice", "carol")
        with pytest.raises(GalleryError, match=r"no identity 'alice'.*known: bob, carol"):
            store.exemplars("alice")
        assert store.delete("bob") == 2
        assert [i.name for i in store.identities()] == ["carol"]
        # the exemplars went with the identity (ON DELETE CASCADE)
        assert store._conn.execute("SELECT count(*) FROM exemplars").fetchone()[0] == 1


# ---- the exemplar budget ---------------------------------------------------------------------------


def test_policy_drops_the_older_of_a_near_duplicate_pair() -> None:
    e = np.eye(DIM)
    existing = np.stack([e[0], unit(e[1] + 0.05 * e[2]), e[3]])
    new = e[1]  # nearly identical to existing[1]
    assert choose_victim(existing, new, np.array([1, 2, 3])) == 1


def test_policy_discards_a_new_embedding_that_adds_no_new_view() -> None:
    e = np.eye(DIM)
    existing = np.stack([e[0], e[1]])
    new = unit(e[0] + e[1])  # halfway between both: the most redundant member of the pool
    assert choose_victim(existing, new, np.array([1, 2])) == -1


def test_budget_keeps_diverse_views(db: Path) -> None:
    e = np.eye(DIM)
    with GalleryStore(db, dim=DIM) as store:
        store.add_exemplars("alice", e[:3], budget=3)
        dup = unit(e[0] + 0.02 * e[5])
        result = store.add_exemplars("alice", dup, budget=3)[0]
        assert result.stored and result.replaced == 1 and result.exemplars == 3
        kept = store.exemplars("alice")
        assert kept.shape == (3, DIM)
        # e[1], e[2] survive; the fresher near-duplicate of e[0] replaced e[0]
        assert np.isclose(kept @ e[1], 1).any() and np.isclose(kept @ e[2], 1).any()
        assert np.isclose(kept @ dup, 1, atol=1e-6).any() and not np.isclose(kept @ e[0], 1).any()
        # lowering the budget trims down to it
        store.add_exemplars("alice", e[7], budget=2)
        assert store.info("alice").exemplars == 2


# ---- matching --------------------------------------------------------------------------------------


def test_open_set_match_uses_the_best_exemplar(db: Path) -> None:
    e = np.eye(DIM)
    with GalleryStore(db, dim=DIM) as store:
        store.add_exemplars("alice", np.stack([e[0], e[1]]), budget=8)  # two very different views
        store.add_exemplars("bob", np.stack([e[2]]), budget=8)
    matcher = Matcher(GalleryStore(db), threshold=0.7)
    view_two = unit(e[1] + 0.1 * e[9])
    match = matcher.match(view_two)
    # max over exemplars: the back view alone decides (a mean over exemplars would give ~0.5)
    assert match.identity == "alice" and match.score > 0.99
    stranger = unit(e[2] + e[4] + e[5])  # cosine 0.577 to bob: below the threshold
    unknown = matcher.match(stranger)
    assert unknown.identity == UNKNOWN and unknown.best == "bob" and 0.5 < unknown.score < 0.7
    assert not unknown.known and match.known
    batch = matcher.match_batch(np.stack([view_two, stranger, e[2]]))
    assert [m.identity for m in batch] == ["alice", UNKNOWN, "bob"]
    with pytest.raises(GalleryError):
        matcher.match(np.ones(8))


def test_empty_gallery_matches_nobody(db: Path) -> None:
    matcher = Matcher(GalleryStore(db, dim=DIM), threshold=0.5)
    assert matcher.match(np.ones(DIM)) == Match(UNKNOWN, -1.0, None)


def test_matcher_reloads_only_when_the_database_changed(db: Path) -> None:
    e = np.eye(DIM)
    writer = GalleryStore(db, dim=DIM)
    writer.add_exemplars("alice", e[0], budget=4)
    matcher = Matcher(GalleryStore(db), threshold=0.5)
    loads = matcher.reloads
    for _ in range(20):
        assert matcher.match(e[0]).identity == "alice"
    assert matcher.reloads == loads  # no change, no reload
    writer.rename("alice", "alicia")  # another connection commits
    assert matcher.match(e[0]).identity == "alicia"
    assert matcher.reloads == loads + 1
    writer.add_exemplars("bob", e[1], budget=4)
    assert matcher.match(e[1]).identity == "bob"
    writer.delete("bob")
    assert matcher.match(e[1]).identity == UNKNOWN
    writer.close()


def test_matcher_sees_writes_through_its_own_connection(db: Path) -> None:
    store = GalleryStore(db, dim=DIM)
    matcher = Matcher(store, threshold=0.5)
    store.add_exemplars("alice", np.eye(DIM)[0], budget=4)  # data_version alone would miss this
    assert matcher.match(np.eye(DIM)[0]).identity == "alice"


# ---- concurrency -----------------------------------------------------------------------------------


def test_reader_is_not_blocked_by_an_open_write_transaction(db: Path) -> None:
    e = np.eye(DIM)
    writer = GalleryStore(db, dim=DIM)
    writer.add_exemplars("alice", e[0], budget=4)
    reader = GalleryStore(db)
    matcher = Matcher(GalleryStore(db), threshold=0.5)
    writer._conn.execute("BEGIN IMMEDIATE")
    writer._conn.execute("DELETE FROM identities")
    # uncommitted: readers keep seeing the last committed state, at once (WAL, no busy wait)
    assert [i.name for i in reader.identities()] == ["alice"]
    assert matcher.match(e[0]).identity == "alice"
    writer._conn.execute("ROLLBACK")
    writer.add_exemplars("bob", e[1], budget=4)
    assert [i.name for i in reader.identities()] == ["alice", "bob"]
    assert matcher.match(e[1]).identity == "bob"


def test_reads_while_another_thread_writes(db: Path) -> None:
    GalleryStore(db, dim=DIM).close()
    total = 60
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with GalleryStore(db) as store:
                rng = np.random.default_rng(1)
                for _ in range(total):
                    store.add_exemplars("alice", rng.normal(size=DIM), budget=1000)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    seen = []
    with GalleryStore(db) as reader:
        matcher = Matcher(GalleryStore(db), threshold=0.0)
        thread.start()
        while thread.is_alive():
            infos = reader.identities()
            seen.append(infos[0].exemplars if infos else 0)
            matcher.match(np.ones(DIM))
        thread.join()
        seen.append(reader.info("alice").exemplars)
    assert not errors, errors
    assert seen == sorted(seen) and seen[-1] == total  # never a torn or backwards view
    matcher.refresh()
    assert matcher.exemplar_count == total


# ---- enrolment -------------------------------------------------------------------------------------


def test_enroller_accepts_only_frames_with_exactly_one_person(db: Path) -> None:
    rng = np.random.default_rng(3)
    store = GalleryStore(db, dim=DIM)
    enroller = Enroller(store, "alice", budget=10)
    assert enroller.offer(rng.normal(size=DIM), people=0).reason == "no person"
    two = enroller.offer(rng.normal(size=DIM), people=2)
    assert not two.accepted and two.reason == "2 people"
    assert enroller.offer(rng.normal(size=DIM), people=1).reason == "stored"
    assert (enroller.offered, enroller.rejected, enroller.stored) == (3, 2, 1)
    assert store.info("alice").exemplars == 1
    with pytest.raises(GalleryError, match="already enrolled"):
        Enroller(store, "alice", must_be_new=True)


def test_enroller_batches_commits_and_flushes_on_exit(db: Path) -> None:
    rng = np.random.default_rng(4)
    store = GalleryStore(db, dim=DIM)
    other = GalleryStore(db)
    with Enroller(store, "bob", budget=10, commit_every=3) as enroller:
        for _ in range(4):
            enroller.offer(rng.normal(size=DIM), people=1)
        assert other.info("bob").exemplars == 3 and enroller.pending == 1
    assert other.info("bob").exemplars == 4 and enroller.commits == 2


CHILD = r"""
import sys
import numpy as np
from vrclip.edge.gallery import Enroller, GalleryStore
store = GalleryStore(sys.argv[1], dim=16)
vectors = np.random.default_rng(7).normal(size=(5000, 16))
enroller = Enroller(store, "alice", budget=100000)
for vector in vectors:
    enroller.offer(vector, people=1)
    print(f"committed {enroller.stored}", flush=True)
"""


def test_sigkill_during_enrolment_loses_nothing_committed(db: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    reported = 0
    try:
        for line in child.stdout:
            reported = int(line.split()[1])
            if reported >= 25:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL and reported >= 25
    vectors = normalise(np.random.default_rng(7).normal(size=(5000, 16)))
    with GalleryStore(db) as store:
        assert store.integrity_check() == "ok"
        kept = store.exemplars("alice")
        # every commit the child reported is there, bit for bit, in order (maybe a few more)
        assert len(kept) >= reported
        np.testing.assert_array_equal(kept, vectors[: len(kept)])
        store.add_exemplars("alice", vectors[len(kept)], budget=100000)  # enrolment can resume
        assert store.info("alice").exemplars == len(kept) + 1


def test_a_damaged_gallery_is_named_with_what_to_do_never_a_raw_sqlite_error(tmp_path: Path) -> None:
    """A power cut on an SD card damages a page: every read must end in a GalleryError naming the
    file and the restore, not SQLite's DatabaseError (a traceback, and a service restart loop)."""
    import os
    import sqlite3

    from vrclip.edge.gallery.store import GalleryError

    good = tmp_path / "g.sqlite"
    with GalleryStore(good) as store:
        for i in range(20):
            store.add_exemplars(
                f"p{i}", np.random.default_rng(i).standard_normal((8, 64)).astype(np.float32), budget=32
            )
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    named = 0
    for page in range(len(data) // 4096):
        damaged = tmp_path / f"damaged-{page}.sqlite"
        broken = bytearray(data)
        broken[page * 4096 + 100 : page * 4096 + 400] = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
        damaged.write_bytes(bytes(broken))
        try:
            with GalleryStore(damaged, create=False) as store:
                store.identities()
                store.snapshot()
                store.integrity_check()
        except GalleryError as exc:
            named += 1
            assert str(damaged) in str(exc)
        except sqlite3.DatabaseError as exc:  # pragma: no cover - what this test forbids
            raise AssertionError(f"page {page}: raw {exc!r}") from None
        os.unlink(damaged)
    assert named >= 5


def test_the_matcher_keeps_its_last_gallery_when_the_file_becomes_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vrclip.edge.gallery.matcher import Matcher
    from vrclip.edge.gallery.store import GalleryError

    with GalleryStore(tmp_path / "g.sqlite") as store:
        store.add_exemplars("alice", np.eye(8, dtype=np.float32)[:2], budget=32)
    errors: list[str] = []
    matcher = Matcher(GalleryStore(tmp_path / "g.sqlite"), 0.5, on_error=errors.append)

    def unreadable() -> tuple[int, int]:
        raise GalleryError(f"{tmp_path / 'g.sqlite'} is not a readable gallery database (disk I/O error)")

    monkeypatch.setattr(matcher.store, "change_token", unreadable)
    for _ in range(3):
        assert matcher.match(np.eye(8, dtype=np.float32)[0]).identity == "alice"
    assert len(errors) == 1 and "as it was last read" in errors[0]
    assert matcher.read_failures == 3
    matcher.store.close()
