"""`reduce_precision`: make and gate the reduced-precision version of freshly exported graphs.

Called by `lfm_deploy.export.pipeline.export_domain` after the float32 graphs passed
validation, inside the export's temporary directory: int8 QDQ graphs whose float nodes are chosen
by measured sensitivity on held-out episodes (`lfm_deploy.precision.int8`), fp16 graphs with float32 islands
(`lfm_deploy.precision.fp16`), or bf16 (the float32 graphs in OpenVINO, islands chosen the same
way); then the one accuracy gate (`lfm_deploy.parity.gate`), whose episodes, evidence rule ("no
evidence, no pass", checked by `plan_gate` before anything is exported) and thresholds are in
docs/precision.md, "The gate". The caller records the figures in the manifest and refuses the
export (kept in `<out>.failed/`) when the gate fails.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

from ..contract import default_io
from ..errors import ExportError, PrecisionGateError
from ..manifest import PrecisionGate, PrecisionRecord, PrecisionRuntime
from ..parity.compare import Tolerance, Tolerances
from ..parity.episodes import EpisodeShape, graph_feeds_of, labelled_episodes, parity_episodes
from ..parity.gate import EVIDENCE_HINT, EagerReference, GateData, GateReport, eager_reference, \
    informative_episodes, run_gate
from ..runtime.backends import gate_backend
from ..runtime.sessions import SessionFromOnnx
from ..utils.records import freeze

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_SEED_OFFSET", "MAX_FLOAT_SHARE", "PRECISIONS", "SENSITIVITY_GROUPS", "GatePlan",
           "PrecisionResult", "plan_gate", "reduce_precision"]

#: Precisions `lfm-export --precision` makes ("fp32": the validated float32 graphs only).
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: int8: the quantizable Conv/MatMul nodes are cut into this many groups (contiguous, in graph
#: order) whose sensitivity is measured one by one (`_int8`).
SENSITIVITY_GROUPS = 8
#: int8: at most this share of the groups is kept float.
MAX_FLOAT_SHARE = 0.75
#: The int8 float layers are chosen with this share of the gate's budgets (agreement >= 1 - 0.5 x
#: (1 - gate), |mIoU difference| <= 0.5 x the gate's), keeping the rest for unseen episodes: on the
#: trained test checkpoint at 400 px, a share at -0.36 mIoU points on the held-out episodes came
#: to -1.64 on the gate's.
SELECTION_SLACK = 0.5
#: Default calibration episodes use seeds from `seed + CALIBRATION_SEED_OFFSET`: never the gate's.
CALIBRATION_SEED_OFFSET = 1000
#: The int8 float layers are chosen on held-out episodes (seeds from `seed + SELECTION_SEED_OFFSET`),
#: neither calibration nor gate data: on the calibration episodes themselves every activation is
#: inside its calibrated range, which flatters a share (400 px test checkpoint: 99.56% there,
#: 98.05% on the gate's episodes).
SELECTION_SEED_OFFSET = 2000
#: Default numbers of episodes.
CALIBRATION_EPISODES = 8
GATE_EPISODES = 6
#: At most this many of the user's labelled images are added to the gate (and calibration).
MAX_LABELLED = 16


@dataclass
class PrecisionResult:
    """What `reduce_precision` made.

    Attributes:
        precision: "fp16", "bf16" or "int8".
        graphs: {graph: file name} the runtime should load (the reduced-precision files for
            fp16/int8, the float32 files for bf16).
        runtime: how the gated path runs ({"backend": ..., "precision": ...}).
        calibration: where the calibration data came from.
        gates: the gate reports (encoder -> head path first, then the episode graph).
        details: per graph, how it was made (float nodes, ranges, tried shares).
    """

    precision: str
    graphs: dict
    runtime: dict
    calibration: str
    gates: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_manifest(self, tolerances: Tolerances) -> PrecisionRecord:
        """The manifest's `precision` record: what the runtime serves and the gate's verdict."""
        gate = PrecisionGate(
            self.passed, freeze({"agreement": tolerances.mask.limit, "max_eager_margin": tolerances.tie_margin,
                                 "miou_points": 100 * tolerances.miou.limit}),
            # what the verdict rests on: the gate's episodes and how informative the eager masks were
            evidence=freeze(self.gates[0].evidence.to_dict()) if self.gates and self.gates[0].evidence else None,
            episodes=freeze(self.gates[0].data) if self.gates else None,
            runs=freeze([g.to_dict() for g in self.gates]))
        runtime = PrecisionRuntime(**{k: freeze(v) for k, v in self.runtime.items()})
        return PrecisionRecord(self.precision, runtime, self.calibration, gate, freeze(dict(self.graphs)),
                               freeze(self.details))


@dataclass
class GatePlan:
    """The episodes a reduced-precision gate runs on, with the eager model's results, drawn
    before any graph is made (`plan_gate`).

    Attributes:
        gate: the gate's episodes (informative synthetic ones, then the user's labelled ones).
        reference: the eager float32 model's results on them.
        held_out: int8 / bf16 only: the episodes the float layers or islands are chosen on.
        held_out_reference: the eager results on those.
    """

    gate: GateData
    reference: EagerReference
    held_out: GateData | None = None
    held_out_reference: EagerReference | None = None


def plan_gate(precision: str, model, *, domain: str, shots: int, tolerances: Tolerances,
              calibration: str | os.PathLike | None = None, seed: int = 0, gate_episodes: int = GATE_EPISODES,
              calibration_episodes: int = CALIBRATION_EPISODES, threads: int | None = 2,
              step: Callable[[str], None] | None = None) -> GatePlan:
    """Draw the gate's episodes, run the eager model on them, and check they are evidence.

    Synthetic episodes are drawn under seeds `seed`, `seed + 1`, ... until `gate_episodes` of
    them give informative eager masks (at most 3x as many are drawn); the user's labelled images
    (`calibration`) all join. int8 and bf16 also get held-out episodes (seeds from
    `seed + SELECTION_SEED_OFFSET`) for choosing their float parts, drawn the same way.

    Raises:
        PrecisionGateError: the eager masks on the gate's episodes carry too little information
            for a verdict (`EvidenceRule`): the message says what is missing and how to supply it.
        DataError: an unreadable calibration folder.
    """
    step = step or (lambda what: None)
    size = int(model.image_size)
    meta = EpisodeShape(domain, int(shots), size)

    def draw(s: int):
        return parity_episodes(meta, 1, s)

    step(f"eager float32 reference on the gate's episodes (drawing {gate_episodes} informative ones)")
    data, ref = informative_episodes(model, draw, gate_episodes, seed, shots, tolerances, threads=threads)
    if calibration is not None:
        feeds, truths = labelled_episodes(calibration, meta, limit=MAX_LABELLED)
        mine = GateData(feeds, truths, f"your labelled images: {calibration} ({len(feeds)} episodes)")
        data, ref = data + mine, ref + eager_reference(model, mine, shots, threads=threads)
    evidence = ref.evidence(tolerances)
    if not evidence.sufficient:
        raise PrecisionGateError(
            f"--precision {precision} cannot be gated: {evidence.missing()} (on {data.label}); nothing was exported",
            api_hint=EVIDENCE_HINT.replace("lfm-export --calibration DIR", "calibration=DIR"),
            cli_hint=EVIDENCE_HINT)
    plan = GatePlan(data, ref)
    if precision in ("int8", "bf16"):  # the choice of float parts is made on episodes of its own
        step(f"eager float32 reference on {calibration_episodes} held-out episodes")
        plan.held_out, plan.held_out_reference = informative_episodes(
            model, draw, calibration_episodes, seed + SELECTION_SEED_OFFSET, shots, tolerances,
            label="held-out validation episodes", threads=threads)
    return plan


def reduce_precision(
    precision: str,
    workdir: str | os.PathLike,
    graphs: Mapping[str, str],
    model,
    *,
    domain: str,
    shots: int,
    tolerances: Tolerances,
    calibration: str | os.PathLike | None = None,
    seed: int = 0,
    gate_episodes: int = GATE_EPISODES,
    calibration_episodes: int = CALIBRATION_EPISODES,
    threads: int | None = 2,
    step: Callable[[str], None] | None = None,
    plan: GatePlan | None = None,
) -> PrecisionResult:
    """Make the reduced-precision graphs of an export and run the accuracy gate on them.

    Args:
        precision: "fp16", "bf16" or "int8".
        workdir: the export's directory (holds the float32 graphs; new graphs are written there).
        graphs: {graph: file name} of the float32 graphs ("episode", "encoder", "head").
        model: the eager float32 model the graphs were exported from.
        domain, shots: the export's domain and K.
        tolerances: the precision's gate (`Domain.precision_gates[precision]`).
        calibration: a labelled folder or index file (`lfm_deploy.data.open_support`): int8
            ranges and fp16 range checks are taken on it, and its episodes join the gate.
            None: the domain's validation episodes (other seeds than the gate's).
        seed: seed of the gate's validation episodes.
        gate_episodes, calibration_episodes: how many synthetic episodes each.
        threads: onnxruntime / OpenVINO / torch threads.
        step: progress callback, called with a description before each stage.
        plan: the gate's episodes and eager results (`plan_gate`, which `export_domain` calls
            before exporting); None: drawn here.

    Returns:
        `PrecisionResult` (check `.passed`).

    Raises:
        ExportError: unknown precision, or an export without the encoder/head pair.
        PrecisionGateError: no evidence for a verdict (`plan_gate`).
        DataError: an unreadable calibration folder.
        BackendUnavailable: bf16 without OpenVINO installed.
    """
    step = step or (lambda what: None)
    if precision not in PRECISIONS[1:]:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not {"encoder", "head"} <= set(graphs):
        raise ExportError(f"--precision {precision} needs the encoder/head pair (export with --split)")
    workdir = Path(workdir)
    size = int(model.image_size)
    meta = EpisodeShape(domain, int(shots), size)
    ios = {g: default_io(g, size, shots, model.feature_hw) for g in ("episode", "encoder", "head")}
    fp32 = {g: workdir / f for g, f in graphs.items()}

    if plan is None:
        plan = plan_gate(precision, model, domain=domain, shots=shots, tolerances=tolerances, calibration=calibration,
                         seed=seed, gate_episodes=gate_episodes, calibration_episodes=calibration_episodes,
                         threads=threads, step=step)
    gate_data, ref_gate = plan.gate, plan.reference
    held_out, ref_held_out = plan.held_out, plan.held_out_reference

    def gate(runner, data, ref, backend, tol=tolerances) -> GateReport:
        return run_gate(ref, runner, data, tol, precision=precision, backend=backend, shots=shots, image_size=size)

    selection = replace(tolerances, mask=Tolerance("agreement", 1 - SELECTION_SLACK * (1 - tolerances.mask.limit)),
                        miou=Tolerance("miou_delta", SELECTION_SLACK * tolerances.miou.limit))
    if precision == "bf16":
        return _bf16(fp32, graphs, ios, shots, gate_data, ref_gate, gate, threads, step, held_out, ref_held_out,
                     selection)
    step("reading calibration data")
    if calibration is not None:
        calib_feeds, _ = labelled_episodes(calibration, meta, limit=MAX_LABELLED)
        calib_label = f"your labelled images: {calibration} ({len(calib_feeds)} episodes)"
    else:
        first = seed + CALIBRATION_SEED_OFFSET
        calib_feeds, _ = parity_episodes(meta, calibration_episodes, first)
        calib_label = f"validation episodes (synthetic, seeds {first}..{first + calibration_episodes - 1})"
    encoder32 = SessionFromOnnx(fp32["encoder"], threads=threads, what="encoder graph")
    feeds = {g: graph_feeds_of(calib_feeds, g, ios, encoder32) for g in fp32}
    if precision == "int8":
        made, details = _int8(workdir, fp32, feeds, held_out, ref_held_out, lambda *a: gate(*a, tol=selection),
                              lambda out: _split(out, ios, shots, precision, threads=threads), step)
    else:
        made, details = _fp16(workdir, fp32, feeds, threads, step)
    result = PrecisionResult(precision, {g: p.name for g, p in made.items()},
                             {"backend": "onnxruntime", "precision": precision}, calib_label, details=details)
    step(f"{precision} gate: encoder -> head on {len(gate_data)} episodes")
    result.gates.append(gate(_split(made, ios, shots, precision, threads=threads), gate_data, ref_gate,
                             f"onnxruntime CPU, {precision} encoder -> head"))
    if "episode" in made:
        step(f"{precision} gate: episode graph")
        runner = gate_backend(precision).runner(made["episode"], threads=threads, name=f"{precision}-episode")
        result.gates.append(gate(runner,
                                 gate_data, ref_gate, f"onnxruntime CPU, {precision} episode graph"))
    return result


def _split(paths: Mapping[str, Path], ios: Mapping, shots: int, precision: str = "int8", **settings):
    """A `SplitRunner` over an encoder/head pair of files (the export's default contract), on the
    backend that gates `precision` (`gate_backend`)."""
    from ..parity.runners import SplitRunner

    backend = gate_backend(precision)
    return SplitRunner(backend.loader(paths["encoder"], **settings), backend.loader(paths["head"], **settings), ios,
                       shots)


def _slack(report: GateReport) -> float:
    """How far inside its budgets a report is, in units of each budget (>= 0: within both):
    the agreement's distance to its limit over the budget (1 - limit), and the mIoU's."""
    tol = report.tolerances
    agreement = report.mask.stats.agreement
    return min((agreement - tol.mask.limit) / (1 - tol.mask.limit), 1 - abs(report.miou_delta) / tol.miou.limit)


def _int8(workdir: Path, fp32, feeds, held_out: GateData, ref_held_out, gate, split, step):
    """Quantize the encoder/head pair, keeping float the groups of nodes the masks are most sensitive to.

    Every trial quantizes both graphs with a set of nodes kept float and runs the selection gate
    (half the budgets) on the held-out episodes. First everything int8; if that fails, one trial
    per group (`SENSITIVITY_GROUPS` contiguous groups of the head's quantizable nodes in graph
    order, the backbone's shared with the encoder) ranks the groups by the mask agreement reached
    with each alone float, then the most helpful groups are kept float together, one more per trial,
    until the masks pass or `MAX_FLOAT_SHARE` is reached. Without a pass, the trial closest to
    passing (`_slack`) goes to the gate. The episode graph keeps the same nodes float (`node_keys`).
    """
    import onnx

    from .int8 import node_keys, quantize_int8, sensitivity_groups

    out = {g: workdir / p.name.replace(".onnx", ".int8.onnx") for g, p in fp32.items()}
    caches = {g: workdir / f".{g}.int8-ranges.json" for g in fp32}
    keys = {g: node_keys(onnx.load(str(fp32[g]))) for g in fp32}
    groups = sensitivity_groups({g: keys[g] for g in ("encoder", "head")}, SENSITIVITY_GROUPS)
    n_groups, total = len(groups), sum(len(g) for g in groups)
    max_groups = max(0, math.floor(MAX_FLOAT_SHARE * n_groups + 1e-9))
    trials: list[dict] = []
    latest: dict = {}  # the encoder/head graphs the last trial wrote, and its float groups

    def keep_float(graph: str, chosen: tuple) -> dict:
        floats = {k for i in chosen for k in groups[i]}
        return {n: f"kept float by measured sensitivity (group {1 + next(i for i in chosen if k in groups[i])})"
                for n, k in keys[graph].items() if k in floats}

    def trial(chosen: tuple, what: str) -> dict:
        step(f"int8: quantizing encoder and head ({what})")
        latest.clear()
        latest.update({g: quantize_int8(fp32[g], out[g], feeds[g], keep_float=keep_float(g, chosen), cache=caches[g])
                       for g in ("encoder", "head")}, chosen=chosen)
        report = gate(split(out), held_out, ref_held_out, f"int8 encoder -> head, {what}")
        floats = sum(len(groups[i]) for i in chosen)
        record = {"float_groups": [1 + i for i in chosen], "float_share": floats / total,
                  "what": what, "agreement": report.mask.stats.agreement,
                  "miou_delta_points": 100 * report.miou_delta, "slack": _slack(report),
                  "passed": report.passed, "failures": report.failures}
        trials.append(record)
        return record

    chosen = None
    made = {}
    try:
        if trial((), "every node int8")["passed"]:
            chosen = ()
        elif max_groups >= 1:
            ranked = [trial((i,), f"group {i + 1} of {n_groups} kept float") for i in range(n_groups)]
            # Ranked by the agreement with the eager masks (how far they move); the mIoU difference
            # against the ground truth is a noisier proxy of it (its sign flips from group to group).
            order_by = sorted(range(n_groups), key=lambda i: (-ranked[i]["agreement"], -ranked[i]["slack"]))
            passing = sorted((i for i in range(n_groups) if ranked[i]["passed"]), key=lambda i: -ranked[i]["slack"])
            if passing:  # one group kept float is enough: the one that leaves the most slack
                chosen = (passing[0],)
            else:
                for size in range(2, max_groups + 1):
                    pick = tuple(sorted(order_by[:size]))
                    named = ", ".join(str(i + 1) for i in pick)
                    if trial(pick, f"the {size} most sensitive groups kept float ({named})")["passed"]:
                        chosen = pick
                        break
        if chosen is None:
            best = max(trials, key=lambda t: t["slack"])
            chosen = tuple(i - 1 for i in best["float_groups"])
            log.warning("int8: no trial (up to %.0f%% of the nodes kept float) passes the gate on the held-out "
                        "episodes; the closest one goes to the gate: %s", 100 * MAX_FLOAT_SHARE, best["what"])
        for g in fp32:  # the chosen graphs (the last trial's, where it was the chosen one), the episode graph alike
            if g in latest and latest["chosen"] == chosen:
                made[g] = latest[g]
                continue
            step(f"int8: quantizing the {g} graph")
            made[g] = quantize_int8(fp32[g], out[g], feeds[g], keep_float=keep_float(g, chosen), cache=caches[g])
    finally:
        for c in caches.values():
            c.unlink(missing_ok=True)
    share = sum(len(groups[i]) for i in chosen) / total
    details = {"trials": trials, "float_groups": [1 + i for i in chosen], "float_share": share,
               "groups": [len(g) for g in groups], "graphs": {g: m.to_dict() for g, m in made.items()},
               "selection": (f"by measured sensitivity: every trial quantized the encoder -> head pair with some of "
                             f"{n_groups} groups of Conv/MatMul nodes (graph order) kept float and checked the masks "
                             f"against the gate, with half its budgets, on {held_out.label}")}
    return {g: m.path for g, m in made.items()}, details


def _fp16(workdir: Path, fp32, feeds, threads, step):
    from .fp16 import prepare_fp16_graph

    made, details = {}, {}
    for g, src in fp32.items():
        step(f"fp16: range check and conversion of the {g} graph")
        out = workdir / src.name.replace(".onnx", ".fp16.onnx")
        graph = prepare_fp16_graph(src, out, feeds[g], threads=threads)
        out.with_suffix(".json").unlink(missing_ok=True)  # its figures go into the manifest instead
        made[g] = out
        details[g] = {"file": out.name, "conversion": graph.conversion.to_dict(), "ranges": graph.ranges.to_dict(top=5)}
    return made, {"graphs": details}


#: OpenVINO bf16 float32 islands tried in order (`lfm_deploy.runtime.openvino.ISLANDS`): none is
#: ~20% faster than GroupNorm in f32 (400 px head: 212 vs 267 ms), which moves the logits less.
BF16_ISLANDS = ((), ("groupnorm",))


def _bf16(fp32, graphs, ios, shots, gate_data, ref_gate, gate, threads, step, held_out=None, ref_held_out=None,
          selection=None):
    def split(islands):
        return _split(fp32, ios, shots, "bf16", threads=threads, f32_islands=islands)

    tried, chosen = [], BF16_ISLANDS[-1]
    if held_out is not None:
        for islands in BF16_ISLANDS:
            step(f"bf16: f32 islands {', '.join(islands) or 'none'} on {len(held_out)} held-out episodes")
            report = gate(split(islands), held_out, ref_held_out, f"OpenVINO bf16, f32 islands {islands or 'none'}",
                          tol=selection)
            tried.append({"f32_islands": list(islands), "agreement": report.mask.stats.agreement,
                          "miou_delta_points": 100 * report.miou_delta, "passed": report.passed})
            if report.passed:
                chosen = islands
                break
    result = PrecisionResult("bf16", dict(graphs),
                             {"backend": "openvino", "precision": "bf16", "f32_islands": list(chosen)},
                             "none needed (bf16 keeps float32's range)",
                             details={"f32_islands": list(chosen), "islands_tried": tried})
    step(f"bf16 gate: OpenVINO encoder -> head on {len(gate_data)} episodes")
    result.gates.append(gate(split(chosen), gate_data, ref_gate, "OpenVINO CPU bf16, encoder -> head"))
    if "episode" in fp32:
        step("bf16 gate: OpenVINO episode graph")
        runner = gate_backend("bf16").runner(fp32["episode"], threads=threads, name="bf16-episode",
                                             f32_islands=chosen)
        result.gates.append(gate(runner, gate_data, ref_gate, "OpenVINO CPU bf16, episode graph"))
    return result
