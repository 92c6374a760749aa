"""APM and ACPA against direct FFT formulations, and the official-shift conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lfm_deploy.models import LFMHSNet, MaskModule, PhaseAttention, official_to_spatial_shift


def _apm_numpy(x, ma, mp):
    """APM written with numpy's FFT in float64."""
    spec = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    amp = 1 / (1 + np.exp(-ma)) * np.abs(spec)
    pha = 1 / (1 + np.exp(-mp)) * np.angle(spec)
    return np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * pha), axes=(-2, -1))).real


def _acpa_direct(x, w1, w2):
    pooled = torch.atan2(torch.fft.fftn(x, dim=(2, 3)).imag, torch.fft.fftn(x, dim=(2, 3)).real).mean((2, 3))
    return x * torch.sigmoid(torch.relu(pooled @ w1.t()) @ w2.t())[:, :, None, None]


def test_official_initialisation_and_names():
    apm_m, apm_s = MaskModule((1, 2048, 13, 13)), MaskModule((1, 1, 13, 13))
    assert sum(p.numel() for p in apm_m.parameters()) == 692_224
    assert sum(p.numel() for p in apm_s.parameters()) == 338
    assert torch.all(apm_m.mask_amplitude == 1) and torch.all(apm_m.mask_phase == 1)
    acpa = PhaseAttention(2048)
    assert set(acpa.state_dict()) == {"phase_attn.0.weight", "phase_attn.2.weight"}
    assert acpa.phase_attn[0].weight.shape == (8, 2048) and acpa.phase_attn[2].weight.shape == (2048, 8)
    assert sum(p.numel() for p in acpa.parameters()) == 32_768


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("hw,channels", [((13, 13), 6), ((12, 12), 1), ((13, 10), 6)])
def test_apm_matches_numpy_fft(dtype, tol, hw, channels):
    torch.manual_seed(0)
    apm = MaskModule((1, channels, *hw)).to(dtype)
    with torch.no_grad():
        apm.mask_amplitude.normal_(0, 2)
        apm.mask_phase.normal_(0, 2)
    x = torch.randn(3, 6, *hw, dtype=dtype) * 3
    expected = _apm_numpy(x.double().numpy(), apm.mask_amplitude.detach().double().numpy(), apm.mask_phase.detach().double().numpy())
    out = apm(x)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.detach().double().numpy(), expected, atol=tol * 10, rtol=0)


def test_apm_at_init_is_not_identity():
    x = torch.randn(1, 4, 13, 13) + 1.0  # positive channel sums: DC phase 0
    y = MaskModule((1, 1, 13, 13))(x)
    assert not torch.allclose(x, y, atol=1e-3)
    # sigmoid(1) scales the amplitude of every bin; the DC bin's phase stays 0.
    torch.testing.assert_close(y.sum((2, 3)), torch.sigmoid(torch.tensor(1.0)) * x.sum((2, 3)), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_acpa_matches_direct_formulation(dtype):
    torch.manual_seed(1)
    acpa = PhaseAttention(16).to(dtype)
    x = torch.randn(2, 16, 13, 13, dtype=dtype)
    x[:, :5] -= 2.0  # channels with a negative sum: DC phase +pi
    expected = _acpa_direct(x, acpa.phase_attn[0].weight, acpa.phase_attn[2].weight)
    torch.testing.assert_close(acpa(x), expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_acpa_phase_mean_for_odd_size_is_dc_phase():
    """For real 13x13 input the mean phase is angle(DC)/169 (docs/numerics.md, "ACPA without a spectrum")."""
    x = torch.randn(1, 8, 13, 13, dtype=torch.float64)
    x[0, :4] -= 1.0
    pooled = torch.fft.fft2(x).angle().mean((2, 3))
    dc_negative = x.sum((2, 3)) < 0
    expected = torch.where(dc_negative, torch.pi / 169, 0.0).double()
    # Exact in exact arithmetic; torch's FFT leaves conjugate pairs unequal by ~1e-9 rad.
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("batch", [1, 3])
def test_official_shift_conversion_is_equivalent(batch):
    """Masks trained with the all-dims shift give the same outputs after rolling C/2."""
    torch.manual_seed(2)
    channels = 8
    ma, mp = torch.randn(1, channels, 13, 13), torch.randn(1, channels, 13, 13)
    x = torch.randn(batch, channels, 13, 13)

    spec = torch.fft.fftshift(torch.fft.fft2(x))  # official: no dim argument
    spec = torch.polar(torch.sigmoid(ma) * spec.abs(), torch.sigmoid(mp) * spec.angle())
    official = torch.fft.ifft2(torch.fft.ifftshift(spec)).real

    converted = official_to_spatial_shift({"apm.mask_amplitude": ma, "apm.mask_phase": mp})
    apm = MaskModule((1, channels, 13, 13))
    apm.load_state_dict({k.removeprefix("apm."): v for k, v in converted.items()})
    with torch.no_grad():
        torch.testing.assert_close(apm(x), official, rtol=0, atol=1e-5)
    # Without the conversion the outputs differ: the quirk is real.
    apm.load_state_dict({"mask_amplitude": ma, "mask_phase": mp})
    with torch.no_grad():
        assert (apm(x) - official).abs().max() > 1e-2


def test_official_shift_conversion_leaves_apm_s_and_other_keys():
    sd = {"apm.mask_amplitude": torch.randn(1, 1, 13, 13), "apm.mask_phase": torch.randn(1, 1, 13, 13), "x": torch.ones(1)}
    out = official_to_spatial_shift(sd)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_variant_choice_and_state_dict_keys():
    for apm, acpa, variant in [("m", True, "apm-m+acpa"), ("s", False, "apm-s"), (None, True, "acpa"), (None, False, "hsnet")]:
        model = LFMHSNet(apm=apm, acpa=acpa, image_size=128)
        assert model.variant == variant
        extra = {k for k in model.state_dict() if not k.startswith(("backbone.", "hpn_learner."))}
        expected = set()
        if apm:
            expected |= {"apm.mask_amplitude", "apm.mask_phase"}
        if acpa:
            expected |= {"acpa.phase_attn.0.weight", "acpa.phase_attn.2.weight"}
        assert extra == expected
    with pytest.raises(ValueError):
        LFMHSNet(apm="x")


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_masker_gets_gradients_backbone_does_not():
    model = LFMHSNet(apm="m", acpa=True, image_size=128)
    model.train()
    q, s = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    loss = model(q, s, torch.ones(1, 128, 128)).sum()
    loss.backward()
    assert model.apm.mask_amplitude.grad is not None and model.apm.mask_amplitude.grad.abs().sum() > 0
    assert model.acpa.phase_attn[0].weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
