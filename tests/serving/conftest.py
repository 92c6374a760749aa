"""A real local Ray cluster shared by the Ray tests, shut down at the end even on failure."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")


@pytest.fixture(scope="session")
def ray_cluster():
    """`ray.init` with this machine's CPUs; yields the GCS address (for `--address` tests)."""
    if ray.is_initialized():  # pragma: no cover - a leftover from an aborted test
        ray.shutdown()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # Serve never started, or already down
            pass
        ray.shutdown()


@pytest.fixture(scope="session")
def support_files(tmp_path_factory):
    """One synthetic support pair on disk: (image path, mask path)."""
    from tests.runtime import synthetic_support

    root = tmp_path_factory.mktemp("ray-support")
    images, masks = synthetic_support(1, 120)
    images[0].save(root / "s0.jpg", quality=95)
    masks[0].save(root / "s0_mask.png")
    return str(root / "s0.jpg"), str(root / "s0_mask.png")


@pytest.fixture(scope="session")
def reference(exported, support_files):
    """The local runtime's Segmenter on the same artifacts and support (the masks to match)."""
    from lfm_deploy.runtime import Segmenter

    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=2)
    seg.set_support([support_files[0]], [support_files[1]])
    return seg
