"""The open-set threshold a model suggests: estimated on its test split as the runtime matches, carried
from the evaluation report into the engine manifest, and taken by the runtime unless the site sets one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("onnxruntime")

from vrclip.edge.cli_support import make_app, run  # noqa: E402
from vrclip.edge.errors import UserError  # noqa: E402
from vrclip.edge.gallery.matcher import FALLBACK_THRESHOLD, resolve_threshold  # noqa: E402
from vrclip.edge.manifest import OpenSetThreshold, load_manifest, sha256_file  # noqa: E402
from vrclip.export.export_cli import register  # noqa: E402
from vrclip.export.openset import (  # noqa: E402
    estimate_open_set,
    open_set_from_report,
    open_set_sweep,
)

from tests.export.test_onnx_export import make_checkpoint  # noqa: E402


def people(n_ids: int = 4, sessions: int = 3, per_session: int = 20, spread: float = 0.3, seed: int = 0):
    """Embeddings scattered around one direction per person, with identity and session labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 16))
    emb, ident, sess = [], [], []
    for i in range(n_ids):
        for s in range(sessions):
            emb.append(centres[i] + spread * rng.normal(size=(per_session, 16)))
            ident += [i] * per_session
            sess += [i * sessions + s] * per_session
    return np.concatenate(emb), np.array(ident), np.array(sess)


def brute_force_scores(emb, ident, sess, exemplars):
    """The matcher's rule from its definition, one query at a time: best cosine per enrolled identity."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    gallery = {}
    for i in np.unique(ident):
        first = sess[ident == i].min()
        rows = np.flatnonzero((ident == i) & (sess == first))
        picks = sorted({round(float(x)) for x in np.linspace(0, len(rows) - 1, min(exemplars, len(rows)))})
        gallery[i] = (first, unit[rows[picks]])
    known, unknown = [], []
    for q in range(len(ident)):
        if sess[q] == gallery[ident[q]][0]:
            continue  # the enrolment session is not queried
        scores = {i: float(np.max(g @ unit[q])) for i, (_, g) in gallery.items()}
        best = max(scores, key=scores.get)
        known.append((scores[best], best == ident[q]))
        unknown.append(max(s for i, s in scores.items() if i != ident[q]))
    return known, unknown


def test_sweep_scores_each_query_as_the_matcher_would() -> None:
    emb, ident, sess = people(spread=1.2)  # overlapping people: some queries go to the wrong one
    sweep, identities, queries = open_set_sweep(emb, ident, sess, exemplars=7)
    known, unknown = brute_force_scores(emb, ident, sess, exemplars=7)
    assert identities == 4 and queries == len(known) == 4 * 2 * 20
    got_known = [(s, right) for s, right, enrolled in sweep.records if enrolled]
    got_unknown = [s for s, _, enrolled in sweep.records if not enrolled]
    np.testing.assert_allclose([s for s, _ in got_known], [s for s, _ in known], atol=1e-9)
    assert [r for _, r in got_known] == [r for _, r in known] and not all(r for _, r in known)
    np.testing.assert_allclose(got_unknown, unknown, atol=1e-9)


def test_well_separated_people_get_a_threshold_between_their_scores() -> None:
    emb, ident, sess = people(spread=0.05)
    est = estimate_open_set(emb, ident, sess)
    assert est is not None and est.identity_accuracy == 1.0 and est.unknown_accuracy == 1.0
    _, unknown = brute_force_scores(emb, ident, sess, 32)
    assert max(unknown) < est.threshold < 0.99
    # Overlapping people: the threshold trades one accuracy against the other, neither is perfect.
    loose = estimate_open_set(*people(spread=1.2))
    assert loose is not None and min(loose.identity_accuracy, loose.unknown_accuracy) < 1.0
    one_person = people(n_ids=1)
    assert estimate_open_set(*one_person) is None  # nobody to be a stranger to


def write_report(path: Path, checkpoint: Path | None, open_set: dict | None) -> Path:
    meta = {"checkpoint": str(checkpoint), "dataset": "/data/vrr"}
    if checkpoint is not None:
        meta["checkpoint_sha256"] = sha256_file(checkpoint)
    path.write_text(json.dumps({"fused": {}, "open_set": open_set, "meta": meta}))
    return path


OPEN_SET = {"threshold": 0.84, "identity_accuracy": 0.93, "unknown_accuracy": 0.94, "queries": 3695}


def test_the_threshold_travels_from_the_report_into_the_manifest(tmp_path: Path, monkeypatch, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "vrclip.pt")
    report = write_report(tmp_path / "eval.json", ckpt, OPEN_SET)
    app = make_app("vrclip-export", "test")
    register(app)
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(
        sys, "argv", ["vrclip-export", "onnx", str(ckpt), "--out", str(out), "--threshold-from", str(report)]
    )
    run(app)
    manifest = load_manifest(tmp_path / "m.json")
    assert manifest.open_set is not None and manifest.open_set.threshold == 0.84
    assert "eval.json" in manifest.open_set.source and "open-set threshold 0.84" in capsys.readouterr().out
    assert resolve_threshold(None, manifest) == (0.84, f"engine manifest, {manifest.open_set.source}")
    assert resolve_threshold(0.7, manifest) == (0.7, "gallery.threshold")  # the site's own wins
    bare = manifest.model_copy(update={"open_set": None})
    assert resolve_threshold(None, bare)[0] == FALLBACK_THRESHOLD


def test_a_report_of_another_model_or_without_an_estimate_is_refused(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "vrclip.pt")
    other = tmp_path / "other.pt"
    other.write_bytes(b"another model")
    (tmp_path / "junk.json").write_text("{not json")
    cases = {
        write_report(tmp_path / "a.json", other, OPEN_SET): "another checkpoint",
        write_report(tmp_path / "b.json", None, OPEN_SET): "does not say which checkpoint",
        write_report(tmp_path / "c.json", ckpt, None): "no open-set estimate",
        write_report(tmp_path / "d.json", ckpt, {**OPEN_SET, "threshold": 3.0}): "open_set is malformed",
        tmp_path / "junk.json": "not a JSON evaluation report",
        tmp_path / "missing.json": "cannot read it",
    }
    for report, message in cases.items():
        with pytest.raises(UserError, match=message) as info:
            open_set_from_report(report, ckpt)
        assert str(report) in str(info.value)
    with pytest.raises(UserError, match=r"gone\.pt: cannot read the checkpoint to match it against"):
        open_set_from_report(write_report(tmp_path / "f.json", ckpt, OPEN_SET), tmp_path / "gone.pt")
    assert open_set_from_report(write_report(tmp_path / "e.json", ckpt, OPEN_SET), ckpt) == OpenSetThreshold(
        threshold=0.84,
        identity_accuracy=0.93,
        unknown_accuracy=0.94,
        source="e.json: /data/vrr, 3695 queries",
    )
