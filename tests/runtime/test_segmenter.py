"""Segmenter against the eager PyTorch model: masks, probabilities, sizes, every domain's preprocessing."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from PIL import Image

from lfm_deploy.domains import get_domain, list_domains
from lfm_deploy.manifest import MANIFEST_NAME
from lfm_deploy.preprocess import normalize_image, prepare_mask, resize_mask_nearest
from lfm_deploy.runtime import Segmenter

from . import linked_copy, synthetic_queries, synthetic_support

torch = pytest.importorskip("torch")
from lfm_deploy.models.hsnet import vote_masks  # noqa: E402

SIZE = 160  # tests/conftest.py TEST_IMAGE_SIZE
#: Share of pixels at model resolution where the runtime's mask must equal the eager model's.
MASK_AGREEMENT = 0.999
#: Max abs difference of foreground probabilities (logit parity is 1e-3 at export).
PROBA_ATOL = 1e-3

log = logging.getLogger(__name__)


#: The foreground-logit bias of the learner's last convolution, in the eager model and in head.onnx.
BIAS = "hpn_learner.decoder2.2.bias"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Eager runs alternate with onnxruntime runs here: idle OpenMP workers of torch spin-wait
    and starve onnxruntime's threads on a busy 2-core machine (5-10x slower tests measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def eager_model():
    from lfm_deploy.models import build_model

    # The same defaults (and seeded untrained weights) as the `exported` fixture's export.
    model, _ = build_model(apm="m", acpa=True, image_size=SIZE)
    return model.eval()


def _normalised(queries, supports, masks, mean, std):
    q = torch.from_numpy(np.stack([normalize_image(img, SIZE, mean, std) for img in queries]))
    s = torch.from_numpy(np.stack([normalize_image(img, SIZE, mean, std) for img in supports]))[None]
    m = torch.from_numpy(np.stack([prepare_mask(mask, SIZE).astype(np.float32) for mask in masks]))[None]
    b = q.shape[0]
    return q, s.expand(b, *s.shape[1:]), m.expand(b, *m.shape[1:])


@pytest.fixture(scope="module")
def balanced(exported, eager_model, tmp_path_factory):
    """(artifact dir, eager model) pairs whose decision boundary cuts through the pixels.

    The untrained weights put every foreground probability just below 0.5 (all-background
    masks, so mask parity would hold trivially). Shifting the learner's last foreground bias by
    minus the median logit margin of a calibration episode, identically in the eager model and
    in head.onnx (re-hashed into the manifest), gives masks with both classes. A constant bias
    before the align_corners bilinear upsampling is a constant after it, so nothing else changes.
    """
    import copy

    import onnx
    from onnx import numpy_helper

    from lfm_deploy.manifest import file_entry

    cache = {}

    def make(shots):
        if shots in cache:
            return cache[shots]
        supports, masks = synthetic_support(shots, SIZE + 37, seed=1)
        queries = synthetic_queries(1, SIZE + 37, seed=1)
        dom = get_domain("deepglobe")
        with torch.no_grad():
            logits = torch.stack(eager_model.shot_logits(*_normalised(queries, supports, masks, dom.mean, dom.std)), 1)
        margin = float(torch.median(logits[:, :, 1] - logits[:, :, 0]))
        model = copy.deepcopy(eager_model)
        bias = model.state_dict()[BIAS].numpy().copy()
        bias[1] -= np.float32(margin)
        with torch.no_grad():
            dict(model.named_parameters())[BIAS].copy_(torch.from_numpy(bias))

        src = exported(shots=shots).out_dir
        art = linked_copy(src, tmp_path_factory.mktemp("balanced") / f"{shots}shot", copy=("head.onnx",))
        graph = onnx.load(str(art / "head.onnx"))
        (init,) = [i for i in graph.graph.initializer if i.name.endswith(BIAS)]
        init.CopyFrom(numpy_helper.from_array(bias, init.name))
        onnx.save(graph, str(art / "head.onnx"))
        manifest = json.loads((art / MANIFEST_NAME).read_text())
        manifest["files"]["head.onnx"] = dataclasses.asdict(file_entry(art, "head.onnx"))
        (art / MANIFEST_NAME).write_text(json.dumps(manifest))
        cache[shots] = (art, model)
        return cache[shots]

    return make


def _check_parity(seg, model, queries, supports, masks, mean, std, label, nshot_api=False):
    seg.set_support(supports, masks)
    got = np.stack(seg.predict(queries, original_size=False))
    got_proba = np.stack(seg.predict_proba(queries, original_size=False))
    q, s, m = _normalised(queries, supports, masks, mean, std)
    with torch.no_grad():
        logits = model.shot_logits(q, s, m)
    votes = torch.stack([x.argmax(dim=1) for x in logits]).sum(dim=0)
    ref = vote_masks(votes, len(logits)).numpy().astype(np.uint8)
    if nshot_api:  # the public eager API gives the same masks (it runs the same code)
        np.testing.assert_array_equal(model.predict_mask_nshot(q, s, m).numpy(), ref)
    ref_proba = torch.softmax(torch.stack(logits, dim=1), dim=2)[:, :, 1].mean(dim=1).numpy()
    agreement = float((got == ref).mean())
    proba_err = float(np.abs(got_proba - ref_proba).max())
    log.info("%s: mask agreement %.4f%% (%d of %d pixels differ), foreground %.1f%%, max |proba diff| %.2e",
             label, 100 * agreement, int((got != ref).sum()), ref.size, 100 * ref.mean(), proba_err)
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
    assert 0.05 < ref.mean() < 0.95, f"{label}: degenerate reference mask ({ref.mean():.1%} foreground)"
    assert agreement >= MASK_AGREEMENT, f"{label}: only {agreement:.5%} of pixels agree with the eager model"
    assert proba_err <= PROBA_ATOL, f"{label}: probabilities differ by {proba_err:.2e}"
    return agreement


@pytest.mark.parametrize("shots, n_queries", [(1, 2), (5, 1)])
def test_matches_eager_model(balanced, shots, n_queries):
    art, model = balanced(shots)
    supports, masks = synthetic_support(shots, SIZE + 37)
    queries = synthetic_queries(n_queries, SIZE + 37)
    dom = get_domain("deepglobe")
    with Segmenter.from_artifacts(art, threads=2) as seg:
        assert seg.shots == shots and seg.image_size == SIZE and seg.domain == "deepglobe"
        _check_parity(seg, model, queries, supports, masks, dom.mean, dom.std, f"{shots}-shot", nshot_api=True)


@pytest.mark.parametrize("shots", [1, 5])
def test_predict_with_confidence_is_predict_and_mean_certainty(balanced, shots):
    """The masks are `predict`'s and the confidence is mean |2p - 1| over `predict_proba`'s S x S
    probabilities, from one head run."""
    art, _ = balanced(shots)
    supports, masks = synthetic_support(shots, SIZE + 37)
    queries = synthetic_queries(3, SIZE + 37)
    with Segmenter.from_artifacts(art, threads=2) as seg:
        seg.set_support(supports, masks)
        pairs = seg.predict_with_confidence(queries, batch_size=2)
        assert len(pairs) == 3
        for query, (mask, confidence) in zip(queries, pairs):
            np.testing.assert_array_equal(mask, seg.predict(query))
            p = seg.predict_proba(query, original_size=False)
            assert confidence == pytest.approx(float(np.abs(2.0 * p - 1.0).mean()), abs=1e-6)
            assert 0.0 <= confidence <= 1.0
        (single,) = seg.predict_with_confidence(queries[0])  # one image: still a list
        np.testing.assert_array_equal(single[0], pairs[0][0])


# Every registered domain's preprocessing, plus a non-ImageNet normalisation proving that the
# manifest's mean/std are the ones applied (all registered domains share ImageNet's).
_CUSTOM = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "color": "rgb"}


@pytest.mark.parametrize("domain", list_domains() + ["custom"])
def test_every_domain_preprocessing(balanced, tmp_path, domain):
    if domain == "custom":
        pre = {**get_domain("deepglobe").preprocessing(), **_CUSTOM}
    else:
        pre = get_domain(domain).preprocessing()
    pre["image_size"] = [SIZE, SIZE]

    def edit(manifest):
        manifest["domain"] = domain
        manifest["preprocessing"] = pre

    src, model = balanced(1)
    art = linked_copy(src, tmp_path / "art", edit)
    gray = pre["color"] == "grayscale"
    supports, masks = synthetic_support(1, SIZE + 37, grayscale=gray, seed=5)
    queries = synthetic_queries(1, SIZE + 37, grayscale=gray, seed=5)
    seg = Segmenter.from_artifacts(art, threads=2, verify=False)
    assert seg.domain == domain
    _check_parity(seg, model, queries, supports, masks, pre["mean"], pre["std"], domain)


def test_original_size_and_batching(exported):
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=2, batch_size=2)
    supports, masks = synthetic_support(1, 250)
    seg.set_support(supports[0], masks[0])  # a single pair is accepted for K = 1
    sizes = [(211, 150), (160, 160), (97, 301), (640, 480), (33, 40)]
    queries = [img.resize(wh, Image.BILINEAR) for img, wh in zip(synthetic_queries(5, 250), sizes)]

    masks_out = seg.predict(queries)  # batch_size 2: runs of 2, 2, 1
    assert isinstance(masks_out, list) and len(masks_out) == len(queries)
    for img, mask in zip(queries, masks_out):
        assert mask.shape == (img.height, img.width) and mask.dtype == np.uint8
        # Original size = the model-resolution mask resized with nearest, nothing else.
        small = seg.predict(img, original_size=False)
        assert small.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(mask, resize_mask_nearest(small, (img.height, img.width)))

    # Batched and one-at-a-time runs give the same masks.
    for batched, img in zip(seg.predict(queries, batch_size=8), queries):
        np.testing.assert_array_equal(batched, seg.predict(img))

    proba = seg.predict_proba(queries[0])
    assert proba.dtype == np.float32 and proba.shape == (150, 211)
    assert proba.min() >= 0 and proba.max() <= 1
    # K = 1: thresholding the probability reproduces the mask.
    np.testing.assert_array_equal((proba > 0.5).astype(np.uint8), masks_out[0])
    assert seg.predict([]) == []


def test_input_kinds_give_the_same_mask(exported, tmp_path):
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=2, verify=False)
    supports, masks = synthetic_support(1, 180)
    path_img, path_mask = tmp_path / "s.png", tmp_path / "s_mask.png"
    supports[0].save(path_img)
    masks[0].save(path_mask)
    seg.set_support([str(path_img)], [path_mask])
    query = synthetic_queries(1, 180)[0]
    query.save(tmp_path / "q.png")
    ref = seg.predict(query)
    np.testing.assert_array_equal(seg.predict(str(tmp_path / "q.png")), ref)
    np.testing.assert_array_equal(seg.predict(np.asarray(query)), ref)
    np.testing.assert_array_equal(seg.predict(np.asarray(query.convert("RGBA"))), ref)
    # {0, 1} and bool arrays as support masks are the same support set as the 0/255 file.
    binary = (np.asarray(masks[0]) >= 128)
    seg.set_support([path_img], [binary])
    np.testing.assert_array_equal(seg.predict(query), ref)
    seg.set_support([path_img], [binary.astype(np.uint8)])
    np.testing.assert_array_equal(seg.predict(query), ref)
    seg.set_support([path_img], [binary.astype(np.float32)])
    np.testing.assert_array_equal(seg.predict(query), ref)
    # Grayscale and palette queries are replicated / converted to RGB.
    gray = query.convert("L")
    assert seg.predict(gray).shape == (180, 180)
    assert seg.predict(np.asarray(gray)).shape == (180, 180)
    assert seg.predict(query.convert("P")).shape == (180, 180)


def test_encoder_released_and_recreated(exported):
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=2, verify=False)
    assert seg._encoder is not None and seg._head is None
    supports, masks = synthetic_support(1, SIZE)
    seg.set_support(supports, masks)
    assert seg._encoder is None and seg._head is not None  # the encoder is not kept for serving
    query = synthetic_queries(1, SIZE)[0]
    first = seg.predict(query)
    other_s, other_m = synthetic_support(1, SIZE, seed=11, class_index=2)
    seg.set_support(other_s, other_m)  # lazily re-created encoder
    seg.set_support(supports, masks)
    np.testing.assert_array_equal(seg.predict(query), first)
    assert seg.providers == ["CPUExecutionProvider"]
    assert "support=set" in repr(seg)

    kept = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=1, verify=False, release_encoder=False,
                                    low_memory=False, graph_optimization="basic")
    kept.set_support(supports, masks)
    assert kept._encoder is not None
    assert float((kept.predict(query) == first).mean()) >= MASK_AGREEMENT


class _BatchOneHead:
    """A head session that, like exports made before the dynamic-batch fix, fails on batches > 1."""

    def __init__(self, session):
        self.session = session
        self.calls = []

    def run(self, outputs, feed):
        self.calls.append(len(feed["query_img"]))
        if len(feed["query_img"]) > 1:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Reshape node: cannot reshape {3,2048,5,5} to {1,2048,25}")
        return self.session.run(outputs, feed)

    def get_providers(self):
        return self.session.get_providers()


def test_static_batch_graph_served_one_query_at_a_time(exported, caplog):
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=2, verify=False)
    seg.set_support(*synthetic_support(1, SIZE))
    queries = synthetic_queries(3, SIZE)
    expected = [seg.predict(q) for q in queries]
    seg._head = fake = _BatchOneHead(seg._head)
    with caplog.at_level(logging.WARNING, logger="lfm_deploy.runtime"):
        got = seg.predict(queries)
    assert "fails on batches of 3" in caplog.text
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert fake.calls == [3, 1, 1, 1]
    seg.predict(queries)
    assert fake.calls[4:] == [1, 1, 1]  # remembered: no more failing batched runs
