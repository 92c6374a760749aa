"""The accuracy gate of every reduced precision: the eager float32 model's masks against a
faster path's, on labelled episodes, judged by the domain registry's thresholds.

One gate for fp16 graphs, OpenVINO bf16 and int8 QDQ graphs (export, lfm-verify, benchmarks):
the run phase (`eager_reference` and any runner with the episode graph's contract, through
`run_feeds`), then `compare_output` with the precision's `Tolerances`. The episodes, thresholds,
evidence rule ("no evidence, no pass"; `informative_episodes` keeps the synthetic episodes whose
eager masks carry information) and report are in docs/precision.md, "The gate".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..contract import default_io
from .compare import Evidence, OutputCheck, Tolerances, compare_output, decision_margins, episode_informative, \
    evidence_of, foreground_iou
from .runners import run_feeds

log = logging.getLogger(__name__)

__all__ = ["EVIDENCE_HINT", "EagerReference", "GateData", "GateReport", "eager_reference",
           "informative_episodes", "run_gate"]

#: How a user supplies evidence, appended to every "no evidence" failure.
EVIDENCE_HINT = ("gate on labelled images of your domain (lfm-export --calibration DIR: <stem>.jpg + <stem>_mask.png "
                 "pairs, at least K + 1 per class) with weights that segment them; the untrained default weights "
                 "predict one class and can never pass")


@dataclass
class GateData:
    """Labelled episodes a gate runs on.

    Attributes:
        feeds: episode-contract feed dicts (batch 1 each).
        truths: the queries' ground-truth masks, (1, S, S) each.
        label: where they come from, as written into reports and the manifest.
    """

    feeds: list
    truths: list
    label: str

    def __add__(self, other: "GateData") -> "GateData":
        return GateData(self.feeds + other.feeds, self.truths + other.truths, f"{self.label}; {other.label}")

    def __len__(self) -> int:
        return len(self.feeds)


@dataclass
class EagerReference:
    """The eager float32 model's results on a `GateData`: masks, |logit margins|, K = 1 logits."""

    masks: list
    margins: list
    logits: list | None
    ms: float

    def evidence(self, tolerances: Tolerances) -> Evidence:
        """The evidence these masks give a verdict under `tolerances` (its rule and tie margin)."""
        return evidence_of(self.masks, self.margins, tolerances.tie_margin, tolerances.evidence)

    def __add__(self, other: "EagerReference") -> "EagerReference":
        n, m = len(self.masks), len(other.masks)
        logits = self.logits + other.logits if self.logits is not None and other.logits is not None else None
        return EagerReference(self.masks + other.masks, self.margins + other.margins, logits,
                              (self.ms * n + other.ms * m) / max(n + m, 1))


def eager_reference(model, data: GateData, shots: int, *, threads: int | None = None) -> EagerReference:
    """Run the eager float32 model on every episode: per-shot logits, margins and voted masks.

    Args:
        model: the eager `LFMHSNet` (float32, eval mode).
        data: the episodes.
        shots: K.
        threads: torch threads while running (restored afterwards).
    """
    import torch

    from ..models.hsnet import vote_masks

    io = default_io("episode", model.image_size, shots)
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    masks, margins, logits, times = [], [], [], []
    try:
        for feed in data.feeds:
            q, s, m = (torch.from_numpy(np.ascontiguousarray(feed[io.input(r)])) for r in ("query", "supports", "masks"))
            start = time.perf_counter()
            with torch.inference_mode():
                per_shot = model.shot_logits(q, s, m)
            times.append(time.perf_counter() - start)
            votes = torch.stack([x.argmax(1) for x in per_shot]).sum(0)
            masks.append(vote_masks(votes, shots).to(torch.uint8).numpy())
            margins.append(decision_margins([x.numpy() for x in per_shot]))
            logits.append(per_shot[0].numpy())
    finally:
        torch.set_num_threads(saved)
    return EagerReference(masks, margins, logits if shots == 1 else None, 1e3 * float(np.mean(times)))


@dataclass
class GateReport:
    """The verdict of one reduced-precision path, with every figure it rests on.

    Attributes:
        precision: "fp16", "bf16" or "int8".
        backend: what ran (runtime, graphs, device).
        data: where the episodes come from.
        episodes: how many.
        tolerances: the thresholds applied.
        mask: the mask comparison over all episodes (agreement, IoU, differing pixels by eager margin).
        logits: the K = 1 logits' error statistics (reported, not gated); None for K > 1.
        miou_eager, miou: mean foreground IoU against the ground truth, eager and candidate.
        eager_ms, candidate_ms: mean time per episode of each side (the candidate's includes
            its support encoding where it re-encodes).
    """

    precision: str
    backend: str
    data: str
    episodes: int
    tolerances: Tolerances
    mask: OutputCheck
    logits: OutputCheck | None
    miou_eager: float
    miou: float
    eager_ms: float | None = None
    candidate_ms: float | None = None
    notes: list = field(default_factory=list)
    evidence: Evidence | None = None

    @property
    def miou_delta(self) -> float:
        return self.miou - self.miou_eager

    @property
    def miou_passed(self) -> bool:
        return self.tolerances.miou.passes(self.miou_delta)

    @property
    def vacuous(self) -> bool:
        """The eager masks give the verdict no evidence (`Evidence.sufficient` is False)."""
        if self.evidence is not None:
            return not self.evidence.sufficient
        return bool(self.mask.stats is not None and self.mask.stats.vacuous)

    @property
    def failures(self) -> list[str]:
        """One phrase per failed threshold, the missing evidence first (empty when the gate passes)."""
        out = []
        st, tol = self.mask.stats, self.tolerances
        if self.evidence is not None and not self.evidence.sufficient:
            out.append(self.evidence.missing())
        if st is None:
            return out + ["no mask output"]
        if not tol.mask.passes(st.agreement):
            out.append(f"mask agreement {st.agreement:.4%} < {tol.mask.limit:.2%}")
        if st.decisive:
            out.append(f"{st.decisive} differing pixels where the eager |margin| > {tol.tie_margin:g} "
                       f"(largest {st.flipped_margin_max:.3g})")
        if not self.miou_passed:
            out.append(f"mIoU difference {100 * self.miou_delta:+.2f} points (bound {100 * tol.miou.limit:g})")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        st = self.mask.stats
        return {
            "precision": self.precision, "backend": self.backend, "data": self.data, "episodes": self.episodes,
            "passed": self.passed, "failures": self.failures, "vacuous": self.vacuous,
            "agreement": st.agreement if st else None, "mask_iou": st.iou if st else None,
            "differing_pixels": st.flipped if st else None, "pixels": int(np.prod(st.shape)) if st else None,
            "differing_beyond_margin": st.decisive if st else None,
            "max_eager_margin_of_differing": st.flipped_margin_max if st else None,
            "differing_by_eager_margin": st.flipped_margins if st else None,
            "miou_eager": self.miou_eager, "miou": self.miou, "miou_delta_points": 100 * self.miou_delta,
            "logits": self.logits.stats.to_dict() if self.logits is not None and self.logits.stats is not None else None,
            "thresholds": {"agreement": self.tolerances.mask.limit, "max_eager_margin": self.tolerances.tie_margin,
                           "miou_points": 100 * self.tolerances.miou.limit},
            "eager_ms": self.eager_ms, "candidate_ms": self.candidate_ms, "notes": list(self.notes),
            "evidence": self.evidence.to_dict() if self.evidence is not None else None,
        }

    def lines(self) -> list[str]:
        """The verdict and its figures, for the terminal and logs."""
        st = self.mask.stats
        head = (f"[{'ok' if self.passed else 'FAIL'}] {self.precision} gate, {self.backend}: "
                f"{self.episodes} episodes ({self.data})")
        lines = [head]
        if st is not None:
            lines.append(f"    mask agreement {st.agreement:.4%} (>= {self.tolerances.mask.limit:.2%}), mask IoU "
                         f"{st.iou:.4f}, {st.flipped} of {int(np.prod(st.shape))} pixels differ")
            if st.flipped:
                bins = ", ".join(f"{k}: {v}" for k, v in (st.flipped_margins or {}).items() if v)
                lines.append(f"    eager |margin| of the differing pixels: largest {st.flipped_margin_max:.3g} "
                             f"(bound {self.tolerances.tie_margin:g}); {bins}")
        lines.append(f"    mIoU {100 * self.miou:.2f} vs eager {100 * self.miou_eager:.2f}: "
                     f"{100 * self.miou_delta:+.2f} points (bound {100 * self.tolerances.miou.limit:g})")
        if self.logits is not None and self.logits.stats is not None:
            ls = self.logits.stats
            lines.append(f"    logits (reported): max |error| {ls.max_abs:.3g}, rel L2 {ls.rel_l2:.3g}, "
                         f"peak |logit| {ls.ref_peak:.3g}")
        if self.evidence is not None:
            ev = self.evidence
            lines.append(f"    evidence: {ev.informative_episodes} of {ev.episodes} episodes informative, decided "
                         f"pixels {ev.decisive['background']} background / {ev.decisive['foreground']} foreground "
                         f"(need {ev.rule.min_episodes} episodes, {ev.rule.min_decisive_pixels} of each)")
        if self.vacuous:
            lines.append(f"    NO EVIDENCE: the eager masks carry too little information for a verdict; {EVIDENCE_HINT}")
        lines.extend(f"    {n}" for n in self.notes)
        if not self.passed:
            lines.append("    failed: " + "; ".join(self.failures))
        return lines


def run_gate(reference: EagerReference, candidate, data: GateData, tolerances: Tolerances, *, precision: str,
             backend: str, shots: int, image_size: int) -> GateReport:
    """Run a reduced-precision candidate on the gate's episodes and judge it against the eager model.

    Args:
        reference: `eager_reference` on the same `data`.
        candidate: a runner with the episode graph's contract (`Backend.runner` of the backend registry,
            `SplitRunner`, `TrtRunner`).
        data: the labelled episodes.
        tolerances: the precision's gate (`Domain.precision_gates[precision]`).
        precision, backend: labels for the report.
        shots, image_size: the export's K and S (the contract's tensor names).

    Returns:
        `GateReport` (check `.passed`).
    """
    io = default_io("episode", image_size, shots)
    outputs, ms = run_feeds(candidate, data.feeds)
    masks = outputs[io.output("mask")]
    mask = compare_output(backend, io.output("mask"), np.concatenate(masks), np.concatenate(reference.masks),
                          tolerances.mask, "mask", margin=np.concatenate(reference.margins),
                          tie_margin=tolerances.tie_margin)
    logits = None
    if reference.logits is not None and io.has_output("logits") and io.output("logits") in outputs:
        logits = compare_output(backend, io.output("logits"), np.concatenate(outputs[io.output("logits")]),
                                np.concatenate(reference.logits), tolerances.logits, "logits")
    miou_eager = float(np.mean([foreground_iou(m, t) for m, t in zip(reference.masks, data.truths)]))
    miou = float(np.mean([foreground_iou(m, t) for m, t in zip(masks, data.truths)]))
    report = GateReport(precision, backend, data.label, len(data), tolerances, mask, logits, miou_eager, miou,
                        reference.ms, ms, evidence=reference.evidence(tolerances))
    for line in report.lines():  # a failure is the caller's to report (the int8 search expects some)
        log.info("%s", line)
    return report


def informative_episodes(model, draw: Callable[[int], tuple[list, list]], n: int, first_seed: int, shots: int,
                         tolerances: Tolerances, *, max_draws: int | None = None, label: str = "validation episodes",
                         threads: int | None = None) -> tuple[GateData, EagerReference]:
    """Draw seeded synthetic episodes until `n` of them are informative for the eager model.

    An episode whose eager mask is (nearly) one class is no evidence (`EvidenceRule`): episodes
    are drawn under seeds `first_seed`, `first_seed + 1`, ... and kept when informative, until `n`
    are kept and they hold enough decided pixels of each class, up to `max_draws` draws. The
    label says how many were drawn and kept; the caller checks the evidence of what was kept.

    Args:
        model: the eager float32 model.
        draw: seed -> ([feed], [truth]) for one episode (`parity_episodes(meta, 1, seed)`).
        n: informative episodes wanted.
        first_seed: the first seed drawn.
        shots: K.
        tolerances: the precision's gate (its evidence rule and tie margin).
        max_draws: the most episodes drawn (None: 3n).
        label: what the episodes are, for reports.
        threads: torch threads.

    Returns:
        (GateData of the kept episodes, their `EagerReference`). Fewer than `n` are kept when the
        model's masks are uninformative on every draw; more when `n` hold too few decided pixels.
    """
    rule = tolerances.evidence
    max_draws = max(n, 3 * n if max_draws is None else int(max_draws))
    feeds, truths, seeds = [], [], []
    ref = EagerReference([], [], [] if shots == 1 else None, 0.0)
    drawn = 0
    for seed in range(first_seed, first_seed + max_draws):
        if len(feeds) >= n and (rule is None or ref.evidence(tolerances).sufficient):
            break
        f, t = draw(seed)
        one = eager_reference(model, GateData(f, t, label), shots, threads=threads)
        drawn += 1
        if rule is None or episode_informative(one.masks[0], one.margins[0], tolerances.tie_margin, rule)[0]:
            feeds += f
            truths += t
            seeds.append(seed)
            ref = ref + one
    kept = ", ".join(map(str, seeds)) if seeds else "none"
    text = (f"{label} (synthetic, seeds {first_seed}..{first_seed + drawn - 1}: {drawn} drawn, {len(seeds)} with "
            f"informative eager masks kept: {kept})")
    log.info("%s", text)
    return GateData(feeds, truths, text), ref
