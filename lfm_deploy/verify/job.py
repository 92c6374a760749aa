"""`verify_artifacts`: the whole `lfm-verify` job, as one public function.

Run phase: the same seeded episodes through the eager model in float64 (the reference) and every
backend of the registry (docs/backends.md), one Polygraphy `Comparator.run` per backend, so a
backend that cannot start is listed as skipped with the reason and stops none of the others.
Comparison phase (`lfm_deploy.parity.compare`): per backend and output, error statistics, mask
agreement and IoU, and the mIoU difference from the eager float32 model, against the domain's
gate for reduced precisions (`Domain.precision_gates`) or the export's parity tolerances for
float32. Optionally layer-wise: the first intermediate stage outside tolerance.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import BackendUnavailable, LFMError
from ..manifest import Manifest
from ..runtime.backends import Backend, PlanContext, Planned, backends as registry, get_backend
from ..parity.compare import OutputCheck, Tolerance, Tolerances, compare_output, decision_margins, evidence_of, \
    foreground_iou
from ..parity.gate import EVIDENCE_HINT
from ..parity.episodes import parity_episodes

log = logging.getLogger(__name__)

__all__ = [
    "REFERENCE",
    "BackendResult",
    "VerifyReport",
    "verify_artifacts",
]

REFERENCE = "eager-fp64"


# ----------------------------------------------------------------------------- results
@dataclass
class BackendResult:
    """What happened to one backend.

    Attributes:
        name: backend name ("ort-cpu", ...).
        status: "reference", "passed", "failed", "skipped" or "error".
        reason: why it was skipped, or the error / failed checks.
        description: what ran (device, providers, threads).
        outputs: per-output comparisons.
        miou: mean foreground IoU of its masks against the episodes' ground truth.
        miou_delta: miou minus the eager float32 model's.
        miou_check: the mIoU tolerance verdict.
        mean_ms: mean inference time per episode.
        evidence: reduced precisions: how much evidence the reference masks give the verdict
            (`lfm_deploy.parity.compare.Evidence.to_dict`); without enough, the backend fails.
    """

    name: str
    status: str
    reason: str = ""
    description: str = ""
    outputs: list[OutputCheck] = field(default_factory=list)
    miou: float | None = None
    miou_delta: float | None = None
    miou_passed: bool | None = None
    miou_tolerance: Tolerance | None = None
    mean_ms: float | None = None
    evidence: dict | None = None

    @property
    def ran(self) -> bool:
        return self.status in ("reference", "passed", "failed")

    def to_dict(self) -> dict:
        return {
            "name": self.name, "status": self.status, "reason": self.reason, "description": self.description,
            "outputs": [o.to_dict() for o in self.outputs], "miou": self.miou, "miou_delta": self.miou_delta,
            "miou_passed": self.miou_passed,
            "miou_tolerance": asdict(self.miou_tolerance) if self.miou_tolerance else None, "mean_ms": self.mean_ms,
            "evidence": self.evidence,
        }


@dataclass
class VerifyReport:
    """The result of `verify_artifacts`."""

    artifact_dir: str
    model: dict
    episodes: int
    seed: int
    reference: str
    backends: list[BackendResult]
    layerwise: dict | None = None
    environment: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list[BackendResult]:
        """Backends that ran (or crashed) and are outside tolerance."""
        return [b for b in self.backends if b.status in ("failed", "error")]

    @property
    def passed(self) -> bool:
        return not self.failures

    def backend(self, name: str) -> BackendResult:
        return next(b for b in self.backends if b.name == name)

    def to_dict(self) -> dict:
        return {
            "artifact_dir": self.artifact_dir, "model": self.model, "episodes": self.episodes, "seed": self.seed,
            "reference": self.reference, "passed": self.passed, "backends": [b.to_dict() for b in self.backends],
            "layerwise": self.layerwise, "environment": self.environment, "seconds": round(self.seconds, 1),
        }

    def summary_lines(self) -> list[str]:
        """One line per backend (and per output that ran), for logs and the terminal."""
        lines = []
        for b in self.backends:
            if not b.ran:
                lines.append(f"[{b.status}] {b.name}: {b.reason}")
                continue
            if b.status == "reference":
                lines.append(f"[reference] {b.name} ({b.description})")
                continue
            lines.append(f"[{'ok' if b.status == 'passed' else 'FAIL'}] {b.name} ({b.description})")
            for o in b.outputs:
                notes = "".join(f"; {n}" for n in o.notes())
                lines.append(f"    {o.output}: {o.tolerance.statistic} {o.tolerance.format(o.value)} "
                             f"({o.tolerance.describe()}{notes}) {'ok' if o.passed else 'FAIL'}")
            if b.miou_delta is not None:
                lines.append(f"    miou delta vs eager-fp32: {b.miou_delta:+.4f} ({b.miou_tolerance.describe()}) "
                             f"{'ok' if b.miou_passed else 'FAIL'}")
        if self.layerwise:
            first = self.layerwise.get("first_mismatch")
            lines.append(f"layerwise ({self.layerwise['backend']}): "
                         + (f"first mismatch at {first}" if first else "every stage within tolerance"))
        return lines


# ----------------------------------------------------------------------------- backends
def _plan_context(artifact_dir: Path, manifest: Manifest, threads: int | None, fp16_onnx: Path | None,
                  model_loader: Callable[[str], Callable]) -> PlanContext:
    # the float32 graphs, whatever the runtime loads
    files = {g: artifact_dir / manifest.float32_file(g) for g in manifest.graphs}
    files.update(fp32=files.pop("episode"),
                 int8=artifact_dir / manifest.graphs["episode"].file if manifest.served_precision.name == "int8" else None,
                 fp16=fp16_onnx if fp16_onnx is not None and fp16_onnx.is_file() else None)
    missing = {
        "int8": "the export has no int8 graphs; make them with `lfm-export ... --precision int8`",
        "fp16": f"no fp16 episode graph ({artifact_dir / 'engines' / 'episode.fp16.onnx'}); make one with "
                f"`lfm-build-engine {artifact_dir} --precision fp16 --onnx-only` or pass --fp16-onnx",
    }
    return PlanContext(artifact_dir, manifest, threads, files, missing, model_loader)


def _plan(backend: Backend, ctx: PlanContext) -> Planned:
    """One backend's run: its own plan, or its session on the episode graph of its precision."""
    if backend.plan is not None:
        return backend.planner()(backend, ctx)
    name, precision = backend.name, backend.precision
    why = backend.unavailable() or (ctx.missing.get(backend.graphs) if ctx.graphs.get(backend.graphs) is None else None)
    if why:
        return Planned(name, precision, "", skip=why)
    path = ctx.graphs[backend.graphs]
    return Planned(name, precision, f"{backend.description} ({path.name}), {ctx.thread_description}",
                   lambda: backend.runner(path, threads=ctx.threads, name=name))


def _compare(name: str, outputs: dict, reference: dict, tol: Tolerances, margins: list | None) -> list[OutputCheck]:
    """Every reference output of one backend through the one comparison (`compare_output`)."""
    checks = []
    for out, ref_list in reference.items():
        if out not in outputs:
            checks.append(compare_output(name, out, None, None, tol.for_output(out, "logits"), "missing"))
            continue
        got, ref = np.concatenate(outputs[out]), np.concatenate(ref_list)
        kind = "logits" if np.issubdtype(ref.dtype, np.floating) else "mask"
        margin = np.concatenate(margins) if kind == "mask" and margins is not None else None
        checks.append(compare_output(name, out, got, ref, tol.for_output(out, kind), kind, margin=margin,
                                     tie_margin=tol.tie_margin, keep_sample=True))
    return checks


def _miou(masks: list[np.ndarray], truths: list[np.ndarray]) -> float:
    return float(np.mean([foreground_iou(m, t) for m, t in zip(masks, truths)]))


# ----------------------------------------------------------------------------- main
def verify_artifacts(
    artifact_dir: str | os.PathLike,
    *,
    backends: Sequence[str] | None = None,
    episodes: int = 3,
    seed: int = 0,
    threads: int | None = None,
    layerwise: bool = False,
    layerwise_backend: str = "ort-cpu",
    workdir: str | os.PathLike | None = None,
    fp16_onnx: bool | str | os.PathLike = False,
    tolerances: Mapping[str, Tolerances] | None = None,
    model_modifier: Callable | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Run seeded episodes through every backend and compare them with the float64 eager model.

    Args:
        artifact_dir: an lfm-export directory (manifest and files verified).
        backends: which backends (default: every one in `lfm_deploy.runtime.backends.BACKENDS`;
            the float64 eager reference always runs). Unavailable ones are reported as skipped with the reason.
        episodes: number of seeded episodes (batch 1 each).
        seed: first seed.
        threads: CPU threads for torch and onnxruntime (None: their defaults).
        layerwise: also compare intermediate stages (eager float64 vs a debug graph exported from
            the same prepared model, run in onnxruntime CPU) on the first episode and report the
            first stage outside tolerance.
        layerwise_backend: label of the layerwise comparison (only onnxruntime CPU is supported).
        workdir: where the layerwise debug graph and a generated fp16 graph go (default: temporary).
        fp16_onnx: True: make the fp16 episode graph (range check + islands) in `workdir` if
            `<artifact_dir>/engines/episode.fp16.onnx` does not exist; a path: use that graph.
            False: use the engines/ one when present, else skip "ort-cpu-fp16".
        tolerances: {precision: Tolerances} overriding the defaults (fp32: the manifest's parity
            tolerances; fp16, bf16, int8: the domain registry's accuracy gates).
        model_modifier: applied to every eager model built (tests inject faults with it; the
            ONNX side is never affected).
        progress: show a progress bar on stderr, one step per backend (and the layerwise pass).

    Returns:
        `VerifyReport` (see `lfm_deploy.verify.report.write_report` for JSON/Markdown/PNG).

    Raises:
        ManifestError: not a valid artifact directory.
        LFMError: unknown backend names or bad arguments.
    """
    import tempfile

    from ..parity.runners import EagerRunner, ModelFromManifest, run_feeds

    t0 = time.perf_counter()
    artifact_dir = Path(artifact_dir)
    from ..manifest import read_manifest

    manifest = read_manifest(artifact_dir)
    if episodes < 1:
        raise LFMError(f"--episodes must be at least 1, got {episodes}")
    known = registry()
    names = list(backends) if backends is not None else list(known)
    unknown = [n for n in names if n not in known and n != REFERENCE]
    if unknown:
        raise LFMError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    names = [n for n in known if n in names]
    from ..domains import get_domain

    tols = {"fp32": Tolerances.from_manifest(manifest), **get_domain(manifest.domain).precision_gates}
    tols.update(tolerances or {})
    tmp = None
    if workdir is None and (layerwise or fp16_onnx is True):
        tmp = tempfile.TemporaryDirectory(prefix="lfm-verify-")
        workdir = tmp.name
    workdir = Path(workdir) if workdir is not None else None

    def model_loader(dtype):
        return ModelFromManifest(manifest, dtype=dtype, modify=model_modifier)

    try:
        feeds, truths = parity_episodes(manifest, episodes, seed)
        fp16_path = (_fp16_graph(artifact_dir, manifest, fp16_onnx, workdir, seed)
                     if any(known[n].graphs == "fp16" for n in names) else None)
        ctx = _plan_context(artifact_dir, manifest, threads, fp16_path, model_loader)
        plan = [_plan(get_backend(n), ctx) for n in names]

        from tqdm import tqdm

        bar = tqdm(total=1 + len(plan) + int(layerwise), desc="lfm-verify", unit="backend", disable=not progress,
                   leave=False)
        results: list[BackendResult] = []
        log.info("running the float64 eager reference on %d episode(s)", episodes)
        bar.set_postfix_str(f"{REFERENCE} ({episodes} episodes)")
        reference, ref_ms = run_feeds(EagerRunner(model_loader("float64"), "episode", shots=manifest.shots,
                                             dtype="float64", threads=threads, name=REFERENCE), feeds)
        # The float64 reference's |logit margin| per pixel (K = 1): masks must be identical where it is decisive.
        episode_io = manifest.io("episode")
        margins = ([decision_margins([x]) for x in reference[episode_io.output("logits")]]
                   if episode_io.has_output("logits") else None)
        ref_result = BackendResult(REFERENCE, "reference", description="PyTorch float64, CPU (reference)", mean_ms=ref_ms)
        ref_result.miou = _miou(reference["mask"], truths)
        results.append(ref_result)
        eager32_miou = None
        bar.update()
        for b in plan:
            bar.set_postfix_str(b.name)
            bar.update()
            if b.skip:
                log.warning("skipping %s: %s", b.name, b.skip)
                results.append(BackendResult(b.name, "skipped", reason=b.skip))
                continue
            log.info("running %s", b.name)
            try:
                outputs, ms = run_feeds(b.make(), feeds)
            except BackendUnavailable as exc:
                results.append(BackendResult(b.name, "skipped", reason=str(exc)))
                continue
            except Exception as exc:  # a backend that should run but crashed is a failure
                log.exception("%s failed", b.name)
                results.append(BackendResult(b.name, "error", reason=f"{type(exc).__name__}: {exc}"[:2000],
                                             description=b.description))
                continue
            tol = tols[b.precision]
            comparisons = _compare(b.name, outputs, reference, tol, margins)
            r = BackendResult(b.name, "passed", description=b.description, outputs=comparisons, mean_ms=ms)
            if "mask" in outputs:
                r.miou = _miou(outputs["mask"], truths)
                if b.name == "eager-fp32":
                    eager32_miou = r.miou
                base = eager32_miou if eager32_miou is not None else ref_result.miou
                r.miou_delta = r.miou - base
                r.miou_tolerance = tol.miou
                r.miou_passed = tol.miou.passes(r.miou_delta)
            bad = [f"{o.output} {o.tolerance.statistic} {o.tolerance.format(o.value)} ({o.tolerance.describe()})" for o in comparisons
                   if not o.passed]
            if r.miou_passed is False:
                bad.append(f"mIoU delta {r.miou_delta:+.4f} ({tol.miou.describe()})")
            if tol.evidence is not None and "mask" in reference:  # reduced precision: no evidence, no pass
                evidence = evidence_of(reference["mask"], margins, tol.tie_margin, tol.evidence)
                r.evidence = evidence.to_dict()
                if not evidence.sufficient:
                    bad.insert(0, f"{evidence.missing()} ({EVIDENCE_HINT})")
            if bad:
                r.status, r.reason = "failed", "; ".join(bad)
            results.append(r)

        lw = None
        if layerwise:
            bar.set_postfix_str("layerwise")
            bar.update()
            lw = _layerwise(artifact_dir, manifest, feeds[0], model_loader, workdir, threads, tols["fp32"].stage_rel,
                            layerwise_backend)
        model = {k: getattr(manifest, k) for k in ("domain", "variant", "lowering", "shots", "image_size", "opset",
                                                    "untrained")}
        model["weights_label"] = manifest.weights_label
        bar.close()
        import onnxruntime

        from ..utils.versions import library_versions, machine

        report = VerifyReport(str(artifact_dir), model, episodes, seed, REFERENCE, results, lw,
                              {**library_versions(), **machine(),
                               "onnxruntime_providers": onnxruntime.get_available_providers()},
                              time.perf_counter() - t0)
        for line in report.summary_lines():
            log.info("%s", line)
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


def _fp16_graph(artifact_dir: Path, manifest: Manifest, fp16_onnx, workdir: Path | None, seed: int) -> Path | None:
    existing = artifact_dir / "engines" / "episode.fp16.onnx"
    if fp16_onnx not in (True, False, None):
        return Path(fp16_onnx)
    if manifest.served_precision.name == "fp16":  # an lfm-export --precision fp16 directory
        return artifact_dir / manifest.graphs["episode"].file
    if existing.is_file():
        return existing
    if fp16_onnx is True and workdir is not None:
        from ..precision.fp16 import graph_feeds, prepare_fp16_graph

        log.info("making an fp16 episode graph with fp32 islands (range check on 2 episodes)")
        feeds = graph_feeds(artifact_dir, "episode", episodes=2, seed=seed + 1000, manifest=manifest)
        return prepare_fp16_graph(artifact_dir / manifest.float32_file("episode"), workdir / "episode.fp16.onnx",
                                  feeds).path
    return None


def _layerwise(artifact_dir: Path, manifest: Manifest, feed: dict, model_loader, workdir: Path, threads, rel: float,
               label: str) -> dict:
    from .layerwise import LayerwiseEpisode, compare_stages, export_layerwise_graph, first_mismatch
    from ..parity.runners import EagerRunner, ModelFromManifest, run_feeds

    shots = manifest.shots
    path = workdir / "layerwise.onnx"
    log.info("exporting the layerwise debug graph (%s lowering) to %s", manifest.lowering, path)
    # The debug graph comes from the artifact's own weights, never from a modified eager model.
    clean = ModelFromManifest(manifest, dtype="float32")()
    export_layerwise_graph(clean, shots, manifest.lowering, path, feed, opset=manifest.opset)
    order = LayerwiseEpisode(clean, shots).stage_names()
    del clean
    ref, _ = run_feeds(EagerRunner(model_loader("float64"), LayerwiseEpisode, shots=shots, dtype="float64", threads=threads,
                              name="eager-fp64-layerwise"), [feed])
    got, _ = run_feeds(get_backend("ort-cpu").runner(path, threads=threads, name=f"{label}-layerwise"), [feed])
    checks = compare_stages({k: np.concatenate(v) for k, v in got.items()}, {k: np.concatenate(v) for k, v in ref.items()},
                            order, rel)
    first = first_mismatch(checks)
    (log.warning if first else log.info)("layerwise: %s", f"first mismatch at {first}" if first else "all stages within tolerance")
    return {"backend": label, "reference": REFERENCE, "graph": str(path.name), "tolerance_rel": rel,
            "first_mismatch": first, "stages": [c.to_dict() for c in checks]}
