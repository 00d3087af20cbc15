"""`vrclip-edge label`: a one-person recording gets the radar's own track as labels, usable for training."""

from __future__ import annotations

import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import RecordingError, UserError
from vrclip.edge.label import interpolate, label_recording
from vrclip.edge.record import RecordRequest, record_simulated
from vrclip.edge.recording.reader import SessionReader
from vrclip.edge.sim.scene import SceneSpec

from tests.scripts import console_script

FAST = {"camera": {"width": 320, "height": 180}}


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated one-person session (its simulator labels are what the radar track is checked on)."""
    cfg = EdgeConfig.model_validate(FAST)
    path = tmp_path_factory.mktemp("walk") / "alice.h5"
    record_simulated(cfg, RecordRequest(path, 6.0, SceneSpec(room=cfg.room, people=("alice",), seed=2)))
    return path


def _strip_labels(src: Path, dst: Path, identities: list[str]) -> None:
    """What a real rig records: the same frames, no ground truth."""
    import json
    import shutil

    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        f.attrs["identities_json"] = json.dumps(identities)
        for stream in ("radar", "camera", "depth"):
            f[stream]["truth/count"][...] = -1
            f[stream]["truth/ids"][...] = -1
            f[stream]["truth/positions"][...] = np.nan


def test_labels_follow_the_person_and_the_data_is_copied_unchanged(walk: Path, tmp_path: Path) -> None:
    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    out = tmp_path / "labelled.h5"
    result = label_recording(rig, out)
    assert result.identity == "alice" and result.crowded == 0
    assert result.labelled >= 0.85 * result.radar_frames
    with SessionReader(walk) as truth, SessionReader(out) as got:
        assert got.identities == ("alice",) and "vrclip-edge label" in got.conditions["labels"]
        n = got.count("radar")
        want = truth.truth_block("radar", 0, n)
        have = got.truth_block("radar", 0, n)
        known = have["count"] == 1
        assert known.sum() == result.labelled
        error = np.linalg.norm(have["positions"][known, 0] - want["positions"][known, 0], axis=1)
        assert np.median(error) < 0.2 and np.percentile(error, 90) < 0.35, "the track is where she walked"
        cam = got.truth_block("camera", 0, got.count("camera"))
        assert (cam["count"] == 1).sum() == result.labelled_camera >= 0.8 * result.camera_frames
        np.testing.assert_array_equal(truth.radar_block(0, n)[0], got.radar_block(0, n)[0])
        assert truth.camera_jpeg(5) == got.camera_jpeg(5), "JPEG bytes are copied, not re-encoded"
        assert got.session_id == truth.session_id


def test_the_labelled_copy_trains(walk: Path, tmp_path: Path) -> None:
    """The trainer's preprocessing refuses the raw rig recording and builds a track from the labelled one."""
    from vrclip.export.data import DatasetError, PrepSpec, SessionInfo, preprocess_session

    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    with pytest.raises(DatasetError, match="no identity labels"):
        preprocess_session(SessionInfo(rig, "rig", "day", "none"), PrepSpec())
    out = tmp_path / "labelled.h5"
    label_recording(rig, out)
    tracks = preprocess_session(SessionInfo(out, "labelled", "day", "none"), PrepSpec())
    assert [str(t["identity"]) for t in tracks] == ["alice"]
    assert tracks[0]["rgb_ok"].mean() > 0.8


def test_who_walked_must_be_known_and_the_output_is_never_the_input(walk: Path, tmp_path: Path) -> None:
    two = tmp_path / "two.h5"
    _strip_labels(walk, two, ["alice", "bob"])
    with pytest.raises(UserError, match=r"names alice, bob; .*--identity NAME"):
        label_recording(two, tmp_path / "x.h5")
    result = label_recording(two, tmp_path / "x.h5", identity="bob")
    with SessionReader(tmp_path / "x.h5") as got:
        assert got.identities == ("bob",) and result.identity == "bob"
    with pytest.raises(UserError, match="already exists"):
        label_recording(two, tmp_path / "x.h5", identity="bob")
    with pytest.raises(UserError, match="another file than the recording"):
        label_recording(two, two, identity="bob", overwrite=True)
    with pytest.raises(RecordingError, match="no such file"):
        label_recording(tmp_path / "missing.h5", tmp_path / "y.h5")
    assert not (tmp_path / "y.h5").exists()


def test_interpolation_bridges_short_gaps_only() -> None:
    t = np.array([0, 100, 200, 900_000_000], np.int64)
    p = np.array([[0.0, 1.0], [1.0, 1.0], [np.nan, np.nan], [5.0, 5.0]])
    got = interpolate(t, p, np.array([50, 150, 300_000_000, -10], np.int64))
    np.testing.assert_allclose(got[0], [0.5, 1.0])
    assert np.isnan(got[1:]).all(), "no extrapolation, no bridging of a 0.9 s gap"


def test_a_clock_step_back_labels_each_side_from_its_own_radar_frames() -> None:
    """NTP steps the clock back 0.5 s mid-walk: the radar stamps go 0..1.9 s, then 1.4..3.3 s again.
    A camera time the clock showed twice cannot be placed and stays unlabelled; times shown once get
    the position of their own side of the step (before: searched as if sorted, wrong positions)."""
    period = 100_000_000
    t = np.concatenate([np.arange(20), np.arange(14, 34)]).astype(np.int64) * period
    walk_x = np.arange(40) * 0.14  # the walker moves on in frame order, whatever the stamps say
    p = np.stack([walk_x, np.full(40, 2.0)], axis=1)
    cam = np.array([5, 12, 16.5, 25, 30]) * period
    got = interpolate(t, p, cam.astype(np.int64))
    np.testing.assert_allclose(got[[0, 1]], [[0.7, 2.0], [1.68, 2.0]], atol=1e-9)
    assert np.isnan(got[2]).all(), "1.65 s was shown twice: unlabelled"
    np.testing.assert_allclose(
        got[[3, 4]], [[(25 - 14 + 20) * 0.14, 2.0], [(30 - 14 + 20) * 0.14, 2.0]], atol=1e-9
    )


def test_after_a_clock_step_back_a_time_shown_once_is_never_labelled_from_the_other_side() -> None:
    """The clock steps back to 1.45 s after 1.9 s, and the walker is labelled in just the first
    radar frame after the step. A camera frame at 1.42 s was taken before the step (the clock showed
    that time once, before it): its position comes from the frames around it then (x = 1.988 m), not
    from the one labelled frame after the step, 30 ms away by its stamp but taken later (x = 2.8 m)."""
    period = 100_000_000
    t = np.concatenate([np.arange(20) * period, 1_450_000_000 + np.arange(20) * period]).astype(np.int64)
    p = np.stack([np.arange(40) * 0.14, np.full(40, 2.0)], axis=1)
    p[21:] = np.nan  # after the step only its first frame is labelled
    got = interpolate(t, p, np.array([1_420_000_000], np.int64))
    np.testing.assert_allclose(got, [[14.2 * 0.14, 2.0]], atol=1e-9)


def test_a_repeated_radar_stamp_is_a_broken_frame_not_a_clock_step() -> None:
    """A radar frame stamped again with its predecessor's time (200 ms twice) is no step back: the
    clock showed no stretch of time twice, so a camera frame at that instant is labelled (before: the
    repeat split the runs and 200 ms counted as shown twice, unlabelled)."""
    t = np.array([0, 100, 200, 200, 300], np.int64) * 1_000_000
    p = np.stack([np.array([0.0, 0.1, 0.2, 0.2, 0.3]), np.full(5, 2.0)], axis=1)
    got = interpolate(t, p, np.array([150, 200, 250], np.int64) * 1_000_000)
    np.testing.assert_allclose(got, [[0.15, 2.0], [0.2, 2.0], [0.25, 2.0]], atol=1e-9)


def test_a_time_outside_both_runs_near_a_frame_of_each_stays_unlabelled() -> None:
    """The clock steps back from 0.3 s to 0 s; before the step only the frame at 0.2 s is labelled,
    after it only the one at 0.1 s. A camera time of 0.15 s lies in neither run's span and within half
    a gap of both frames: it came before the first run or after the second, which is unknown, so it
    stays unlabelled (before: the later run's position won)."""
    t = np.array([200, 300, 0, 100], np.int64) * 1_000_000
    p = np.array([[1.0, 2.0], [np.nan, np.nan], [np.nan, np.nan], [3.0, 2.0]])
    assert np.isnan(interpolate(t, p, np.array([150_000_000], np.int64))).all()
    only_before = p.copy()
    only_before[3] = np.nan
    np.testing.assert_allclose(interpolate(t, only_before, np.array([150_000_000], np.int64)), [[1.0, 2.0]])


def test_a_slow_radar_still_labels_the_camera_frames_between_its_frames() -> None:
    """A real VNA may sweep the array only ~3.5 times a second: frames 286 ms apart are neighbours,
    not a gap, and the camera frames between them get positions."""
    t = np.arange(6, dtype=np.int64) * 286_000_000
    p = np.stack([np.linspace(0, 1, 6), np.full(6, 2.0)], axis=1)
    p[3] = np.nan  # one missed radar frame: 572 ms between labelled neighbours is still bridged
    cam = np.array([143_000_000, 900_000_000], np.int64)
    got = interpolate(t, p, cam)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], [0.1, 2.0], atol=1e-9)
    p[2] = np.nan  # two missed frames in a row: 858 ms apart, more than 2.5 frame periods
    assert np.isnan(interpolate(t, p, cam)[1]).all()


def test_label_command(walk: Path, tmp_path: Path) -> None:
    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    out = tmp_path / "labelled.h5"
    done = subprocess.run(
        [console_script("vrclip-edge"), "label", str(rig), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: alice labelled in" in done.stdout
    again = subprocess.run(
        [console_script("vrclip-edge"), "label", str(rig), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    # `inspect` tells a labelled copy from the raw one: what the trainer can use of each.
    raw = subprocess.run([console_script("vrclip-edge"), "inspect", str(rig)], capture_output=True, text=True)
    got = subprocess.run([console_script("vrclip-edge"), "inspect", str(out)], capture_output=True, text=True)
    assert raw.stdout.count("no labels") == 3
    assert "with people labelled" in got.stdout and "no labels" not in got.stdout


def test_a_session_the_radar_saw_nobody_in_is_refused_and_writes_nothing(walk: Path, tmp_path: Path) -> None:
    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    with h5py.File(rig, "r+") as f:
        f["radar"]["s21"][...] = 0  # a dead front end: nothing to image
    with pytest.raises(UserError, match="tracked nobody"):
        label_recording(rig, tmp_path / "out.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rig.h5"]


def test_the_labelled_copy_is_readable_as_the_umask_allows(walk: Path, tmp_path: Path) -> None:
    """It was written through a private temporary file and kept its 0600 mode: a trainer running as
    another user could not read it."""
    import os

    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    out = tmp_path / "labelled.h5"
    umask = os.umask(0o022)
    try:
        label_recording(rig, out)
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644


def test_every_stream_says_visible_where_the_camera_would_see_the_person(walk: Path, tmp_path: Path) -> None:
    """truth/visible means visible to the camera on every stream (the simulator labels them all so);
    the radar's said True wherever labelled and the depth stream's never."""
    import tomllib

    from vrclip.edge.config import parse_config
    from vrclip.edge.crops import camera_from_config, in_view

    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    out = tmp_path / "labelled.h5"
    label_recording(rig, out)
    with SessionReader(out) as got:
        camera = camera_from_config(parse_config(tomllib.loads(got.config_toml)))
        assert set(got.streams) == {"radar", "camera", "depth"}
        seen = {}
        for stream in got.streams:
            truth = got.truth_block(stream, 0, got.count(stream))
            known = truth["count"] == 1
            want = [in_view(camera, p) for p in truth["positions"][known, 0]]
            np.testing.assert_array_equal(truth["visible"][known, 0], want, err_msg=stream)
            seen[stream] = truth["visible"][known, 0].mean()
    assert seen["depth"] > 0.5, "the person walked in view most of the time"


def test_a_disk_that_fills_while_labelling_is_one_error_line(walk: Path, tmp_path: Path) -> None:
    """Room for the copy but not for the new labels: h5py's RuntimeError from the close (a flush the
    disk refused) escaped as a traceback, as only OSError was turned into the error line."""
    import resource
    import signal

    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    out = tmp_path / "labelled.h5"
    limit = rig.stat().st_size + 64  # the copy fits, the labels' metadata does not

    def file_size_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    done = subprocess.run(
        [console_script("vrclip-edge"), "label", str(rig), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=file_size_limit,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert f"{out.name}: cannot write the labelled copy" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rig.h5"]


def test_a_recording_whose_recorder_died_is_labelled_and_one_being_recorded_is_not(
    walk: Path, tmp_path: Path
) -> None:
    """A crashed recorder leaves its file marked open; `label` told the user to run h5clear, which
    this project does not install. Now the frames it flushed are labelled into a finished copy at
    once (no process holds the file); a file a live recorder holds open is refused, naming it."""
    import sys

    rig = tmp_path / "rig.h5"
    _strip_labels(walk, rig, ["alice"])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, h5py\n"
            "f = h5py.File(sys.argv[1], 'r+', libver='latest')\n"
            "f.swmr_mode = True\n"
            "f.flush()\n"
            "print('open', flush=True)\n"
            "sys.stdin.readline()\n",
            str(rig),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(RecordingError, match=f"is being recorded \\(process {holder.pid} holds it open"):
            label_recording(rig, tmp_path / "too-soon.h5")
    finally:
        holder.kill()
        holder.wait(30)
    # Killed (as kill -9 leaves a recorder): still marked open, held by nobody, labelled at once.
    with SessionReader(rig) as reader:
        assert reader.live
    out = tmp_path / "labelled.h5"
    result = label_recording(rig, out)
    assert result.recorder_died and result.labelled >= 0.85 * result.radar_frames
    with SessionReader(out) as got, SessionReader(walk) as original:
        assert not got.live and got.identities == ("alice",)
        assert got.counts == original.counts
        np.testing.assert_array_equal(got.radar(5).s21, original.radar(5).s21)
        np.testing.assert_array_equal(got.camera(3).rgb, original.camera(3).rgb)


def test_writers_of_lists_only_processes_holding_the_file_open_for_writing(tmp_path: Path) -> None:
    import sys

    from vrclip.edge.recording.writers import writers_of

    target = tmp_path / "f.bin"
    target.write_bytes(b"x")
    assert writers_of(target) == []
    script = "import sys; f = open(sys.argv[1], sys.argv[2]); print('open', flush=True); sys.stdin.readline()"
    for mode, writes in (("rb", False), ("ab", True)):
        holder = subprocess.Popen(
            [sys.executable, "-c", script, str(target), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
            assert writers_of(target) == ([holder.pid] if writes else [])
        finally:
            holder.kill()
            holder.wait(30)
    assert writers_of(target, proc=tmp_path / "no-proc") is None


def test_writers_of_finds_the_writer_of_a_recording_named_through_a_symlink(tmp_path: Path) -> None:
    """/proc's fd links name the file itself, not the symlink the user passed (`latest.h5 ->
    2024-05-01.h5`): matching the links against the symlink's name skipped the recorder, so a live
    recording looked like one whose recorder died."""
    import sys

    from vrclip.edge.recording.writers import writers_of

    target = tmp_path / "sessions" / "2024-05-01.h5"
    target.parent.mkdir()
    target.write_bytes(b"x")
    latest = tmp_path / "latest.h5"
    latest.symlink_to(target)
    script = "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); sys.stdin.readline()"
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert writers_of(latest) == [holder.pid]
        assert writers_of(target) == [holder.pid]
    finally:
        holder.kill()
        holder.wait(30)


def test_writers_of_cannot_tell_when_proc_hides_other_users_processes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With /proc mounted hidepid=2, another user's recorder is absent from the scan, not unreadable:
    the scan looked complete and said nobody held the file, so a live recording looked dead."""
    import os

    from vrclip.edge.recording.writers import writers_of

    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    target = tmp_path / "f.bin"
    target.write_bytes(b"x")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    mountinfo = "22 26 0:21 / {} rw,nosuid shared:13 - proc proc rw,{}\n"
    (proc / "self" / "mountinfo").write_text(mountinfo.format(proc, "hidepid=invisible"))
    assert writers_of(target, proc=proc) is None
    (proc / "self" / "mountinfo").write_text(mountinfo.format(proc, "hidepid=0"))
    assert writers_of(target, proc=proc) == []


def test_writers_of_reads_only_the_links_of_unrelated_descriptors(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Stat'ing every open file of every process follows each link into its filesystem, where a file
    on a hung NFS or FUSE mount blocks the scan: descriptors naming another file are not stat'ed."""
    import os

    from vrclip.edge.recording.writers import writers_of

    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    mountinfo = "22 26 0:21 / {} rw,nosuid shared:13 - proc proc rw\n"
    (proc / "self" / "mountinfo").write_text(mountinfo.format(proc))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    target = tmp_path / "walk.h5"
    target.write_bytes(b"x")
    hung = tmp_path / "nfs" / "elsewhere.bin"
    hung.parent.mkdir()
    hung.write_bytes(b"y")
    for pid, opened in (("4242", hung), ("4343", target)):
        (proc / pid / "fd").mkdir(parents=True)
        (proc / pid / "fdinfo").mkdir()
        (proc / pid / "fd" / "3").symlink_to(opened)
        (proc / pid / "fdinfo" / "3").write_text("pos:\t0\nflags:\t0100001\n")
    stat = os.stat
    followed: list[str] = []

    def recording_stat(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        followed.append(str(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", recording_stat)
    assert writers_of(target, proc=proc) == [4343]
    assert str(proc / "4242" / "fd" / "3") not in followed
    assert str(proc / "4343" / "fd" / "3") in followed


def test_after_a_radar_outage_the_track_is_labelled_again_as_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """She walks for 2 s, the radar is gone for 5 s, then she stands 1.2 m further on. The tracker
    keeps her id, but the frames right after the outage stay unlabelled, as a new track's first
    frames do: the first position there is partly the track's guess (0.3 m off), and a labelled
    run joining frames 5 s apart would give the trainer segments and RF windows across the outage."""
    from types import SimpleNamespace

    from vrclip.edge import label

    walk = [(1.4 * k * 0.1, 3.0) for k in range(20)]
    stop = (walk[-1][0] + 1.2, 3.0)
    where = walk + [stop] * 8
    times = [(k + 1) * 10**8 for k in range(20)] + [20 * 10**8 + 5 * 10**9 + k * 10**8 for k in range(8)]

    class Imaging:
        def __init__(self, *args: object) -> None:
            self.imager = SimpleNamespace(close=lambda: None)

        def process(self, s21: int) -> SimpleNamespace:
            x, y = where[s21]
            return SimpleNamespace(detections=[SimpleNamespace(x_m=x, y_m=y)])

    reader = SimpleNamespace(
        edge_config=EdgeConfig,
        calibration=None,
        array_geometry=None,
        count=lambda stream: len(where),
        iter_radar=lambda: (SimpleNamespace(s21=i, t_ns=t) for i, t in enumerate(times)),
    )
    monkeypatch.setattr(label, "ImagingPipeline", Imaging)
    positions, crowded = label.radar_track(reader)  # type: ignore[arg-type]
    labelled = np.isfinite(positions).all(axis=1)
    assert crowded == 0
    assert labelled.tolist() == [False] * 2 + [True] * 18 + [False] * 2 + [True] * 6
    error = np.linalg.norm(positions[22:] - np.array(stop), axis=1)
    assert error.max() < 0.1, f"labels after the outage are where she stands: {error}"
