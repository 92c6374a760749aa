"""The memory model and the head batch a memory budget chooses (real onnxruntime sessions, 160 px)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from lfm_deploy.errors import InputError
from lfm_deploy.manifest import read_manifest
from lfm_deploy.runtime import Segmenter
from lfm_deploy.runtime.memory import DEFAULT_BUDGET, GB, MODELS, model_for

from . import synthetic_queries, synthetic_support

SIZE = 160  # tests/conftest.py TEST_IMAGE_SIZE


def test_model_and_its_inverse():
    ort = model_for("onnxruntime", "per-feature")
    # 400 px, onnxruntime, per-feature correlation: 8 queries in one head run measured 1.41 GB on
    # an AMD EPYC but 1.61 GB on an Intel Xeon; split into head runs of 7, the batch still held
    # 1.52 GB there (the encoder's features of all 8 stay), so the default budget runs runs of 6
    # (measured 1.36 GB on the Intel Xeon).
    assert ort.peak(400, 6) <= DEFAULT_BUDGET < ort.peak(400, 7) and ort.head_batch(400, DEFAULT_BUDGET) == 6
    assert ort.peak(400, 8) >= 1.61 * GB and ort.peak(400, 1) >= 0.41 * GB  # at or above every measured peak
    # exports that do not say how their head correlates are taken as the stacked, larger one
    assert model_for("onnxruntime", None) == model_for("onnxruntime", "stacked")
    assert model_for("onnxruntime", None).head_batch(400, 1.5 * GB) == 3
    assert model_for("OpenVINO", "per-feature") == MODELS["openvino", "per-feature"]
    assert model_for("openvino", "per-feature").head_batch(400, 1.5 * GB) == 2
    assert model_for("tensorrt", "per-feature") == ort  # other runtimes: onnxruntime's
    # size^4: 160 px queries cost (160/400)^4 of a 400 px one.
    assert ort.per_query(160) == pytest.approx(ort.per_query(400) * 0.4 ** 4, rel=1e-6)
    for model in MODELS.values():
        for size in (160, 400, 473):
            for budget in (0.5 * GB, 1.5 * GB, 4 * GB):
                b = model.head_batch(size, budget)
                assert b == 1 or model.peak(size, b) <= budget
                assert model.peak(size, b + 1) > budget
        # Below one query: still 1 (a query cannot be split).
        assert model.head_batch(400, model.fixed) == 1


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), True, "1GB", None])
def test_invalid_budget(budget):
    with pytest.raises(InputError, match="memory_budget"):
        model_for().head_batch(400, budget)


def test_serving_declaration_builds_on_the_runtime_model(exported):
    from lfm_deploy.serving.job import Job
    from lfm_deploy.serving.resources import HEADROOM, RAY_WORKER_BYTES, segmenter_memory_bytes

    manifest = read_manifest(exported(shots=1).out_dir)
    assert manifest.correlation == "per-feature"  # what today's exports record
    at400 = dataclasses.replace(manifest, image_size=400)

    def job(backend):
        return Job("x", at400, (), (), (), backend=backend)

    ort, ov = model_for("onnxruntime", "per-feature"), model_for("openvino", "per-feature")
    # a worker declares the head batch its Segmenter will run: the default budget caps 16 at 6
    assert segmenter_memory_bytes(job("onnxruntime"), 16) == int(np.ceil((ort.peak(400, 6) + RAY_WORKER_BYTES) * HEADROOM))
    assert segmenter_memory_bytes(job("onnxruntime"), 16, budget=None) == int(
        np.ceil((ort.peak(400, 16) + RAY_WORKER_BYTES) * HEADROOM))
    assert segmenter_memory_bytes(job("openvino"), 8) == int(np.ceil((ov.peak(400, 2) + RAY_WORKER_BYTES) * HEADROOM))


class _CountingHead:
    """The head session, recording the batch of each run."""

    def __init__(self, session):
        self.session = session
        self.calls = []

    def run(self, outputs, feed):
        self.calls.append(len(feed["query_img"]))
        return self.session.run(outputs, feed)

    def get_providers(self):
        return self.session.get_providers()


def test_budget_caps_the_head_batch_and_keeps_the_masks(exported, caplog):
    src = exported(shots=1).out_dir
    budget = model_for("onnxruntime", "per-feature").peak(SIZE, 2) + 1
    seg = Segmenter.from_artifacts(src, threads=2, verify=False, memory_budget=budget)
    plain = Segmenter.from_artifacts(src, threads=2, verify=False, memory_budget=None)
    default = Segmenter.from_artifacts(src, threads=1, verify=False)  # 1.5 GB: 160 px queries are small
    assert seg.memory_model == model_for("onnxruntime", "per-feature")
    assert seg.max_head_batch == 2 and plain.max_head_batch is None and default.max_head_batch > 8
    assert seg.head_batch() == 2 and seg.head_batch(1) == 1 and plain.head_batch() == 8 == default.head_batch()
    support = synthetic_support(1, SIZE)
    seg.set_support(*support)
    plain.set_support(*support)
    queries = synthetic_queries(5, SIZE)
    seg._head = counting = _CountingHead(seg._head)
    got = seg.predict(queries, batch_size=8)
    assert counting.calls == [2, 2, 1]
    for a, b in zip(got, plain.predict(queries, batch_size=8)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(seg.predict_proba(queries[0]), plain.predict_proba(queries[0]))

    with caplog.at_level(logging.WARNING, logger="lfm_deploy.runtime"):
        tight = Segmenter.from_artifacts(src, threads=1, verify=False, memory_budget=0.1 * GB)
    assert tight.max_head_batch == 1 and "below what one query needs" in caplog.text
    with pytest.raises(InputError, match="memory_budget"):
        Segmenter.from_artifacts(src, threads=1, verify=False, memory_budget=-5)
