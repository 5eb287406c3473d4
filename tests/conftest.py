"""Shared fixtures. Randomness comes from a fixed seed, never the clock;
set HASHSIEVE_SEED to sweep other seeds."""
import os

import numpy as np
import pytest

from hashsieve import _core

SEED = int(os.environ.get("HASHSIEVE_SEED", "20261121"))


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


@pytest.fixture(params=_core.supported_isas())
def isa(request):
    """Each kernel this CPU can run, forced in turn."""
    before = _core.get_isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)
