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
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vrclip.export.evaluate import Embedded, conditions
from vrclip.export.metrics import average_precisions, cosine_distance

#: The vision weights the per-query bound chooses among (0 = radio alone, 2 = the gate's maximum).
BOUND_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


def fuse(vision: np.ndarray, radio: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """normalize(W v + r) per row (a zero row stays zero)."""
    w = np.broadcast_to(np.asarray(weight, np.float64), (vision.shape[0],))[:, None]
    x = w * vision + radio
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ap(e: Embedded, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return average_precisions(cosine_distance(query, gallery), e.identity, e.identity, e.session, e.session)


def _summary(ap: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, mask in masks.items():
        values = ap[mask & np.isfinite(ap)]
        out[name] = round(float(values.mean()), 6) if values.size else None
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
        "bound_weights": list(BOUND_WEIGHTS),
        "mean_gate_weight": {
            "camera:visible": round(float(gate[e.visible].mean()), 4) if e.visible.any() else None,
            "camera:hidden": round(float(gate[~e.visible].mean()), 4) if (~e.visible).any() else None,
        },
    }


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
    w = analysis["mean_gate_weight"]
    lines.append(f"mean gate W: camera sees the person {w['camera:visible']}, does not {w['camera:hidden']}")
    return "\n".join(lines)


__all__ = ["BOUND_WEIGHTS", "format_fusion_table", "fuse", "fusion_analysis"]
