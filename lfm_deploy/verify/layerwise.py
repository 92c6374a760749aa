"""Layer-wise parity: the episode's intermediate tensors, eager vs exported, in pipeline order.

`LayerwiseEpisode` computes a K-shot episode step by step (the same calls as `EpisodeGraph`)
and returns every stage as a named output: backbone layer4 features, APM output, the resized
support masks, ACPA output, the three correlation stacks, the learner's logits and the final
logits. Run eagerly it is the reference; exported from the *prepared* model (same lowering and
numerics twins as the artifact, `prepare_for_export`) it is a debug graph whose outputs are
exactly the corresponding ONNX tensors, named. Comparing the two stage by stage gives the first
place where a mismatch exceeds tolerance: Polygraphy's `--onnx-outputs mark all` idea, with
tensors matched by meaning instead of by position.

Every stage is laid out (B, K, ...) (or (B, ...) for query-only stages) so that the batch stays
the only dynamic dim.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contract import TensorSpec, default_io
from ..models.graphs import EpisodeGraph, pair_with_shots
from ..models.correlation import multilayer_correlation
from ..models.hsnet import LAYER4_START, LFMHSNet

log = logging.getLogger(__name__)

__all__ = ["LayerwiseEpisode", "StageCheck", "compare_stages", "export_layerwise_graph", "first_mismatch"]


def _per_shot(x: torch.Tensor, shots: int) -> torch.Tensor:
    """(B*K, ...) -> (B, K, ...)."""
    return x.reshape((-1, shots) + tuple(x.shape[1:]))


class LayerwiseEpisode(nn.Module):
    """A K-shot episode that returns its intermediate stages, in pipeline order.

    Args:
        model: the eager model, or a prepared copy (for export).
        shots: K.
    """

    def __init__(self, model: LFMHSNet, shots: int):
        super().__init__()
        self.model = model
        self.shots = int(shots)

    def stage_names(self) -> list[str]:
        """Output names, in the order the pipeline computes them."""
        m = self.model
        names = ["backbone.query", "backbone.support"]
        if m.apm_variant is not None:
            names += ["apm.query", "apm.support"]
        names += ["mask_resize.l2", "mask_resize.l3", "mask_resize.l4"]
        if m.use_acpa:
            names += ["acpa.query", "acpa.support"]
        return names + ["correlation.l4", "correlation.l3", "correlation.l2", "learner", "logits"]

    def forward(self, query_img, support_imgs, support_masks):
        m, k = self.model, self.shots
        out = {}
        qf = m.extract_features(query_img)
        imgs = support_imgs.reshape((-1,) + tuple(support_imgs.shape[2:]))
        masks = support_masks.reshape((-1,) + tuple(support_masks.shape[2:]))
        sf = m.extract_features(imgs)
        out["backbone.query"] = torch.stack(qf[LAYER4_START:], dim=1)
        out["backbone.support"] = _per_shot(torch.stack(sf[LAYER4_START:], dim=1), k)
        # The same order as LFMHSNet.encode_query / encode_support: APM, mask, ACPA.
        if m.apm_variant is not None:
            qf = m.apply_to_layer4(m.apm, qf)
            sf = m.apply_to_layer4(m.apm, sf)
            out["apm.query"] = torch.stack(qf[LAYER4_START:], dim=1)
            out["apm.support"] = _per_shot(torch.stack(sf[LAYER4_START:], dim=1), k)
        mask = masks.unsqueeze(1).to(sf[0].dtype)
        for name, hw in zip(("l2", "l3", "l4"), m.feature_hw):
            out[f"mask_resize.{name}"] = _per_shot(m.mask_resize(mask, (hw, hw))[:, 0], k)
        sf = m.mask_support_features(sf, masks)
        if m.use_acpa:
            qf = m.apply_to_layer4(m.acpa, qf)
            sf = m.apply_to_layer4(m.acpa, sf)
            out["acpa.query"] = torch.stack(qf[LAYER4_START:], dim=1)
            out["acpa.support"] = _per_shot(torch.stack(sf[LAYER4_START:], dim=1), k)
        # LFMHSNet.head, unrolled: correlation -> learner -> bilinear upsampling.
        corr = multilayer_correlation(pair_with_shots(qf, k), sf)
        for name, c in zip(("l4", "l3", "l2"), corr):
            out[f"correlation.{name}"] = _per_shot(c, k)
        learner = m.hpn_learner(corr)
        out["learner"] = _per_shot(learner, k)
        logits = F.interpolate(learner, query_img.shape[-2:], mode="bilinear", align_corners=True)
        out["logits"] = _per_shot(logits, k)
        return tuple(out[n] for n in self.stage_names())

    def inputs(self, s: int) -> list[TensorSpec]:
        return EpisodeGraph(self.model, self.shots).inputs(s)

    def outputs(self, s: int) -> list[TensorSpec]:
        m, k = self.model, self.shots
        l2, l3, l4 = m.feature_hw
        feat4 = (3, 2048, l4, l4)
        shapes = {
            "backbone.query": ("B",) + feat4, "backbone.support": ("B", k) + feat4,
            "apm.query": ("B",) + feat4, "apm.support": ("B", k) + feat4,
            "acpa.query": ("B",) + feat4, "acpa.support": ("B", k) + feat4,
            "mask_resize.l2": ("B", k, l2, l2), "mask_resize.l3": ("B", k, l3, l3), "mask_resize.l4": ("B", k, l4, l4),
            "correlation.l4": ("B", k, 3, l4, l4, l4, l4), "correlation.l3": ("B", k, 6, l3, l3, l3, l3),
            "correlation.l2": ("B", k, 4, l2, l2, l2, l2),
            "learner": ("B", k, 2, 2 * l2, 2 * l2), "logits": ("B", k, 2, s, s),
        }
        return [TensorSpec(n, "float32", shapes[n]) for n in self.stage_names()]


def export_layerwise_graph(model: LFMHSNet, shots: int, lowering: str, path: str | os.PathLike,
                           example: Mapping[str, np.ndarray], *, opset: int = 20) -> Path:
    """Export the layerwise debug graph of `model` with the given FFT lowering.

    The model is prepared exactly as `lfm-export` prepares it (`prepare_for_export`), so the
    debug graph's stages are the artifact's own computations.

    Args:
        model: the eager model (left unchanged).
        shots: K.
        lowering: the artifact's lowering ("matmul" or "dft").
        path: the .onnx file to write.
        example: an episode feed (query_img, support_imgs, support_masks).
        opset: ONNX opset (the artifact's).

    Returns:
        The path written.

    Raises:
        ExportError: the export failed.
    """
    from ..export.onnx_export import export_onnx
    from ..export.prepare import prepare_for_export

    prepared = prepare_for_export(model, lowering)
    module = LayerwiseEpisode(prepared, shots).eval()
    io = default_io("episode", model.image_size, shots)
    args = tuple(torch.from_numpy(np.asarray(example[io.input(r)])) for r in ("query", "supports", "masks"))
    if lowering == "dft":  # torch.export specialises dims of size 1: give the batch two rows
        args = tuple(a.repeat(2, *([1] * (a.dim() - 1))) for a in args)
    size = model.image_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(module, args, path, module.inputs(size), module.outputs(size), opset=opset,
                dynamo=lowering == "dft", simplify=True)
    return path


@dataclass
class StageCheck:
    """One intermediate stage compared with its reference.

    Attributes:
        stage: stage name (e.g. "apm.query").
        shape: tensor shape.
        max_abs, max_rel_to_peak, rel_l2, cosine: error statistics.
        tolerance: bound on max_rel_to_peak.
        passed: within tolerance.
    """

    stage: str
    shape: list
    max_abs: float
    max_rel_to_peak: float
    rel_l2: float
    cosine: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare_stages(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], order: Sequence[str],
                   tolerance_rel: float) -> list[StageCheck]:
    """Compare stages in pipeline order; max |error| relative to each stage's peak.

    Args:
        got: backend stage outputs (iterations concatenated along the batch).
        ref: reference stage outputs.
        order: stage names in pipeline order.
        tolerance_rel: bound on max_abs / max|ref|.

    Returns:
        One `StageCheck` per stage present in both.
    """
    from ..parity.compare import error_stats

    checks = []
    for stage in order:
        if stage not in got or stage not in ref:
            continue
        s = error_stats(got[stage], ref[stage])
        checks.append(StageCheck(stage, s.shape, s.max_abs, s.max_rel_to_peak, s.rel_l2, s.cosine, tolerance_rel,
                                 bool(s.nonfinite == 0 and s.max_rel_to_peak <= tolerance_rel)))
    return checks


def first_mismatch(checks: Sequence[StageCheck]) -> str | None:
    """The first stage (in pipeline order) outside tolerance, or None."""
    return next((c.stage for c in checks if not c.passed), None)
