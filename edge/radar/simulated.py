"""Run the simulated VNA and switch controller together: one asyncio loop, one shared front end.

Three ways in: `run_simulated_radar` (a coroutine, for callers that own a loop),
`serve_simulated_radar` (blocking, for the CLI) and `SimulatedRadar` (a context manager that serves
from a background thread, for tests and benches; port 0 picks free ports).

The loop uses `selectors.SelectSelector` on purpose: epoll and poll take their timeout in whole
milliseconds and asyncio rounds it *up*, so a 1 ms sweep would routinely last 2 ms; select() takes
microseconds, which keeps the simulated sweep time honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vrclip.edge.config import SweepConfig
from vrclip.edge.errors import UserError
from vrclip.edge.geometry import ArrayGeometry, load_geometry
from vrclip.edge.radar.frontend import SimulatedFrontEnd
from vrclip.edge.radar.sim_switch import SimulatedSwitch, SwitchServer
from vrclip.edge.radar.sim_vna import DEFAULT_SETTLE_PER_POINT_S, FAULTS, SimulatedVna, SimVnaModel, VnaServer
from vrclip.edge.sim.radar import FrontEndErrors
from vrclip.edge.sim.scene import Scene, SceneSpec

#: How long SimulatedRadar.start() waits for the servers to listen.
_START_TIMEOUT_S = 30.0


class BusyPollSelector(selectors.SelectSelector):
    """select() that polls instead of sleeping: the simulator answers like an instrument, always awake.

    A real VNA has its own processor waiting on the link. A Python process that sleeps in select()
    between messages pays the kernel's wake-up latency on every message instead (0.1-0.3 ms on a
    small VM, measured by `vrclip-edge sim bench-acquisition`), which would be charged to the driver
    as acquisition overhead. It costs one CPU core while the simulator serves, so only the
    acquisition benchmark's separate simulator process uses it.
    """

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        end = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            events = super().select(0)
            if events or (end is not None and time.monotonic() >= end):
                return events


def vna_resource(host: str, port: int | None) -> str:
    """The VISA raw-socket resource of a simulated VNA listening on host:port."""
    return f"TCPIP0::{host}::{port}::SOCKET"


def switch_url(host: str, port: int) -> str:
    """The switch client's address of a simulated controller listening on host:port."""
    return f"tcp://{host}:{port}"


def new_event_loop(busy_poll: bool = False) -> asyncio.AbstractEventLoop:
    """An event loop whose timers have microsecond resolution (see module docstring)."""
    return asyncio.SelectorEventLoop(BusyPollSelector() if busy_poll else selectors.SelectSelector())


@dataclass
class RadarSimState:
    """What a running simulation exposes: the shared front end, both instruments and their ports."""

    host: str
    front_end: SimulatedFrontEnd
    vna: SimulatedVna | None
    switch: SimulatedSwitch
    vna_port: int | None
    switch_port: int

    @property
    def vna_resource(self) -> str:
        """The VISA resource string the real driver uses to reach the simulated VNA."""
        return vna_resource(self.host, self.vna_port)

    @property
    def switch_url(self) -> str:
        return switch_url(self.host, self.switch_port)


def make_front_end(
    scene_spec: SceneSpec | None = None,
    geometry: ArrayGeometry | None = None,
    *,
    errors: FrontEndErrors | None = None,
    seed: int | None = None,
    clock: Callable[[], float] | None = None,
    epoch_ns: int | None = None,
) -> SimulatedFrontEnd:
    spec = scene_spec or SceneSpec()
    return SimulatedFrontEnd(
        Scene(spec),
        geometry or load_geometry(),
        errors=errors,
        seed=spec.seed if seed is None else seed,
        clock=clock,
        epoch_ns=epoch_ns,
    )


async def run_simulated_radar(
    host: str = "127.0.0.1",
    vna_port: int = 5025,
    switch_port: int = 5026,
    scene_spec: SceneSpec | None = None,
    sweep: SweepConfig | None = None,
    dialect: str = "keysight",
    *,
    geometry: ArrayGeometry | None = None,
    front_end: SimulatedFrontEnd | None = None,
    sweep_time_s: float | None = None,
    settle_per_point_s: float = DEFAULT_SETTLE_PER_POINT_S,
    switch_settle_s: float = 0.0,
    errors: FrontEndErrors | None = None,
    clock: Callable[[], float] | None = None,
    epoch_ns: int | None = None,
    with_vna: bool = True,
    vna_model: SimVnaModel | None = None,
    vna_fault: str | None = None,
    on_ready: Callable[[RadarSimState], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the simulated VNA (unless with_vna=False) and switch until `stop` is set or cancelled.

    `sweep` is the instrument's power-on setting (the driver overrides it); it also pre-builds the
    radar model so the first sweep is not slowed by computing the static room response.
    `vna_model` replaces the simulated instrument's identity and limits; `vna_fault` makes it
    misbehave from the start (see sim_vna.FAULTS; `state.vna.fault` changes it while serving).
    """
    if vna_fault is not None and vna_fault not in FAULTS:
        raise UserError(f"VNA fault {vna_fault!r} is not known; choose one of {', '.join(FAULTS)}")
    fe = front_end or make_front_end(scene_spec, geometry, errors=errors, clock=clock, epoch_ns=epoch_ns)
    switch = SimulatedSwitch(fe, settle_s=switch_settle_s)
    switch_server = SwitchServer(switch)
    vna = vna_server = None
    if with_vna:
        vna = SimulatedVna(
            fe,
            dialect,
            model=vna_model,
            sweep=sweep,
            sweep_time_s=sweep_time_s,
            settle_per_point_s=settle_per_point_s,
        )
        vna.fault = vna_fault
        vna_server = VnaServer(vna)
        if sweep is not None:
            fe.simulator(sweep)
    try:
        bound_vna = await vna_server.start(host, vna_port) if vna_server else None
        bound_switch = await switch_server.start(host, switch_port)
        if on_ready is not None:
            on_ready(RadarSimState(host, fe, vna, switch, bound_vna, bound_switch))
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        if vna_server is not None:
            await vna_server.close()
        await switch_server.close()


def serve_simulated_radar(**kwargs: object) -> None:
    """Blocking form of run_simulated_radar for the CLI; Ctrl-C stops it cleanly."""
    loop = new_event_loop()
    try:
        loop.run_until_complete(run_simulated_radar(**kwargs))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


class SimulatedRadar:
    """Serve the simulated radar from a background thread: `with SimulatedRadar(...) as sim: sim.vna_port`.

    Takes run_simulated_radar's keyword arguments. `stop()` closes the listening sockets and ends the
    loop (connected clients see their connection drop, as when an instrument is switched off); a new
    SimulatedRadar on the same ports is "the instrument after a reboot".
    """

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("vna_port", 0)
        kwargs.setdefault("switch_port", 0)
        self._kwargs = kwargs
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._state: RadarSimState | None = None
        self._error: BaseException | None = None

    @property
    def state(self) -> RadarSimState:
        if self._state is None:
            raise RuntimeError("the simulated radar is not running")
        return self._state

    @property
    def vna_port(self) -> int:
        port = self.state.vna_port
        if port is None:
            raise RuntimeError("this simulated radar runs without a VNA")
        return port

    @property
    def switch_port(self) -> int:
        return self.state.switch_port

    @property
    def vna_resource(self) -> str:
        return self.state.vna_resource

    @property
    def switch_url(self) -> str:
        return self.state.switch_url

    @property
    def front_end(self) -> SimulatedFrontEnd:
        return self.state.front_end

    def start(self) -> SimulatedRadar:
        self._thread = threading.Thread(target=self._run, name="simulated-radar", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError(f"simulated radar did not start within {_START_TIMEOUT_S} s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _run(self) -> None:
        loop = self._loop = new_event_loop()
        self._stop = asyncio.Event()

        def ready(state: RadarSimState) -> None:
            self._state = state
            self._ready.set()

        try:
            loop.run_until_complete(
                run_simulated_radar(**self._kwargs, on_ready=ready, stop=self._stop)  # type: ignore[arg-type]
            )
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        loop, stop_event, thread = self._loop, self._stop, self._thread
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        if thread is not None:
            thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> SimulatedRadar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
