"""`vrclip-calibrate intrinsics`: the camera's lens from checkerboard views, so crops fit at the edges."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from vrclip.calibration.camera_pose import CameraPose, Observations, fit_pose, predict
from vrclip.calibration.intrinsics import Board, calibrate_lens
from vrclip.edge.config import EdgeConfig, load_config
from vrclip.edge.crops import camera_from_config
from vrclip.edge.errors import UserError

from tests.scripts import console_script

WIDTH, HEIGHT = 640, 360
#: The lens the views are rendered through: 84 degrees, off-centre, a webcam's barrel distortion.
TRUE_HFOV = 84.0
TRUE_PRINCIPAL = (330.0, 176.0)
TRUE_DISTORTION = np.array([-0.12, 0.03, 0.001, -0.0007, 0.0])
BOARD = Board(9, 6, 0.04)


def _true_matrix() -> np.ndarray:
    f = (WIDTH / 2) / math.tan(math.radians(TRUE_HFOV) / 2)
    return np.array([[f, 0.0, TRUE_PRINCIPAL[0]], [0.0, f, TRUE_PRINCIPAL[1]], [0.0, 0.0, 1.0]])


def _render(rvec: np.ndarray, tvec: np.ndarray, supersample: int = 3) -> np.ndarray:
    """The board seen through the true lens: every black square's outline (edges subdivided, so the
    distortion bends them) projected and filled, supersampled, on a white card."""
    s = supersample
    image = np.full((HEIGHT * s, WIDTH * s), 255, np.uint8)
    for i in range(-1, BOARD.columns):
        for j in range(-1, BOARD.rows):
            if (i + j) % 2:
                continue
            square = (
                np.array([[i, j, 0], [i + 1, j, 0], [i + 1, j + 1, 0], [i, j + 1, 0]], float) * BOARD.square_m
            )
            outline = [
                a + (b - a) * t
                for a, b in zip(square, np.roll(square, -1, 0), strict=True)
                for t in np.linspace(0, 1, 8, False)
            ]
            pixels, _ = cv2.projectPoints(np.array(outline), rvec, tvec, _true_matrix(), TRUE_DISTORTION)
            vertices = ((pixels.reshape(-1, 2) + 0.5) * s - 0.5) * 16  # 4 fractional bits
            cv2.fillPoly(image, [np.round(vertices).astype(np.int32)], 0, shift=4)
    return cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def _views(folder: Path, count: int, spread: float, seed: int = 0) -> list[Path]:
    """`count` views with the board's centre anywhere in the middle `spread` of the image, tilted."""
    rng = np.random.default_rng(seed)
    f = _true_matrix()[0, 0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        z = rng.uniform(0.45, 0.8)
        u = (0.5 + rng.uniform(-spread, spread) / 2) * WIDTH
        v = (0.5 + rng.uniform(-spread, spread) / 2) * HEIGHT
        centre = np.array([(u - TRUE_PRINCIPAL[0]) / f * z, (v - TRUE_PRINCIPAL[1]) / f * z, z])
        rvec = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)])
        rotation, _ = cv2.Rodrigues(rvec)
        middle = np.array([BOARD.columns * BOARD.square_m / 2, BOARD.rows * BOARD.square_m / 2, 0.0])
        image = _render(rvec, centre - rotation @ middle).astype(float) * 0.8 + 20
        image += rng.normal(0.0, 2.0, image.shape)
        path = folder / f"view-{k:02d}.png"
        cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _views(tmp_path_factory.mktemp("board"), 16, spread=0.8)


def test_the_lens_is_measured_so_that_every_pixel_maps_as_through_the_real_one(views: list[Path]) -> None:
    fit = calibrate_lens(views, BOARD)
    assert fit.views_used >= 14 and fit.image_size == (WIDTH, HEIGHT)
    assert fit.rms_px < 0.5 and fit.coverage >= 0.75 and not fit.problems()
    assert abs(fit.hfov_deg - TRUE_HFOV) < 0.5
    # What the crops rely on: a direction in the room lands on the same pixel as through the real lens.
    cols, rows = np.meshgrid(np.linspace(20, WIDTH - 20, 17), np.linspace(20, HEIGHT - 20, 9))
    pixels = np.stack([cols.ravel(), rows.ravel()], axis=1).reshape(-1, 1, 2)
    directions = cv2.undistortPoints(pixels, _true_matrix(), TRUE_DISTORTION).reshape(-1, 2)
    f = (WIDTH / 2) / math.tan(math.radians(fit.hfov_deg) / 2)
    measured = np.array([[f, 0.0, fit.principal_px[0]], [0.0, f, fit.principal_px[1]], [0.0, 0.0, 1.0]])
    points = np.column_stack([directions, np.ones(len(directions))])
    again, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), measured, np.array(fit.distortion))
    error = np.linalg.norm(again.reshape(-1, 2) - pixels.reshape(-1, 2), axis=1)
    assert error.max() < 1.5, f"worst pixel {error.max():.2f} px off"
    distortion_free = np.linalg.norm(
        cv2.projectPoints(points, np.zeros(3), np.zeros(3), _true_matrix(), np.zeros(5))[0].reshape(-1, 2)
        - pixels.reshape(-1, 2),
        axis=1,
    )
    assert distortion_free.max() > 15, "the lens matters: ignoring it misplaces the edges by pixels"


def test_intrinsics_command_writes_the_lens_the_crops_then_use(views: list[Path], tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(f"# site\n[camera]\n# the webcam\nwidth = {WIDTH}\nheight = {HEIGHT}\n")
    exe = console_script("vrclip-calibrate")
    args = [exe, "intrinsics", *map(str, views), "--board", "9x6", "--square-mm", "40"]
    done = subprocess.run([*args, "--config", str(site), "--write"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"wrote the lens into {site}" in done.stdout and "# the webcam" in site.read_text()
    camera = camera_from_config(load_config(site))
    assert not camera.plain and abs(camera.hfov_deg - TRUE_HFOV) < 0.5
    assert camera.principal is not None and abs(camera.principal[0] - TRUE_PRINCIPAL[0]) < 2.0
    other = tmp_path / "hd.toml"
    other.write_text("[camera]\nwidth = 1280\nheight = 720\n")
    refused = subprocess.run([*args, "--config", str(other)], capture_output=True, text=True)
    assert refused.returncode == 2 and "the views are 640x360" in refused.stderr


def test_views_only_in_the_middle_are_not_written(tmp_path: Path) -> None:
    """Distortion grows towards the edges: a fit from boards held in the middle only extrapolates."""
    middle = _views(tmp_path / "middle", 12, spread=0.1, seed=3)
    site = tmp_path / "site.toml"
    site.write_text(f"[camera]\nwidth = {WIDTH}\nheight = {HEIGHT}\n")
    args = ["intrinsics", *map(str, middle), "--board", "9x6", "--square-mm", "40", "--config", str(site)]
    done = subprocess.run(
        [console_script("vrclip-calibrate"), *args, "--write"], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "show the board near every edge and corner" in done.stderr and "not written" in done.stderr
    assert not site.with_name("site.toml.prev").exists()


def test_bad_views_and_boards_are_refused_with_what_to_do(views: list[Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="found in 5 of 5 views"):
        calibrate_lens(views[:5], BOARD)
    with pytest.raises(UserError, match="found in 0 of 16 views"):
        calibrate_lens(views, Board(8, 5, 0.04))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((100, 200), np.uint8))
    with pytest.raises(UserError, match=r"small\.png: is 200x100 but .* is 640x360"):
        calibrate_lens([*views[:3], small], BOARD)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"broken\.png: not an image"):
        calibrate_lens([broken], BOARD)
    with pytest.raises(UserError, match="give board views as images"):
        calibrate_lens([tmp_path / "notes.txt"], BOARD)
    # A recording is sampled for views: this one shows a room, and no board.
    from vrclip.edge.record import RecordRequest, record_simulated
    from vrclip.edge.sim.scene import SceneSpec

    room = tmp_path / "room.h5"
    cfg = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180}})
    record_simulated(cfg, RecordRequest(room, 1.0, SceneSpec(room=cfg.room, people=("a",), seed=1)))
    with pytest.raises(UserError, match="found in 0 of 30 views"):
        calibrate_lens([room], BOARD)
    for corners in ("9by6", "6x6", "2x5"):
        with pytest.raises(UserError, match="--board"):
            Board.parse(corners, 40.0)
    with pytest.raises(UserError, match="--square-mm"):
        Board.parse("9x6", 0.1)


def test_the_camera_pose_fit_keeps_a_measured_focal_length() -> None:
    """After `intrinsics`, `camera` fits position and angles through the measured lens and leaves the
    focal length alone: a checkerboard pins it far better than a walk."""
    lens = ((330.0, 176.0), (-0.12, 0.03, 0.001, -0.0007, 0.0))
    truth = CameraPose((0.3, -0.2, 2.0), 14.0, -5.0, 84.0, *lens)
    positions = np.random.default_rng(1).uniform([-1.8, 1.8], [1.8, 5.5], size=(80, 2))
    seen = predict(truth, 1.75, 0.2, positions, WIDTH, HEIGHT)
    obs = Observations(np.arange(80), positions, seen[:, 0], seen[:, 1], seen[:, 2], WIDTH, HEIGHT, 80)
    fit = fit_pose(obs, CameraPose((0.0, 0.0, 1.6), 8.0, 0.0, 84.0, *lens))
    assert fit.pose.hfov_deg == 84.0 and fit.sigma["hfov_deg"] == 0.0
    assert fit.pose.distortion == lens[1], "the lens travels with the pose"
    np.testing.assert_allclose(fit.pose.position_m, truth.position_m, atol=0.01)
    assert abs(fit.pose.pitch_deg - 14.0) < 0.1 and abs(fit.pose.yaw_deg + 5.0) < 0.1
    from vrclip.calibration.camera_pose import with_pose

    measured = EdgeConfig.model_validate(
        {"camera": {"width": WIDTH, "height": HEIGHT, "hfov_deg": 84.123, "distortion": list(lens[1])}}
    )
    fit = fit_pose(obs, CameraPose.of(measured))
    assert with_pose(measured, fit).camera.hfov_deg == 84.123, "written back as measured, not re-rounded"
    cfg = EdgeConfig.model_validate({"camera": {"width": WIDTH, "height": HEIGHT}})
    assert CameraPose.of(cfg).lens_measured is False, "without a lens calibration the walk fits hfov"


def test_views_of_another_size_than_the_config_are_refused_before_the_board_is_searched(
    views: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking for the board takes about 0.2 s a frame where it is not there, up to 120 frames a
    recording: a config for another camera size is refused on the first view, not after all that."""
    from typer.testing import CliRunner
    from vrclip.calibration import cli, intrinsics

    searched: list[int] = []
    monkeypatch.setattr(intrinsics, "find_corners", lambda *_: searched.append(1))
    other = tmp_path / "hd.toml"
    other.write_text("[camera]\nwidth = 1280\nheight = 720\n")
    args = ["intrinsics", *map(str, views), "--board", "9x6", "--square-mm", "40", "--config", str(other)]
    result = CliRunner().invoke(cli.app, args)
    assert isinstance(result.exception, UserError), result.output
    assert "the views are 640x360" in str(result.exception) and str(other) in str(result.exception)
    assert searched == [], "refused before any view was searched for the board"


def test_the_written_lens_projects_the_board_onto_its_corners_to_a_fraction_of_a_pixel(
    views: list[Path], tmp_path: Path
) -> None:
    """The whole chain, half pixels included: corners found in the images (OpenCV: pixel centres at
    whole numbers) -> calibrateCamera -> the config -> camera_from_config -> PinholeCamera.project()
    (pixel j's centre at j + 0.5). The board's corners, placed in the room where solvePnP saw them,
    must project onto the corners found in the image."""
    from vrclip.calibration.intrinsics import find_corners, write_lens

    site = tmp_path / "site.toml"
    site.write_text(f"[camera]\nwidth = {WIDTH}\nheight = {HEIGHT}\npitch_deg = 0.0\n")
    write_lens(site, calibrate_lens(views, BOARD).applied(load_config(site)))
    camera = camera_from_config(load_config(site))  # at the origin, looking along +y, level
    errors = []
    for path in views[:6]:
        found = find_corners(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), BOARD)
        assert found is not None
        ok, rvec, tvec = cv2.solvePnP(BOARD.object_points(), found, camera.matrix(), camera._coefficients())
        assert ok
        rotation, _ = cv2.Rodrigues(rvec)
        in_camera = BOARD.object_points() @ rotation.T + tvec.ravel()  # OpenCV: x right, y down, z ahead
        in_room = np.column_stack([in_camera[:, 0], in_camera[:, 2], -in_camera[:, 1]]) + camera.position
        projected, _ = camera.project(in_room)
        errors.append(projected - (found.reshape(-1, 2) + 0.5))
    residual = np.concatenate(errors)
    bias = np.abs(residual.mean(axis=0)).max()
    median = float(np.median(np.linalg.norm(residual, axis=1)))
    # Measured: bias under 0.001 px, median 0.11 px; a half-pixel slip gives a median of 0.72 px.
    assert bias < 0.05 and median < 0.2, f"corners land {median:.2f} px off (bias {bias:.3f} px)"


def test_one_view_repeated_is_refused_not_fitted(tmp_path: Path) -> None:
    """A board propped still in front of the camera and recorded (or one photo given ten times) gives
    the board in every view, but in one pose: the focal length is then not measured at all. Such a
    board filling the image once reported 111 degrees for the 84-degree lens, with RMS 0.16 px, full
    coverage and no warning, so `--write` wrote it."""
    rotation, _ = cv2.Rodrigues(np.zeros(3))
    middle = np.array([BOARD.columns * BOARD.square_m / 2, BOARD.rows * BOARD.square_m / 2, 0.0])
    image = _render(np.zeros(3), np.array([0.0, 0.0, 0.3]) - rotation @ middle).astype(float) * 0.8 + 20
    image += np.random.default_rng(0).normal(0.0, 2.0, image.shape)
    still = []
    for k in range(12):
        path = tmp_path / f"frame-{k:02d}.png"
        cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
        still.append(path)
    with pytest.raises(UserError, match="only 1 distinct") as info:
        calibrate_lens(still, BOARD)
    assert "found in 12 of 12 views" in str(info.value) and "move and tilt the board" in str(info.value)


def test_a_board_never_tilted_does_not_measure_the_focal_length(tmp_path: Path) -> None:
    """A board held square to the camera everywhere (moved and turned in its plane, never tilted)
    gives views that differ but all say the same about the focal length: nothing. Such 14 views
    once reported 121 degrees for the 84-degree lens, RMS 0.15 px, full coverage, no warning."""
    rng = np.random.default_rng(3)
    f = _true_matrix()[0, 0]
    middle = np.array([BOARD.columns * BOARD.square_m / 2, BOARD.rows * BOARD.square_m / 2, 0.0])
    square = []
    for k in range(14):
        z = rng.uniform(0.45, 0.8)
        u = (0.5 + rng.uniform(-0.4, 0.4)) * WIDTH
        v = (0.5 + rng.uniform(-0.4, 0.4)) * HEIGHT
        centre = np.array([(u - TRUE_PRINCIPAL[0]) / f * z, (v - TRUE_PRINCIPAL[1]) / f * z, z])
        rvec = np.array([0.0, 0.0, rng.uniform(-0.3, 0.3)])  # turned in its plane only
        rotation, _ = cv2.Rodrigues(rvec)
        image = _render(rvec, centre - rotation @ middle).astype(float) * 0.8 + 20
        image += rng.normal(0.0, 2.0, image.shape)
        path = tmp_path / f"square-{k:02d}.png"
        cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))
        square.append(path)
    fit = calibrate_lens(square, BOARD)
    assert fit.views_used >= 10 and fit.coverage >= 0.6 and fit.rms_px < 1.0, "passes the other checks"
    assert any("tilted" in problem for problem in fit.problems()), fit
