"""Reading the small text files a site points at (config, geometry, channel calibration, engine
manifest) with a size cap.

`Path.read_text` reads whatever is there: a key pointed by mistake at a multi-gigabyte recording, a
log or /dev/zero makes the process read until memory runs out (and a check's timeout cannot stop the
thread doing it). Each of these files is kilobytes; a cap far above that turns the mistake into an
error that names the file.
"""

from __future__ import annotations

import errno
from pathlib import Path

#: Caps per kind of file, far above any real one (a 12x12 array's calibration is about 15 kB).
MAX_CONFIG_BYTES = 1 << 20
MAX_GEOMETRY_BYTES = 4 << 20
MAX_CALIBRATION_BYTES = 16 << 20
MAX_MANIFEST_BYTES = 16 << 20


class FileTooLarge(OSError):
    """The file is longer than its kind of file can be: a path pointing at the wrong file."""


def read_bytes_capped(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of `path`, reading no more than `max_bytes` + 1 (the 1 to tell). Raises FileTooLarge
    (an OSError, so callers' "cannot read it" handling covers it) or another OSError."""
    with open(path, "rb") as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        reason = f"longer than {max_bytes} bytes, so not the file meant here; check the path"
        raise FileTooLarge(errno.EFBIG, reason, str(path))
    return raw


def read_text_capped(path: str | Path, max_bytes: int, encoding: str = "utf-8") -> str:
    """The text of `path`, read with `read_bytes_capped`; UnicodeDecodeError when it is not text."""
    return read_bytes_capped(path, max_bytes).decode(encoding)


__all__ = [
    "MAX_CALIBRATION_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_GEOMETRY_BYTES",
    "MAX_MANIFEST_BYTES",
    "FileTooLarge",
    "read_bytes_capped",
    "read_text_capped",
]
