"""Replacing a file the runtime reads (calibration, site config) without ever leaving it half written.

Both calibration steps overwrite a file that a running service may read at any moment, and an
installer who measured wrongly wants the old one back: so the new content is written atomically and
the file it replaces is kept beside it as `<file>.prev`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tomllib
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError
from vrclip.edge.config import EdgeConfig, parse_config
from vrclip.edge.errors import UserError
from vrclip.edge.manifest import write_temporary


def replace_keeping_previous(path: Path, data: bytes, what: str, hint: str) -> tuple[Path, Path | None]:
    """Write `data` to `path` atomically; returns (the file written, where the old one was kept).

    A `path` that is a symbolic link is written through: the link stays and the file it points to
    is replaced (the old one kept beside that file). Renaming over the link itself would turn it into
    a plain file and leave the file it pointed to stale. `what` names the content in errors ("the
    calibration"), `hint` says what to do when the path cannot be written.

    The new file gets the replaced one's permissions and, where this user may give them, its owner
    and group: a site config made readable to the service's group only (0640 root:vrclip) and
    rewritten under sudo with umask 077 came out 0600 root:root, and the service could no longer read
    its config at its next start.
    """
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    previous = None
    old = None
    if path.exists():
        old = path.stat()
        previous = path.with_name(path.name + ".prev")
        # Copied under a temporary name and renamed: a copy cut short (Ctrl-C, a full disk) must not
        # replace the .prev already there, the last good one, with half a file.
        staging = path.with_name(f".{path.name}.prev.tmp")
        try:
            shutil.copy2(path, staging)
            os.replace(staging, previous)
        except OSError as exc:
            raise UserError(f"{path}: cannot keep the previous {what} as {previous} ({exc})") from None
        finally:
            staging.unlink(missing_ok=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = write_temporary(path, data)
        try:
            if old is not None:
                with contextlib.suppress(PermissionError):  # another owner needs root: keep ours
                    os.chown(tmp, old.st_uid, old.st_gid)
                os.chmod(tmp, stat.S_IMODE(old.st_mode))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UserError(f"{path}: cannot write {what} ({exc.strerror or exc}); {hint}") from None
    return path, previous


def write_camera_keys(path: Path, config: EdgeConfig, keys: tuple[str, ...]) -> tuple[Path, Path | None]:
    """Write `config.camera`'s `keys` into the site config at `path`, changing nothing else in the
    file (comments, order and the other keys stay as the installer wrote them); the old file is kept
    as `<path>.prev`. What is written must load as a config. Returns (the file written, the kept copy)."""
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, TOMLKitError) as exc:
        raise UserError(f"{path}: cannot read the config to update it ({exc})") from None
    if "camera" not in document:
        document["camera"] = tomlkit.table()
    table = document["camera"]
    if not isinstance(table, dict):
        raise UserError(f"{path}: 'camera' is not a table; fix the config by hand")
    for key in keys:
        value = getattr(config.camera, key)
        if value is None:
            table.pop(key, None)  # TOML has no null: unset is absent
        elif isinstance(value, tuple):
            array = tomlkit.array()
            array.extend(float(v) for v in value)
            table[key] = array
        else:
            table[key] = float(value)
    new_text = tomlkit.dumps(document)
    parse_config(tomllib.loads(new_text), source=f"{path} (updated)")
    return replace_keeping_previous(
        path, new_text.encode("utf-8"), "the config", "run as a user who may write there"
    )
