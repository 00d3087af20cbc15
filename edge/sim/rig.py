"""The simulated rig: radar, RGB camera and ZED observing one scene on one simulated clock.

Frames come out in timestamp order, each stamped with the simulated clock (ns since the
configured start) and carrying the ground truth, exactly as the recorder and the trainer expect
from a real session.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import camera_from_config
from vrclip.edge.frames import CLOCK_SIMULATED, CameraFrame, DepthFrame, GroundTruth, RadarFrame
from vrclip.edge.geometry import ArrayGeometry, load_geometry
from vrclip.edge.sim.camera import SceneRenderer
from vrclip.edge.sim.depth import DepthSimulator
from vrclip.edge.sim.radar import SIMULATED_FRONT_END_SEED, FrontEndErrors, RadarSimulator
from vrclip.edge.sim.scene import Scene, SceneSpec, SceneState

Frame = RadarFrame | CameraFrame | DepthFrame
STREAMS = ("radar", "camera", "depth")


@dataclass(frozen=True)
class RigRates:
    radar_hz: float
    camera_hz: float
    depth_hz: float


class SimulatedRig:
    """All simulated sensors of one session. Deterministic for (config, scene spec, seed)."""

    def __init__(
        self,
        config: EdgeConfig,
        spec: SceneSpec,
        *,
        start_ns: int | None = None,
        streams: tuple[str, ...] = STREAMS,
        front_end_seed: int = SIMULATED_FRONT_END_SEED,
    ) -> None:
        unknown = set(streams) - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown streams {sorted(unknown)}")
        self.config = config
        self.scene = Scene(spec)
        self.geometry: ArrayGeometry = load_geometry(config.radar.array)
        self.streams = streams
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self.rates = RigRates(
            config.radar.frame_rate_hz, config.camera.fps, config.zed.fps if config.zed.enabled else 0.0
        )
        self._rng = np.random.default_rng(spec.seed)
        self.radar = RadarSimulator(
            self.scene,
            self.geometry,
            config.radar.sweep,
            FrontEndErrors.draw(self.geometry.n_channels, front_end_seed),
        )
        self.camera = SceneRenderer(self.scene, camera_from_config(config), seed=spec.seed)
        self.depth = DepthSimulator(self.scene, config.zed, seed=spec.seed) if config.zed.enabled else None

    @property
    def freqs_hz(self) -> np.ndarray:
        return self.radar.freqs_hz

    def truth(self, state: SceneState, visible: np.ndarray | None = None) -> GroundTruth:
        people = state.people
        if visible is None:
            visible = np.array([self.camera.visible_fraction(p) >= 0.25 for p in people], bool)
        return GroundTruth(
            identities=tuple(p.identity.name for p in people),
            positions=np.array([p.position for p in people], np.float32).reshape(-1, 2),
            visible=visible,
        )

    def radar_frame(self, seq: int, t_s: float) -> RadarFrame:
        state = self.scene.state(t_s)
        return RadarFrame(
            seq, self._stamp(t_s), CLOCK_SIMULATED, self.radar.frame(state, self._rng), self.truth(state)
        )

    def camera_frame(self, seq: int, t_s: float) -> CameraFrame:
        state = self.scene.state(t_s)
        rgb, _ = self.camera.render(state)
        return CameraFrame(seq, self._stamp(t_s), CLOCK_SIMULATED, rgb, self.truth(state))

    def depth_frame(self, seq: int, t_s: float) -> DepthFrame:
        assert self.depth is not None
        state = self.scene.state(t_s)
        depth, positions, _ = self.depth.observe(state)
        return DepthFrame(seq, self._stamp(t_s), CLOCK_SIMULATED, depth, positions, self.truth(state))

    def _stamp(self, t_s: float) -> int:
        return self.start_ns + round(t_s * 1e9)

    def frames(self, duration_s: float) -> Iterator[Frame]:
        """Every stream's frames over [0, duration), merged in timestamp order."""
        makers = {"radar": self.radar_frame, "camera": self.camera_frame, "depth": self.depth_frame}
        rates = {"radar": self.rates.radar_hz, "camera": self.rates.camera_hz, "depth": self.rates.depth_hz}
        queue: list[tuple[float, int, str]] = [
            (0.0, order, name) for order, name in enumerate(self.streams) if rates[name] > 0
        ]
        heapq.heapify(queue)
        counts = dict.fromkeys(STREAMS, 0)
        while queue:
            t_s, order, name = heapq.heappop(queue)
            if t_s >= duration_s:
                continue
            yield makers[name](counts[name], t_s)
            counts[name] += 1
            heapq.heappush(queue, (counts[name] / rates[name], order, name))

    def frame_count(self, duration_s: float) -> int:
        """How many frames `frames(duration_s)` yields (for progress bars)."""
        rates = {"radar": self.rates.radar_hz, "camera": self.rates.camera_hz, "depth": self.rates.depth_hz}
        return sum(int(np.ceil(duration_s * rates[s] - 1e-9)) for s in self.streams if rates[s] > 0)
