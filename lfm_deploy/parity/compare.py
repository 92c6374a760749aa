"""The comparison phase, the one place where outputs are judged: error statistics, mask
agreement, one tolerance type, and the model's mask rules.

Pure numpy. The run phase (`lfm_deploy.parity.runners` + Polygraphy's `Comparator.run`)
produces outputs; everything here turns a pair (backend output, reference output) into numbers
and a verdict (`compare_output` -> `OutputCheck`), and never runs a model. Export validation,
lfm-verify and every reduced-precision gate use it, with `Tolerances` from the domain registry
or the manifest. The mask rules it applies (identity wherever the eager model is decisive,
channels on APM's branch cut left out of feature statistics, counted ACPA sign ties) are
explained in docs/numerics.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from ..tolerances import EvidenceRule, Tolerance, Tolerances

__all__ = [
    "BRANCH_CUT_REL",
    "MARGIN_BINS",
    "QUANTILES",
    "ErrorStats",
    "Evidence",
    "EvidenceRule",
    "MaskStats",
    "OutputCheck",
    "Tolerance",
    "Tolerances",
    "branch_cut_channels",
    "compare_output",
    "decision_margins",
    "error_stats",
    "evidence_of",
    "foreground_iou",
    "format_checks",
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
    #: Slices left out of the statistics (e.g. layer4 channels on APM's branch cut).
    excluded: int | None = None
    #: Maps compared against the eager model on the other side of an ACPA sign tie.
    sign_ties: int | None = None
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


def error_stats(got: np.ndarray, ref: np.ndarray, *, keep_sample: bool = False, seed: int = 0,
                exclude: np.ndarray | None = None, sign_ties: int | None = None) -> ErrorStats:
    """Error statistics of `got` against `ref` (computed in float64).

    Args:
        got: the backend's output.
        ref: the reference output, same shape.
        keep_sample: keep a random subsample (<= 200k) of |got - ref| for plots.
        seed: seed of that subsample.
        exclude: boolean mask over leading dims of `ref` (e.g. (N, 3, 2048) of layer4 features):
            slices left out of every statistic and counted in `excluded`.
        sign_ties: recorded as is (see `lfm_deploy.parity.numerics.resolve_acpa_ties`).

    Returns:
        `ErrorStats`.

    Raises:
        ValueError: the shapes differ.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"shape mismatch: got {got.shape}, reference {ref.shape}")
    shape = list(got.shape)
    excluded = None
    if exclude is not None:
        keep = ~np.asarray(exclude, dtype=bool)
        excluded = int(keep.size - np.count_nonzero(keep))
        got, ref = got[keep], ref[keep]
    nonfinite = int(got.size - np.count_nonzero(np.isfinite(got)))
    diff = np.abs(got - ref).ravel()
    if diff.size == 0:
        return ErrorStats(shape, 0.0, 0.0, 0.0, 0.0, 1.0, {_qname(q): 0.0 for q in QUANTILES}, 0, 0.0,
                          excluded, sign_ties)
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
        shape=shape, max_abs=max_abs, mean_abs=float(diff.mean()), rel_l2=rel_l2,
        max_rel_to_peak=(max_abs / peak) if peak > 0 else (0.0 if max_abs == 0 else math.inf),
        cosine=cosine, quantiles={_qname(q): float(v) for q, v in zip(QUANTILES, quant)},
        nonfinite=nonfinite, ref_peak=peak, excluded=excluded, sign_ties=sign_ties, sample=sample,
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
        decisive: differing pixels where the reference was decisive (its |logit margin| above
            `tie_margin`); None when no margins were given.
        tie_margin: the margin under which a pixel counts as a float32 tie.
        vacuous: the reference mask is a single class, so agreement says little (e.g. the
            untrained default weights predict background everywhere).
        flipped_margin_max: the largest reference |logit margin| among the differing pixels
            (how sure the reference was where they disagree); None without margins.
        flipped_margins: the differing pixels counted by reference |logit margin|, as
            {"<= 0.001": n, "<= 0.01": n, ..., "> 1": n} (`MARGIN_BINS`); None without margins.
    """

    shape: list
    agreement: float
    iou: float
    flipped: int
    decisive: int | None = None
    tie_margin: float | None = None
    vacuous: bool = False
    flipped_margin_max: float | None = None
    flipped_margins: dict | None = None

    def value(self, statistic: str) -> float:
        return float(getattr(self, statistic))

    def to_dict(self) -> dict:
        return asdict(self)


#: Upper edges of the reference-margin bins differing pixels are counted in (`MaskStats.flipped_margins`).
MARGIN_BINS = (1e-3, 1e-2, 0.1, 0.3, 1.0)


def decision_margins(shot_logits) -> np.ndarray:
    """Per pixel, the smallest |logit1 - logit0| over the shots: how close the eager model is to
    a tie. `shot_logits`: a sequence of K arrays (B, 2, H, W); returns (B, H, W)."""
    return np.stack([np.abs(np.diff(np.asarray(x, dtype=np.float64), axis=1)[:, 0]) for x in shot_logits]).min(axis=0)


def mask_stats(got: np.ndarray, ref: np.ndarray, *, margin: np.ndarray | None = None,
               tie_margin: float | None = None) -> MaskStats:
    """Pixel agreement and IoU between two masks, and the differences where the reference was
    decisive.

    Args:
        got, ref: masks of the same shape.
        margin: the reference model's |logit margin| per pixel (`decision_margins`), to count
            the differing pixels that are not float32 ties.
        tie_margin: the margin at or under which a pixel counts as a tie.

    Raises:
        ValueError: the shapes differ.
    """
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        raise ValueError(f"shape mismatch: got {got.shape}, reference {ref.shape}")
    differ = got.astype(np.int64) != ref.astype(np.int64)
    agreement = float(1.0 - differ.mean()) if differ.size else 1.0
    decisive = flipped_max = histogram = None
    if margin is not None:
        at = np.broadcast_to(margin, differ.shape)[differ]
        flipped_max = float(at.max()) if at.size else 0.0
        edges = np.asarray(MARGIN_BINS + (np.inf,))
        counts = np.histogram(at, bins=np.concatenate(([-np.inf], edges)))[0]
        histogram = {(f"<= {e:g}" if np.isfinite(e) else f"> {MARGIN_BINS[-1]:g}"): int(c) for e, c in zip(edges, counts)}
        if tie_margin is not None:
            decisive = int(np.count_nonzero(at > tie_margin))
    vacuous = bool(ref.size) and bool(np.all(ref == ref.flat[0]))
    return MaskStats(list(got.shape), agreement, foreground_iou(got, ref), int(np.count_nonzero(differ)),
                     decisive, tie_margin if decisive is not None else None, vacuous, flipped_max, histogram)


#: The class names evidence is counted by (mask value 0 and 1).
CLASSES = ("background", "foreground")


@dataclass(frozen=True)
class Evidence:
    """How much evidence the eager model's masks give a verdict (`evidence_of`).

    Attributes:
        episodes: episodes looked at.
        informative: per episode, whether it is informative (`EvidenceRule`).
        decisive: decided pixels of each class over the informative episodes {"background": n,
            "foreground": n}.
        rule: the rule applied.
        tie_margin: the |logit margin| above which a pixel counts as decided (None: margins
            unknown, every pixel counts).
    """

    episodes: int
    informative: tuple
    decisive: Mapping[str, int]
    rule: EvidenceRule
    tie_margin: float | None

    @property
    def informative_episodes(self) -> int:
        return int(sum(self.informative))

    @property
    def sufficient(self) -> bool:
        return (self.informative_episodes >= self.rule.min_episodes
                and all(self.decisive[c] >= self.rule.min_decisive_pixels for c in CLASSES))

    def missing(self) -> str:
        """What is missing, in words (empty when sufficient)."""
        if self.sufficient:
            return ""
        decided = f" decided by an eager |margin| > {self.tie_margin:g}" if self.tie_margin is not None else ""
        parts = []
        if self.informative_episodes < self.rule.min_episodes:
            parts.append(f"{self.informative_episodes} of {self.episodes} episodes have both classes in the eager "
                         f"mask (each on >= {self.rule.min_class_share:.0%} of the pixels{decided}); "
                         f"{self.rule.min_episodes} are needed")
        short = [c for c in CLASSES if self.decisive[c] < self.rule.min_decisive_pixels]
        if short:
            parts.append(", ".join(f"{self.decisive[c]} {c} pixels" for c in short)
                         + f" decided over them; {self.rule.min_decisive_pixels} of each are needed")
        return "no evidence: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"sufficient": self.sufficient, "episodes": self.episodes,
                "informative_episodes": self.informative_episodes, "decisive_pixels": dict(self.decisive),
                "tie_margin": self.tie_margin, "rule": self.rule.to_dict()}


def episode_informative(mask: np.ndarray, margin: np.ndarray | None, tie_margin: float | None,
                        rule: EvidenceRule) -> tuple[bool, dict]:
    """Whether one episode's eager mask is informative, and its decided pixels per class."""
    mask = np.asarray(mask) != 0
    decided = np.ones(mask.shape, bool) if margin is None or tie_margin is None else \
        np.broadcast_to(np.asarray(margin), mask.shape) > tie_margin
    counts = {"background": int(np.count_nonzero(decided & ~mask)), "foreground": int(np.count_nonzero(decided & mask))}
    return min(counts.values()) >= rule.min_class_share * mask.size, counts


def evidence_of(masks, margins, tie_margin: float | None, rule: EvidenceRule | None = None) -> Evidence:
    """The evidence the eager model's masks give a verdict.

    Args:
        masks: the eager masks, one array per episode.
        margins: the eager |logit margins| per episode (`decision_margins`), or None.
        tie_margin: the precision's bound (`Tolerances.tie_margin`).
        rule: the `EvidenceRule` (default: `EvidenceRule()`).
    """
    rule = rule or EvidenceRule()
    flags, totals = [], dict.fromkeys(CLASSES, 0)
    for i, mask in enumerate(masks):
        ok, counts = episode_informative(mask, None if margins is None else margins[i], tie_margin, rule)
        flags.append(ok)
        if ok:
            for c in CLASSES:
                totals[c] += counts[c]
    return Evidence(len(flags), tuple(flags), totals, rule, tie_margin if margins is not None else None)


@dataclass
class OutputCheck:
    """One output of one graph (or backend) against its reference: the verdict and its numbers.

    Attributes:
        graph: the graph or backend the output comes from.
        output: output name.
        kind: "logits", "features", "mask", or "missing" (not produced at all).
        stats: `ErrorStats` (floats) or `MaskStats` (masks); None when missing.
        tolerance: the `Tolerance` applied.
        value: the statistic's value.
        passed: within tolerance, finite, and (masks) no decisive pixel differs.
    """

    graph: str
    output: str
    kind: str
    stats: ErrorStats | MaskStats | None
    tolerance: Tolerance
    value: float
    passed: bool

    @property
    def is_mask(self) -> bool:
        return self.kind == "mask"

    def to_dict(self) -> dict:
        return {"graph": self.graph, "output": self.output, "kind": self.kind,
                "stats": self.stats.to_dict() if self.stats is not None else None,
                "tolerance": asdict(self.tolerance), "value": self.value, "passed": self.passed}

    def notes(self) -> list[str]:
        """What qualifies the number: exclusions, resolved ties, differing pixels, vacuity."""
        st, notes = self.stats, []
        if isinstance(st, ErrorStats):
            if st.excluded:
                notes.append(f"{st.excluded} branch-cut channels excluded")
            if st.sign_ties:
                notes.append(f"{st.sign_ties} maps compared with an ACPA sign tie resolved the other way")
            if st.nonfinite:
                notes.append(f"{st.nonfinite} non-finite values")
        elif isinstance(st, MaskStats):
            if st.flipped:
                notes.append(f"{st.flipped} pixels differ" + (
                    f", {st.decisive} of them beyond the eager near-tie margin {st.tie_margin:g}"
                    if st.decisive is not None else "") + (
                    f" (largest eager |margin| among them {st.flipped_margin_max:.3g})"
                    if st.flipped_margin_max is not None else ""))
            if st.vacuous:
                notes.append("VACUOUS: the reference mask is a single class, so agreement says little "
                             "(untrained weights?)")
        return notes

    def line(self) -> str:
        """One report line: `[ok  ] episode.mask (1, 400, 400): agreement 1.000000 (agreement >= 0.999)`."""
        mark = "ok  " if self.passed else "FAIL"
        if self.stats is None:
            return f"[{mark}] {self.graph}.{self.output}: missing"
        extra = "".join(f"; {n}" for n in self.notes())
        return (f"[{mark}] {self.graph}.{self.output} {tuple(self.stats.shape)}: {self.tolerance.statistic} "
                f"{self.tolerance.format(self.value)} ({self.tolerance.describe()}{extra})")


def compare_output(graph: str, name: str, got, ref, tolerance: Tolerance, kind: str, *,
                   exclude: np.ndarray | None = None, sign_ties: int | None = None,
                   margin: np.ndarray | None = None, tie_margin: float | None = None,
                   keep_sample: bool = False) -> OutputCheck:
    """Judge one output against its reference.

    Args:
        graph: graph or backend name (reported).
        name: output name.
        got, ref: the output and its reference (None `got`: the output is missing).
        tolerance: the bound (see `Tolerances.for_output`).
        kind: "logits", "features" or "mask".
        exclude, sign_ties: float outputs: see `error_stats`.
        margin, tie_margin: masks: the reference's |logit margin| per pixel and the tie margin;
            a differing pixel beyond it fails the check whatever the agreement.
        keep_sample: keep a sample of the errors for plots.

    Returns:
        `OutputCheck`.
    """
    if got is None:
        return OutputCheck(graph, name, "missing", None, tolerance, math.nan, False)
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        stats = MaskStats(list(got.shape), 0.0, 0.0, int(ref.size)) if kind == "mask" else None
        return OutputCheck(graph, name, kind, stats, tolerance, math.nan, False)
    if kind == "mask":
        st = mask_stats(got, ref, margin=margin, tie_margin=tie_margin)
        value = st.value(tolerance.statistic)
        return OutputCheck(graph, name, kind, st, tolerance, value, tolerance.passes(value) and not st.decisive)
    st = error_stats(got, ref, keep_sample=keep_sample, exclude=exclude, sign_ties=sign_ties)
    value = st.value(tolerance.statistic)
    return OutputCheck(graph, name, kind, st, tolerance, value, st.nonfinite == 0 and tolerance.passes(value))


def format_checks(checks: list[OutputCheck]) -> str:
    """One line per check."""
    return "\n".join(c.line() for c in checks)


#: A spectrum bin counts as on the atan2 branch cut when, with t = BRANCH_CUT_REL x sum|x| of its
#: map, real < -t and |imag| <= t: the sign of its imaginary part, hence +pi or -pi, is then
#: decided by float32 rounding *upstream* of APM. The backbone alone, run by onnxruntime and by
#: PyTorch on the same images, already moves layer4 spectrum bins by up to 4.6e-6 x sum|x| (max
#: over the 5-shot validation episodes; 99th percentile 1.8e-6), so the bound sits at twice that
#: (docs/numerics.md, "APM's branch cut").
BRANCH_CUT_REL = 1e-5


def branch_cut_channels(layer4: np.ndarray) -> np.ndarray:
    """Which APM input channels have a spectrum bin on the atan2 branch cut.

    APM scales the phase (P' = sigmoid(w) * P), so such a bin comes out near +s*pi in one
    float32 implementation and -s*pi in another: the channel's APM output differs by up to
    2 A' sin(s*pi) / (H*W) per pixel, by design of the model, not of the export. The
    self-conjugate bins (DC; Nyquist for even sizes) are exactly real and excluded: for them the
    sign of pi does not change the APM output (cos is even), and ACPA's handling is exact.

    Args:
        layer4: APM input features (..., H, W), e.g. (N, 3, 2048, 13, 13).

    Returns:
        Boolean array over the leading dims (..., ) marking those channels.
    """
    x = np.asarray(layer4, dtype=np.float64)
    h, w = x.shape[-2:]
    spec = np.fft.fft2(x)
    scale = np.abs(x).sum(axis=(-2, -1), keepdims=True)
    tol = BRANCH_CUT_REL * scale  # bins below it in magnitude carry no weight in the output
    near = (spec.real < -tol) & (np.abs(spec.imag) <= tol)
    for i in {0, h // 2} if h % 2 == 0 else {0}:
        for j in {0, w // 2} if w % 2 == 0 else {0}:
            near[..., i, j] = False
    return near.reshape(near.shape[:-2] + (-1,)).any(axis=-1)
