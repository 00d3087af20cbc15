"""Enrolment inside the running service: a new person is enrolled without stopping identification.

`vrclip-edge enroll` on its own opens the sensors, so on a box where the service runs it had to be
stopped first: identification went dark for the enrolment and the restart. Here the service's own
run loop does the enrolling. A request comes from the control socket's thread (`start`, then
`wait` until it is over); the run loop offers every frame's track embeddings (`offer`), with the same
rule as offline enrolment: only frames with exactly one person in view count. The store is the run
loop's own connection, so SQLite is used from one thread, and each accepted exemplar is committed
at once (a crash loses nothing accepted). The matcher reloads the gallery when it changes, so the
person is recognised from the next frame on.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from vrclip.edge.errors import UserError
from vrclip.edge.gallery.enrol import Enroller
from vrclip.edge.gallery.store import GalleryStore, validate_name

#: Longest enrolment one request may ask for (seconds).
MAX_ENROL_SECONDS = 600.0


class EnrolmentBusy(UserError):
    """Another enrolment is running: one person at a time, as in front of the rig."""


@dataclass(frozen=True)
class EnrolmentProgress:
    name: str
    seconds: float
    elapsed_s: float
    frames: int
    offered: int
    rejected: int
    stored: int
    redundant: int
    done: bool
    #: Why it ended early ("cancelled", a store error), None if it ran its time.
    error: str | None = None


@dataclass
class _Session:
    ticket: int
    progress: EnrolmentProgress
    started: float
    enroller: Enroller | None = None
    #: Its client was answered and let go (`cancel`): nobody will ask about it again.
    released: bool = False


class LiveEnrolment:
    """One enrolment at a time, shared by the control thread (start/wait/cancel) and the run loop
    (offer). `clock` is monotonic seconds."""

    def __init__(self, store: GalleryStore, budget: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.budget = budget
        self.clock = clock
        self._changed = threading.Condition()
        self._session: _Session | None = None
        self._tickets = 0
        self._stopped: str | None = None
        #: Sessions that ended and were replaced before their client read the end (a client slow to
        #: read, or between two waits): `wait` still answers for them until `cancel` releases them.
        self._ended: dict[int, _Session] = {}

    # ----------------------------------------------------------------- control thread
    def start(self, name: str, seconds: float) -> int:
        """Begin enrolling `name` for `seconds`; returns the ticket `wait` and `cancel` take."""
        name = validate_name(name)  # progress and refusals show the name as the gallery stores it
        if not (isinstance(seconds, int | float) and 1.0 <= float(seconds) <= MAX_ENROL_SECONDS):
            raise UserError(f"seconds {seconds!r}: enrol for 1 to {MAX_ENROL_SECONDS:g} seconds")
        with self._changed:
            if self._stopped is not None:
                raise UserError(f"no enrolment: {self._stopped}")
            self._expire()
            if self._session is not None and not self._session.progress.done:
                running = self._session.progress
                # From the clock: the progress's elapsed_s is only brought up to date when a session
                # ends, so a refusal read from it always said "0 of N s". Rounded up, so that trying
                # again after the time said does not meet the same refusal.
                left = math.ceil(max(0.0, self._remaining(self._session)))
                raise EnrolmentBusy(
                    f"{running.name!r} is being enrolled ({left} s of {running.seconds:g} s left); "
                    "one person at a time: try again when it is done"
                )
            if self._session is not None and not self._session.released:
                self._ended[self._session.ticket] = self._session
            self._tickets += 1
            progress = EnrolmentProgress(name, float(seconds), 0.0, 0, 0, 0, 0, 0, False)
            self._session = _Session(self._tickets, progress, self.clock())
            return self._tickets

    def wait(self, ticket: int, timeout_s: float) -> EnrolmentProgress:
        """The session's progress once it changed or `timeout_s` passed; done once its time is up."""
        with self._changed:
            session = self._own(ticket)
            if not session.progress.done:
                self._changed.wait(timeout=max(0.0, min(timeout_s, self._remaining(session))))
                self._expire()
            return replace(session.progress, elapsed_s=self._elapsed(session))

    def cancel(self, ticket: int) -> None:
        """End the session now (the client went away): what was accepted stays enrolled. A no-op once
        it is over (and when another session has begun since)."""
        with self._changed:
            self._ended.pop(ticket, None)
            session = self._session
            if session is None or session.ticket != ticket:
                return
            # Released, it is not kept in `_ended` when the next one begins (no entry per enrolment).
            session.released = True
            if not session.progress.done:
                self._finish(session, error="cancelled")

    def stop(self, reason: str) -> None:
        """The run is ending: end the running session with `reason` (its client hears it at once,
        with what was stored, rather than waiting out its time for frames that will not come) and
        refuse new ones."""
        with self._changed:
            self._stopped = reason
            session = self._session
            if session is not None and not session.progress.done:
                self._finish(session, error=reason)

    # ----------------------------------------------------------------------- run loop
    def offer(self, people: int, embeddings: list[np.ndarray]) -> None:
        """One frame's track embeddings with the number of people in view; a no-op with no session."""
        with self._changed:
            self._expire()
            session = self._session
            if session is None or session.progress.done:
                return
            try:
                if session.enroller is None:
                    session.enroller = Enroller(self.store, session.progress.name, self.budget)
                for embedding in embeddings:
                    session.enroller.offer(embedding, people)
            # This runs in the run loop: whatever the store or the embedding does wrong ends the
            # enrolment, never identification. GalleryError: a busy store, one the engine does not fit;
            # sqlite3.Error: a full disk, an I/O error mid-commit; ValueError: a zero or non-finite
            # embedding (a faulty engine).
            except (UserError, sqlite3.Error, ValueError) as exc:
                self._finish(session, error=str(exc) or type(exc).__name__)
                return
            enroller = session.enroller
            session.progress = replace(
                session.progress,
                frames=session.progress.frames + 1,
                offered=enroller.offered,
                rejected=enroller.rejected,
                stored=enroller.stored,
                redundant=enroller.redundant,
            )
            self._changed.notify_all()

    # ------------------------------------------------------------------------ helpers
    def _own(self, ticket: int) -> _Session:
        if self._session is not None and self._session.ticket == ticket:
            return self._session
        if ticket in self._ended:
            return self._ended[ticket]
        raise KeyError(f"enrolment {ticket} is not the current one")

    def _elapsed(self, session: _Session) -> float:
        return min(self.clock() - session.started, session.progress.seconds)

    def _remaining(self, session: _Session) -> float:
        return session.progress.seconds - (self.clock() - session.started)

    def _expire(self) -> None:
        session = self._session
        if session is not None and not session.progress.done and self._remaining(session) <= 0:
            self._finish(session, error=None)

    def _finish(self, session: _Session, error: str | None) -> None:
        # Nothing to commit: the Enroller commits each accepted exemplar as it comes (commit_every=1),
        # and only the run loop's thread may use the store's connection.
        session.enroller = None
        session.progress = replace(session.progress, done=True, error=error, elapsed_s=self._elapsed(session))
        self._changed.notify_all()


__all__ = ["MAX_ENROL_SECONDS", "EnrolmentBusy", "EnrolmentProgress", "LiveEnrolment"]
