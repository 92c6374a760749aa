"""`check_export`: an export's graphs against the eager float32 model, through the one stack.

Run phase: each graph in onnxruntime (the "ort-cpu" backend: the runtime's session loader), the encoder
reference through `EagerRunner`, the episode reference from the eager model's own K-shot loop.
Comparison phase: `compare_output` with the domain's `Tolerances` and the model's mask rules
(docs/numerics.md): masks identical wherever the eager model is decisive, layer4 channels on
APM's branch cut left out of the feature statistic, ACPA sign ties compared on the side the
export landed on. The head runs on the *exported* encoder's features, so the logits and mask
checks bound whatever the feature check leaves out.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping

import numpy as np
import torch

from ..contract import default_io
from ..models.hsnet import LAYER4_START, LFMHSNet, vote_masks
from .compare import OutputCheck, Tolerances, branch_cut_channels, compare_output, decision_margins
from .numerics import acpa_input, resolve_acpa_ties
from ..runtime.backends import get_backend
from .runners import EagerRunner, run_feeds

log = logging.getLogger(__name__)

__all__ = ["check_export"]

_FEATURES = ("l2", "l3", "l4")


def check_export(model: LFMHSNet, paths: Mapping[str, str | os.PathLike], shots: int, episode: Mapping[str, np.ndarray],
                 tolerances: Tolerances, *, threads: int | None = 2,
                 step: Callable[[str], None] | None = None) -> list[OutputCheck]:
    """Compare every exported graph with the eager model on one validation episode.

    Args:
        model: the eager float32 model the graphs were exported from (not the prepared twin).
        paths: {"episode": path, and with the split pair "encoder", "head"}.
        shots: K.
        episode: the episode graph's feed (`lfm_deploy.parity.episodes.validation_episode`).
        tolerances: the float32 parity tolerances (the domain registry's, per lowering).
        threads: onnxruntime threads.
        step: called with a description before each graph (progress reporting).

    Returns:
        One `OutputCheck` per graph output, in graph order.
    """
    step = step or (lambda what: None)
    size = model.image_size
    io = {g: default_io(g, size, shots, model.feature_hw) for g in paths}
    ep = io["episode"]
    q, s, m = (torch.from_numpy(np.asarray(episode[ep.input(r)])) for r in ("query", "supports", "masks"))
    with torch.no_grad():
        ref_logits = model.shot_logits(q, s, m)
    ref_votes = torch.stack([x.argmax(1) for x in ref_logits]).sum(0)
    ref_mask = vote_masks(ref_votes, shots).numpy()
    margin = decision_margins([x.numpy() for x in ref_logits])
    tol = tolerances

    def judge_mask(graph: str, got: np.ndarray) -> OutputCheck:
        return compare_output(graph, io[graph].output("mask"), got, ref_mask, tol.mask, "mask", margin=margin,
                              tie_margin=tol.tie_margin)

    checks: list[OutputCheck] = []
    step("validating episode graph in onnxruntime")
    outs, _ = run_feeds(get_backend("ort-cpu").runner(paths["episode"], threads=threads, name="episode"), [episode])
    if ep.has_output("logits"):
        name = ep.output("logits")
        checks.append(compare_output("episode", name, outs[name][0], ref_logits[0].numpy(), tol.logits, "logits"))
    checks.append(judge_mask("episode", outs[ep.output("mask")][0]))

    if "encoder" in paths:
        enc, head = io["encoder"], io["head"]
        step("validating encoder graph in onnxruntime")
        feed = enc.feed(image=s[0].numpy(), mask=m[0].numpy())
        ref, _ = run_feeds(EagerRunner(model, "encoder", shots=shots, name="eager-encoder"), [feed])
        got, _ = run_feeds(get_backend("ort-cpu").runner(paths["encoder"], threads=threads, name="encoder"), [feed])
        got = {r: got[enc.output(r)][0] for r in _FEATURES}
        ref = {r: ref[enc.output(r)][0] for r in _FEATURES}
        # The two rounding-decided steps of the masker (docs/numerics.md).
        exclude = ties = None
        backbone = model.extract_features(s[0])
        if model.apm_variant is not None:  # channels whose phase scaling sits on the atan2 branch cut
            exclude = branch_cut_channels(torch.stack(backbone[LAYER4_START:], dim=1).numpy())
        if model.use_acpa:  # ACPA's pooled phase steps where a channel sum crosses zero
            ref["l4"], _, ties = resolve_acpa_ties(model.acpa, acpa_input(model, backbone, m[0]), got["l4"], ref["l4"])
        for r in _FEATURES:
            l4 = r == "l4"
            checks.append(compare_output("encoder", enc.output(r), got[r], ref[r], tol.features, "features",
                                         exclude=exclude if l4 else None, sign_ties=ties if l4 else None))

        step("validating head graph in onnxruntime")
        feed = head.feed(query=q.numpy(), **got)
        outs, _ = run_feeds(get_backend("ort-cpu").runner(paths["head"], threads=threads, name="head"), [feed])
        name = head.output("per_shot")
        checks.append(compare_output("head", name, outs[name][0], torch.stack(ref_logits, dim=1).numpy(),
                                     tol.logits, "logits"))
        checks.append(judge_mask("head", outs[head.output("mask")][0]))
    for c in checks:
        (log.info if c.passed else log.error)("%s", c.line())
    return checks
