"""The Lightweight Frequency Masker (Tong et al., NeurIPS 2024): APM and ACPA.

The spectral computations go through a pluggable `spectral` backend so that export can swap
`torch.fft` for a lowering (DFT-as-matmul, ONNX DFT) without touching the parameters. The eager
model always uses `TorchFFT`; `lfm_deploy.export.lowering` provides the others.
"""

from __future__ import annotations

import torch
from torch import nn


class TorchFFT(nn.Module):
    """Reference spectral backend: `torch.fft`, exactly the official formulation.

    Shifts act on the two spatial dims only (the official code shifts every dim; see
    `official_to_spatial_shift` for importing masks trained that way).
    """

    def masked_filter(self, x: torch.Tensor, amp_gate: torch.Tensor, phase_gate: torch.Tensor):
        """real(ifft2(ifftshift(polar(amp_gate*|F|, phase_gate*angle(F))))), F = fftshift(fft2(x))."""
        spec = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        amplitude = amp_gate * spec.abs()
        phase = phase_gate * spec.angle()
        filtered = torch.polar(amplitude, phase)
        return torch.fft.ifft2(torch.fft.ifftshift(filtered, dim=(-2, -1))).real

    def phase_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial mean of angle(fft2(x)) (no shift): (B, C, H, W) -> (B, C)."""
        return torch.fft.fft2(x).angle().mean(dim=(-2, -1))


class MaskModule(nn.Module):
    """Amplitude-Phase Masker (APM), official `MaskModule(shape)`.

    Learns sigmoid gates on the amplitude and the phase of the centred 2-D spectrum of a
    feature map. Both parameters start at ones (gate sigmoid(1) = 0.731, not the identity), as
    in the official code.

    Args:
        shape: parameter shape, broadcast against (B, C, H, W) features: APM-S (1, 1, 13, 13),
            APM-M (1, 2048, 13, 13).
    """

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 4:
            raise ValueError(f"MaskModule shape must have 4 dims (1, C, H, W), got {shape}")
        self.mask_amplitude = nn.Parameter(torch.ones(self.shape))
        self.mask_phase = nn.Parameter(torch.ones(self.shape))
        self.spectral: nn.Module = TorchFFT()

    def reset_parameters(self) -> None:
        """Reset both masks to the official initial value (ones), as `reset_masks` upstream."""
        with torch.no_grad():
            self.mask_amplitude.fill_(1.0)
            self.mask_phase.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.shape[-2:]:
            raise ValueError(
                f"APM expects {self.shape[-2]}x{self.shape[-1]} feature maps, got {tuple(x.shape)}"
            )
        amp_gate = torch.sigmoid(self.mask_amplitude)
        phase_gate = torch.sigmoid(self.mask_phase)
        return self.spectral.masked_filter(x, amp_gate.to(x.dtype), phase_gate.to(x.dtype))


class PhaseAttention(nn.Module):
    """Adaptive Channel Phase Attention (ACPA), official `PhaseAttention(channel, reduction=8)`.

    Channel weights from the spatial mean of each channel's (unshifted) phase spectrum.
    `reduction` is the hidden width itself (8), not a divisor, as in the official code.
    """

    def __init__(self, channel: int, reduction: int = 8):
        super().__init__()
        self.channel = channel
        self.phase_attn = nn.Sequential(
            nn.Linear(channel, reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(reduction, channel, bias=False),
            nn.Sigmoid(),
        )
        self.spectral: nn.Module = TorchFFT()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.spectral.phase_mean(x)
        weights = self.phase_attn(pooled)
        return x * weights[:, :, None, None]


def official_to_spatial_shift(state: dict, prefix: str = "apm.") -> dict:
    """Convert APM masks trained with the official all-dims shift to this implementation.

    The official code calls `fftshift`/`ifftshift` without `dim`, so the channel axis is rolled
    by C // 2 too: its mask channel c acts on feature channel (c + C/2) mod C. Rolling the
    mask's channel axis by C // 2 gives the same function with spatial-only shifts (C is even
    for APM-M; for APM-S, C = 1 and nothing changes). The batch-axis shift of a size-1 mask
    axis and of the batch itself cancel between the forward and inverse shifts.

    Args:
        state: a state dict holding `{prefix}mask_amplitude` and `{prefix}mask_phase`.
        prefix: key prefix of the APM module.

    Returns:
        A new state dict with the APM masks converted; other entries are shared unchanged.
    """
    out = dict(state)
    for name in ("mask_amplitude", "mask_phase"):
        key = prefix + name
        if key in out:
            mask = out[key]
            channels = mask.shape[1]
            if channels % 2:
                if channels != 1:
                    raise ValueError(f"cannot convert an APM mask with odd channel count {channels}")
                continue
            out[key] = torch.roll(mask, shifts=channels // 2, dims=1)
    return out
