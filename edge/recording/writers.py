"""Which processes hold a file open for writing (Linux /proc), to tell a recording being made from
one whose recorder died: both stay marked open by their SWMR writer.

A file's modification time cannot tell them apart: a recorder whose sensors are all down writes
nothing for a while, and a recording just copied with `cp` looks freshly written. The kernel knows
who holds the file: each /proc/PID/fd entry links to the open file, and /proc/PID/fdinfo gives the
flags it was opened with.
"""

from __future__ import annotations

import os
from pathlib import Path

_ACCESS_MODE = os.O_ACCMODE
_READ_ONLY = os.O_RDONLY


def writers_of(path: Path, proc: Path = Path("/proc")) -> list[int] | None:
    """PIDs of the other processes holding `path` open for writing; None when that cannot be told
    (no /proc, or a process whose open files this user may not read: another user's, run as
    non-root)."""
    if not proc.is_dir() or (os.geteuid() != 0 and _hides_processes(proc)):
        return None
    try:
        target = os.stat(path)
    except OSError:
        return None
    # The fd links name the file itself: a symlink the caller passed (latest.h5 -> the session) is
    # resolved to it, or no descriptor would match by name.
    name = os.path.basename(os.path.realpath(path))
    found: list[int] = []
    complete = True
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except FileNotFoundError:
            continue  # the process ended meanwhile
        except PermissionError:
            complete = False
            continue
        except OSError:
            continue
        for fd in fds:
            if _writes_to(entry, fd, name, target):
                found.append(int(entry.name))
                break
    if not found and not complete:
        return None
    return found


def _hides_processes(proc: Path) -> bool:
    """Whether `proc` is mounted with hidepid: other users' processes are then not merely unreadable
    but absent, and an empty scan would say nobody holds the file."""
    try:
        lines = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return True  # cannot tell what is hidden: treat the scan as incomplete
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or fields[4] != str(proc) or " - " not in line:
            continue
        options = line.split(" - ", 1)[1].split()[-1].split(",")
        for option in options:
            if option.startswith("hidepid=") and option.split("=", 1)[1] not in ("0", "off"):
                return True
    return False


def _writes_to(process: Path, fd: Path, name: str, target: os.stat_result) -> bool:
    """Whether descriptor `fd` of `process` is `target` (same device and inode), opened to write.

    Only a descriptor whose link names a file called `name` is stat'ed: stat follows the link into
    the open file's filesystem, and a process holding a file on a hung NFS or FUSE mount would block
    the whole scan there. Reading the link itself does not touch that filesystem; the kernel keeps
    the name current when the file is renamed. A target with several hard links may be open under
    another name, so then every descriptor is stat'ed."""
    if target.st_nlink <= 1 and not _link_names(fd, name):
        return False
    try:
        opened = os.stat(fd)  # follows the link to the open file, even when renamed
    except OSError:
        return False
    if (opened.st_dev, opened.st_ino) != (target.st_dev, target.st_ino):
        return False
    try:
        info = (process / "fdinfo" / fd.name).read_text()
    except OSError:
        return True  # held, mode unknown: count it as a writer (refusing is the safe side)
    for line in info.splitlines():
        if line.startswith("flags:"):
            flags = int(line.split()[1], 8)
            return (flags & _ACCESS_MODE) != _READ_ONLY
    return True


def _link_names(fd: Path, name: str) -> bool:
    """Whether the /proc fd link `fd` points at a file called `name` (also once deleted)."""
    try:
        link = os.readlink(fd)
    except OSError:
        return False
    return os.path.basename(link.removesuffix(" (deleted)")) == name


__all__ = ["writers_of"]
