"""Pipeline parts: drop-oldest queues, timestamp pairing and the tracker's stable ids."""

from __future__ import annotations

import threading

import numpy as np
from vrclip.edge.frames import CameraFrame, DepthFrame, RadarFrame
from vrclip.edge.pipeline.queues import DropOldestQueue
from vrclip.edge.pipeline.sync import Synchronizer
from vrclip.edge.pipeline.tracker import Tracker

MS = 1_000_000


def radar(t_ms: int, clock: str = "C") -> RadarFrame:
    return RadarFrame(0, t_ms * MS, clock, np.zeros((1, 1), np.complex64))


def camera(t_ms: int, clock: str = "C") -> CameraFrame:
    return CameraFrame(0, t_ms * MS, clock, np.zeros((1, 1, 3), np.uint8))


def depth(t_ms: int) -> DepthFrame:
    return DepthFrame(0, t_ms * MS, "C", np.zeros((1, 1), np.float32))


def test_queue_drops_oldest_and_counts() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    for i in range(5):
        q.put(i)
    assert q.dropped == 2 and q.put_count == 5
    assert [q.get(0), q.get(0), q.get(0), q.get(0)] == [2, 3, 4, None]


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
