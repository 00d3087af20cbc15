"""Packaging: every source folder is installed under the vrclip namespace and every CLI answers."""

from __future__ import annotations

import subprocess
import sys
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


@pytest.mark.parametrize(
    ("prog", "args", "message"),
    [
        ("vrclip-edge", ["inspect"], "Missing argument"),
        ("vrclip-edge", ["sim", "bench-acquisition", "--max-overhead-pct", "x"],
         "Invalid value for '--max-overhead-pct'"),
        ("vrclip-edge", ["no-such-command"], "No such command"),
        ("vrclip-export", ["--no-such-option"], "No such option"),
        ("vrclip-calibrate", ["--no-such-option"], "No such option"),
        ("vrclip-firmware", ["--no-such-option"], "No such option"),
    ],
)  # fmt: skip
def test_usage_errors_print_the_usage_and_exit_2_without_a_traceback(
    prog: str, args: list[str], message: str
) -> None:
    result = subprocess.run([console_script(prog), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "──" not in result.stderr  # no (rich) traceback
    assert result.stderr.startswith("Usage: ") and f"Error: {message}" in result.stderr


@pytest.mark.parametrize("prog", ["vrclip-edge", "vrclip-export", "vrclip-calibrate", "vrclip-firmware"])
def test_no_arguments_shows_the_help_without_a_traceback(prog: str) -> None:
    result = subprocess.run([console_script(prog)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr  # click's status for no_args_is_help
    assert "Usage" in result.stdout + result.stderr and "--help" in result.stdout + result.stderr


EXITING = (
    "import typer\n"
    "from vrclip.edge.cli_support import make_app, run\n"
    "app = make_app('prog', 'test')\n"
    "@app.command()\n"
    "def fail(code: int) -> None:\n"
    "    raise typer.Exit(code=code)\n"
    "@app.command()\n"
    "def other() -> None:\n"
    "    pass\n"
    "run(app)\n"
)


@pytest.mark.parametrize("code", [0, 1, 3])
def test_typer_exit_codes_reach_the_shell(code: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EXITING, "fail", str(code)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == code, result.stderr


def test_a_failing_bench_exits_1() -> None:
    fast = ["--in-process", "--frames", "1", "--points", "21", "--sweep-time-ms", "0.05"]
    result = subprocess.run(
        [console_script("vrclip-edge"), "sim", "bench-acquisition", *fast, "--max-overhead-pct", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "FAIL: overhead above 0 %" in result.stdout, result.stderr
