"""The edge box never has torch: every vrclip.edge module must import with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import importlib, pkgutil, sys
sys.modules["torch"] = None          # any `import torch` now raises ImportError
sys.modules["torchvision"] = None
sys.modules["open_clip"] = None
import vrclip.edge
names = [m.name for m in pkgutil.walk_packages(vrclip.edge.__path__, "vrclip.edge.")]
for name in names:
    importlib.import_module(name)
assert len(names) > 10, names
print(len(names))
"""


def test_every_edge_module_imports_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
