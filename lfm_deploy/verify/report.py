"""lfm-verify reports: JSON (everything), Markdown (tables), PNG (error distributions)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from ..utils.outputs import OutputDir, stamp
from .job import VerifyReport

log = logging.getLogger(__name__)

__all__ = ["REPORT_FILES", "markdown", "plot_errors", "write_report"]

REPORT_FILES = {"json": "verify.json", "markdown": "verify.md", "png": "verify.png"}


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    return f"{v:.{digits}g}"


def readable_time(ms: float | None) -> str:
    """A duration for people: '412 ms', '6.4 s', '1 min 04 s' (never '6.416e+04')."""
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.2g} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def markdown(report: VerifyReport) -> str:
    """The report as Markdown: backends (skipped ones with reasons), per-output statistics,
    mIoU, and the layer-wise stages."""
    m = report.model
    lines = [
        f"# lfm-verify: {m.get('domain')} ({m.get('variant')}, {m.get('lowering')} lowering, "
        f"{m.get('shots')}-shot, {m.get('image_size')}x{m.get('image_size')})",
        "",
        f"- artifacts: `{report.artifact_dir}`" + (f" (weights: {m.get('weights_label') or 'UNTRAINED default'})" if m.get("untrained") else ""),
        f"- {report.episodes} seeded episode(s) from seed {report.seed}; reference: `{report.reference}`",
        f"- result: **{'PASS' if report.passed else 'FAIL'}**"
        + (f" ({', '.join(b.name for b in report.failures)} outside tolerance)" if report.failures else ""),
        f"- time: {readable_time(1000 * report.seconds)}",
        "",
        "## Backends",
        "",
        "| backend | status | what ran / reason | mean time per episode |",
        "|---|---|---|---|",
    ]
    for b in report.backends:
        what = b.description if b.ran else b.reason
        if b.status in ("failed", "error"):
            what = f"{b.description}: {b.reason}" if b.description else b.reason
        lines.append(f"| {b.name} | {b.status} | {what.replace('|', '/')} | {readable_time(b.mean_ms)} |")
    lines += [
        "",
        f"## Outputs against `{report.reference}`",
        "",
        "| backend | output | max abs | mean abs | rel L2 | cosine | p50 | p90 | p99 | p99.9 | agreement | IoU | check | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report.backends:
        for o in b.outputs:
            s = o.stats
            notes = "".join(f"; {n}" for n in o.notes())
            check = f"{o.tolerance.statistic} {o.tolerance.format(o.value)} ({o.tolerance.describe()}{notes})"
            res = "pass" if o.passed else "**FAIL**"
            if o.kind in ("logits", "features"):
                q = s.quantiles
                lines.append(f"| {b.name} | {o.output} | {_fmt(s.max_abs)} | {_fmt(s.mean_abs)} | {_fmt(s.rel_l2)} | "
                             f"{s.cosine:.9f} | {_fmt(q['p50'])} | {_fmt(q['p90'])} | {_fmt(q['p99'])} | {_fmt(q['p99.9'])} "
                             f"| - | - | {check} | {res} |")
            elif o.kind == "mask" and s is not None:
                lines.append(f"| {b.name} | {o.output} | - | - | - | - | - | - | - | - | {s.agreement:.6f} "
                             f"({s.flipped} px) | {s.iou:.6f} | {check} | {res} |")
            else:
                lines.append(f"| {b.name} | {o.output} | missing | | | | | | | | | | | **FAIL** |")
    if any(o.kind == "mask" and o.stats is not None and o.stats.vacuous for b in report.backends for o in b.outputs):
        lines += ["", "**The mask checks are vacuous**: the reference predicts a single class on these episodes (the "
                  "untrained default weights do), so mask agreement says little; the logits checks still hold."]
    lines += ["", "## mIoU against the episodes' ground truth", "",
              "| backend | mIoU | delta vs eager-fp32 | tolerance | result |", "|---|---|---|---|---|"]
    for b in report.backends:
        if b.miou is None:
            continue
        tol = b.miou_tolerance.describe() if b.miou_tolerance else "-"
        res = "-" if b.miou_passed is None else ("pass" if b.miou_passed else "**FAIL**")
        delta = "-" if b.miou_delta is None else f"{b.miou_delta:+.5f}"
        lines.append(f"| {b.name} | {b.miou:.5f} | {delta} | {tol} | {res} |")
    if report.layerwise:
        lw = report.layerwise
        first = lw.get("first_mismatch")
        lines += ["", f"## Layer-wise ({lw['backend']} vs {lw['reference']}, first episode)", "",
                  f"First stage outside tolerance (max |error| / peak <= {lw['tolerance_rel']:g}): "
                  + (f"**{first}**" if first else "none"), "",
                  "| stage | shape | max abs | max abs / peak | rel L2 | cosine | result |", "|---|---|---|---|---|---|---|"]
        for s in lw["stages"]:
            lines.append(f"| {s['stage']} | {tuple(s['shape'])} | {_fmt(s['max_abs'])} | {_fmt(s['max_rel_to_peak'])} | "
                         f"{_fmt(s['rel_l2'])} | {s['cosine']:.9f} | {'pass' if s['passed'] else '**FAIL**'} |")
    env = report.environment
    lines += ["", "## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items() if k != "onnxruntime_providers"),
              f"onnxruntime providers: {', '.join(env.get('onnxruntime_providers', []))}"]
    return "\n".join(lines) + "\n"


def plot_errors(report: VerifyReport, path: str | os.PathLike) -> Path:
    """PNG: per float output, the distribution of |error| of every backend that ran
    (log-scale histograms), skipped backends named in the legend; plus the layer-wise stages.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    float_outputs = sorted({o.output for b in report.backends for o in b.outputs if o.kind in ("logits", "features")})
    panels = len(float_outputs) + (1 if report.layerwise else 0)
    fig = Figure(figsize=(9, 3.6 * max(panels, 1)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(panels, 1), 1, squeeze=False)[:, 0]
    skipped = [f"{b.name}: skipped" for b in report.backends if b.status == "skipped"]
    for ax, out in zip(axes, float_outputs):
        plotted = False
        for b in report.backends:
            for o in b.outputs:
                if o.output != out or o.kind not in ("logits", "features") or o.stats.sample is None:
                    continue
                err = o.stats.sample[o.stats.sample > 0]
                if err.size == 0:
                    continue
                bins = np.logspace(np.log10(max(err.min(), 1e-12)), np.log10(err.max()) + 1e-9, 60)
                ax.hist(err, bins=bins, histtype="step", linewidth=1.4,
                        label=f"{b.name} (max {o.stats.max_abs:.2g}, {'ok' if o.passed else 'FAIL'})")
                if o.tolerance.statistic == "max_abs":
                    ax.axvline(o.tolerance.limit, color="grey", linestyle=":", linewidth=1)
                plotted = True
        ax.set_xscale("log")
        ax.set_xlabel(f"|{out} - {report.reference}|")
        ax.set_ylabel("elements")
        ax.set_title(f"{out}: absolute error distribution ({report.episodes} episode(s))")
        handles, labels = ax.get_legend_handles_labels()
        for s in skipped:
            handles.append(ax.plot([], [], " ")[0])
            labels.append(s)
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="upper right")
        if not plotted:
            ax.text(0.5, 0.5, "no backend produced a nonzero error", ha="center", va="center", transform=ax.transAxes)
    if not float_outputs and not report.layerwise:
        axes[0].text(0.5, 0.5, "no float outputs compared (K-shot episodes output masks only)", ha="center",
                     va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    if report.layerwise:
        ax = axes[-1]
        stages = report.layerwise["stages"]
        vals = [max(s["max_rel_to_peak"], 1e-12) for s in stages]
        colors = ["tab:green" if s["passed"] else "tab:red" for s in stages]
        ax.bar(range(len(stages)), vals, color=colors)
        ax.axhline(report.layerwise["tolerance_rel"], color="grey", linestyle=":")
        ax.set_yscale("log")
        ax.set_xticks(range(len(stages)), [s["stage"] for s in stages], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("max |error| / peak")
        ax.set_title(f"layer-wise ({report.layerwise['backend']}); first mismatch: "
                     f"{report.layerwise.get('first_mismatch') or 'none'}")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


#: What `write_report` writes (recorded in the report directory).
REPORT_KIND = "lfm-verify report"


def write_report(report: VerifyReport, out_dir: str | os.PathLike | OutputDir) -> dict[str, Path]:
    """Write verify.json, verify.md and verify.png into `out_dir` (created), each atomically.

    Args:
        report: the verification report.
        out_dir: a directory path, or an `OutputDir` already checked by the caller. Files of
            an earlier report are replaced; other existing files are refused (`OutputError`).

    Returns:
        {"json": path, "markdown": path, "png": path}.
    """
    out = out_dir if isinstance(out_dir, OutputDir) else OutputDir(out_dir, flag=None, kind=REPORT_KIND,
                                                                     overwrite_flag=None)
    out.claim(REPORT_FILES.values())
    data = report.to_dict()
    paths = {
        "json": out.write_text(REPORT_FILES["json"], json.dumps(stamp(data, REPORT_KIND), indent=2,
                                                                default=_json_default) + "\n"),
        "markdown": out.write_text(REPORT_FILES["markdown"], markdown(report)),
        "png": out.write(REPORT_FILES["png"], lambda tmp: plot_errors(report, tmp)),
    }
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
