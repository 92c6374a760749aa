"""The reduced-precision accuracy gate's comparison: which figures pass or fail it, and what
the report says (candidate outputs given directly, through a Polygraphy runner)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from lfm_deploy.contract import default_io
from lfm_deploy.domains import REDUCED_PRECISIONS, get_domain
from lfm_deploy.parity.compare import EvidenceRule, evidence_of
from lfm_deploy.parity.gate import EagerReference, GateData, informative_episodes, run_gate

S = 16


class _Given(BaseRunner):
    """A runner that answers each episode with a given mask (and logits)."""

    def __init__(self, masks, logits=None):
        super().__init__(name="given")
        self.masks, self.logits, self.i = masks, logits, 0

    def activate_impl(self):
        self.i = 0

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for spec in default_io("episode", S, 1).inputs:
            meta.add(spec.name, dtype=np.float32, shape=tuple(spec.shape))
        return meta

    def infer_impl(self, feed_dict):
        io = default_io("episode", S, 1)
        out = OrderedDict()
        if self.logits is not None:
            out[io.output("logits")] = self.logits[self.i]
        out[io.output("mask")] = self.masks[self.i]
        self.i += 1
        self.inference_time = 1e-3
        return out

    def deactivate_impl(self):
        pass


def _data(n=2, seed=0, truth_is_eager=False):
    rng = np.random.default_rng(seed)
    io = default_io("episode", S, 1)
    feeds = [io.feed(query=rng.random((1, 3, S, S), np.float32), supports=rng.random((1, 1, 3, S, S), np.float32),
                     masks=np.ones((1, 1, S, S), np.float32)) for _ in range(n)]
    margins = [np.abs(rng.normal(0, 1, (1, S, S))) for _ in range(n)]
    masks = [(rng.random((1, S, S)) > 0.5).astype(np.uint8) for _ in range(n)]
    logits = []
    for m, g in zip(masks, margins):
        sign = np.where(m == 1, 1.0, -1.0)
        logits.append(np.stack([-sign * g / 2, sign * g / 2], axis=1).astype(np.float32))
    ref = EagerReference(masks, margins, logits, 1.0)
    truths = [m.copy() for m in masks] if truth_is_eager else [(rng.random((1, S, S)) > 0.5).astype(np.uint8)
                                                                for _ in range(n)]
    return GateData(feeds, truths, "test episodes"), ref


#: The registry's evidence rule counts pixels for 160-400 px episodes; these have 16 x 16.
SMALL_EVIDENCE = EvidenceRule(min_class_share=0.02, min_episodes=2, min_decisive_pixels=50)


def _gate(precision="int8", **changes):
    from dataclasses import replace

    changes.setdefault("evidence", SMALL_EVIDENCE)
    return replace(get_domain("deepglobe").precision_gates[precision], **changes)


def _flip(masks, margins, share, below=None):
    """Flip `share` of the pixels, only where the margin is below `below` when given."""
    out = []
    for m, g in zip(masks, margins):
        m = m.copy()
        idx = np.flatnonzero(g.ravel() < below) if below is not None else np.arange(m.size)
        idx = idx[: int(share * m.size)]
        m.ravel()[idx] ^= 1
        out.append(m)
    return out


def test_registry_has_a_gate_per_reduced_precision():
    gates = get_domain("isic").precision_gates
    assert set(gates) == set(REDUCED_PRECISIONS)
    for p, tol in gates.items():
        assert tol.mask.limit == 0.99 and tol.miou.limit == pytest.approx(0.005)
        assert tol.tie_margin > 0 and not tol.logits.gated
    assert gates["fp16"].tie_margin < gates["bf16"].tie_margin < gates["int8"].tie_margin


def test_identical_masks_pass():
    data, ref = _data()
    report = run_gate(ref, _Given(ref.masks, ref.logits), data, _gate(), precision="int8", backend="t", shots=1,
                      image_size=S)
    assert report.passed and report.mask.stats.agreement == 1.0 and report.miou_delta == 0.0
    assert report.logits is not None and report.logits.stats.max_abs == 0.0
    assert report.lines()[0].startswith("[ok] int8 gate")


def test_near_tie_flips_within_budget_pass_and_are_reported_by_margin():
    data, ref = _data()
    got = _flip(ref.masks, ref.margins, 0.005, below=0.05)
    report = run_gate(ref, _Given(got), data, _gate(), precision="int8", backend="t", shots=1, image_size=S)
    st = report.mask.stats
    assert st.flipped > 0 and st.flipped_margin_max < 0.05 and report.mask.stats.agreement >= 0.99
    assert sum(st.flipped_margins.values()) == st.flipped
    assert report.passed, report.failures
    assert any("eager |margin| of the differing pixels" in line for line in report.lines())


def test_low_agreement_fails():
    data, ref = _data()
    got = _flip(ref.masks, ref.margins, 0.02, below=0.3)
    report = run_gate(ref, _Given(got), data, _gate(), precision="int8", backend="t", shots=1, image_size=S)
    assert not report.passed and any(f.startswith("mask agreement") for f in report.failures)
    assert report.lines()[-1].startswith("    failed: mask agreement")


def test_one_confident_flip_fails_whatever_the_agreement():
    data, ref = _data()
    got = [m.copy() for m in ref.masks]
    where = np.unravel_index(np.argmax(ref.margins[0]), ref.margins[0].shape)
    got[0][where] ^= 1
    report = run_gate(ref, _Given(got), data, _gate("bf16"), precision="bf16", backend="t", shots=1, image_size=S)
    assert report.mask.stats.agreement > 0.99
    assert not report.passed and report.mask.stats.decisive == 1
    assert any("eager |margin| > 0.25" in f for f in report.failures)


def test_miou_difference_beyond_half_a_point_fails():
    data, ref = _data(truth_is_eager=True)
    # Ground truth = eager masks; the candidate loses foreground only on near-ties (agreement and
    # margins fine) yet its mIoU drops by more than 0.5 points.
    got = [np.where(g < 0.05, 0, m).astype(np.uint8) for m, g in zip(ref.masks, ref.margins)]
    anything = EvidenceRule(min_class_share=0.0, min_episodes=0, min_decisive_pixels=0)  # this test is about mIoU
    report = run_gate(ref, _Given(got), data, _gate(tie_margin=10.0, mask=_gate().mask.__class__("agreement", 0.9),
                                                    evidence=anything),
                      precision="int8", backend="t", shots=1, image_size=S)
    assert report.miou_delta < -0.005
    assert report.failures == [f"mIoU difference {100 * report.miou_delta:+.2f} points (bound 0.5)"]


def test_registry_gates_need_evidence():
    for tol in get_domain("deepglobe").precision_gates.values():
        assert tol.evidence is not None and tol.evidence.min_episodes >= 2 and tol.evidence.min_decisive_pixels > 0


@pytest.mark.parametrize("precision", REDUCED_PRECISIONS)
def test_single_class_eager_masks_fail_for_want_of_evidence(precision):
    """Identical masks, agreement 100%: still no pass when the eager masks are one class."""
    data, ref = _data()
    ref.masks = [np.zeros_like(m) for m in ref.masks]
    report = run_gate(ref, _Given(ref.masks), data, _gate(precision), precision=precision, backend="t", shots=1,
                      image_size=S)
    assert report.mask.stats.agreement == 1.0
    assert not report.passed and report.vacuous
    assert report.failures[0].startswith("no evidence: 0 of 2 episodes have both classes")
    assert any("NO EVIDENCE" in line and "--calibration DIR" in line for line in report.lines())
    d = report.to_dict()
    assert d["vacuous"] is True and d["passed"] is False and d["evidence"]["informative_episodes"] == 0


def test_nearly_single_class_and_undecided_masks_are_no_evidence():
    data, ref = _data()
    # Episode 0: 1% foreground (under the 2% share); episode 1: mixed, but every margin a tie.
    ref.masks[0] = np.zeros_like(ref.masks[0])
    ref.masks[0].ravel()[:2] = 1
    ref.margins[1] = np.full_like(ref.margins[1], 0.01)
    ev = evidence_of(ref.masks, ref.margins, 0.5, SMALL_EVIDENCE)
    assert ev.informative == (False, False) and not ev.sufficient
    report = run_gate(ref, _Given(ref.masks), data, _gate(), precision="int8", backend="t", shots=1, image_size=S)
    assert not report.passed and "0 of 2 episodes" in report.failures[0]


def test_one_informative_episode_is_not_enough():
    data, ref = _data()
    ref.masks[1] = np.ones_like(ref.masks[1])
    report = run_gate(ref, _Given(ref.masks), data, _gate(), precision="int8", backend="t", shots=1, image_size=S)
    assert report.evidence.informative == (True, False)
    assert not report.passed and "1 of 2 episodes" in report.failures[0] and "2 are needed" in report.failures[0]


def test_too_few_decided_pixels_of_a_class_is_not_enough():
    data, ref = _data()
    strict = EvidenceRule(min_class_share=0.02, min_episodes=2, min_decisive_pixels=10_000)
    report = run_gate(ref, _Given(ref.masks), data, _gate(evidence=strict), precision="int8", backend="t", shots=1,
                      image_size=S)
    assert not report.passed and "10000 of each are needed" in report.failures[0]


def test_informative_episodes_keeps_the_informative_draws():
    """Draws whose eager mask is one class are dropped, the draw count and kept seeds reported."""
    import torch

    class Model:  # foreground on odd seeds' episodes only (the query's first pixel says which)
        def shot_logits(self, q, s, m):
            fg = float(q[0, 0, 0, 0]) > 0.5
            logit = torch.zeros(1, 2, S, S)
            logit[:, 1, :, : S // 2] = 3.0 if fg else -3.0
            logit[:, 1, :, S // 2:] = -3.0
            return [logit]

    io = default_io("episode", S, 1)

    def draw(seed):
        q = np.full((1, 3, S, S), float(seed % 2), np.float32)
        feed = io.feed(query=q, supports=np.zeros((1, 1, 3, S, S), np.float32), masks=np.ones((1, 1, S, S), np.float32))
        return [feed], [np.zeros((1, S, S), np.uint8)]

    Model.image_size = S
    data, ref = informative_episodes(Model(), draw, 3, 10, 1, _gate())
    assert len(data) == 3 and len(ref.masks) == 3
    assert "seeds 10..15: 6 drawn, 3 with informative eager masks kept: 11, 13, 15" in data.label
    assert ref.evidence(_gate()).sufficient
    # A model that never segments: the draws stop at 3n, nothing is kept, and no evidence results.
    none, ref0 = informative_episodes(Model(), lambda s: draw(0), 2, 0, 1, _gate())
    assert len(none) == 0 and "6 drawn, 0" in none.label and not ref0.evidence(_gate()).sufficient
