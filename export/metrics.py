"""Re-identification metrics: mAP and CMC under the query/gallery protocol, closed-set precision/F1,
localisation error.

Protocol (as torchreid's `eval_market1501`, with the session in the role of the camera id): for each
query, gallery entries of the *same identity recorded in the same session* are removed, because
finding yourself a tenth of a second later is not re-identification; a query whose identity has no
gallery entry left is skipped (it cannot be scored), and the counts report how many were valid.

Ties in distance are broken by gallery order (a stable sort), so the numbers are deterministic;
torchreid's default sort leaves tie order to the sort algorithm.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RankResult:
    #: (max_rank,) fraction of valid queries with a correct match within the first k.
    cmc: np.ndarray
    mean_ap: float
    valid_queries: int
    total_queries: int


def _ranking_inputs(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_sessions: np.ndarray,
    g_sessions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inputs as arrays (distances in float64), checked to agree in size."""
    distmat = np.asarray(distmat, dtype=np.float64)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_sessions, g_sessions = np.asarray(q_sessions), np.asarray(g_sessions)
    nq, ng = distmat.shape
    if (
        q_pids.shape != (nq,)
        or q_sessions.shape != (nq,)
        or g_pids.shape != (ng,)
        or g_sessions.shape != (ng,)
    ):
        raise ValueError("identity/session arrays must match the distance matrix's query and gallery sizes")
    return distmat, q_pids, g_pids, q_sessions, g_sessions


def _ranked_matches(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_sessions: np.ndarray,
    g_sessions: np.ndarray,
) -> Iterator[np.ndarray | None]:
    """Per query, its gallery ranked by distance with same-identity same-session entries removed, as
    a 0/1 array of matches (None for a query with no match left to find): the protocol in one place."""
    order = np.argsort(distmat, axis=1, kind="stable")
    for q in range(distmat.shape[0]):
        ranked = order[q]
        keep = ~((g_pids[ranked] == q_pids[q]) & (g_sessions[ranked] == q_sessions[q]))
        matches = (g_pids[ranked][keep] == q_pids[q]).astype(np.float64)
        yield matches if matches.any() else None


def _average_precision(matches: np.ndarray) -> float:
    hits = np.cumsum(matches)
    precision_at_hit = hits / np.arange(1, matches.size + 1)
    return float((precision_at_hit * matches).sum() / matches.sum())


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_sessions: np.ndarray,
    g_sessions: np.ndarray,
    max_rank: int = 10,
) -> RankResult:
    """mAP and CMC of a (num_query, num_gallery) distance matrix (smaller = more similar)."""
    distmat, q_pids, g_pids, q_sessions, g_sessions = _ranking_inputs(
        distmat, q_pids, g_pids, q_sessions, g_sessions
    )
    nq = distmat.shape[0]
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    cmc_sum = np.zeros(max_rank)
    ap_sum = 0.0
    valid = 0
    for matches in _ranked_matches(distmat, q_pids, g_pids, q_sessions, g_sessions):
        if matches is None:
            continue
        valid += 1
        cmc = np.minimum(np.cumsum(matches), 1.0)
        if cmc.size < max_rank:
            cmc = np.concatenate([cmc, np.ones(max_rank - cmc.size)])
        cmc_sum += cmc[:max_rank]
        ap_sum += _average_precision(matches)
    if valid == 0:
        return RankResult(np.full(max_rank, np.nan), float("nan"), 0, nq)
    return RankResult(cmc_sum / valid, ap_sum / valid, valid, nq)


def average_precisions(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_sessions: np.ndarray,
    g_sessions: np.ndarray,
) -> np.ndarray:
    """(num_query,) average precision of each query under the same protocol as `evaluate_ranking`
    (NaN where the query has nothing to find), for analyses that compare queries one by one; the
    mean of the finite entries is `evaluate_ranking`'s mAP."""
    distmat, q_pids, g_pids, q_sessions, g_sessions = _ranking_inputs(
        distmat, q_pids, g_pids, q_sessions, g_sessions
    )
    return np.array(
        [
            np.nan if m is None else _average_precision(m)
            for m in _ranked_matches(distmat, q_pids, g_pids, q_sessions, g_sessions)
        ],
        dtype=np.float64,
    )


def classification_scores(true: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Macro-averaged (precision, F1) over the identities that occur in `true`.

    Macro, so every identity counts the same however many frames it has; a class never predicted has
    precision 0 (not undefined), so a collapsed classifier cannot look good.
    """
    true = np.asarray(true)
    predicted = np.asarray(predicted)
    classes = np.unique(true)
    if classes.size == 0:
        return float("nan"), float("nan")
    precisions, f1s = [], []
    for c in classes:
        tp = float(np.sum((predicted == c) & (true == c)))
        fp = float(np.sum((predicted == c) & (true != c)))
        fn = float(np.sum((predicted != c) & (true == c)))
        p = tp / (tp + fp) if tp + fp > 0 else 0.0
        r = tp / (tp + fn) if tp + fn > 0 else 0.0
        precisions.append(p)
        f1s.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    return float(np.mean(precisions)), float(np.mean(f1s))


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts, rows = true identity, columns = predicted."""
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (np.asarray(true, np.int64), np.asarray(predicted, np.int64)), 1)
    return m


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos between rows of a and rows of b (rows need not be normalised; zero rows get distance 1)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - an @ bn.T


__all__ = [
    "RankResult",
    "average_precisions",
    "classification_scores",
    "confusion_matrix",
    "cosine_distance",
    "evaluate_ranking",
]
