"""Fakes of GPU-only libraries (TensorRT, CuPy) that let the GPU code paths run on a CPU-only machine.

Tests put this folder on sys.path only inside a fixture (`fake_modules`), never globally, so a test
that does not ask for a fake sees the real environment (where `import tensorrt` fails on CI).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FAKES_DIR = Path(__file__).resolve().parent


@contextlib.contextmanager
def fake_modules(monkeypatch: pytest.MonkeyPatch, *names: str) -> Iterator[dict[str, ModuleType]]:
    """Import fresh fakes of `names` (e.g. "tensorrt", "cupy"); drop them again on exit.

    A real module of the same name already imported is hidden for the duration (monkeypatch restores it).
    """
    monkeypatch.syspath_prepend(str(FAKES_DIR))
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
    modules = {}
    try:
        for name in names:
            module = importlib.import_module(name)
            assert Path(module.__file__).is_relative_to(FAKES_DIR), f"{name} did not resolve to the fake"
            modules[name] = module
        yield modules
    finally:
        for name in names:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[loaded]


def unreadable(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make the package files called `names` unreadable to `open_engine`, as files copied in by root
    with mode 0600 are to the service user (simulated: the tests may run as root, who reads all)."""
    from vrclip.edge.inference import factory

    real = factory.sha256_file

    def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
        if Path(path).name in names:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, chunk_bytes)

    monkeypatch.setattr(factory, "sha256_file", sha256_file)
