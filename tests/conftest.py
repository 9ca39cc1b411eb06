"""Shared fixtures: a headless matplotlib backend, the external data folder and a seeded RNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """Return the folder of external validation data, skipping when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"external data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    """Return a freshly seeded random generator."""
    return np.random.default_rng(20240611)
