"""The open-set threshold a trained model suggests, estimated on its test split as the runtime matches.

Why here and not only in `vrclip-edge bench pipeline`: the threshold belongs to the model. Retraining
the demo model moved the best one from 0.75 to 0.85 (the visitor passed for an enrolled person in
15 % of frames at the old value), so a site config that fixes it goes stale with every new engine.
`vrclip-export evaluate` writes this estimate into its report, `vrclip-export onnx --threshold-from`
copies it into the engine manifest, and the runtime uses it unless `gallery.threshold` is set.

The estimate mirrors `vrclip.edge.gallery.matcher`: each identity is enrolled from one session (up to
`exemplars` windows spread over it, the gallery's budget); a query's score for an identity is its best
cosine over that identity's exemplars. Enrolled people are the queries from the other sessions; the
visitors are the same queries with their own identity taken out of the gallery (leave one identity
out), so every identity takes a turn at being a stranger. The threshold is chosen as the bench chooses
it (`ThresholdSweep.best_threshold`: the best worse-of-the-two accuracy).

A caveat: the published split is closed-set, so these strangers are people the model was trained on;
someone it never saw may sit closer to an enrolled person. For the demo model the two agreed: the
pipeline bench's visitor, never trained on, gave the same best threshold (0.85).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from vrclip.edge.errors import UserError
from vrclip.edge.manifest import OpenSetThreshold, sha256_file
from vrclip.edge.pipeline.app import ThresholdSweep

#: Thresholds tried (cosine similarity), finer than the bench's sweep.
THRESHOLDS = np.round(np.arange(0.30, 0.951, 0.01), 2)
#: Exemplars per identity, as `gallery.exemplar_budget`'s default.
DEFAULT_EXEMPLARS = 32


@dataclass(frozen=True)
class OpenSetEstimate:
    threshold: float
    #: Share of enrolled people's queries named right at the threshold.
    identity_accuracy: float
    #: Share of visitors' queries (own identity left out of the gallery) reported unknown.
    unknown_accuracy: float
    queries: int
    identities: int
    exemplars: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def open_set_sweep(
    embedding: np.ndarray, identity: np.ndarray, session: np.ndarray, exemplars: int = DEFAULT_EXEMPLARS
) -> tuple[ThresholdSweep, int, int]:
    """(sweep records, identities enrolled, queries) from (N, D) embeddings with their labels.

    Identities seen in a single session have no query and are enrolled only (strangers to no one
    else's queries would be wrong: they still sit in the gallery for every other identity's test).
    """
    if exemplars < 1:
        raise ValueError(f"exemplars {exemplars}: must be >= 1")
    emb = _unit(np.asarray(embedding, np.float64))
    names = np.unique(identity)
    galleries, enrol_session = [], {}
    for name in names:
        mine = identity == name
        first = np.unique(session[mine])[0]
        rows = np.flatnonzero(mine & (session == first))
        rows = rows[np.unique(np.linspace(0, rows.size - 1, min(exemplars, rows.size)).round().astype(int))]
        galleries.append(emb[rows])
        enrol_session[name] = first
    queries = np.flatnonzero(
        np.array([s != enrol_session[i] for i, s in zip(identity, session, strict=True)])
    )
    # (Q, K): each query's best cosine over each identity's exemplars.
    scores = np.stack([(emb[queries] @ g.T).max(axis=1) for g in galleries], axis=1)
    own = np.searchsorted(names, identity[queries])
    sweep = ThresholdSweep()
    best = scores.argmax(axis=1)
    for q in range(queries.size):
        sweep.records.append((float(scores[q, best[q]]), bool(best[q] == own[q]), True))
    if names.size > 1:
        others = scores.copy()
        others[np.arange(queries.size), own] = -np.inf
        for q in range(queries.size):
            sweep.records.append((float(others[q].max()), False, False))
    return sweep, int(names.size), int(queries.size)


def estimate_open_set(
    embedding: np.ndarray, identity: np.ndarray, session: np.ndarray, exemplars: int = DEFAULT_EXEMPLARS
) -> OpenSetEstimate | None:
    """The suggested threshold and its two accuracies; None without two identities and a query."""
    sweep, identities, queries = open_set_sweep(embedding, identity, session, exemplars)
    threshold = sweep.best_threshold(THRESHOLDS)
    if threshold is None or identities < 2 or queries == 0:
        return None
    known, unknown = sweep.at(threshold)
    assert known is not None and unknown is not None  # both kinds of record exist
    return OpenSetEstimate(
        threshold=threshold,
        identity_accuracy=round(known, 4),
        unknown_accuracy=round(unknown, 4),
        queries=queries,
        identities=identities,
        exemplars=exemplars,
    )


def open_set_from_report(
    report: str | Path, checkpoint: str | Path, *, checkpoint_sha256: str | None = None
) -> OpenSetThreshold:
    """The manifest's `open_set` from an evaluation report, refused unless it evaluated `checkpoint`.

    `checkpoint_sha256`: the hash of the checkpoint bytes the caller loaded (default: hash the file
    now); pass it when the model comes from those bytes, so a file replaced since cannot vouch for it.
    """
    report = Path(report)
    try:
        data = json.loads(report.read_text())
    except OSError as e:
        raise UserError(f"--threshold-from {report}: cannot read it ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--threshold-from {report}: not a JSON evaluation report ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        raise UserError(f"--threshold-from {report}: not a `vrclip-export evaluate --json` report (no meta)")
    evaluated = data["meta"].get("checkpoint_sha256")
    if not evaluated:
        raise UserError(
            f"--threshold-from {report}: the report does not say which checkpoint it evaluated (written by "
            f"an older version); run `vrclip-export evaluate {checkpoint} DATASET --json {report}` again"
        )
    try:
        if checkpoint_sha256 is None:
            checkpoint_sha256 = sha256_file(checkpoint)
    except OSError as e:
        raise UserError(
            f"{checkpoint}: cannot read the checkpoint to match it against --threshold-from {report} "
            f"({e.strerror}); give the checkpoint the report evaluated"
        ) from e
    if evaluated != checkpoint_sha256:
        raise UserError(
            f"--threshold-from {report}: it evaluated another checkpoint "
            f"({data['meta'].get('checkpoint', '?')}), not {checkpoint}; evaluate this one first"
        )
    open_set = data.get("open_set")
    if not isinstance(open_set, dict):
        raise UserError(
            f"--threshold-from {report}: it has no open-set estimate (too few identities or sessions)"
        )
    try:
        return OpenSetThreshold(
            threshold=open_set.get("threshold"),
            identity_accuracy=open_set.get("identity_accuracy"),
            unknown_accuracy=open_set.get("unknown_accuracy"),
            source=f"{report.name}: {data['meta'].get('dataset', '?')}, "
            f"{open_set.get('queries', '?')} queries",
        )
    except ValidationError as e:
        raise UserError(f"--threshold-from {report}: open_set is malformed ({e.errors()[0]['msg']})") from e


__all__ = [
    "DEFAULT_EXEMPLARS",
    "THRESHOLDS",
    "OpenSetEstimate",
    "estimate_open_set",
    "open_set_from_report",
    "open_set_sweep",
]
