"""Measure the RGB camera's lens on site: focal length, principal point and distortion from views of a
printed checkerboard.

The runtime cuts each person's crop by projecting the radar track into the camera. A real
90-degree camera bends straight lines by tens of pixels towards its edges, so a distortion-free
model cuts crops beside the person there, and the field of view printed on the box is rounded. The
standard cure is OpenCV's: show the camera a flat checkerboard in 10 or more poses (tilted, near the
corners and edges of the image, not only in the middle), find its inner corners in each image
(`findChessboardCorners`, refined to a tenth of a pixel by `cornerSubPix`) and solve for the
camera matrix and the distortion (`calibrateCamera`). Pixels are taken as square (one focal
length: the config's `hfov_deg`). The result is judged by its reprojection error, by how much
of the image the corners covered (distortion is only measured where corners were seen) and by how
many views showed the board tilted (the focal length is only measured by foreshortening).

Views come from image files or from recordings (`vrclip-edge record` while someone shows the board
around the room), whose camera frames are sampled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from vrclip.calibration.files import write_camera_keys
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import UserError
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.recording.schema import CAMERA

#: Views with a board found needed for a fit (OpenCV's advice: 10 to 20).
MIN_VIEWS = 10
#: A view whose corners lie on average within this share of the image width of an earlier view's
#: corners is that pose again (a board propped still and recorded, one photo given twice): it adds
#: nothing to the fit, so it does not count towards MIN_VIEWS.
MIN_VIEW_SHIFT = 0.02
#: Most camera frames taken from one recording (evenly spread): a board held still repeats itself.
MAX_FRAMES_PER_RECORDING = 120
#: A fit whose corners reproject worse than this (pixels, RMS) is not written.
MAX_RMS_PX = 1.0
#: The image is cut into GRID x GRID cells; the share of cells where corners were seen.
COVERAGE_GRID = 4
#: Less coverage than this and the distortion towards the uncovered edges is a guess.
MIN_COVERAGE = 0.6
#: A board square to the camera shows no foreshortening, which is what measures the focal length:
#: views held square everywhere fit any focal length equally well (121 degrees for an 84-degree lens).
#: So at least MIN_TILTED_VIEWS views must show the board tilted by MIN_TILT_DEG or more.
MIN_TILT_DEG = 10.0
MIN_TILTED_VIEWS = 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Board:
    """A checkerboard: its inner corners across and down, and the side of one square."""

    columns: int
    rows: int
    square_m: float

    @classmethod
    def parse(cls, corners: str, square_mm: float) -> Board:
        try:
            columns, rows = (int(v) for v in corners.lower().split("x"))
        except ValueError:
            raise UserError(
                f"--board {corners!r}: give the inner corners as COLUMNSxROWS, e.g. 9x6 for a board of "
                "10 x 7 squares"
            ) from None
        if columns < 3 or rows < 3 or columns == rows:
            raise UserError(
                f"--board {corners}: need at least 3x3 inner corners, and a different count across "
                "than down (a square board's orientation is ambiguous)"
            )
        if not 1.0 <= square_mm <= 500.0:
            raise UserError(f"--square-mm {square_mm:g}: give the side of one printed square in mm")
        return cls(columns, rows, square_mm / 1000.0)

    def object_points(self) -> np.ndarray:
        """(N, 3) float32 corner positions on the board (metres, z = 0), in OpenCV's corner order."""
        grid = np.mgrid[0 : self.columns, 0 : self.rows].T.reshape(-1, 2)
        return np.column_stack([grid * self.square_m, np.zeros(len(grid))]).astype(np.float32)


@dataclass(frozen=True)
class LensFit:
    hfov_deg: float
    principal_px: tuple[float, float]
    distortion: tuple[float, float, float, float, float]
    rms_px: float
    views_used: int
    views_seen: int
    coverage: float
    image_size: tuple[int, int]  # (width, height)
    #: Views in which the board was tilted by MIN_TILT_DEG or more against the image plane.
    tilted_views: int

    def problems(self) -> list[str]:
        """Why this fit should not be written (empty: it may)."""
        found = []
        if not self.rms_px <= MAX_RMS_PX:
            found.append(
                f"the corners reproject {self.rms_px:.2f} px off on average (at most {MAX_RMS_PX:g}): "
                "a board that is not flat, motion blur, or views of another camera"
            )
        if self.coverage < MIN_COVERAGE:
            found.append(
                f"corners were seen in only {self.coverage:.0%} of the image (at least "
                f"{MIN_COVERAGE:.0%}): show the board near every edge and corner of the image too"
            )
        if self.tilted_views < MIN_TILTED_VIEWS:
            found.append(
                f"the board was tilted ({MIN_TILT_DEG:g} degrees or more) in only {self.tilted_views} "
                f"views (at least {MIN_TILTED_VIEWS}): held square to the camera it does not measure the "
                "focal length; tilt it towards and away from the camera, up to 45 degrees"
            )
        return found

    def applied(self, config: EdgeConfig) -> EdgeConfig:
        """`config` with this lens, rounded to what a calibration supports."""
        camera = config.camera.model_copy(
            update={
                "hfov_deg": round(self.hfov_deg, 3),
                "principal_px": tuple(round(v, 2) for v in self.principal_px),
                "distortion": tuple(round(v, 6) for v in self.distortion),
            }
        )
        return config.model_copy(update={"camera": camera})


def views(sources: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, greyscale image) of every image file and of sampled camera frames of every recording."""
    for path in sources:
        if path.suffix.lower() in (".h5", ".hdf5"):
            with SessionReader(path) as reader:
                n = reader.count(CAMERA) if CAMERA in reader.streams else 0
                if n == 0:
                    raise UserError(f"{path}: has no camera frames; record with the RGB camera connected")
                for i in np.unique(
                    np.linspace(0, n - 1, min(n, MAX_FRAMES_PER_RECORDING)).round().astype(int)
                ):
                    yield (
                        f"{path} camera frame {i}",
                        cv2.cvtColor(reader.camera(int(i)).rgb, cv2.COLOR_RGB2GRAY),
                    )
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if not path.is_file():
                raise UserError(f"{path}: no such image")
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise UserError(f"{path}: not an image OpenCV can read; give PNG or JPEG files")
            yield str(path), image
        else:
            raise UserError(
                f"{path}: give board views as images ({', '.join(IMAGE_SUFFIXES)}) or recordings (.h5)"
            )


def find_corners(grey: np.ndarray, board: Board) -> np.ndarray | None:
    """(N, 1, 2) float32 inner corners refined to sub-pixel, or None when the whole board is not seen."""
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    found, corners = cv2.findChessboardCorners(grey, (board.columns, board.rows), flags=flags)
    if not found:
        return None
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
    return cv2.cornerSubPix(grey, corners, (5, 5), (-1, -1), criteria)


def coverage(corners: list[np.ndarray], width: int, height: int) -> float:
    """Share of the image's COVERAGE_GRID x COVERAGE_GRID cells in which a corner was seen."""
    seen = np.zeros((COVERAGE_GRID, COVERAGE_GRID), bool)
    for view in corners:
        xy = view.reshape(-1, 2)
        cols = np.clip((xy[:, 0] / width * COVERAGE_GRID).astype(int), 0, COVERAGE_GRID - 1)
        rows = np.clip((xy[:, 1] / height * COVERAGE_GRID).astype(int), 0, COVERAGE_GRID - 1)
        seen[rows, cols] = True
    return float(seen.mean())


def distinct_views(corners: list[np.ndarray], width: int) -> int:
    """How many of the views show the board in a pose of its own: one seen only once constrains the
    focal length not at all, however often it is repeated, and repeats would pass MIN_VIEWS."""
    kept: list[np.ndarray] = []
    for view in corners:
        xy = view.reshape(-1, 2)
        shifts = (float(np.linalg.norm(xy - other, axis=1).mean()) for other in kept)
        if all(shift >= MIN_VIEW_SHIFT * width for shift in shifts):
            kept.append(xy)
    return len(kept)


def tilted_views(rotations: tuple[np.ndarray, ...]) -> int:
    """How many views show the board tilted by MIN_TILT_DEG or more: the angle between its normal and
    the optical axis, from each view's fitted rotation (Rodrigues vectors, as calibrateCamera gives)."""
    tilts = [math.degrees(math.acos(min(1.0, abs(cv2.Rodrigues(r)[0][2, 2])))) for r in rotations]
    return sum(tilt >= MIN_TILT_DEG for tilt in tilts)


def calibrate_lens(
    sources: list[Path],
    board: Board,
    progress: Callable[[int], None] | None = None,
    camera: tuple[int, int, str] | None = None,
) -> LensFit:
    """The lens fitted to every view of `board` found in `sources` (see the module doc). `camera`
    (width, height, where they were configured) refuses views of another size on the first view,
    before the board is looked for in any (about 0.2 s a frame where it is not found, up to 120
    frames a recording)."""
    if not sources:
        raise UserError("give the board views: image files or recordings of the board shown around the room")
    image_points: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    first = ""
    seen = 0
    for name, grey in views(sources):
        seen += 1
        this = (grey.shape[1], grey.shape[0])
        if size is None:
            size, first = this, name
            if camera is not None and this != camera[:2]:
                raise UserError(
                    f"the views are {this[0]}x{this[1]}, {camera[2]} says the camera is "
                    f"{camera[0]}x{camera[1]}; take the views with the site camera at its configured "
                    "resolution"
                )
        elif this != size:
            raise UserError(
                f"{name}: is {this[0]}x{this[1]} but {first} is {size[0]}x{size[1]}; give views of one "
                "camera at one resolution"
            )
        corners = find_corners(grey, board)
        if corners is not None:
            image_points.append(corners)
        if progress is not None:
            progress(seen)
    assert size is not None
    if len(image_points) < MIN_VIEWS:
        raise UserError(
            f"the {board.columns}x{board.rows} board was found in {len(image_points)} of {seen} views (at "
            f"least {MIN_VIEWS} are needed); check --board (inner corners, not squares), light the board "
            "evenly and show all of it, tilted, all over the image"
        )
    width, height = size
    distinct = distinct_views(image_points, width)
    if distinct < MIN_VIEWS:
        raise UserError(
            f"the {board.columns}x{board.rows} board was found in {len(image_points)} of {seen} views, but "
            f"in only {distinct} distinct poses (at least {MIN_VIEWS} are needed; the others repeat a view, "
            "as a board held still does): move and tilt the board between views, all over the image"
        )
    guess = (width / 2) / math.tan(math.radians(90.0) / 2)
    camera_matrix = np.array([[guess, 0.0, width / 2 - 0.5], [0.0, guess, height / 2 - 0.5], [0.0, 0.0, 1.0]])
    objects = [board.object_points()] * len(image_points)
    flags = cv2.CALIB_FIX_ASPECT_RATIO | cv2.CALIB_USE_INTRINSIC_GUESS
    rms, matrix, distortion, rotations, _ = cv2.calibrateCamera(
        objects, image_points, size, camera_matrix, np.zeros(5), flags=flags
    )
    focal = float(matrix[0, 0])
    return LensFit(
        hfov_deg=math.degrees(2 * math.atan((width / 2) / focal)),
        principal_px=(float(matrix[0, 2]), float(matrix[1, 2])),
        distortion=tuple(float(v) for v in distortion.ravel()[:5]),  # type: ignore[arg-type]
        rms_px=float(rms),
        views_used=len(image_points),
        views_seen=seen,
        coverage=coverage(image_points, width, height),
        image_size=size,
        tilted_views=tilted_views(rotations),
    )


def write_lens(path: Path, config: EdgeConfig) -> tuple[Path, Path | None]:
    """Write `config`'s lens (hfov, principal point, distortion) into the site config at `path`,
    changing nothing else; the old file is kept as `<path>.prev`."""
    return write_camera_keys(path, config, ("hfov_deg", "principal_px", "distortion"))
