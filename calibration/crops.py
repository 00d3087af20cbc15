"""Check the RGB camera's pose on site: the person crops the runtime would cut, on one contact sheet.

The runtime cuts each person's crop by projecting the radar track's floor position into the camera
with `camera.position_m` and `camera.hfov_deg`. A camera mounted other than the config says puts the
person at the crops' edge or outside them, and the fused model then sees walls instead of people,
silently. Nothing in the stack detects people in images, so the check is visual: from a recording of
one person walking, the crops at evenly spaced radar-tracked frames are tiled into one image in which
an installer sees at a glance whether the person stands centred, head to feet, in every crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import CropSpec, camera_from_config, crop_person
from vrclip.edge.errors import UserError
from vrclip.edge.label import radar_track
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.recording.schema import CAMERA, RADAR

#: Most crops on one sheet (a 8 x 4 grid keeps each crop big enough to judge).
MAX_CROPS = 64


@dataclass(frozen=True)
class CropSheet:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    crops: int
    #: Tracked frames whose crop box fell wholly outside the image.
    outside: int
    tracked: int


def crop_sheet(
    path: Path,
    count: int = 32,
    columns: int = 8,
    spec: CropSpec = CropSpec(),
    camera_config: EdgeConfig | None = None,
) -> CropSheet:
    """The contact sheet of `count` crops from the recording at `path` (see the module doc). The
    camera model and latency are the recording's own unless `camera_config` gives others (a corrected
    pose can be tried on the same walk without recording it again)."""
    if not 1 <= count <= MAX_CROPS:
        raise UserError(f"--crops {count}: give 1 to {MAX_CROPS}")
    with SessionReader(path) as reader:
        if CAMERA not in reader.streams or reader.count(CAMERA) == 0:
            raise UserError(f"{path}: has no camera frames; record with the RGB camera connected")
        recorded = reader.edge_config()
        camera = camera_from_config(camera_config or recorded)
        if (camera.width, camera.height) != (recorded.camera.width, recorded.camera.height):
            raise UserError(
                f"{path}: its camera frames are {recorded.camera.width}x{recorded.camera.height}, the config "
                f"given says {camera.width}x{camera.height}; give a config for the camera that recorded it"
            )
        positions, _ = radar_track(reader)
        tracked = np.flatnonzero(np.isfinite(positions).all(axis=1))
        if tracked.size == 0:
            raise UserError(
                f"{path}: the radar tracked nobody alone in this recording; record one person walking "
                "across the monitored area"
            )
        radar_t = reader.times(RADAR)
        camera_t = reader.times(CAMERA) - _latency_change_ns(recorded, camera_config)
        picks = tracked[
            np.unique(np.linspace(0, tracked.size - 1, min(count, tracked.size)).round().astype(int))
        ]
        tiles, outside = [], 0
        for i in picks:
            j = int(np.argmin(np.abs(camera_t - radar_t[i])))
            crop, ok = crop_person(reader.camera(j).rgb, camera, positions[i], spec)
            outside += not ok
            tiles.append(_caption(crop, f"{positions[i][0]:+.1f},{positions[i][1]:.1f} m", ok))
    rows = [tiles[k : k + columns] for k in range(0, len(tiles), columns)]
    blank = np.zeros_like(tiles[0])
    grid = np.vstack([np.hstack(row + [blank] * (columns - len(row))) for row in rows])
    return CropSheet(grid, len(tiles), outside, int(tracked.size))


def _latency_change_ns(recorded: EdgeConfig, config: EdgeConfig | None) -> int:
    """How much more the runtime now takes off each camera stamp than the recording did (ns): the
    walk's stamps already had its own camera.latency_ms taken off, the runtime takes off the given
    config's before pairing a frame with the radar, so the sheet pairs them as the runtime would."""
    if config is None:
        return 0
    return round((config.camera.latency_ms - recorded.camera.latency_ms) * 1e6)


def _caption(crop: np.ndarray, text: str, ok: bool) -> np.ndarray:
    """The crop with a 1-px frame (green: in view, red: outside the image) and its floor position."""
    tile = np.ascontiguousarray(crop.copy())
    colour = (0, 200, 0) if ok else (220, 0, 0)
    cv2.rectangle(tile, (0, 0), (tile.shape[1] - 1, tile.shape[0] - 1), colour, 1)
    cv2.putText(
        tile, text, (3, tile.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0), 1, cv2.LINE_AA
    )
    return tile


def write_sheet(sheet: CropSheet, out: Path) -> None:
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"{out}: give the contact sheet a .png or .jpg name")
    ok = cv2.imwrite(str(out), cv2.cvtColor(sheet.image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"{out}: cannot write the image there; choose a writable path")
