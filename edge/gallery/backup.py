"""Daily copies of the gallery, made by the running service.

The gallery holds months of enrolment, and an edge box's storage (an SD card or eMMC on a Jetson)
can be damaged by a power cut. `vrclip-edge run` therefore copies it once a day into
`gallery.backup_dir` and keeps the newest `gallery.backup_keep` copies. Each copy is made with SQLite's
online backup (a consistent snapshot while the service reads and enrols), written under a temporary
name, checked with SQLite's integrity check and only then renamed into place, so a copy that exists
is a good one. To restore: stop the service, delete `gallery.path`-wal and -shm (a power cut leaves the
damaged gallery's write-ahead log there, and SQLite would replay it onto the copy), copy the newest
file over `gallery.path`, start it.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: A day between copies.
BACKUP_INTERVAL_S = 24 * 3600.0
PREFIX = "gallery-"
SUFFIX = ".sqlite"
#: The names `copy_gallery` gives its copies, and the only files `backups` counts: a file an operator
#: keeps in the folder (say the damaged gallery, set aside) is neither pruned nor taken for a copy.
_COPY_NAME = re.compile(re.escape(PREFIX) + r"\d{8}T\d{6}Z" + re.escape(SUFFIX))


def backups(folder: Path) -> list[Path]:
    """The copies in `folder`, oldest first (their names sort by time)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.glob(f"{PREFIX}*{SUFFIX}") if _COPY_NAME.fullmatch(p.name) and p.is_file()
    )


def remove_partial_copies(folder: Path) -> None:
    """Delete what copies cut short left behind (a power cut or kill mid-copy: the hidden .partial
    file and its SQLite journal). Each is a whole gallery's size and, stamped with its own time, no
    later copy would otherwise touch it; only the service makes copies, so none is in progress."""
    for leftover in folder.glob(f".{PREFIX}*{SUFFIX}.partial*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def copy_gallery(gallery: Path, folder: Path, keep: int, now: float | None = None) -> Path | None:
    """Copy `gallery` into `folder` as gallery-<UTC time>.sqlite and keep the newest `keep` copies;
    None when there is no gallery yet. Raises OSError / sqlite3.Error when the copy fails (a damaged
    gallery, a full disk); the copies already there are left as they were."""
    if not gallery.is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = folder / f"{PREFIX}{stamp}{SUFFIX}"
    partial = folder / f".{target.name}.partial"
    remove_partial_copies(folder)
    try:
        source = sqlite3.connect(gallery, timeout=10.0)
        try:
            dest = sqlite3.connect(partial)
            try:
                source.backup(dest)
                verdict = dest.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                dest.close()
        finally:
            source.close()
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"the copy of {gallery} fails SQLite's integrity check: {verdict}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    for old in backups(folder)[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    return target


class GalleryBackups:
    """Copies the gallery at start (unless the newest copy is less than a day old) and then daily,
    from a daemon thread; failures are warned about, never raised into the service."""

    def __init__(
        self,
        gallery: str | Path,
        folder: str | Path,
        keep: int,
        warn: Callable[[str], None],
        interval_s: float = BACKUP_INTERVAL_S,
    ) -> None:
        self.gallery = Path(gallery)
        self.folder = Path(folder)
        self.keep = keep
        self.warn = warn
        self.interval_s = interval_s
        self.made = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-backups", daemon=True)

    def start(self) -> GalleryBackups:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _due_in(self) -> float:
        existing = backups(self.folder)
        if not existing:
            return 0.0
        age = time.time() - existing[-1].stat().st_mtime
        return max(0.0, self.interval_s - age)

    def _run(self) -> None:
        try:
            wait = self._due_in()
        except OSError:
            wait = 0.0
        while not self._stop.wait(wait):
            try:
                if copy_gallery(self.gallery, self.folder, self.keep) is not None:
                    self.made += 1
            except (OSError, sqlite3.Error) as exc:
                self.failures += 1
                self.warn(f"gallery backup into {self.folder} (gallery.backup_dir) failed: {exc}")
            wait = self.interval_s

    def stats(self) -> dict[str, dict[str, int]]:
        """For Health.add_stats_source."""
        return {"backups": {"made": self.made, "failures": self.failures, "kept": len(backups(self.folder))}}


__all__ = ["GalleryBackups", "backups", "copy_gallery", "remove_partial_copies"]
