"""`vrclip-edge timebase ...`: run the time server, wait for a start, and measure start precision.

`serve` and `wait` take their port, lead, clock (and, for `wait`, the server's host) from the config's
`[sync.time_server]` and `sync.clock` with `--config`; their options override the file.
Errors are raised as UserError and left to the top-level CLI handler, which prints them as one line.
"""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from vrclip.edge.config import SyncConfig, load_config
from vrclip.edge.errors import UserError
from vrclip.edge.frames import CLOCK_REALTIME
from vrclip.edge.timebase.clock import known_clocks, now_ns
from vrclip.edge.timebase.clock_sync import unsynchronised_warning
from vrclip.edge.timebase.start_protocol import (
    DEFAULT_MAX_CLIENTS,
    DEFAULT_PORT,
    StartServer,
    start_at,
    wait_for_start,
)

timebase_app = typer.Typer(
    name="timebase",
    help="Shared start instant for all sensors: time server, device client, precision bench.",
    no_args_is_help=True,
    add_completion=False,
)


CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="Config TOML: its sync.time_server and sync.clock keys give the defaults (built-in defaults "
    "without it); the options here override them.",
)


def _sync(config: Path | None) -> SyncConfig:
    return load_config(config).sync


def _console() -> Console:
    # Created per call so that output goes to whatever sys.stdout is now (CliRunner swaps it).
    return Console(highlight=False, soft_wrap=True)


@timebase_app.command()
def serve(
    host: str = typer.Option("0.0.0.0", help="Address to listen on (all interfaces by default)."),
    port: int | None = typer.Option(
        None,
        min=0,
        max=65535,
        help=f"TCP port, 0 = any free port (default: sync.time_server.port, {DEFAULT_PORT}).",
        show_default=False,
    ),
    clients: int = typer.Option(
        1, min=1, max=DEFAULT_MAX_CLIENTS, help="Arm once this many devices have said hello."
    ),
    lead: float | None = typer.Option(
        None,
        help="Seconds between arming and the start instant (default: sync.time_server.start_lead_s, "
        f"{SyncConfig().time_server.start_lead_s:g}).",
        show_default=False,
    ),
    clock: str | None = typer.Option(
        None,
        help=f"Clock of the start instant: {' or '.join(known_clocks())} (default: sync.clock, "
        f"{SyncConfig().clock}).",
        show_default=False,
    ),
    timeout: float = typer.Option(
        0.0, help="Arm anyway after this many seconds even if fewer devices joined (0 = wait forever)."
    ),
    session: str | None = typer.Option(None, help="Session id to broadcast (default: time-based)."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Wait for N devices, arm, print the target, and serve late joiners until the start instant."""
    sync = _sync(config)
    out = _console()
    server = StartServer(
        host,
        sync.time_server.port if port is None else port,
        expected_clients=clients,
        lead_s=sync.time_server.start_lead_s if lead is None else lead,
        arm_timeout_s=timeout if timeout > 0 else None,
        clock=sync.clock if clock is None else clock,
        session=session,
    )
    with server:
        out.print(f"time server listening on {server.address}, waiting for {clients} device(s)")
        signal = None
        joined: list[str] = []
        while signal is None:
            signal = server.wait_armed(0.5)
            if signal is None:
                joined = _report_devices(out, joined, server.clients, clients)
        out.print(
            f"armed session {signal.session}: start at target_ns={signal.target_ns} ({signal.clock}), "
            f"lead {server.lead_s:g} s, "
            f"devices: {', '.join(server.armed_clients) or 'none'}"
        )
        # Keep serving until the start instant so that a device that reconnects late still gets it.
        while now_ns(signal.clock) < signal.target_ns:
            time.sleep(min(0.1, max(0.0, (signal.target_ns - now_ns(signal.clock)) / 1e9)))
        out.print(f"started; signal delivered to {len(server.served)} device(s)")


def _report_devices(out: Console, before: list[str], now: list[str], expected: int) -> list[str]:
    """Print each device that said hello or left since `before`, with the count toward arming.

    A server waiting for N devices otherwise printed nothing until it armed: a site engineer could
    not tell which box was missing, nor that one box was counted twice (two connections under one
    name: cloned hostnames, or a rebooted box whose old connection the server still holds).
    """
    gone, new = Counter(before) - Counter(now), Counter(now) - Counter(before)
    for name in gone.elements():
        out.print(f"device {name} left ({len(now)}/{expected})")
    for name in new.elements():
        out.print(f"device {name} said hello ({len(now)}/{expected})")
    return now


@timebase_app.command()
def wait(
    host: str | None = typer.Option(
        None,
        help=f"Time server host (default: sync.time_server.host, {SyncConfig().time_server.host}).",
        show_default=False,
    ),
    port: int | None = typer.Option(
        None,
        min=1,
        max=65535,
        help=f"Time server TCP port (default: sync.time_server.port, {DEFAULT_PORT}).",
        show_default=False,
    ),
    name: str = typer.Option(socket.gethostname(), help="This device's name, sent in the hello."),
    timeout: float = typer.Option(
        60.0, help="Give up after this many seconds without a start signal (at most a week)."
    ),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Wait for the start signal, sleep until its target, print the actual start and its error."""
    server = _sync(config).time_server
    signal = wait_for_start(
        server.host if host is None else host, server.port if port is None else port, name, timeout
    )
    if signal.clock == CLOCK_REALTIME:
        unsynced = unsynchronised_warning()
        if unsynced is not None:
            typer.echo(f"warning: {unsynced}", err=True)
    actual = start_at(signal)
    err_us = (actual - signal.target_ns) / 1e3
    _console().print(
        f"session {signal.session}: started at {actual} ns ({signal.clock}), "
        f"target {signal.target_ns} ns, error {err_us:+.1f} µs"
    )


def run_bench(clients: int, lead_s: float, repeats: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Measure start precision on loopback: one server, ``clients`` device threads, ``repeats`` sessions.

    All clients are threads of this process, so the figures include GIL contention at wake-up (separate
    processes would not have it). They exclude clock-sync error between machines (NTP/PTP), which adds
    to the spread on a real rig and has to be measured there.
    """
    if not 1 <= clients <= DEFAULT_MAX_CLIENTS:
        raise UserError(f"--clients must be between 1 and {DEFAULT_MAX_CLIENTS}, got {clients}")
    if repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {repeats}")
    runs = [_bench_once(rep + 1, clients, lead_s, timeout_s) for rep in range(repeats)]
    spreads = [r["spread_us"] for r in runs]
    errs = [r["max_abs_error_us"] for r in runs]
    return {
        "clients": clients,
        "lead_s": lead_s,
        "repeats": repeats,
        "clock": CLOCK_REALTIME,
        "runs": runs,
        "summary": {
            "max_spread_us": max(spreads),
            "median_spread_us": statistics.median(spreads),
            "max_abs_error_us": max(errs),
            "median_max_abs_error_us": statistics.median(errs),
        },
    }


def _bench_once(rep: int, clients: int, lead_s: float, timeout_s: float) -> dict[str, Any]:
    """One session of the bench: every device thread waits for the signal and records its wake-up."""
    actual: list[int | None] = [None] * clients
    errors: list[BaseException] = []
    with StartServer("127.0.0.1", 0, expected_clients=clients, lead_s=lead_s, clock=CLOCK_REALTIME) as srv:

        def device(i: int) -> None:
            try:
                signal = wait_for_start("127.0.0.1", srv.port, f"bench-{i}", timeout_s)
                actual[i] = start_at(signal)
            except BaseException as exc:  # re-raised below in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=device, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout_s + lead_s + 5)
        signal = srv.signal
    if errors:
        raise errors[0]
    starts = [a for a in actual if a is not None]
    if signal is None or len(starts) != clients:
        raise UserError(f"bench repeat {rep}: not every device started within {timeout_s:g} s")
    return {
        "repeat": rep,
        "session": signal.session,
        "target_ns": signal.target_ns,
        "actual_ns": starts,
        "spread_us": (max(starts) - min(starts)) / 1e3,
        "max_abs_error_us": max(abs(a - signal.target_ns) for a in starts) / 1e3,
    }


@timebase_app.command()
def bench(
    clients: int = typer.Option(8, min=1, max=DEFAULT_MAX_CLIENTS, help="Device threads per session."),
    lead: float = typer.Option(0.5, help="Seconds between arming and the start instant."),
    repeats: int = typer.Option(5, min=1, help="Number of sessions to measure."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Measure start spread and error vs target on loopback (server + N client threads)."""
    result = run_bench(clients, lead, repeats)
    table = Table(title=f"start precision, {clients} clients, lead {lead:g} s (loopback, {CLOCK_REALTIME})")
    table.add_column("repeat", justify="right")
    table.add_column("session")
    table.add_column("spread µs", justify="right")
    table.add_column("max |actual-target| µs", justify="right")
    for r in result["runs"]:
        table.add_row(str(r["repeat"]), r["session"], f"{r['spread_us']:.1f}", f"{r['max_abs_error_us']:.1f}")
    s = result["summary"]
    table.add_row("max", "", f"{s['max_spread_us']:.1f}", f"{s['max_abs_error_us']:.1f}")
    out = _console()
    out.print(table)
    if json_out is not None:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write bench results to {json_out}: {exc.strerror or exc}") from None
        out.print(f"wrote {json_out}")
