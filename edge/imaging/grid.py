"""The pixels of a radar image: a regular grid of cell centres over the monitored floor area.

The grid is the one contract every imager, the detector and the tracker share, so pixel (iy, ix)
means the same floor position everywhere. Cell *centres* are used (not the room's edges) so that a
128-wide grid over 5 m has 128 equal cells of 39 mm, and a detection's position is a cell's centre
plus a sub-cell refinement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import ConfigError

#: Height of the 2D image plane: an adult's torso (chest ~0.72 x body height = 1.1-1.4 m), where
#: most of a person's echo comes from. Measured on simulated walks (20 scenes: ten bodies 1.57-1.94 m,
#: each in the open and fully behind the partition; share of frames within 0.15 m of the truth):
#: plane at 1.0 m (the array's height) 97.4 %, worst scene 83 %; 1.1 m 99.3 %; 1.2 m 99.2 %, worst
#: 95.9 %; 1.3 m 99.5 %, worst 95.5 %. Below the torso, legs and feet swing in and out of focus with
#: the gait and pull the peak up to 0.15 m outwards twice a stride. Two planes (0.6 + 1.2 m,
#: power-summed) reach 99.9 %, worst 98 %, but cost twice the back-projection (use the 3D mode).
DEFAULT_2D_HEIGHT_M = 1.2


@dataclass(frozen=True)
class ImagingGrid:
    """Cell centres along x, y (floor) and z (heights of the image planes), metres."""

    x_m: np.ndarray
    y_m: np.ndarray
    #: One entry for a 2D floor image, several for a 3D stack of horizontal planes.
    z_m: np.ndarray
    #: True when the image keeps its z axis, (nz, ny, nx); False gives (ny, nx) from one plane.
    is_3d: bool = False

    def __post_init__(self) -> None:
        for name in ("x_m", "y_m", "z_m"):
            axis = np.asarray(getattr(self, name), dtype=np.float64)
            if axis.ndim != 1 or axis.size == 0 or not np.all(np.isfinite(axis)):
                raise ConfigError(f"imaging grid: {name} must be a non-empty 1-D array of finite metres")
            object.__setattr__(self, name, axis)
        if not self.is_3d and self.z_m.size != 1:
            raise ConfigError(
                f"imaging grid: a 2D image has one height, got {self.z_m.size} ({self.z_m.tolist()})"
            )

    @classmethod
    def from_config(cls, cfg: EdgeConfig, height_m: float | None = None) -> ImagingGrid:
        """The grid `cfg.imaging` asks for over `cfg.room`.

        2D: one horizontal plane at `height_m`; by default `imaging.height_m` where the config
        has that key, else `DEFAULT_2D_HEIGHT_M` (torso height, see there). 3D: one plane per
        `imaging.z_levels_m`.
        """
        room, im = cfg.room, cfg.imaging
        x = _centres(room.x_min_m, room.x_max_m, im.nx)
        y = _centres(room.y_min_m, room.y_max_m, im.ny)
        if im.mode == "3d":
            if not im.z_levels_m:
                raise ConfigError("imaging.z_levels_m = []: 3D mode needs at least one height (metres)")
            return cls(x, y, np.asarray(im.z_levels_m, dtype=np.float64), is_3d=True)
        if height_m is None:
            height_m = getattr(im, "height_m", None)
        z = DEFAULT_2D_HEIGHT_M if height_m is None else float(height_m)
        return cls(x, y, np.array([z]), is_3d=False)

    @property
    def nx(self) -> int:
        return int(self.x_m.size)

    @property
    def ny(self) -> int:
        return int(self.y_m.size)

    @property
    def nz(self) -> int:
        return int(self.z_m.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the image an imager returns for this grid."""
        return (self.nz, self.ny, self.nx) if self.is_3d else (self.ny, self.nx)

    @property
    def n_pixels(self) -> int:
        return self.nz * self.ny * self.nx

    @property
    def cell_m(self) -> tuple[float, float]:
        """(dx, dy) cell size in metres."""
        return (_step(self.x_m), _step(self.y_m))

    @property
    def label(self) -> str:
        """'128x128' or '128x128x4' (nx x ny [x nz]), as the benchmark reports it."""
        base = f"{self.nx}x{self.ny}"
        return f"{base}x{self.nz}" if self.is_3d else base

    def points(self) -> np.ndarray:
        """(nz, ny, nx, 3) pixel positions in room coordinates; raster order is z, then y, then x."""
        z, y, x = np.meshgrid(self.z_m, self.y_m, self.x_m, indexing="ij")
        return np.stack([x, y, z], axis=-1)

    def floor_position(self, iy: float, ix: float) -> tuple[float, float]:
        """Floor (x, y) metres of a (possibly fractional) pixel index."""
        dx, dy = self.cell_m
        return (float(self.x_m[0] + ix * dx), float(self.y_m[0] + iy * dy))

    def nearest_index(self, x: float, y: float) -> tuple[int, int]:
        """(iy, ix) of the cell containing floor point (x, y), clipped to the grid."""
        dx, dy = self.cell_m
        ix = int(np.clip(np.rint((x - self.x_m[0]) / dx), 0, self.nx - 1))
        iy = int(np.clip(np.rint((y - self.y_m[0]) / dy), 0, self.ny - 1))
        return iy, ix


def _centres(lo: float, hi: float, n: int) -> np.ndarray:
    step = (hi - lo) / n
    return lo + (np.arange(n) + 0.5) * step


def _step(axis: np.ndarray) -> float:
    # A one-cell axis has no step; 1 m keeps the arithmetic defined (such grids only occur in tests).
    return float(axis[1] - axis[0]) if axis.size > 1 else 1.0
