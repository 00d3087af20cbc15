"""SQLite store of identities and their exemplar embeddings.

Why SQLite in WAL mode: the service enrols and matches while an operator lists, renames or exports
from another process; WAL lets readers read a consistent snapshot while one writer commits, and every
commit is atomic and durable, so a crash (or SIGKILL, or power loss with `synchronous=FULL`) never
leaves half an exemplar behind.

Layout (schema version in `PRAGMA user_version`, file identity in `PRAGMA application_id`):
- `meta(key, value)`: `dim` (the embedding dimension, fixed for the life of the gallery), `created_ns`,
  `embedding_space` (the model whose embeddings it holds, from the engine manifest; see
  `ensure_embedding_space`).
- `identities(id, name UNIQUE, created_ns, updated_ns)`.
- `exemplars(id, identity_id -> identities ON DELETE CASCADE, embedding BLOB float32 LE unit-norm,
  added_ns, source)`.

Exemplar budget policy (`choose_victim`): each identity keeps at most `budget` exemplars. When a new
embedding arrives at a full identity, the candidate set is the existing exemplars plus the new one;
the member whose nearest neighbour in that set is closest (highest max-cosine, i.e. the most
redundant) is dropped; ties go to the higher mean cosine to the others, then to the older exemplar.
If the new embedding is itself the most redundant, it is not stored. The effect: the budget is spent
on views that differ (front/back, lit/dark, coat on/off), and of two near-duplicates the newer one
survives, so the gallery follows slow appearance drift instead of freezing at enrolment day.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from vrclip.edge.errors import UserError

#: The identity reported when no enrolled identity reaches the threshold; reserved, cannot be enrolled.
UNKNOWN = "unknown"
#: 'VRGL' in the SQLite header: tells a gallery apart from any other SQLite file.
APPLICATION_ID = 0x5652474C
#: Longest identity name accepted (names end up in MQTT payloads and console lines).
MAX_NAME_LENGTH = 64
#: Largest embedding dimension accepted (ViT-B/16 gives 512; this only catches garbage).
MAX_DIM = 65_536
#: How long a writer waits for another writer's transaction before giving up.
BUSY_TIMEOUT_S = 10.0


class GalleryError(UserError):
    """A gallery file is missing, foreign, from a newer version, or used with the wrong embedding size."""


class GalleryDamaged(GalleryError):
    """SQLite cannot read the gallery file: `reason` is SQLite's own word for it."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    exemplars: int
    created_ns: int
    updated_ns: int


@dataclass(frozen=True)
class AddResult:
    """What `add_exemplar` did: stored the embedding (possibly replacing another) or discarded it."""

    stored: bool
    replaced: int
    exemplars: int


@dataclass(frozen=True)
class GallerySnapshot:
    """A consistent view for matching: exemplars grouped by identity (rows of one identity contiguous)."""

    names: tuple[str, ...]
    #: (M, dim) float32 unit-norm exemplars.
    matrix: np.ndarray
    #: (len(names),) index of each identity's first row in `matrix` (for np.maximum.reduceat).
    starts: np.ndarray
    dim: int | None


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE identities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
        "created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE exemplars (id INTEGER PRIMARY KEY, "
        "identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE, "
        "embedding BLOB NOT NULL, added_ns INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO meta VALUES ('created_ns', ?)", (str(time.time_ns()),))


def _v2_source_and_index(conn: sqlite3.Connection) -> None:
    # v2: remember where an exemplar came from (enrolment on site or an imported gallery), and index
    # exemplars by identity (per-identity budget checks scanned the whole table in v1).
    conn.execute("ALTER TABLE exemplars ADD COLUMN source TEXT NOT NULL DEFAULT 'enrol'")
    conn.execute("CREATE INDEX exemplars_by_identity ON exemplars(identity_id)")


#: MIGRATIONS[i] takes a database from schema version i to i + 1. Append only; never edit a shipped step.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_v1, _v2_source_and_index)
SCHEMA_VERSION = len(MIGRATIONS)


def validate_name(name: str) -> str:
    """`name` in the form the gallery stores it (Unicode NFC) if it can be an identity name, else
    raise GalleryError saying why.

    NFC because the same name can arrive as different code points: "José" typed on one keyboard
    ends in one character, pasted from elsewhere in "e" plus a combining accent. Stored as given,
    they were two people who look alike on every screen."""
    if not isinstance(name, str) or not name:
        raise GalleryError("identity name must not be empty")
    name = unicodedata.normalize("NFC", name)
    if name != name.strip():
        raise GalleryError(f"identity name {name!r} has leading or trailing whitespace")
    if len(name) > MAX_NAME_LENGTH:
        raise GalleryError(
            f"identity name {name[:20]!r}... is {len(name)} characters; at most {MAX_NAME_LENGTH}"
        )
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise GalleryError(f"identity name {name!r} contains control characters")
    if name.casefold() == UNKNOWN:
        raise GalleryError(f"identity name {name!r} is reserved for unmatched tracks; choose another")
    return name


def model_mismatch(gallery: Path | str, held: str, engine: str, space: str) -> str:
    """What to say when a gallery enrolled with one model meets an engine of another."""
    return (
        f"gallery {gallery} was enrolled with model {held[:12]}, but {engine} is model {space[:12]}: "
        "embeddings of different models cannot be matched. Enrol everyone again with this engine into "
        "a new gallery file (set gallery.path to it, or move this one aside), or go back to the engine "
        "this gallery was enrolled with"
    )


def import_mismatch(gallery: Path | str, held: str, export: str, space: str) -> str:
    """What to say when an export of one model's gallery is imported into another model's gallery:
    the export is good, in a gallery of its own model (there is no engine to change here)."""
    return (
        f"{export} holds embeddings of model {space[:12]}, but gallery {gallery} was enrolled with model "
        f"{held[:12]}: embeddings of different models cannot be matched. Import it into a new gallery "
        f"file (`vrclip-edge gallery --db NEW.sqlite import {export}`) for an engine of model {space[:12]}"
    )


def normalise(embeddings: np.ndarray, dim: int | None = None) -> np.ndarray:
    """(N, D) or (D,) -> (N, D) float32 unit rows; rejects non-finite, zero or wrongly-sized vectors."""
    arr = np.asarray(embeddings, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"embeddings must be (N, D) or (D,), got shape {np.shape(embeddings)}")
    if dim is not None and arr.shape[1] != dim:
        raise GalleryError(
            f"embedding has {arr.shape[1]} dimensions, the gallery stores {dim}-dimensional ones"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("embedding contains NaN or infinity")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)):
        # Finite values near 1e200 square to infinity: dividing by that norm would store a zero vector.
        raise ValueError("embedding values are too large (their norm overflows a float)")
    if np.any(norms < 1e-12):
        raise ValueError("embedding has zero norm")
    return (arr / norms).astype(np.float32)


def choose_victim(existing: np.ndarray, new: np.ndarray, added_ns: np.ndarray) -> int:
    """Budget policy (see module docstring): index into `existing` to drop, or -1 to drop `new`.

    `existing` (n, D) and `new` (D,) are unit vectors; `added_ns` (n,) orders the existing ones by age.
    """
    pool = np.vstack([existing, new[None, :]]).astype(np.float64)
    sims = pool @ pool.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.max(axis=1)
    np.fill_diagonal(sims, 0.0)
    mean = sims.sum(axis=1) / max(len(pool) - 1, 1)
    # The new one is the youngest; older exemplars lose ties (lexsort: last key is primary).
    age_rank = np.append(np.asarray(added_ns, dtype=np.float64), np.inf)
    order = np.lexsort((age_rank, -mean, -nearest))
    victim = int(order[0])
    return -1 if victim == len(existing) else victim


_INSERT_EXEMPLAR = "INSERT INTO exemplars (identity_id, embedding, added_ns, source) VALUES (?, ?, ?, ?)"


def _to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class GalleryStore:
    """One connection to a gallery file. Use one store per thread; open as many as needed across processes."""

    def __init__(self, path: str | Path, *, dim: int | None = None, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise GalleryError(
                    f"no gallery at {self.path}: enrol someone first, or pass --db / set gallery.path"
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GalleryError(f"cannot create the folder of gallery {self.path}: {exc}") from None
        elif self.path.is_dir():
            raise GalleryError(f"gallery path {self.path} is a folder; give a file path")
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot open gallery {self.path}: {exc}") from None
        self._local_writes = 0
        try:
            self._check_header()
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: each enrolment commit survives power loss too; commits are rare, so the fsync is cheap.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self._dim = self._read_dim()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if not (os.access(self.path, os.R_OK | os.W_OK) and os.access(self.path.parent, os.W_OK)):
                raise GalleryError(
                    f"cannot open gallery {self.path}: {exc}; WAL mode needs write access to the file and "
                    "its folder even to read: run as the service user, e.g. `sudo -u vrclip vrclip-edge "
                    "gallery ...`"
                ) from None
            raise self._damaged(exc) from None
        except BaseException:
            self._conn.close()
            raise
        if dim is not None:
            self.ensure_dim(dim)

    # ---- opening, versions, migrations -------------------------------------------------------------

    def _check_header(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == 0 and version == 0:
            tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise GalleryError(f"{self.path} is an SQLite database but not a vrclip gallery")
            return
        if app_id != APPLICATION_ID:
            raise GalleryError(f"{self.path} is an SQLite database but not a vrclip gallery")
        if version > SCHEMA_VERSION:
            raise GalleryError(
                f"{self.path} has gallery schema version {version}, but this vrclip-edge reads up to "
                f"version {SCHEMA_VERSION}: upgrade vrclip-edge, or export the gallery with the newer "
                "version and import it here"
            )

    def _migrate(self) -> None:
        if self._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._write():
            # Re-read inside the write lock: another process may have migrated in the meantime.
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self._check_header()
            for step in MIGRATIONS[version:]:
                step(self._conn)
            self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _read_dim(self) -> int | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        if row is None:
            return None
        try:
            dim = int(row[0])
        except ValueError:
            raise GalleryError(
                f"{self.path}: stored embedding dimension {row[0]!r} is not a number"
            ) from None
        if not 0 < dim <= MAX_DIM:
            raise GalleryError(f"{self.path}: stored embedding dimension {dim} is out of range")
        return dim

    @property
    def dim(self) -> int | None:
        """The embedding dimension of this gallery, or None while nothing fixed it yet."""
        return self._dim

    def ensure_dim(self, dim: int) -> None:
        """Fix the gallery's dimension to `dim`, or raise if it already holds another."""
        if not 0 < int(dim) <= MAX_DIM:
            raise GalleryError(f"embedding dimension {dim} is out of range (1..{MAX_DIM})")
        if self._dim is None:
            with self._write():
                self._dim = self._read_dim()
                if self._dim is None:
                    self._conn.execute("INSERT INTO meta VALUES ('dim', ?)", (str(int(dim)),))
                    self._dim = int(dim)
        if self._dim != int(dim):
            raise GalleryError(
                f"gallery {self.path} stores {self._dim}-dimensional embeddings, but {int(dim)}-dimensional "
                "ones were given (an engine with another embedding size?): re-enrol with this engine "
                "into a new gallery file (gallery.path / --db)"
            )

    @property
    def embedding_space(self) -> str | None:
        """Which model's embeddings this gallery holds (the engine manifest's `embedding_space`), or
        None while no engine that names its model has used it."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'embedding_space'").fetchone()
        return str(row[0]) if row is not None else None

    def ensure_embedding_space(self, space: str, engine: str) -> int:
        """Tie the gallery to the model `space` names, or raise if it holds another model's.

        Embeddings of two models live in unrelated spaces even at the same length: matching one
        against the other names the wrong people, or no one, without any error. So the first engine
        that names its model (manifest `embedding_space`) ties the gallery to it, and another model's
        engine is refused. `space` "" (a manifest from before the field) checks nothing.

        Returns how many exemplars the gallery held when this call tied it: exemplars enrolled before
        galleries recorded their model, which the caller should warn about (this engine's model is
        taken for theirs). A gallery holding no exemplar (emptied with `gallery delete`) is tied
        again to the new model instead of refusing it.
        """
        if not space:
            return 0
        try:
            with self._write():
                return self._tie_embedding_space(space, engine, model_mismatch)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None

    def _tie_embedding_space(
        self, space: str, origin: str, mismatch: Callable[[Path, str, str, str], str]
    ) -> int:
        """Inside a write transaction: tie the gallery to `space`, or raise if it holds another
        model's (`mismatch` says so: of an engine, or of an export). Part of the caller's
        transaction, so that a write refused later (an import's name clash) leaves no tie behind.
        Returns the exemplars held by a gallery tied here for the first time (see
        ensure_embedding_space)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'embedding_space'").fetchone()
        held = int(self._conn.execute("SELECT count(*) FROM exemplars").fetchone()[0])
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('embedding_space', ?)", (space,))
            return held
        if str(row[0]) != space:
            if held:
                raise GalleryError(mismatch(self.path, str(row[0]), origin, space))
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'embedding_space'", (space,))
        return 0

    # ---- transactions --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlocks)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise GalleryError(f"gallery {self.path} is busy ({exc}); another writer holds it") from None
        try:
            yield self._conn
        except BaseException:
            # SQLite rolls back by itself on some errors (SQLITE_FULL, SQLITE_IOERR): a second ROLLBACK
            # would fail and hide the real reason ("cannot rollback - no transaction is active").
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        self._local_writes += 1

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a write waits for another writer's lock before giving up (BUSY_TIMEOUT_S by
        default). The service's run loop sets it short: while `gallery import` holds the lock, a live
        enrolment's commit must give up in a moment, not stall identification for 10 s."""
        self._conn.execute(f"PRAGMA busy_timeout = {max(0, round(seconds * 1000))}")

    def _damaged(self, exc: sqlite3.DatabaseError) -> GalleryError:
        """The error for a gallery SQLite cannot read (a power cut on an SD card): what to do."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return GalleryError(f"gallery {self.path} is busy ({exc}); another writer holds it")
        return GalleryDamaged(
            f"{self.path} is not a readable gallery database ({exc}); restore the newest daily copy from "
            f"gallery.backup_dir with the service stopped (delete {self.path}-wal and {self.path}-shm "
            "first), or enrol everyone again",
            str(exc),
        )

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state. A damaged file is a
        GalleryError naming it (SQLite's own DatabaseError would end a command, or the service's
        run loop, with a traceback)."""
        try:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None

    def change_token(self) -> tuple[int, int]:
        """Changes whenever the gallery changed: by another connection (`PRAGMA data_version`) or this one.

        `data_version` only counts other connections' commits, so this store's own commits are counted
        alongside. Cheap (no I/O beyond the shared-memory header): call it before every match.
        """
        try:
            version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        return version, self._local_writes

    # ---- reading -------------------------------------------------------------------------------------

    def _find_id(self, name: str) -> int | None:
        """The id of identity `name` typed in any Unicode form, None if there is none.

        The stored form (NFC, see validate_name) is looked up first. Galleries written before names
        were normalised may hold a name in another form, and it must still be that one person (to
        enrol, rename, delete or import over), however it is typed now: so, failing that, every
        stored name is compared in NFC (only when the name is new; galleries hold hundreds of names)."""
        nfc = unicodedata.normalize("NFC", name)
        row = self._conn.execute("SELECT id FROM identities WHERE name = ?", (nfc,)).fetchone()
        if row is not None:
            return int(row[0])
        for ident, stored in self._conn.execute("SELECT id, name FROM identities ORDER BY id"):
            if isinstance(stored, str) and unicodedata.normalize("NFC", stored) == nfc:
                return int(ident)
        return None

    def has_identity(self, name: str) -> bool:
        """Whether `name` (typed in any Unicode form, see `_find_id`) is enrolled."""
        with self._read():
            return self._find_id(name) is not None

    def _identity_id(self, name: str) -> int:
        ident = self._find_id(name)
        if ident is None:
            known = [r[0] for r in self._conn.execute("SELECT name FROM identities ORDER BY name LIMIT 11")]
            hint = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "") if known else "none"
            raise GalleryError(f"no identity {name!r} in gallery {self.path} (known: {hint})")
        return ident

    def identities(self) -> list[IdentityInfo]:
        with self._read():
            rows = self._conn.execute(
                "SELECT i.name, count(e.id), i.created_ns, i.updated_ns FROM identities i "
                "LEFT JOIN exemplars e ON e.identity_id = i.id GROUP BY i.id ORDER BY i.name"
            ).fetchall()
        return [IdentityInfo(str(n), int(c), int(cr), int(up)) for n, c, cr, up in rows]

    def info(self, name: str) -> IdentityInfo:
        with self._read():
            ident = self._identity_id(name)
            row = self._conn.execute(
                "SELECT i.name, count(e.id), i.created_ns, i.updated_ns FROM identities i "
                "LEFT JOIN exemplars e ON e.identity_id = i.id WHERE i.id = ? GROUP BY i.id",
                (ident,),
            ).fetchone()
        return IdentityInfo(str(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def _decode(self, blobs: list[bytes]) -> np.ndarray:
        dim = self._dim if self._dim is not None else self._read_dim()
        if not blobs:
            return np.zeros((0, dim or 0), np.float32)
        if dim is None:
            raise GalleryError(f"{self.path}: exemplars stored but no embedding dimension recorded")
        size = 4 * dim
        bad = [i for i, b in enumerate(blobs) if not isinstance(b, bytes) or len(b) != size]
        if bad:
            raise GalleryError(
                f"{self.path}: {len(bad)} exemplar(s) are not {dim}-dimensional float32 vectors "
                "(corrupt file?)"
            )
        matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)
        return matrix.astype(np.float32)

    def exemplars(self, name: str) -> np.ndarray:
        """(n, dim) float32 unit-norm exemplars of one identity, oldest first."""
        with self._read():
            ident = self._identity_id(name)
            rows = self._conn.execute(
                "SELECT embedding FROM exemplars WHERE identity_id = ? ORDER BY added_ns, id", (ident,)
            ).fetchall()
        return self._decode([r[0] for r in rows])

    def exemplar_sources(self, name: str) -> list[str]:
        with self._read():
            ident = self._identity_id(name)
            rows = self._conn.execute(
                "SELECT source FROM exemplars WHERE identity_id = ? ORDER BY added_ns, id", (ident,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def snapshot(self) -> GallerySnapshot:
        """Every identity with at least one exemplar, read in one transaction."""
        with self._read():
            self._dim = self._read_dim()
            rows = self._conn.execute(
                "SELECT i.name, e.embedding FROM exemplars e JOIN identities i ON i.id = e.identity_id "
                "ORDER BY i.name, e.id"
            ).fetchall()
        matrix = self._decode([r[1] for r in rows])
        names: list[str] = []
        starts: list[int] = []
        for row_index, (name, _) in enumerate(rows):
            if not names or names[-1] != name:
                names.append(str(name))
                starts.append(row_index)
        return GallerySnapshot(tuple(names), matrix, np.asarray(starts, dtype=np.intp), self._dim)

    def integrity_check(self) -> str:
        """SQLite's verdict: "ok", else what is wrong (a page too damaged to check raises GalleryError)."""
        with self._read():
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    # ---- writing -------------------------------------------------------------------------------------

    def add_identity(self, name: str) -> IdentityInfo:
        name = validate_name(name)
        now = time.time_ns()
        with self._write():
            if self._find_id(name) is not None:
                raise GalleryError(f"identity {name!r} already exists in gallery {self.path}")
            self._conn.execute(
                "INSERT INTO identities (name, created_ns, updated_ns) VALUES (?, ?, ?)", (name, now, now)
            )
        return IdentityInfo(name, 0, now, now)

    def add_exemplars(
        self, name: str, embeddings: np.ndarray, *, budget: int, source: str = "enrol", create: bool = True
    ) -> list[AddResult]:
        """Add embeddings to `name` in ONE transaction, applying the budget policy to each in turn."""
        if budget < 1:
            raise GalleryError(f"exemplar budget must be at least 1, got {budget}")
        name = validate_name(name)
        vectors = normalise(embeddings, self._dim)
        if self._dim is None:
            self.ensure_dim(vectors.shape[1])
        results: list[AddResult] = []
        with self._write():
            now = time.time_ns()
            found = self._find_id(name)
            if found is None:
                if not create:
                    self._identity_id(name)  # raises with the list of known names
                cur = self._conn.execute(
                    "INSERT INTO identities (name, created_ns, updated_ns) VALUES (?, ?, ?)", (name, now, now)
                )
                ident = int(cur.lastrowid or 0)
            else:
                ident = found
            for vector in vectors:
                results.append(self._add_one(ident, vector, budget, source, now))
                now += 1  # keeps insertion order even within one nanosecond tick
            self._conn.execute("UPDATE identities SET updated_ns = ? WHERE id = ?", (now, ident))
        return results

    def _add_one(self, ident: int, vector: np.ndarray, budget: int, source: str, now: int) -> AddResult:
        replaced = 0
        count_sql = "SELECT count(*) FROM exemplars WHERE identity_id = ?"
        count = int(self._conn.execute(count_sql, (ident,)).fetchone()[0])
        while count >= budget:  # only a full identity pays for reading its exemplars
            rows = self._conn.execute(
                "SELECT id, embedding, added_ns FROM exemplars WHERE identity_id = ? ORDER BY added_ns, id",
                (ident,),
            ).fetchall()
            victim = choose_victim(self._decode([r[1] for r in rows]), vector, np.array([r[2] for r in rows]))
            if victim < 0:
                return AddResult(stored=False, replaced=replaced, exemplars=count)
            self._conn.execute("DELETE FROM exemplars WHERE id = ?", (rows[victim][0],))
            replaced += 1
            count -= 1
        self._conn.execute(_INSERT_EXEMPLAR, (ident, _to_blob(vector), now, source))
        return AddResult(stored=True, replaced=replaced, exemplars=count + 1)

    def rename(self, old: str, new: str) -> None:
        new = validate_name(new)
        with self._write():
            ident = self._identity_id(old)
            # Taken by another identity: renaming one to another form of its own name is allowed
            # (it brings a name an older version stored decomposed to the stored form).
            taken = self._find_id(new)
            if taken is not None and taken != ident:
                raise GalleryError(f"cannot rename {old!r} to {new!r}: {new!r} already exists in {self.path}")
            self._conn.execute(
                "UPDATE identities SET name = ?, updated_ns = ? WHERE id = ?", (new, time.time_ns(), ident)
            )

    def delete(self, name: str) -> int:
        """Delete an identity and its exemplars; returns how many exemplars went with it."""
        with self._write():
            ident = self._identity_id(name)
            count = self._conn.execute(
                "SELECT count(*) FROM exemplars WHERE identity_id = ?", (ident,)
            ).fetchone()
            self._conn.execute("DELETE FROM identities WHERE id = ?", (ident,))
        return int(count[0])

    def replace_all(
        self,
        entries: list[tuple[str, np.ndarray]],
        *,
        overwrite: bool,
        source: str,
        embedding_space: str = "",
        origin: str = "",
    ) -> None:
        """Import: write every (name, exemplars) pair in one transaction, or nothing.

        Without `overwrite`, an identity that already exists is an error (listing every clash) so an
        import never silently merges two different people who happen to share a name.
        `embedding_space` (the model of the export `origin`, "" if it names none) is checked and tied
        in the same transaction (see ensure_embedding_space), so a refused import ties nothing.
        """
        entries = [(validate_name(name), vectors) for name, vectors in entries]
        with self._write():
            if embedding_space:
                self._tie_embedding_space(embedding_space, origin, import_mismatch)
            clashes = [n for n, _ in entries if self._find_id(n) is not None]
            if clashes and not overwrite:
                raise GalleryError(
                    f"gallery {self.path} already has {', '.join(map(repr, clashes))}: "
                    "pass --overwrite to replace them, or rename them first"
                )
            now = time.time_ns()
            for name, vectors in entries:
                existing = self._find_id(name)  # in whatever form an older version stored it
                if existing is not None:
                    self._conn.execute("DELETE FROM identities WHERE id = ?", (existing,))
                cur = self._conn.execute(
                    "INSERT INTO identities (name, created_ns, updated_ns) VALUES (?, ?, ?)", (name, now, now)
                )
                for vector in vectors:
                    self._conn.execute(_INSERT_EXEMPLAR, (cur.lastrowid, _to_blob(vector), now, source))
                    now += 1

    # ---- lifetime ------------------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
