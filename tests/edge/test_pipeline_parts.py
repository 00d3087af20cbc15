"""Pipeline parts: drop-oldest queues, timestamp pairing, the tracker's stable ids and the sources."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.errors import SensorError
from vrclip.edge.frames import CameraFrame, DepthFrame, RadarFrame
from vrclip.edge.pipeline import sources
from vrclip.edge.pipeline.queues import DropOldestQueue
from vrclip.edge.pipeline.sources import OpenCvCameraSource, ReplaySource
from vrclip.edge.pipeline.sync import Synchronizer
from vrclip.edge.pipeline.tracker import Tracker

from tests.edge import recording_child

MS = 1_000_000


def radar(t_ms: int, clock: str = "C") -> RadarFrame:
    return RadarFrame(0, t_ms * MS, clock, np.zeros((1, 1), np.complex64))


def camera(t_ms: int, clock: str = "C") -> CameraFrame:
    return CameraFrame(0, t_ms * MS, clock, np.zeros((1, 1, 3), np.uint8))


def depth(t_ms: int) -> DepthFrame:
    return DepthFrame(0, t_ms * MS, "C", np.zeros((1, 1), np.float32))


def test_queue_drops_oldest_and_counts() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    evicted = [q.put(i) for i in range(5)]
    assert evicted == [None, None, None, 0, 1], "each put says which item it pushed out"
    assert q.dropped == 2 and q.put_count == 5
    assert [q.get(0), q.get(0), q.get(0), q.get(0)] == [2, 3, 4, None]


class _Frames:
    """A sensor that delivers `frames` and then ends."""

    def __init__(self, frames: list[RadarFrame | CameraFrame]) -> None:
        self.frames = list(frames)

    def open(self) -> None:
        pass

    def read(self) -> RadarFrame | CameraFrame | None:
        return self.frames.pop(0) if self.frames else None

    def close(self) -> None:
        pass


def test_a_drop_from_a_shared_queue_is_charged_to_the_stream_that_lost_the_frame() -> None:
    """`record` feeds every sensor into one queue: when the camera's frames push the radar's out, the
    radar lost them, and its count must say so (it once charged every drop to the camera)."""
    from vrclip.edge.events.health import Health

    health = Health()
    shared: DropOldestQueue[sources.Captured] = DropOldestQueue(4)
    first = sources.CaptureThread(lambda: _Frames([radar(t) for t in range(3)]), "radar", shared, health)
    first.start().ended.wait(5)
    second = sources.CaptureThread(lambda: _Frames([camera(t) for t in range(10)]), "camera", shared, health)
    second.start().ended.wait(5)
    dropped = {name: s["dropped"] for name, s in health.snapshot()["sources"].items()}
    assert dropped == {"radar": 3, "camera": 6}
    assert [type(c.frame) for c in shared.drain()] == [CameraFrame] * 4


def test_queue_get_wakes_on_put_and_on_close() -> None:
    q: DropOldestQueue[str] = DropOldestQueue(2)
    threading.Timer(0.05, lambda: q.put("x")).start()
    assert q.get(timeout=5) == "x"
    threading.Timer(0.05, q.close).start()
    assert q.get(timeout=5) is None and q.closed


def test_sync_pairs_nearest_within_slop_and_uses_each_frame_once() -> None:
    sync = Synchronizer(slop_ns=30 * MS)
    for t in (0, 33, 66, 100, 133):
        sync.add(camera(t))
    sync.add(depth(10))
    first = sync.pair(radar(60))
    assert first.camera is not None and first.camera.t_ns == 66 * MS
    assert first.depth is None  # 50 ms away: outside the slop
    second = sync.pair(radar(70))
    # 66 was used; 100 is 30 ms away (inside the slop), 33 is older than the chosen frame and dropped
    assert second.camera is not None and second.camera.t_ns == 100 * MS
    assert sync.stats.dropped["camera"] == 2  # 0 and 33 can never pair again
    assert sync.stats.dropped["depth"] == 1


def test_sync_keeps_a_newer_frame_delivered_before_the_chosen_one() -> None:
    """A camera frame can arrive out of order (driver retries, a USB hiccup): it sits in the buffer
    before an older frame, and is still the best partner of the next radar frame."""
    sync = Synchronizer(slop_ns=30 * MS)
    for t in (90, 60):
        sync.add(camera(t))
    first = sync.pair(radar(60))
    assert first.camera is not None and first.camera.t_ns == 60 * MS
    second = sync.pair(radar(90))
    assert second.camera is not None and second.camera.t_ns == 90 * MS
    assert sync.stats.dropped["camera"] == 0


def test_sync_never_pairs_across_clocks() -> None:
    sync = Synchronizer(slop_ns=30 * MS)
    sync.add(camera(0, clock="OTHER"))
    assert sync.pair(radar(0)).camera is None
    assert sync.stats.clock_mismatch == 1


def test_sync_buffers_are_bounded() -> None:
    sync = Synchronizer(slop_ns=MS, max_buffer=4)
    for t in range(10):
        sync.add(camera(t))
    assert sync.stats.dropped["camera"] == 6


def test_tracker_keeps_ids_for_two_walkers_and_confirms_after_hits() -> None:
    tracker = Tracker(confirm_hits=3)
    ids_seen: dict[int, list[np.ndarray]] = {}
    for k in range(30):
        t_ns = k * 100 * MS
        a = np.array([-1.0 + 0.08 * k, 3.0])
        b = np.array([1.5, 5.0 - 0.05 * k])
        dets = np.array([b, a]) if k % 2 else np.array([a, b])
        confirmed = tracker.update(dets + np.random.default_rng(k).normal(0, 0.03, (2, 2)), t_ns)
        if k < 2:
            assert confirmed == []
        for track in confirmed:
            ids_seen.setdefault(track.track_id, []).append(track.position.copy())
    assert len(ids_seen) == 2, "ids must stay stable while two people walk past each other"
    for positions in ids_seen.values():
        assert np.max(np.linalg.norm(np.diff(positions, axis=0), axis=1)) < 0.3


def test_tracker_drops_a_track_after_misses_and_gives_a_new_id() -> None:
    tracker = Tracker(confirm_hits=1, max_misses=2)
    first = tracker.update(np.array([[0.0, 3.0]]), 0)[0].track_id
    for k in range(1, 5):
        tracker.update(np.zeros((0, 2)), k * 100 * MS)
    assert tracker.tracks == []
    again = tracker.update(np.array([[0.0, 3.0]]), 600 * MS)[0].track_id
    assert again != first


def test_threshold_sweep_scores_every_match_at_every_threshold() -> None:
    from vrclip.edge.pipeline.app import ThresholdSweep

    sweep = ThresholdSweep()
    people = [("ann", np.array([1.0, 2.0])), ("visitor", np.array([3.0, 2.0]))]
    enrolled = {"ann"}
    sweep.add(0.9, "ann", np.array([1.1, 2.0]), people, enrolled)  # right, confident
    sweep.add(0.5, "ann", np.array([1.0, 2.1]), people, enrolled)  # right, unsure
    sweep.add(0.8, "bob", np.array([1.0, 2.0]), people, enrolled)  # wrong name
    sweep.add(0.7, "ann", np.array([3.0, 2.0]), people, enrolled)  # a visitor who looks like ann
    sweep.add(0.4, "ann", np.array([3.1, 2.0]), people, enrolled)  # a visitor, far from everyone
    sweep.add(0.99, "ann", np.array([9.0, 9.0]), people, enrolled)  # a ghost: not scored
    assert sweep.at(0.6) == (1 / 3, 1 / 2)
    assert sweep.at(0.45) == (2 / 3, 1 / 2)
    assert sweep.at(0.75) == (1 / 3, 1.0)
    rows = sweep.table(np.array([0.45, 0.75]))
    assert [r["threshold"] for r in rows] == [0.45, 0.75] and rows[1]["unknown_accuracy"] == 1.0
    # Worse-of-the-two: 0.45 -> min(2/3, 1/2); 0.75 -> min(1/3, 1) -> 0.45 wins.
    assert sweep.best_threshold(np.array([0.45, 0.75])) == 0.45
    assert ThresholdSweep().best_threshold(np.array([0.5])) is None


def test_tracker_coasts_one_step_per_miss_and_keeps_the_id_of_a_briefly_missed_walker() -> None:
    """A walker (1.4 m/s, 10 Hz radar) the detector misses for three frames: each coasted frame moves
    the track one step, so it stays where the person is and picks them up again under the same id."""
    tracker = Tracker()
    step_m, dt_ns = 0.14, 100 * MS
    for k in range(20):
        tracker.update(np.array([[k * step_m, 3.0]]), (k + 1) * dt_ns)
    track_id = tracker.tracks[0].track_id
    for k in range(20, 23):
        tracker.update(np.zeros((0, 2)), (k + 1) * dt_ns)
        assert tracker.tracks[0].position == pytest.approx([k * step_m, 3.0], abs=0.02)
    confirmed = tracker.update(np.array([[23 * step_m, 3.0]]), 24 * dt_ns)
    assert [t.track_id for t in confirmed] == [track_id]
    assert [t.track_id for t in tracker.tracks] == [track_id], "no second track for the same person"


class FixedSizeCapture:
    """cv2.VideoCapture of a camera that ignores the requested size and delivers 640x360 frames."""

    def __init__(self, *args: object) -> None:
        pass

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        return False  # what OpenCV answers for a size the camera does not support

    def read(self) -> tuple[bool, np.ndarray]:
        return True, np.zeros((360, 640, 3), np.uint8)

    def release(self) -> None:
        pass


def test_a_camera_delivering_another_size_than_configured_is_a_sensor_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The crops are cut with the camera model of camera.width x camera.height: a frame of another
    size must mark the camera down (with what to change), not reach the pipeline."""
    monkeypatch.setattr(sources.cv2, "VideoCapture", FixedSizeCapture)
    config = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180}})
    source = OpenCvCameraSource(config)
    source.open()
    with pytest.raises(SensorError) as caught:
        source.read()
    message = str(caught.value)
    assert "640x360" in message and "320x180" in message
    assert "camera.width" in message and "camera.height" in message
    matching = OpenCvCameraSource(EdgeConfig.model_validate({"camera": {"width": 640, "height": 360}}))
    matching.open()
    frame = matching.read()
    assert isinstance(frame, CameraFrame) and frame.rgb.shape == (360, 640, 3)


def test_a_looped_replay_keeps_every_stream_on_one_time_line(tmp_path: Path) -> None:
    """Radar at 8 Hz and camera at 16 Hz over 2 s (their spans differ by one camera period): each
    pass shifts both streams by the same period, so the frames recorded together replay together."""
    path = tmp_path / "s.h5"
    t0 = recording_child.t_ns(0)
    with recording_child.open_writer(path) as writer:
        for i in range(16):
            frame = recording_child.radar_frame(i)
            writer.write_radar(dataclasses.replace(frame, seq=i, t_ns=t0 + i * 125 * MS))
        for i in range(32):
            frame = recording_child.camera_frame(i)
            writer.write_camera(dataclasses.replace(frame, seq=i, t_ns=t0 + i * 62_500_000))
    radar_source = ReplaySource(str(path), "radar", paced=False, loop=True)
    camera_source = ReplaySource(str(path), "camera", paced=False, loop=True)
    radar_source.open()
    camera_source.open()
    try:
        for _ in range(4):  # passes
            radar_times = {f.seq: f.t_ns for f in (radar_source.read() for _ in range(16))}
            camera_times = {f.seq: f.t_ns for f in (camera_source.read() for _ in range(32))}
            for i in range(16):  # radar frame i was recorded with camera frame 2i
                assert camera_times[2 * i] == radar_times[i]
    finally:
        radar_source.close()
        camera_source.close()


class ScriptedCapture:
    """cv2.VideoCapture delivering `make(n)` as its n-th 320x180 frame."""

    make = staticmethod(lambda n: np.zeros((180, 320, 3), np.uint8))

    def __init__(self, *args: object) -> None:
        self.n = 0

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        self.n += 1
        return True, type(self).make(self.n)

    def release(self) -> None:
        pass


def _read_for(source: OpenCvCameraSource, seconds: float) -> int:
    frames, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        source.read()
        frames += 1
        time.sleep(0.01)
    return frames


def test_a_frozen_camera_is_a_sensor_fault_a_dark_or_live_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera that keeps handing out its last image would feed the engine stale crops for months
    while the camera counts as up: after FROZEN_AFTER_S without a changed pixel it is a fault (the
    capture thread then reopens it). Sensor noise keeps a live image changing; a black one in a dark
    room may not change at all, and that is night, not a fault."""
    monkeypatch.setattr(sources, "FROZEN_AFTER_S", 0.3)
    config = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180}})
    still = np.random.default_rng(0).integers(0, 255, (180, 320, 3), dtype=np.uint8)

    monkeypatch.setattr(ScriptedCapture, "make", staticmethod(lambda n: still.copy()))
    monkeypatch.setattr(sources.cv2, "VideoCapture", ScriptedCapture)
    frozen = OpenCvCameraSource(config)
    frozen.open()
    with pytest.raises(
        SensorError, match="the image has not changed for 0 s; the camera or its driver froze"
    ):
        _read_for(frozen, 2.0)

    def noisy(n: int) -> np.ndarray:  # the same scene, with one sampled pixel's noise changing
        frame = still.copy()
        frame[0, 0, 0] = n % 256
        return frame

    monkeypatch.setattr(ScriptedCapture, "make", staticmethod(noisy))
    live = OpenCvCameraSource(config)
    live.open()
    assert _read_for(live, 0.8) > 10

    monkeypatch.setattr(ScriptedCapture, "make", staticmethod(lambda n: np.zeros((180, 320, 3), np.uint8)))
    dark = OpenCvCameraSource(config)
    dark.open()
    assert _read_for(dark, 0.8) > 10


def test_a_dark_room_with_a_lit_sign_is_night_not_a_frozen_camera(monkeypatch: pytest.MonkeyPatch) -> None:
    """At night the room clips to black and an exit sign or standby LED clips to white: neither end
    shows sensor noise, so every frame is the same, yet the image spans all 256 grey levels. That is
    night, not a fault; reopening the camera every few seconds all night would mark it failed."""
    monkeypatch.setattr(sources, "FROZEN_AFTER_S", 0.3)
    config = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180}})
    night = np.zeros((180, 320, 3), np.uint8)
    night[20:36, 240:280] = 255  # the exit sign, saturated
    night[19, 240:280] = 90  # its glow: a few mid-grey pixels
    monkeypatch.setattr(ScriptedCapture, "make", staticmethod(lambda n: night.copy()))
    monkeypatch.setattr(sources.cv2, "VideoCapture", ScriptedCapture)
    camera = OpenCvCameraSource(config)
    camera.open()
    assert _read_for(camera, 0.8) > 10


def test_camera_frames_are_stamped_when_the_image_was_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """camera.latency_ms (measured by `vrclip-calibrate camera`) comes off every camera stamp, so the
    synchroniser pairs each radar frame with the image of the same moment."""
    monkeypatch.setattr(sources.cv2, "VideoCapture", ScriptedCapture)
    stamps = {}
    for latency in (0.0, 120.0):
        config = EdgeConfig.model_validate({"camera": {"width": 320, "height": 180, "latency_ms": latency}})
        source = OpenCvCameraSource(config)
        source.open()
        before = time.time_ns()
        stamps[latency] = source.read().t_ns - before
    assert 0 <= stamps[0.0] < 50_000_000
    assert stamps[0.0] - stamps[120.0] == pytest.approx(120_000_000, abs=50_000_000)


@pytest.mark.parametrize(
    "repeat_offset_ms",
    [0, -50, 0.5],
    ids=["duplicate time stamp", "clock stepped back", "half a millisecond later"],
)
def test_a_radar_frame_not_later_than_the_last_keeps_the_track_and_velocity(repeat_offset_ms: float) -> None:
    """A radar frame stamped like the one before (a driver repeating a time stamp) or before it (NTP
    stepping the clock back) carries no time to learn a velocity from: a 10 cm range jitter on it must
    not turn a person standing still into one running off, losing their track (and its identity)."""
    tracker = Tracker()
    dt_ns = 100 * MS
    for k in range(10):
        tracker.update(np.array([[1.0, 3.0]]), (k + 1) * dt_ns)
    (track,) = tracker.tracks
    tracker.update(np.array([[1.0, 3.1]]), 10 * dt_ns + int(repeat_offset_ms * MS))  # the odd frame
    assert np.linalg.norm(track.velocity) < 1.0, f"a person standing still got {track.velocity} m/s"
    t_ns = tracker.tracks[0].last_t_ns
    for k in range(1, 6):
        confirmed = tracker.update(np.array([[1.0, 3.0]]), t_ns + k * dt_ns)
        assert [t.track_id for t in confirmed] == [track.track_id], "the person lost their track"


@pytest.mark.parametrize("rate_hz", [3.5, 10.0, 60.0, 200.0, 1000.0])
def test_the_tracker_learns_a_walkers_velocity_at_any_configured_frame_rate(rate_hz: float) -> None:
    """radar.frame_rate_hz may be up to 1000: a walker (1.4 m/s) must get their velocity at every
    allowed rate, not only where a frame period is above a fixed 20 ms (below 50 frames/s)."""
    tracker = Tracker()
    dt_ns = round(1e9 / rate_hz)
    for k in range(60):
        tracker.update(np.array([[1.4 * k * dt_ns / 1e9, 3.0]]), (k + 1) * dt_ns)
    (track,) = tracker.tracks
    assert track.velocity == pytest.approx([1.4, 0.0], abs=0.1)


@pytest.mark.parametrize("period_s", [0.0, -0.1, float("nan")])
def test_a_tracker_refuses_a_frame_period_that_is_not_a_positive_time(period_s: float) -> None:
    with pytest.raises(ValueError, match=r"frame_period_s .* radar.frame_rate_hz"):
        Tracker(frame_period_s=period_s)


@pytest.mark.parametrize("rate_hz", [10.0, 1000.0])
def test_a_radar_frame_a_moment_after_the_last_learns_no_velocity_at_any_rate(rate_hz: float) -> None:
    """A frame a twentieth of a frame period after the last (a driver's double delivery) gives too
    little time to divide its 10 cm range jitter by, at 10 and at 1000 frames/s alike: a person
    standing still must neither race off (more than 10 cm a frame) nor lose their track."""
    tracker = Tracker()
    dt_ns = round(1e9 / rate_hz)
    for k in range(10):
        tracker.update(np.array([[1.0, 3.0]]), (k + 1) * dt_ns)
    (track,) = tracker.tracks
    tracker.update(np.array([[1.0, 3.1]]), 10 * dt_ns + dt_ns // 20)  # the odd frame
    assert np.linalg.norm(track.velocity) * dt_ns / 1e9 < 0.1, f"standing still got {track.velocity} m/s"
    t_ns = track.last_t_ns
    for k in range(1, 6):
        confirmed = tracker.update(np.array([[1.0, 3.0]]), t_ns + k * dt_ns)
        assert [t.track_id for t in confirmed] == [track.track_id], "the person lost their track"


def _walk(tracker: Tracker, rate_hz: float, frames: int = 20) -> tuple[int, int]:
    """A person walking along x at 1.4 m/s, seen every frame; returns (track id, last stamp ns)."""
    dt_ns = round(1e9 / rate_hz)
    for k in range(frames):
        tracker.update(np.array([[1.4 * k * dt_ns / 1e9, 3.0]]), (k + 1) * dt_ns)
    (track,) = tracker.tracks
    return track.track_id, frames * dt_ns


@pytest.mark.parametrize("rate_hz", [3.5, 10.0])
def test_a_forward_clock_step_keeps_every_walkers_track_id(rate_hz: float) -> None:
    """NTP steps the clock an hour ahead between two radar frames: the walker moved one step, not an
    hour's walk, so they keep their track (and identity) instead of coming back under a new id."""
    tracker = Tracker()
    track_id, t_ns = _walk(tracker, rate_hz)
    dt_ns, step_m = round(1e9 / rate_hz), 1.4 / rate_hz
    t_ns += 3600 * 10**9
    for k in range(20, 26):
        confirmed = tracker.update(np.array([[k * step_m, 3.0]]), t_ns + (k - 20) * dt_ns)
        assert [t.track_id for t in confirmed] == [track_id], f"frame {k - 20} after the step"
    assert [t.track_id for t in tracker.tracks] == [track_id], "no second track for the same person"


def test_a_radar_outage_keeps_the_id_of_a_person_found_near_where_they_were() -> None:
    """The radar is gone for 5 s (a VNA reconnecting); the walker took a few more steps and stopped
    1.2 m further on. A 5 s extrapolation (7 m) must not lose them: they keep their track id."""
    tracker = Tracker()
    track_id, t_ns = _walk(tracker, 10.0)
    stop = np.array([[1.4 * 19 * 0.1 + 1.2, 3.0]])
    t_ns += 5 * 10**9
    for k in range(5):
        confirmed = tracker.update(stop, t_ns + k * 100 * MS)
        assert [t.track_id for t in confirmed] == [track_id], f"frame {k} after the outage"


def test_a_person_missed_in_the_first_frame_after_an_outage_keeps_the_widened_gate() -> None:
    """The first frame after the outage misses the walker (CFAR, a shadow); the next one finds them
    1.2 m on. By its stamps that frame is no gap (the coasting track was updated a period before), but
    they are as far from the prediction as they were: the gap's gate holds until they are found."""
    tracker = Tracker()
    track_id, t_ns = _walk(tracker, 10.0)
    stop = np.array([[1.4 * 19 * 0.1 + 1.2, 3.0]])
    t_ns += 5 * 10**9
    tracker.update(np.zeros((0, 2)), t_ns)
    for k in range(1, 5):
        confirmed = tracker.update(stop, t_ns + k * 100 * MS)
        assert [t.track_id for t in confirmed] == [track_id], f"frame {k} after the outage"
    (track,) = tracker.tracks
    assert track.gap_gate_m == 0.0, "found again: back to the plain gate"


def test_after_an_outage_a_track_with_nobody_near_still_ends_after_its_missed_frames() -> None:
    """The widened gate is bounded: a person found 4 m from the track after an outage is someone new
    (a new id), and the old track, detected in none of the frames since, ends after max_misses of
    them, exactly as without an outage."""
    tracker = Tracker(max_misses=5)
    track_id, t_ns = _walk(tracker, 10.0)
    elsewhere = np.array([[1.4 * 19 * 0.1 + 4.0, 3.0]])
    t_ns += 5 * 10**9
    for k in range(7):
        tracker.update(elsewhere, t_ns + k * 100 * MS)
        old = [t for t in tracker.tracks if t.track_id == track_id]
        assert bool(old) == (k < 5), f"frame {k} after the outage: old track {'kept' if old else 'ended'}"
    assert track_id not in {t.track_id for t in tracker.confirmed()}
    assert len(tracker.confirmed()) == 1


def test_a_track_counts_the_gaps_it_came_through_detected_or_coasting() -> None:
    """Per-track history (the RF window, the embedding mean) must end at a gap, so the tracker says
    which frames came after one: a late frame or two is no gap; a 5 s outage is, whether the first
    frame after it finds the person or the track coasts through it; an hour's clock step is too."""
    tracker = Tracker(max_misses=5)
    track_id, t_ns = _walk(tracker, 10.0)
    (track,) = tracker.tracks
    assert track.gaps == 0, "frames every period are no gap"
    here, on = np.array([[1.4 * 19 * 0.1, 3.0]]), np.array([[1.4 * 19 * 0.1 + 1.0, 3.0]])
    t_ns += 250 * MS  # two frames dropped: within GAP_FRAMES periods
    tracker.update(here, t_ns)
    assert track.gaps == 0, "a dropped frame or two is no gap"
    t_ns += 600 * MS  # five frames dropped on a busy box: a gap for the gate, not for the history
    tracker.update(here, t_ns)
    assert track.gaps == 0, "frames dropped under load must not end the track's name"
    t_ns += 5 * 10**9
    tracker.update(on, t_ns)  # found 1 m on after a 5 s outage
    assert [t.track_id for t in tracker.confirmed()] == [track_id] and track.gaps == 1
    tracker.update(on, t_ns + 100 * MS)
    assert track.gaps == 1, "only the first frame after the gap is one"
    t_ns += 5 * 10**9
    tracker.update(np.zeros((0, 2)), t_ns)  # nobody detected in the first frame after the outage
    assert track.misses == 1 and track.gaps == 2, "a track coasting through a gap counts it too"
    tracker.update(on, t_ns + 100 * MS)
    assert track.misses == 0 and track.gaps == 2
    tracker.update(on, t_ns + 100 * MS + 3600 * 10**9)  # NTP steps an hour ahead
    assert track.gaps == 3
    assert [t.track_id for t in tracker.tracks] == [track_id]


class _OpensButFails:
    """A sensor that opens every time and fails every read (a VNA that answers its set-up but returns
    NaN for every sweep); `frames_first` good frames after each open, then the fault."""

    opened = 0

    def __init__(self, frames_first: int = 0) -> None:
        self.left = frames_first

    def open(self) -> None:
        type(self).opened += 1

    def read(self) -> RadarFrame:
        if self.left:
            self.left -= 1
            return radar(0)
        raise SensorError("every sweep is NaN")

    def close(self) -> None:
        pass


def test_a_sensor_that_opens_but_fails_every_read_is_reopened_with_a_growing_backoff() -> None:
    """The backoff was reset by a successful open, so a sensor that opens but never delivers (a VNA
    whose every sweep is NaN: three dropped frames, then the radar is reopened) was reopened every
    0.2 s for as long as the fault lasted, each time logging its reconnection and dropped frames.
    Only a delivered frame resets it now."""
    from vrclip.edge.events.health import Health

    class Failing(_OpensButFails):
        opened = 0

    class Delivering(_OpensButFails):
        opened = 0

    health = Health()
    failing = sources.CaptureThread(Failing, "radar", DropOldestQueue(4), health).start()
    delivering = sources.CaptureThread(lambda: Delivering(1), "camera", DropOldestQueue(4), health).start()
    time.sleep(2.5)
    failing.stop()
    delivering.stop()
    # Waits of 0.2, 0.4, 0.8 and 1.6 s: opened at 0, 0.2, 0.6 and 1.4 s (at 0.2 s each: 13 times).
    assert 3 <= Failing.opened <= 5, Failing.opened
    # A sensor that delivered a frame since its last open is reopened after the shortest wait.
    assert Delivering.opened >= 10, Delivering.opened
