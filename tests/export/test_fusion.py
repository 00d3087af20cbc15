"""The fusion mechanism end to end: a short training run in which each modality is blind part of the
time must give a fused embedding that beats vision-only and radio-only.

A run on recordings long enough to show it takes minutes (see the README's model row), too long for the
suite. Here the data are synthetic tracks built in memory in the trainer's own format (per-pair RF
windows, `rf_input="pairs"`): clothes colours identify people to the camera, except at night (dark, noisy
crops) and behind a wall (the crop shows the wall); a per-person echo signature identifies them to the
radio through noise and a per-session distortion, everywhere, but less reliably than a clear crop.
The run is 30 short epochs per stage at lr 3e-3 (few steps, so a higher rate than the recipe's); it is
deterministic on a CPU, and measured fused 0.69 / radio 0.67 / vision 0.35 mAP.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from vrclip.export.data import SessionInfo, Track, choose_segments, split_samples  # noqa: E402
from vrclip.export.evaluate import embed, report  # noqa: E402
from vrclip.export.train import TrainConfig, Trainer  # noqa: E402

PEOPLE = 4
FRAMES_PER_SESSION = 40
CONDITIONS = (("day", "none"), ("night", "none"), ("day", "wall"))
CHANNELS, BINS = 8, 8


def synthetic_tracks(seed: int = 0) -> list[Track]:
    rng = np.random.default_rng(seed)
    shirts = rng.integers(40, 255, size=(PEOPLE, 3))
    trousers = rng.integers(40, 255, size=(PEOPLE, 3))
    echo = rng.normal(size=(PEOPLE, CHANNELS, BINS)) + 1j * rng.normal(size=(PEOPLE, CHANNELS, BINS))
    tracks = []
    for person in range(PEOPLE):
        for s, (lighting, occlusion) in enumerate(CONDITIONS):
            n = FRAMES_PER_SESSION
            crops = np.full((n, 256, 128, 3), 170, np.uint8)
            crops[:, 40:140, 30:98] = shirts[person]
            crops[:, 140:240, 36:92] = trousers[person]
            visible = np.ones(n, bool)
            if occlusion == "wall":  # hidden for the second half of the session
                visible[n // 2 :] = False
                crops[n // 2 :] = 200
            img = crops.astype(np.float32)
            if lighting == "night":
                img = img * 0.04 + rng.normal(0, 25, img.shape)
            else:
                img = img + rng.normal(0, 3, img.shape)
            distortion = 1 + 0.3 * (
                rng.normal(size=(CHANNELS, BINS)) + 1j * rng.normal(size=(CHANNELS, BINS))
            )
            noise = rng.normal(size=(n, CHANNELS, BINS)) + 1j * rng.normal(size=(n, CHANNELS, BINS))
            rf = (echo[person] * distortion)[None] + 1.2 * noise
            position = np.stack([np.linspace(-1, 1, n), np.full(n, 3.0)], axis=1).astype(np.float32)
            session = SessionInfo(Path(f"p{person}-s{s}.h5"), f"p{person}/s{s}.h5", lighting, occlusion)
            tracks.append(
                Track(
                    session=session,
                    identity=f"person-{person}",
                    t_ns=np.arange(n, dtype=np.int64) * 100_000_000,
                    position=position,
                    anchor=position + rng.normal(0, 0.02, position.shape).astype(np.float32),
                    rgb_ok=np.ones(n, bool),
                    visible=visible,
                    crops=np.clip(img, 0, 255).astype(np.uint8),
                    rf=rf.astype(np.complex64),
                    array_xy=np.zeros(2, np.float32),
                )
            )
    return tracks


@pytest.mark.slow
def test_fused_beats_vision_only_and_radio_only(tmp_path: Path) -> None:
    started = time.perf_counter()
    cfg = TrainConfig(
        dataset=tmp_path, out=tmp_path / "run", preset="micro", epochs=30, lr=3e-3, batch_size=16,
        segment_seconds=2.5, frames=4, rf_input="pairs", range_bins=BINS, threads=2, jobs=1,
        channel_dropout=0.2,  # the per-pair recipe: with 0 (the beams default) fused 0.743, radio 0.746
        # Stage 3's gate pull at the beams default (10) leaves this micro run's weak vision (0.35 mAP)
        # only 0.4 points of fusion gain (fused 0.734, radio 0.730); at 1 it is 1.9 (0.754, 0.735).
        align_weight=1.0,
    )  # fmt: skip
    trainer = Trainer(cfg, log=lambda _: None)
    trainer.tracks = synthetic_tracks()
    trainer.prep = cfg.prep_spec()
    trainer.classes = sorted({t.identity for t in trainer.tracks})
    trainer.class_index = {c: i for i, c in enumerate(trainer.classes)}
    trainer.segments = choose_segments(trainer.tracks, cfg.segment_seconds, cfg.frames, cfg.seed)
    trainer.train_index, trainer.test_index = split_samples(trainer.tracks, trainer.segments, cfg.frames)
    final = trainer.run()
    from vrclip.export.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(final), str(final))
    result = report(model, embed(model, trainer.tracks, trainer.test_index, trainer.class_index))
    fused, vision, radio = (result[v]["mAP"] for v in ("fused", "vision", "radio"))
    elapsed = time.perf_counter() - started
    print(f"fused {fused:.3f} vision {vision:.3f} radio {radio:.3f} in {elapsed:.1f} s")
    assert fused > vision and fused > radio
    # Where the camera is blind, fusion must not follow it down.
    hidden = result["by_condition"]["camera:hidden"]
    assert hidden["fused"]["mAP"] > hidden["vision"]["mAP"]
