"""Synthetic datasets shared by the data tests (small images: the readers' logic is size-free)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfm_deploy.data import make_synthetic_dataset
from lfm_deploy.domains import list_domains

#: Side of the synthetic images and of the model input in these tests.
IMAGE_SIZE = 32
MODEL_SIZE = 24


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A read-only dataset root holding every benchmark domain. Tests that modify files must
    make their own copy (`fresh_root`)."""
    root = tmp_path_factory.mktemp("cdfss")
    for name in list_domains():
        per_class = None if name == "fss1000" else 4  # FSS-1000 keeps its 10 images per class
        make_synthetic_dataset(name, root, size=IMAGE_SIZE, per_class=per_class)
    return root


@pytest.fixture
def fresh_root(tmp_path) -> Path:
    """An empty dataset root for tests that damage their data."""
    return tmp_path / "root"
