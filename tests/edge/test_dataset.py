"""`vrclip-edge dataset make --config SITE.toml`: the site's rig at the dataset's camera size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import camera_from_config
from vrclip.edge.dataset import (
    TRAINING_FRAMES,
    TRAINING_SEGMENT_S,
    DatasetRequest,
    dataset_config,
    make_dataset,
    segment_frames,
    session_frames,
    short_session_warning,
    shortest_training_seconds,
)
from vrclip.edge.errors import UserError
from vrclip.edge.recording.reader import SessionReader


def test_a_measured_lens_is_scaled_to_the_dataset_camera_size() -> None:
    """A site whose 1280x720 lens was measured makes a 640x360 dataset (the default size): the same
    lens at half the size, not the site's principal point in pixels of the small image (which no
    longer loads, or points the camera a quarter of the image off)."""
    for principal in ((652.0, 352.0), (600.0, 380.0)):
        site = EdgeConfig.model_validate(
            {
                "camera": {
                    "width": 1280,
                    "height": 720,
                    "principal_px": list(principal),
                    "distortion": [-0.12, 0.03, 0.001, -0.0007, 0.0],
                }
            }
        )
        small = dataset_config(DatasetRequest(Path("unused")), site)
        assert (small.camera.width, small.camera.height) == (640, 360)
        points = np.array([[0.5, 3.0, 1.0], [-2.0, 2.5, 0.2], [1.8, 4.0, 1.8], [0.0, 2.0, 0.0]])
        big, _ = camera_from_config(site).project(points)
        half, _ = camera_from_config(small).project(points)
        np.testing.assert_allclose(half, big / 2, atol=1e-6)


def test_a_rerun_with_other_settings_refuses_the_sessions_it_would_keep(tmp_path: Path) -> None:
    """Rerunning `dataset make` resumes by keeping finished sessions. With another --seed (another
    world: id-000 is then someone else) or camera size, keeping them mixed two datasets under one
    index that describes only the second: id-000 was silently another person than id-001's world.
    Now the kept session is named with the setting that differs."""
    out = tmp_path / "ds"
    tiny = {"identities": 1, "sessions": 1, "seconds": 0.5, "jobs": 1, "rate_hz": 4.0}
    first = DatasetRequest(out, seed=1, camera_width=64, camera_height=36, **tiny)
    make_dataset(first, EdgeConfig())
    make_dataset(first, EdgeConfig())  # the same settings resume
    kept = out / "id-000" / "session-00_day_none.h5"
    for other, fragment in (
        (DatasetRequest(out, seed=2, camera_width=64, camera_height=36, **tiny), "world_seed"),
        (DatasetRequest(out, seed=1, camera_width=96, camera_height=54, **tiny), "camera.width"),
    ):
        with pytest.raises(UserError, match="other settings") as e:
            make_dataset(other, EdgeConfig())
        assert str(kept) in str(e.value) and fragment in str(e.value)
    with SessionReader(kept) as reader:
        assert reader.conditions["world_seed"] == 1 and reader.camera_size == (36, 64)
    # A setting that does not shape the data (where the service writes its events) does not block it.
    elsewhere = EdgeConfig.model_validate({"sinks": {"jsonl_path": "/tmp/elsewhere.jsonl"}})
    make_dataset(first, elsewhere)


def test_a_dataset_made_again_with_the_same_settings_holds_the_same_recordings(tmp_path: Path) -> None:
    """The simulator is deterministic for a seed, so `dataset make` run again with the same options
    (on another box, after deleting the folder) writes the same recordings. A checkpoint records each
    session's session_id and refuses a dataset holding other recordings under its names: with a
    random id per file, the same dataset made again was refused as if it were another world's."""
    tiny = {"identities": 1, "sessions": 1, "seconds": 0.5, "jobs": 1, "rate_hz": 4.0}
    name = Path("id-000") / "session-00_day_none.h5"
    made = {}
    for out, seed in (("a", 1), ("b", 1), ("c", 2)):
        make_dataset(
            DatasetRequest(tmp_path / out, seed=seed, camera_width=64, camera_height=36, **tiny), EdgeConfig()
        )
        with SessionReader(tmp_path / out / name) as reader:
            made[out] = (reader.session_id, reader.radar(1).s21)
    assert made["a"][0] == made["b"][0] and made["a"][0] != made["c"][0]
    np.testing.assert_array_equal(made["a"][1], made["b"][1])


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), 0.0])
def test_a_session_length_that_is_not_a_positive_number_is_refused_by_name(
    seconds: float, tmp_path: Path
) -> None:
    """`--seconds inf` (and `dataset make --seconds nan`) passed the option checks and ended in a
    traceback (OverflowError: cannot convert float infinity to integer) from deep in the simulator
    or the live recorder; now each entry point names the option."""
    from vrclip.edge.dataset import plan_sessions
    from vrclip.edge.pipeline.app import simulated_feed
    from vrclip.edge.record import RecordRequest, record_simulated
    from vrclip.edge.record_live import LiveRecordRequest, record_feed
    from vrclip.edge.sim.scene import SceneSpec

    with pytest.raises(UserError, match="--seconds"):
        plan_sessions(DatasetRequest(tmp_path / "ds", seconds=seconds))
    out = tmp_path / "s.h5"
    with pytest.raises(UserError, match="--seconds"):
        record_simulated(EdgeConfig(), RecordRequest(out, seconds, SceneSpec()))
    feed = simulated_feed(EdgeConfig(), SceneSpec())
    try:
        with pytest.raises(UserError, match="--seconds"):
            record_feed(feed, LiveRecordRequest(out, seconds))
    finally:
        feed.close()
    assert not out.exists()


def _failing_first_session(config_toml: str, plan, out_dir: str) -> str:  # type: ignore[no-untyped-def]
    """Stands in for the worker: notes that it ran; the first session fails."""
    with open(Path(out_dir) / "ran.txt", "a") as log:
        log.write(plan.path + "\n")
    if plan.path.startswith("id-000/session-00"):
        raise RuntimeError("worker failed (test)")
    import time

    time.sleep(0.2)
    return plan.path


def test_a_failing_session_stops_the_sessions_not_started_yet(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """When one worker failed, leaving the pool still waited for every pending session before the
    error showed: minutes of rendering on a large dataset for nothing."""
    import vrclip.edge.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "_make_session", _failing_first_session)
    out = tmp_path / "ds"
    out.mkdir()
    request = DatasetRequest(out, identities=4, sessions=3, seconds=0.5, jobs=1, rate_hz=4.0)
    with pytest.raises(RuntimeError, match="worker failed"):
        make_dataset(request, EdgeConfig())
    ran = (out / "ran.txt").read_text().split()
    assert len(ran) <= 3, ran  # the failing one and what was already under way, not all 12


def test_sessions_shorter_than_the_training_segment_are_warned_about_at_make_time(tmp_path: Path) -> None:
    """`vrclip-export train` refused such a dataset only after it had been made (possibly hours of
    rendering); `dataset make` now says so first. It still makes it: short sessions serve smoke tests,
    quantisation calibration and training with a lower --segment-seconds."""
    from typer.testing import CliRunner
    from vrclip.edge.cli import app

    args = ["dataset", "make", "--identities", "1", "--sessions", "1", "--rate", "4", "-j", "1"]
    short = CliRunner().invoke(app, [*args, "--seconds", "0.5", "--out", str(tmp_path / "short")])
    assert short.exit_code == 0, short.output
    assert "warning: --seconds 0.5" in short.stderr and "10-s training segment" in short.stderr
    assert "--segment-seconds 0.5 or less and --frames 2 or less" in short.stderr
    assert (tmp_path / "short" / "dataset.json").is_file()
    assert (
        short_session_warning(TRAINING_SEGMENT_S, 10.0) is None and short_session_warning(12.0, 10.0) is None
    )
    assert short_session_warning(9.9, 10.0) is not None


def test_the_short_session_warning_names_frames_only_when_a_session_holds_fewer_than_one_rf_sample() -> None:
    """The trainer's segment is at least T = TRAINING_FRAMES radar frames whatever --segment-seconds
    says: a 0.5-s session at 4 Hz (2 frames) was told a lower --segment-seconds would do, which train
    still refused."""
    few = short_session_warning(0.5, 4.0)
    assert few is not None and "--segment-seconds 0.5 or less and --frames 2 or less" in few
    assert f"fewer than the {TRAINING_FRAMES} of one RF sample" in few
    enough = short_session_warning(1.2, 10.0)  # 12 frames: one RF sample
    assert enough is not None and "--segment-seconds 1.2 or less (" in enough and "--frames" not in enough


def test_the_short_session_warning_advises_the_shortest_seconds_that_train() -> None:
    """A 9.9-s dataset at 10 Hz was told '--seconds 12 or more', though 10 s hold the 10-s segment
    (100 frames, all the trainer asks at 10 Hz); a 10-s one at 1 Hz got no warning at all, though its
    10 frames are fewer than T = 12 and train refuses it. The trainer counts the segment in frames,
    so at 4 Hz 9.8 s (40 frames) are enough and draw no warning."""
    warning = short_session_warning(9.9, 10.0)
    assert warning is not None and "give --seconds 10 or more" in warning
    slow = short_session_warning(10.0, 1.0)
    assert slow is not None and "--frames 10 or less" in slow and "give --seconds 11.1 or more" in slow
    assert "--segment-seconds" not in slow
    assert short_session_warning(9.8, 4.0) is None
    assert "give --seconds 9.8 or more" in (short_session_warning(9.7, 4.0) or "")


@pytest.mark.parametrize("rate", [30.0, 12.5, 10.0, 4.0, 1.2, 1.0, 0.7, 0.5])
def test_the_advised_seconds_are_the_shortest_that_hold_the_training_segment(rate: float) -> None:
    shortest = shortest_training_seconds(rate)
    assert session_frames(shortest, rate) >= segment_frames(rate) >= TRAINING_FRAMES
    assert short_session_warning(shortest, rate) is None
    less = round(shortest - 0.1, 1)
    assert session_frames(less, rate) < segment_frames(rate)
    assert short_session_warning(less, rate) is not None


@pytest.mark.parametrize("seconds", ["inf", "nan", "0", "-5"])
def test_a_bad_seconds_gets_its_refusal_not_a_traceback_nor_a_warning(tmp_path: Path, seconds: str) -> None:
    """The short-session warning ran before --seconds was checked: `inf` ended in an OverflowError
    traceback (`nan` a ValueError) again, and -5 first drew a warning about sessions of -50 frames."""
    from typer.testing import CliRunner
    from vrclip.edge.cli import app

    args = ["dataset", "make", "--identities", "1", "--sessions", "1", "--seconds", seconds]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ds")])
    assert isinstance(result.exception, UserError), result.exception
    assert "a positive, finite number of seconds" in str(result.exception)
    assert "warning" not in result.output
    assert short_session_warning(float(seconds), 10.0) is None


def test_the_short_session_warning_ends_at_rates_the_config_takes_and_beyond() -> None:
    """The advice searched up in 0.1-s steps: at 1e-16 Hz (radar.frame_rate_hz takes any positive
    rate) the step was below the float's resolution and `dataset make` spun for ever; at 1e308 Hz
    the frame count overflowed. The rate is refused afterwards, with its own message."""
    tiny = short_session_warning(12.0, 1e-16)
    assert tiny is not None and "--frames 0 or less" in tiny
    assert short_session_warning(12.0, 1e308) is None
