"""Radar time breaks in recordings made on site: an outage (a VNA reconnecting, seconds without frames)
or an NTP clock step forward or back. No RF window or training segment spans one, and a clock step
back is trained on instead of refused."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

import h5py
from vrclip.edge.dataset import (
    TRAINING_FRAMES,
    TRAINING_SEGMENT_S,
    session_frames,
    shortest_training_seconds,
)
from vrclip.export.data import (
    DatasetError,
    SessionInfo,
    Track,
    _pair_camera,
    all_samples,
    break_report,
    choose_segments,
    discover_sessions,
    labelled_starts,
    load_tracks,
    preprocess_session,
    radar_breaks,
    split_samples,
)
from vrclip.export.train import TrainConfig, Trainer

PERIOD_NS = 100_000_000  # 10 frames/s
HOUR_NS = 3600 * 1_000_000_000


def stamps(frames: int, jumps: dict[int, int]) -> np.ndarray:
    """10-Hz radar stamps with `jumps[i]` ns added from frame i on (an outage or a clock step)."""
    t = np.arange(frames, dtype=np.int64) * PERIOD_NS
    for i, jump in jumps.items():
        t[i:] += jump
    return t


def track(identity: str, session: str, t_ns: np.ndarray, labelled: slice = slice(None)) -> Track:
    frames = t_ns.size
    position = np.full((frames, 2), np.nan, np.float32)
    position[labelled] = 1.0
    return Track(
        SessionInfo(Path(session), session, "day", "none"),
        identity,
        t_ns,
        position,
        position,
        np.ones(frames, bool),
        np.ones(frames, bool),
        np.zeros((frames, 1, 1, 3), np.uint8),
        np.zeros((frames, 1, 1), np.complex64),
        np.zeros(2, np.float32),
    )


def spans_a_break(tr: Track, first: int, stop: int) -> bool:
    """Frames [first, stop) hold a break between two of them."""
    return bool(tr.breaks[first + 1 : stop].any())


# A 5-s outage at frame 200, an hour's forward step at 300, a step back of an hour at 400, and one
# of 2 s (stamps shown twice: the runs overlap in time) at 500.
JUMPS = {200: 5_000_000_000, 300: HOUR_NS, 400: -HOUR_NS, 500: -2_000_000_000}


def test_breaks_are_intervals_not_positive_or_over_three_frame_periods() -> None:
    t = stamps(600, JUMPS)
    assert np.flatnonzero(radar_breaks(t)).tolist() == [200, 300, 400, 500]
    jittered = t[:100] + np.random.default_rng(0).integers(-20_000_000, 20_000_000, 100)
    assert not radar_breaks(np.sort(jittered)).any()  # jitter and a dropped frame are no break
    assert not radar_breaks(np.delete(np.arange(50) * PERIOD_NS, [10, 11])).any()
    assert radar_breaks(np.array([0, 100, 100, 200]) * 1_000_000).tolist() == [False, False, True, False]
    # The rate is the radar's, not the hour's: within runs.
    assert track("a", "s", t).rate_hz() == pytest.approx(10.0)
    assert track("a", "s", t).longest_unbroken() == 200


def test_no_sample_or_training_segment_spans_a_break() -> None:
    t = stamps(600, JUMPS)
    tracks = [track("alice", "s1", t), track("bob", "s1", t, slice(150, 600)), track("bob", "s2", t)]
    samples = all_samples(tracks, 12)
    for ti, end in zip(samples.track, samples.end, strict=True):
        assert not spans_a_break(tracks[ti], end - 12 + 1, end + 1), (ti, end)
    # Every window inside a run is kept: runs of 200, 100, 100, 100, 100 frames (bob: 50 from 150).
    per_run = [200, 100, 100, 100, 100]
    assert int((samples.track == 0).sum()) == sum(n - 12 + 1 for n in per_run)
    assert int((samples.track == 1).sum()) == sum(n - 12 + 1 for n in [50, *per_run[1:]])
    for seed in range(30):
        segments = choose_segments(tracks, 10.0, 12, seed)
        train, test = split_samples(tracks, segments, 12)
        for seg in segments:
            tr = next(x for x in tracks if (x.identity, x.session.name) == (seg.identity, seg.session))
            assert seg.stop - seg.start == 100
            assert not spans_a_break(tr, seg.start, seg.stop), (seed, seg)
        assert len(train) and len(test)


def test_ten_seconds_are_counted_within_a_run_not_across_an_outage() -> None:
    """150 labelled frames, cut by a 5-s outage into 80 + 70: no 10-s (100-frame) run, so no segment,
    where before the fix a segment joined both sides of the outage."""
    tracks = [track("alice", "s1", stamps(300, {})), track("bob", "s1", stamps(150, {80: 5_000_000_000}))]
    with pytest.raises(DatasetError, match=r"bob: .* has 80 radar frames in a row between its 1 radar time"):
        choose_segments(tracks, 10.0, 12, 42)
    assert labelled_starts(tracks[1], 71).tolist() == list(range(80 - 71 + 1))


@pytest.mark.parametrize(
    ("frames", "labelled", "seconds", "advice"),
    [
        (10, slice(None), 0.5, "lower --frames 10 or less"),
        (50, slice(None), 10.0, "lower --segment-seconds 5 or less"),
        (8, slice(None), 10.0, "lower --segment-seconds 0.8 or less and --frames 8 or less"),
        (100, slice(0, 9), 0.5, "lower --frames 9 or less"),
    ],
    ids=["T binds", "the seconds bind", "both bind", "T binds the labelled run"],
)
def test_a_too_short_segment_names_each_option_that_binds(
    frames: int, labelled: slice, seconds: float, advice: str
) -> None:
    """The segment is max(T, seconds at the rate) frames: with T = 12 and a 10-frame recording,
    'lower --segment-seconds' (all the error said before) cannot help, --frames must go down. Each
    advice names the largest value that fits, and following it lets the split draw a segment."""
    tracks = [track("bob", "s1", stamps(frames, {}), labelled)]
    with pytest.raises(DatasetError, match="record") as error:
        choose_segments(tracks, seconds, 12, 42)
    assert str(error.value).endswith(advice)
    fit_seconds = float(advice.split("--segment-seconds ")[1].split()[0]) if "seconds" in advice else seconds
    fit_frames = int(advice.split("--frames ")[1].split()[0]) if "--frames" in advice else 12
    assert choose_segments(tracks, fit_seconds, fit_frames, 42)


def test_the_advised_segment_seconds_are_never_zero_at_high_rates() -> None:
    """The advice was floored to two decimals: 5 frames at 1000 frames/s (radar.frame_rate_hz's top)
    were told '--segment-seconds 0 or less', which train refuses (must be positive)."""
    tracks = [track("bob", "s1", np.arange(5, dtype=np.int64) * 1_000_000)]
    with pytest.raises(DatasetError, match="record") as error:
        choose_segments(tracks, 10.0, 12, 42)
    assert str(error.value).endswith("lower --segment-seconds 0.005 or less and --frames 5 or less")
    assert choose_segments(tracks, 0.005, 5, 42)


@pytest.mark.parametrize("rate", [10.0, 4.0, 1.0, 0.7])
def test_dataset_makes_advised_seconds_are_what_train_needs_with_the_defaults(rate: float) -> None:
    """`dataset make` advises the shortest --seconds that trains with the defaults: sessions that
    long give a segment, 0.1 s shorter are refused (the trainer's rule, not a margin guessed apart)."""
    period = round(1e9 / rate)

    def recorded(seconds: float) -> list[Track]:
        return [track("bob", "s1", np.arange(session_frames(seconds, rate), dtype=np.int64) * period)]

    shortest = shortest_training_seconds(rate)
    assert choose_segments(recorded(shortest), TRAINING_SEGMENT_S, TRAINING_FRAMES, 42)
    with pytest.raises(DatasetError, match="bob: its longest recording"):
        choose_segments(recorded(round(shortest - 0.1, 1)), TRAINING_SEGMENT_S, TRAINING_FRAMES, 42)


def test_break_report_counts_each_recordings_breaks() -> None:
    t = stamps(600, JUMPS)
    lines = break_report([track("a", "s1", t), track("b", "s1", t), track("a", "s2", stamps(50, {}))])
    assert len(lines) == 1
    assert "s1: 4 radar time break(s) (2 outage or clock step forward, 2 clock step back" in lines[0]
    assert break_report([track("a", "s2", stamps(50, {}))]) == ["radar time breaks: none in 1 recording(s)"]


# ------------------------------------------------------------------------ recordings on disk
def edited_copy(dataset: Path, out: Path, jumps: dict[int, int]) -> SessionInfo:
    """The dataset's first session, copied, with `jumps` applied to the radar and camera stamps alike
    (one clock stamps both): `jumps[i]` ns from the radar frame i's stamp on."""
    session = discover_sessions(dataset)[0]
    shutil.copy(session.path, out)
    with h5py.File(out, "r+") as f:
        radar, camera = f["radar/t_ns"][()], f["camera/t_ns"][()]
        new_radar, new_camera = radar.copy(), camera.copy()
        for i, jump in jumps.items():
            new_radar[i:] += jump
            new_camera[camera >= radar[i] - PERIOD_NS // 2] += jump
        f["radar/t_ns"][...] = new_radar
        f["camera/t_ns"][...] = new_camera
    return replace(session, path=out)  # the same name: the same anchor jitter as the original


def spec(dataset: Path, tmp_path: Path):
    return TrainConfig(dataset, tmp_path / "run", frames=4, channel_stride=4).prep_spec(144)


@pytest.mark.parametrize("step_s", [-5.0, 5.0], ids=["clock stepped back", "clock stepped forward"])
def test_a_recording_with_a_break_gives_the_same_frames_and_no_window_spans_it(
    small_dataset: Path, tmp_path: Path, step_s: float
) -> None:
    """A 5-s step back (the whole session's stamps run twice over the same time, the runs do not
    overlap) used to be refused ("the radar clock stepped back"); now every crop and RF window is the
    one the unbroken recording gives, and samples lie on either side of the break, never across it."""
    original = discover_sessions(small_dataset)[0]
    copy = edited_copy(small_dataset, tmp_path / "broken.h5", {12: int(step_s * 1e9)})
    prep = spec(small_dataset, tmp_path)
    want, got = preprocess_session(original, prep), preprocess_session(copy, prep)
    for a, b in zip(want, got, strict=True):
        for name in ("position", "anchor", "rgb_ok", "visible", "crops", "rf"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    tracks = load_tracks([copy], prep, tmp_path / "cache")
    assert np.flatnonzero(tracks[0].breaks).tolist() == [12]
    samples = all_samples(tracks, 4)
    first = samples.end - 4 + 1
    assert not ((first < 12) & (samples.end >= 12)).any()
    assert (samples.end < 12).any() and (first >= 12).any()


def test_frames_whose_stamps_the_clock_showed_twice_get_no_camera_frame(
    small_dataset: Path, tmp_path: Path
) -> None:
    """A 0.5-s step back: radar frames stamped in the half second shown twice could pair with a camera
    frame taken before or after the step; they get none (RGB absent), every other frame its own."""
    original = discover_sessions(small_dataset)[0]
    copy = edited_copy(small_dataset, tmp_path / "twice.h5", {12: -500_000_000})
    prep = spec(small_dataset, tmp_path)
    want, got = preprocess_session(original, prep), preprocess_session(copy, prep)
    for a, b in zip(want, got, strict=True):
        same = a["rgb_ok"] == b["rgb_ok"]
        same &= (a["crops"] == b["crops"]).all(axis=(1, 2, 3))
        assert not b["rgb_ok"][~same].any()  # a frame that changed lost its crop, never got another
        changed = np.flatnonzero(~same)
        assert changed.size and set(changed) <= set(range(12 - 6, 12 + 6)), changed
        np.testing.assert_array_equal(a["rf"], b["rf"])


def test_a_radar_frame_before_a_step_back_never_pairs_with_a_camera_frame_from_after_it() -> None:
    """The clock steps back from 1.9 s to 1.45 s, and the camera dropped its frames at 1.4 and 1.5 s
    before the step. A radar frame at 1.42 s was taken before the step (the clock showed that time
    once, before it): no camera frame of its own lies within the slop, so it gets none, not the first
    frame after the step, 30 ms away by its stamp but taken half a second later (before: that one)."""
    before = np.delete(np.arange(20), [14, 15]) * PERIOD_NS
    after = 1_450_000_000 + np.arange(20) * PERIOD_NS
    camera = np.concatenate([before, after]).astype(np.int64)
    radar = np.array([1_000_000_000, 1_420_000_000, 1_620_000_000, 3_040_000_000], np.int64)
    pair = _pair_camera(radar, camera)
    assert pair.tolist() == [10, -1, -1, before.size + 16]  # 1.62 s was shown twice: no pair either


def test_training_prepares_recordings_with_breaks_and_says_how_many(
    small_dataset: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data, ignore=shutil.ignore_patterns(".vrclip-cache"))
    index = json.loads((data / "dataset.json").read_text())
    first = data / index["sessions"][0]["path"]
    edited_copy(data, tmp_path / "stepped.h5", {12: -5_000_000_000})
    shutil.move(tmp_path / "stepped.h5", first)
    lines: list[str] = []
    cfg = TrainConfig(
        data,
        tmp_path / "run",
        frames=4,
        range_bins=8,
        channel_stride=4,
        segment_seconds=0.8,
        batch_size=8,
        cache=tmp_path / "cache",
        jobs=1,
    )
    trainer = Trainer(cfg, log=lines.append)
    trainer.prepare()
    assert any(f"{first}: 1 radar time break(s) (0 outage" in line for line in lines), lines
    for index_ in (trainer.train_index, trainer.test_index):
        for ti, end in zip(index_.track, index_.end, strict=True):
            assert not spans_a_break(trainer.tracks[ti], end - 4 + 1, end + 1)
    assert any(trainer.tracks[t].session.path == first for t in trainer.test_index.track)
