"""Validation of exported graphs against the eager model, on seeded realistic episodes.

Two phases, as in Polygraphy: run the backends (eager torch, onnxruntime), then compare every
output with a named tolerance and statistic; every output is reported, and one error lists all
failures.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from ..domains import Domain
from ..preprocess import normalize_image, prepare_mask

log = logging.getLogger(__name__)


@dataclass
class OutputCheck:
    """The comparison of one output of one graph with its eager reference."""

    graph: str
    output: str
    shape: list
    statistic: str
    value: float
    tolerance: float
    passed: bool
    max_abs: float | None = None
    mean_abs: float | None = None
    agreement: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        cmp = ">=" if self.statistic == "mask_agreement" else "<="
        return (
            f"[{mark}] {self.graph}.{self.output} {tuple(self.shape)}: {self.statistic} {self.value:.3g} "
            f"(tolerance {cmp} {self.tolerance:g})"
        )


def validation_episode(domain: Domain, shots: int, batch: int = 1, seed: int = 0, image_size: int | None = None):
    """Seeded synthetic episodes in the domain's style, preprocessed exactly as real inputs.

    Returns:
        dict of float32 arrays: query_img (B,3,S,S), support_imgs (B,K,3,S,S),
        support_masks (B,K,S,S).
    """
    from ..data.synthetic import synthetic_pair

    size = image_size or domain.image_size
    gray = domain.color == "grayscale"
    queries, supports, masks = [], [], []
    for b in range(batch):
        img, _ = synthetic_pair(size + 37, seed, class_index=b, image_index=0, grayscale=gray)
        queries.append(normalize_image(img, size, domain.mean, domain.std))
        s_imgs, s_masks = [], []
        for k in range(shots):
            img, mask = synthetic_pair(size + 37, seed, class_index=b, image_index=k + 1, grayscale=gray)
            s_imgs.append(normalize_image(img, size, domain.mean, domain.std))
            s_masks.append(prepare_mask(mask, size).astype(np.float32))
        supports.append(np.stack(s_imgs))
        masks.append(np.stack(s_masks))
    return {
        "query_img": np.stack(queries).astype(np.float32),
        "support_imgs": np.stack(supports).astype(np.float32),
        "support_masks": np.stack(masks).astype(np.float32),
    }


def compare_tensor(graph: str, name: str, got: np.ndarray, ref: np.ndarray, *, atol: float | None = None, rel: float | None = None) -> OutputCheck:
    """Max-abs comparison: against `atol`, or against `rel` x max|ref| (features of any scale)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return OutputCheck(graph, name, list(got.shape), "shape", float("inf"), 0.0, False)
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    finite = bool(np.isfinite(got).all())
    if rel is not None:
        scale = float(np.abs(ref).max()) or 1.0
        value, tol, stat = max_abs / scale, rel, "max_rel_to_peak"
    else:
        value, tol, stat = max_abs, float(atol), "max_abs"
    return OutputCheck(graph, name, list(got.shape), stat, value, tol, finite and value <= tol,
                       max_abs=max_abs, mean_abs=float(diff.mean()) if diff.size else 0.0)


def compare_mask(graph: str, name: str, got: np.ndarray, ref: np.ndarray, min_agreement: float) -> OutputCheck:
    """Share of pixels whose predicted class agrees with the eager model."""
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        return OutputCheck(graph, name, list(got.shape), "shape", float("inf"), 0.0, False)
    agreement = float((got.astype(np.int64) == ref.astype(np.int64)).mean())
    return OutputCheck(graph, name, list(got.shape), "mask_agreement", agreement, min_agreement,
                       agreement >= min_agreement, agreement=agreement)


def format_checks(checks: list[OutputCheck]) -> str:
    return "\n".join(c.line() for c in checks)
