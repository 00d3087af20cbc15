"""`vrclip-edge sim ...` (the typer sub-app): serving the simulated instruments and the acquisition bench."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner
from vrclip.edge.config import SweepConfig
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.sim_cli import sim_app
from vrclip.edge.radar.source import RadarSource
from vrclip.edge.radar.switch import SwitchClient
from vrclip.edge.radar.vna import VnaDriver

CLI = "from vrclip.edge.radar.sim_cli import sim_app; sim_app()"


def start_cli(*args: str) -> subprocess.Popen:
    """The sim CLI in a child process with Ctrl-C (SIGINT) at its default, as at a terminal. A shell
    that runs the suite in the background (`make test &`, nohup) ignores SIGINT, children inherit
    that, and Python then installs no KeyboardInterrupt handler: the child would never stop."""
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_lines_until(proc: subprocess.Popen, pattern: str, timeout_s: float = 30.0) -> str:
    """Collect stdout until a line matches; fail with what was printed if it never does.

    Reads the raw file descriptor: a buffered readline() could swallow several lines at once and
    leave select() waiting on an empty pipe.
    """
    fd = proc.stdout.fileno()
    text = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536).decode()
            if not chunk:
                break
            text += chunk
            if any(re.search(pattern, line) for line in text.splitlines()):
                return text
    proc.kill()
    raise AssertionError(
        f"no line matching {pattern!r}; got {text!r}; stderr {proc.stderr.read().decode()!r}"
    )


def test_vna_command_serves_both_instruments_until_interrupted() -> None:
    args = [
        "vna",
        "--port",
        "0",
        "--switch-port",
        "0",
        "--dialect",
        "rs",
        "--people",
        "2",
        "--sweep-time-ms",
        "0.2",
    ]
    proc = start_cli(*args)
    try:
        text = read_lines_until(proc, r"Ctrl-C to stop")
        resource = re.search(r"resource (TCPIP0::\S+::SOCKET)", text).group(1)
        switch_url = re.search(r"port (tcp://\S+)", text).group(1)
        sweep = SweepConfig(points=21)
        source = RadarSource(VnaDriver(resource, "rs", sweep), SwitchClient(switch_url), load_geometry())
        with source:
            frame = source.read_frame()
        assert frame.s21.shape == (144, 21)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bench_acquisition_prints_the_overhead() -> None:
    result = CliRunner().invoke(
        sim_app,
        [
            "bench-acquisition",
            "--frames",
            "1",
            "--points",
            "21",
            "--sweep-time-ms",
            "0.5",
            "--max-overhead-pct",
            "1e6",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "144 channels x 21 points, sweep 0.500 ms" in result.output
    assert "ideal frame 72.0 ms" in result.output
    assert re.search(r"overhead: -?\d+\.\d % \(median\)", result.output)


def test_bench_fails_above_the_allowed_overhead() -> None:
    result = CliRunner().invoke(
        sim_app,
        ["bench-acquisition", "--in-process", "--frames", "1", "--points", "21", "--sweep-time-ms", "0.05",
         "--max-overhead-pct", "0"],
    )  # fmt: skip
    assert result.exit_code == 1 and "FAIL: overhead above 0 %" in result.output


def test_switch_command_serves_the_controller_alone() -> None:
    proc = start_cli("switch", "--port", "0")
    try:
        text = read_lines_until(proc, r"Ctrl-C to stop")
        url = re.search(r"port (tcp://\S+?);", text).group(1)
        with SwitchClient(url) as client:
            assert client.size() == (12, 12)
            client.self_test()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("option", "value"), [("--dialect", "anritsu"), ("--occlusion", "fog"), ("--fault", "smoke")]
)
def test_bad_choices_are_user_errors(option: str, value: str) -> None:
    result = CliRunner().invoke(sim_app, ["vna", option, value])
    assert isinstance(result.exception, UserError) and value in str(result.exception)


@pytest.mark.parametrize("command", ["switch", "vna"])
def test_a_port_already_in_use_is_a_user_error_naming_it(command: str) -> None:
    """A second simulator on the same port ended with asyncio's OSError traceback (exit 1)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [command, "--port", port] + (["--switch-port", "0"] if command == "vna" else [])
        result = CliRunner().invoke(sim_app, args)
    assert isinstance(result.exception, UserError), result.output
    message = str(result.exception)
    assert f"127.0.0.1:{port}" in message and "choose another" in message
