"""`export_domain`: the whole `lfm-export` job as one public function.

build model -> prepare (FFT lowering, numerics twins) -> export episode / encoder / head ->
check + simplify -> validate in onnxruntime against the eager model -> TensorRT lint ->
(Triton repository) -> manifest + reports -> atomic promotion of the output directory.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..domains import Domain, get_domain
from ..errors import ExportError, ParityError
from ..manifest import SCHEMA_VERSION, file_entry, write_manifest
from ..models import build_model, read_masker
from ..models.checkpoints import UNTRAINED_LABEL, masker_variant
from ..models.hsnet import LAYER4_START, LFMHSNet, vote_masks
from ..models.masker import PhaseAttention
from .graphs import EncoderGraph, EpisodeGraph, HeadGraph
from .onnx_export import DEFAULT_OPSET, export_onnx
from .prepare import LOWERINGS, prepare_for_export
from .validate import (BRANCH_CUT_REL, OutputCheck, branch_cut_channels, compare_mask, compare_tensor,
                       decision_margins, format_checks, validation_episode)

log = logging.getLogger(__name__)

GRAPH_FILES = {"episode": "episode.onnx", "encoder": "encoder.onnx", "head": "head.onnx"}
REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


@dataclass
class ExportResult:
    """What `export_domain` produced."""

    out_dir: Path
    manifest: dict
    checks: list[OutputCheck] = field(default_factory=list)
    lint: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


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


def _library_versions() -> dict:
    import onnx
    import onnxruntime

    versions = {"lfm_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}
    try:
        import onnxslim

        versions["onnxslim"] = onnxslim.__version__
    except ImportError:
        pass
    return versions


def _ort_session(path: Path, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _promote(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` so that `out` is never a half-written directory."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
) -> ExportResult:
    """Export a domain's model to ONNX, validate it against the eager model, write a manifest.

    Args:
        domain: registry name (or a `Domain`).
        out: output directory (default `artifacts/<domain>`); replaced atomically on success.
        checkpoint: HSNet checkpoint; None uses the seeded UNTRAINED default (flagged everywhere).
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

    Returns:
        `ExportResult` with the final directory, manifest and checks.

    Raises:
        ExportError: bad options or a failed export (nothing is written to `out`).
        ParityError: validation failed; the artifacts and reports are kept in `<out>.failed`
            for inspection and `out` is left untouched.
        CheckpointError: see `build_model`.
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
    out = Path(out) if out is not None else Path("artifacts") / dom.name
    size = image_size or dom.image_size
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a directory; choose another --out")
    apm, acpa = _resolve_variant(apm, acpa, masker)
    t0 = time.perf_counter()

    graphs = ["episode"] + (["encoder", "head"] if split else [])
    steps = _Steps(total=2 + len(graphs) * (2 if validate else 1) + 2 + int(triton), enabled=progress)
    steps.start("building the eager model")
    model, weights = build_model(apm=apm, acpa=acpa, checkpoint=checkpoint, masker=masker, image_size=size)
    steps.done()
    steps.start(f"preparing for export ({lowering} lowering)")
    prepared = prepare_for_export(model, lowering)
    steps.done()

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write the output directory {out} ({exc.strerror}); choose a writable --out") from None
    try:
        episode = validation_episode(dom, shots, batch=1, seed=seed, image_size=size)
        q = torch.from_numpy(episode["query_img"])
        s = torch.from_numpy(episode["support_imgs"])
        m = torch.from_numpy(episode["support_masks"])
        modules = {"episode": EpisodeGraph(prepared, shots)}
        examples = {"episode": (q, s, m)}
        if split:
            modules["encoder"] = EncoderGraph(prepared)
            modules["head"] = HeadGraph(prepared, shots)
            examples["encoder"] = (s[0], m[0])
            with torch.no_grad():
                examples["head"] = (q, *modules["encoder"](s[0], m[0]))
        if lowering == "dft":
            # torch.export specialises dims whose example size is 1: give the batch two rows.
            examples = {g: _with_batch_two(g, ex) for g, ex in examples.items()}
        specs = {}
        for name in graphs:
            steps.start(f"exporting {name} graph")
            module = modules[name].eval()
            specs[name] = (module.inputs(size), module.outputs(size))
            export_onnx(module, examples[name], tmp / GRAPH_FILES[name], *specs[name],
                        opset=opset, dynamo=lowering == "dft", simplify=simplify)
            steps.done()

        checks: list[OutputCheck] = []
        sign_case = None
        if validate:
            checks = _validate(model, dom, lowering, shots, episode, graphs, tmp, threads, steps)
            sign_case = acpa_sign_case(model, episode)

        steps.start("TensorRT readiness lint")
        lint = _lint(tmp, graphs, lowering)
        steps.done()

        triton_files = []
        if triton:
            steps.start("writing Triton model repository")
            from .triton import write_triton_repository

            triton_files = write_triton_repository(
                tmp / "triton", {g: (tmp / GRAPH_FILES[g], *specs[g]) for g in graphs}, domain=dom.name, shots=shots,
            )
            steps.done()

        steps.start("writing manifest and reports")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created_by": f"lfm-deploy {__version__}",
            "domain": dom.name,
            "variant": model.variant,
            "apm": apm or "none",
            "acpa": acpa,
            "lowering": lowering,
            "opset": opset,
            "shots": shots,
            "image_size": size,
            "preprocessing": {**dom.preprocessing(), "image_size": [size, size]},
            "graphs": {
                g: {"file": GRAPH_FILES[g], "inputs": [x.to_dict() for x in specs[g][0]],
                    "outputs": [x.to_dict() for x in specs[g][1]]}
                for g in graphs
            },
            "weights": weights.to_dict(),
            "untrained": bool(weights.untrained),
            "inputs": _input_hashes(checkpoint, masker),
            "tolerances": {"logits_atol": dom.tolerances.for_lowering(lowering)[0],
                           "feature_rel": dom.tolerances.for_lowering(lowering)[1],
                           "mask_agreement": dom.tolerances.mask_agreement,
                           "mask_tie_margin": 2 * dom.tolerances.for_lowering(lowering)[0]},
            "parity": {"validated": validate, "passed": all(c.passed for c in checks),
                       "checks": [c.to_dict() for c in checks], "acpa_sign_case": sign_case},
            "tensorrt_lint": lint,
            "versions": _library_versions(),
        }
        if weights.untrained:
            manifest["warning"] = UNTRAINED_LABEL
        files = [GRAPH_FILES[g] for g in graphs] + [str(p.relative_to(tmp)) for p in triton_files if p.is_file()]
        manifest["files"] = {f: file_entry(tmp, f) for f in sorted(files)}
        result = ExportResult(out_dir=out, manifest=manifest, checks=checks, lint=lint)
        _write_reports(tmp, manifest, checks, lint, time.perf_counter() - t0)
        write_manifest(tmp, manifest)
        steps.done()

        if not result.passed:
            failed = out.with_name(out.name + ".failed")
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(tmp, failed)
            raise ParityError(
                f"the exported graphs do not match the eager model; {out} was not written. "
                f"Per-output report (artifacts kept in {failed} for inspection):\n" + format_checks(checks)
            )
        _promote(tmp, out)
        steps.close()
        return result
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if steps.bar is not None:
            steps.bar.close()
        raise


def _with_batch_two(graph: str, example: tuple) -> tuple:
    if graph == "head":  # only the query is batched; the support set has a static K
        return (example[0].repeat(2, 1, 1, 1), *example[1:])
    return tuple(t.repeat(2, *([1] * (t.dim() - 1))) for t in example)


def _input_hashes(checkpoint, masker) -> dict:
    from ..manifest import sha256_file

    return {
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)} if checkpoint else None,
        "masker": {"path": str(masker), "sha256": sha256_file(masker)} if masker else None,
    }


def _validate(model, dom, lowering, shots, episode, graphs, tmp, threads, steps) -> list[OutputCheck]:
    """Run each exported graph in onnxruntime and compare it with the eager float32 model."""
    logits_atol, feature_rel = dom.tolerances.for_lowering(lowering)
    agree = dom.tolerances.mask_agreement
    q, s, m = (torch.from_numpy(episode[k]) for k in ("query_img", "support_imgs", "support_masks"))
    with torch.no_grad():
        ref_logits = model.shot_logits(q, s, m)
    ref_votes = torch.stack([x.argmax(1) for x in ref_logits]).sum(0)
    ref_mask = vote_masks(ref_votes, shots).numpy()
    # Per pixel, the eager model's smallest |logit margin| over the shots: masks must be identical
    # except where the eager model itself is within twice the logits tolerance of a tie.
    ref_margin = decision_margins([x.numpy() for x in ref_logits])
    tie = 2 * logits_atol
    checks: list[OutputCheck] = []

    steps.start("validating episode graph in onnxruntime")
    sess = _ort_session(tmp / GRAPH_FILES["episode"], threads)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, episode)))
    if shots == 1:
        checks.append(compare_tensor("episode", "logits", outs["logits"], ref_logits[0].numpy(), atol=logits_atol))
    checks.append(compare_mask("episode", "mask", outs["mask"], ref_mask, agree, margin=ref_margin, tie=tie))
    del sess
    steps.done()

    if "encoder" in graphs:
        steps.start("validating encoder graph in onnxruntime")
        with torch.no_grad():
            ref_feats = EncoderGraph(model)(s[0], m[0])
        enc = _ort_session(tmp / GRAPH_FILES["encoder"], threads)
        feats = enc.run(None, {"support_img": episode["support_imgs"][0], "support_mask": episode["support_masks"][0]})
        # The two rounding-decided steps of the masker (README, "How the export stays faithful").
        exclude, ref_l4, ties = None, ref_feats[2].numpy(), None
        backbone = model.extract_features(s[0])
        if model.apm_variant is not None:  # channels whose phase scaling sits on the atan2 branch cut
            exclude = branch_cut_channels(torch.stack(backbone[LAYER4_START:], dim=1).numpy())
        if model.use_acpa:  # ACPA's pooled phase steps where a channel sum crosses zero
            ref_l4, _, ties = resolve_acpa_ties(model.acpa, acpa_input(model, backbone, m[0]), feats[2], ref_l4)
        refs = (ref_feats[0].numpy(), ref_feats[1].numpy(), ref_l4)
        for name, got, ref in zip(("support_l2", "support_l3", "support_l4"), feats, refs):
            l4 = name == "support_l4"
            checks.append(compare_tensor("encoder", name, got, ref, rel=feature_rel,
                                         exclude=exclude if l4 else None, sign_ties=ties if l4 else None))
        del enc
        steps.done()

        steps.start("validating head graph in onnxruntime")
        head = _ort_session(tmp / GRAPH_FILES["head"], threads)
        inputs = {"query_img": episode["query_img"], "support_l2": feats[0], "support_l3": feats[1], "support_l4": feats[2]}
        outs = dict(zip([o.name for o in head.get_outputs()], head.run(None, inputs)))
        ref_shot = torch.stack(ref_logits, dim=1).numpy()
        checks.append(compare_tensor("head", "shot_logits", outs["shot_logits"], ref_shot, atol=logits_atol))
        checks.append(compare_mask("head", "mask", outs["mask"], ref_mask, agree, margin=ref_margin, tie=tie))
        del head
        steps.done()
    for c in checks:
        (log.info if c.passed else log.error)("%s", c.line())
    return checks


def acpa_input(model: LFMHSNet, feats: list[torch.Tensor], support_mask: torch.Tensor) -> torch.Tensor:
    """The eager support features (`model.extract_features`) as their layer4 part enters ACPA,
    after APM and the mask: (N, 3, C, h, w)."""
    with torch.no_grad():
        if model.apm_variant is not None:
            feats = model._apply_to_layer4(model.apm, feats)
        feats = model.mask_support_features(feats, support_mask)
    return torch.stack(feats[LAYER4_START:], dim=1)


#: Ties per map beyond which `resolve_acpa_ties` does not enumerate the sign patterns (2^n).
MAX_ACPA_TIES = 4


def resolve_acpa_ties(acpa: PhaseAttention, x: torch.Tensor, got: np.ndarray, ref: np.ndarray
                      ) -> tuple[np.ndarray, int, int]:
    """The eager ACPA output with each sign tie resolved the way the exported graph resolved it.

    ACPA's pooled phase counts the self-conjugate spectrum bins (the DC: the channel's sum) that
    are negative (`lowering.self_conjugate_phase_mean`), a step at zero. A bin within
    `BRANCH_CUT_REL` x sum|x| of zero gets its sign from float32 rounding upstream (the backbone
    alone differs by up to 4.6e-6 x sum|x| between onnxruntime and PyTorch), and since ACPA's
    two linear layers mix all channels, that one sign moves every channel of the map (by ~0.3 %
    of the peak, measured on fss1000). For each map with such ties this recomputes the eager
    ACPA output for every sign pattern of its tied bins (at most `MAX_ACPA_TIES` of them) and
    keeps the one closest to `got`: the reference then is exactly the eager model, evaluated on
    the other side of a tie where the export landed there, and any other difference still counts.

    Args:
        acpa: the eager model's ACPA module.
        x: its input, (N, 3, C, h, w) (`acpa_input`).
        got, ref: the exported and eager ACPA outputs (support_l4), same shape.

    Returns:
        (reference, tied maps, maps resolved the other way).
    """
    from .lowering import self_conjugate_sums

    h, w = x.shape[-2:]
    positions = [(i, j) for i, j in ((0, 0), (h // 2, 0), (0, w // 2), (h // 2, w // 2))  # self_conjugate_sums' order
                 if (i == 0 or h % 2 == 0) and (j == 0 or w % 2 == 0)]
    x64 = x.double()
    scale = x64.abs().sum(dim=(-2, -1))[..., None]
    ties = ((self_conjugate_sums(x64).abs() <= BRANCH_CUT_REL * scale) & (scale > 0)).numpy()
    reference = np.array(ref, copy=True)
    tied = resolved = 0
    for n, f in zip(*np.nonzero(ties.any(axis=(-2, -1)))):
        tied += 1
        bins = np.argwhere(ties[n, f])  # (t, 2): channel, self-conjugate bin
        if len(bins) > MAX_ACPA_TIES:
            continue
        xm = x[n, f]
        with torch.no_grad():
            spectrum = torch.fft.fft2(xm)
            pooled = acpa.spectral.phase_mean(xm[None])[0]
            eager = [float(torch.angle(spectrum[c, positions[b][0], positions[b][1]])) for c, b in bins]
            best, best_err, flipped = None, np.inf, False
            for pattern in itertools.product((0.0, math.pi), repeat=len(bins)):
                p = pooled.clone()
                for (c, _), a0, a in zip(bins, eager, pattern):
                    p[c] += (a - a0) / (h * w)
                out = (xm * acpa.phase_attn(p[None])[0][:, None, None]).numpy()
                err = float(np.abs(out - got[n, f]).max())
                if err < best_err:
                    best, best_err = out, err
                    flipped = any(abs(a - a0) > 1.0 for a, a0 in zip(pattern, eager))
        reference[n, f] = best
        resolved += int(flipped)
    return reference, tied, resolved


def acpa_sign_case(model: LFMHSNet, episode: dict) -> dict | None:
    """How many layer4 channels entering ACPA have a negative spatial sum on the episode.

    The DC bin of such a channel is real and negative, so its phase is +pi in PyTorch; the
    ONNX DFT gives it a random-sign zero imaginary part (-pi half of the time) unless handled
    (MODEL.md). Reported so that a validation run shows it covered that case.

    Returns:
        {"support": {"channels", "negative_sum"}, "query": {...}} or None without ACPA.
    """
    if not model.use_acpa:
        return None
    q, s, m = (torch.from_numpy(episode[k]) for k in ("query_img", "support_imgs", "support_masks"))
    with torch.no_grad():
        support = model.extract_features(s.reshape((-1,) + tuple(s.shape[2:])))
        query = model.extract_features(q)
        if model.apm_variant is not None:
            support = model._apply_to_layer4(model.apm, support)
            query = model._apply_to_layer4(model.apm, query)
        support = model.mask_support_features(support, m.reshape((-1,) + tuple(m.shape[2:])))
    out = {}
    for name, feats in (("support", support), ("query", query)):
        sums = torch.stack(feats[LAYER4_START:], dim=1).sum(dim=(-2, -1))
        out[name] = {"channels": int(sums.numel()), "negative_sum": int((sums < 0).sum())}
    return out


def _lint(tmp: Path, graphs, lowering: str) -> dict:
    from .trt_lint import lint_onnx

    reports = {g: lint_onnx(tmp / GRAPH_FILES[g], trt_version="10.0") for g in graphs}
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


def _write_reports(directory: Path, manifest: dict, checks: list[OutputCheck], lint: dict, seconds: float) -> None:
    report = {
        "domain": manifest["domain"], "variant": manifest["variant"], "lowering": manifest["lowering"],
        "opset": manifest["opset"], "shots": manifest["shots"], "untrained": manifest["untrained"],
        "weights": manifest["weights"], "parity": manifest["parity"],
        "tensorrt_ready": lint["ok"], "seconds": round(seconds, 1),
    }
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    lines = [
        f"# lfm-export report: {manifest['domain']}",
        "",
        f"- variant: `{manifest['variant']}`, lowering: `{manifest['lowering']}`, opset {manifest['opset']}, "
        f"{manifest['shots']}-shot, {manifest['image_size']}x{manifest['image_size']}",
        f"- weights: {'**UNTRAINED default** (seeded; not a trained model)' if manifest['untrained'] else manifest['weights']['checkpoint']}",
        f"- TensorRT 10 lint: {'clean' if lint['ok'] else 'findings (see manifest.json)'}",
        f"- time: {seconds:.1f} s",
        "",
        "## Parity against the eager PyTorch model (onnxruntime CPU)",
        "",
        "| graph | output | shape | statistic | value | tolerance | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        notes = [f"{c.excluded} branch-cut channels excluded"] if c.excluded else []
        if c.sign_ties:
            notes.append(f"{c.sign_ties} ACPA sign ties resolved")
        if c.pixels_differing:
            notes.append(f"{c.pixels_differing} pixels differ" + (
                f", {c.decisive_differences} beyond the near-tie margin" if c.decisive_differences is not None else ""))
        value = c.value_text() + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"| {c.graph} | {c.output} | {tuple(c.shape)} | {c.statistic} | {value} | {c.tolerance:g} | "
                     f"{'pass' if c.passed else '**FAIL**'} |")
    if not checks:
        lines.append("| - | - | - | - | - | - | not validated |")
    if any(c.excluded for c in checks):
        lines += ["", "Branch-cut channels: APM scales the phase, so a spectrum bin within 1e-5 sum|x| of the "
                  "negative real axis, whose side float32 rounding upstream decides, comes out near +s*pi in one "
                  "implementation and -s*pi in another (torch.fft included); those layer4 channels are left out of "
                  "the feature statistic and their effect is bounded by the logits and mask checks."]
    if any(c.sign_ties for c in checks):
        lines += ["", "ACPA sign ties: a channel entering ACPA summed to within rounding of zero, so its sign (and "
                  "through ACPA's linear layers the whole map) is decided by float32 rounding; the map was compared "
                  "with the eager ACPA evaluated on the side the export landed on."]
    sign = manifest["parity"].get("acpa_sign_case")
    if sign:
        lines += ["", "ACPA sign case (layer4 channels with a negative sum, whose DC phase is +pi): "
                  f"{sign['support']['negative_sum']} of {sign['support']['channels']} support channels, "
                  f"{sign['query']['negative_sum']} of {sign['query']['channels']} query channels "
                  "in the validation episode."]
    (directory / REPORT_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
