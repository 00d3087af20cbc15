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

import math
from dataclasses import dataclass

import cv2
import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.sim.camera import PinholeCamera

CROP_HEIGHT = 256
CROP_WIDTH = 128
#: Nearest depth (m) at which a person is still cropped; nearer, the projection blows up.
MIN_DEPTH_M = 0.3
#: Most work (pixels x kernel taps, both passes) the anti-alias blur does at the frame's own
#: resolution: about 10 ms on a 2-core box. Crops of 640x360 frames (the training data's size) stay
#: under it for every lens of 30 degrees or wider (the default 90 degrees needs 13 million at most),
#: so they are cut exactly as before; a costlier region is first averaged down (`_reduced_region`).
EXACT_BLUR_BUDGET = 100_000_000
#: A costlier region is averaged down by whole factors of about sigma / this, leaving a Gaussian of
#: about this many reduced pixels to apply: crops of rendered 4K frames then differ from the
#: full-resolution ones by at most 1 grey level in 99.9 % of values.
MIN_RESIDUAL_SIGMA = 2.0


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
    """Resample the pixel box of an (H, W, 3) uint8 image to (spec.height, spec.width, 3) uint8.

    warpAffine samples, it does not average, so a heavily minified box (scale under 0.5) is low-passed
    first with a Gaussian of sigma 0.5 / scale. Only the pixels the warp reads are blurred: blurring
    the whole frame cost up to seconds for a person close to a 4K camera (a 271-tap kernel over 8
    million pixels). Where even that region would cost more than `EXACT_BLUR_BUDGET`, it is
    averaged down by whole factors before the blur (`_reduced_region`); below the budget, which holds
    for every crop of the training data's 640x360 frames, the crop is bit for bit what a blur of the
    whole frame gives.
    """
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"crop box {box}: the pixel box must be four finite numbers (x0, y0, x1, y1)")
    x0, y0, x1, y1 = box
    sx = spec.width / max(x1 - x0, 1e-6)
    sy = spec.height / max(y1 - y0, 1e-6)
    # Pixel centres: output pixel j covers input x0 + (j + 0.5)/sx; cv2 maps centres as integer coords.
    matrix = np.array(
        [[sx, 0.0, -sx * x0 - 0.5 + 0.5 * sx], [0.0, sy, -sy * y0 - 0.5 + 0.5 * sy]], dtype=np.float64
    )
    image = np.ascontiguousarray(rgb)
    if sx < 0.5 or sy < 0.5:
        sigma = (max(0.5 / sx, 0.01), max(0.5 / sy, 0.01))
        rows = _sampled_span(y0, sy, spec.height, image.shape[0])
        cols = _sampled_span(x0, sx, spec.width, image.shape[1])
        if rows[0] >= rows[1] or cols[0] >= cols[1]:  # the warp reads no pixel of the frame
            return np.zeros((spec.height, spec.width, 3), np.uint8)
        if _blur_cost(rows, cols, sigma, image.shape) > EXACT_BLUR_BUDGET:
            return _reduced_crop(image, rows, cols, sigma, matrix, spec)
        image = _blurred_region(image, rows, cols, sigma)
    return _warp(image, matrix, spec, cv2.BORDER_CONSTANT)


def _reduced_crop(
    image: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    sigma: tuple[float, float],
    matrix: np.ndarray,
    spec: CropSpec,
) -> np.ndarray:
    """The crop from the averaged-down region (`_reduced_region`), sampled with its edge pixels
    repeated and then cut at the frame's edge as the full-resolution warp cuts it: the reduced
    image's own black border would smear the frame's edge over a reduced pixel into the crop."""
    reduced, reduced_matrix = _reduced_region(image, rows, cols, sigma, matrix)
    crop = _warp(reduced, reduced_matrix, spec, cv2.BORDER_REPLICATE)
    inside = np.outer(
        _inside_weights(matrix[1, 1], matrix[1, 2], spec.height, image.shape[0]),
        _inside_weights(matrix[0, 0], matrix[0, 2], spec.width, image.shape[1]),
    )
    return np.rint(crop * inside[:, :, None]).astype(np.uint8)


def _warp(image: np.ndarray, matrix: np.ndarray, spec: CropSpec, border: int) -> np.ndarray:
    """Bilinear resampling of the image by the affine matrix to the crop's size (black border)."""
    return cv2.warpAffine(
        image,
        matrix,
        (spec.width, spec.height),
        flags=cv2.INTER_LINEAR,
        borderMode=border,
        borderValue=(0, 0, 0),
    )


def _inside_weights(scale: float, offset: float, count: int, size: int) -> np.ndarray:
    """Per output pixel along one axis (output = scale * source + offset), the bilinear weight its
    sample puts on pixels of the frame: 1 inside, falling to 0 over the pixel beyond either edge,
    where the warp's border is black."""
    u = (np.arange(count) - offset) / scale
    return np.clip(np.minimum(u + 1, size - u), 0.0, 1.0)


def _sampled_span(start: float, scale: float, count: int, size: int) -> tuple[int, int]:
    """Source pixels [lo, hi) along one axis that the warp's bilinear samples read, clipped to the
    image (empty when lo >= hi). Output pixel j samples start + (j + 0.5) / scale - 0.5 and reads the
    pixel below and the one above; one more each side covers warpAffine's fixed-point coordinates."""
    first = start + 0.5 / scale - 0.5
    last = start + (count - 0.5) / scale - 0.5
    return max(math.floor(first) - 1, 0), min(math.floor(last) + 3, size)


def _blur_margin(sigma: float) -> int:
    """Pixels a Gaussian of this sigma reaches: cv2 cuts its 8-bit kernels at 3 sigma (4 for floats)."""
    return math.ceil(4 * sigma) + 1


def _window(span: tuple[int, int], margin: int, size: int) -> tuple[int, int]:
    """The span widened by a margin each side, clipped to the image."""
    return max(span[0] - margin, 0), min(span[1] + margin, size)


def _blur_cost(
    rows: tuple[int, int], cols: tuple[int, int], sigma: tuple[float, float], shape: tuple[int, ...]
) -> int:
    """Pixels times kernel taps (both passes) of blurring the sampled region at full resolution."""
    mx, my = _blur_margin(sigma[0]), _blur_margin(sigma[1])
    wr, wc = _window(rows, my, shape[0]), _window(cols, mx, shape[1])
    return (wr[1] - wr[0]) * (wc[1] - wc[0]) * (2 * mx + 2 * my + 2)


def _blurred_region(
    image: np.ndarray, rows: tuple[int, int], cols: tuple[int, int], sigma: tuple[float, float]
) -> np.ndarray:
    """A frame-sized image holding the Gaussian-blurred frame over rows x cols (black elsewhere).

    The blur runs on the region plus a margin of its kernel's reach, so every pixel kept is the one
    a whole-frame blur gives (the frame's own edges keep cv2's reflected border). The result stays
    frame-sized because warpAffine's fixed-point sample positions depend on the matrix: cutting the
    region out and shifting the matrix by its offset moves some positions by a rounding step, and
    the crop by a grey level in places (the first try at this was reverted for that).
    """
    wr = _window(rows, _blur_margin(sigma[1]), image.shape[0])
    wc = _window(cols, _blur_margin(sigma[0]), image.shape[1])
    blurred = cv2.GaussianBlur(image[wr[0] : wr[1], wc[0] : wc[1]], (0, 0), sigmaX=sigma[0], sigmaY=sigma[1])
    out = np.zeros_like(image)  # calloc'd: only the pages written below are touched
    out[rows[0] : rows[1], cols[0] : cols[1]] = blurred[
        rows[0] - wr[0] : rows[1] - wr[0], cols[0] - wc[0] : cols[1] - wc[0]
    ]
    return out


def _cells(window: tuple[int, int], factor: int, size: int) -> tuple[int, int, int]:
    """(first, last, tail): the window grown to whole `factor`-pixel cells, as frame pixels
    [first, last), moved back from the frame's far edge where the cells would run past it; tail > 0
    only when the frame is shorter than those cells (the last cell is then completed by mirroring)."""
    length = -(-(window[1] - window[0]) // factor) * factor
    first = max(min(window[0], size - length), 0)
    last = min(first + length, size)
    return first, last, first + length - last


def _reduction(span: tuple[int, int], size: int, sigma: float) -> tuple[int, int, int, int, float]:
    """(first, last, tail, factor, residual) along one axis: the frame pixels [first, last) to average
    in `factor`-pixel cells (tail: pixels mirrored to complete the last, see `_cells`) and the
    Gaussian still to apply to them, in reduced pixels.

    A box average of f pixels has variance (f^2 - 1) / 12, so what is left of the Gaussian is
    sqrt(sigma^2 - (f^2 - 1) / 12) / f; f = sigma / `MIN_RESIDUAL_SIGMA`, rounded, leaves 1.4 to 3
    reduced pixels, so the Gaussian, not the cells, still shapes the low-pass. A cell is never longer
    than the region and the residual never wider than 4 region lengths (beyond, mirrored, it gives
    the region's mean to within rounding): a box thousands of times the frame costs no more.
    """
    wanted = max(1, round(sigma / MIN_RESIDUAL_SIGMA))
    window = _window(span, _blur_margin(sigma) + 2 * wanted, size)
    factor = min(wanted, window[1] - window[0])
    residual = math.sqrt(max(sigma * sigma - (factor * factor - 1) / 12, 1e-4)) / factor
    return (*_cells(window, factor, size), factor, min(residual, 4 * (window[1] - window[0]) / factor + 1))


def _reduced_region(
    image: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    sigma: tuple[float, float],
    matrix: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(reduced image, its warp matrix): the sampled region averaged over whole cells
    (cv2.INTER_AREA), then blurred with what is left of the Gaussian at that scale (`_reduction`).

    The crop stays within a grey level of the full-resolution one almost everywhere (a few more in
    the rows and columns along the frame's edges) for a fraction of the work. The residual blur
    mirrors the reduced image about its edges, which where they are the frame's is what the
    full-resolution blur does there (about the pixel beyond the edge rather than the edge pixel).
    """
    c0, c1, right, fx, residual_x = _reduction(cols, image.shape[1], sigma[0])
    r0, r1, bottom, fy, residual_y = _reduction(rows, image.shape[0], sigma[1])
    region = image[r0:r1, c0:c1]
    if bottom or right:
        region = cv2.copyMakeBorder(region, 0, bottom, 0, right, cv2.BORDER_REFLECT)
    reduced = cv2.resize(region, (region.shape[1] // fx, region.shape[0] // fy), interpolation=cv2.INTER_AREA)
    reduced = cv2.GaussianBlur(
        reduced, (0, 0), sigmaX=residual_x, sigmaY=residual_y, borderType=cv2.BORDER_REFLECT
    )
    # Reduced pixel i averages source pixels start + f*i .. start + f*i + f - 1: centre start + f*i + (f-1)/2.
    out = matrix.copy()
    for axis, (start, f) in enumerate(((c0, fx), (r0, fy))):
        out[axis, 2] += matrix[axis, axis] * (start + (f - 1) / 2)
        out[axis, axis] *= f
    return reduced, out


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
