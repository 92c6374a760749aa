"""FFT lowerings against torch.fft: eager, float32/float64, odd/even sizes, exported to ONNX."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lfm_deploy.errors import ExportError
from lfm_deploy.export.lowering import (
    LOWERINGS,
    MatmulFFT,
    OnnxDFT,
    apply_lowering,
    safe_atan2,
    self_conjugate_phase_mean,
    self_conjugate_sums,
    signbit,
)
from lfm_deploy.models.masker import MaskModule, PhaseAttention, TorchFFT

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZES = [(13, 13), (12, 12), (13, 12), (7, 9), (8, 6), (1, 1), (2, 2), (1, 4)]
DTYPES = [torch.float32, torch.float64]
# Max abs error against torch.fft on O(1) inputs: float32 sums of 169 terms, float64 ~1e-15.
ATOL = {torch.float32: 5e-6, torch.float64: 1e-12}


def _backend(lowering: str, height: int, width: int, dtype: torch.dtype) -> nn.Module:
    return MatmulFFT(height, width, dtype=dtype) if lowering == "matmul" else OnnxDFT()


def _features(channels: int, height: int, width: int, dtype: torch.dtype, seed: int = 0):
    """Feature maps with the branch-cut cases: negative sums, a zero row, a zero column."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, height, width, generator=generator, dtype=dtype)
    x[:, 1::3] -= 1.5  # negative DC: angle +pi in torch, -pi through the exporter's atan2
    x[:, 2::3] += 1.5
    if height > 2:
        x[:, 0, height // 2] = 0.0
    if width > 2:
        x[:, 1, :, 0] = 0.0
    return x


def _gates(channels: int, height: int, width: int, dtype: torch.dtype, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    amp = torch.sigmoid(torch.randn(1, channels, height, width, generator=generator, dtype=dtype))
    phase = torch.sigmoid(torch.randn(1, channels, height, width, generator=generator, dtype=dtype))
    return amp, phase


# --- atan2 -----------------------------------------------------------------------------------

_SPECIAL = [
    0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-30, -1e-30, 1e30, -1e30, math.inf, -math.inf, math.nan,
]


def _special_grid(dtype):
    # Both infinite is the one documented gap (atan2 gives odd multiples of pi/4, we NaN).
    pairs = [(y, x) for y in _SPECIAL for x in _SPECIAL if not (math.isinf(y) and math.isinf(x))]
    ys, xs = zip(*pairs)
    return torch.tensor(ys, dtype=dtype), torch.tensor(xs, dtype=dtype)


def _assert_same_angles(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    assert torch.equal(actual.isnan(), expected.isnan())
    keep = ~expected.isnan()
    torch.testing.assert_close(actual[keep], expected[keep], atol=atol, rtol=0)
    # +pi vs -pi and +0 vs -0 are exactly what the exporter's atan2 gets wrong.
    assert torch.equal(torch.signbit(actual[keep]), torch.signbit(expected[keep]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_atan2_matches_torch_angle_on_special_values(dtype):
    y, x = _special_grid(dtype)
    expected = torch.complex(x, y).angle()
    assert torch.equal(expected.nan_to_num(), torch.atan2(y, x).nan_to_num())
    # atan(y/x) + pi rounds twice: a few ulps of pi, not bit-exact.
    _assert_same_angles(safe_atan2(y, x), expected, atol=4.0 * torch.finfo(dtype).eps)


def test_safe_atan2_signed_zero_cases_explicitly():
    pi = math.pi
    # A list, not a dict: 0.0 == -0.0, so they would collapse into one key.
    cases = [(0.0, -1.0, pi), (-0.0, -1.0, -pi), (0.0, -0.0, pi), (-0.0, -0.0, -pi),
             (0.0, 0.0, 0.0), (-0.0, 0.0, -0.0), (1.0, -0.0, pi / 2), (-1.0, -0.0, -pi / 2)]
    for y, x, angle in cases:
        got = safe_atan2(torch.tensor([y]), torch.tensor([x])).item()
        assert got == pytest.approx(angle, abs=1e-6), (y, x)
        assert math.copysign(1.0, got) == math.copysign(1.0, angle), (y, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_atan2_matches_torch_on_random_values(dtype):
    generator = torch.Generator().manual_seed(0)
    scale = torch.logspace(-6, 6, 10000, dtype=dtype)
    y = torch.randn(10000, generator=generator, dtype=dtype) * scale
    x = torch.randn(10000, generator=generator, dtype=dtype)
    atol = 1e-6 if dtype == torch.float32 else 1e-14
    _assert_same_angles(safe_atan2(y, x), torch.atan2(y, x), atol=atol)


def test_signbit_sees_negative_zero():
    v = torch.tensor([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 1e-40, -1e-40])
    assert signbit(v).tolist() == [False, True, False, True, False, True, False, False, True]


class _Atan2(nn.Module):
    def forward(self, y, x):
        return safe_atan2(y, x)


def test_safe_atan2_survives_export_to_onnxruntime(tmp_path):
    """Signed zeros and the +-pi choice must survive the exporter and onnxruntime."""
    y, x = _special_grid(torch.float32)
    path = tmp_path / "atan2.onnx"
    _export(_Atan2(), (y, x), path, dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {names[0]: y.numpy(), names[1]: x.numpy()})[0]
    _assert_same_angles(torch.from_numpy(got), torch.complex(x, y).angle(), atol=4e-7)


# --- masked_filter ---------------------------------------------------------------------------


@pytest.mark.parametrize("lowering", ["matmul", "dft"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_masked_filter_matches_torch_fft(lowering, dtype, size):
    height, width = size
    x = _features(6, height, width, dtype)
    amp, phase = _gates(6, height, width, dtype)
    backend = _backend(lowering, height, width, dtype)
    for gates in [(amp, phase), (amp[:, :1], phase[:, :1])]:  # APM-M and APM-S shapes
        expected = TorchFFT().masked_filter(x, *gates)
        got = backend.masked_filter(x, *gates)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, atol=ATOL[dtype], rtol=0)


def test_masked_filter_with_unit_gates_is_identity():
    x = _features(4, 13, 13, torch.float64)
    ones = torch.ones(1, 4, 13, 13, dtype=torch.float64)
    torch.testing.assert_close(MatmulFFT(13, 13, torch.float64).masked_filter(x, ones, ones), x)


def test_matmul_rejects_other_sizes():
    with pytest.raises(ValueError, match="13x13"):
        MatmulFFT(13, 13).masked_filter(torch.zeros(1, 1, 12, 12), torch.ones(1), torch.ones(1))
    with pytest.raises(ExportError):
        MatmulFFT(0, 13)
    with pytest.raises(ExportError, match="dft"):
        MatmulFFT(128, 128)


@pytest.mark.parametrize("size", [(13, 13), (12, 12), (13, 12)])
def test_matmul_tables_exact_at_dc_and_nyquist(size):
    height, width = size
    backend = MatmulFFT(height, width, dtype=torch.float64)
    n = height * width
    dc_col = (height // 2) * width + width // 2  # DC sits at the centre after fftshift
    assert torch.equal(backend.fwd_re[:, dc_col], torch.ones(n, dtype=torch.float64))
    assert torch.equal(backend.fwd_im[:, dc_col], torch.zeros(n, dtype=torch.float64))
    if height % 2 == 0 and width % 2 == 0:
        # The (H/2, W/2) Nyquist bin sits at shifted index (0, 0): weights (-1)^(i+j), exactly.
        i, j = np.divmod(np.arange(n), width)
        expected = torch.tensor((-1.0) ** (i + j), dtype=torch.float64)
        assert torch.equal(backend.fwd_re[:, 0], expected)
        assert torch.equal(backend.fwd_im[:, 0], torch.zeros(n, dtype=torch.float64))
    for name in ("fwd_re", "fwd_im", "inv_re", "inv_im"):
        table = getattr(backend, name)
        assert not torch.signbit(table[table == 0]).any(), f"-0.0 entries in {name}"


def test_matmul_tables_rebuilt_on_dtype_change():
    double_built = MatmulFFT(13, 13, dtype=torch.float64)
    cast = MatmulFFT(13, 13).double()
    for name in ("fwd_re", "fwd_im", "inv_re", "inv_im"):
        assert getattr(cast, name).dtype == torch.float64
        assert torch.equal(getattr(cast, name), getattr(double_built, name))
    assert MatmulFFT(13, 13).state_dict() == {}  # non-persistent: state dicts unchanged


# --- phase_mean ------------------------------------------------------------------------------


@pytest.mark.parametrize("lowering", ["matmul", "dft"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_phase_mean_matches_torch_fft(lowering, dtype, size):
    height, width = size
    x = _features(9, height, width, dtype)
    expected = TorchFFT().phase_mean(x)
    got = _backend(lowering, height, width, dtype).phase_mean(x)
    assert got.dtype == dtype
    # Eager torch averages pairs that cancel only up to rounding; the identity is exact.
    atol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    # Sanity: the result is a whole number of pi/(HW) steps.
    steps = got * height * width / math.pi
    torch.testing.assert_close(steps, steps.round(), atol=16 * torch.finfo(dtype).eps, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_self_conjugate_sums_are_the_real_fft_bins(dtype, size):
    """The identity's ingredients: the self-conjugate bins of fft2, which are real."""
    height, width = size
    x = _features(3, height, width, dtype)
    spectrum = torch.fft.fft2(x)
    rows = [0] + ([height // 2] if height % 2 == 0 else [])
    cols = [0] + ([width // 2] if width % 2 == 0 else [])
    order = [(0, 0)] + [(r, 0) for r in rows[1:]] + [(0, c) for c in cols[1:]]
    if len(rows) == 2 and len(cols) == 2:
        order.append((rows[1], cols[1]))
    expected = torch.stack([spectrum[..., r, c] for r, c in order], dim=-1)
    assert torch.equal(expected.imag, torch.zeros_like(expected.imag))
    got = self_conjugate_sums(x)
    torch.testing.assert_close(got, expected.real, atol=ATOL[dtype] * 10, rtol=0)


def test_phase_mean_identity_counts_negative_bins():
    # 12x12, the self-conjugate sums chosen by construction; small asymmetric noise keeps
    # every other bin off the real axis, where torch's phase would depend on signed zeros.
    generator = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn(1, 3, 12, 12, generator=generator, dtype=torch.float64)
    x = noise.clone()
    x[0, 0] -= 1.0  # DC ~ -144 < 0, Nyquist bins ~ 0 +- 0.12: DC (and maybe some Nyquist)
    x[0, 1, 0, 0] -= 10.0  # a delta: all four self-conjugate bins ~ -10: four negative bins
    x[0, 2, 0, 0] += 10.0  # all four ~ +10: none
    sums = self_conjugate_sums(x)
    expected = (sums < 0).sum(dim=-1).to(torch.float64)
    assert expected[0, 1:].tolist() == [4.0, 0.0]
    got = self_conjugate_phase_mean(x) * 144 / math.pi
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(TorchFFT().phase_mean(x) * 144 / math.pi, got, atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_phase_mean_exactly_zero_dc(dtype):
    """An exactly-zero channel sum: torch.angle(0) = 0, so the DC bin adds nothing."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randint(-4, 5, (1, 4, 13, 13), generator=generator).to(dtype)
    x[0, :, 0, 0] -= x[0].sum(dim=(-2, -1))  # integer arithmetic: sums exactly zero
    dc = torch.fft.fft2(x)[..., 0, 0]
    assert torch.equal(dc, torch.zeros_like(dc))
    got = self_conjugate_phase_mean(x)
    assert torch.equal(got, torch.zeros_like(got))
    torch.testing.assert_close(got, TorchFFT().phase_mean(x), atol=1e-6, rtol=0)


# --- apply_lowering --------------------------------------------------------------------------


class _Block(nn.Module):
    """APM then ACPA, as they sit on one layer4 feature."""

    def __init__(self, channels: int = 16, size=(13, 13)):
        super().__init__()
        self.apm = MaskModule((1, channels, *size))
        self.acpa = PhaseAttention(channels)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.apm.mask_amplitude.copy_(torch.randn(self.apm.shape, generator=generator))
            self.apm.mask_phase.copy_(torch.randn(self.apm.shape, generator=generator))
            for p in self.acpa.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x):
        return self.acpa(self.apm(x))


def test_apply_lowering_returns_a_copy_and_leaves_the_model_alone():
    model = _Block()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lowered = apply_lowering(model, "matmul")
    assert lowered is not model
    assert isinstance(model.apm.spectral, TorchFFT) and isinstance(model.acpa.spectral, TorchFFT)
    assert isinstance(lowered.apm.spectral, MatmulFFT)
    assert (lowered.apm.spectral.height, lowered.apm.spectral.width) == (13, 13)
    assert isinstance(lowered.acpa.spectral, MatmulFFT)  # size inferred from the APM
    # Same parameters, same state dict (the lowering's matrices are not persistent)...
    after = lowered.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
        assert torch.equal(model.state_dict()[key], value), key
    # ... but not shared: training the lowered copy cannot touch the original.
    with torch.no_grad():
        lowered.apm.mask_amplitude.add_(1.0)
    assert torch.equal(model.apm.mask_amplitude, before["apm.mask_amplitude"])


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_apply_lowering_computes_the_same_function(lowering):
    model = _Block().eval()
    x = _features(16, 13, 13, torch.float32)
    lowered = apply_lowering(model, lowering).eval()
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), model(x), atol=ATOL[torch.float32], rtol=0)
    expected = {"torch": TorchFFT, "matmul": MatmulFFT, "dft": OnnxDFT}[lowering]
    assert type(lowered.apm.spectral) is expected and type(lowered.acpa.spectral) is expected


def test_apply_lowering_keeps_dtype_and_mode():
    model = _Block().double().train()
    lowered = apply_lowering(model, "matmul")
    assert lowered.training
    assert lowered.apm.spectral.fwd_re.dtype == torch.float64
    x = _features(16, 13, 13, torch.float64)
    torch.testing.assert_close(lowered(x), model(x), atol=1e-12, rtol=0)


def test_apply_lowering_rejects_unknown_lowering():
    with pytest.raises(ExportError) as info:
        apply_lowering(_Block(), "cufft")
    message = str(info.value)
    assert "'cufft'" in message and all(name in message for name in LOWERINGS)


def test_apply_lowering_needs_a_size_for_acpa_alone():
    acpa = PhaseAttention(8)
    with pytest.raises(ExportError, match="spatial"):
        apply_lowering(acpa, "matmul")
    lowered = apply_lowering(acpa, "matmul", spatial=(12, 12))
    assert (lowered.spectral.height, lowered.spectral.width) == (12, 12)
    assert isinstance(apply_lowering(acpa, "dft").spectral, OnnxDFT)  # size-free
    with pytest.raises(ExportError, match="spatial"):
        apply_lowering(acpa, "matmul", spatial=(12,))


# --- exported graphs in onnxruntime ----------------------------------------------------------


def _export(module, args, path, dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                module, args, str(path), dynamo=True, opset_version=20,
                external_data=False, verbose=False,
            )
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=18)


class _BlockAndPooledPhase(nn.Module):
    """The block's output and, as a second output, ACPA's pooled phase of the APM output."""

    def __init__(self, block: _Block):
        super().__init__()
        self.block = block

    def forward(self, x):
        filtered = self.block.apm(x)
        return self.block.acpa(filtered), self.block.acpa.spectral.phase_mean(filtered)


@pytest.mark.parametrize(
    "lowering, dynamo, size",
    # 13x13 is the model's layer4; 12x12 exercises the Nyquist slices of the phase identity.
    [("matmul", True, (13, 13)), ("matmul", False, (13, 13)), ("dft", True, (13, 13)),
     ("matmul", True, (12, 12))],
    ids=["matmul-dynamo-13", "matmul-torchscript-13", "dft-dynamo-13", "matmul-dynamo-12"],
)
def test_exported_block_matches_eager_torch_fft(tmp_path, lowering, dynamo, size):
    channels = 16
    model = _Block(channels, size).eval()
    x = _features(channels, *size, torch.float32)
    path = tmp_path / f"{lowering}.onnx"
    _export(_BlockAndPooledPhase(apply_lowering(model, lowering)), (x,), path, dynamo)

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("DFT" in ops) == (lowering == "dft")

    with torch.no_grad():
        expected = model(x).numpy()
        filtered = model.apm(x)
        pooled = TorchFFT().phase_mean(filtered).numpy()
    # The ACPA sign case is exercised: negative-sum channels, pooled phase +pi/(HW) per bin.
    assert (filtered.sum(dim=(-2, -1)) < 0).sum() >= channels // 4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, got_pooled = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got_pooled, pooled, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
