"""Shared fixtures: RNG isolation and the small/large model switches."""

from __future__ import annotations

import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _restore_rng():
    """Each test starts from, and leaves behind, the same global RNG state."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        import torch
    except ImportError:  # torch-free test environments (runtime only)
        torch = None
    torch_state = torch.random.get_rng_state() if torch is not None else None
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
    if torch is not None:
        torch.random.set_rng_state(torch_state)
