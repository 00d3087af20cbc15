"""Clock steps back in a recording's stamps: runs of stamps, and which run a time belongs to.

One clock stamps every stream of a recording, and NTP may step it back mid-recording: the stamps
then run over the same stretch of time twice. A time looked up among such stamps (a camera frame's
time among the radar frames, to interpolate the person's position at it, `label.interpolate`; a
radar frame's time among the camera frames, to pair it with the nearest one, `export.data`) must be
looked up in the frames of one side of the step only, and one whose side cannot be told from its
stamp gets no answer at all: a position or crop from the other side of the step is one taken
seconds away from the frame it is for (a crop cut where the person was not).

Both callers split the stamps with `clock_runs`, look every time up in each run on its own, and keep
the answer of the run `run_owner` names.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

#: `run_owner`'s value for a time that takes its answer from no run.
NO_RUN = -1


def clock_runs(stamps: np.ndarray) -> list[slice]:
    """Split stamps (ns, in frame order) into runs at every step back: `stamps[run]` never goes
    back within a run. No stamps, no runs.

    Only a stamp below the one before it starts a new run; a repeated stamp does not. A clock
    stepped back by NTP moves by far more than a frame period, so it never lands on exactly the
    stamp of the frame before; a stamp shown twice in a row is a broken frame (stamped again or
    delivered twice), not a step, and it covers no stretch of time twice. Splitting there would make
    that one instant "shown by two runs" and leave every frame at it without an answer, for nothing.
    Within a run a repeated stamp is harmless: a binary search over non-decreasing stamps is
    well-defined.
    """
    t = np.asarray(stamps, np.int64)
    if t.size == 0:
        return []
    starts = np.flatnonzero(np.diff(t) < 0) + 1
    bounds = [0, *starts.tolist(), t.size]
    return [slice(a, b) for a, b in pairwise(bounds)]


def run_owner(
    stamps: np.ndarray, runs: Sequence[slice], times: np.ndarray, answered: Sequence[np.ndarray]
) -> np.ndarray:
    """(M,) index into `runs` of the run each of `times` takes its answer from, `NO_RUN` where none.

    `answered[k]` is an (M,) bool mask: which times run k found an answer for when searched on its
    own (a camera frame within the pairing slop, labelled radar frames to interpolate between).

    - A time within exactly one run's span (its first to its last stamp, both included) was shown
      by the clock once: it belongs to that run, and takes that run's answer or none. Another run
      may still find an answer near it (its first frame a few ms past the time), but that frame was
      taken on the other side of the step.
    - A time within two or more runs' spans was shown by the clock twice: which side of the step its
      frame was taken on is unknown, so it takes no answer.
    - A time within no run's span (before the first frame, after the last, or in a gap between
      runs) takes the answer of the one run that has one; if two runs do, it is ambiguous again.

    With stamps that never go back there is one run and every time takes its answer, if any.
    """
    t = np.asarray(stamps, np.int64)
    m = np.asarray(times, np.int64)
    if len(runs) != len(answered):
        raise ValueError(f"{len(runs)} runs but {len(answered)} answer masks: give one mask per run")
    if not runs:
        return np.full(m.shape, NO_RUN, np.int64)
    spans = np.stack([(m >= t[run.start]) & (m <= t[run.stop - 1]) for run in runs])
    found = np.stack([np.asarray(a, bool) for a in answered])
    covering = spans.sum(axis=0)
    eligible = np.where(covering == 0, True, spans & (covering == 1))
    candidates = eligible & found
    return np.where(candidates.sum(axis=0) == 1, candidates.argmax(axis=0), NO_RUN)
