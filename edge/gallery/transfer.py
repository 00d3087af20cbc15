"""Export and import a gallery as JSON (readable, diffable) or npz (compact), chosen by file suffix.

Why both: JSON is what an integrator opens to see who is enrolled; npz is ~4x smaller and loads
without parsing text, for moving a large gallery between boxes. An import file comes from another
machine and is not trusted: every name, shape, dtype and value is checked before anything is written,
and the write is one transaction (all identities or none).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format
from vrclip.edge.gallery.store import MAX_DIM, GalleryError, GalleryStore, normalise, validate_name
from vrclip.edge.manifest import check_sha256
from vrclip.edge.values import finite_number

FORMAT = "vrclip-gallery"
FORMAT_VERSION = 1
#: Refuse import files larger than this (10,000 people x 32 exemplars x 512-d is 655 MB of float32).
MAX_IMPORT_BYTES = 2 << 30
#: A JSON export or import larger than this is refused with a pointer to .npz. JSON is read whole and
#: every number becomes a Python float (201 MB of JSON peaked at 531 MB parsed), so an import of this
#: size takes about 1 GB with the raw text; 256 MiB holds ~780 people x 32 exemplars x 512-d (21 bytes
#: a number). .npz has no such cost and takes galleries of any size up to MAX_IMPORT_ARRAY_BYTES.
MAX_JSON_BYTES = 256 << 20
#: Refuse an npz import whose arrays, uncompressed, add up to more than this: a few hundred kilobytes
#: of deflated zeros can expand to gigabytes. The 10,000 x 32 x 512 gallery is 655 MB of float32.
MAX_IMPORT_ARRAY_BYTES = 1 << 30
#: The arrays an npz export holds; anything else in the archive is ignored, never read.
_NPZ_KEYS = ("format", "version", "dim", "names", "created_ns", "owner", "embeddings", "embedding_space")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".npz"):
        raise GalleryError(f"{path}: unknown gallery file type {suffix or '(none)'!r}; use .json or .npz")
    return suffix[1:]


def _cannot_write(path: Path, exc: OSError) -> GalleryError:
    return GalleryError(
        f"{path}: cannot write the gallery export ({exc.strerror or exc}); choose a writable file path"
    )


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename: a crash never leaves half a file."""
    if path.is_dir():
        raise GalleryError(f"{path}: is a directory; give the export a file name ending in .json or .npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def export_gallery(store: GalleryStore, path: str | Path) -> int:
    """Write every identity and its exemplars to `path` (.json or .npz); returns the identity count."""
    path = Path(path)
    kind = _format_of(path)
    infos = store.identities()
    blocks = [(info, store.exemplars(info.name)) for info in infos]
    dim = store.dim or 0
    space = store.embedding_space or ""
    if kind == "json":
        _atomic_write(path, lambda h: _write_json(h, path, dim, blocks, space))
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
            "embedding_space": np.array(space),
        }
        _atomic_write(path, lambda h: np.savez_compressed(h, **arrays))
    return len(blocks)


def _write_json(
    handle: Any, path: Path, dim: int, blocks: list[tuple[Any, np.ndarray]], space: str = ""
) -> None:
    """Write the JSON export one identity at a time, so that only one identity's numbers are ever held
    as Python floats; refuse (and so leave no file) once it outgrows what a JSON import reads."""
    head: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dim": dim,
        "exported_ns": time.time_ns(),
    }
    if space:
        head["embedding_space"] = space
    opening = json.dumps(head, separators=(",", ":"))[:-1] + ',"identities":['
    written = handle.write(opening.encode("utf-8"))
    for i, (info, vectors) in enumerate(blocks):
        item = {"name": info.name, "created_ns": info.created_ns, "exemplars": vectors.tolist()}
        written += handle.write(
            (("," if i else "") + json.dumps(item, separators=(",", ":"))).encode("utf-8")
        )
        if written + 2 > MAX_JSON_BYTES:  # 2: the closing ]}
            exemplars = sum(len(v) for _, v in blocks)
            raise GalleryError(
                f"{path}: a gallery of {len(blocks)} identities and {exemplars} exemplars is too large for "
                f"a JSON export (over {MAX_JSON_BYTES} bytes, more than a JSON import reads); "
                "export to a file ending in .npz instead"
            )
    handle.write(b"]}")


def _check_space(path: Path, space: Any) -> str:
    """The export's model (`embedding_space`, optional: exports from before it have none)."""
    if space is None or space == "":
        return ""
    if isinstance(space, str):
        with contextlib.suppress(ValueError):
            return check_sha256(space)  # as the engine manifest's embedding_space is checked
    raise GalleryError(f"{path}: 'embedding_space' must be a model's sha256 (64 hex characters)")


def _check_dim(path: Path, dim: Any) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= MAX_DIM:
        raise GalleryError(f"{path}: 'dim' must be an integer in 0..{MAX_DIM}, got {dim!r}")
    return dim


def _read_json(path: Path) -> tuple[int, list[tuple[str, np.ndarray]], str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GalleryError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GalleryError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise GalleryError(f"{path}: not a vrclip gallery export (JSON nested too deeply)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GalleryError(f'{path}: not a vrclip gallery export (missing "format": "{FORMAT}")')
    # `type() is int`: JSON's true is Python's True, which equals 1.
    if type(doc.get("version")) is not int or doc.get("version") != FORMAT_VERSION:
        raise GalleryError(
            f"{path}: gallery export version {doc.get('version')!r}; this reads {FORMAT_VERSION}"
        )
    dim = _check_dim(path, doc.get("dim"))
    space = _check_space(path, doc.get("embedding_space"))
    people = doc.get("identities")
    if not isinstance(people, list):
        raise GalleryError(f"{path}: 'identities' must be a list")
    entries = []
    for i, person in enumerate(people):
        if not isinstance(person, dict) or not isinstance(person.get("name"), str):
            raise GalleryError(f"{path}: identities[{i}] needs a string 'name'")
        raw = person.get("exemplars")
        if not isinstance(raw, list) or not all(
            isinstance(row, list) and len(row) == dim and all(finite_number(x) for x in row) for row in raw
        ):
            raise GalleryError(
                f"{path}: identities[{i}] ({person['name']!r}): 'exemplars' must be a list of "
                f"{dim} finite numbers each"
            )
        entries.append((person["name"], np.array(raw, dtype=np.float64).reshape(len(raw), dim)))
    return dim, entries, space


def _scalar_int(path: Path, arrays: dict[str, np.ndarray], key: str) -> int:
    value = arrays[key]
    if value.shape != () or value.dtype.kind not in "iu":
        raise GalleryError(f"{path}: {key!r} must be an integer scalar, got {value.dtype} {value.shape}")
    return int(value)


def _npy_header(path: Path, member: zipfile.ZipInfo, handle: Any) -> int:
    """Check one .npy member's header; return the bytes its array takes once loaded."""
    version = npy_format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = npy_format.read_array_header_2_0(handle)
    else:
        raise GalleryError(
            f"{path}: member {member.filename!r} is .npy format {version}; this reads 1.0 and 2.0"
        )
    if dtype.hasobject:  # would need unpickling: never
        raise GalleryError(
            f"{path}: not a readable npz file (member {member.filename!r} holds Python objects)"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > member.file_size:  # the header promises more than the member holds: refuse before allocating
        raise GalleryError(
            f"{path}: member {member.filename!r} declares a {shape} {dtype} array ({nbytes} bytes) "
            f"but holds only {member.file_size} bytes"
        )
    return nbytes


def _load_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The gallery arrays of an npz file, each checked against its uncompressed size before it is read."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        wanted = [members[f"{key}.npy"] for key in _NPZ_KEYS if f"{key}.npy" in members]
        total = sum(info.file_size for info in wanted)
        if total > MAX_IMPORT_ARRAY_BYTES:
            sizes = ", ".join(f"{info.filename} {info.file_size}" for info in wanted)
            raise GalleryError(
                f"{path}: its arrays take {total} bytes uncompressed ({sizes}), more than the "
                f"{MAX_IMPORT_ARRAY_BYTES} bytes an import accepts"
            )
        for info in wanted:
            with archive.open(info) as handle:
                _npy_header(path, info, handle)
        arrays = {}
        for info in wanted:
            with archive.open(info) as handle:
                arrays[info.filename.removesuffix(".npy")] = npy_format.read_array(handle, allow_pickle=False)
        return arrays


def _read_npz(path: Path) -> tuple[int, list[tuple[str, np.ndarray]], str]:
    try:
        arrays = _load_npz_arrays(path)
    except (
        ValueError,  # a bad .npy header, a short member
        OSError,
        EOFError,
        zipfile.BadZipFile,  # truncated archive, bad CRC
        zlib.error,  # corrupt deflate stream
        NotImplementedError,  # a compression method zipfile lacks
        RuntimeError,  # an encrypted member
    ) as exc:
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
    space_array = arrays.get("embedding_space")
    if space_array is not None and (space_array.shape != () or space_array.dtype.kind != "U"):
        raise GalleryError(f"{path}: 'embedding_space' must be one string")
    space = _check_space(path, str(space_array) if space_array is not None else "")
    return dim, [(str(name), emb[owner == i]) for i, name in enumerate(names)], space


def import_gallery(store: GalleryStore, path: str | Path, *, overwrite: bool = False) -> int:
    """Import every identity of `path` into `store` (all or nothing); returns the identity count."""
    path = Path(path)
    kind = _format_of(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise GalleryError(f"{path}: no such file") from None
    except OSError as exc:
        raise GalleryError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise GalleryError(f"{path}: is a directory, not a gallery export file")
    if size > MAX_IMPORT_BYTES:
        raise GalleryError(
            f"{path}: {size} bytes is larger than the {MAX_IMPORT_BYTES} bytes an import accepts"
        )
    if kind == "json" and size > MAX_JSON_BYTES:
        raise GalleryError(
            f"{path}: {size} bytes of JSON is more than the {MAX_JSON_BYTES} bytes a JSON import reads "
            "(every number would be held in memory as a Python object); export the gallery as .npz "
            "(`vrclip-edge gallery export FILE.npz`) and import that"
        )
    dim, entries, space = _read_json(path) if kind == "json" else _read_npz(path)
    # Two spellings of one name (NFC and decomposed) are one person: compare the stored form.
    counts = Counter(unicodedata.normalize("NFC", name) for name, _ in entries)
    duplicates = sorted(n for n, c in counts.items() if c > 1)
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
    # An export of another model's gallery must not mix into this one (see ensure_embedding_space).
    store.replace_all(checked, overwrite=overwrite, source="import", embedding_space=space, origin=str(path))
    return len(checked)
