"""One Segmenter, many threads: results identical to sequential calls, support swaps atomic."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lfm_deploy.runtime import Segmenter

from . import synthetic_queries, synthetic_support

THREADS = 4
PER_THREAD = 3


@pytest.fixture(scope="module")
def setup(exported):
    seg = Segmenter.from_artifacts(exported(shots=1).out_dir, threads=1, verify=False, release_encoder=False)
    queries = synthetic_queries(THREADS * PER_THREAD, 170)
    return seg, queries


def test_concurrent_predicts_equal_sequential(setup):
    seg, queries = setup
    seg.set_support(*synthetic_support(1, 170))
    sequential = [seg.predict(q) for q in queries]
    sequential_proba = [seg.predict_proba(q) for q in queries[:THREADS]]

    barrier = threading.Barrier(THREADS)

    def work(t):
        barrier.wait()  # start together to maximise overlap
        out = [(i, seg.predict(queries[i])) for i in range(t, len(queries), THREADS)]
        return out, (t, seg.predict_proba(queries[t]))

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS)))
    seen = 0
    for masks, (t, proba) in results:
        np.testing.assert_array_equal(proba, sequential_proba[t])
        for i, mask in masks:
            np.testing.assert_array_equal(mask, sequential[i])
            seen += 1
    assert seen == len(queries)


def test_set_support_during_predicts_never_mixes(setup):
    seg, queries = setup
    queries = queries[:3]
    support_a = synthetic_support(1, 170)
    support_b = synthetic_support(1, 170, seed=17, class_index=3)
    seg.set_support(*support_b)
    expect_b = seg.predict_proba(queries)  # the same call shape as the readers'
    seg.set_support(*support_a)
    expect_a = seg.predict_proba(queries)
    assert not all(np.array_equal(a, b) for a, b in zip(expect_a, expect_b))

    stop = threading.Event()

    def swapper():
        flip = False
        while not stop.is_set():
            seg.set_support(*(support_b if flip else support_a))
            flip = not flip

    def reader(t):
        got = []
        for _ in range(2):
            got.extend(seg.predict_proba(queries))  # one call = one support snapshot
        return got

    swap = threading.Thread(target=swapper)
    swap.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            outputs = list(pool.map(reader, range(2)))
    finally:
        stop.set()
        swap.join()
    for got in outputs:
        for start in range(0, len(got), len(queries)):
            call = got[start:start + len(queries)]
            matches_a = all(np.array_equal(x, e) for x, e in zip(call, expect_a))
            matches_b = all(np.array_equal(x, e) for x, e in zip(call, expect_b))
            assert matches_a or matches_b, "a predict call mixed two support sets"
    seg.set_support(*support_a)
