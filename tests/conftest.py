"""Shared fixtures: the default config and geometry are cheap to build but used everywhere."""

from __future__ import annotations

import pytest
from vrclip.edge.config import EdgeConfig
from vrclip.edge.geometry import ArrayGeometry, load_geometry


@pytest.fixture(scope="session")
def default_config() -> EdgeConfig:
    return EdgeConfig()


@pytest.fixture(scope="session")
def geometry(default_config: EdgeConfig) -> ArrayGeometry:
    return load_geometry(default_config.radar.array)
