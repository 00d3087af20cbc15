"""A ZED-like depth camera: a depth image and the floor position of each person it can see.

Depth noise grows with the square of distance, as it does for any stereo camera, so far-away
positions are less trustworthy; people hidden by an occluder are not reported at all.
"""

from __future__ import annotations

import numpy as np
from vrclip.edge.config import ZedConfig
from vrclip.edge.sim.camera import PinholeCamera, SceneRenderer
from vrclip.edge.sim.scene import Scene, SceneState

#: Stereo depth error (1 sigma) at 1 m; scales with distance squared.
DEPTH_NOISE_AT_1M = 0.004
#: Minimum visible share of a body before the ZED's body tracking reports it.
MIN_VISIBLE_FRACTION = 0.25


class DepthSimulator:
    def __init__(self, scene: Scene, zed: ZedConfig, hfov_deg: float = 110.0, seed: int = 0) -> None:
        self.zed = zed
        self.camera = PinholeCamera(zed.depth_width, zed.depth_height, hfov_deg, tuple(zed.position_m))
        self.renderer = SceneRenderer(scene, self.camera, seed=seed, colour=False)
        self._rng = np.random.default_rng(seed + 1)

    def observe(self, state: SceneState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (depth (h,w) float32, NaN beyond range; positions (K,2) of seen people; seen mask (P,))."""
        _, depth = self.renderer.render(state)
        noisy = depth + self._rng.standard_normal(depth.shape).astype(np.float32) * (
            DEPTH_NOISE_AT_1M * depth**2
        )
        noisy[~np.isfinite(depth) | (depth > self.zed.max_depth_m)] = np.nan
        seen = np.zeros(len(state.people), bool)
        positions = []
        origin = np.asarray(self.zed.position_m)
        for i, person in enumerate(state.people):
            distance = float(np.hypot(*(person.position - origin[:2])))
            if (
                distance > self.zed.max_depth_m
                or self.renderer.visible_fraction(person) < MIN_VISIBLE_FRACTION
            ):
                continue
            seen[i] = True
            sigma = 0.01 + DEPTH_NOISE_AT_1M * distance**2
            positions.append(person.position + self._rng.normal(0.0, sigma, 2))
        pos = np.asarray(positions, np.float32).reshape(-1, 2)
        return noisy.astype(np.float32), pos, seen
