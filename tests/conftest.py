"""Shared fixtures. Randomness comes from a fixed seed, never the clock;
set HASHSIEVE_SEED to sweep other seeds."""
import os

import numpy as np
import pytest

SEED = int(os.environ.get("HASHSIEVE_SEED", "20261121"))


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)
