"""The systemd unit (content, `systemd-analyze verify`, exposure) and `vrclip-edge install-service`."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner
from vrclip.edge.config import load_config
from vrclip.edge.errors import UserError
from vrclip.edge.service.install import ENV_EXAMPLE, install_service_command, render_unit

from tests.scripts import console_script

ROOT = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian: systemd)")
OPT_EXE = "/opt/vrclip/.venv/bin/vrclip-edge"

app = typer.Typer()
app.command()(install_service_command)
runner = CliRunner()


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found[key].append(value)
    return found


def test_repository_files_match_what_the_installer_writes() -> None:
    assert (ROOT / "systemd" / "vrclip-edge.service").read_text() == render_unit()
    assert (ROOT / "systemd" / "vrclip-edge.env.example").read_text() == ENV_EXAMPLE


def test_unit_asks_for_notify_watchdog_account_and_hardening() -> None:
    d = directives(render_unit())
    one = {key: values[0] for key, values in d.items() if len(values) == 1}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main" and one["WatchdogSec"] == "30"
    assert one["Restart"] == "on-failure" and "RestartSec" in one and "TimeoutStopSec" in one
    assert one["ExecStart"] == "/opt/vrclip/.venv/bin/vrclip-edge run --config /etc/vrclip/edge.toml"
    assert one["User"] == "vrclip" and one["SupplementaryGroups"] == "video dialout"
    assert one["StateDirectory"] == one["ConfigurationDirectory"] == one["LogsDirectory"] == "vrclip"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and one["PrivateDevices"] == "no"
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6 AF_NETLINK"
    allowed = " ".join(d["DeviceAllow"])
    for group in ("char-nvidia*", "char-nvhost*", "char-video4linux", "char-ttyUSB", "char-ttyACM"):
        assert group in allowed
    assert "MemoryDenyWriteExecute" not in d  # would break CUDA/TensorRT JIT


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    exe = console_script("vrclip-edge")  # verify checks ExecStart= is executable
    unit = tmp_path / "vrclip-edge.service"
    unit.write_text(render_unit(exe))
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and not ours, result.stderr
    # the check can fail: verify reports a misspelt directive in the same output we read
    bad = tmp_path / "bad.service"
    bad.write_text(render_unit(exe).replace("ProtectHome=yes", "ProtectHomme=yes"))
    result = subprocess.run([ANALYZE, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "ProtectHomme" in result.stderr


@needs_analyze
def test_exposure_stays_low(tmp_path: Path) -> None:
    unit = tmp_path / "vrclip-edge.service"
    unit.write_text(render_unit())
    args = [ANALYZE, "security", "--offline=true", "--threshold=50", str(unit)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    # exposure <= 5.0 of 10 ("OK"/"MEDIUM"); a dropped hardening line pushes it over
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_install_into_a_prefix(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--prefix", str(tmp_path), "--exec", OPT_EXE])
    assert result.exit_code == 0, result.output
    unit = tmp_path / "etc/systemd/system/vrclip-edge.service"
    assert unit.read_text() == render_unit(OPT_EXE)
    assert unit.stat().st_mode & 0o777 == 0o644
    config = tmp_path / "etc/vrclip/edge.toml"
    assert (
        config.stat().st_mode & 0o777 == 0o640 and (tmp_path / "etc/vrclip").stat().st_mode & 0o777 == 0o750
    )
    load_config(config)  # the default config it writes is valid
    assert (tmp_path / "etc/vrclip/edge.env").read_text() == ENV_EXAMPLE
    assert "u vrclip" in (tmp_path / "etc/sysusers.d/vrclip.conf").read_text()
    for command in (
        "systemd-sysusers",
        "vrclip-firmware selftest --config /etc/vrclip/edge.toml",
        "systemctl daemon-reload",
        "systemctl enable --now vrclip-edge.service",
    ):
        assert command in result.output
    # a second run keeps the operator's config and leaves an unchanged unit alone
    config.write_text("[camera]\nfps = 15\n")
    again = runner.invoke(app, ["--prefix", str(tmp_path), "--exec", OPT_EXE])
    assert again.exit_code == 0
    assert f"keep    {config}" in again.output and f"same    {unit}" in again.output
    assert config.read_text() == "[camera]\nfps = 15\n"


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--prefix", str(tmp_path / "root"), "--exec", OPT_EXE, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "vrclip-edge.service" in result.output and "systemctl daemon-reload" in result.output
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("exe", ["/home/ops/venv/bin/vrclip-edge", "/tmp/venv/bin/vrclip-edge", "venv/bin/x"])
def test_executables_the_service_cannot_see_are_refused(tmp_path: Path, exe: str) -> None:
    result = runner.invoke(app, ["--prefix", str(tmp_path), "--exec", exe])
    assert isinstance(result.exception, UserError) and exe in str(result.exception)
    assert not any(tmp_path.iterdir())
