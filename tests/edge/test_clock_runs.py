"""Clock runs: stamps split where the clock stepped back, and the one rule for which run owns a time
(shared by `label.interpolate` and export's camera pairing)."""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.edge.timebase.clock_runs import NO_RUN, clock_runs, run_owner


def spans(runs: list[slice]) -> list[tuple[int, int]]:
    return [(r.start, r.stop) for r in runs]


def test_a_step_back_starts_a_new_run() -> None:
    t = np.array([0, 10, 20, 30, 15, 25, 35], np.int64)
    assert spans(clock_runs(t)) == [(0, 4), (4, 7)]
    assert spans(clock_runs(t[:4])) == [(0, 4)]


def test_a_repeated_stamp_is_a_broken_frame_not_a_step() -> None:
    """A stamp shown twice in a row stays in its run: its instant is not 'shown by two runs'."""
    t = np.array([0, 10, 10, 20], np.int64)
    runs = clock_runs(t)
    assert spans(runs) == [(0, 4)]
    owner = run_owner(t, runs, np.array([10], np.int64), [np.array([True])])
    assert owner.tolist() == [0]


def test_one_frame_runs_and_no_stamps() -> None:
    """Two steps back in a row leave a run of one frame; no stamps give no runs and no owner."""
    t = np.array([50, 40, 30, 35], np.int64)
    assert spans(clock_runs(t)) == [(0, 1), (1, 2), (2, 4)]
    assert clock_runs(np.array([], np.int64)) == []
    assert clock_runs(np.array([7], np.int64)) == [slice(0, 1)]
    assert run_owner(np.array([], np.int64), [], np.array([1, 2], np.int64), []).tolist() == [NO_RUN] * 2
    assert run_owner(t, clock_runs(t), np.array([], np.int64), [np.zeros(0, bool)] * 3).size == 0


def test_a_one_frame_run_owns_only_its_own_instant() -> None:
    """A run of one frame spans a single instant; a time there that another run also spans is
    ambiguous, a time near it that no run spans takes the one answer there is."""
    t = np.array([0, 10, 20, 15, 5, 30], np.int64)  # runs [0..20], [15], [5..30]
    runs = clock_runs(t)
    times = np.array([15, 40], np.int64)
    everyone = [np.ones(2, bool)] * 3
    assert run_owner(t, runs, times, everyone).tolist() == [NO_RUN, NO_RUN]  # 40: all three answer
    only_last = [np.zeros(2, bool), np.zeros(2, bool), np.ones(2, bool)]
    assert run_owner(t, runs, times, only_last).tolist() == [NO_RUN, 2]
    alone = np.array([100, 0, 10], np.int64)  # runs [100] and [0..10]: 100 is the first run's alone
    owner = run_owner(alone, clock_runs(alone), np.array([100], np.int64), [np.array([True])] * 2)
    assert owner.tolist() == [0]


def test_a_time_within_one_runs_span_takes_that_runs_answer_or_none() -> None:
    """Runs [0..30] and [25..55]: 10 is the first run's alone, even where only the second answers
    (its frame near 10 was taken after the step); 27 was shown twice; 50 is the second run's."""
    t = np.array([0, 10, 20, 30, 25, 35, 45, 55], np.int64)
    runs = clock_runs(t)
    times = np.array([10, 27, 50], np.int64)
    both = [np.ones(3, bool), np.ones(3, bool)]
    assert run_owner(t, runs, times, both).tolist() == [0, NO_RUN, 1]
    second_only = [np.zeros(3, bool), np.ones(3, bool)]
    assert run_owner(t, runs, times, second_only).tolist() == [NO_RUN, NO_RUN, 1]


def test_a_time_outside_every_span_takes_the_one_answer_or_none() -> None:
    """Runs [100..130] and [0..30] (a step back past the start): 60 lies in neither; it takes the
    answer of the only run that has one, none if both do. Before the first frame likewise."""
    t = np.array([100, 110, 120, 130, 0, 10, 20, 30], np.int64)
    runs = clock_runs(t)
    times = np.array([60, -5], np.int64)
    assert run_owner(t, runs, times, [np.array([True, False]), np.array([False, True])]).tolist() == [0, 1]
    assert run_owner(t, runs, times, [np.ones(2, bool), np.ones(2, bool)]).tolist() == [NO_RUN] * 2
    assert run_owner(t, runs, times, [np.zeros(2, bool), np.zeros(2, bool)]).tolist() == [NO_RUN] * 2


def test_monotonic_stamps_are_one_run_that_owns_every_answered_time() -> None:
    t = np.arange(0, 100, 10, dtype=np.int64)
    runs = clock_runs(t)
    times = np.array([-50, 0, 45, 95, 500], np.int64)
    answered = np.array([False, True, True, True, False])
    assert run_owner(t, runs, times, [answered]).tolist() == [NO_RUN, 0, 0, 0, NO_RUN]


def test_one_answer_mask_per_run_is_required() -> None:
    t = np.array([0, 10, 5], np.int64)
    with pytest.raises(ValueError, match="2 runs but 1 answer masks"):
        run_owner(t, clock_runs(t), np.array([1], np.int64), [np.array([True])])
