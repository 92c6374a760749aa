"""An independent, functional implementation of HSNet + LFM for testing the model package.

Written from the published method (HSNet, Min et al. 2021; LFM, Tong et al. 2024) directly on a
state dict with torch.nn.functional: no module of `lfm_deploy.models` is used. It keeps the
official code's all-dims `fftshift` (so APM-M masks must be given in the official convention),
prunes support dims by strided slicing instead of index_select, builds correlations with einsum
and GroupNorm with F.group_norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCKS = (3, 4, 6, 3)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)


def backbone_features(sd, img):
    p = "backbone."
    x = F.relu(_bn(F.conv2d(img, sd[p + "conv1.weight"], stride=2, padding=3), sd, p + "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = []
    for layer, n in enumerate(BLOCKS, start=1):
        for b in range(n):
            q = f"{p}layer{layer}.{b}."
            stride = 2 if (b == 0 and layer > 1) else 1
            out = F.relu(_bn(F.conv2d(x, sd[q + "conv1.weight"]), sd, q + "bn1"))
            out = F.relu(_bn(F.conv2d(out, sd[q + "conv2.weight"], stride=stride, padding=1), sd, q + "bn2"))
            out = _bn(F.conv2d(out, sd[q + "conv3.weight"]), sd, q + "bn3")
            res = x
            if b == 0:
                res = _bn(F.conv2d(x, sd[q + "downsample.0.weight"], stride=stride), sd, q + "downsample.1")
            out = out + res
            if layer >= 2:
                feats.append(out)
            x = F.relu(out)
    return feats


def apm_official(sd, x):
    """Official MaskModule forward: fftshift/ifftshift over ALL dims (the upstream quirk)."""
    spec = torch.fft.fftshift(torch.fft.fft2(x))
    amp = torch.sigmoid(sd["apm.mask_amplitude"]) * torch.abs(spec)
    pha = torch.sigmoid(sd["apm.mask_phase"]) * torch.angle(spec)
    spec = torch.complex(amp * torch.cos(pha), amp * torch.sin(pha))
    return torch.fft.ifft2(torch.fft.ifftshift(spec)).real


def acpa_official(sd, x):
    pooled = torch.angle(torch.fft.fft2(x)).mean(dim=(2, 3))
    hidden = F.relu(pooled @ sd["acpa.phase_attn.0.weight"].t())
    return x * torch.sigmoid(hidden @ sd["acpa.phase_attn.2.weight"].t())[:, :, None, None]


def correlations(qf, sf):
    out = []
    for q, s in zip(qf, sf):
        qn = q / (torch.linalg.vector_norm(q, dim=1, keepdim=True) + 1e-5)
        sn = s / (torch.linalg.vector_norm(s, dim=1, keepdim=True) + 1e-5)
        out.append(torch.einsum("bcij,bckl->bijkl", qn, sn).clamp(min=0))
    return [torch.stack(out[10:], 1), torch.stack(out[4:10], 1), torch.stack(out[:4], 1)]


def conv4d(sd, p, x, k, s):
    b, c, hq, wq, hs, ws = x.shape
    w1, b1 = sd[p + ".conv1.weight"], sd[p + ".conv1.bias"]
    w2, b2 = sd[p + ".conv2.weight"], sd[p + ".conv2.bias"]
    pruned = x[..., ::s, ::s]
    ph, pw = pruned.shape[-2:]
    o1 = F.conv2d(pruned.permute(0, 4, 5, 1, 2, 3).reshape(-1, c, hq, wq), w1, b1, padding=k // 2)
    o1 = o1.reshape(b, ph, pw, -1, hq, wq).permute(0, 3, 4, 5, 1, 2)
    o2 = F.conv2d(x.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, hs, ws), w2, b2, stride=s, padding=k // 2)
    o2 = o2.reshape(b, hq, wq, -1, *o2.shape[-2:]).permute(0, 3, 1, 2, 4, 5)
    return o1 + o2


def block(sd, name, x, kernels, strides):
    for i, (k, s) in enumerate(zip(kernels, strides)):
        x = conv4d(sd, f"hpn_learner.{name}.{3 * i}", x, k, s)
        g = f"hpn_learner.{name}.{3 * i + 1}"
        x = F.relu(F.group_norm(x, 4, sd[g + ".weight"], sd[g + ".bias"], 1e-5))
    return x


def up_query(x, size):
    b, c, hq, wq, hs, ws = x.shape
    y = x.permute(0, 4, 5, 1, 2, 3).reshape(-1, c, hq, wq)
    y = F.interpolate(y, size, mode="bilinear", align_corners=True)
    return y.reshape(b, hs, ws, c, *size).permute(0, 3, 4, 5, 1, 2)


def learner(sd, pyr):
    s4 = block(sd, "encoder_layer4", pyr[0], [3, 3, 3], [2, 2, 2])
    s3 = block(sd, "encoder_layer3", pyr[1], [5, 3, 3], [4, 2, 2])
    s2 = block(sd, "encoder_layer2", pyr[2], [5, 5, 3], [4, 4, 2])
    m = block(sd, "encoder_layer4to3", up_query(s4, s3.shape[2:4]) + s3, [3, 3, 3], [1, 1, 1])
    m = block(sd, "encoder_layer3to2", up_query(m, s2.shape[2:4]) + s2, [3, 3, 3], [1, 1, 1])
    enc = m.flatten(4).mean(-1)
    d = "hpn_learner.decoder"
    y = F.relu(F.conv2d(enc, sd[d + "1.0.weight"], sd[d + "1.0.bias"], padding=1))
    y = F.relu(F.conv2d(y, sd[d + "1.2.weight"], sd[d + "1.2.bias"], padding=1))
    y = F.interpolate(y, (y.shape[-1] * 2,) * 2, mode="bilinear", align_corners=True)
    y = F.relu(F.conv2d(y, sd[d + "2.0.weight"], sd[d + "2.0.bias"], padding=1))
    return F.conv2d(y, sd[d + "2.2.weight"], sd[d + "2.2.bias"], padding=1)


def logits(sd, query, support, mask, apm: bool, acpa: bool):
    """1-shot logits of the published method; `sd` holds APM masks in the official convention."""
    with torch.no_grad():
        qf, sf = backbone_features(sd, query), backbone_features(sd, support)
        if apm:
            qf = qf[:10] + [apm_official(sd, f) for f in qf[10:]]
            sf = sf[:10] + [apm_official(sd, f) for f in sf[10:]]
        sf = [f * F.interpolate(mask[:, None].float(), f.shape[-2:], mode="bilinear", align_corners=True) for f in sf]
        if acpa:
            qf = qf[:10] + [acpa_official(sd, f) for f in qf[10:]]
            sf = sf[:10] + [acpa_official(sd, f) for f in sf[10:]]
        out = learner(sd, correlations(qf, sf))
        return F.interpolate(out, query.shape[-2:], mode="bilinear", align_corners=True)


def nshot_mask(sd, query, supports, masks, apm, acpa):
    """(per-shot logits, voted mask) as upstream `predict_mask_nshot`."""
    shots = [logits(sd, query, supports[:, k], masks[:, k], apm, acpa) for k in range(supports.shape[1])]
    agg = sum(x.argmax(1) for x in shots)
    if len(shots) == 1:
        return shots, agg
    b = agg.shape[0]
    mx = torch.stack([agg.view(b, -1).max(1)[0], torch.ones(b, dtype=torch.long)]).max(0)[0].view(b, 1, 1)
    pred = agg.float() / mx
    return shots, (pred >= 0.5).long()
