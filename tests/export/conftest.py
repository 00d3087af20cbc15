"""A small synthetic dataset shared by the training/evaluation tests (made once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vrclip.edge.config import EdgeConfig


def make_small_dataset(
    out: Path,
    identities: int,
    sessions: int,
    seconds: float,
    width: int,
    height: int,
    seed: int = 42,
    base: EdgeConfig | None = None,
) -> Path:
    """The dataset generator at a test's size (seed = world seed: the same person in every session);
    `base`: the rig to record with (default: EdgeConfig's)."""
    from vrclip.edge.dataset import DatasetRequest, make_dataset

    request = DatasetRequest(
        out,
        identities,
        sessions,
        seconds,
        seed=seed,
        jobs=2,
        camera_width=width,
        camera_height=height,
        rate_hz=10.0,
    )
    make_dataset(request, base or EdgeConfig())
    return out


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 identities x 2 sessions x 2.5 s, 160 x 96 camera: enough for the split, fast to make."""
    return make_small_dataset(tmp_path_factory.mktemp("vrr") / "data", 3, 2, 2.5, 160, 96)
