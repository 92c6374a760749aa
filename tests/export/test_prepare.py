"""Export-only numerics twins and `prepare_for_export`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lfm_deploy.errors import ExportError
from lfm_deploy.export.learner_layout import LayoutLearner
from lfm_deploy.export.lowering import MatmulFFT, OnnxDFT
from lfm_deploy.export.prepare import MatrixMaskResize, TwoStageGroupNorm, bilinear_matrix, prepare_for_export
from lfm_deploy.models import LFMHSNet, TorchFFT


@pytest.mark.parametrize("out_size", [50, 25, 13, 20, 5])
def test_mask_resize_matrices_reproduce_pytorch_weights(out_size):
    mask = (torch.rand(2, 1, 400, 400) > 0.5).float()
    mask[:, :, :, 200:] = 0  # sharp edges: where PyTorch's tiny weights matter
    ref = F.interpolate(mask, (out_size, out_size), mode="bilinear", align_corners=True)
    twin = MatrixMaskResize(400, [out_size])
    got = twin(mask, (out_size, out_size))
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-7)
    # Positive exactly where PyTorch is positive: the ~1.3e-5 weights are kept, not rounded to 0.
    assert torch.equal(got > 0, ref > 0)


def test_pytorch_weights_are_not_exact_zeros_at_integer_coordinates():
    r = bilinear_matrix(400, 50)
    # Row 7 maps to source coordinate 7 * 399 / 49 = 57 exactly, in exact arithmetic.
    tiny = r[7][(r[7] > 0) & (r[7] < 1e-3)]
    assert tiny.numel() == 1 and 1e-6 < tiny.item() < 1e-4


@pytest.mark.parametrize("shape", [(2, 16, 7, 7, 3, 3), (1, 128, 13, 13, 2, 2), (2, 8, 5, 5)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_two_stage_group_norm_equals_group_norm(shape, dtype, tol):
    torch.manual_seed(0)
    gn = torch.nn.GroupNorm(4, shape[1]).to(dtype)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    twin = TwoStageGroupNorm(4, shape[1]).to(dtype)
    twin.load_state_dict(gn.state_dict())
    x = torch.randn(shape, dtype=dtype) * 3 + 1
    torch.testing.assert_close(twin(x), gn(x), rtol=0, atol=tol)


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_prepare_leaves_eager_model_unchanged():
    model = LFMHSNet(apm="m", acpa=True, image_size=160).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for lowering, backend in (("matmul", MatmulFFT), ("dft", OnnxDFT)):
        prepared = prepare_for_export(model, lowering)
        assert isinstance(prepared.apm.spectral, backend) and isinstance(prepared.acpa.spectral, backend)
        assert isinstance(prepared.mask_resize, MatrixMaskResize)
        assert any(isinstance(m, TwoStageGroupNorm) for m in prepared.modules())
        assert isinstance(prepared.hpn_learner, LayoutLearner)
        sd = prepared.state_dict()
        assert set(sd) == set(before) and all(torch.equal(sd[k], before[k]) for k in before)
    assert isinstance(model.apm.spectral, TorchFFT)
    assert not any(isinstance(m, TwoStageGroupNorm) for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.slow  # builds the full-size ResNet-50 model (seconds each)
def test_prepared_model_computes_the_eager_function():
    torch.manual_seed(0)
    model = LFMHSNet(apm="m", acpa=True, image_size=160).eval()
    prepared = prepare_for_export(model, "matmul")
    q, s = torch.randn(1, 3, 160, 160), torch.randn(1, 3, 160, 160)
    m = torch.zeros(1, 160, 160)
    m[:, 40:120, 30:90] = 1
    with torch.no_grad():
        torch.testing.assert_close(prepared(q, s, m), model(q, s, m), rtol=0, atol=1e-5)


def test_unknown_lowering():
    with pytest.raises(ExportError, match="matmul, dft"):
        prepare_for_export(LFMHSNet(apm="s", image_size=160), "fft")
