"""The memory model and the head batch a memory budget chooses (real onnxruntime sessions, 160 px)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lfm_deploy.errors import InputError
from lfm_deploy.runtime import Segmenter
from lfm_deploy.runtime.memory import (GB, SEGMENTER_FIXED_BYTES, head_batch_for_budget, per_query_bytes,
                                       segmenter_bytes)

from . import synthetic_queries, synthetic_support

SIZE = 160  # tests/conftest.py TEST_IMAGE_SIZE


def test_model_and_its_inverse():
    # 400 px: ~0.34 GB + ~0.32 GB per query; the 1.5 GB at batch 8 means head runs of 3.
    assert head_batch_for_budget(400, 1.5 * GB) == 3
    assert segmenter_bytes(400, 3) <= 1.5 * GB < segmenter_bytes(400, 4)
    # size^4: 160 px queries cost (160/400)^4 of a 400 px one.
    assert per_query_bytes(160) == pytest.approx(per_query_bytes(400) * 0.4 ** 4, rel=1e-6)
    for size in (160, 400, 473):
        for budget in (0.5 * GB, 1.5 * GB, 4 * GB):
            b = head_batch_for_budget(size, budget)
            assert b == 1 or segmenter_bytes(size, b) <= budget
            assert segmenter_bytes(size, b + 1) > budget
    # Below one query: still 1 (a query cannot be split).
    assert head_batch_for_budget(400, SEGMENTER_FIXED_BYTES) == 1


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), True, "1GB", None])
def test_invalid_budget(budget):
    with pytest.raises(InputError, match="memory_budget"):
        head_batch_for_budget(400, budget)


def test_serving_declaration_builds_on_the_runtime_model():
    from lfm_deploy.serving.resources import HEADROOM, RAY_WORKER_BYTES, segmenter_memory_bytes

    assert segmenter_memory_bytes(400, 8) == int(np.ceil((segmenter_bytes(400, 8) + RAY_WORKER_BYTES) * HEADROOM))


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
    budget = segmenter_bytes(SIZE, 2) + 1
    seg = Segmenter.from_artifacts(src, threads=2, verify=False, memory_budget=budget)
    plain = Segmenter.from_artifacts(src, threads=2, verify=False)
    assert seg.max_head_batch == 2 and plain.max_head_batch is None
    assert seg.head_batch() == 2 and seg.head_batch(1) == 1 and plain.head_batch() == 8
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
