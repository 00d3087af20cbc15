"""Enrol an identity from a feed: run the pipeline, keep one embedding per frame with exactly one person."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from vrclip.edge.config import EdgeConfig
from vrclip.edge.gallery.enrol import Enroller
from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.inference.base import InferenceBackend
from vrclip.edge.manifest import EngineManifest
from vrclip.edge.pipeline.app import Feed, health_for, make_identifier, open_backend, simulated_feed
from vrclip.edge.pipeline.identify import Identifier, TrackResult
from vrclip.edge.pipeline.runner import EdgeRunner
from vrclip.edge.pipeline.sync import SyncedFrame
from vrclip.edge.sim.scene import SceneSpec

#: How long the ZED's last person count vouches for a radar frame during enrolment.
ZED_COUNT_VALID_NS = 500_000_000

log = logging.getLogger(__name__)


class PeopleInView:
    """How many people a frame shows, for the one-person rule of enrolment: radar tracks or the ZED's
    body count, whichever sees more. The radar can miss a second, farther person for a few frames;
    the ZED misses people hidden from it. The ZED runs slower than the radar, so its latest count
    stays valid for ZED_COUNT_VALID_NS."""

    def __init__(self, identifier: Identifier) -> None:
        self.identifier = identifier
        self._zed_t_ns: int | None = None
        self._zed_count = 0

    def count(self, synced: SyncedFrame) -> int:
        if synced.depth is not None:
            self._zed_t_ns, self._zed_count = synced.depth.t_ns, len(synced.depth.positions)
        recent = self._zed_t_ns is not None and abs(synced.radar.t_ns - self._zed_t_ns) <= ZED_COUNT_VALID_NS
        return max(len(self.identifier.tracker.confirmed()), self._zed_count if recent else 0)


@dataclass(frozen=True)
class EnrolmentReport:
    name: str
    frames: int
    offered: int
    rejected: int
    stored: int
    redundant: int
    #: Frames written per stream when the enrolment was recorded (`record`), else None.
    recorded: dict[str, int] | None = None


def enrol_from_feed(
    feed: Feed,
    backend: InferenceBackend,
    store: GalleryStore,
    name: str,
    seconds: float,
    *,
    budget: int = 32,
    stop: threading.Event | None = None,
    record: Path | None = None,
) -> EnrolmentReport:
    """Run `feed` for `seconds` and offer each frame's embedding; frames without exactly one track are
    rejected. Commits as it goes, so an interrupted enrolment keeps what it had accepted.

    `record`: also write the frames the enrolment saw to this new recording, as `run --record`
    does. A gallery holds one model's embeddings; with the recording, the person can be enrolled
    again with a retrained engine (`enroll NAME --replay FILE`) without coming back."""
    from vrclip.edge.pipeline.recorder import FrameRecorder

    bind_gallery(store, backend)
    health = health_for(feed)
    recorder = None
    if record is not None:
        # A margin over `seconds`: the run loop may take a frame or two past its duration.
        recorder = FrameRecorder(
            feed,
            record,
            seconds + 5.0,
            health,
            identities=(name,),
            warn=log.warning,
            source="vrclip-edge enroll",
        )
    identifier = make_identifier(feed, backend, count=health.count)
    enroller = Enroller(store, name, budget)
    people_in_view = PeopleInView(identifier)

    def offer(synced: SyncedFrame, results: list[TrackResult]) -> None:
        people = people_in_view.count(synced)
        for result in results:
            enroller.offer(result.embedding, people)

    runner = EdgeRunner(
        identifier,
        feed.sources,
        health,
        slop_ns=_slop(feed),
        on_frame=recorder.offer if recorder is not None else None,
        on_results=offer,
        lossless=feed.lossless,
    )
    try:
        with enroller:
            summary = runner.run(stop or threading.Event(), duration_s=seconds)
    finally:
        recorded = recorder.close() if recorder is not None else None
        identifier.close()
    return EnrolmentReport(
        name,
        summary.frames,
        enroller.offered,
        enroller.rejected,
        enroller.stored,
        enroller.redundant,
        recorded,
    )


def manifest_embedding_dim(manifest: EngineManifest) -> int:
    """Length of an engine's embedding output (named "embedding", else the first output), from its
    manifest: what a gallery enrolled with that engine holds."""
    outputs = manifest.outputs
    spec = next((o for o in outputs if o.name == "embedding"), outputs[0])
    return int(spec.sample_shape[0])


def embedding_dim(backend: InferenceBackend) -> int:
    """Length of the running engine's embedding output (`manifest_embedding_dim`)."""
    return manifest_embedding_dim(backend.manifest)


def bind_gallery(store: GalleryStore, backend: InferenceBackend) -> str | None:
    """Check that `store` holds embeddings of `backend`'s model, and tie a new gallery to it: the
    embedding length, and the model itself where the manifest names it (`embedding_space`).

    Returns (and logs) a warning when this tied a gallery whose people were enrolled before
    galleries recorded their model: nothing can tell which model that was, so this engine's is
    taken, and a retrained engine would then match them wrongly without a word."""
    store.ensure_dim(embedding_dim(backend))
    space = backend.manifest.embedding_space
    held = store.ensure_embedding_space(space, str(backend.source))
    if not held:
        return None
    message = (
        f"gallery {store.path} holds {held} exemplars enrolled before galleries recorded their model; "
        f"it is now tied to the model of {backend.source} ({space[:12]}). If they were enrolled with "
        "another model (a retrained engine), enrol them again"
    )
    log.warning("%s", message)
    return message


def _slop(feed: Feed) -> int:
    return int(feed.config.sync.slop_ms * 1e6)


def enroll_simulated_people(
    config: EdgeConfig,
    engine: str | None,
    names: tuple[str, ...],
    seconds: float,
    world_seed: int,
    *,
    seed_base: int = 1000,
    scpi: bool = False,
    sweep_time_ms: float | None = None,
) -> list[EnrolmentReport]:
    """Enrol each simulated person alone in the room (as on site: one person walks in front of the rig),
    into config.gallery.path; session i uses seed `seed_base + i`. `scpi` picks the radar transport:
    enrol over the one the run will use, as on site, so gallery and queries see the same frame rate
    (the RF encoder reads walking speed from frame-to-frame steps)."""
    reports = []
    with GalleryStore(config.gallery.path) as store:
        for i, name in enumerate(names):
            spec = SceneSpec(room=config.room, people=(name,), seed=seed_base + i, world_seed=world_seed)
            feed = simulated_feed(config, spec, scpi=scpi, sweep_time_ms=sweep_time_ms)
            backend = open_backend(config, engine)
            try:
                budget = config.gallery.exemplar_budget
                reports.append(enrol_from_feed(feed, backend, store, name, seconds, budget=budget))
            finally:
                backend.close()
                feed.close()
    return reports
