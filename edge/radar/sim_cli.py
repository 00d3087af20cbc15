"""`vrclip-edge sim ...`: run the simulated radar instruments, and benchmark acquisition against them.

Errors are raised as UserError and left to the top-level CLI handler, which prints them as one line.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from vrclip.edge.config import load_config
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import load_geometry
from vrclip.edge.radar.bench import bench_acquisition
from vrclip.edge.radar.dialects import DATA_FORMATS, DIALECTS
from vrclip.edge.radar.sim_vna import DEFAULT_SETTLE_PER_POINT_S, FAULTS
from vrclip.edge.radar.simulated import RadarSimState, make_front_end, serve_simulated_radar
from vrclip.edge.sim.scene import OCCLUSION_PRESETS, SceneSpec, default_people

sim_app = typer.Typer(
    name="sim",
    help="Simulated radar instruments (SCPI VNA + switch controller) over TCP, and an acquisition bench.",
    no_args_is_help=True,
    add_completion=False,
)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _check_choice(option: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise UserError(f"{option} {value!r}: choose one of {', '.join(allowed)}")


@sim_app.command()
def vna(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(5025, min=0, max=65535, help="VNA SCPI port (0 = any free port)."),
    switch_port: int = typer.Option(
        5026, min=0, max=65535, help="Switch controller port (0 = any free port)."
    ),
    dialect: str = typer.Option("keysight", help=f"SCPI dialect: {', '.join(DIALECTS)}."),
    people: int = typer.Option(1, min=1, max=64, help="People walking in the scene."),
    occlusion: str = typer.Option("none", help=f"Occluders: {', '.join(OCCLUSION_PRESETS)}."),
    seed: int = typer.Option(0, help="Scene and noise seed."),
    sweep_time_ms: float = typer.Option(
        0.0, min=0.0, help="Fixed duration of every sweep; 0 = points / IF bandwidth + per-point settling."
    ),
    settle_us: float = typer.Option(
        DEFAULT_SETTLE_PER_POINT_S * 1e6, min=0.0, help="Per-point settling time when --sweep-time-ms is 0."
    ),
    config: Path | None = typer.Option(None, help="Edge config: array geometry, room and power-on sweep."),
    fault: str | None = typer.Option(
        None, help=f"Make the VNA misbehave, to rehearse degradation: {', '.join(FAULTS)}."
    ),
) -> None:
    """Serve the simulated VNA and the switch controller together (one shared RF path) until Ctrl-C."""
    _check_choice("--dialect", dialect, list(DIALECTS))
    if fault is not None:
        _check_choice("--fault", fault, FAULTS)
    _check_choice("--occlusion", occlusion, OCCLUSION_PRESETS)
    cfg = load_config(config)
    spec = SceneSpec(room=cfg.room, people=default_people(people), occlusion=occlusion, seed=seed)
    front_end = make_front_end(spec, load_geometry(cfg.radar.array))
    out = _console()

    def ready(state: RadarSimState) -> None:
        out.print(f"simulated VNA ({dialect}) listening: resource {state.vna_resource}")
        out.print(f"simulated switch listening: port {state.switch_url}")
        out.print("Ctrl-C to stop")
        out.file.flush()  # a supervisor or test reading a pipe needs the ports now, not at exit

    serve_simulated_radar(
        host=host,
        vna_port=port,
        switch_port=switch_port,
        sweep=cfg.radar.sweep,
        dialect=dialect,
        front_end=front_end,
        sweep_time_s=sweep_time_ms / 1e3 if sweep_time_ms > 0 else None,
        settle_per_point_s=settle_us * 1e-6,
        vna_fault=fault,
        on_ready=ready,
    )


@sim_app.command()
def switch(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(5026, min=0, max=65535, help="TCP port (0 = any free port)."),
    settle_us: float = typer.Option(0.0, min=0.0, help="Relay settling time before each OK."),
    config: Path | None = typer.Option(None, help="Edge config: the array geometry gives the matrix size."),
) -> None:
    """Serve the simulated switch controller alone until Ctrl-C."""
    cfg = load_config(config)
    front_end = make_front_end(None, load_geometry(cfg.radar.array))
    out = _console()

    def ready(state: RadarSimState) -> None:
        out.print(
            f"simulated switch ({front_end.n_tx} Tx x {front_end.n_rx} Rx) listening: "
            f"port tcp://{host}:{state.switch_port}; Ctrl-C to stop"
        )
        out.file.flush()

    serve_simulated_radar(
        host=host,
        switch_port=port,
        front_end=front_end,
        with_vna=False,
        switch_settle_s=settle_us * 1e-6,
        on_ready=ready,
    )


@sim_app.command("bench-acquisition")
def bench_acquisition_cmd(
    points: int = typer.Option(201, min=2, max=100_001, help="Sweep points."),
    sweep_time_ms: float = typer.Option(
        1.0, min=0.0, help="Simulated sweep time; 0 = points / IF bandwidth + per-point settling."
    ),
    if_bandwidth_hz: float = typer.Option(
        100e3, min=1.0, help="IF bandwidth (sets the sweep time when it is 0)."
    ),
    frames: int = typer.Option(5, min=1, max=1000, help="Timed frames (after one warm-up frame)."),
    dialect: str = typer.Option("keysight", help=f"SCPI dialect: {', '.join(DIALECTS)}."),
    data_format: str = typer.Option(
        "real32", "--format", help=f"Data transfer format: {', '.join(DATA_FORMATS)}."
    ),
    sequential: bool = typer.Option(False, help="Disable the switch/read overlap (to see what it saves)."),
    step: str = typer.Option(
        "trigger",
        help="Switch stepping: trigger (on the VNA's sweep-end pulse, radar.switch.step = 'trigger') "
        "or command (a NEXT round trip per channel).",
    ),
    in_process: bool = typer.Option(False, help="Run the simulator in this process instead of its own."),
    busy_poll: bool = typer.Option(
        True,
        help="The simulator process polls instead of sleeping, answering like an instrument that is "
        "always awake (costs one core while it runs; --no-busy-poll adds the kernel's wake-up latency).",
    ),
    max_overhead_pct: float = typer.Option(10.0, min=0.0, help="Exit with status 1 above this overhead."),
    realtime: bool = typer.Option(
        False,
        help="Run bench and simulator under SCHED_FIFO (root): measures the software, not the neighbours.",
    ),
) -> None:
    """Time full 144-channel frames through the real driver and switch client against the simulators."""
    _check_choice("--dialect", dialect, list(DIALECTS))
    _check_choice("--format", data_format, DATA_FORMATS)
    _check_choice("--step", step, ["trigger", "command"])
    result = bench_acquisition(
        points=points,
        sweep_time_s=sweep_time_ms / 1e3 if sweep_time_ms > 0 else None,
        if_bandwidth_hz=if_bandwidth_hz,
        frames=frames,
        dialect=dialect,
        data_format=data_format,  # type: ignore[arg-type]
        pipelined=not sequential,
        separate_process=not in_process,
        realtime=realtime,
        step=step,
        busy_poll=busy_poll and not in_process,
    )
    out = _console()
    out.print(
        f"{result.channels} channels x {result.points} points, sweep {result.sweep_time_s * 1e3:.3f} ms, "
        f"{dialect} {data_format}, {'pipelined' if result.pipelined else 'sequential'}, "
        f"switch stepped by {'VNA trigger' if result.step == 'trigger' else 'command'}, "
        f"simulator in {result.simulator}"
    )
    out.print(
        f"ideal frame {result.ideal_s * 1e3:.1f} ms; measured median {result.median_s * 1e3:.1f} ms, "
        f"best {result.best_s * 1e3:.1f} ms over {len(result.frame_times_s)} frames"
    )
    out.print(
        f"overhead: {result.overhead_pct:.1f} % (median), {result.best_overhead_pct:.1f} % (best); "
        f"{result.per_channel_overhead_s * 1e6:.0f} µs per channel beyond the sweep"
    )
    if result.overhead_pct > max_overhead_pct:
        out.print(f"FAIL: overhead above {max_overhead_pct:g} %")
        raise typer.Exit(code=1)
