"""Packaging: every source folder is installed under the vrclip namespace and every CLI answers."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.scripts import console_script

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"edge": "vrclip.edge", "export": "vrclip.export", "calibration": "vrclip.calibration",
         "firmware_tools": "vrclip.firmware_tools"}  # fmt: skip


def test_every_package_folder_is_declared_in_pyproject() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, package in PARTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    assert found == declared, f"add to / remove from [tool.setuptools] packages: {found ^ declared}"


@pytest.mark.parametrize("prog", ["vrclip-edge", "vrclip-export", "vrclip-calibrate", "vrclip-firmware"])
def test_console_scripts_answer_help_and_version(prog: str) -> None:
    exe = console_script(prog)
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith(prog + " ")
    helped = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "Usage" in helped.stdout
