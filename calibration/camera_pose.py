"""Measure the RGB camera's pose on site: where the radar says the person is, where the camera sees them.

The runtime cuts each person's crop by projecting the radar track's floor position into the camera
with `camera.position_m`, `pitch_deg`, `yaw_deg` and `hfov_deg`. Measured with a tape and a phone
level, those are a few centimetres and degrees off, and the model then sees the person off-centre or
cut; `calibrate crops` shows that by eye but cannot say what the right numbers are. This module fits
them to a recording of one person walking through the monitored area in good light.

No person detector is needed: the camera stands still, so the per-pixel median over the walk is the
empty room, and the person is the largest region that differs from it. In each camera frame the
silhouette gives three image measurements (the column of its centroid, its lowest and its highest
row), and the radar track, interpolated to the frame's time, says where on the floor the person
stood. The pose, the walker's height and how far the nearer foot reaches towards the camera are
fitted by robust least squares, so frames where the silhouette was wrong (someone else in view, a
reflection) count little. The fit reports its residual and each parameter's standard error; a walk
that stayed at one distance, or in one part of the room, leaves the pose undetermined and says so
rather than guessing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import least_squares
from vrclip.calibration.files import write_camera_keys
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import camera_from_config
from vrclip.edge.errors import UserError
from vrclip.edge.label import interpolate, radar_track
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.recording.schema import CAMERA, RADAR
from vrclip.edge.sim.camera import PinholeCamera

#: Fewer usable frames than this and the fit is not attempted.
MIN_FRAMES = 20
#: Camera frames fitted at most (evenly spread over the walk): more add time, not accuracy.
MAX_FRAMES = 400
#: Frames the empty-room background is the median of.
BACKGROUND_FRAMES = 41
#: Bytes of those frames stacked at once to take the median of (a band of rows of each).
BACKGROUND_BAND_BYTES = 16 << 20
#: A pixel belongs to the person if it differs from the background by this many noise sigmas ...
NOISE_SIGMAS = 5.0
#: ... and by at least this many 8-bit levels.
MIN_CONTRAST = 20.0
#: The person's region must cover at least this share of the image ...
MIN_AREA_FRACTION = 0.0015
#: ... and be at least this many times larger than the next region (else the frame is ambiguous).
DOMINANCE = 2.0
#: Pixels: the least measurement noise a silhouette edge is credited with.
MIN_PIXEL_NOISE = 1.0
#: Standard errors above these leave a parameter undetermined (the walk did not pin it down). Across
#: the view (x, z) and in angle, an error moves every crop's box: 5 cm or 1 degree is ~1/16 of a
#: person's box width at 3 m. Along the view (y) and in field of view an error only scales the box
#: (3 m against 3.15 m is 5 %), so those may be looser.
MAX_SIGMA = {
    "x_m": 0.05,
    "y_m": 0.15,
    "z_m": 0.05,
    "pitch_deg": 1.0,
    "yaw_deg": 1.0,
    "hfov_deg": 2.0,
    # 20 ms of a walk at 1.4 m/s is 3 cm: about as much as the position's own limit.
    "lag_ms": 20.0,
}
#: Seconds of walk (first to last camera frame fitted) below which the fit is not trusted. The standard
#: errors count every silhouette as an independent measurement, but the radar track each one is
#: compared with is off by 5-7 cm, and that error changes slowly (it is correlated over about a
#: second: ~10 radar frames, ~30 camera frames). A short walk averages only a few independent track
#: errors, the pose absorbs them (camera x against yaw, height against pitch), and the fit lands
#: several of its own standard errors off while they all stay under MAX_SIGMA: on simulated 4-s
#: walk, x 0.25 m and yaw 3.6 degrees off at 8 standard errors, accepted; its crops overlapped the
#: true pose's by an IoU down to 0.47 away from the walk. The simulated 12-s walks that pass cropped
#: at 0.77 or better everywhere in the room, though their pose can still be 3-5 standard errors off
#: along directions the crops hardly feel (tests/calibration/test_camera_pose.py).
MIN_WALK_S = 10.0
#: Seconds of walk the lag's standard error treats as one independent block of residuals: about how
#: long the radar track's error stays the same (see MIN_WALK_S).
LAG_BLOCK_S = 1.0
#: A residual RMS above this share of the image height means the silhouettes did not follow the track.
MAX_RMS_FRACTION = 0.03
#: Where the fit starts the nearer foot's reach towards the camera (m).
FOOT_REACH_START_M = 0.2
PARAMETERS = ("x_m", "y_m", "z_m", "pitch_deg", "yaw_deg", "hfov_deg", "foot_reach_m", "height_m", "lag_ms")
#: Largest offset between the camera's and the radar's time stamps the fit looks for (ms): a USB
#: camera's exposure, transfer and driver queue take 30-150 ms, a radar frame ~100 ms.
MAX_LAG_MS = 300.0


@dataclass(frozen=True)
class CameraPose:
    position_m: tuple[float, float, float]
    pitch_deg: float
    yaw_deg: float
    hfov_deg: float
    #: The lens, as `vrclip-calibrate intrinsics` measured it (not fitted here): OpenCV's principal
    #: point and (k1, k2, p1, p2, k3).
    principal_px: tuple[float, float] | None = None
    distortion: tuple[float, ...] = ()

    @classmethod
    def of(cls, config: EdgeConfig) -> CameraPose:
        """The configured camera's pose and lens, as the runtime's camera model reads them."""
        cam = camera_from_config(config)
        return cls(cam.position, cam.pitch_deg, cam.yaw_deg, cam.hfov_deg, cam.principal, cam.distortion)

    @property
    def lens_measured(self) -> bool:
        """A lens calibration is in the config: its focal length (hfov) is kept, not refitted."""
        return self.principal_px is not None or any(self.distortion)

    def camera(self, width: int, height: int) -> PinholeCamera:
        return PinholeCamera(
            width,
            height,
            self.hfov_deg,
            self.position_m,
            self.pitch_deg,
            self.yaw_deg,
            self.principal_px,
            self.distortion,
        )

    def applied(self, config: EdgeConfig) -> EdgeConfig:
        """`config` with this pose as its camera's."""
        camera = config.camera.model_copy(
            update={
                "position_m": self.position_m,
                "pitch_deg": self.pitch_deg,
                "yaw_deg": self.yaw_deg,
                "hfov_deg": self.hfov_deg,
            }
        )
        return config.model_copy(update={"camera": camera})


@dataclass(frozen=True)
class Silhouette:
    """What the camera saw of the person in one frame, in pixels. A side the region touches the image
    border at is not the person's own edge and is left None; `u_centre` is None when either side does."""

    u_centre: float | None
    v_top: float | None
    v_bottom: float | None


@dataclass(frozen=True)
class Observations:
    frames: np.ndarray  # (N,) camera frame indices
    positions: np.ndarray  # (N, 2) floor position from the radar track, metres
    u_centre: np.ndarray  # (N,) NaN where not measured
    v_top: np.ndarray
    v_bottom: np.ndarray
    width: int
    height: int
    #: Radar-tracked camera frames the person was looked for in: all of them, or MAX_FRAMES spread
    #: over a longer walk (what `frames_used` is out of; counting the others would read as lost).
    tracked: int
    #: For the time offset: each frame's camera time, and the radar track it is looked up in (seconds
    #: from the first radar frame). Without them the offset is not fitted (taken as 0).
    camera_t_s: np.ndarray | None = None
    radar_t_s: np.ndarray | None = None
    radar_positions: np.ndarray | None = None

    def positions_at(self, lag_ms: float) -> np.ndarray:
        """(N, 2) floor positions where the radar saw the person when each frame's image was taken,
        had the camera stamped its frames `lag_ms` late. Linear between radar frames; held at the
        track's first and last position beyond its ends (a few frames at the walk's ends, which the
        robust fit discounts if they misfit)."""
        if self.camera_t_s is None or self.radar_t_s is None or self.radar_positions is None:
            return self.positions
        t = self.camera_t_s - lag_ms / 1e3
        return np.column_stack([np.interp(t, self.radar_t_s, self.radar_positions[:, k]) for k in range(2)])


@dataclass(frozen=True)
class PoseFit:
    pose: CameraPose
    height_m: float
    #: Standard error of each fitted parameter (PARAMETERS).
    sigma: dict[str, float]
    #: The residual's RMS, estimated robustly over every measurement (1.4826 x median |residual|).
    rms_px: float
    frames_used: int
    frames_tracked: int
    image_height: int
    #: How much later the camera stamped its frames than the radar, beyond what the recording's own
    #: camera.latency_ms had already taken off (ms); 0 where it was not fitted.
    lag_ms: float = 0.0
    #: The recording's own camera.latency_ms: its camera times already had it taken off.
    recorded_latency_ms: float = 0.0
    #: Seconds from the first to the last camera frame fitted; NaN where the frames had no times.
    walk_s: float = math.nan

    @property
    def latency_ms(self) -> float:
        """The camera.latency_ms this walk measures."""
        return self.recorded_latency_ms + self.lag_ms

    def undetermined(self) -> list[str]:
        """The pose parameters the walk did not pin down (standard error above its limit)."""
        return [name for name, limit in MAX_SIGMA.items() if not self.sigma[name] <= limit]  # NaN fails

    def too_short(self) -> bool:
        """True when the walk was too short for its radar track's slowly changing error to average
        out (MIN_WALK_S): the standard errors then understate how far off the pose is."""
        return self.walk_s < MIN_WALK_S  # NaN (no frame times) is not judged

    def poor_match(self) -> bool:
        """True when the silhouettes do not follow the radar track under any pose."""
        return not self.rms_px <= MAX_RMS_FRACTION * self.image_height


# ---------------------------------------------------------------------------------- silhouettes
def background(frames: list[np.ndarray]) -> np.ndarray:
    """The empty room: the per-pixel median of frames spread over a walk (the person moves on, the
    room does not). Taken a band of rows at a time: stacking the whole frames and taking their median
    at once held two more copies of them (~250 MB beside the 113 MB of 41 frames at 1280x720, over
    8 GB at the 7680x4320 the config allows)."""
    height, width = frames[0].shape[:2]
    rows = max(1, BACKGROUND_BAND_BYTES // (len(frames) * width * 3))
    empty = np.empty_like(frames[0])
    for top in range(0, height, rows):
        band = np.stack([frame[top : top + rows] for frame in frames])
        empty[top : top + rows] = np.median(band, axis=0)
    return empty


def contrast_threshold(difference: np.ndarray) -> float:
    """The level above which a pixel's difference from the background is the person, not noise:
    NOISE_SIGMAS times the noise (from the median absolute difference, which the background pixels
    dominate), and never below MIN_CONTRAST."""
    sigma = 1.4826 * float(np.median(difference))
    return max(MIN_CONTRAST, NOISE_SIGMAS * sigma)


def find_silhouette(rgb: np.ndarray, empty: np.ndarray) -> Silhouette | None:
    """The person's silhouette in `rgb` against the empty room `empty`, or None when there is no
    single dominant region (nobody in view, or two people, or a lighting change)."""
    difference = np.abs(rgb.astype(np.int16) - empty.astype(np.int16)).max(axis=2).astype(np.float32)
    mask = (difference > contrast_threshold(difference)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    stats, centroids = stats[1:], centroids[1:]
    areas = stats[:, cv2.CC_STAT_AREA]
    main = int(np.argmax(areas))
    height, width = mask.shape
    if areas[main] < MIN_AREA_FRACTION * width * height:
        return None
    members = _parts_of(main, stats, centroids)
    rivals = ~members & (areas * DOMINANCE > areas[main])
    if rivals.any():
        return None
    x0 = int(stats[members, cv2.CC_STAT_LEFT].min())
    y0 = int(stats[members, cv2.CC_STAT_TOP].min())
    x1 = int((stats[members, cv2.CC_STAT_LEFT] + stats[members, cv2.CC_STAT_WIDTH]).max())
    y1 = int((stats[members, cv2.CC_STAT_TOP] + stats[members, cv2.CC_STAT_HEIGHT]).max())
    u = float(np.average(centroids[members, 0], weights=areas[members]))
    return Silhouette(
        u_centre=None if x0 == 0 or x1 == width else u,
        v_top=None if y0 == 0 else float(y0),
        v_bottom=None if y1 == height else float(y1),
    )


def _parts_of(main: int, stats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(regions,) bool: the main region and those that belong to the same person. A head whose neck
    or collar matches the wall behind comes out as a region of its own above the body, as can a
    foot; a region counts as the person's if its centre lies within the main region's columns and
    it is no further above or below it than half the main region's height."""
    x, y, w, h = (float(v) for v in stats[main, :4])
    tops = stats[:, cv2.CC_STAT_TOP].astype(float)
    bottoms = tops + stats[:, cv2.CC_STAT_HEIGHT]
    within_columns = (centroids[:, 0] >= x - 0.1 * w) & (centroids[:, 0] <= x + 1.1 * w)
    gap = np.maximum(y - bottoms, tops - (y + h))
    members = within_columns & (gap <= 0.5 * h)
    members[main] = True
    return members


#: Reports (stage, done, total) while a recording is read: "radar track", then "silhouettes".
Progress = Callable[[str, int, int], None]


def observe(path: Path, progress: Progress | None = None) -> Observations:
    """Silhouettes and radar positions from a recording of one person walking (see the module doc)."""
    with SessionReader(path) as reader:
        if CAMERA not in reader.streams or reader.count(CAMERA) == 0:
            raise UserError(f"{path}: has no camera frames; record with the RGB camera connected")
        if reader.count(RADAR) == 0:
            raise UserError(f"{path}: has no radar frames; the radar's track is what the camera is fitted to")
        config = reader.edge_config()
        positions, _ = radar_track(
            reader, None if progress is None else lambda done, total: progress("radar track", done, total)
        )
        camera_t = reader.times(CAMERA)
        radar_t = reader.times(RADAR)
        at_camera = interpolate(radar_t, positions, camera_t)
        tracked = np.flatnonzero(np.isfinite(at_camera).all(axis=1))
        if tracked.size == 0 and np.isfinite(positions).all(axis=1).any():
            # The radar did track the person: the camera's frames are what is missing there (a camera
            # that stopped, or started late), and blaming the radar would send the installer wrong.
            raise UserError(
                f"{path}: no camera frame was taken while the radar tracked the person (the camera's "
                f"{reader.count(CAMERA)} frames do not overlap the radar's track); check that the "
                "camera delivers frames throughout, and record the walk again"
            )
        if tracked.size == 0:
            raise UserError(
                f"{path}: the radar tracked nobody alone in this recording; record one person walking "
                "across the monitored area"
            )
        n = reader.count(CAMERA)
        spread = np.unique(np.linspace(0, n - 1, min(BACKGROUND_FRAMES, n)).round().astype(int))
        empty = background([reader.camera(int(i)).rgb for i in spread])
        picks = tracked[
            np.unique(np.linspace(0, tracked.size - 1, min(MAX_FRAMES, tracked.size)).round().astype(int))
        ]
        found = np.full((picks.size, 3), np.nan)
        for k, i in enumerate(picks):
            seen = find_silhouette(reader.camera(int(i)).rgb, empty)
            if seen is not None:
                found[k] = [np.nan if v is None else v for v in (seen.u_centre, seen.v_top, seen.v_bottom)]
            if progress is not None:
                progress("silhouettes", k + 1, picks.size)
    labelled = np.isfinite(positions).all(axis=1)
    t0 = int(radar_t[0])
    return Observations(
        picks,
        at_camera[picks],
        found[:, 0],
        found[:, 1],
        found[:, 2],
        config.camera.width,
        config.camera.height,
        int(picks.size),
        camera_t_s=(camera_t[picks] - t0) / 1e9,
        radar_t_s=(radar_t[labelled] - t0) / 1e9,
        radar_positions=positions[labelled],
    )


# ------------------------------------------------------------------------------------------ the fit
def _pose_from(start: CameraPose, params: np.ndarray, hfov_deg: float | None) -> CameraPose:
    """The pose the parameter vector says: x, y, z, pitch, yaw and (unless given) hfov, with the
    lens of `start`."""
    x, y, z, pitch, yaw = (float(v) for v in params[:5])
    hfov = float(params[5]) if hfov_deg is None else hfov_deg
    return replace(start, position_m=(x, y, z), pitch_deg=pitch, yaw_deg=yaw, hfov_deg=hfov)


def predict(
    pose: CameraPose,
    height_m: float,
    foot_reach_m: float,
    positions: np.ndarray,
    width: int,
    height: int,
) -> np.ndarray:
    """(N, 3) predicted (centre column, top row, bottom row) of a person `height_m` tall at each
    floor position: the body's mid-height point, the head and the feet projected. The lowest point
    of a walker's silhouette is the foot nearer the camera, not the point under the body's centre:
    it lies `foot_reach_m` closer to the camera (half a stride and a shoe, fitted with the rest)."""
    camera = pose.camera(width, height)
    n = len(positions)
    towards = np.asarray(pose.position_m[:2]) - positions
    towards /= np.maximum(np.linalg.norm(towards, axis=1, keepdims=True), 1e-6)
    feet = positions + foot_reach_m * towards
    points = np.concatenate(
        [
            np.column_stack([positions, np.full(n, height_m / 2)]),
            np.column_stack([positions, np.full(n, height_m)]),
            np.column_stack([feet, np.zeros(n)]),
        ]
    )
    pixels, _ = camera.project(points)
    return np.column_stack([pixels[:n, 0], pixels[n : 2 * n, 1], pixels[2 * n :, 1]])


def fit_pose(obs: Observations, start: CameraPose) -> PoseFit:
    """Robust least-squares fit of the pose, the walker's height (head top) and the nearer foot's
    reach, started from `start`, the pose the config states."""
    measured = np.column_stack([obs.u_centre, obs.v_top, obs.v_bottom])
    usable = np.isfinite(measured).any(axis=1)
    if usable.sum() < MIN_FRAMES:
        raise UserError(
            f"the person was found in only {int(usable.sum())} of {obs.tracked} radar-tracked camera "
            f"frames (at least {MIN_FRAMES} are needed); record the walk in good light with nobody else "
            "in view, walking the whole area the camera sees"
        )
    measured = measured[usable]
    valid = np.isfinite(measured)
    fit_lag = obs.camera_t_s is not None

    # A measured lens fixes the focal length: a checkerboard pins it far better than a walk.
    fixed_hfov = start.hfov_deg if start.lens_measured else None
    extra = 5 if fixed_hfov is not None else 6  # where reach and height sit in the vector

    def unpack(params: np.ndarray) -> tuple[CameraPose, float, float, float]:
        lag = float(params[extra + 2]) if fit_lag else 0.0
        return _pose_from(start, params, fixed_hfov), float(params[extra]), float(params[extra + 1]), lag

    def residuals(params: np.ndarray) -> np.ndarray:
        pose, reach, h, lag = unpack(params)
        positions = obs.positions_at(lag)[usable]
        return (predict(pose, h, reach, positions, obs.width, obs.height) - measured)[valid]

    x0 = [*start.position_m, start.pitch_deg, start.yaw_deg, start.hfov_deg, FOOT_REACH_START_M, 1.75, 0.0]
    lower = [-np.inf, -np.inf, 0.1, -60.0, -180.0, 10.5, 0.0, 1.0, -MAX_LAG_MS]
    upper = [np.inf, np.inf, 10.0, 80.0, 180.0, 169.5, 0.6, 2.4, MAX_LAG_MS]
    if not fit_lag:
        del x0[-1], lower[-1], upper[-1]
    if fixed_hfov is not None:
        del x0[5], lower[5], upper[5]
    scale = max(2.0, 0.004 * obs.height)  # pixels: residuals beyond this count linearly, not squared
    result = least_squares(
        residuals,
        np.clip(x0, lower, upper),
        bounds=(lower, upper),
        loss="soft_l1",
        f_scale=scale,
        x_scale="jac",
    )
    final = result.fun
    inliers = np.abs(final) <= 3 * scale
    # Over all residuals, robustly: the RMS of the inliers alone never exceeds 3 * scale, which is
    # below the poor-match limit at any image over 200 rows, so it could not tell a walk whose
    # silhouettes follow nothing. The median ignores the few frames the fit rightly discounted.
    rms = 1.4826 * float(np.median(np.abs(final)))
    sigma = _standard_errors(result.jac, final, inliers)
    if fit_lag:
        assert obs.camera_t_s is not None
        times = np.broadcast_to(obs.camera_t_s[usable, None], measured.shape)[valid]
        sigma[-1] = max(sigma[-1], _block_standard_error(result.jac, final, inliers, times)[-1])
    if fixed_hfov is not None:
        sigma.insert(5, 0.0)  # measured by the lens calibration, not by this fit
    if not fit_lag:
        sigma.append(0.0)  # no times to fit it from: taken as 0
    pose, _, h, lag = unpack(result.x)
    walk_s = math.nan if obs.camera_t_s is None else float(np.ptp(obs.camera_t_s[usable]))
    return PoseFit(
        pose,
        h,
        dict(zip(PARAMETERS, sigma, strict=True)),
        rms,
        int(usable.sum()),
        obs.tracked,
        obs.height,
        lag,
        walk_s=walk_s,
    )


def _standard_errors(jac: np.ndarray, residual: np.ndarray, inliers: np.ndarray) -> list[float]:
    """Each parameter's standard error from the Gauss-Newton covariance over the inlier residuals;
    NaN for a parameter the data does not determine (a singular normal matrix). The residual variance
    is taken as at least MIN_PIXEL_NOISE squared: a silhouette's edge is never known better than
    that, and a fit that happens to pass through every point must not claim infinite precision."""
    j = jac[inliers]
    dof = max(int(inliers.sum()) - j.shape[1], 1)
    variance = max(float(np.sum(residual[inliers] ** 2)) / dof, MIN_PIXEL_NOISE**2)
    try:
        cov = np.linalg.inv(j.T @ j) * variance
    except np.linalg.LinAlgError:
        return [math.nan] * j.shape[1]
    diag = np.diag(cov)
    return [math.sqrt(v) if v >= 0 else math.nan for v in diag]


def _block_standard_error(
    jac: np.ndarray, residual: np.ndarray, inliers: np.ndarray, times_s: np.ndarray
) -> list[float]:
    """Each parameter's standard error with the residuals of each LAG_BLOCK_S of walk taken as one
    correlated block (the cluster-robust "sandwich" covariance), NaN where undetermined.

    Why: the Gauss-Newton errors count every silhouette as independent, but the radar track they
    are compared with is off in an error that changes over about a second, and a track running a
    few cm ahead of or behind the person for a second looks exactly like a time offset. On simulated
    walks of one walker (tests/calibration/test_camera_pose.py) the fitted lag scattered 5-12 ms from
    walk to walk where the Gauss-Newton error said 1-4 ms; the blocks give 2-3 times that error."""
    j, r = jac[inliers], residual[inliers]
    blocks = np.floor((times_s[inliers] - times_s[inliers].min()) / LAG_BLOCK_S).astype(int)
    try:
        bread = np.linalg.inv(j.T @ j)
    except np.linalg.LinAlgError:
        return [math.nan] * j.shape[1]
    scores = np.zeros((int(blocks.max()) + 1, j.shape[1]))
    np.add.at(scores, blocks, j * r[:, None])
    cov = bread @ (scores.T @ scores) @ bread
    return [math.sqrt(v) if v >= 0 else math.nan for v in np.diag(cov)]


def measure_camera_pose(
    path: Path,
    start: EdgeConfig | None = None,
    progress: Progress | None = None,
) -> PoseFit:
    """The camera pose fitted to the walk recorded at `path`, started from the pose of `start` (the
    site's config) or, without it, from the recording's own config."""
    with SessionReader(path) as reader:
        own = reader.edge_config()
    recorded = own.camera
    start = start if start is not None else own
    # Checked before the walk is read: imaging every radar frame and finding every silhouette first
    # only to refuse wastes the installer's time (~0.3 s per second of walk on the 2-core box).
    if (recorded.width, recorded.height) != (start.camera.width, start.camera.height):
        raise UserError(
            f"{path}: its camera frames are {recorded.width}x{recorded.height}, the config given says "
            f"{start.camera.width}x{start.camera.height}; give a config for the camera that recorded it"
        )
    fit = fit_pose(observe(path, progress), CameraPose.of(start))
    return replace(fit, recorded_latency_ms=recorded.latency_ms)


def with_pose(config: EdgeConfig, fit: PoseFit) -> EdgeConfig:
    """`config` with the fitted pose, rounded to what the measurement supports (mm, 0.01 degree)."""
    pose = fit.pose
    rounded = replace(
        pose,
        position_m=tuple(round(v, 3) for v in pose.position_m),  # type: ignore[arg-type]
        pitch_deg=round(pose.pitch_deg, 2),
        yaw_deg=round(pose.yaw_deg, 2),
        # A lens calibration's focal length was kept by the fit: written back as it was measured.
        hfov_deg=pose.hfov_deg if pose.lens_measured else round(pose.hfov_deg, 2),
    )
    placed = rounded.applied(config)
    camera = placed.camera.model_copy(update={"latency_ms": round(fit.latency_ms, 1)})
    return placed.model_copy(update={"camera": camera})


def write_pose(path: Path, config: EdgeConfig) -> tuple[Path, Path | None]:
    """Write `config`'s camera pose and time offset into the site config at `path`, changing nothing
    else in the file; the old file is kept as `<path>.prev`. Returns (the file written, the kept copy)."""
    return write_camera_keys(path, config, ("position_m", "pitch_deg", "yaw_deg", "hfov_deg", "latency_ms"))
