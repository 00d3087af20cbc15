"""The simulated RF front end that the simulated VNA and switch controller share.

On the rig the switch matrix decides which Tx/Rx antenna pair the VNA sees; in simulation the two
simulators are separate servers, so they meet here: the switch sets `selected`, the VNA measures the
S21 of whatever is selected, from the same synthetic scene every other simulated sensor uses. Both
servers run in one asyncio loop, so this state needs no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from vrclip.edge.config import SweepConfig
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.sim.radar import FrontEndErrors, RadarSimulator
from vrclip.edge.sim.scene import Scene


class SimulatedFrontEnd:
    """Switch position + the world behind the antennas.

    `clock` returns scene time in seconds; by default the CLOCK_REALTIME seconds since `epoch_ns`
    (default: construction), so simulators of other sensors given the same epoch see the same scene.
    """

    def __init__(
        self,
        scene: Scene,
        geometry: ArrayGeometry,
        *,
        errors: FrontEndErrors | None = None,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
        epoch_ns: int | None = None,
    ) -> None:
        self.scene = scene
        self.geometry = geometry
        self.errors = errors or FrontEndErrors.draw(geometry.n_channels)
        self.rng = np.random.default_rng(seed)
        self.n_tx = len(geometry.tx_names)
        self.n_rx = len(geometry.rx_names)
        self._channel_of = {(int(t), int(r)): c for c, (t, r) in enumerate(geometry.pairs)}
        self.epoch_ns = time.time_ns() if epoch_ns is None else epoch_ns
        self._clock = clock
        #: (tx, rx) the switch connects, or None while the switch is open (after power-up).
        self.selected: tuple[int, int] | None = None
        #: When set, the switch controller's self-test fails with this reason (fault injection).
        self.self_test_fault: str | None = None
        #: The cable from the VNA's trigger output to the switch controller's step input: called once
        #: per completed sweep while the VNA's trigger output is on.
        self.trigger_listeners: list[Callable[[], None]] = []
        self._sim: RadarSimulator | None = None
        self._sim_key: tuple[float, float, int] | None = None

    def scene_time(self) -> float:
        if self._clock is not None:
            return float(self._clock())
        return (time.time_ns() - self.epoch_ns) / 1e9

    def trigger_pulse(self) -> None:
        """The VNA's sweep-end pulse on its trigger output (rear panel), seen by whatever is wired to it."""
        for listener in self.trigger_listeners:
            listener()

    def select(self, tx: int, rx: int) -> None:
        if not (0 <= tx < self.n_tx and 0 <= rx < self.n_rx):
            raise ValueError(f"pair ({tx}, {rx}) outside the {self.n_tx}x{self.n_rx} matrix")
        self.selected = (tx, rx)

    @property
    def channel(self) -> int | None:
        """Virtual-channel index (geometry switching order) of the selected pair, None if open."""
        if self.selected is None:
            return None
        return self._channel_of.get(self.selected)

    def simulator(self, sweep: SweepConfig) -> RadarSimulator:
        """The radar simulator for this sweep; rebuilt (static clutter ~0.1 s) only when the sweep changes."""
        key = (float(sweep.start_hz), float(sweep.stop_hz), int(sweep.points))
        if self._sim is None or key != self._sim_key:
            self._sim = RadarSimulator(self.scene, self.geometry, sweep, self.errors)
            self._sim_key = key
        return self._sim

    def measure(self, sweep: SweepConfig, t_s: float) -> np.ndarray:
        """S21 (points,) complex64 of the selected path at scene time t_s; noise only if none is selected."""
        channel = self.channel
        if channel is None:
            noise = self.rng.normal(0.0, self.errors.noise_std, size=(sweep.points, 2))
            return (noise[:, 0] + 1j * noise[:, 1]).astype(np.complex64)
        sim = self.simulator(sweep)
        return sim.frame(self.scene.state(t_s), self.rng, channels=np.array([channel]))[0]
