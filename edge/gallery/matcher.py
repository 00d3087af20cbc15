"""Open-set matching of track embeddings against the gallery, from an in-memory normalised matrix.

Why in memory: a match runs for every track of every frame; one matrix product over a few thousand
exemplars costs microseconds, a database query per track would not. Why the reload check: the
gallery changes underneath the service (an operator renames someone, an enrolment finishes); the
matcher asks SQLite's `PRAGMA data_version` (a shared-memory read, no disk I/O) before each match
and reloads only when some connection committed, so edits show up at the next frame without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from vrclip.edge.gallery.store import UNKNOWN, GalleryError, GallerySnapshot, GalleryStore, normalise
from vrclip.edge.manifest import EngineManifest

#: Open-set threshold for an engine whose manifest carries none and a config that sets none.
FALLBACK_THRESHOLD = 0.75


def resolve_threshold(configured: float | None, manifest: EngineManifest | None) -> tuple[float, str]:
    """(threshold, where it came from): `gallery.threshold` if set, else the engine's, else the fallback.

    Why the engine's comes second and not first: a site that measured its own threshold (say with
    `vrclip-edge bench pipeline`) must keep it; one that did not gets the model's own estimate.
    """
    if configured is not None:
        return float(configured), "gallery.threshold"
    if manifest is not None and manifest.open_set is not None:
        source = manifest.open_set.source or "its evaluation"
        return float(manifest.open_set.threshold), f"engine manifest, {source}"
    return FALLBACK_THRESHOLD, "fallback: neither gallery.threshold nor the engine manifest sets one"


@dataclass(frozen=True)
class Match:
    """Result of matching one embedding.

    `identity` is the best identity if its score reaches the threshold, else "unknown"; `best` and
    `score` always describe the closest identity (None and -1.0 for an empty gallery) so an operator
    can see how near an unknown track came.
    """

    identity: str
    score: float
    best: str | None

    @property
    def known(self) -> bool:
        return self.identity != UNKNOWN


class Matcher:
    """Similarity of a track to an identity = max cosine over that identity's exemplars; open-set threshold.

    Give it a store of its own (one SQLite connection per thread): it reads, it never writes.
    """

    def __init__(
        self, store: GalleryStore, threshold: float, on_error: Callable[[str], None] | None = None
    ) -> None:
        """`on_error` hears, once, that the gallery became unreadable while matching (the last
        good copy in memory is used meanwhile); a gallery unreadable at the start raises."""
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} outside [-1, 1]")
        self.store = store
        self.threshold = float(threshold)
        self.on_error = on_error
        self.reloads = 0
        self.last_reload_s = 0.0
        self.read_failures = 0
        self._token: tuple[int, int] | None = None
        self._snapshot: GallerySnapshot
        self._reload(force=True)

    def _reload(self, force: bool = False) -> bool:
        token = self.store.change_token()
        if not force and token == self._token:
            return False
        started = time.perf_counter()
        self._snapshot = self.store.snapshot()
        self._token = token
        self.reloads += 1
        self.last_reload_s = time.perf_counter() - started
        return True

    def refresh(self) -> bool:
        """Reload if the gallery changed since the last load; True if it did. A gallery that cannot be
        read any more (damaged under the running service) keeps the last snapshot: the service goes
        on naming the people it knew instead of stopping."""
        try:
            return self._reload()
        except GalleryError as exc:
            self.read_failures += 1
            if self.read_failures == 1 and self.on_error is not None:
                self.on_error(f"{exc}; matching goes on against the gallery as it was last read")
            return False

    @property
    def names(self) -> tuple[str, ...]:
        return self._snapshot.names

    @property
    def exemplar_count(self) -> int:
        return int(self._snapshot.matrix.shape[0])

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) per-identity similarity (max cosine over each identity's exemplars) for N embeddings."""
        self.refresh()
        snap = self._snapshot
        queries = normalise(embeddings, snap.dim)
        if not snap.names:
            return np.zeros((queries.shape[0], 0), np.float32)
        sims = queries @ snap.matrix.T
        return np.maximum.reduceat(sims, snap.starts, axis=1)

    def match_batch(self, embeddings: np.ndarray) -> list[Match]:
        per_identity = self.scores(embeddings)
        names = self._snapshot.names
        if per_identity.shape[1] == 0:
            return [Match(UNKNOWN, -1.0, None) for _ in range(per_identity.shape[0])]
        best = per_identity.argmax(axis=1)
        results = []
        for row, col in enumerate(best):
            score = float(per_identity[row, col])
            name = names[int(col)]
            results.append(Match(name if score >= self.threshold else UNKNOWN, score, name))
        return results

    def match(self, embedding: np.ndarray) -> Match:
        """Match one (D,) embedding."""
        vector = np.asarray(embedding)
        if vector.ndim != 1:
            raise ValueError(f"match() takes one (D,) embedding, got shape {vector.shape}; use match_batch")
        return self.match_batch(vector[None, :])[0]
