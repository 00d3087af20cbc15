"""From one synchronised frame to identity events: image, detect, track, build model inputs, infer, match.

Everything the model needs is derived from the engine manifest (crop size, RF window, input names),
so a new engine package reconfigures the runtime without code changes. Embeddings are averaged per
track (normalised running mean) before matching: one frame can be dark or occluded, a track's
history rarely is all of the time.

A track's history ends at a gap (a radar outage or a forward clock step, see `pipeline.tracker`): the
tracker keeps the id of whoever it finds near the track afterwards, but its RF window would feed the
engine frames seconds apart as if consecutive, and its embedding mean and name may be another
person's. So the track starts afresh, as a new one does: no result and no identity event until its
RF window holds T frames from after the gap, and then an event at once with the name those frames
give (even if it is the same name as before).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from vrclip.edge.config import EdgeConfig
from vrclip.edge.crops import CropSpec, crop_person
from vrclip.edge.events.event import IdentityEvent, LiveModalities
from vrclip.edge.gallery.matcher import Match
from vrclip.edge.geometry import ArrayGeometry
from vrclip.edge.imaging.calibration import ChannelCalibration
from vrclip.edge.imaging.clutter import ClutterFilter
from vrclip.edge.imaging.pipeline import ImagingPipeline
from vrclip.edge.inference.base import EngineMismatchError, InferenceBackend
from vrclip.edge.manifest import EngineManifest, TensorSpec
from vrclip.edge.pipeline.ratecheck import RadarRateCheck, training_frame_rate
from vrclip.edge.pipeline.sync import SyncedFrame
from vrclip.edge.pipeline.tracker import Track, Tracker
from vrclip.edge.rfwindow import RFSequence, RFWindowExtractor, RFWindowSpec
from vrclip.edge.sim.camera import PinholeCamera

UNKNOWN = "unknown"


@dataclass
class TrackState:
    """What the runtime remembers per track between frames (bounded: T windows, a few positions)."""

    rf: RFSequence
    positions: deque = field(default_factory=lambda: deque(maxlen=64))
    embedding_sum: np.ndarray | None = None
    last_event_ns: int = 0
    last_identity: str | None = None
    samples: int = 0
    #: The track's gap count (Track.gaps) this history began at: when it changes the history ends.
    gaps: int = 0


@dataclass(frozen=True)
class TrackResult:
    """One track's inference outcome in one frame (for enrolment and for events)."""

    track_id: int
    embedding: np.ndarray
    smoothed: np.ndarray
    position: tuple[float, float]
    reliability: float
    camera_live: bool


class ModelFeeds:
    """Builds the engine's input tensors from tracks, as the manifest says the model was trained."""

    def __init__(self, manifest: EngineManifest) -> None:
        pre = manifest.preprocessing
        if pre.rgb is None or pre.rf is None:
            raise ValueError(f"engine {manifest.model_name!r}: the manifest lacks RGB or RF preprocessing")
        self.rgb = pre.rgb
        self.rf = pre.rf
        self.window = (
            RFWindowSpec.from_dict(pre.rf.window)
            if pre.rf.window
            else RFWindowSpec(
                frames=pre.rf.frames, range_bins=pre.rf.range_bins, pad_factor=pre.rf.zero_pad_factor
            )
        )
        self.crop = CropSpec(height=pre.rgb.height, width=pre.rgb.width)
        specs = {spec.name: spec for spec in manifest.inputs}
        self.anchor: TensorSpec | None = specs.get("anchor")
        self.present: TensorSpec | None = specs.get("present")

    def build(
        self, crops: np.ndarray, rf: np.ndarray, anchors: np.ndarray, camera_live: np.ndarray
    ) -> dict[str, np.ndarray]:
        feeds = {self.rgb.input: self.rgb.to_input(crops), self.rf.input: rf.astype(np.float32)}
        if self.anchor is not None:
            shape = self.anchor.sample_shape
            feeds["anchor"] = np.ascontiguousarray(
                anchors[:, -shape[0] :, :] if len(shape) == 2 and anchors.ndim == 3 else anchors[:, -1, :]
            ).astype(np.float32)
        if self.present is not None:
            present = np.stack([camera_live.astype(np.float32), np.ones(len(rf), np.float32)], axis=1)
            feeds["present"] = present
        return feeds


class Identifier:
    """The per-frame core of `vrclip-edge run`, free of threads so tests and benches drive it directly."""

    def __init__(
        self,
        config: EdgeConfig,
        geometry: ArrayGeometry,
        freqs_hz: np.ndarray,
        backend: InferenceBackend,
        *,
        calibration: ChannelCalibration | None = None,
        camera: PinholeCamera | None = None,
        match: Callable[[np.ndarray], list[Match]] | None = None,
        event_interval_s: float = 1.0,
        warn: Callable[[str], None] | None = None,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config = config
        self.warn = warn
        #: Where recoverable per-frame faults are counted (Health.count in a run): they must show up
        #: in /status and /metrics, not only on a console nobody watches.
        self.count = count
        self._warned: set[str] = set()
        self.rate_check = RadarRateCheck(training_frame_rate(backend.manifest))
        self.backend = backend
        self.feeds = ModelFeeds(backend.manifest)
        self.imaging = ImagingPipeline(config, geometry, calibration)
        self.tracker = Tracker(frame_period_s=1.0 / config.radar.frame_rate_hz)
        self.extractor = RFWindowExtractor(self.feeds.window, geometry, freqs_hz, calibration)
        #: Engines read and write floor positions centred on the array (what they were trained on).
        self._array_centre = self.extractor.array_xy.astype(np.float32)
        if self.extractor.n_channels != self.feeds.rf.channels:
            raise EngineMismatchError(
                f"engine {backend.manifest.model_name!r} takes {self.feeds.rf.channels} RF channels but its "
                f"window spec on this array ({geometry.n_channels} Tx/Rx pairs) gives "
                f"{self.extractor.n_channels}: the engine was trained for another array or window; "
                "retrain or export it for this rig"
            )
        # The runtime cannot know a session's mean in advance: a running mean is its online equivalent.
        self._rf_clutter = ClutterFilter("mean", self.feeds.window.background_alpha)
        self.camera = camera
        self.match = match
        self.event_interval_ns = int(event_interval_s * 1e9)
        self.tracks: dict[int, TrackState] = {}

    def step(self, synced: SyncedFrame) -> tuple[list[TrackResult], list[IdentityEvent]]:
        radar = synced.radar
        note = self.rate_check.observe(radar.t_ns)
        if note is not None and self.warn is not None:
            self.warn(note)
        result = self.imaging.process(radar.s21)
        detections = np.array([[d.x_m, d.y_m] for d in result.detections], np.float64).reshape(-1, 2)
        self.tracker.update(detections, radar.t_ns)
        profiles = self.extractor.profiles(self._rf_clutter(self.extractor.calibrate(radar.s21)))
        live = {t.track_id for t in self.tracker.tracks}
        for stale in set(self.tracks) - live:
            del self.tracks[stale]
        ready: list[Track] = []
        for track in self.tracker.tracks:
            if track.misses > self.tracker.coast_frames:
                continue
            state = self.tracks.get(track.track_id)
            if state is None or state.gaps != track.gaps:
                # A new track, or one that came through a gap: its history starts here (module doc).
                state = self.tracks[track.track_id] = self._new_state(track)
            state.rf.push(self.extractor.gate(profiles, track.position))
            state.positions.append(track.position.copy())
            if state.rf.ready and track.hits >= self.tracker.confirm_hits:
                ready.append(track)
        results = self._infer(ready, synced)
        events = self._events(results, synced) if self.match is not None else []
        return results, events

    def _new_state(self, track: Track) -> TrackState:
        return TrackState(RFSequence(self.feeds.window.frames), gaps=track.gaps)

    def _crop(self, synced: SyncedFrame, position: np.ndarray) -> tuple[np.ndarray, bool]:
        if synced.camera is None or self.camera is None:
            return self._no_crop(), False
        try:
            return crop_person(synced.camera.rgb, self.camera, position, self.crop_spec)
        except ValueError as exc:
            # A frame the camera model cannot crop (another size than camera.width/height, a wrong
            # pixel format) is a camera fault: this step goes on as if the camera were not live.
            self._fault("camera_crop_errors", f"camera frame unusable, identifying without it: {exc}")
            return self._no_crop(), False

    def _no_crop(self) -> np.ndarray:
        """The black crop fed with `present` rgb = 0 (allocated only when a crop is missing)."""
        return np.zeros((self.crop_spec.height, self.crop_spec.width, 3), np.uint8)

    def _fault(self, counter: str, message: str) -> None:
        """Count a recoverable fault; warn once per kind (a fault that repeats every frame must not
        flood the console; the counter shows how often it happens)."""
        if self.count is not None:
            self.count(counter, 1)
        if self.warn is not None and counter not in self._warned:
            self._warned.add(counter)
            self.warn(f"{message} (counted as {counter} in the health status)")

    @property
    def crop_spec(self) -> CropSpec:
        return self.feeds.crop

    def _infer(self, ready: list[Track], synced: SyncedFrame) -> list[TrackResult]:
        if not ready:
            return []
        crops, live, rf, anchors = [], [], [], []
        frames = self.feeds.window.frames
        for track in ready:
            crop, ok = self._crop(synced, track.position)
            crops.append(crop)
            live.append(ok)
            state = self.tracks[track.track_id]
            rf.append(state.rf.sample())
            history = list(state.positions)[-frames:]
            history = [history[0]] * (frames - len(history)) + history
            anchors.append(np.asarray(history))
        centre = self._array_centre
        feeds = self.feeds.build(np.stack(crops), np.stack(rf), np.stack(anchors) - centre, np.asarray(live))
        out = self.backend.infer(feeds)
        embeddings = np.asarray(out["embedding"], np.float32).reshape(len(ready), -1)
        positions = np.asarray(out["position"], np.float32).reshape(len(ready), -1) + centre
        reliability = np.asarray(out["reliability"], np.float32).reshape(len(ready), -1)[:, 0]
        # One NaN (an FP16 overflow, a faulty engine) would poison the track's running mean for
        # good and make the gallery refuse the match: such a result is dropped, never accumulated.
        finite = (
            np.isfinite(embeddings).all(axis=1)
            & np.isfinite(positions[:, :2]).all(axis=1)
            & np.isfinite(reliability)
        )
        results = []
        for i, track in enumerate(ready):
            if not finite[i]:
                self._fault(
                    "nonfinite_outputs",
                    f"engine {self.backend.manifest.model_name!r} returned NaN or infinity for track "
                    f"{track.track_id}; that result is dropped",
                )
                continue
            state = self.tracks[track.track_id]
            e = embeddings[i] / max(float(np.linalg.norm(embeddings[i].astype(np.float64))), 1e-12)
            state.embedding_sum = e if state.embedding_sum is None else state.embedding_sum + e
            state.samples += 1
            smoothed = state.embedding_sum / max(float(np.linalg.norm(state.embedding_sum)), 1e-12)
            results.append(
                TrackResult(
                    track.track_id, e, smoothed, (float(positions[i, 0]), float(positions[i, 1])),
                    float(reliability[i]), bool(live[i]),
                )
            )  # fmt: skip
        return results

    def _events(self, results: list[TrackResult], synced: SyncedFrame) -> list[IdentityEvent]:
        if not results:
            return []
        assert self.match is not None
        matches = self.match(np.stack([r.smoothed for r in results]))
        events = []
        now_ns = synced.radar.t_ns
        for result, match in zip(results, matches, strict=True):
            state = self.tracks[result.track_id]
            changed = match.identity != state.last_identity
            if not changed and 0 <= now_ns - state.last_event_ns < self.event_interval_ns:
                # A negative gap is the clock stepped back (NTP): the interval counts from now on,
                # rather than silencing the track until the clock has caught up with its last event.
                continue
            state.last_identity = match.identity
            state.last_event_ns = now_ns
            events.append(
                IdentityEvent(
                    t_ns=now_ns,
                    track_id=result.track_id,
                    identity=match.identity,
                    score=float(match.score),
                    position_m=result.position,
                    reliability=result.reliability,
                    modalities=LiveModalities(True, result.camera_live, synced.depth is not None),
                    clock=synced.radar.clock,
                )
            )
        return events

    def close(self) -> None:
        self.imaging.close()
