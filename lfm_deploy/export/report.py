"""The export report: `export_report.json` and the Markdown parity table people read.

Rendered from the manifest and the `OutputCheck`s of the validation (`lfm_deploy.parity`);
written into the export's temporary directory, which is swapped in whole.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..manifest import Manifest, PrecisionRecord
from ..parity.compare import OutputCheck
from ..utils.records import to_json

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


def write_reports(directory: Path, manifest: Manifest, checks: list[OutputCheck], lint: dict, seconds: float) -> None:
    """Write `export_report.json` and `export_report.md` into `directory`."""
    m = manifest
    report = {
        "domain": m.domain, "variant": m.variant, "lowering": m.lowering, "opset": m.opset, "shots": m.shots,
        "untrained": m.untrained, "weights": to_json(m.weights), "parity": to_json(m.parity),
        "precision": to_json(m.precision), "tensorrt_ready": lint["ok"], "seconds": round(seconds, 1),
    }
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / REPORT_MD).write_text(markdown(manifest, checks, lint, seconds), encoding="utf-8")


def markdown(manifest: Manifest, checks: list[OutputCheck], lint: dict, seconds: float) -> str:
    """The Markdown report: settings, one parity row per graph output, what qualifies them."""
    m = manifest
    weights = f"**{m.weights_label}**" if m.untrained else m.weights.checkpoint
    lines = [
        f"# lfm-export report: {m.domain}",
        "",
        f"- variant: `{m.variant}`, lowering: `{m.lowering}`, opset {m.opset}, "
        f"{m.shots}-shot, {m.image_size}x{m.image_size}",
        f"- weights: {weights}",
        f"- TensorRT 10 lint: {'clean' if lint['ok'] else 'findings (see manifest.json)'}",
        f"- time: {seconds:.1f} s",
        "",
        "## Parity against the eager PyTorch model (onnxruntime CPU)",
        "",
        "| graph | output | shape | statistic | value | tolerance | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        notes = c.notes()
        value = c.tolerance.format(c.value) + (f" ({'; '.join(notes)})" if notes else "")
        shape = tuple(c.stats.shape) if c.stats is not None else "-"
        lines.append(f"| {c.graph} | {c.output} | {shape} | {c.tolerance.statistic} | {value} | "
                     f"{c.tolerance.describe()} | {'pass' if c.passed else '**FAIL**'} |")
    if not checks:
        lines.append("| - | - | - | - | - | - | not validated |")
    if any(c.is_mask and c.stats is not None and c.stats.vacuous for c in checks):
        lines += ["", "**The mask checks are vacuous**: the eager model predicts a single class on the validation "
                  "episode (the untrained default weights do), so mask agreement says little; the logits and feature "
                  "checks still hold. Export a trained checkpoint for a meaningful mask check."]
    if any(getattr(c.stats, "excluded", None) for c in checks):
        lines += ["", "Branch-cut channels: APM scales the phase, so a spectrum bin within 1e-5 sum|x| of the "
                  "negative real axis, whose side float32 rounding upstream decides, comes out near +s*pi in one "
                  "implementation and -s*pi in another (torch.fft included); those layer4 channels are left out of "
                  "the feature statistic and their effect is bounded by the logits and mask checks "
                  "(docs/numerics.md)."]
    if any(getattr(c.stats, "sign_ties", None) for c in checks):
        lines += ["", "ACPA sign ties: a channel entering ACPA summed to within rounding of zero, so its sign (and "
                  "through ACPA's linear layers the whole map) is decided by float32 rounding; the map was compared "
                  "with the eager ACPA evaluated on the side the export landed on."]
    lines += _precision_section(m.served_precision)
    sign = m.parity.acpa_sign_case if m.parity is not None else None
    if sign:
        lines += ["", "ACPA sign case (layer4 channels with a negative sum, whose DC phase is +pi): "
                  f"{sign['support']['negative_sum']} of {sign['support']['channels']} support channels, "
                  f"{sign['query']['negative_sum']} of {sign['query']['channels']} query channels "
                  "in the validation episode."]
    return "\n".join(lines) + "\n"


def _precision_section(precision: PrecisionRecord) -> list[str]:
    """The reduced-precision gate: one row per gated path, and what the figures mean."""
    if precision.name == "fp32" or precision.gate is None:
        return []
    gate = precision.gate
    th = gate.thresholds
    lines = ["", f"## {precision.name} against the eager float32 model ({precision.runtime.backend})", "",
             f"Gate: mask agreement >= {th['agreement']:.2%}, |mIoU difference| <= {th['miou_points']:g} points, "
             f"no differing pixel where the eager |logit margin| > {th['max_eager_margin']:g}. "
             f"Calibration: {precision.calibration}.", "",
             "| path | episodes | agreement | mask IoU | differing pixels | largest eager margin among them | "
             "mIoU (eager) | mIoU difference | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in gate.runs:
        largest = run["max_eager_margin_of_differing"]
        lines.append(
            f"| {run['backend']} | {run['episodes']} | {run['agreement']:.4%} | {run['mask_iou']:.4f} | "
            f"{run['differing_pixels']} of {run['pixels']} | {'-' if not run['differing_pixels'] else f'{largest:.3g}'} | "
            f"{run['miou']:.4f} ({run['miou_eager']:.4f}) | {run['miou_delta_points']:+.2f} | "
            f"{'pass' if run['passed'] else '**FAIL**: ' + '; '.join(run['failures'])} |")
    evidence = [run["evidence"] for run in gate.runs if run.get("evidence")]
    if evidence:
        ev = evidence[0]
        lines += ["", f"Evidence: {ev['informative_episodes']} of {ev['episodes']} episodes have informative eager "
                  f"masks; {ev['decisive_pixels']['background']} background and {ev['decisive_pixels']['foreground']} "
                  f"foreground pixels decided by the eager model (needed: {ev['rule']['min_episodes']} episodes, "
                  f"{ev['rule']['min_decisive_pixels']} pixels of each class). Episodes: {gate.runs[0]['data']}."]
    if any(run["vacuous"] for run in gate.runs):
        lines += ["", "**No evidence**: the eager masks carry too little information for a verdict, so the gate "
                  "fails. Gate on labelled images of your domain (`--calibration DIR`) with weights that segment them."]
    details = precision.details or {}
    trials = details.get("trials")
    if trials:
        chosen = details.get("float_groups")
        lines += ["", f"int8 nodes kept float, chosen by measured sensitivity on held-out episodes "
                  f"({len(details.get('groups') or ())} groups of Conv/MatMul nodes in graph order; "
                  f"the selection uses half the gate's budgets):", "",
                  "| trial | float share | agreement | mIoU diff (points) | within the halved budgets |",
                  "|---|---:|---:|---:|---|"]
        for t in trials:
            mark = " (chosen)" if t["float_groups"] == chosen else ""
            lines.append(f"| {t['what']}{mark} | {t['float_share']:.0%} | {t['agreement']:.4%} | "
                         f"{t['miou_delta_points']:+.2f} | {'yes' if t['passed'] else 'no'} |")
        lines += ["", f"Kept float: {details.get('float_share', 0):.0%} of the quantizable nodes "
                  f"(groups {', '.join(map(str, chosen)) if chosen else 'none'})."]
    return lines
