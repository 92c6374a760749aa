"""Domain registry: everything that differs between target domains, as data.

Adding a domain means adding one `Domain` entry here; no stage branches on a domain's name.
Pure Python and numpy (no torch) so that the runtime can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .errors import DomainError
from .tolerances import EvidenceRule, Tolerance, Tolerances

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FinetuneSchedule:
    """Fine-tuning defaults for the masker (paper: ~60 iterations, a learning rate per dataset)."""

    iterations: int = 60
    lr: float = 0.01
    optimizer: str = "adam"


def float32_parity(logits_atol: float = 1e-3, feature_rel: float = 1e-4, mask_agreement: float = 0.999,
                   dft_logits_atol: float = 5e-3, dft_feature_rel: float = 2e-3) -> dict[str, Tolerances]:
    """Float32 parity tolerances of an export against the eager model, per FFT lowering.

    The eager model itself differs from its float64 twin by ~6e-6 on the logits, so the matmul
    bounds leave room for reordered float sums only; ONNX DFT in onnxruntime is less accurate
    (phase errors up to ~6e-4 rad), hence its looser bounds (docs/numerics.md).
    """
    return {"matmul": Tolerances.float32(logits_atol, feature_rel, mask_agreement),
            "dft": Tolerances.float32(dft_logits_atol, dft_feature_rel, mask_agreement)}


#: The reduced precisions every artifact is gated on (`Domain.precision_gates`).
REDUCED_PRECISIONS = ("fp16", "bf16", "int8")
#: What an export can be made at (`lfm-export --precision`), and what `precision=` accepts in the
#: runtime (`lfm-predict` / `lfm-serve --precision`: which graphs run, `lfm_deploy.runtime.precisions`).
EXPORT_PRECISIONS = ("fp32", *REDUCED_PRECISIONS)
RUN_PRECISIONS = ("auto", *EXPORT_PRECISIONS)


def reduced_precision_gates(agreement: float = 0.99, miou_points: float = 0.5,
                            margins: Mapping[str, float] | None = None,
                            evidence: EvidenceRule | None = None) -> dict[str, Tolerances]:
    """The accuracy gate of each reduced precision against the eager float32 model.

    A reduced-precision path passes when, over the gate's episodes, its masks agree with the eager
    model's on at least `agreement` of the pixels, its mIoU (against the episodes' ground truth)
    is within `miou_points` points of the eager model's, and no differing pixel had an eager
    |logit margin| above the precision's bound (`margins`): where the eager model was sure, the
    fast path must not disagree (bounds per precision: docs/precision.md). Logits and features
    are reported, not gated: reduced precision moves them by design. No verdict without evidence:
    the gate fails unless the eager masks are informative enough (`evidence`, `EvidenceRule`).
    """
    evidence = evidence or EvidenceRule()
    bounds = {"fp16": 0.1, "bf16": 0.25, "int8": 0.5, **(margins or {})}
    return {
        p: Tolerances(logits=Tolerance("rel_l2", None), features=Tolerance("rel_l2", None),
                      mask=Tolerance("agreement", agreement), tie_margin=float(bounds[p]),
                      miou=Tolerance("miou_delta", miou_points / 100.0), evidence=evidence, stage_rel=1e-2)
        for p in REDUCED_PRECISIONS
    }


@dataclass(frozen=True)
class Domain:
    """One target domain of the CD-FSS benchmark (or a user's own).

    Attributes:
        name: registry key.
        title: human-readable name.
        layout: dataset layout understood by `lfm_deploy.data` (one reader per layout).
        folder: the domain's folder under a dataset root.
        num_classes: classes of the benchmark's test split.
        test_episodes: episodes of the benchmark protocol.
        image_size: square input size the model runs at.
        color: "rgb" or "grayscale" (grayscale images are replicated to 3 channels).
        mean, std: normalisation applied after scaling pixels to [0, 1].
        default_shots: shots used by export and evaluation when not given.
        finetune: fine-tuning schedule for the masker.
        tolerances: float32 parity tolerances per FFT lowering ("matmul", "dft"), the one
            `lfm_deploy.parity.compare.Tolerances` type every check uses.
        precision_gates: the accuracy gate per reduced precision ("fp16", "bf16", "int8"), same
            type (`reduced_precision_gates`).
        aliases: other accepted names.
    """

    name: str
    title: str
    layout: str
    folder: str
    num_classes: int
    test_episodes: int
    image_size: int = 400
    color: str = "rgb"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_shots: int = 1
    finetune: FinetuneSchedule = field(default_factory=FinetuneSchedule)
    tolerances: Mapping[str, Tolerances] = field(default_factory=float32_parity, compare=False)
    precision_gates: Mapping[str, Tolerances] = field(default_factory=reduced_precision_gates, compare=False)
    aliases: tuple[str, ...] = ()

    def preprocessing(self) -> dict:
        """The preprocessing contract, as written into export manifests."""
        return {"image_size": [self.image_size, self.image_size], "color": self.color, "scale": 1.0 / 255.0,
                "mean": list(self.mean), "std": list(self.std), "image_resize": "PIL bilinear",
                "mask_resize": "nearest (torch.nn.functional.interpolate semantics)", "mask_threshold": 128}


# Learning rates: the paper reports 0.1 for Chest X-ray and 0.01 / 1e-5 for the others without
# a per-dataset mapping (docs/data.md, "Fine-tuning the masker"). FSS-1000 is closest to the
# source domain (PASCAL), so it gets the smallest rate; this mapping is an inference and can be
# overridden with --lr.
_DOMAINS = [
    Domain(name="deepglobe", title="Deepglobe (satellite land cover)", layout="deepglobe", folder="Deepglobe",
           num_classes=6, test_episodes=600, finetune=FinetuneSchedule(iterations=60, lr=0.01)),
    Domain(name="isic", title="ISIC2018 (skin lesions)", layout="isic", folder="ISIC", num_classes=3,
           test_episodes=600, finetune=FinetuneSchedule(iterations=60, lr=0.01), aliases=("isic2018",)),
    Domain(name="chest_xray", title="Chest X-ray (lung segmentation)", layout="chest_xray", folder="LungSegmentation",
           num_classes=1, test_episodes=600, color="grayscale", finetune=FinetuneSchedule(iterations=60, lr=0.1),
           aliases=("lung", "chest-xray", "chestxray")),
    Domain(name="fss1000", title="FSS-1000 (everyday objects)", layout="fss1000", folder="FSS-1000", num_classes=240,
           test_episodes=2400, finetune=FinetuneSchedule(iterations=60, lr=1e-5), aliases=("fss-1000", "fss")),
]

_REGISTRY: dict[str, Domain] = {d.name: d for d in _DOMAINS}
_ALIASES: dict[str, str] = {a: d.name for d in _DOMAINS for a in d.aliases}


def list_domains() -> list[str]:
    """Names of all registered domains."""
    return list(_REGISTRY)


def get_domain(name: str | Domain) -> Domain:
    """Look a domain up by name or alias (case-insensitive).

    Raises:
        DomainError: the name is not registered.
    """
    if isinstance(name, Domain):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise DomainError(f"unknown domain {name!r}; choose one of: {', '.join(list_domains())}")
    return _REGISTRY[key]


def register_domain(domain: Domain, *, overwrite: bool = False) -> Domain:
    """Add a user's own domain to the registry (e.g. before fine-tuning on a custom support set)."""
    if domain.name in _REGISTRY and not overwrite:
        raise DomainError(f"domain {domain.name!r} is already registered; pass overwrite=True")
    if domain.color not in ("rgb", "grayscale"):
        raise DomainError(f"domain color must be 'rgb' or 'grayscale', got {domain.color!r}")
    _REGISTRY[domain.name] = domain
    for alias in domain.aliases:
        _ALIASES[alias] = domain.name
    return domain
