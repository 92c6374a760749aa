"""Shared fixtures: RNG isolation and the small/large model switches."""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import numpy as np
import pytest

#: `lfm_deploy.pretrain.WEIGHTS_ENV` and `CACHE_ENV` (spelled out: conftest imports no torch).
WEIGHTS_ENV = "LFM_DEPLOY_DEFAULT_WEIGHTS"
CACHE_ENV = "LFM_DEPLOY_CACHE"


def pytest_configure(config):
    """The suite runs on the seeded UNTRAINED default unless a test asks for the synthetic one.

    Most tests pin what the untrained weights do (fast to build, background everywhere); tests of
    the synthetic-data default opt in with the `synthetic_default` fixture. The cache of built
    default weights is one folder per session, never the user's: the real recipe is built at
    most once per session (`synthetic_learner`), and on a clean CI machine exactly once. The
    variables reach the CLI subprocesses the tests start too.
    """
    os.environ[WEIGHTS_ENV] = "untrained"
    os.environ[CACHE_ENV] = config._lfm_cache = tempfile.mkdtemp(prefix="lfm-deploy-test-cache-")


def pytest_unconfigure(config):
    """Remove the session's cache folder."""
    folder = getattr(config, "_lfm_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


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
SLOW_FIXTURES = {"exported", "trained_checkpoint", "trained_int8_export", "synthetic_learner"}


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

    Usage: `exported(shots=1)` -> ExportResult whose `out_dir` holds episode/encoder/head.onnx
    (`split=False`: episode.onnx only).
    Tests must not modify the returned directory (copy it first).
    """
    cache = {}

    def make(shots: int = 1, lowering: str = "matmul", triton: bool = False, split: bool = True):
        key = (shots, lowering, triton, split)
        if key not in cache:
            from lfm_deploy.export.pipeline import export_domain

            out = tmp_path_factory.mktemp("export") / f"deepglobe-{shots}shot-{lowering}"
            cache[key] = export_domain(
                "deepglobe", out=out, shots=shots, lowering=lowering, triton=triton, split=split,
                image_size=TEST_IMAGE_SIZE, progress=False,
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A checkpoint whose masks are mixed: the HSNet learner trained on synthetic episodes in
    float64 with a decaying rate (`lfm_deploy.parity.testing.make_trained_checkpoint`, ~75 s),
    informative on Intel and AMD alike; `tests/precision` checks its masks are informative on the
    machine at hand before trusting any verdict on it."""
    from lfm_deploy.parity.testing import make_trained_checkpoint

    base = tmp_path_factory.mktemp("trained")
    return make_trained_checkpoint(base / "trained.pt", train_size=TEST_IMAGE_SIZE, threads=2)["path"]


@pytest.fixture(scope="session")
def trained_int8_export(trained_checkpoint, tmp_path_factory):
    """`lfm-export --precision int8` (the real command, at 160 px) of `trained_checkpoint`, so
    mask checks on it measure something and its margins look like a trained model's. The export
    also keeps its validated float32 graphs (`manifest["reference_graphs"]`), which the other
    reduced-precision tests start from.

    The gate's verdict may differ between CPU families (int8 kernels round differently): the
    command either passes (exit 0, the export at `<out>`) or refuses cleanly (exit 1, the export
    kept in `<out>.failed`); anything else fails here. Tests read the verdict from the manifest.

    Returns (export directory, checkpoint path, the command's output). Tests must not modify the
    directory (copy it first).
    """
    from dataclasses import replace

    from click.testing import CliRunner

    from lfm_deploy.cli.export import main
    from lfm_deploy.domains import get_domain, register_domain

    out = tmp_path_factory.mktemp("int8-export") / "int8"
    # The CLI has no image-size option: the domain entry is overridden for this export only.
    original = get_domain("deepglobe")
    register_domain(replace(original, image_size=TEST_IMAGE_SIZE), overwrite=True)
    try:
        res = CliRunner().invoke(main, ["--domain", "deepglobe", "--checkpoint", str(trained_checkpoint), "--out",
                                        str(out), "--precision", "int8", "--gate-episodes", "3",
                                        "--calibration-episodes", "3", "--quiet"])
    finally:
        register_domain(original, overwrite=True)
    if res.exit_code == 1 and "beyond their accuracy gate" in res.output:
        assert not out.exists(), res.output
        return out.with_name("int8.failed"), trained_checkpoint, res.output
    assert res.exit_code == 0, res.output
    return out, trained_checkpoint, res.output


def reuse_exports(monkeypatch, source):
    """Make `export_domain` copy already-exported graphs from `source` instead of exporting them
    (for tests about what happens around the export: output folders, validation, precision)."""
    import shutil

    from lfm_deploy.export import pipeline

    def fake_export(module, example_inputs, path, inputs, outputs, **kwargs):
        shutil.copyfile(source / path.name, path)

    monkeypatch.setattr(pipeline, "export_onnx", fake_export)


@pytest.fixture
def synthetic_default(monkeypatch):
    """Commands without a checkpoint use the synthetic-data default in this test (the suite's
    default is the untrained one: `pytest_configure`)."""
    monkeypatch.setenv(WEIGHTS_ENV, "synthetic")


@pytest.fixture(scope="session")
def synthetic_learner():
    """The real synthetic-data default's learner file, built once per session in the session's
    cache folder (`lfm_deploy.pretrain.default_learner`; minutes on a 2-core CPU)."""
    from lfm_deploy.pretrain import default_learner

    return default_learner(progress=False)
