"""Comparison-phase statistics on constructed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lfm_deploy.parity.compare import (
    QUANTILES,
    Tolerance,
    Tolerances,
    error_stats,
    foreground_iou,
    mask_stats,
)


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
    manifest = {"tolerances": {"logits_atol": 5e-3, "mask_agreement": 0.998, "feature_rel": 2e-3}}
    fp32 = Tolerances.from_manifest(manifest)
    assert fp32.for_output("logits", is_mask=False) == Tolerance("max_abs", 5e-3)
    assert fp32.for_output("mask", is_mask=True) == Tolerance("agreement", 0.998)
    assert fp32.stage_rel == 2e-3
    fp16 = Tolerances.from_manifest(manifest, "fp16")
    assert fp16.for_output("logits", is_mask=False).statistic == "rel_l2"
    custom = Tolerances(outputs={"logits": Tolerance("p99", 1e-4)})
    assert custom.for_output("logits", False) == Tolerance("p99", 1e-4)
    assert "default_float" in custom.to_dict()
