"""The tolerance types: what a comparison of a backend with the eager model is held to.

Plain frozen dataclasses with no numerics: the domain registry (`lfm_deploy.domains`) declares
its parity tolerances and precision gates with them, and the comparison phase
(`lfm_deploy.parity.compare`) applies them. They sit here, below both, so that neither imports
the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

__all__ = ["KINDS", "EvidenceRule", "Tolerance", "Tolerances"]


@dataclass(frozen=True)
class Tolerance:
    """A named statistic and its bound.

    Attributes:
        statistic: "max_abs", "rel_l2", "p99", "max_rel_to_peak", ... (upper bounds) or
            "agreement", "iou", "cosine" (lower bounds), or "miou_delta" (bound on |delta|).
        limit: the bound.
    """

    statistic: str
    limit: float | None

    @property
    def lower_bound(self) -> bool:
        return self.statistic in ("agreement", "iou", "cosine")

    @property
    def gated(self) -> bool:
        """False for a statistic that is reported only (limit None), e.g. reduced-precision logits."""
        return self.limit is not None

    def passes(self, value: float) -> bool:
        if not self.gated:
            return True
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
        if not self.gated:
            return "reported, not gated"
        if self.statistic == "miou_delta":
            return f"|miou_delta| <= {self.limit:g}"
        return f"{self.statistic} {'>=' if self.lower_bound else '<='} {self.limit:g}"


@dataclass(frozen=True)
class EvidenceRule:
    """What a reduced-precision verdict must rest on: masks of the eager model that carry
    information (docs/precision.md, "Evidence"). A gate without enough evidence fails; it never
    passes. An episode is *informative* when each class of the eager mask covers at least
    `min_class_share` of its pixels with pixels the eager model decided (|logit margin| above the
    precision's tie margin).

    Attributes:
        min_class_share: per informative episode, the smallest share of the pixels each class
            must decisively hold (0.02: 512 pixels of a 160 px episode, 3,200 at 400 px).
        min_episodes: informative episodes needed.
        min_decisive_pixels: decided pixels needed per class over the informative episodes.
    """

    min_class_share: float = 0.02
    min_episodes: int = 2
    min_decisive_pixels: int = 2000

    def to_dict(self) -> dict:
        return asdict(self)


#: Output kinds a tolerance is chosen by (the graph contract's roles: logits, encoder features, masks).
KINDS = ("logits", "features", "mask")


@dataclass(frozen=True)
class Tolerances:
    """The tolerances of one comparison: one type for export validation, lfm-verify and every
    reduced-precision gate.

    Attributes:
        logits: bound for logits outputs (`logits`, `shot_logits`, intermediate stages' floats).
        features: bound for the encoder's support features (scale-free: relative to the peak).
        mask: bound for masks (agreement).
        tie_margin: masks must moreover be identical wherever the reference is decisive, i.e.
            its |logit margin| exceeds this (None: agreement only). With twice the logits bound,
            a pixel beyond it cannot flip unless the logits are out of tolerance.
        miou: bound on |mIoU(backend) - mIoU(eager float32)| on the sample episodes.
        evidence: what the verdict must rest on (`EvidenceRule`; reduced-precision gates). None
            for float32 parity, which checks identity wherever the eager model is decisive.
        stage_rel: bound on max_rel_to_peak for the intermediate stages (layerwise mode).
        outputs: per-output overrides {output name: Tolerance}.
    """

    logits: Tolerance = Tolerance("max_abs", 1e-3)
    features: Tolerance = Tolerance("max_rel_to_peak", 1e-4)
    mask: Tolerance = Tolerance("agreement", 0.999)
    tie_margin: float | None = 2e-3
    miou: Tolerance = Tolerance("miou_delta", 0.01)
    evidence: EvidenceRule | None = None
    stage_rel: float = 1e-4
    outputs: Mapping[str, Tolerance] = field(default_factory=dict)

    def for_output(self, name: str, kind: str) -> Tolerance:
        """The tolerance of output `name` of kind "logits", "features" or "mask"."""
        if name in self.outputs:
            return self.outputs[name]
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}; one of {', '.join(KINDS)}")
        return getattr(self, kind)

    def to_dict(self) -> dict:
        return {"logits": asdict(self.logits), "features": asdict(self.features), "mask": asdict(self.mask),
                "tie_margin": self.tie_margin, "miou": asdict(self.miou), "stage_rel": self.stage_rel,
                "evidence": self.evidence.to_dict() if self.evidence is not None else None,
                "outputs": {k: asdict(v) for k, v in self.outputs.items()}}

    @classmethod
    def float32(cls, logits_atol: float, feature_rel: float, mask_agreement: float) -> "Tolerances":
        """Float32 parity with the eager model: max |logit error| <= `logits_atol`, features
        within `feature_rel` of their peak, masks agreeing on `mask_agreement` of the pixels and
        identical wherever the eager margin exceeds 2 x `logits_atol`."""
        return cls(logits=Tolerance("max_abs", logits_atol), features=Tolerance("max_rel_to_peak", feature_rel),
                   mask=Tolerance("agreement", mask_agreement), tie_margin=2 * logits_atol, stage_rel=feature_rel)

    def to_manifest(self):
        """The manifest's `tolerances` entry (float32 parity): a `ParityTolerances`."""
        from .manifest import ParityTolerances

        return ParityTolerances(self.logits.limit, self.features.limit, self.mask.limit, self.tie_margin)

    @classmethod
    def from_manifest(cls, manifest) -> "Tolerances":
        """The export's own float32 parity tolerances (its `Manifest.tolerances`; the defaults
        of `ParityTolerances` for a manifest without them).

        Reduced precisions are judged by the domain registry's gates
        (`lfm_deploy.domains.Domain.precision_gates`), recorded in the manifest of a
        reduced-precision export under `precision.gate`.
        """
        from .manifest import ParityTolerances

        tol = manifest.tolerances or ParityTolerances()
        return cls.float32(float(tol.logits_atol), float(tol.feature_rel), float(tol.mask_agreement))
