"""`export_domain`: the whole `lfm-export` job as one public function.

build model -> prepare (FFT lowering, numerics twins) -> export episode / encoder / head ->
check + simplify -> validate in onnxruntime against the eager model -> (reduced precision:
fp16 / int8 graphs or OpenVINO bf16, through the accuracy gate) -> TensorRT lint ->
(Triton repository) -> manifest + reports -> atomic promotion of the output directory.

One function per step, in that order: `_check_options` (every option, before any work),
`_build_model`, `prepare_for_export`, `_export_graphs`, `_validate`, `_reduce`, `_lint`,
`_write_triton`, `_build_manifest` (the `Manifest` from typed parts, checked by the reader's own
validator), `write_reports` / `write_manifest`, `_promote`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import __version__
from ..contract import GraphIO, default_io
from ..domains import Domain, get_domain
from ..errors import ExportError, ParityError, PrecisionGateError
from ..manifest import FP32, SCHEMA_VERSION, FileEntry, Manifest, ParityRecord, PreprocessingSpec, WeightsRecord, \
    file_entry, sha256_file, write_manifest
from ..models import read_masker
from ..models.checkpoints import check_masker_domain, masker_variant
from ..pretrain import build_default_model, checkpoint_file
from ..models.graphs import EncoderGraph, EpisodeGraph, HeadGraph
from ..parity.compare import OutputCheck, format_checks
from ..parity.episodes import validation_episode
from ..utils.limits import cap_threads
from ..utils.outputs import ArtifactDir
from ..utils.records import FrozenDict, freeze, parse
from ..utils.versions import library_versions
from .finish import GraphFinisher
from .learner_layout import CORRELATION
from .onnx_export import DEFAULT_OPSET, export_onnx
from .prepare import LOWERINGS, prepare_for_export
from .report import REPORT_JSON, REPORT_MD, write_reports

log = logging.getLogger(__name__)

GRAPH_FILES = {"episode": "episode.onnx", "encoder": "encoder.onnx", "head": "head.onnx"}


@dataclass
class ExportResult:
    """What `export_domain` produced."""

    out_dir: Path
    manifest: Manifest
    checks: list[OutputCheck] = field(default_factory=list)
    lint: dict = field(default_factory=dict)
    #: The reduced-precision result (`lfm_deploy.precision.PrecisionResult`); None for fp32.
    precision: object = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and (self.precision is None or self.precision.passed)


class _Steps:
    """A progress bar over named pipeline steps (tqdm), silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="starting", unit="step", leave=True,
                            bar_format="lfm-export {n_fmt}/{total_fmt} [{elapsed}] {desc}")

    def start(self, what: str) -> None:
        log.info("%s", what)
        if self.bar is not None:
            self.bar.set_description_str(what)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_description_str("done")
            self.bar.close()


def _resolve_variant(apm, acpa, masker):
    """apm="auto"/acpa=None: take the masker file's variant, else APM-M + ACPA."""
    if masker is not None and (apm == "auto" or acpa is None):
        _, meta = read_masker(masker)
        file_apm, file_acpa = masker_variant(meta)
        apm = file_apm if apm == "auto" else apm
        acpa = file_acpa if acpa is None else acpa
    apm = "m" if apm == "auto" else apm
    if apm in ("none", ""):
        apm = None
    if apm not in ("m", "s", None):
        raise ExportError(f"--apm must be m, s or none, got {apm!r}")
    return apm, True if acpa is None else bool(acpa)


def _max_opset(lowering: str) -> int | None:
    """The newest opset the installed exporter writes for `lowering` (None: unknown).

    matmul traces with the TorchScript exporter, dft with torch.export (dynamo); both are
    bounded by what the installed onnx package defines.
    """
    try:
        import onnx
        from torch.onnx import _constants

        exporter = _constants.ONNX_MAX_OPSET if lowering == "dft" else _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
        return min(int(exporter), int(onnx.defs.onnx_opset_version()))
    except (ImportError, AttributeError, TypeError, ValueError):  # private constants moved: no check
        return None


def _check_opset(opset: int, lowering: str) -> None:
    """Refuse an opset newer than the installed torch / onnx export, before any tracing."""
    newest = _max_opset(lowering)
    if newest is not None and opset > newest:
        import onnx

        default, span = min(DEFAULT_OPSET, newest), f"17..{newest}"
        raise ExportError(f"--opset {opset} is newer than the installed torch {torch.__version__} and onnx "
                          f"{onnx.__version__} export with the {lowering} lowering (at most {newest})",
                          api_hint=f"pass opset={default} (the default) or another in {span}",
                          cli_hint=f"pass --opset {default} (the default) or another in {span}")


def _check_calibration(calibration, dom: Domain, shots: int) -> None:
    """Check --calibration before any work: labelled pairs (a mask for every image), readable
    regular files (headers only), and a class with shots + 1 images (one query, K supports).

    Raises:
        DataError: what `labelled_episodes` would refuse after the model is built.
    """
    from ..data.datasets import open_support
    from ..errors import DataError

    dataset = open_support(calibration, dom)
    dataset.check_files()
    if not any(len(pairs) > shots for pairs in dataset.items):
        raise DataError(f"calibration data {calibration} has no class with {shots + 1} labelled images (one query "
                        f"and {shots} supports)", api_hint="add images or export with fewer shots",
                        cli_hint="add images or export with fewer --shots")


def _earlier_export(directory: Path) -> set[str] | None:
    """The files an export made before output records existed wrote (None: not an export)."""
    from ..manifest import MANIFEST_NAME

    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(manifest, dict) or not str(manifest.get("created_by", "")).startswith("lfm-deploy"):
        return None
    files = manifest.get("files")
    listed = {str(k) for k in files} if isinstance(files, dict) else set()
    return listed | {MANIFEST_NAME, REPORT_JSON, REPORT_MD}


#: What `export_domain` writes at `--out`, and at `<out>.failed` when validation fails.
EXPORT_KIND = "lfm-export output"
FAILED_KIND = "failed lfm-export output"


def export_domain(
    domain: str | Domain,
    *,
    out: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    masker: str | os.PathLike | None = None,
    apm: str | None = "auto",
    acpa: bool | None = None,
    shots: int | None = None,
    lowering: str = "matmul",
    opset: int = DEFAULT_OPSET,
    split: bool = True,
    triton: bool = False,
    simplify: bool = True,
    validate: bool = True,
    seed: int = 0,
    image_size: int | None = None,
    threads: int = 2,
    progress: bool = True,
    precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
    gate_episodes: int = 6,
    calibration_episodes: int = 8,
) -> ExportResult:
    """Export a domain's model to ONNX, validate it against the eager model, write a manifest.

    Args:
        domain: registry name (or a `Domain`).
        out: output directory (default `artifacts/<domain>`); replaced atomically on success.
        checkpoint: as `lfm_deploy.finetune.finetune_domain`.
        masker: masker file from `lfm-finetune`.
        apm: "m", "s", None/"none", or "auto" (the masker file's variant, else "m").
        acpa: ACPA on/off, or None (the masker file's choice, else on).
        shots: K of the exported graphs (default: the domain's).
        lowering: "matmul" (DFT as real matrix products, TensorRT-ready) or "dft" (ONNX DFT).
        opset: ONNX opset (>= 17; 20 by default).
        split: also export the encoder/head pair for cached support sets.
        triton: also write a Triton model repository under `<out>/triton`.
        simplify: simplify graphs with onnxslim.
        validate: compare every graph with the eager model in onnxruntime (strongly advised).
        seed: seed of the validation episodes.
        image_size: override the domain's image size (tests and experiments only).
        threads: onnxruntime threads used for validation.
        progress: show a progress bar.
        precision: "fp32" (the validated float32 graphs), or a reduced precision made from them
            and gated against the eager model (`lfm_deploy.precision.reduce_precision`): "int8"
            (QDQ graphs), "fp16" (fp16 graphs with float32 islands) or "bf16" (OpenVINO bf16
            on the float32 graphs). The runtime then loads what the manifest names.
        calibration: labelled images (a folder of `<stem>.jpg` + `<stem>_mask.png` pairs, or an
            index file) for int8 ranges and fp16 range checks; their episodes join the gate.
            None: the domain's validation episodes.
        gate_episodes: validation episodes the reduced-precision gate runs on (besides the
            calibration images).
        calibration_episodes: int8/fp16 without `calibration`: validation episodes to calibrate
            on (int8 also picks its float layers, by measured sensitivity, on as many held-out ones).

    Returns:
        `ExportResult` with the final directory, manifest and checks.

    Raises:
        ExportError: bad options or a failed export (nothing is written to `out`).
        ParityError: validation failed; the artifacts and reports are kept in `<out>.failed`
            for inspection and `out` is left untouched.
        PrecisionGateError: the reduced-precision graphs failed their accuracy gate (a
            `ParityError`; artifacts kept in `<out>.failed` the same way).
        CheckpointError: see `build_model`.
    """
    job = _check_options(domain, out=out, checkpoint=checkpoint, masker=masker, apm=apm, acpa=acpa, shots=shots,
                         lowering=lowering, opset=opset, split=split, triton=triton, simplify=simplify,
                         validate=validate, seed=seed, image_size=image_size, threads=threads, precision=precision,
                         calibration=calibration, gate_episodes=gate_episodes,
                         calibration_episodes=calibration_episodes)
    # Both places this export may write are checked before any work (nothing of the user's is replaced).
    target = ArtifactDir(job.out, flag="--out", kind=EXPORT_KIND, legacy=_earlier_export,
                         inputs={"--checkpoint": checkpoint_file(checkpoint), "--masker": masker, "--calibration": calibration})
    failed_target = ArtifactDir(target.path.with_name(target.path.name + ".failed"), flag=None, kind=FAILED_KIND)
    t0 = time.perf_counter()
    steps = _Steps(total=2 + len(job.graphs) * (2 if validate else 1) + 2 + int(triton) + 2 * job.reduced,
                   enabled=progress)
    try:
        model, weights, plan = _build_model(job, target, steps, progress)
        steps.start(f"preparing for export ({lowering} lowering)")
        prepared = prepare_for_export(model, lowering)
        steps.done()
        with target:
            tmp = target.tmp
            episode = validation_episode(job.dom, job.shots, batch=1, seed=seed, image_size=job.size)
            float32 = _export_graphs(job, prepared, episode, tmp, steps)
            checks, sign_case = _validate(job, model, episode, tmp, steps)
            reduced = _reduce(job, model, plan, checks, tmp, steps)
            # What the runtime loads: the reduced-precision files where they were made, same tensors.
            graphs = {g: replace(io, file=reduced.graphs[g]) if reduced else io for g, io in float32.items()}
            steps.start("TensorRT readiness lint")
            lint = _lint(tmp, {g: io.file for g, io in graphs.items()}, lowering)
            steps.done()
            extra_files = _write_triton(job, graphs, tmp, steps)

            steps.start("writing manifest and reports")
            # every file the manifest lists: the float32 graphs, the served ones, the Triton files
            listed = {GRAPH_FILES[g] for g in graphs} | {io.file for io in graphs.values()} | set(extra_files)
            manifest = _build_manifest(job, model.variant, weights, graphs, reduced, checks, sign_case, lint,
                                       {f: file_entry(tmp, f) for f in sorted(listed)})
            result = ExportResult(out_dir=target.path, manifest=manifest, checks=checks, lint=lint, precision=reduced)
            write_reports(tmp, manifest, checks, lint, time.perf_counter() - t0)
            write_manifest(tmp, manifest)
            steps.done()
            _promote(job, result, target, failed_target, steps)
            return result
    except BaseException:
        if steps.bar is not None:
            steps.bar.close()
        raise


@dataclass(frozen=True)
class _Job:
    """The options of one export, checked and resolved (`_check_options`)."""

    dom: Domain
    out: Path
    checkpoint: str | os.PathLike | None
    masker: str | os.PathLike | None
    apm: str | None
    acpa: bool
    shots: int
    size: int
    lowering: str
    opset: int
    graphs: tuple[str, ...]
    triton: bool
    simplify: bool
    validate: bool
    seed: int
    threads: int
    precision: str
    calibration: str | os.PathLike | None
    gate_episodes: int
    calibration_episodes: int

    @property
    def reduced(self) -> bool:
        """Whether a reduced precision is made (and gated) after the float32 graphs."""
        return self.precision != "fp32"

    @property
    def tolerances(self):
        """The float32 parity tolerances of this lowering."""
        return self.dom.tolerances[self.lowering]

    def precision_gate(self):
        """The reduced precision's gate (`Domain.precision_gates`)."""
        return self.dom.precision_gates[self.precision]


def _check_options(domain, *, out, checkpoint, masker, apm, acpa, shots, lowering, opset, split, triton, simplify,
                   validate, seed, image_size, threads, precision, calibration, gate_episodes,
                   calibration_episodes) -> _Job:
    """Every option checked before any work (see `export_domain` for what each one means).

    Raises:
        ExportError, DataError, CheckpointError, BackendUnavailable: a bad option, named.
    """
    dom = get_domain(domain)
    shots = dom.default_shots if shots is None else int(shots)
    if shots < 1:
        raise ExportError(f"--shots must be at least 1, got {shots}")
    if lowering not in LOWERINGS:
        raise ExportError(f"unknown --lowering {lowering!r}; choose one of: {', '.join(LOWERINGS)}")
    if lowering == "dft" and opset < 17:
        raise ExportError(f"the dft lowering needs ONNX DFT, i.e. --opset 17 or later (got {opset})")
    if opset < 14:
        raise ExportError(f"--opset {opset} is too old; use 17 or later")
    _check_opset(opset, lowering)  # before any tracing: the exporter would refuse it only after it
    from ..precision.pipeline import PRECISIONS

    if precision not in PRECISIONS:
        raise ExportError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision != "fp32" and not split:
        raise ExportError(f"--precision {precision} gates the encoder/head pair the runtime serves; drop --no-split")
    if gate_episodes < 1 or calibration_episodes < 1:
        raise ExportError(f"--gate-episodes and --calibration-episodes must be at least 1, got {gate_episodes} "
                          f"and {calibration_episodes}")
    if calibration is not None and precision not in ("int8", "fp16"):
        raise ExportError("--calibration is used by --precision int8 and fp16 only",
                          api_hint="pass calibration=None, or precision='int8'",
                          cli_hint="drop --calibration, or add --precision int8")
    if calibration is not None and not Path(calibration).exists():
        raise ExportError(f"calibration data {calibration} does not exist",
                          cli_hint="pass --calibration with a folder of <stem>.jpg + <stem>_mask.png pairs or an index file",
                          api_hint="pass a folder of <stem>.jpg + <stem>_mask.png pairs or an index file")
    if calibration is not None:
        _check_calibration(calibration, dom, shots)
    if masker is not None:  # the masker file is read (and checked) now, and its domain compared with ours
        check_masker_domain(masker, read_masker(masker)[1], dom.name, "exporting it for")
    threads = cap_threads(threads, "threads") if isinstance(threads, int) and threads > 0 else threads
    if precision != "fp32":  # the gate's backend missing: said now, with the install hint, not after the export
        from ..errors import BackendUnavailable
        from ..runtime.backends import gate_backend

        why = gate_backend(precision).unavailable()
        if why:
            raise BackendUnavailable(why)
    apm, acpa = _resolve_variant(apm, acpa, masker)
    return _Job(dom=dom, out=Path(out) if out is not None else Path("artifacts") / dom.name, checkpoint=checkpoint,
                masker=masker, apm=apm, acpa=acpa, shots=shots, size=image_size or dom.image_size, lowering=lowering,
                opset=opset, graphs=("episode",) + (("encoder", "head") if split else ()), triton=triton,
                simplify=simplify, validate=validate, seed=seed, threads=threads, precision=precision,
                calibration=calibration, gate_episodes=gate_episodes, calibration_episodes=calibration_episodes)


def _build_model(job: _Job, target: ArtifactDir, steps: _Steps, progress: bool):
    """The eager model and its `WeightsInfo`, and (reduced precision) the gate's episodes.

    Raises:
        OutputError: no room for the graphs. PrecisionGateError: no evidence for the gate.
    """
    steps.start("building the eager model")
    model, weights = build_default_model(apm=job.apm, acpa=job.acpa, checkpoint=job.checkpoint, masker=job.masker,
                                         image_size=job.size, progress=progress)
    # Room for the graphs, checked before tracing (a rough estimate: the episode graph holds
    # every weight, the encoder and head together about as much again; Triton links them).
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    copies = (2 if len(job.graphs) > 1 else 1) * (1.5 if job.reduced else 1)
    target.require_space(int(weight_bytes * copies * 1.1), "the export")
    steps.done()
    plan = None
    if job.reduced:  # no evidence, no export: the gate's episodes are checked before any tracing
        from ..precision.pipeline import plan_gate

        steps.start(f"{job.precision}: drawing the accuracy gate's episodes")
        plan = plan_gate(job.precision, model, domain=job.dom.name, shots=job.shots, tolerances=job.precision_gate(),
                         calibration=job.calibration, seed=job.seed, gate_episodes=job.gate_episodes,
                         calibration_episodes=job.calibration_episodes, threads=job.threads)
        steps.done()
    return model, weights, plan


def _export_graphs(job: _Job, prepared, episode: dict, tmp: Path, steps: _Steps) -> dict[str, GraphIO]:
    """Trace every graph into `tmp`; return each one's contract (its float32 file and tensors)."""
    io = default_io("episode", job.size, job.shots)
    q, s, m = (torch.from_numpy(episode[io.input(r)]) for r in ("query", "supports", "masks"))
    modules = {"episode": EpisodeGraph(prepared, job.shots)}
    examples = {"episode": (q, s, m)}
    if "encoder" in job.graphs:
        modules["encoder"] = EncoderGraph(prepared)
        modules["head"] = HeadGraph(prepared, job.shots)
        examples["encoder"] = (s[0], m[0])
        with torch.no_grad():
            examples["head"] = (q, *modules["encoder"](s[0], m[0]))
    if job.lowering == "dft":
        # torch.export specialises dims whose example size is 1: give the batch two rows.
        # Only the head's query is batched; its support set has a static K.
        examples = {g: tuple(t.repeat(2, *([1] * (t.dim() - 1))) if g != "head" or i == 0 else t
                             for i, t in enumerate(ex)) for g, ex in examples.items()}
    specs = {}
    # Each traced graph is simplified and saved in the background while the next is traced.
    with GraphFinisher() as finisher:
        for name in job.graphs:
            steps.start(f"exporting {name} graph")
            module = modules[name].eval()
            specs[name] = (module.inputs(job.size), module.outputs(job.size))
            export_onnx(module, examples[name], tmp / GRAPH_FILES[name], *specs[name], opset=job.opset,
                        dynamo=job.lowering == "dft", simplify=job.simplify, finisher=finisher)
            if name == job.graphs[-1]:
                finisher.wait()  # the graphs still being simplified
            steps.done()
    return {g: GraphIO(g, GRAPH_FILES[g], tuple(ins), tuple(outs)) for g, (ins, outs) in specs.items()}


def _validate(job: _Job, model, episode: dict, tmp: Path, steps: _Steps) -> tuple[list[OutputCheck], dict | None]:
    """Every graph against the eager model in onnxruntime: (the checks, the ACPA sign case)."""
    if not job.validate:
        return [], None
    from ..parity.exported import check_export
    from ..parity.numerics import acpa_sign_case

    running: list[str] = []

    def step(what: str) -> None:  # one progress step per graph checked
        if running:
            steps.done()
        running[:] = [what]
        steps.start(what)

    checks = check_export(model, {g: tmp / GRAPH_FILES[g] for g in job.graphs}, job.shots, episode, job.tolerances,
                          threads=job.threads, step=step)
    if running:
        steps.done()
    return checks, acpa_sign_case(model, episode)


def _reduce(job: _Job, model, plan, checks: list[OutputCheck], tmp: Path, steps: _Steps):
    """The reduced-precision graphs and their gate (`reduce_precision`); None for fp32 or failed parity."""
    if not job.reduced or not all(c.passed for c in checks):
        return None
    from ..precision.pipeline import reduce_precision

    steps.start(f"{job.precision}: making and gating the graphs")
    reduced = reduce_precision(
        job.precision, tmp, {g: GRAPH_FILES[g] for g in job.graphs}, model, domain=job.dom.name, shots=job.shots,
        tolerances=job.precision_gate(), calibration=job.calibration, seed=job.seed, threads=job.threads,
        gate_episodes=job.gate_episodes, calibration_episodes=job.calibration_episodes, step=steps.start, plan=plan,
    )
    steps.done()
    return reduced


def _write_triton(job: _Job, graphs: dict[str, GraphIO], tmp: Path, steps: _Steps) -> list[str]:
    """The Triton model repository under `tmp/triton` (with --triton); its files, relative to `tmp`."""
    if not job.triton:
        return []
    steps.start("writing Triton model repository")
    from ..serving.triton import graphs_from_manifest, write_triton_repository

    written = write_triton_repository(tmp / "triton", graphs_from_manifest(graphs, tmp), domain=job.dom.name,
                                      shots=job.shots)
    steps.done()
    return [str(p.relative_to(tmp)) for p in written if p.is_file()]


def _build_manifest(job: _Job, variant: str, weights, graphs: dict[str, GraphIO], reduced, checks: list[OutputCheck],
                   sign_case, lint: dict, files: dict[str, FileEntry]) -> Manifest:
    """The export's `Manifest`, from its typed parts, checked by the reader's own validator
    (`Manifest.from_dict`: what is written is what every reader accepts)."""
    precision = reduced.to_manifest(job.precision_gate()) if reduced is not None else FP32
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, created_by=f"lfm-deploy {__version__}", domain=job.dom.name, variant=variant,
        apm=job.apm or "none", acpa=job.acpa, lowering=job.lowering, opset=job.opset, shots=job.shots,
        image_size=job.size,
        preprocessing=parse(PreprocessingSpec, {**job.dom.preprocessing(), "image_size": [job.size, job.size]}),
        graphs=FrozenDict(graphs), precision=precision,
        reference_graphs=FrozenDict({g: GRAPH_FILES[g] for g in graphs}),
        weights=parse(WeightsRecord, weights.to_dict()), untrained=bool(weights.untrained),
        warning=weights.label if weights.untrained else None,
        inputs=freeze({k: {"path": str(p), "sha256": sha256_file(p)} if p else None
                       for k, p in (("checkpoint", checkpoint_file(job.checkpoint)), ("masker", job.masker))}),
        tolerances=job.tolerances.to_manifest(), correlation=CORRELATION,
        parity=ParityRecord(job.validate, all(c.passed for c in checks), freeze([c.to_dict() for c in checks]),
                            freeze(sign_case)),
        tensorrt_lint=freeze(lint), versions=freeze({k: v for k, v in library_versions().items() if v is not None}),
        files=FrozenDict(files),
    )
    return Manifest.from_dict(manifest.to_dict(), "the manifest being written")


def _promote(job: _Job, result: ExportResult, target: ArtifactDir, failed_target: ArtifactDir, steps: _Steps) -> None:
    """Swap the export in at `--out`, or keep it at `<out>.failed` and raise what failed.

    Raises:
        PrecisionGateError: the reduced-precision graphs failed their gate.
        ParityError: the float32 graphs differ from the eager model.
    """
    reduced = result.precision
    if reduced is not None and not reduced.passed:
        failed = target.keep_as(failed_target)
        steps.close()
        lines = [line for g in reduced.gates for line in g.lines()]
        raise PrecisionGateError(
            f"the {job.precision} graphs move the masks beyond their accuracy gate; {job.out} was not written. "
            f"Gate report (artifacts kept in {failed} for inspection):\n" + "\n".join(lines),
            api_hint="use precision='fp32', or a higher-precision path",
            cli_hint=f"export without --precision {job.precision} (or try another precision; see docs/precision.md)",
        )
    if not result.passed:
        failed = target.keep_as(failed_target)
        steps.close()
        raise ParityError(
            f"the exported graphs do not match the eager model; {job.out} was not written. "
            f"Per-output report (artifacts kept in {failed} for inspection):\n" + format_checks(result.checks)
        )
    target.commit()
    steps.close()


def _lint(tmp: Path, files: dict, lowering: str) -> dict:
    """Lint the graphs the manifest names ({graph: file}: the int8 ones of an int8 export)."""
    from ..tensorrt.lint import lint_onnx

    reports = {g: lint_onnx(tmp / f, trt_version="10.0") for g, f in files.items()}
    summary = {
        "target": "TensorRT 10.0",
        "ok": all(r.ok for r in reports.values()),
        "graphs": {g: r.to_dict() for g, r in reports.items()},
    }
    if not summary["ok"]:
        level = log.info if lowering == "dft" else log.warning
        level("the %s graphs are not TensorRT 10 ready: %s", lowering,
              "; ".join(f"{g}: {len(r.errors)} findings" for g, r in reports.items() if not r.ok))
    return summary
