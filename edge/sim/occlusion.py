"""Which straight paths pass through an occluder: one vectorised test shared by radar and cameras."""

from __future__ import annotations

import numpy as np
from vrclip.edge.sim.scene import Occluder


def crosses(p0: np.ndarray, p1: np.ndarray, occluder: Occluder) -> np.ndarray:
    """True where the 3D segment p0->p1 passes through the occluder's slab below its top edge.

    p0, p1: broadcastable (..., 3) arrays. The slab is the vertical plane over the floor segment
    (x0,y0)-(x1,y1) from the floor to height_m; thickness matters only for the radar's delay.
    """
    a = np.array([occluder.x0, occluder.y0])
    b = np.array([occluder.x1, occluder.y1])
    p0, p1 = np.broadcast_arrays(np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64))
    d = p1[..., :2] - p0[..., :2]
    e = b - a
    denom = d[..., 0] * e[1] - d[..., 1] * e[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = a - p0[..., :2]
        t = (diff[..., 0] * e[1] - diff[..., 1] * e[0]) / denom  # along the path
        u = (diff[..., 0] * d[..., 1] - diff[..., 1] * d[..., 0]) / denom  # along the occluder
    hit = (np.abs(denom) > 1e-12) & (t > 0.0) & (t < 1.0) & (u >= 0.0) & (u <= 1.0)
    z = p0[..., 2] + np.where(hit, t, 0.0) * (p1[..., 2] - p0[..., 2])
    return hit & (z <= occluder.height_m)
