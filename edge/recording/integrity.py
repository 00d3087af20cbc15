"""Is a recording that is still marked open for writing whole on disk?

A file whose SWMR writer is running or died must be opened in SWMR mode, and in that mode HDF5 skips
its own check that the file is as long as its superblock says. That check matters: in SWMR mode a read
past the end of the file is taken for data the writer has not written yet, and HDF5 waits for it -
measured here, a chunk lookup on a killed recording cut to 70 % was still waiting after 10 minutes;
raw chunks past the end read as zeros. So the reader does the check itself, before HDF5 reads anything:

- Every flush writes the superblock's end-of-file address and extends the file to it, and every frame
  a reader counts was written before such a flush. A file at least that long therefore holds every
  counted frame: the normal case (live file, or a writer killed between flushes), one 40-byte read.
- A file shorter than that is a copy cut short, or (for microseconds per flush) a live writer between
  writing the superblock and extending the file, or a writer killed in exactly that window. The reader
  re-checks briefly for the live case and otherwise refuses the file with what to do.

Superblock layout (versions 2 and 3, HDF5 file format specification): signature (8 bytes), version,
size of offsets O, size of lengths, consistency flags, then base address, superblock-extension
address, end-of-file address (O bytes each, little-endian). Versions 0/1 cannot be SWMR files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_WRITE_ACCESS = 0x01
_SWMR_WRITE_ACCESS = 0x04


@dataclass(frozen=True)
class Superblock:
    """The fields of an HDF5 superblock this package needs."""

    version: int
    flags: int
    #: Absolute position of HDF5 address 0 (after any user block).
    base_addr: int
    #: End-of-file address the last flush recorded (relative to base_addr); None before version 2.
    eof_addr: int | None

    @property
    def open_for_write(self) -> bool:
        return bool(self.flags & _WRITE_ACCESS)

    @property
    def open_for_swmr_write(self) -> bool:
        """Marked open by a SWMR writer: being recorded now, or its writer died."""
        return bool(self.flags & _SWMR_WRITE_ACCESS)


def read_superblock(path: Path) -> Superblock | None:
    """The file's superblock, or None if it has no HDF5 signature. The signature sits at 0 or after a
    user block at 512, 1024, 2048, ... bytes."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        offset = 0
        while offset + 12 <= size:
            fh.seek(offset)
            head = fh.read(12 + 3 * 8)
            if head[:8] == _SIGNATURE:
                version, width = head[8], head[9]
                if version < 2 or width not in (2, 4, 8) or len(head) < 12 + 3 * width:
                    return Superblock(version, head[11] if version >= 2 else 0, offset, None)
                base, _ext, eof = (
                    int.from_bytes(head[12 + j * width : 12 + (j + 1) * width], "little") for j in range(3)
                )
                return Superblock(version, head[11], base, eof)
            offset = 512 if offset == 0 else offset * 2
    return None


def missing_bytes(path: Path, sb: Superblock) -> int:
    """How many bytes the file lacks to reach its superblock's end-of-file address (0 = whole)."""
    if sb.eof_addr is None:
        return 0
    # Compared as HDF5 itself does (H5F__super_read): stored end-of-file against the file's length.
    return max(0, sb.eof_addr - path.stat().st_size)
