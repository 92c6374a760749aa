"""The comparison phase: error statistics, mask agreement and named tolerances.

Pure numpy. The run phase (`lfm_deploy.parity.runners` + Polygraphy's `Comparator.run`)
produces outputs; everything here turns a pair (backend output, reference output) into numbers
and a verdict, and never runs a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

__all__ = [
    "QUANTILES",
    "ErrorStats",
    "MaskStats",
    "Tolerance",
    "Tolerances",
    "error_stats",
    "foreground_iou",
    "mask_stats",
]

#: Error quantiles reported for every float output.
QUANTILES = (0.5, 0.9, 0.99, 0.999)
#: At most this many absolute errors are kept per output for the distribution plots.
_SAMPLE = 200_000


def _qname(q: float) -> str:
    return "p" + f"{q * 100:g}"


@dataclass
class ErrorStats:
    """Elementwise error of one float output against its reference.

    Attributes:
        shape: the output's shape.
        max_abs, mean_abs: largest and mean |got - ref|.
        rel_l2: ||got - ref|| / ||ref|| (0 when both are 0).
        max_rel_to_peak: max_abs / max|ref| (scale-free, for features of any magnitude).
        cosine: cosine similarity of the flattened tensors (1 when both are 0).
        quantiles: {"p50", "p90", "p99", "p99.9": quantile of |got - ref|}.
        nonfinite: elements of `got` that are NaN or infinite.
        ref_peak: max|ref|.
    """

    shape: list
    max_abs: float
    mean_abs: float
    rel_l2: float
    max_rel_to_peak: float
    cosine: float
    quantiles: dict
    nonfinite: int
    ref_peak: float
    sample: np.ndarray | None = field(default=None, repr=False, compare=False)

    def value(self, statistic: str) -> float:
        """A statistic by name: a field ("max_abs", "rel_l2", ...) or a quantile ("p99")."""
        if statistic in self.quantiles:
            return float(self.quantiles[statistic])
        return float(getattr(self, statistic))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("sample", None)
        return d


def error_stats(got: np.ndarray, ref: np.ndarray, *, keep_sample: bool = False, seed: int = 0) -> ErrorStats:
    """Error statistics of `got` against `ref` (computed in float64).

    Args:
        got: the backend's output.
        ref: the reference output, same shape.
        keep_sample: keep a random subsample (<= 200k) of |got - ref| for plots.
        seed: seed of that subsample.

    Returns:
        `ErrorStats`.

    Raises:
        ValueError: the shapes differ.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"shape mismatch: got {got.shape}, reference {ref.shape}")
    nonfinite = int(got.size - np.count_nonzero(np.isfinite(got)))
    diff = np.abs(got - ref).ravel()
    if diff.size == 0:
        return ErrorStats(list(got.shape), 0.0, 0.0, 0.0, 0.0, 1.0, {_qname(q): 0.0 for q in QUANTILES}, 0, 0.0)
    g, r = got.ravel(), ref.ravel()
    ref_norm = float(np.linalg.norm(r))
    err_norm = float(np.linalg.norm(g - r))
    got_norm = float(np.linalg.norm(g))
    if ref_norm == 0.0:
        rel_l2 = 0.0 if err_norm == 0.0 else math.inf
    else:
        rel_l2 = err_norm / ref_norm
    if ref_norm == 0.0 or got_norm == 0.0:
        cosine = 1.0 if ref_norm == got_norm else 0.0
    else:
        cosine = float(np.dot(g, r) / (got_norm * ref_norm))
    peak = float(np.abs(r).max())
    max_abs = float(diff.max())
    quant = np.quantile(diff, QUANTILES) if np.isfinite(diff).all() else [math.inf] * len(QUANTILES)
    sample = None
    if keep_sample:
        sample = diff if diff.size <= _SAMPLE else np.random.default_rng(seed).choice(diff, _SAMPLE, replace=False)
        sample = sample.astype(np.float32)
    return ErrorStats(
        shape=list(got.shape), max_abs=max_abs, mean_abs=float(diff.mean()), rel_l2=rel_l2,
        max_rel_to_peak=(max_abs / peak) if peak > 0 else (0.0 if max_abs == 0 else math.inf),
        cosine=cosine, quantiles={_qname(q): float(v) for q, v in zip(QUANTILES, quant)},
        nonfinite=nonfinite, ref_peak=peak, sample=sample,
    )


def foreground_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU of the foreground (nonzero) pixels; 1.0 when both masks are empty."""
    p = np.asarray(pred) != 0
    t = np.asarray(target) != 0
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else float(np.count_nonzero(p & t) / union)


@dataclass
class MaskStats:
    """Agreement of a predicted mask with the reference mask.

    Attributes:
        shape: mask shape.
        agreement: share of pixels with the same class.
        iou: foreground IoU between the two masks (1.0 when both are empty).
        flipped: number of pixels that differ.
    """

    shape: list
    agreement: float
    iou: float
    flipped: int

    def value(self, statistic: str) -> float:
        return float(getattr(self, statistic))

    def to_dict(self) -> dict:
        return asdict(self)


def mask_stats(got: np.ndarray, ref: np.ndarray) -> MaskStats:
    """Pixel agreement and IoU between two masks.

    Raises:
        ValueError: the shapes differ.
    """
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        raise ValueError(f"shape mismatch: got {got.shape}, reference {ref.shape}")
    same = got.astype(np.int64) == ref.astype(np.int64)
    agreement = float(same.mean()) if same.size else 1.0
    return MaskStats(list(got.shape), agreement, foreground_iou(got, ref), int(same.size - np.count_nonzero(same)))


@dataclass(frozen=True)
class Tolerance:
    """A named statistic and its bound.

    Attributes:
        statistic: "max_abs", "rel_l2", "p99", "max_rel_to_peak", ... (upper bounds) or
            "agreement", "iou", "cosine" (lower bounds), or "miou_delta" (bound on |delta|).
        limit: the bound.
    """

    statistic: str
    limit: float

    @property
    def lower_bound(self) -> bool:
        return self.statistic in ("agreement", "iou", "cosine")

    def passes(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.statistic == "miou_delta":
            return abs(value) <= self.limit
        return value >= self.limit if self.lower_bound else value <= self.limit

    def format(self, value: float) -> str:
        """The value with enough digits to see it against the bound (0.999922, not 1)."""
        if value is None:
            return "-"
        if self.lower_bound:
            return f"{value:.6f}"
        return f"{value:+.5f}" if self.statistic == "miou_delta" else f"{value:.3g}"

    def describe(self) -> str:
        if self.statistic == "miou_delta":
            return f"|miou_delta| <= {self.limit:g}"
        return f"{self.statistic} {'>=' if self.lower_bound else '<='} {self.limit:g}"


@dataclass(frozen=True)
class Tolerances:
    """Per-output tolerances of one class of backend.

    Attributes:
        outputs: {output name: Tolerance}; a float output without an entry uses `default_float`,
            a mask output (integer dtype) `default_mask`.
        default_float / default_mask: fallbacks.
        miou: bound on |mIoU(backend) - mIoU(eager float32)| on the sample episodes.
        stage_rel: bound on max_rel_to_peak for the intermediate stages (layerwise mode).
    """

    outputs: Mapping[str, Tolerance] = field(default_factory=dict)
    default_float: Tolerance = Tolerance("max_abs", 1e-3)
    default_mask: Tolerance = Tolerance("agreement", 0.999)
    miou: Tolerance = Tolerance("miou_delta", 0.01)
    stage_rel: float = 1e-4

    def for_output(self, name: str, is_mask: bool) -> Tolerance:
        if name in self.outputs:
            return self.outputs[name]
        return self.default_mask if is_mask else self.default_float

    def to_dict(self) -> dict:
        return {
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
            "default_float": asdict(self.default_float), "default_mask": asdict(self.default_mask),
            "miou": asdict(self.miou), "stage_rel": self.stage_rel,
        }

    @classmethod
    def from_manifest(cls, manifest: Mapping, precision: str = "fp32") -> "Tolerances":
        """The export's own tolerances (fp32), or the fp16 ones derived from them.

        fp32 backends: logits max |error| <= the manifest's `logits_atol`, masks agree on at
        least `mask_agreement` of the pixels, intermediate stages within `feature_rel` of their
        peak. fp16 backends (an fp16 graph with fp32 islands): relative L2 error of the logits
        <= 1e-2, 99 % mask agreement, mIoU within 2 points, stages within 1e-2 of their peak.
        """
        tol = manifest.get("tolerances", {})
        atol = float(tol.get("logits_atol", 1e-3))
        agree = float(tol.get("mask_agreement", 0.999))
        rel = float(tol.get("feature_rel", 1e-4))
        if precision == "fp16":
            return cls(default_float=Tolerance("rel_l2", 1e-2), default_mask=Tolerance("agreement", 0.99),
                       miou=Tolerance("miou_delta", 0.02), stage_rel=1e-2)
        return cls(default_float=Tolerance("max_abs", atol), default_mask=Tolerance("agreement", agree),
                   miou=Tolerance("miou_delta", 0.01), stage_rel=rel)
