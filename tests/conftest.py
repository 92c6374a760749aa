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


#: Fixtures that export or run the full model: a test using one belongs to the slow tier.
SLOW_FIXTURES = {"exported", "mixed_exported"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses an exporting fixture `slow`, so `-m "not slow"` stays quick."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


#: Image size of the exported test artifacts: small, and with odd layer4 maps (5x5) like 400's
#: 13x13 (even maps add Nyquist bins whose signed-zero phase is ill-conditioned in torch.fft).
TEST_IMAGE_SIZE = 160


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Factory for small (160 px) deepglobe exports, cached per (shots, lowering) for the session.

    Usage: `exported(shots=1)` -> ExportResult whose `out_dir` holds episode/encoder/head.onnx.
    Tests must not modify the returned directory (copy it first).
    """
    cache = {}

    def make(shots: int = 1, lowering: str = "matmul", triton: bool = False):
        key = (shots, lowering, triton)
        if key not in cache:
            from lfm_deploy.export.pipeline import export_domain

            out = tmp_path_factory.mktemp("export") / f"deepglobe-{shots}shot-{lowering}"
            cache[key] = export_domain(
                "deepglobe", out=out, shots=shots, lowering=lowering, triton=triton,
                image_size=TEST_IMAGE_SIZE, progress=False,
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def mixed_exported(tmp_path_factory):
    """A small (160 px) 1-shot deepglobe export of a checkpoint whose masks are mixed: the HSNet
    learner trained on synthetic episodes (`lfm_deploy.parity.testing.make_trained_checkpoint`,
    ~30 s), so mask checks on it measure something and its margins look like a trained model's.

    Returns (ExportResult, checkpoint path). Tests must not modify the directory (copy it first).
    """
    from lfm_deploy.export.pipeline import export_domain
    from lfm_deploy.parity.testing import make_trained_checkpoint

    base = tmp_path_factory.mktemp("mixed")
    checkpoint = make_trained_checkpoint(base / "trained.pt", train_size=TEST_IMAGE_SIZE, threads=2)["path"]
    result = export_domain("deepglobe", out=base / "export", checkpoint=checkpoint, image_size=TEST_IMAGE_SIZE,
                           progress=False)
    return result, checkpoint
