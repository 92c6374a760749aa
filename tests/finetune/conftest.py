"""Fixtures shared by the fine-tuning and evaluation tests."""

from __future__ import annotations

import pytest
import torch

from lfm_deploy.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP threads
    # spin against other processes; one thread keeps these tests fast and steady.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A small synthetic Deepglobe dataset (6 classes x 3 images, 48 px)."""
    root = tmp_path_factory.mktemp("deepglobe-data")
    make_synthetic_dataset("deepglobe", root, per_class=3, size=48)
    return root
