"""Person crops for the visual encoder: project a body-sized box around a floor position, resample it.

The trainer and the edge runtime must cut *the same* crop for the same person, or the model sees a
different input in the field than it saw in training; so both call this module (it needs no torch).
The box is a vertical slab around the person's floor position (±`half_width_m`, from
`bottom_m` to `top_m` above the floor), projected with the camera model. Its image bounding box is
widened or heightened about its centre to the crop's aspect ratio (2:1 by default) so the person is
never stretched, then resampled with one affine warp; pixels outside the camera frame come out
black, as a person at the image edge should look to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.sim.camera import PinholeCamera

CROP_HEIGHT = 256
CROP_WIDTH = 128
#: Nearest depth (m) at which a person is still cropped; nearer, the projection blows up.
MIN_DEPTH_M = 0.3


@dataclass(frozen=True)
class CropSpec:
    """Crop geometry: output size in pixels and the body box in metres around the floor position."""

    height: int = CROP_HEIGHT
    width: int = CROP_WIDTH
    half_width_m: float = 0.4
    bottom_m: float = 0.0
    top_m: float = 1.95

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"crop size {self.height}x{self.width}: both sides must be >= 8 pixels")
        if self.half_width_m <= 0 or self.top_m <= self.bottom_m:
            raise ValueError(
                f"crop box half_width_m={self.half_width_m}, bottom_m={self.bottom_m}, top_m={self.top_m}: "
                "need a positive width and top above bottom"
            )


def camera_from_config(config: EdgeConfig) -> PinholeCamera:
    """The pinhole model of the configured RGB camera (what the simulator renders with)."""
    cam = config.camera
    return PinholeCamera(
        cam.width,
        cam.height,
        cam.hfov_deg,
        tuple(cam.position_m),
        cam.pitch_deg,
        cam.yaw_deg,
        tuple(cam.principal_px) if cam.principal_px is not None else None,
        tuple(cam.distortion) if any(cam.distortion) else (),
    )


def person_box(
    camera: PinholeCamera, position_xy: np.ndarray, spec: CropSpec = CropSpec()
) -> tuple[float, float, float, float] | None:
    """Pixel box (x0, y0, x1, y1) of a person at floor position (x, y), at the crop's aspect ratio.

    None when the person stands behind or too close to the camera (no meaningful projection).
    """
    x, y = float(position_xy[0]), float(position_xy[1])
    if not (np.isfinite(x) and np.isfinite(y)):
        return None
    w = spec.half_width_m
    corners = np.array(
        [[x + dx, y + dy, z] for dx in (-w, w) for dy in (-w, w) for z in (spec.bottom_m, spec.top_m)]
    )
    pixels, depth = camera.project(corners)
    if np.min(depth) < MIN_DEPTH_M:
        return None
    x0, y0 = pixels.min(axis=0)
    x1, y1 = pixels.max(axis=0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw, bh = x1 - x0, y1 - y0
    aspect = spec.height / spec.width
    # Grow the short side so the box has the crop's aspect: no anisotropic stretching of the body.
    if bh / max(bw, 1e-9) < aspect:
        bh = bw * aspect
    else:
        bw = bh / aspect
    return (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)


def crop_box(
    rgb: np.ndarray, box: tuple[float, float, float, float], spec: CropSpec = CropSpec()
) -> np.ndarray:
    """Resample the pixel box of an (H, W, 3) uint8 image to (spec.height, spec.width, 3) uint8."""
    x0, y0, x1, y1 = box
    sx = spec.width / max(x1 - x0, 1e-6)
    sy = spec.height / max(y1 - y0, 1e-6)
    # Pixel centres: output pixel j covers input x0 + (j + 0.5)/sx; cv2 maps centres as integer coords.
    matrix = np.array(
        [[sx, 0.0, -sx * x0 - 0.5 + 0.5 * sx], [0.0, sy, -sy * y0 - 0.5 + 0.5 * sy]], dtype=np.float64
    )
    if sx < 0.5 or sy < 0.5:
        # warpAffine samples, it does not average: low-pass first where the box is heavily minified.
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=max(0.5 / sx, 0.01), sigmaY=max(0.5 / sy, 0.01))
    return cv2.warpAffine(
        np.ascontiguousarray(rgb),
        matrix,
        (spec.width, spec.height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _overlaps_image(box: tuple[float, float, float, float], camera: PinholeCamera) -> bool:
    x0, y0, x1, y1 = box
    return x1 > 0 and y1 > 0 and x0 < camera.width and y0 < camera.height


def in_view(camera: PinholeCamera, position_xy: np.ndarray, spec: CropSpec = CropSpec()) -> bool:
    """Whether a person at floor position (x, y) would appear in the camera's image at all."""
    box = person_box(camera, position_xy, spec)
    return box is not None and _overlaps_image(box, camera)


def crop_person(
    rgb: np.ndarray, camera: PinholeCamera, position_xy: np.ndarray, spec: CropSpec = CropSpec()
) -> tuple[np.ndarray, bool]:
    """(crop (h, w, 3) uint8, ok): the person at floor position (x, y); ok is False (and the crop black)
    when the position cannot be projected (behind the camera, too close, not finite) or its box lies
    wholly outside the image: the radar may track people the camera cannot frame, and a black crop
    passed on as live would tell the engine and the event that the camera saw them."""
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    if image.shape[:2] != (camera.height, camera.width):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} but the camera model is "
            f"{camera.width}x{camera.height}; "
            "crop with the camera model of the camera that took the frame"
        )
    box = person_box(camera, position_xy, spec)
    if box is None or not _overlaps_image(box, camera):
        return np.zeros((spec.height, spec.width, 3), np.uint8), False
    return crop_box(image, box, spec), True


__all__ = [
    "CROP_HEIGHT",
    "CROP_WIDTH",
    "CropSpec",
    "camera_from_config",
    "crop_box",
    "crop_person",
    "in_view",
    "person_box",
]
