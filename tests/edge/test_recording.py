"""Session recordings: what the replay source, the trainer and a crashed rig rely on."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from vrclip.edge.errors import RecordingError, UserError
from vrclip.edge.frames import CLOCK_REALTIME, CLOCK_SIMULATED, GroundTruth, RadarFrame
from vrclip.edge.recording import SessionReader, SessionWriter
from vrclip.edge.recording.jpeg import decode_rgb, encode_rgb

CHILD_PATH = Path(__file__).with_name("recording_child.py")


def _load_child() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recording_child", CHILD_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


child = _load_child()


def _assert_truth_equal(got: GroundTruth | None, want: GroundTruth | None) -> None:
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got.identities == want.identities
    np.testing.assert_array_equal(got.positions, want.positions)
    np.testing.assert_array_equal(got.visible, want.visible)


def _assert_frames_match(reader: SessionReader, n: int | dict[str, int]) -> None:
    """The first n frames (per stream when a dict) are bit-identical to what recording_child generates."""
    counts = n if isinstance(n, dict) else dict.fromkeys(("radar", "camera", "depth"), n)
    for i in range(counts["radar"]):
        r, want = reader.radar(i), child.radar_frame(i)
        assert r.s21.dtype == np.complex64
        np.testing.assert_array_equal(r.s21, want.s21)
        assert (r.seq, r.t_ns, r.clock) == (want.seq, want.t_ns, want.clock)
        _assert_truth_equal(r.truth, want.truth)
    for i in range(counts["camera"]):
        cam = child.camera_frame(i)
        assert reader.camera_jpeg(i) == encode_rgb(cam.rgb, 90).tobytes()
        c = reader.camera(i)
        assert (c.seq, c.t_ns, c.clock) == (cam.seq, cam.t_ns, cam.clock)
        _assert_truth_equal(c.truth, cam.truth)
    for i in range(counts["depth"]):
        d, dwant = reader.depth(i), child.depth_frame(i)
        np.testing.assert_array_equal(d.depth, dwant.depth.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(d.positions, dwant.positions)
        assert (d.seq, d.t_ns) == (dwant.seq, dwant.t_ns)
        _assert_truth_equal(d.truth, dwant.truth)


def _write_session(path: Path, n: int = 8, **kw: object) -> None:
    with child.open_writer(path, **kw) as w:
        for i in range(n):
            child.write_all(w, i)


def test_round_trip_all_streams_with_truth_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with child.open_writer(path, session_id="sess-1", calibration={"version": 3}) as w:
        for i in range(8):
            child.write_all(w, i)
        assert w.counts == {"radar": 8, "camera": 8, "depth": 8}

    with SessionReader(path) as r:
        assert not r.live  # closed cleanly
        assert r.counts == {"radar": 8, "camera": 8, "depth": 8}
        assert r.session_id == "sess-1"
        assert r.config_toml == child.CONFIG_TOML
        assert r.geometry == child.GEOMETRY
        assert r.conditions == child.CONDITIONS
        assert r.calibration == {"version": 3}
        assert r.identities == child.IDENTITIES
        np.testing.assert_array_equal(r.freqs_hz, child.freqs_hz())
        assert {s: r.clock(s) for s in r.streams} == dict.fromkeys(
            ("radar", "camera", "depth"), CLOCK_SIMULATED
        )
        _assert_frames_match(r, 8)

        # Decoded camera frames are the RGB images (JPEG-close, and colour order not swapped).
        for i, c in enumerate(r.iter_camera()):
            original = child.camera_frame(i).rgb.astype(np.int16)
            assert np.abs(c.rgb.astype(np.int16) - original).mean() < 3.0
            assert c.rgb[..., 0].mean() == pytest.approx(original[..., 0].mean(), abs=3)

        # Bulk and iterator paths agree with random access.
        s21, t = r.radar_block(2, 6)
        assert s21.shape == (4, child.CHANNELS, child.POINTS)
        for j, i in enumerate(range(2, 6)):
            np.testing.assert_array_equal(s21[j], child.radar_frame(i).s21)
            assert t[j] == child.t_ns(i)
        frames = list(r.iter_radar())
        assert [f.seq for f in frames] == [child.radar_frame(i).seq for i in range(8)]
        _assert_truth_equal(frames[6].truth, None)
        labels = r.truth_block("radar", 0, 8)
        assert labels["count"].tolist() == [(-1 if i % 7 == 6 else i % 4) for i in range(8)]
        assert [d.seq for d in r.iter_depth(5)] == [3005, 3006, 3007]
        assert r.radar(-1).seq == child.radar_frame(7).seq
        with pytest.raises(IndexError):
            r.radar(8)


def test_radar_only_session_with_its_own_clock(tmp_path: Path) -> None:
    path = tmp_path / "radar_only.h5"
    w = SessionWriter(
        path,
        config_toml="",
        geometry=child.GEOMETRY,
        freqs_hz=child.freqs_hz(),
        radar_channels=child.CHANNELS,
        conditions={},
        identities=[],
        clock={"radar": CLOCK_REALTIME},
    )
    frame = child.radar_frame(0, clock=CLOCK_REALTIME)
    w.write_radar(RadarFrame(frame.seq, frame.t_ns, frame.clock, frame.s21))
    with pytest.raises(RecordingError, match="no camera stream"):
        w.write_camera(child.camera_frame(0))
    w.close()
    with SessionReader(path) as r:
        assert r.streams == ("radar",)
        assert r.counts == {"radar": 1, "camera": 0, "depth": 0}
        assert r.clock("radar") == CLOCK_REALTIME
        assert r.calibration is None
        assert r.radar(0).truth is None
        with pytest.raises(RecordingError, match="no camera stream"):
            r.camera(0)


def _spawn(mode: str, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD_PATH), mode, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _expect_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        proc.kill()
        raise AssertionError(
            f"child said {line!r}, expected {prefix!r}; stderr: {proc.communicate()[1][-2000:]}"
        )
    return line


def test_reader_sees_flushed_frames_while_writer_is_open(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    proc = _spawn("live", path)
    try:
        _expect_line(proc, "flushed 5")
        with SessionReader(path) as r:
            assert r.live
            assert r.counts == {"radar": 5, "camera": 5, "depth": 5}
            _assert_frames_match(r, 5)

            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            _expect_line(proc, "wrote 9")
            # The child does not call flush(): the writer's flush interval (0.2 s) must publish them.
            deadline = time.monotonic() + 10
            while r.refresh()["radar"] < 9 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert r.counts == {"radar": 9, "camera": 9, "depth": 9}
            _assert_frames_match(r, 9)

            proc.stdin.write("close\n")
            proc.stdin.flush()
            _expect_line(proc, "closed")
            assert r.refresh()["radar"] == 9
        with SessionReader(path) as r:
            assert not r.live
            assert r.counts["camera"] == 9
    finally:
        proc.kill()
        proc.communicate()


def test_kill_9_mid_write_keeps_every_flushed_frame(tmp_path: Path) -> None:
    path = tmp_path / "killed.h5"
    proc = _spawn("kill", path)
    try:
        flushed = int(_expect_line(proc, "flushed").split()[1])
        while flushed < 12:
            flushed = int(_expect_line(proc, "flushed").split()[1])
        os.kill(proc.pid, signal.SIGKILL)  # while it writes the frames after this flush
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    for line in out.splitlines():  # flushes it completed between our read and the kill
        flushed = max(flushed, int(line.split()[1]))
    assert flushed < child.KILL_CAP, "the child finished before the kill; the test did not kill mid-write"

    with SessionReader(path) as r:
        assert r.live  # still marked open by a writer
        counts = r.counts
        assert min(counts.values()) >= flushed, (counts, flushed)
        # Every frame the reader admits to is complete and exact, not only the flushed ones.
        assert max(counts.values()) <= flushed + 3  # at most the flush that raced the kill
        _assert_frames_match(r, counts)

    # A copy of the killed file cut short is refused promptly (HDF5 alone would wait forever on the
    # missing part in SWMR mode), with the sizes and what to do.
    cut = tmp_path / "killed_cut.h5"
    shutil.copyfile(path, cut)
    os.truncate(cut, int(cut.stat().st_size * 0.7))
    started = time.monotonic()
    with pytest.raises(RecordingError, match="shorter than its HDF5 header") as e:
        SessionReader(cut)
    assert time.monotonic() - started < 5
    assert str(cut) in str(e.value) and "copy it again" in str(e.value)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    _write_session(path, n=6)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(RecordingError, match="truncated") as e:
        SessionReader(path)
    assert str(path) in str(e.value)


def test_foreign_hdf5_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "other.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.arange(10)
    with pytest.raises(RecordingError, match="not a vrclip session") as e:
        SessionReader(plain)
    assert str(plain) in str(e.value)

    other = tmp_path / "other_format.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "someone-else"
    with pytest.raises(RecordingError, match="'someone-else'"):
        SessionReader(other)


def test_newer_schema_and_damaged_layout_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "v2.h5"
    _write_session(path, n=2)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(RecordingError, match="upgrade vrclip-edge"):
        SessionReader(path)

    damaged = tmp_path / "damaged.h5"
    _write_session(damaged, n=2)
    with h5py.File(damaged, "r+") as f:
        del f["radar/t_ns"]
        f["radar"].create_dataset("t_ns", data=np.zeros(2, np.float32))
    with pytest.raises(RecordingError, match="/radar/t_ns"):
        SessionReader(damaged)


def test_a_geometry_that_does_not_describe_the_radar_is_refused_by_reader_and_writer(tmp_path: Path) -> None:
    """Every consumer (trainer, quantiser, replay) images the radar with the recording's geometry, so a
    missing key or a channel count that is not the radar stream's must stop at the file, named."""
    cases = {
        "no_pairs": ({k: v for k, v in child.GEOMETRY.items() if k != "pairs"}, "lacks 'pairs'"),
        "bad_index": ({**child.GEOMETRY, "pairs": [[0, 99]] * child.CHANNELS}, "Rx index outside"),
        "few_pairs": ({**child.GEOMETRY, "pairs": child.GEOMETRY["pairs"][:10]}, "geometry_json pairs 10"),
    }
    for name, (geometry, message) in cases.items():
        path = tmp_path / f"{name}.h5"
        _write_session(path, n=2)
        with h5py.File(path, "r+") as f:
            f.attrs["geometry_json"] = json.dumps(geometry)
        with pytest.raises(RecordingError, match=message) as e:
            SessionReader(path)
        assert str(path) in str(e.value)
    with pytest.raises(UserError, match="lacks 'pairs'"):
        child.open_writer(tmp_path / "w1.h5", geometry=cases["no_pairs"][0])
    with pytest.raises(UserError, match="pairs 10 channels but radar_channels is 144"):
        child.open_writer(tmp_path / "w2.h5", geometry=cases["few_pairs"][0])


def test_the_writer_refuses_a_frequency_axis_its_reader_would_refuse(tmp_path: Path) -> None:
    for freqs in (np.array([1e9]), np.zeros(200_000)):
        with pytest.raises(UserError, match=r"freqs_hz must be a 1-D array of 2\.\.100001"):
            SessionWriter(
                tmp_path / "f.h5",
                config_toml="",
                geometry=child.GEOMETRY,
                freqs_hz=freqs,
                radar_channels=child.CHANNELS,
                conditions={},
                identities=[],
            )


def test_a_frequency_axis_beyond_any_sweep_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "freqs.h5"
    _write_session(path, n=2)
    with h5py.File(path, "r+") as f:
        del f["radar/freqs_hz"]
        f["radar"].create_dataset("freqs_hz", shape=(200_000,), dtype=np.float64)  # never allocated on disk
    with pytest.raises(RecordingError, match="200000 frequencies"):
        SessionReader(path)


def test_a_frequency_axis_with_nan_is_refused(tmp_path: Path) -> None:
    """The writer refuses such an axis, but the reader took a damaged one as it was: every echo of
    the recording at a NaN range, silently."""
    path = tmp_path / "freqs.h5"
    _write_session(path, n=2)
    with h5py.File(path, "r+") as f:
        freqs = f["radar/freqs_hz"][()]
        freqs[7] = np.nan
        f["radar/freqs_hz"][...] = freqs
    with pytest.raises(RecordingError, match="freqs_hz holds NaN or infinity"):
        SessionReader(path)


def test_text_file_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("this is not a recording\n" * 100)
    with pytest.raises(RecordingError, match="not an HDF5 file"):
        SessionReader(text)
    with pytest.raises(RecordingError, match="no such file"):
        SessionReader(tmp_path / "missing.h5")
    with pytest.raises(RecordingError, match="not a regular file"):
        SessionReader(tmp_path)


def test_overwrite_is_refused_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write_session(path, n=3)
    with pytest.raises(UserError, match="already exists") as e:
        child.open_writer(path)
    assert str(path) in str(e.value)
    with SessionReader(path) as r:  # the refused writer left the old session intact
        assert r.counts["radar"] == 3

    _write_session(path, n=1, overwrite=True)
    with SessionReader(path) as r:
        assert r.counts["radar"] == 1
    assert _set_aside(path) == [], "a replacement that finished cleanly leaves no old file behind"


def _set_aside(path: Path) -> list[Path]:
    """The files a writer replacing `path` set aside (`<name>.replaced-<random>`)."""
    return sorted(path.parent.glob(f"{path.name}.replaced-*"))


def _assert_old_session(path: Path, n: int) -> None:
    """`path` is the n-frame session `_write_session` wrote, whole and exact."""
    with SessionReader(path) as r:
        assert not r.live and r.counts == dict.fromkeys(("radar", "camera", "depth"), n)
        _assert_frames_match(r, n)


def test_overwrite_that_fails_midway_keeps_the_old_recording(tmp_path: Path) -> None:
    """The old recording was deleted before the new one was made: a replacement that failed half-way
    left only the half-made one. Now both stay on disk, and the error says where the old one is."""
    path = tmp_path / "s.h5"
    _write_session(path, n=5)
    with (
        pytest.raises(RuntimeError, match="the sensor died") as e,
        child.open_writer(path, overwrite=True) as w,
    ):
        child.write_all(w, 0)
        child.write_all(w, 1)
        raise RuntimeError("the sensor died")
    [old] = _set_aside(path)
    _assert_old_session(old, 5)
    assert any(str(old) in note for note in e.value.__notes__)
    with SessionReader(path) as r:  # the frames the failed run did record are kept as well
        assert r.counts["radar"] == 2


def test_overwrite_cut_short_keeps_the_old_recording(tmp_path: Path) -> None:
    """Ctrl-C (the recorders call mark_cut_short) keeps what was recorded and the file it replaces."""
    path = tmp_path / "s.h5"
    _write_session(path, n=5)
    with child.open_writer(path, overwrite=True) as w:
        child.write_all(w, 0)
        w.mark_cut_short()
    [old] = _set_aside(path)
    _assert_old_session(old, 5)
    with SessionReader(path) as r:
        assert r.counts["radar"] == 1


def test_overwrite_killed_mid_write_keeps_the_old_recording(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write_session(path, n=5)
    proc = _spawn("kill-overwrite", path)
    try:
        flushed = int(_expect_line(proc, "flushed").split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    [old] = _set_aside(path)
    _assert_old_session(old, 5)
    with SessionReader(path) as r:  # the killed replacement, as any killed recording
        assert r.live and r.counts["radar"] >= flushed


def test_overwrite_that_records_nothing_puts_the_old_recording_back(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write_session(path, n=5)
    with child.open_writer(path, overwrite=True) as w:
        assert w.replaced is not None and w.replaced.is_file()  # aside while the new one is made
    assert _set_aside(path) == []
    _assert_old_session(path, 5)


def test_overwrite_whose_file_cannot_be_created_puts_the_old_recording_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.h5"
    _write_session(path, n=5)

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(h5py, "File", refused)
        with pytest.raises(RecordingError, match="No space left"):
            child.open_writer(path, overwrite=True)
    assert _set_aside(path) == []
    _assert_old_session(path, 5)


def test_frame_on_another_clock_is_refused(tmp_path: Path) -> None:
    with child.open_writer(tmp_path / "s.h5") as w:
        w.write_radar(child.radar_frame(0))
        with pytest.raises(RecordingError, match="CLOCK_REALTIME") as e:
            w.write_radar(child.radar_frame(1, clock=CLOCK_REALTIME))
        assert "SIMULATED" in str(e.value)
        with pytest.raises(RecordingError, match="clock"):
            w.write_camera(child.camera_frame(1, clock=CLOCK_REALTIME))
        assert w.counts["radar"] == 1


def test_bad_frames_and_labels_are_refused(tmp_path: Path) -> None:
    with child.open_writer(tmp_path / "s.h5") as w:
        f = child.radar_frame(0)
        bad_shape = RadarFrame(f.seq, f.t_ns, f.clock, f.s21[:, :100], f.truth)
        with pytest.raises(RecordingError, match=r"\(144, 100\)"):
            w.write_radar(bad_shape)
        stranger = GroundTruth(("mallory",), np.zeros((1, 2), np.float32), np.ones(1, bool))
        with pytest.raises(UserError, match="mallory"):
            w.write_radar(RadarFrame(f.seq, f.t_ns, f.clock, f.s21, stranger))
        crowd = GroundTruth(("alice",) * 5, np.zeros((5, 2), np.float32), np.ones(5, bool))
        with pytest.raises(UserError, match="max_people=4"):
            w.write_radar(RadarFrame(f.seq, f.t_ns, f.clock, f.s21, crowd))
        w.write_radar(f)  # refusals left no partial frame behind
        assert w.counts["radar"] == 1
    with SessionReader(tmp_path / "s.h5") as r:
        assert r.counts["radar"] == 1
        _assert_truth_equal(r.radar(0).truth, f.truth)


def test_a_label_with_a_nan_position_for_someone_present_is_refused(tmp_path: Path) -> None:
    """A damaged label row counting a person present at a NaN position was returned as it was: wrong
    labels, silently."""
    path = tmp_path / "s.h5"
    _write_session(path, n=3)
    with h5py.File(path, "r+") as f:
        positions = f["radar/truth/positions"][()]
        positions[1, 0] = np.nan
        f["radar/truth/positions"][...] = positions
    with SessionReader(path) as r:
        r.radar(0)
        with pytest.raises(RecordingError, match=r"radar frame 1: ground-truth position .* not finite"):
            r.radar(1)


def test_corrupt_jpeg_names_the_frame(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write_session(path, n=3)
    with h5py.File(path, "r+") as f:
        off, length = f["camera/jpeg_index"][1]
        f["camera/jpeg"][off : off + length] = np.zeros(length, np.uint8)
    with SessionReader(path) as r:
        r.camera(0)
        with pytest.raises(RecordingError, match="camera frame 1"):
            r.camera(1)
    with pytest.raises(RecordingError, match="frame 7"):
        decode_rgb(np.frombuffer(b"\xff\xd8garbage", np.uint8), 72, 128, "frame 7")


def test_a_camera_size_no_frame_could_have_is_refused_before_a_frame_is_allocated(tmp_path: Path) -> None:
    """A damaged /camera claiming a 2^20 x 2^20 image let a JPEG index of 256 GiB through (its bound
    grows with the image size) and the reader died in MemoryError allocating it; now the file is
    refused on open, as a depth or radar frame over the limit is."""
    path = tmp_path / "huge.h5"
    _write_session(path, n=3)
    with h5py.File(path, "r+") as f:
        f["camera"].attrs["height"] = f["camera"].attrs["width"] = 1 << 20
        f["camera/jpeg"].resize((1 << 40,))
        f["camera/jpeg_index"][1] = (0, 1 << 38)
    with pytest.raises(RecordingError, match="/camera") as e:
        SessionReader(path).camera(1)
    assert str(path) in str(e.value) and "damaged" in str(e.value)


def test_a_jpeg_whose_header_claims_another_size_is_refused_before_it_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged frame of 631 bytes whose JPEG header says 30000 x 30000 was decoded whole before its
    size was compared: 5.2 GB of memory and 12 s on the development box (an out-of-memory kill on a
    Jetson) to learn that the file is damaged. Now the header's size is checked first."""
    path = tmp_path / "s.h5"
    _write_session(path, n=3)
    with h5py.File(path, "r+") as f:
        off, length = (int(v) for v in f["camera/jpeg_index"][1])
        data = bytearray(f["camera/jpeg"][off : off + length].tobytes())
        sof = data.find(b"\xff\xc0")
        assert sof > 0
        data[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") * 2
        f["camera/jpeg"][off : off + length] = np.frombuffer(bytes(data), np.uint8)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded a JPEG whose header does not match the recording")

    with SessionReader(path) as r:
        r.camera(0)
        monkeypatch.setattr("vrclip.edge.recording.jpeg.cv2.imdecode", no_decoding)
        with pytest.raises(RecordingError, match=r"camera frame 1: .*30000 x 30000") as e:
            r.camera(1)
    assert str(path) in str(e.value)


_DISK_FULL_CHILD = """
import os, resource, signal, sys, time
import numpy as np
from vrclip.edge.frames import CLOCK_REALTIME, RadarFrame
from vrclip.edge.geometry import load_geometry
from vrclip.edge.recording import SessionWriter

geometry = load_geometry()
writer = SessionWriter(sys.argv[1], config_toml="", geometry=geometry.to_dict(),
                       freqs_hz=np.linspace(1e9, 2e9, 101), radar_channels=geometry.n_channels,
                       conditions={}, identities=[], flush_interval_s=float(sys.argv[2]))
# The disk fills up 1 MB further on (a file size limit refuses writes as a full disk does: EFBIG).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(sys.argv[1]) + 1_000_000, resource.RLIM_INFINITY))
s21 = np.ones((geometry.n_channels, 101), np.complex64)
for step, act in (("write", lambda: [writer.write_radar(RadarFrame(i, time.time_ns(), CLOCK_REALTIME, s21))
                                     for i in range(100_000)]), ("close", writer.close)):
    try:
        act()
        print(step, "ok", flush=True)
    except BaseException as exc:
        print(step, type(exc).__name__, " ".join(str(exc).split()), flush=True)
os._exit(0)  # HDF5's own exit handler crashes on a file it could not close (h5py 3.16 / HDF5 2.0)
"""


@pytest.mark.parametrize("flush_interval_s", [0.001, 1.0])
def test_a_full_disk_is_a_recording_error_when_writing_flushing_and_closing(
    tmp_path: Path, flush_interval_s: float
) -> None:
    """h5py reports a refused write as OSError or RuntimeError (a flush), also from close(): each
    must reach the caller as the RecordingError that says to check the disk, not as a traceback."""
    path = tmp_path / "full.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_CHILD, str(path), str(flush_interval_s)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert set(lines) == {"write", "close"}, (proc.stdout, proc.stderr)
    for step, outcome in lines.items():
        assert outcome.startswith("RecordingError") and "check free disk space" in outcome, (step, outcome)


def _file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A child's pre-exec hook: writes past `limit_bytes` fail with EFBIG, as on a full disk."""

    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))

    return apply


def _record_on_a_small_disk(out: Path, seconds: float, limit_bytes: int) -> subprocess.CompletedProcess[str]:
    """`vrclip-edge record --simulate` in a child whose writes past `limit_bytes` are refused."""
    from tests.scripts import console_script

    return subprocess.run(
        [console_script("vrclip-edge"), "record", "--simulate", "--seconds", str(seconds), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_file_size_limit(limit_bytes),
    )


def test_a_command_whose_disk_filled_exits_with_its_error_not_a_crash(tmp_path: Path) -> None:
    """HDF5 2.0 crashed at interpreter exit (segmentation fault, status 139) on a file it could not
    close, after the command had reported the full disk, and h5py printed tracebacks from its
    deallocator. The command now ends with its own status (2) and its one error line."""
    out = tmp_path / "filled.h5"
    proc = _record_on_a_small_disk(out, 5.0, 2_000_000)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "check free disk space" in proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-2000:]


def test_a_disk_that_fills_while_the_recording_is_created_is_one_error_line(tmp_path: Path) -> None:
    """A disk with room for the file's first bytes but not its layout (groups, datasets, the SWMR
    switch): creation raised h5py's own RuntimeError or OSError with a traceback, left the partial
    file behind and the process died in a segmentation fault (139). Now the RecordingError that says
    to check the disk, exit status 2, and no file."""
    for limit in (0, 8_000):  # no room for the file's first bytes, or not for its layout
        out = tmp_path / f"filled-{limit}.h5"
        proc = _record_on_a_small_disk(out, 1.0, limit)
        assert proc.returncode == 2, (limit, proc.returncode, proc.stderr[-2000:])
        assert "cannot create the recording" in proc.stderr and "check free disk space" in proc.stderr
        assert not out.exists(), f"limit {limit}: the partial file is removed"
    out = tmp_path / "filled.h5"
    proc = _record_on_a_small_disk(out, 1.0, 8_000)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "cannot create the recording" in proc.stderr and "check free disk space" in proc.stderr
    assert "_create" not in proc.stderr, proc.stderr[-2000:]  # no traceback through the writer
    assert not out.exists()


def test_a_read_only_disk_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a read-only disk both the creation and the removal of what it left fail (EROFS, even for no
    file): the removal's OSError replaced the RecordingError, and the user got a traceback."""
    path = tmp_path / "ro.h5"

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(h5py, "File", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(RecordingError, match=r"cannot create the recording.*Read-only file system"):
        child.open_writer(path)


def test_a_writer_whose_disk_filled_can_be_dropped_without_crashing(tmp_path: Path) -> None:
    """The service drops its `run --record` writer and goes on: freeing the HDF5 handles of a file
    HDF5 could not close crashed the process (h5py 3.16 / HDF5 2.0), so the writer keeps them."""
    child = _DISK_FULL_CHILD.replace(
        "os._exit(0)",
        "import gc\ndel writer, act\ngc.collect()\nprint('dropped ok', flush=True)\nos._exit(0)",
    )
    proc = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path / "full.h5"), "1.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "dropped ok" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr[-2000:])


def test_a_bug_after_a_recording_failed_ends_with_its_traceback_not_a_crash(tmp_path: Path) -> None:
    """Only SystemExit went past HDF5's exit handler: an exception that is a bug (the service goes on
    after its `run --record` writer failed) printed its traceback and then the process died in a
    segmentation fault (139) instead of exiting with 1."""
    entry = (
        "from vrclip.edge.cli_support import make_app, run\n"
        "app = make_app('t', 't')\n"
        "@app.command()\n"
        "def bug() -> None:\n"
        "    raise RuntimeError('a bug after the disk filled')\n"
        "@app.command()\n"
        "def other() -> None:\n"
        "    pass\n"
        "sys.argv = ['t', 'bug']\n"
        "run(app)"
    )
    child = _DISK_FULL_CHILD.replace("os._exit(0)", entry)
    proc = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path / "full.h5"), "1.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("write RecordingError"), (proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "a bug after the disk filled" in proc.stderr
