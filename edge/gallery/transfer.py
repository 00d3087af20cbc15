"""Export and import a gallery as JSON (readable, diffable) or npz (compact), chosen by file suffix.

Why both: JSON is what an integrator opens to see who is enrolled; npz is ~4x smaller and loads
without parsing text, for moving a large gallery between boxes. An import file comes from another
machine and is not trusted: every name, shape, dtype and value is checked before anything is written,
and the write is one transaction (all identities or none).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from vrclip.edge.gallery.store import MAX_DIM, GalleryError, GalleryStore, normalise, validate_name

FORMAT = "vrclip-gallery"
FORMAT_VERSION = 1
#: Refuse import files larger than this (a gallery of 10,000 people x 32 exemplars x 512-d is ~650 MB JSON).
MAX_IMPORT_BYTES = 2 << 30


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".npz"):
        raise GalleryError(f"{path}: unknown gallery file type {suffix or '(none)'!r}; use .json or .npz")
    return suffix[1:]


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_gallery(store: GalleryStore, path: str | Path) -> int:
    """Write every identity and its exemplars to `path` (.json or .npz); returns the identity count."""
    path = Path(path)
    kind = _format_of(path)
    infos = store.identities()
    blocks = [(info, store.exemplars(info.name)) for info in infos]
    dim = store.dim or 0
    if kind == "json":
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dim": dim,
            "exported_ns": time.time_ns(),
            "identities": [
                {"name": info.name, "created_ns": info.created_ns, "exemplars": vectors.tolist()}
                for info, vectors in blocks
            ],
        }
        _atomic_write(path, lambda h: h.write(json.dumps(doc, separators=(",", ":")).encode("utf-8")))
    else:
        matrix = np.concatenate([v for _, v in blocks]) if blocks else np.zeros((0, dim), np.float32)
        owner = [i for i, (_, vectors) in enumerate(blocks) for _ in range(len(vectors))]
        arrays = {
            "format": np.array(FORMAT),
            "version": np.array(FORMAT_VERSION),
            "dim": np.array(dim),
            "names": np.array([info.name for info, _ in blocks], dtype=f"<U{64}"),
            "created_ns": np.array([info.created_ns for info, _ in blocks], dtype=np.int64),
            "owner": np.asarray(owner, dtype=np.int32),
            "embeddings": matrix.astype("<f4"),
        }
        _atomic_write(path, lambda h: np.savez_compressed(h, **arrays))
    return len(blocks)


def _check_dim(path: Path, dim: Any) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= MAX_DIM:
        raise GalleryError(f"{path}: 'dim' must be an integer in 0..{MAX_DIM}, got {dim!r}")
    return dim


def _read_json(path: Path) -> tuple[int, list[tuple[str, np.ndarray]]]:
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GalleryError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GalleryError(f'{path}: not a vrclip gallery export (missing "format": "{FORMAT}")')
    if doc.get("version") != FORMAT_VERSION:
        raise GalleryError(
            f"{path}: gallery export version {doc.get('version')!r}; this reads {FORMAT_VERSION}"
        )
    dim = _check_dim(path, doc.get("dim"))
    people = doc.get("identities")
    if not isinstance(people, list):
        raise GalleryError(f"{path}: 'identities' must be a list")
    entries = []
    for i, person in enumerate(people):
        if not isinstance(person, dict) or not isinstance(person.get("name"), str):
            raise GalleryError(f"{path}: identities[{i}] needs a string 'name'")
        raw = person.get("exemplars")
        if not isinstance(raw, list) or not all(
            isinstance(row, list)
            and len(row) == dim
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in row)
            for row in raw
        ):
            raise GalleryError(
                f"{path}: identities[{i}] ({person['name']!r}): 'exemplars' must be a list of "
                f"{dim} finite numbers each"
            )
        entries.append((person["name"], np.array(raw, dtype=np.float64).reshape(len(raw), dim)))
    return dim, entries


def _scalar_int(path: Path, arrays: dict[str, np.ndarray], key: str) -> int:
    value = arrays[key]
    if value.shape != () or value.dtype.kind not in "iu":
        raise GalleryError(f"{path}: {key!r} must be an integer scalar, got {value.dtype} {value.shape}")
    return int(value)


def _read_npz(path: Path) -> tuple[int, list[tuple[str, np.ndarray]]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise GalleryError(f"{path}: not a readable npz file ({exc})") from None
    needed = {"format", "version", "dim", "names", "owner", "embeddings"}
    missing = needed - set(arrays)
    if missing or arrays["format"].shape != () or str(arrays["format"]) != FORMAT:
        raise GalleryError(f"{path}: not a vrclip gallery export (missing {sorted(missing) or 'format tag'})")
    version = _scalar_int(path, arrays, "version")
    if version != FORMAT_VERSION:
        raise GalleryError(f"{path}: gallery export version {version}; this reads {FORMAT_VERSION}")
    dim = _check_dim(path, _scalar_int(path, arrays, "dim"))
    names, owner, emb = arrays["names"], arrays["owner"], arrays["embeddings"]
    if names.ndim != 1 or names.dtype.kind != "U":
        raise GalleryError(f"{path}: 'names' must be a 1-D string array")
    if emb.ndim != 2 or emb.shape[1] != dim or emb.dtype.kind != "f":
        raise GalleryError(f"{path}: 'embeddings' must be float (N, {dim}), got {emb.dtype} {emb.shape}")
    if owner.shape != (emb.shape[0],) or owner.dtype.kind not in "iu":
        raise GalleryError(f"{path}: 'owner' must be an integer array with one entry per embedding")
    if owner.size and (owner.min() < 0 or owner.max() >= len(names)):
        raise GalleryError(f"{path}: 'owner' refers to identities outside 'names'")
    if not np.all(np.isfinite(emb)):
        raise GalleryError(f"{path}: 'embeddings' contains NaN or infinity")
    return dim, [(str(name), emb[owner == i]) for i, name in enumerate(names)]


def import_gallery(store: GalleryStore, path: str | Path, *, overwrite: bool = False) -> int:
    """Import every identity of `path` into `store` (all or nothing); returns the identity count."""
    path = Path(path)
    kind = _format_of(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise GalleryError(f"{path}: no such file") from None
    if size > MAX_IMPORT_BYTES:
        raise GalleryError(
            f"{path}: {size} bytes is larger than the {MAX_IMPORT_BYTES} bytes an import accepts"
        )
    dim, entries = _read_json(path) if kind == "json" else _read_npz(path)
    names = [name for name, _ in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GalleryError(f"{path}: identities listed twice: {', '.join(map(repr, duplicates))}")
    checked: list[tuple[str, np.ndarray]] = []
    for name, vectors in entries:
        try:
            validate_name(name)
            unit = normalise(vectors, dim) if len(vectors) else np.zeros((0, dim), np.float32)
        except ValueError as exc:
            raise GalleryError(f"{path}: identity {name!r}: {exc}") from None
        except GalleryError as exc:
            raise GalleryError(f"{path}: {exc}") from None
        checked.append((name, unit))
    if any(len(v) for _, v in checked) or dim:
        if store.dim is not None and dim != store.dim:
            raise GalleryError(
                f"{path} holds {dim}-dimensional embeddings but gallery {store.path} stores "
                f"{store.dim}-dimensional ones: import into a gallery made with the same engine"
            )
        if dim:
            store.ensure_dim(dim)
    store.replace_all(checked, overwrite=overwrite, source="import")
    return len(checked)
