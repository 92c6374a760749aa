"""Runners through Polygraphy's Comparator on the 160 px 1-shot export."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("polygraphy")
from polygraphy.backend.onnxrt import OnnxrtRunner  # noqa: E402
from polygraphy.comparator import Comparator  # noqa: E402
from polygraphy.logger import G_LOGGER  # noqa: E402

from lfm_deploy.errors import BackendUnavailable, LFMError  # noqa: E402
from lfm_deploy.parity.runners import (  # noqa: E402
    CUDA,
    EagerRunner,
    ModelFromManifest,
    SplitRunner,
)
from lfm_deploy.parity.episodes import parity_episodes  # noqa: E402
from lfm_deploy.runtime.backends import get_backend  # noqa: E402
from lfm_deploy.runtime.sessions import SessionFromOnnx  # noqa: E402
from ..conftest import TEST_IMAGE_SIZE  # noqa: E402


def simple(atol, rtol):
    """Polygraphy's simple compare function (SimpleCompareFunc since 0.53, CompareFunc.simple before)."""
    try:
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:
        from polygraphy.comparator import CompareFunc

        return CompareFunc.simple(atol=atol, rtol=rtol)
    return SimpleCompareFunc(atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def art(exported):
    return exported(1)


@pytest.fixture(scope="module")
def feeds(art):
    return parity_episodes(art.manifest, 2, seed=0)[0]


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # Polygraphy's rel. error of 0/0
def test_eager_and_onnxruntime_through_the_comparator(art, feeds):
    from lfm_deploy.models import build_model

    model, _ = build_model(image_size=TEST_IMAGE_SIZE)  # the defaults the export was made with
    eager = EagerRunner(model, "episode", shots=1, threads=2, name="eager")
    ort = OnnxrtRunner(SessionFromOnnx(art.out_dir / "episode.onnx", threads=2), name="ort")
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        results = Comparator.run([eager, ort], data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=simple(atol=1e-4, rtol=1e-3))
    assert bool(accuracy)
    out_e, out_o = results["eager"][1], results["ort"][1]
    assert set(out_e.keys()) == set(out_o.keys()) == {"logits", "mask"}
    assert out_e["logits"].shape == (1, 2, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE) and out_e["mask"].dtype == np.uint8
    assert np.abs(out_e["logits"] - out_o["logits"]).max() < 1e-4


def test_model_from_manifest_rebuilds_the_exported_model_in_float64(art, feeds):
    runner = EagerRunner(ModelFromManifest(art.manifest, dtype="float64"), "episode", shots=1, dtype="float64")
    with runner:
        meta = runner.get_input_metadata(use_numpy_dtypes=False)
        assert list(meta.keys()) == ["query_img", "support_imgs", "support_masks"]
        out = runner.infer(feeds[0])
    assert out["logits"].dtype == np.float64
    ort = SessionFromOnnx(art.out_dir / "episode.onnx", threads=2)()
    logits = ort.run(["logits"], feeds[0])[0]
    assert np.abs(out["logits"] - logits).max() < 1e-4


def test_eager_runner_leaves_the_callers_model_alone(art, feeds):
    from lfm_deploy.models import build_model

    model, _ = build_model(image_size=TEST_IMAGE_SIZE)
    with EagerRunner(model, "encoder", dtype="float64") as runner:
        out = runner.infer({"support_img": feeds[0]["support_imgs"][0], "support_mask": feeds[0]["support_masks"][0]})
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    assert list(out) == ["support_l2", "support_l3", "support_l4"]


def test_split_runner_encodes_the_support_set_once(art, feeds):
    d = art.out_dir
    split = SplitRunner(SessionFromOnnx(d / "encoder.onnx", threads=2), SessionFromOnnx(d / "head.onnx", threads=2),
                        art.manifest.graphs, art.manifest.shots)
    episode = SessionFromOnnx(d / "episode.onnx", threads=2)()
    feed = feeds[0]
    other_query = dict(feed, query_img=feeds[1]["query_img"])
    with split:
        first = split.infer(feed)
        second = split.infer(other_query)
        assert split.encoder_runs == 1
        split.infer(feeds[1])  # new support set
        assert split.encoder_runs == 2
        batch = {k: np.concatenate([feed[k], other_query[k]]) for k in feed}
        both = split.infer(batch)
        assert split.encoder_runs == 3 and both["logits"].shape[0] == 2
        mixed = {k: np.concatenate([feeds[0][k], feeds[1][k]]) for k in feed}
        with pytest.raises(LFMError, match="one support set"):
            split.infer(mixed)
    ref = episode.run(None, feed)
    np.testing.assert_allclose(first["logits"], ref[0], atol=1e-5)
    np.testing.assert_array_equal(first["mask"], ref[1])
    np.testing.assert_allclose(both["logits"][1:], second["logits"], atol=1e-5)


def test_cuda_session_is_refused_not_silently_cpu(art):
    why = get_backend("ort-cuda").unavailable()
    if why is None:
        pytest.skip("this onnxruntime has the CUDA EP")
    assert "onnxruntime-gpu" in why
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        SessionFromOnnx(art.out_dir / "episode.onnx", [CUDA, "CPUExecutionProvider"])()
    with pytest.raises(LFMError, match="not found"):
        SessionFromOnnx(art.out_dir / "nothing.onnx")()


@pytest.mark.needs_cuda
def test_cuda_runner_matches_cpu(art, feeds):
    why = get_backend("ort-cuda").unavailable()
    if why:
        pytest.skip(why)
    cpu = OnnxrtRunner(SessionFromOnnx(art.out_dir / "episode.onnx"), name="cpu")
    gpu = OnnxrtRunner(SessionFromOnnx(art.out_dir / "episode.onnx", [CUDA, "CPUExecutionProvider"]), name="cuda")
    results = Comparator.run([cpu, gpu], data_loader=feeds[:1])
    assert bool(Comparator.compare_accuracy(results, compare_func=simple(atol=1e-3, rtol=1e-3)))


def test_runner_argument_checks():
    with pytest.raises(LFMError, match="unknown graph"):
        EagerRunner(object(), "decoder")
    with pytest.raises(LFMError, match="dtype"):
        EagerRunner(object(), "episode", dtype="float16")
