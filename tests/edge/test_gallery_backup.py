"""Daily gallery copies: made while the service runs, checked before they count, the newest kept,
and a failure told about without touching the service or the copies already there."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.gallery.backup import GalleryBackups, backups, copy_gallery
from vrclip.edge.gallery.store import GalleryStore

from tests.scripts import console_script


def make_gallery(path: Path, names: tuple[str, ...] = ("alice", "bob")) -> None:
    with GalleryStore(path) as store:
        for i, name in enumerate(names):
            store.add_exemplars(name, np.eye(8, dtype=np.float32)[i : i + 2], budget=32)


def test_a_copy_is_a_working_gallery_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    gallery, folder = tmp_path / "gallery.sqlite", tmp_path / "backups"
    assert copy_gallery(gallery, folder, keep=3) is None  # nothing enrolled yet: nothing to copy
    make_gallery(gallery)
    day = 24 * 3600.0
    made = [copy_gallery(gallery, folder, keep=3, now=1.8e9 + k * day) for k in range(5)]
    assert backups(folder) == made[2:]
    assert made[0] is not None and made[0].name == "gallery-20270115T080000Z.sqlite"
    with GalleryStore(made[-1], create=False) as copy:  # type: ignore[arg-type]
        assert [i.name for i in copy.identities()] == ["alice", "bob"]
        np.testing.assert_array_equal(copy.exemplars("bob"), np.eye(8, dtype=np.float32)[1:3])
    assert not list(folder.glob(".*partial"))


def test_only_the_service_s_own_copies_count_and_are_pruned(tmp_path: Path) -> None:
    """Every `gallery-*.sqlite` in the folder used to count as a copy. A file an operator put there
    (the damaged gallery kept aside before restoring) sorted as the newest copy, so the selftest's
    restore hint named it; one sorting before the time stamps was deleted by the pruning."""
    gallery, folder = tmp_path / "gallery.sqlite", tmp_path / "backups"
    make_gallery(gallery)
    folder.mkdir()
    kept_aside = folder / "gallery-damaged.sqlite"
    kept_aside.write_bytes(b"the damaged gallery, kept for a bug report")
    older_name = folder / "gallery-0-before-reenrolment.sqlite"
    shutil.copy(gallery, older_name)
    day = 24 * 3600.0
    made = [copy_gallery(gallery, folder, keep=2, now=1.8e9 + k * day) for k in range(3)]
    assert backups(folder) == made[1:]
    assert kept_aside.exists() and older_name.exists()


def test_a_copy_cut_short_leaves_nothing_behind_after_the_next_copy(tmp_path: Path) -> None:
    """A power cut mid-copy leaves the hidden .partial file (and its journal) under that copy's own
    time stamp; the next day's copy removed only its own, so each cut-short copy, a whole gallery,
    stayed on the card for good."""
    gallery, folder = tmp_path / "gallery.sqlite", tmp_path / "backups"
    make_gallery(gallery)
    folder.mkdir()
    leftovers = [
        folder / ".gallery-20270101T000000Z.sqlite.partial",
        folder / ".gallery-20270101T000000Z.sqlite.partial-journal",
    ]
    for leftover in leftovers:
        shutil.copy(gallery, leftover)
    unrelated = folder / ".keep"
    unrelated.write_text("")
    made = copy_gallery(gallery, folder, keep=3, now=1.8e9)
    assert backups(folder) == [made]
    assert not any(p.exists() for p in leftovers)
    assert unrelated.exists()


def test_a_damaged_gallery_is_not_copied_over_the_good_copies(tmp_path: Path) -> None:
    gallery, folder = tmp_path / "gallery.sqlite", tmp_path / "backups"
    make_gallery(gallery)
    good = copy_gallery(gallery, folder, keep=2, now=1.8e9)
    gallery.write_bytes(b"garbage " * 4096)
    with pytest.raises(sqlite3.DatabaseError, match=r"not a database|integrity"):
        copy_gallery(gallery, folder, keep=2, now=1.9e9)
    assert backups(folder) == [good]
    assert not list(folder.glob(".*partial"))


def test_the_service_copies_at_start_and_then_every_interval(tmp_path: Path) -> None:
    gallery, folder = tmp_path / "gallery.sqlite", tmp_path / "backups"
    make_gallery(gallery)
    warnings: list[str] = []
    running = GalleryBackups(gallery, folder, keep=10, warn=warnings.append, interval_s=1.1).start()
    try:
        deadline = time.monotonic() + 10
        while len(backups(folder)) < 2:  # one at start, one an interval later (names differ by second)
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        running.stop()
    assert warnings == [] and running.stats()["backups"]["made"] >= 2
    # A restarted service with a copy less than an interval old waits instead of copying again.
    later = GalleryBackups(gallery, folder, keep=10, warn=warnings.append, interval_s=3600).start()
    time.sleep(0.5)
    later.stop()
    assert later.made == 0


def test_a_failing_copy_is_warned_about_and_the_thread_goes_on(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery.sqlite"
    make_gallery(gallery)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    warnings: list[str] = []
    running = GalleryBackups(
        gallery, blocked / "backups", keep=3, warn=warnings.append, interval_s=0.2
    ).start()
    time.sleep(0.9)
    running.stop()
    assert len(warnings) >= 2 and "gallery.backup_dir" in warnings[0]
    assert running.failures == len(warnings)


def test_run_copies_the_gallery_it_uses(tmp_path: Path) -> None:
    """`vrclip-edge run` (here on a replay) starts the copies with the config's gallery.backup_dir."""
    from vrclip.edge.record import RecordRequest, record_simulated
    from vrclip.edge.sim.scene import SceneSpec

    config = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180, "fps": 8}, "zed": {"fps": 4}})
    recording = tmp_path / "s.h5"
    record_simulated(config, RecordRequest(recording, 1.0, SceneSpec(people=("a",), seed=5)))
    gallery = tmp_path / "gallery.sqlite"
    engine = Path(__file__).resolve().parents[2] / "models" / "vrclip-tiny.onnx"
    toml = tmp_path / "edge.toml"
    toml.write_text(
        f'[gallery]\npath = "{gallery}"\nbackup_dir = "{tmp_path / "backups"}"\n'
        f'[sinks]\njsonl_path = "{tmp_path / "events.jsonl"}"\n[sinks.http]\nenabled = false\n'
        '[paths]\ncontrol_socket = ""\n'
    )
    done = subprocess.run(
        [str(console_script("vrclip-edge")), "run", "--replay", str(recording), "--engine", str(engine),
         "--config", str(toml), "--no-events-stdout"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    copies = backups(tmp_path / "backups")
    assert len(copies) == 1
    with GalleryStore(copies[0], create=False) as copy:
        assert copy.dim is not None  # the gallery the run made for its engine, copied whole


def test_restoring_as_told_after_a_power_cut_gives_the_copy(tmp_path: Path) -> None:
    """The restore steps (README, selftest's hint) after an unclean stop: the damaged gallery's
    write-ahead log stays beside it, and copied over without deleting it, SQLite replays its pages
    onto the copy, a damaged gallery again. Deleting -wal and -shm first gives the copy as it was."""
    gallery, folder = tmp_path / "gallery.sqlite", tmp_path / "backups"
    make_gallery(gallery)
    copy = copy_gallery(gallery, folder, keep=3)
    assert copy is not None
    rng = np.random.default_rng(0)
    with GalleryStore(gallery) as store:  # a day's enrolment, checkpointed at a clean stop
        for k in range(30):
            store.add_exemplars(f"q{k}", rng.random((8, 8), np.float32), budget=32)
    crash = (
        "import os, numpy as np\n"
        "from vrclip.edge.gallery.store import GalleryStore\n"
        f"s = GalleryStore({str(gallery)!r})\n"
        's._conn.execute("PRAGMA wal_autocheckpoint=0")\n'
        "for k in range(5):\n"
        '    s.add_exemplars(f"p{k}", np.random.default_rng(k).random((8, 8), np.float32), budget=32)\n'
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=60)
    wal, shm = Path(f"{gallery}-wal"), Path(f"{gallery}-shm")
    assert wal.exists()
    wal.unlink()
    shm.unlink(missing_ok=True)
    shutil.copyfile(copy, gallery)
    with GalleryStore(gallery, create=False) as restored:
        assert restored.integrity_check() == "ok"
        assert [i.name for i in restored.identities()] == ["alice", "bob"]
