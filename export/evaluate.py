"""Evaluate a trained VRCLIP checkpoint on the test part of a dataset: fused, vision-only, radio-only.

The test set is recomputed from the checkpoint's training segments (so it is exactly what training
left out) and thinned to every `stride`-th sample per track (neighbouring samples 0.1 s apart are
near-duplicates; the distance matrix grows with the square of the count). The ablations are the
same model with one modality's presence flag at 0, which is how the runtime runs when a sensor is
down. Every test sample is a query and the whole test set is the gallery (same-session matches of
the same identity excluded, see vrclip.export.metrics); per-condition results restrict the
queries to that condition and keep the full gallery.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vrclip.export.checkpoint import load_checkpoint_with_digest, model_from_checkpoint
from vrclip.export.data import (
    DatasetError,
    PrepSpec,
    SampleIndex,
    Segment,
    Track,
    discover_sessions,
    load_tracks,
    make_batch,
    other_recordings,
    session_ids,
    split_samples,
)
from vrclip.export.metrics import classification_scores, confusion_matrix, cosine_distance, evaluate_ranking
from vrclip.export.model import VRCLIP, CheckpointError
from vrclip.export.openset import estimate_open_set
from vrclip.export.train import to_tensors

VARIANTS = ("fused", "vision", "radio")


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path
    dataset: Path
    json_out: Path | None = None
    figures: Path | None = None
    stride: int = 3
    threads: int = 2
    jobs: int = 2
    cache: Path | None = None
    batch_size: int = 100
    #: Also score other vision weights on the same embeddings (`vrclip.export.fusion_analysis`).
    fusion_analysis: bool = False


@dataclass
class Embedded:
    """Per test sample: the three variants' embeddings and positions, and its labels."""

    embedding: dict[str, np.ndarray]
    position: dict[str, np.ndarray]
    reliability: np.ndarray
    truth: np.ndarray
    identity: np.ndarray  # int index into `names`
    label: np.ndarray  # class index of the model, -1 for identities it was not trained on
    session: np.ndarray  # int session id
    lighting: np.ndarray
    occlusion: np.ndarray
    visible: np.ndarray
    #: Identity names, indexed by `identity` (empty where the caller built this by hand).
    names: tuple[str, ...] = ()


def thin(index: SampleIndex, stride: int) -> SampleIndex:
    """Every `stride`-th sample of each track (samples are ordered by track, then end frame)."""
    if stride <= 1:
        return index
    keep = np.zeros(len(index), bool)
    for t in np.unique(index.track):
        rows = np.flatnonzero(index.track == t)
        keep[rows[::stride]] = True
    return index.subset(keep)


@torch.no_grad()
def embed(
    model: VRCLIP,
    tracks: list[Track],
    index: SampleIndex,
    classes: dict[str, int],
    batch_size: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> Embedded:
    model.eval()
    frames = model.cfg.rf.frames
    names = sorted({t.identity for t in tracks})
    name_id = {n: i for i, n in enumerate(names)}
    labels_for_batch = {n: classes.get(n, -1) for n in names}
    emb: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    pos: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    rel, truth = [], []
    for b in range(0, len(index), batch_size):
        rows = np.arange(b, min(len(index), b + batch_size))
        batch = to_tensors(make_batch(tracks, index, rows, frames, labels_for_batch))
        out = model.outputs(batch["rgb"], batch["rf"], batch["anchor"], batch["present"])
        rgb_on = batch["present"][:, 0:1]
        flags = {
            "fused": batch["present"],
            "vision": torch.cat([rgb_on, torch.zeros_like(rgb_on)], dim=1),
            "radio": torch.cat([torch.zeros_like(rgb_on), torch.ones_like(rgb_on)], dim=1),
        }
        for v, present in flags.items():
            fused, _, _ = model.fuse(out.aligned_vision, out.aligned_rf, present)
            emb[v].append(fused.numpy())
        pos["fused"].append(out.position.numpy())
        pos["radio"].append(out.position.numpy())
        pos["vision"].append(
            batch["anchor"][:, -1].numpy()
        )  # without radio the tracker's anchor is all there is
        rel.append(out.reliability.numpy())
        truth.append(batch["position"].numpy())
        if progress:
            progress(int(rows[-1]) + 1, len(index))
    tr_of = index.track
    sessions = sorted({t.session.name for t in tracks})
    session_id = {s: i for i, s in enumerate(sessions)}
    return Embedded(
        embedding={v: np.concatenate(emb[v]) for v in VARIANTS},
        position={v: np.concatenate(pos[v]) for v in VARIANTS},
        reliability=np.concatenate(rel),
        truth=np.concatenate(truth),
        identity=np.array([name_id[tracks[t].identity] for t in tr_of], np.int64),
        label=np.array([classes.get(tracks[t].identity, -1) for t in tr_of], np.int64),
        session=np.array([session_id[tracks[t].session.name] for t in tr_of], np.int64),
        lighting=np.array([tracks[t].session.lighting for t in tr_of]),
        occlusion=np.array([tracks[t].session.occlusion for t in tr_of]),
        visible=np.array([bool(tracks[t].visible[e]) for t, e in zip(tr_of, index.end, strict=True)]),
        names=tuple(names),
    )


def variant_metrics(
    model: VRCLIP, e: Embedded, variant: str, queries: np.ndarray, dist: np.ndarray
) -> dict[str, Any]:
    """The report's metrics of one variant for the queries selected by the boolean mask `queries`."""
    rank = evaluate_ranking(dist[queries], e.identity[queries], e.identity, e.session[queries], e.session)
    known = queries & (e.label >= 0)
    with torch.no_grad():
        logits = model.prototype_logits(torch.from_numpy(e.embedding[variant][known]))
    predicted = logits.argmax(dim=1).numpy()
    precision, f1 = classification_scores(e.label[known], predicted)
    err = np.linalg.norm(e.position[variant][queries] - e.truth[queries], axis=1)

    def num(x: float) -> float | None:
        return None if not np.isfinite(x) else round(float(x), 6)

    return {
        "mAP": num(rank.mean_ap),
        "rank1": num(rank.cmc[0]),
        "rank5": num(rank.cmc[4]),
        "rank10": num(rank.cmc[9]),
        "precision": num(precision),
        "f1": num(f1),
        "loc_err_m": num(float(np.mean(err))) if err.size else None,
        "queries": int(rank.valid_queries),
    }


def conditions(e: Embedded) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for value in sorted(set(e.lighting.tolist())):
        out[f"lighting:{value}"] = e.lighting == value
    for value in sorted(set(e.occlusion.tolist())):
        out[f"occlusion:{value}"] = e.occlusion == value
    out["camera:visible"] = e.visible.copy()
    out["camera:hidden"] = ~e.visible
    return {k: v for k, v in out.items() if v.any()}


def report(model: VRCLIP, e: Embedded) -> dict[str, Any]:
    dists = {v: cosine_distance(e.embedding[v], e.embedding[v]) for v in VARIANTS}
    everyone = np.ones(e.identity.size, bool)
    result: dict[str, Any] = {v: variant_metrics(model, e, v, everyone, dists[v]) for v in VARIANTS}
    result["by_condition"] = {
        name: {v: variant_metrics(model, e, v, mask, dists[v]) for v in VARIANTS}
        for name, mask in conditions(e).items()
    }
    return result


def _test_index(data: dict[str, Any], tracks: list[Track], frames: int, where: str) -> SampleIndex:
    try:
        segments = [Segment(**s) for s in data["segments"]]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: the checkpoint's training segments are malformed ({e!r})") from e
    present = {t.session.name for t in tracks}
    absent = [s.session for s in segments if s.session not in present]
    if absent:
        raise DatasetError(
            f"the checkpoint was trained on sessions this dataset lacks (first: {absent[0]}); "
            "evaluate on the "
            "dataset the model was trained on, or its test part would overlap the training data"
        )
    sessions = list({t.session.name: t.session for t in tracks}.values())
    replaced = other_recordings(data.get("session_ids"), session_ids(sessions))
    if replaced:
        raise DatasetError(
            f"this dataset holds other recordings under the session names the checkpoint was trained on "
            f"(first: {replaced[0]}; {len(replaced)} in all): another dataset, or one made again with "
            "other settings; its test part would be scored against another world's people. Evaluate "
            "on the dataset the model was trained on"
        )
    _, test = split_samples(tracks, segments, frames)
    return test


def evaluate(
    cfg: EvalConfig,
    prep_progress: Callable[[int, int, str], None] | None = None,
    embed_progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    torch.set_num_threads(max(1, cfg.threads))
    if cfg.stride < 1:
        raise DatasetError(f"--stride {cfg.stride}: must be >= 1")
    where = str(cfg.checkpoint)
    # The hash of the bytes this evaluation scores, not of whatever the path holds once it is done:
    # training replaces checkpoint.pt every epoch, and `onnx --threshold-from` trusts this hash.
    data, checkpoint_sha256 = load_checkpoint_with_digest(cfg.checkpoint)
    model = model_from_checkpoint(data, where)
    try:
        prep = PrepSpec.from_dict(data["prep"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the preprocessing spec is malformed ({e!r})") from e
    classes = {name: i for i, name in enumerate(data["classes"])}
    sessions = discover_sessions(cfg.dataset)
    cache = cfg.cache or Path(cfg.dataset) / ".vrclip-cache"
    tracks = load_tracks(sessions, prep, cache, cfg.jobs, prep_progress)
    rf_cfg = model.cfg.rf
    got = tracks[0].rf.shape[1:]
    if got != (rf_cfg.channels, rf_cfg.range_bins):
        raise CheckpointError(
            f"{where}: the model takes RF windows of {rf_cfg.channels} channels x "
            f"{rf_cfg.range_bins} bins but "
            f"{cfg.dataset} gives {got[0]} x {got[1]}; the checkpoint and the dataset's radar do not match"
        )
    if not set(classes) & {t.identity for t in tracks}:
        raise DatasetError(f"{cfg.dataset}: none of its identities is one the checkpoint was trained on")
    test = thin(_test_index(data, tracks, rf_cfg.frames, where), cfg.stride)
    e = embed(model, tracks, test, classes, cfg.batch_size, embed_progress)
    result = report(model, e)
    estimate = estimate_open_set(e.embedding["fused"], e.identity, e.session)
    # What `vrclip-export onnx --threshold-from` copies into the engine manifest.
    result["open_set"] = estimate.to_dict() if estimate is not None else None
    if cfg.fusion_analysis:
        from vrclip.export.fusion_analysis import fusion_analysis

        result["fusion_analysis"] = fusion_analysis(e)
    result["meta"] = {
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "dataset": str(cfg.dataset),
        "test_samples": len(test),
        "stride": cfg.stride,
        "identities": len(classes),
        "sessions": len(sessions),
        "mean_reliability": {k: round(float(np.mean(e.reliability[m])), 4) for k, m in conditions(e).items()},
    }
    if cfg.json_out is not None:
        out = Path(cfg.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
        log(f"wrote {out}")
    figures = cfg.figures or (Path(cfg.json_out).parent if cfg.json_out is not None else None)
    if figures is not None:
        from vrclip.export.plots import plot_confusion, plot_tsne

        names = list(data["classes"])
        known = e.label >= 0
        with torch.no_grad():
            pred = model.prototype_logits(torch.from_numpy(e.embedding["fused"][known])).argmax(1).numpy()
        matrix = confusion_matrix(e.label[known], pred, len(names))
        log(
            "wrote "
            + str(
                plot_confusion(
                    matrix, names, Path(figures) / "confusion-fused.png", "VRCLIP fused: confusion"
                )
            )
        )
        tsne = plot_tsne(
            e.embedding["fused"][known],
            e.label[known],
            names,
            Path(figures) / "tsne-fused.png",
            "VRCLIP fused embeddings (t-SNE)",
        )
        log(f"wrote {tsne}")
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of mAP / rank-1 per condition and variant (percent)."""
    rows = [("all", result), *sorted(result.get("by_condition", {}).items())]
    lines = [f"{'condition':18s} " + " ".join(f"{v + ' mAP':>11s} {v + ' R1':>10s}" for v in VARIANTS)]
    for name, r in rows:
        cells = []
        for v in VARIANTS:
            m = r[v]
            cells.append(f"{_pct(m['mAP']):>11s} {_pct(m['rank1']):>10s}")
        lines.append(f"{name:18s} " + " ".join(cells))
    open_set = result.get("open_set")
    if open_set:
        lines.append(
            f"open-set threshold {open_set['threshold']:.2f} (fused, {open_set['exemplars']} exemplars per "
            f"person): enrolled named right {_pct(open_set['identity_accuracy'])} %, strangers unknown "
            f"{_pct(open_set['unknown_accuracy'])} %"
        )
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


__all__ = ["VARIANTS", "EvalConfig", "embed", "evaluate", "format_table", "report", "thin"]
