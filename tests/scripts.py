"""Where the installed console scripts are, for tests that run them as real processes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def console_script(name: str) -> Path:
    """The script beside the interpreter (a venv), else the one on PATH (a `pip install --target`).

    Tests run the script the interpreter's own install made, so a venv's copy wins over a stray one
    on PATH; the PATH fallback serves installs such as .ci/gpu-check's, which put scripts elsewhere.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    return Path(found) if found else beside
