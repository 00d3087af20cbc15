"""Enrolment: turn a stream of per-frame embeddings of one person into committed gallery exemplars.

Why a frame must show exactly one person: during enrolment the name belongs to "the person in front
of the sensors"; with two people in view the embedding could be either, and one wrong exemplar makes
the gallery match a stranger for months. Why small transactions: enrolment runs while the person
walks around for a minute; a crash (power cut, OOM kill) must lose at most the last few frames, not
the whole session, so every `commit_every` accepted embeddings are committed on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vrclip.edge.gallery.store import GalleryError, GalleryStore, normalise, validate_name


@dataclass(frozen=True)
class OfferResult:
    """What happened to one offered frame. `reason`: stored | pending | redundant | no person | N people."""

    accepted: bool
    reason: str


class Enroller:
    """Feeds one identity's exemplars into a store, one embedding per frame.

    `budget` caps the identity's exemplars (the store's redundancy policy picks what to replace);
    `commit_every` is how many accepted embeddings share one transaction (1 = commit each).
    """

    def __init__(
        self,
        store: GalleryStore,
        name: str,
        budget: int = 32,
        *,
        commit_every: int = 1,
        must_be_new: bool = False,
    ) -> None:
        if budget < 1:
            raise GalleryError(f"exemplar budget must be at least 1, got {budget}")
        if commit_every < 1:
            raise ValueError(f"commit_every must be at least 1, got {commit_every}")
        self.store = store
        self.name = validate_name(name)
        self.budget = int(budget)
        self.commit_every = int(commit_every)
        if must_be_new and store.has_identity(self.name):
            raise GalleryError(f"identity {name!r} is already enrolled in {store.path}; choose another name")
        self._pending: list[np.ndarray] = []
        self.offered = 0
        self.rejected = 0
        self.stored = 0
        self.redundant = 0
        self.commits = 0

    def offer(self, embedding: np.ndarray, people: int) -> OfferResult:
        """Offer the embedding of one frame in which the detector found `people` persons."""
        self.offered += 1
        if people != 1:
            self.rejected += 1
            return OfferResult(False, "no person" if people == 0 else f"{people} people")
        self._pending.append(normalise(embedding, self.store.dim)[0])
        if len(self._pending) < self.commit_every:
            return OfferResult(True, "pending")
        results = self.commit()
        stored = bool(results) and results[-1]
        return OfferResult(stored, "stored" if stored else "redundant")

    def commit(self) -> list[bool]:
        """Commit the pending embeddings in one transaction; returns which of them were stored."""
        if not self._pending:
            return []
        batch = np.stack(self._pending)
        results = self.store.add_exemplars(self.name, batch, budget=self.budget, source="enrol")
        self._pending.clear()
        self.commits += 1
        stored = [r.stored for r in results]
        self.stored += sum(stored)
        self.redundant += len(stored) - sum(stored)
        return stored

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self.commit()

    def __enter__(self) -> Enroller:
        return self

    def __exit__(self, *exc: object) -> None:
        # Accepted frames were valid whatever stopped the loop (Ctrl-C, a sensor error): keep them.
        self.close()
