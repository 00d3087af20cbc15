"""What the reliability gate buys, measured on a test set's own embeddings (`evaluate --fusion-analysis`).

The fused embedding is normalize(W v + r) with W = 2 exp(-beta d) from the gate. Whether a different
W would do better is a question about embeddings the model has already produced, so this module
re-fuses the vision-only and radio-only embeddings of `evaluate.embed` with other weights and scores
each under the evaluator's protocol, beside the model's own fused embedding:

- `gate`: the model's fused embedding as `embed` recorded it (the gate itself is `VRCLIP.fuse`'s);
- `fixed_1`: W = 1 for every crop, what a runtime without a gate would do;
- `fixed_1_visible`: W = 1 where the renderer says the camera sees the person, 0 elsewhere. No runtime
  has that flag (the crop is cut around the radar track whether the camera sees the person or not),
  so this row is a reference, not an option;
- `best_per_query`: for each query, the best average precision over `BOUND_WEIGHTS`, against the
  gallery fused by the gate: a bound on what any per-sample weight could reach with these embeddings.

`by_camera` splits each condition's queries into those whose crop shows the person and those whose
crop does not (the renderer's flag, used here only to explain a figure, never by the model). A query
with no person in its crop gains only through the gallery's vision, so a condition where many crops
are hidden (a wall) needs the rest to gain all the more: `visible_gate_needed` is the mAP the visible
queries would need, the hidden ones as they are, for the gate to beat radio by `MARGIN_TARGET`.

`by_disagreement` splits the visible queries of each condition by which modality ranked them better
(per-query average precision, by at least `DISAGREEMENT_GAP`), with the gate's mAP, its mean W and
each part's share of the gate's lost precision. The gate reads only how far the two aligned
embeddings are apart, so when they disagree it turns the vision down whichever one is wrong: where
the radio is the one that is wrong, the fused result lands between the two instead of on the vision.
This is what the split shows on the demo model (`reports/eval-synthetic.json`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vrclip.export.evaluate import Embedded, conditions
from vrclip.export.metrics import average_precisions, cosine_distance

#: The vision weights the per-query bound chooses among (0 = radio alone, 2 = the gate's maximum).
BOUND_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
#: The margin over radio-only that issue #4 asks of the fused model in dark and occluded conditions.
MARGIN_TARGET = 0.05
#: Identities listed in the text table (those the radio ranks worst).
IDENTITIES_SHOWN = 5
#: How much better (per-query average precision) one modality must rank a query to count as the
#: better one in `disagreement_split`.
DISAGREEMENT_GAP = 0.1


def fuse(vision: np.ndarray, radio: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """normalize(W v + r) per row (a zero row stays zero)."""
    w = np.broadcast_to(np.asarray(weight, np.float64), (vision.shape[0],))[:, None]
    x = w * vision + radio
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ap(e: Embedded, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return average_precisions(cosine_distance(query, gallery), e.identity, e.identity, e.session, e.session)


def _mean(values: np.ndarray) -> float | None:
    """Mean of the finite entries (queries with something to find), to 6 places; None if none."""
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 6) if values.size else None


def _summary(ap: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float | None]:
    return {name: _mean(ap[mask]) for name, mask in masks.items()}


def camera_split(
    gate_ap: np.ndarray, radio_ap: np.ndarray, visible: np.ndarray, mask: np.ndarray
) -> dict[str, Any]:
    """One condition's queries split by whether the crop shows the person: counts, radio and gate
    mAP of each part, and the gate mAP the visible part would need (the hidden part unchanged) for
    the whole condition to beat radio by `MARGIN_TARGET` (None where a part has no scored query;
    above 1 where no ranking of the visible queries could do it)."""
    scored = mask & np.isfinite(gate_ap) & np.isfinite(radio_ap)
    seen, unseen = scored & visible, scored & ~visible
    out: dict[str, Any] = {"queries_visible": int(seen.sum()), "queries_hidden": int(unseen.sum())}
    for part, m in (("visible", seen), ("hidden", unseen)):
        for row, ap in (("radio", radio_ap), ("gate", gate_ap)):
            out[f"{part}_{row}"] = _mean(ap[m])
    needed = None
    if seen.any():
        total = int(scored.sum())
        hidden_gain = float((gate_ap[unseen] - radio_ap[unseen]).sum())
        gain_needed = (MARGIN_TARGET * total - hidden_gain) / int(seen.sum())
        needed = round(float(radio_ap[seen].mean()) + gain_needed, 6)
    out["visible_gate_needed"] = needed
    return out


def disagreement_split(
    gate_ap: np.ndarray,
    vision_ap: np.ndarray,
    radio_ap: np.ndarray,
    gate_weight: np.ndarray,
    mask: np.ndarray,
) -> dict[str, Any]:
    """The queries in `mask` split into `vision_better`, `radio_better` (by `DISAGREEMENT_GAP` or more)
    and `close`: per part the count, the mAP of each row, the gate's mean W, and the part's share of
    the gate's lost precision (sum of 1 - AP; the shares of the three parts add up to 1)."""
    scored = mask & np.isfinite(gate_ap) & np.isfinite(vision_ap) & np.isfinite(radio_ap)
    parts = {
        "vision_better": scored & (vision_ap >= radio_ap + DISAGREEMENT_GAP),
        "radio_better": scored & (radio_ap >= vision_ap + DISAGREEMENT_GAP),
    }
    parts["close"] = scored & ~parts["vision_better"] & ~parts["radio_better"]
    lost = float((1.0 - gate_ap[scored]).sum())
    out: dict[str, Any] = {}
    for name, m in parts.items():
        out[name] = {
            "queries": int(m.sum()),
            "vision": _mean(vision_ap[m]),
            "radio": _mean(radio_ap[m]),
            "gate": _mean(gate_ap[m]),
            "mean_gate_weight": round(float(gate_weight[m].mean()), 4) if m.any() else None,
            "share_of_gate_loss": round(float((1.0 - gate_ap[m]).sum()) / lost, 4) if lost > 0 else None,
        }
    return out


def identity_split(
    e: Embedded, gate_ap: np.ndarray, vision_ap: np.ndarray, radio_ap: np.ndarray, mask: np.ndarray
) -> dict[str, Any]:
    """Per identity, over its test queries in `mask`: the count and each row's mAP, and the radio's
    mAP in its worst session. A radio that fails on one person in every session (it mistakes them
    for someone else, whatever the light) shows here, where the per-condition means spread it over
    everyone; the gate cannot tell that case from a wrong image."""
    out: dict[str, Any] = {}
    for ident in np.unique(e.identity[mask]):
        m = mask & (e.identity == ident) & np.isfinite(gate_ap) & np.isfinite(radio_ap)
        if not m.any():
            continue
        per_session = [float(radio_ap[m & (e.session == s)].mean()) for s in np.unique(e.session[m])]
        name = e.names[int(ident)] if int(ident) < len(e.names) else f"identity {int(ident)}"
        out[name] = {
            "queries": int(m.sum()),
            "vision": _mean(vision_ap[m]),
            "radio": _mean(radio_ap[m]),
            "gate": _mean(gate_ap[m]),
            "radio_worst_session": round(min(per_session), 6),
        }
    return out


def fusion_analysis(e: Embedded) -> dict[str, Any]:
    """mAP (fractions) of each weighting, overall and per condition, plus the gate's mean W on crops
    that show the person and on crops that do not (W = 2 x the model's reliability wherever radio
    is present, which it is in every recorded sample)."""
    vision = np.asarray(e.embedding["vision"], np.float64)
    radio = np.asarray(e.embedding["radio"], np.float64)
    gate_fused = np.asarray(e.embedding["fused"], np.float64)
    masks = {"all": np.ones(e.identity.size, bool), **conditions(e)}
    gate = 2.0 * np.asarray(e.reliability, np.float64)
    fixed_fused = fuse(vision, radio, 1.0)
    rows: dict[str, np.ndarray] = {
        "vision": _ap(e, vision, vision),
        "radio": _ap(e, radio, radio),
        "gate": _ap(e, gate_fused, gate_fused),
        "fixed_1": _ap(e, fixed_fused, fixed_fused),
    }
    visible_fused = fuse(vision, radio, e.visible.astype(np.float64))
    rows["fixed_1_visible"] = _ap(e, visible_fused, visible_fused)
    per_weight = np.stack([_ap(e, fuse(vision, radio, w), gate_fused) for w in BOUND_WEIGHTS])
    rows["best_per_query"] = np.where(
        np.isfinite(per_weight).any(axis=0), np.nanmax(np.nan_to_num(per_weight, nan=-1.0), axis=0), np.nan
    )
    return {
        "mAP": {name: _summary(ap, masks) for name, ap in rows.items()},
        "by_camera": {
            name: camera_split(rows["gate"], rows["radio"], e.visible, mask)
            for name, mask in masks.items()
            if not name.startswith("camera:")
        },
        "by_disagreement": {
            name: disagreement_split(rows["gate"], rows["vision"], rows["radio"], gate, mask & e.visible)
            for name, mask in masks.items()
            if not name.startswith("camera:")
        },
        "by_identity": identity_split(e, rows["gate"], rows["vision"], rows["radio"], e.visible),
        "bound_weights": list(BOUND_WEIGHTS),
        "mean_gate_weight": {
            "camera:visible": round(float(gate[e.visible].mean()), 4) if e.visible.any() else None,
            "camera:hidden": round(float(gate[~e.visible].mean()), 4) if (~e.visible).any() else None,
        },
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_fusion_table(analysis: dict[str, Any]) -> str:
    """Plain-text table: one row per condition, one column per weighting (mAP, percent)."""
    table = analysis["mAP"]
    names = list(table)
    conditions_ = list(table[names[0]])
    lines = [f"{'condition':20s} " + " ".join(f"{n:>15s}" for n in names)]
    for cond in conditions_:
        cells = [table[n][cond] for n in names]
        lines.append(
            f"{cond:20s} " + " ".join(f"{'-' if c is None else f'{100 * c:.1f}':>15s}" for c in cells)
        )
    lines.append(
        f"\n{'queries by camera':20s} {'visible: n':>10s} {'radio':>6s} {'gate':>6s}"
        f" {'hidden: n':>10s} {'radio':>6s} {'gate':>6s} {'visible gate needed for +5':>27s}"
    )
    for cond, c in analysis.get("by_camera", {}).items():
        visible = f"{c['queries_visible']:>10d} {_pct(c['visible_radio']):>6s} {_pct(c['visible_gate']):>6s}"
        hidden = f"{c['queries_hidden']:>10d} {_pct(c['hidden_radio']):>6s} {_pct(c['hidden_gate']):>6s}"
        lines.append(f"{cond:20s} {visible} {hidden} {_pct(c['visible_gate_needed']):>27s}")
    if "by_disagreement" in analysis:
        lines.append(
            f"\n{'visible queries':20s} {'better ranked by':>16s} {'n':>6s} {'vision':>7s} {'radio':>6s}"
            f" {'gate':>6s} {'mean W':>7s} {'share of gate loss':>19s}"
        )
        for cond, split in analysis["by_disagreement"].items():
            for part, c in split.items():
                label = part.replace("_better", "").replace("close", "neither")
                w_text = "-" if c["mean_gate_weight"] is None else f"{c['mean_gate_weight']:.2f}"
                share = "-" if c["share_of_gate_loss"] is None else f"{100 * c['share_of_gate_loss']:.0f} %"
                lines.append(
                    f"{cond:20s} {label:>16s} {c['queries']:>6d} {_pct(c['vision']):>7s}"
                    f" {_pct(c['radio']):>6s} {_pct(c['gate']):>6s} {w_text:>7s} {share:>19s}"
                )
    if analysis.get("by_identity"):
        worst = sorted(analysis["by_identity"].items(), key=lambda item: item[1]["radio"])[:IDENTITIES_SHOWN]
        lines.append(
            f"\n{'visible queries of':20s} {'n':>6s} {'vision':>7s} {'radio':>6s} {'gate':>6s}"
            f" {'radio, worst session':>21s}   (the {len(worst)} identities the radio ranks worst)"
        )
        for name, c in worst:
            lines.append(
                f"{name[:20]:20s} {c['queries']:>6d} {_pct(c['vision']):>7s} {_pct(c['radio']):>6s}"
                f" {_pct(c['gate']):>6s} {_pct(c['radio_worst_session']):>21s}"
            )
    w = analysis["mean_gate_weight"]
    lines.append(f"mean gate W: camera sees the person {w['camera:visible']}, does not {w['camera:hidden']}")
    return "\n".join(lines)


__all__ = [
    "BOUND_WEIGHTS",
    "DISAGREEMENT_GAP",
    "MARGIN_TARGET",
    "camera_split",
    "disagreement_split",
    "format_fusion_table",
    "fuse",
    "fusion_analysis",
    "identity_split",
]
