"""Comparison-phase statistics on constructed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lfm_deploy.parity.compare import (
    QUANTILES,
    Tolerance,
    Tolerances,
    branch_cut_channels,
    compare_output,
    decision_margins,
    error_stats,
    foreground_iou,
    mask_stats,
)

REL = Tolerance("max_rel_to_peak", 1e-4)


def test_error_statistics_on_known_arrays():
    ref = np.array([3.0, 4.0, 0.0, 0.0])
    got = ref + np.array([0.0, 0.0, 0.5, -1.0])
    s = error_stats(got, ref)
    assert s.shape == [4]
    assert s.max_abs == 1.0
    assert s.mean_abs == pytest.approx(0.375)
    assert s.rel_l2 == pytest.approx(math.sqrt(1.25) / 5.0)
    assert s.cosine == pytest.approx(25.0 / (5.0 * math.sqrt(26.25)))
    assert s.max_rel_to_peak == pytest.approx(1.0 / 4.0)
    assert s.ref_peak == 4.0 and s.nonfinite == 0
    assert set(s.quantiles) == {"p50", "p90", "p99", "p99.9"}
    assert s.quantiles["p50"] == pytest.approx(np.quantile([0, 0, 0.5, 1.0], 0.5))
    assert s.value("p90") == s.quantiles["p90"] and s.value("max_abs") == 1.0
    assert "sample" not in s.to_dict()


def test_quantiles_of_a_uniform_error():
    ref = np.zeros(100_001)
    got = np.linspace(0.0, 1.0, 100_001)
    s = error_stats(got, ref, keep_sample=True)
    for q in QUANTILES:
        key = "p" + f"{q * 100:g}"
        assert s.quantiles[key] == pytest.approx(q, abs=1e-9)
    assert s.rel_l2 == math.inf and s.cosine == 0.0  # a zero reference
    assert s.sample.size == 100_001 and s.sample.dtype == np.float32


def test_identical_zero_and_nonfinite_arrays():
    z = np.zeros((2, 3))
    s = error_stats(z, z)
    assert (s.max_abs, s.rel_l2, s.cosine, s.max_rel_to_peak) == (0.0, 0.0, 1.0, 0.0)
    bad = error_stats(np.array([1.0, np.nan, np.inf]), np.ones(3))
    assert bad.nonfinite == 2 and math.isinf(bad.quantiles["p99"])
    anti = error_stats(-np.ones(4), np.ones(4))
    assert anti.cosine == pytest.approx(-1.0) and anti.rel_l2 == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        error_stats(np.zeros(3), np.zeros(4))


def test_mask_agreement_and_iou():
    ref = np.zeros((1, 4, 4), np.uint8)
    ref[0, :2, :2] = 1  # 4 foreground pixels
    got = ref.copy()
    got[0, 0, 0] = 0  # one lost
    got[0, 3, 3] = 1  # one spurious
    s = mask_stats(got, ref)
    assert s.flipped == 2 and s.agreement == pytest.approx(14 / 16)
    assert s.iou == pytest.approx(3 / 5)
    assert mask_stats(ref, ref).iou == 1.0 and mask_stats(ref, ref).agreement == 1.0
    empty = np.zeros((4, 4))
    assert foreground_iou(empty, empty) == 1.0 and foreground_iou(empty, ref[0]) == 0.0
    with pytest.raises(ValueError):
        mask_stats(np.zeros((2, 2)), np.zeros((3, 3)))


def test_tolerances_are_named_and_directional():
    assert Tolerance("max_abs", 1e-3).passes(5e-4) and not Tolerance("max_abs", 1e-3).passes(2e-3)
    assert Tolerance("agreement", 0.999).passes(0.9995) and not Tolerance("agreement", 0.999).passes(0.99)
    assert Tolerance("miou_delta", 0.01).passes(-0.005) and not Tolerance("miou_delta", 0.01).passes(-0.02)
    assert not Tolerance("max_abs", 1.0).passes(float("nan"))
    assert Tolerance("agreement", 0.99).describe() == "agreement >= 0.99"
    assert Tolerance("agreement", 0.99).format(0.999922) == "0.999922"


def test_tolerances_from_the_manifest():
    from types import SimpleNamespace

    from lfm_deploy.manifest import ParityTolerances

    manifest = SimpleNamespace(tolerances=ParityTolerances(logits_atol=5e-3, mask_agreement=0.998, feature_rel=2e-3))
    fp32 = Tolerances.from_manifest(manifest)
    assert fp32.for_output("logits", "logits") == Tolerance("max_abs", 5e-3)
    assert fp32.for_output("mask", "mask") == Tolerance("agreement", 0.998)
    assert fp32.for_output("support_l4", "features") == Tolerance("max_rel_to_peak", 2e-3)
    assert fp32.stage_rel == 2e-3 and fp32.tie_margin == 1e-2
    assert Tolerances.from_manifest(SimpleNamespace(tolerances=fp32.to_manifest())) == fp32
    assert Tolerances.from_manifest(SimpleNamespace(tolerances=None)) == Tolerances.float32(1e-3, 1e-4, 0.999)
    custom = Tolerances(outputs={"logits": Tolerance("p99", 1e-4)})
    assert custom.for_output("logits", "logits") == Tolerance("p99", 1e-4)
    assert "logits" in custom.to_dict()
    with pytest.raises(ValueError):
        custom.for_output("x", "pixels")


def test_the_domain_registry_holds_the_same_tolerance_type():
    from lfm_deploy.domains import get_domain

    tol = get_domain("isic").tolerances
    assert isinstance(tol["matmul"], Tolerances) and isinstance(tol["dft"], Tolerances)
    assert tol["matmul"].logits.limit == 1e-3 and tol["dft"].logits.limit == 5e-3
    assert tol["dft"].tie_margin == 2 * tol["dft"].logits.limit


def test_branch_cut_channels_flag_bins_on_the_atan2_cut_only():
    h = w = 13
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(0)
    maps = np.stack([
        rng.standard_normal((h, w)),                                      # generic: no bin on the cut
        2.0 - np.cos(2 * np.pi * (yy / h + 2 * xx / w)),                  # bins (1,2), (-1,-2) real negative
        -np.ones((h, w)),                                                 # only the DC is real negative
    ])
    assert branch_cut_channels(maps[None])[0].tolist() == [False, True, False]
    # Off the cut by less than two runtimes' backbones differ (imag ~3e-6 sum|x|): still flagged.
    # Clearly off it (imag ~1e-4 sum|x|): not flagged.
    theta = 2 * np.pi * (yy / h + 2 * xx / w)
    near = [2.0 - np.cos(theta) + eps * np.sin(theta) for eps in (1.2e-5, 4e-4)]
    scale = [np.abs(x).sum() for x in near]
    assert [abs(np.fft.fft2(x)[1, 2].imag) / s for x, s in zip(near, scale)] == pytest.approx([3e-6, 1e-4], rel=0.1)
    assert branch_cut_channels(np.stack(near)).tolist() == [True, False]
    # Excluded channels are left out of the statistic and counted.
    ref = np.ones((1, 2, h, w))
    got = ref.copy()
    got[0, 1] = 5.0
    check = compare_output("encoder", "support_l4", got, ref, REL, "features", exclude=np.array([[False, True]]))
    assert check.passed and check.stats.excluded == 1 and "1 branch-cut channels excluded" in check.line()
    assert not compare_output("encoder", "support_l4", got, ref, REL, "features").passed


def test_mask_check_allows_differences_only_on_eager_near_ties():
    shot_logits = [np.array([[[[0.0, 1.0]], [[0.5, 0.0]]]]), np.array([[[[0.0, 0.0]], [[0.1, -2.0]]]])]
    np.testing.assert_allclose(decision_margins(shot_logits), [[[0.1, 1.0]]])
    ref = np.zeros((1, 4, 4), dtype=np.int64)
    margin = np.full((1, 4, 4), 0.5)
    margin[0, 0, 0] = 1e-5                       # an eager near-tie
    got = ref.copy()
    got[0, 0, 0] = 1                             # differs on the tie: fine
    agree = Tolerance("agreement", 0.9)
    check = compare_output("episode", "mask", got, ref, agree, "mask", margin=margin, tie_margin=2e-3)
    assert check.passed and check.stats.flipped == 1 and check.stats.decisive == 0
    assert "agreement 0.937500" in check.line() and "1 pixels differ, 0 of them beyond" in check.line()
    got[0, 3, 3] = 1                             # differs where the eager model is decisive
    check = compare_output("episode", "mask", got, ref, agree, "mask", margin=margin, tie_margin=2e-3)
    assert not check.passed and check.stats.decisive == 1 and check.stats.agreement == 14 / 16
    # Without margins only the agreement counts.
    assert compare_output("episode", "mask", got, ref, Tolerance("agreement", 0.8), "mask").passed
    assert not compare_output("episode", "mask", got[:, :2], ref, Tolerance("agreement", 0.8), "mask").passed


def test_a_single_class_reference_makes_the_mask_check_vacuous():
    ref = np.zeros((1, 4, 4), dtype=np.uint8)
    check = compare_output("episode", "mask", ref, ref, Tolerance("agreement", 0.999), "mask")
    assert check.passed and check.stats.vacuous and "VACUOUS" in check.line()
    ref[0, 0, 0] = 1
    assert not compare_output("episode", "mask", ref, ref, Tolerance("agreement", 0.999), "mask").stats.vacuous


def test_acpa_sign_ties_are_resolved_the_way_the_export_went():
    torch = pytest.importorskip("torch")
    from lfm_deploy.models.masker import PhaseAttention
    from lfm_deploy.parity.numerics import resolve_acpa_ties

    torch.manual_seed(0)
    acpa = PhaseAttention(16).eval()
    with torch.no_grad():
        for p in acpa.parameters():
            p.mul_(4.0)                                   # weights sensitive enough to show the step
    x = torch.randn(2, 3, 16, 5, 5)
    tied = x[1, 2, 7]
    tied -= tied.mean() - 1e-6 * tied.abs().sum() / 25   # sum ~ +1e-6 sum|x|: within rounding of 0
    flipped = x.clone()
    flipped[1, 2, 7] -= 2e-6 * tied.abs().sum() / 25      # the same channel, summing to ~ -1e-6 sum|x|
    with torch.no_grad():
        ref = torch.stack([acpa(m) for m in x.unbind(0)]).numpy()
        got = torch.stack([acpa(m) for m in flipped.unbind(0)]).numpy()
    # The sign of one channel's sum moves every channel of its map, far beyond float32 noise.
    assert not compare_output("encoder", "support_l4", got, ref, REL, "features").passed
    resolved, ties, other_way = resolve_acpa_ties(acpa, x, got, ref)
    assert (ties, other_way) == (1, 1)
    check = compare_output("encoder", "support_l4", got, resolved, REL, "features", sign_ties=other_way)
    assert check.passed and "1 maps compared with an ACPA sign tie" in check.line()
    np.testing.assert_array_equal(resolved[0], ref[0])   # untied maps keep the eager reference
    # Landing on the eager side needs no resolving; a real error elsewhere still fails.
    assert resolve_acpa_ties(acpa, x, ref, ref)[1:] == (1, 0)
    broken = got.copy()
    broken[0, 0, 0] += 1.0
    resolved, _, _ = resolve_acpa_ties(acpa, x, broken, ref)
    assert not compare_output("encoder", "support_l4", broken, resolved, REL, "features").passed
