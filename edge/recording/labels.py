"""Ground truth <-> fixed-width rows.

SWMR files cannot append variable-length data, so a frame's list of people is stored padded to the
session's ``max_people``, with identities as int16 indices into the session's identity table. Packing
refuses what would silently corrupt labels (more people than the padding, an identity missing from the
table); unpacking refuses rows a damaged file could hold (indices outside the table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from vrclip.edge.errors import RecordingError, UserError
from vrclip.edge.frames import GroundTruth
from vrclip.edge.recording.schema import NO_ID


@dataclass(frozen=True)
class TruthRow:
    """One frame's ground truth as stored: count (-1 = none), ids (K,), positions (K, 2), visible (K,)."""

    count: int
    ids: np.ndarray
    positions: np.ndarray
    visible: np.ndarray


def pad_positions(positions: np.ndarray, max_people: int, what: str) -> tuple[np.ndarray, int]:
    """(K, 2) positions -> ((max_people, 2) float32 NaN padded, K). `what` names the frame in errors."""
    pos = np.asarray(positions, dtype=np.float32)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"{what}: positions must have shape (K, 2), got {pos.shape}")
    k = pos.shape[0]
    if k > max_people:
        raise UserError(
            f"{what}: {k} people but the recording was opened with max_people={max_people}; "
            "raise max_people when creating the SessionWriter"
        )
    out = np.full((max_people, 2), np.nan, np.float32)
    out[:k] = pos
    return out, k


def pack_truth(truth: GroundTruth | None, index: Mapping[str, int], max_people: int, what: str) -> TruthRow:
    """Pad one frame's truth to fixed width. None packs as count -1 (frame has no ground truth)."""
    ids = np.full((max_people,), NO_ID, np.int16)
    visible = np.zeros((max_people,), np.bool_)
    if truth is None:
        return TruthRow(NO_ID, ids, np.full((max_people, 2), np.nan, np.float32), visible)
    positions, k = pad_positions(truth.positions, max_people, what)
    vis = np.asarray(truth.visible, dtype=np.bool_).reshape(-1)
    if len(truth.identities) != k or vis.shape[0] != k:
        raise ValueError(
            f"{what}: ground truth has {len(truth.identities)} identities, {k} positions and "
            f"{vis.shape[0]} visibility flags; they must match"
        )
    for j, name in enumerate(truth.identities):
        if name not in index:
            known = ", ".join(list(index)[:10]) + (" ..." if len(index) > 10 else "")
            raise UserError(
                f"{what}: identity {name!r} is not in the session's identity table ({known}); "
                "pass every identity of the session in SessionWriter(identities=...)"
            )
        ids[j] = index[name]
    visible[:k] = vis
    return TruthRow(k, ids, positions, visible)


def unpack_truth(row: TruthRow, identities: Sequence[str], what: str) -> GroundTruth | None:
    """Fixed-width row -> GroundTruth (None when the frame had none). Refuses rows a sane writer cannot
    produce, naming the frame, so a damaged file never turns into wrong labels."""
    k = int(row.count)
    max_people = row.ids.shape[0]
    if k == NO_ID:
        return None
    if not 0 <= k <= max_people:
        raise RecordingError(
            f"{what}: ground-truth count {k} is outside 0..{max_people}; the file is damaged"
        )
    ids = row.ids[:k].astype(np.int64)
    if k and (ids.min() < 0 or ids.max() >= len(identities)):
        raise RecordingError(
            f"{what}: ground-truth identity index {ids.tolist()} is outside the identity table "
            f"(0..{len(identities) - 1}); the file is damaged"
        )
    positions = np.array(row.positions[:k], dtype=np.float32)
    if not np.isfinite(positions).all():
        # A person the row counts as present has a place; NaN or infinity there would score and
        # train against a position that does not exist.
        raise RecordingError(
            f"{what}: ground-truth position {positions.tolist()} of a person present is not finite; "
            "the file is damaged"
        )
    return GroundTruth(
        identities=tuple(identities[i] for i in ids),
        positions=positions,
        visible=np.array(row.visible[:k], dtype=np.bool_),
    )
