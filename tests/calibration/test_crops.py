"""`vrclip-calibrate crops`: the runtime's crops, tiled so an installer can check the camera pose."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import cv2
import h5py
import pytest
import tomli_w
from vrclip.calibration.crops import crop_sheet
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import UserError
from vrclip.edge.record import RecordRequest, record_simulated
from vrclip.edge.sim.scene import SceneSpec

from tests.scripts import console_script


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180}})
    path = tmp_path_factory.mktemp("walk") / "walk.h5"
    record_simulated(cfg, RecordRequest(path, 5.0, SceneSpec(room=cfg.room, people=("alice",), seed=2)))
    return path


def _with_camera_moved(src: Path, dst: Path, dx_m: float) -> None:
    """The same recording, but its config says the camera hangs `dx_m` further along x."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        config = tomllib.loads(f.attrs["config_toml"])
        x, y, z = config["camera"]["position_m"]
        config["camera"]["position_m"] = [x + dx_m, y, z]
        f.attrs["config_toml"] = tomli_w.dumps(config)


def test_a_well_placed_camera_frames_the_person_in_every_crop(walk: Path) -> None:
    sheet = crop_sheet(walk, count=16, columns=4)
    assert sheet.crops == 16 and sheet.outside == 0 and sheet.tracked >= 30
    assert sheet.image.shape == (4 * 256, 4 * 128, 3)


def test_a_camera_configured_elsewhere_shows_crops_outside_the_image(walk: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved.h5"
    _with_camera_moved(walk, moved, 6.0)  # the config puts the camera far off to the side
    sheet = crop_sheet(moved, count=16)
    assert sheet.outside > 0
    # The corrected pose, tried on the same walk without recording it again.
    right = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180}})
    assert crop_sheet(moved, count=16, camera_config=right).outside == 0
    with pytest.raises(UserError, match="give a config for the camera that recorded it"):
        crop_sheet(moved, count=4, camera_config=EdgeConfig())


def test_crops_command_writes_the_sheet_and_refuses_bad_input(walk: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    done = subprocess.run(
        [console_script("vrclip-calibrate"), "crops", str(walk), "--out", str(out), "--crops", "8"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "8 crops from" in done.stdout and "0 fell outside" in done.stdout
    assert cv2.imread(str(out)).shape == (256, 8 * 128, 3)
    with pytest.raises(UserError, match=r"\.png or \.jpg"):
        from vrclip.calibration.crops import write_sheet

        write_sheet(crop_sheet(walk, count=2), tmp_path / "sheet.txt")
    with pytest.raises(UserError, match="give 1 to 64"):
        crop_sheet(walk, count=0)


def test_the_crops_pair_frames_as_the_runtime_does_with_the_configs_latency(
    walk: Path, tmp_path: Path
) -> None:
    """The runtime takes camera.latency_ms off every camera stamp before pairing it with a radar
    frame; the walk's stamps had the recording's latency (0 here) taken off already. A camera that
    stamps 200 ms late, with that latency measured into the config (`vrclip-calibrate camera
    --write`), must show the crops of the frames taken at the radar's instants: the same sheet as a
    camera that stamps on time. Once the check paired the raw stamps and showed crops 200 ms (28 cm
    at a walk) behind the walker, blaming a pose that was right."""
    late = tmp_path / "late.h5"
    shutil.copyfile(walk, late)
    with h5py.File(late, "r+") as f:
        f["camera/t_ns"][...] = f["camera/t_ns"][...] + 200_000_000
    measured = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180, "latency_ms": 200.0}})
    on_time = crop_sheet(walk, count=8)
    assert (crop_sheet(late, count=8, camera_config=measured).image == on_time.image).all()
