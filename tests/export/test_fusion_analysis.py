"""The fusion analysis: per-query average precision under the evaluator's protocol, and what the
re-fused rows report on embeddings whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import torch
from vrclip.export.evaluate import Embedded
from vrclip.export.fusion_analysis import (
    DISAGREEMENT_GAP,
    MARGIN_TARGET,
    camera_split,
    disagreement_split,
    format_fusion_table,
    fuse,
    fusion_analysis,
)
from vrclip.export.metrics import average_precisions, evaluate_ranking
from vrclip.export.model import gate_distance


def test_per_query_average_precision_is_the_rankings_map_query_by_query() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        nq, ng = 15, 25
        dist = rng.integers(0, 4, size=(nq, ng)).astype(float)  # many ties
        q_ids, g_ids = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
        q_ids[0] = 99  # a query with nothing to find
        q_sess, g_sess = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
        ap = average_precisions(dist, q_ids, g_ids, q_sess, g_sess)
        result = evaluate_ranking(dist, q_ids, g_ids, q_sess, g_sess)
        assert np.isnan(ap[0])
        assert np.isfinite(ap).sum() == result.valid_queries
        assert np.nanmean(ap) == pytest.approx(result.mean_ap, abs=1e-12)
    with pytest.raises(ValueError, match="match the distance matrix"):
        average_precisions(np.zeros((2, 3)), np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(3))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _world(hidden_fraction: float, radio_wrong_sessions: int = 0) -> Embedded:
    """8 people x 4 sessions x 10 samples: radio noisy about each person's direction; vision close to
    it where the camera sees the person and a random direction (a crop of the wall) where not. In the
    first `radio_wrong_sessions` sessions the radio points at the next person instead."""
    rng = np.random.default_rng(11)
    people, sessions, per = 8, 4, 10
    centres = _unit(rng.normal(size=(people, 16)))
    identity = np.repeat(np.arange(people), sessions * per)
    session = np.tile(np.repeat(np.arange(sessions), per), people) + identity * sessions
    n = identity.size
    visible = rng.random(n) >= hidden_fraction
    radio_person = np.where(session < radio_wrong_sessions, (identity + 1) % people, identity)
    radio = _unit(centres[radio_person] + 0.25 * rng.normal(size=(n, 16)))
    seen = _unit(centres[identity] + 0.1 * rng.normal(size=(n, 16)))
    vision = np.where(visible[:, None], seen, _unit(rng.normal(size=(n, 16))))
    w = 2.0 * np.exp(-5.0 * gate_distance(torch.from_numpy(vision), torch.from_numpy(radio)).numpy())
    return Embedded(
        embedding={"fused": fuse(vision, radio, w), "vision": vision, "radio": radio},
        position={},
        reliability=w / 2,
        truth=np.zeros((n, 2)),
        identity=identity,
        label=identity,
        session=session,
        lighting=np.full(n, "day"),
        occlusion=np.where(np.arange(n) % 2 == 0, "wall", "none"),
        visible=visible,
    )


def test_the_gate_turns_down_crops_that_do_not_show_the_person_and_the_analysis_says_so() -> None:
    world = _world(hidden_fraction=0.3)
    analysis = fusion_analysis(world)
    maps = analysis["mAP"]
    w = analysis["mean_gate_weight"]
    assert w["camera:hidden"] < 0.5 < w["camera:visible"]
    # Counting every crop at W = 1 lets the wall crops in; the gate keeps them out.
    assert maps["fixed_1"]["camera:hidden"] < maps["gate"]["camera:hidden"]
    # The per-query bound can pick W = 0 for a blind query, so it is never worse than radio there.
    assert maps["best_per_query"]["camera:hidden"] >= maps["radio"]["camera:hidden"] - 1e-9
    for row in maps.values():
        assert all(v is None or 0.0 <= v <= 1.0 for v in row.values())
    # With every crop showing the person, vision only helps: fusion beats radio.
    clear = fusion_analysis(_world(hidden_fraction=0.0))["mAP"]
    assert clear["gate"]["all"] > clear["radio"]["all"] + 0.02
    assert clear["fixed_1_visible"]["all"] == pytest.approx(clear["fixed_1"]["all"])


def test_visible_gate_needed_is_the_visible_map_that_gives_the_target_margin() -> None:
    rng = np.random.default_rng(5)
    n = 200
    radio, gate = rng.random(n), rng.random(n)
    radio[3] = gate[3] = np.nan  # a query with nothing to find is left out of both
    visible = rng.random(n) < 0.7
    split = camera_split(gate, radio, visible, np.ones(n, bool))
    scored = np.isfinite(radio)
    assert split["queries_visible"] + split["queries_hidden"] == int(scored.sum())
    assert split["hidden_gate"] == pytest.approx(np.nanmean(gate[~visible]), abs=1e-6)
    # Give the visible queries exactly the mAP the split asks for: the margin is then the target.
    needed = split["visible_gate_needed"]
    lifted = gate.copy()
    lifted[visible] = radio[visible] - np.nanmean(radio[visible]) + needed
    assert np.nanmean(lifted) - np.nanmean(radio) == pytest.approx(MARGIN_TARGET, abs=1e-5)
    # With no hidden query the visible part just needs radio's mAP plus the target.
    clear = camera_split(gate, radio, np.ones(n, bool), np.ones(n, bool))
    assert clear["queries_hidden"] == 0 and clear["hidden_gate"] is None
    assert clear["visible_gate_needed"] == pytest.approx(np.nanmean(radio) + MARGIN_TARGET, abs=1e-6)


def test_the_analysis_splits_each_condition_by_what_the_camera_sees() -> None:
    analysis = fusion_analysis(_world(hidden_fraction=0.3))
    wall = analysis["by_camera"]["occlusion:wall"]
    assert wall["queries_hidden"] > 0 and wall["queries_visible"] > 0
    assert not any(name.startswith("camera:") for name in analysis["by_camera"])
    # Hidden queries gain less from fusion than visible ones, which is why the wall needs more of them.
    assert wall["hidden_gate"] - wall["hidden_radio"] < wall["visible_gate"] - wall["visible_radio"]
    assert "visible gate needed" in format_fusion_table(analysis)


def test_disagreement_split_partitions_the_scored_queries_and_their_lost_precision() -> None:
    rng = np.random.default_rng(8)
    n = 300
    vision, radio, gate, w = rng.random(n), rng.random(n), rng.random(n), 2 * rng.random(n)
    vision[5] = radio[5] = gate[5] = np.nan  # nothing to find: left out
    mask = rng.random(n) < 0.8
    split = disagreement_split(gate, vision, radio, w, mask)
    scored = mask & np.isfinite(gate)
    assert sum(p["queries"] for p in split.values()) == int(scored.sum())
    assert sum(p["share_of_gate_loss"] for p in split.values()) == pytest.approx(1.0, abs=1e-3)
    better = scored & (vision >= radio + DISAGREEMENT_GAP)
    assert split["vision_better"]["queries"] == int(better.sum())
    assert split["vision_better"]["gate"] == pytest.approx(gate[better].mean(), abs=1e-6)
    assert split["vision_better"]["mean_gate_weight"] == pytest.approx(w[better].mean(), abs=1e-4)
    assert split["radio_better"]["vision"] < split["radio_better"]["radio"]
    empty = disagreement_split(gate, vision, radio, w, np.zeros(n, bool))
    assert empty["close"] == {
        "queries": 0,
        "vision": None,
        "radio": None,
        "gate": None,
        "mean_gate_weight": None,
        "share_of_gate_loss": None,
    }


def test_where_the_radio_is_wrong_the_gate_turns_the_right_vision_down() -> None:
    """The gate reads only the distance between the two aligned embeddings, so it cannot tell which
    modality is wrong: in sessions whose radio points at someone else it lowers W and the fused
    embedding ranks below the vision alone. The analysis must show that, not average it away."""
    analysis = fusion_analysis(_world(hidden_fraction=0.0, radio_wrong_sessions=1))
    split = analysis["by_disagreement"]["all"]
    wrong_radio, rest = split["vision_better"], split["close"]
    assert wrong_radio["queries"] > 0 and rest["queries"] > 0
    assert wrong_radio["mean_gate_weight"] < rest["mean_gate_weight"]
    assert wrong_radio["radio"] < wrong_radio["gate"] < wrong_radio["vision"]
    assert wrong_radio["share_of_gate_loss"] > rest["share_of_gate_loss"]
    assert "share of gate loss" in format_fusion_table(analysis)


def test_a_radio_that_mistakes_one_person_in_every_session_shows_per_identity() -> None:
    """Identity 0's radio points at identity 1 in all four of its sessions while its image is right:
    the per-condition means spread that over everyone; the per-identity split names it."""
    analysis = fusion_analysis(_world(hidden_fraction=0.0, radio_wrong_sessions=4))
    by_identity = analysis["by_identity"]
    assert set(by_identity) == {f"identity {i}" for i in range(8)}
    worst = min(by_identity, key=lambda name: by_identity[name]["radio"])
    assert worst == "identity 0"
    mistaken, others = by_identity["identity 0"], [c for n, c in by_identity.items() if n != "identity 0"]
    assert mistaken["radio"] < 0.5 < mistaken["vision"]
    assert mistaken["radio_worst_session"] <= mistaken["radio"]
    assert all(c["radio"] > mistaken["radio"] for c in others)
    assert mistaken["queries"] == 40
    table = format_fusion_table(analysis)
    assert "the radio ranks worst" in table and "identity 0" in table
