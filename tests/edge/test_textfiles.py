"""Files a site points at are read with a size cap: a key pointed by mistake at a huge file or at
/dev/zero is an error naming the file, not a process reading until memory runs out."""

from __future__ import annotations

from pathlib import Path

import pytest
from vrclip.edge.config import ArrayConfig, load_config
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.manifest import load_manifest
from vrclip.edge.textfiles import FileTooLarge, read_text_capped


def _huge(path: Path) -> Path:
    """A sparse 64 MiB file (no disk, no time to make), over every cap: a recording or a log stands
    in for it on site, gigabytes long."""
    with open(path, "wb") as handle:
        handle.truncate(64 << 20)
    return path


def test_the_cap_refuses_longer_files_and_reads_shorter_ones(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("abc")
    assert read_text_capped(tmp_path / "ok.txt", 3) == "abc"
    with pytest.raises(FileTooLarge, match="longer than 2 bytes"):
        read_text_capped(tmp_path / "ok.txt", 2)
    with pytest.raises(FileTooLarge):
        read_text_capped("/dev/zero", 1 << 20)


@pytest.mark.parametrize(
    "load",
    [
        load_config,
        lambda path: load_geometry(ArrayConfig(geometry_file=str(path))),
        ChannelCalibration.load,
        load_manifest,
    ],
    ids=["config", "geometry", "calibration", "manifest"],
)
def test_a_site_file_pointed_at_a_huge_file_is_an_error_naming_it(tmp_path: Path, load) -> None:  # type: ignore[no-untyped-def]
    huge = _huge(tmp_path / "recording.h5")
    with pytest.raises(UserError, match=r"recording\.h5.*longer than"):
        load(huge)
