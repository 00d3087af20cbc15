"""mAP / CMC agree with a reference written from the definitions, on random distance matrices with ties
and with queries whose identity has no valid gallery entry; precision/F1 on known cases."""

from __future__ import annotations

import numpy as np
import pytest
from vrclip.export.metrics import classification_scores, confusion_matrix, evaluate_ranking


def reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10):
    """Straight from the definitions, one gallery item at a time (no cumsum tricks)."""
    aps, cmcs = [], []
    for q in range(dist.shape[0]):
        valid = [g for g in range(dist.shape[1]) if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]

        # Rank of g = 1 + number of valid items strictly before it (closer, or equally close and earlier).
        def rank(g, q=q, valid=valid):
            return 1 + sum(
                1 for h in valid if dist[q, h] < dist[q, g] or (dist[q, h] == dist[q, g] and h < g)
            )

        hits = sorted(rank(g) for g in valid if g_pids[g] == q_pids[q])
        if not hits:
            continue
        # AP = mean over relevant items of precision at that item's rank.
        aps.append(np.mean([(i + 1) / r for i, r in enumerate(hits)]))
        cmcs.append([1.0 if hits[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    return np.mean(aps), np.mean(cmcs, axis=0), len(aps)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_matrices_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nq, ng = 15, 40
    dist = rng.integers(0, 6, size=(nq, ng)).astype(np.float64)  # few values: many ties
    if seed % 2:
        dist = dist + rng.random((nq, ng)) * 0.5 * (rng.random((nq, ng)) < 0.5)
    q_pids = rng.integers(0, 6, nq)
    g_pids = rng.integers(0, 5, ng)  # identity 5 never in the gallery: queries without matches
    q_cams = rng.integers(0, 3, nq)
    g_cams = rng.integers(0, 3, ng)
    got = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    mean_ap, cmc, valid = reference(dist, q_pids, g_pids, q_cams, g_cams)
    assert got.valid_queries == valid and got.total_queries == nq
    assert abs(got.mean_ap - mean_ap) < 1e-6
    np.testing.assert_allclose(got.cmc, cmc, atol=1e-6)


def test_same_session_matches_are_excluded() -> None:
    # The only gallery match of query 0 is in its own session: it must not count; query 1 has a real match.
    dist = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    result = evaluate_ranking(
        dist, np.array([7, 8]), np.array([7, 9, 8]), np.array([0, 0]), np.array([0, 1, 1])
    )
    assert result.valid_queries == 1
    assert result.mean_ap == 1.0 and result.cmc[0] == 1.0


def test_no_valid_query_gives_nan_not_a_crash() -> None:
    result = evaluate_ranking(np.zeros((2, 2)), np.array([1, 2]), np.array([3, 4]), np.zeros(2), np.zeros(2))
    assert result.valid_queries == 0 and np.isnan(result.mean_ap)


def test_precision_and_f1_are_macro_and_penalise_collapse() -> None:
    true = np.array([0, 0, 1, 1])
    assert classification_scores(true, true) == (1.0, 1.0)
    precision, f1 = classification_scores(true, np.array([0, 0, 0, 0]))
    assert precision == pytest.approx(0.25)  # class 0: 2/4, class 1: never predicted -> 0
    assert f1 == pytest.approx((2 * 0.5 * 1.0 / 1.5) / 2)
    np.testing.assert_array_equal(confusion_matrix(true, np.array([0, 1, 1, 1]), 2), [[1, 1], [0, 2]])
