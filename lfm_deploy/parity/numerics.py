"""The eager-side quantities the mask rules need (docs/numerics.md): ACPA's input, the sign ties
of its pooled phase and how an export resolved them, and the sign case a validation covers.

These recompute parts of the eager model (torch); `lfm_deploy.parity.compare` judges with them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from ..contract import graph_specs
from ..models.hsnet import LAYER4_START, LFMHSNet
from ..models.masker import PhaseAttention
from .compare import BRANCH_CUT_REL

__all__ = ["MAX_ACPA_TIES", "acpa_input", "acpa_sign_case", "resolve_acpa_ties"]


def acpa_input(model: LFMHSNet, feats: list[torch.Tensor], support_mask: torch.Tensor) -> torch.Tensor:
    """The eager support features (`model.extract_features`) as their layer4 part enters ACPA,
    after APM and the mask: (N, 3, C, h, w)."""
    with torch.no_grad():
        if model.apm_variant is not None:
            feats = model.apply_to_layer4(model.apm, feats)
        feats = model.mask_support_features(feats, support_mask)
    return torch.stack(feats[LAYER4_START:], dim=1)


#: Ties per map beyond which `resolve_acpa_ties` does not enumerate the sign patterns (2^n).
MAX_ACPA_TIES = 4


def resolve_acpa_ties(acpa: PhaseAttention, x: torch.Tensor, got: np.ndarray, ref: np.ndarray
                      ) -> tuple[np.ndarray, int, int]:
    """The eager ACPA output with each sign tie resolved the way the exported graph resolved it.

    ACPA's pooled phase counts the self-conjugate spectrum bins (the DC: the channel's sum) that
    are negative (`lfm_deploy.export.lowering.self_conjugate_phase_mean`), a step at zero. A bin within
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
    h, w = x.shape[-2:]
    positions = [(i, j) for i, j in ((0, 0), (h // 2, 0), (0, w // 2), (h // 2, w // 2))  # self_conjugate_sums' order
                 if (i == 0 or h % 2 == 0) and (j == 0 or w % 2 == 0)]
    x64 = x.double()
    scale = x64.abs().sum(dim=(-2, -1))[..., None]
    # The self-conjugate bins are real: their values are the (alternating) sums of the map.
    spectrum64 = torch.fft.fft2(x64)
    bins_real = torch.stack([spectrum64[..., i, j].real for i, j in positions], dim=-1)
    ties = ((bins_real.abs() <= BRANCH_CUT_REL * scale) & (scale > 0)).numpy()
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
    (docs/numerics.md). Reported so that a validation run shows it covered that case.

    Returns:
        {"support": {"channels", "negative_sum"}, "query": {...}} or None without ACPA.
    """
    if not model.use_acpa:
        return None
    names = [t.name for t in graph_specs("episode", model.image_size, 1, ())[0]]  # query, supports, masks
    q, s, m = (torch.from_numpy(episode[k]) for k in names)
    with torch.no_grad():
        support = model.extract_features(s.reshape((-1,) + tuple(s.shape[2:])))
        query = model.extract_features(q)
        if model.apm_variant is not None:
            support = model.apply_to_layer4(model.apm, support)
            query = model.apply_to_layer4(model.apm, query)
        support = model.mask_support_features(support, m.reshape((-1,) + tuple(m.shape[2:])))
    out = {}
    for name, feats in (("support", support), ("query", query)):
        sums = torch.stack(feats[LAYER4_START:], dim=1).sum(dim=(-2, -1))
        out[name] = {"channels": int(sums.numel()), "negative_sum": int((sums < 0).sum())}
    return out
