"""FFT lowerings for export: swap the masker's `torch.fft` backend for exportable graphs.

The masker (APM `MaskModule`, ACPA `PhaseAttention`) computes through a pluggable `spectral`
backend. Three lowerings exist, chosen explicitly when a model is prepared for export (never by
sniffing whether a trace is running):

- ``"torch"``: `TorchFFT`, eager `torch.fft` (the reference; not exportable to ONNX by the
  TorchScript exporter, lowered to ONNX `DFT` by the dynamo exporter *with* the sign problem
  described in docs/numerics.md, "abs, angle and the +pi case").
- ``"matmul"``: `MatmulFFT`, the 2-D DFT and its inverse as real matrix products with constant
  matrices (fftshift/ifftshift folded in). Only ops TensorRT 10 supports; the fast path in
  onnxruntime too.
- ``"dft"``: `OnnxDFT`, `torch.fft` written so that the dynamo exporter emits ONNX `DFT` nodes,
  with the atan2 branch-cut and ACPA sign problems fixed. Needs TensorRT >= 11.2 (cuFFT plugin)
  and is slow in onnxruntime; kept as the second, independent lowering.

ACPA's pooled phase does not need a spectrum at all in either exportable lowering: for real input
it is an exact function of the signs of at most four real sums (see `self_conjugate_phase_mean`).
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from lfm_deploy.errors import ExportError
from lfm_deploy.models.masker import MaskModule, PhaseAttention, TorchFFT

__all__ = [
    "LOWERINGS",
    "MatmulFFT",
    "OnnxDFT",
    "apply_lowering",
    "safe_atan2",
    "self_conjugate_phase_mean",
    "self_conjugate_sums",
    "signbit",
]

#: The valid values of `apply_lowering(..., lowering=...)`.
LOWERINGS: Tuple[str, ...] = ("torch", "matmul", "dft")

# Above this many spatial positions the dense (HW x HW) matrices of `MatmulFFT` stop being a
# sensible trade (4 matrices of (HW)^2 entries: 64 MiB each in float32 at 64x64). The masker
# only ever sees 13x13 layer4 maps.
_MAX_MATMUL_POSITIONS = 64 * 64


def signbit(v: torch.Tensor) -> torch.Tensor:
    """IEEE sign bit of `v` from ONNX-exportable ops: True for negatives and for -0.0.

    ONNX has no SignBit/CopySign; `1 / -0.0 = -inf` is the only way to see the sign of a zero
    with ops every runtime implements. `v` and `1 / v` always share the sign bit and at least
    one of them is nonzero (-inf pairs with -0), so ``min(v, 1/v) < 0`` is the sign bit:
    Reciprocal, Min, Less. NaN gives False.

    Args:
        v: a floating-point tensor.

    Returns:
        A bool tensor of the same shape.
    """
    return torch.minimum(v, torch.reciprocal(v)) < 0


def safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2(y, x) from Atan, Div, comparisons, Where and Casts, equal to `torch.angle(x + iy)`.

    Matches `torch.atan2` / `torch.angle` on every finite input, signed zeros included, to a
    few ulps (atan(y/x) +- pi rounds twice) and with the same sign everywhere:
    ``(+0, -1) -> +pi``, ``(-0, -1) -> -pi``, ``(+0, -0) -> +pi``, ``(-0, +0) -> -0``,
    ``(y != 0, +-0) -> +-pi/2``, ``(0, 0) -> 0``. This is what the ONNX exporter's own atan2
    decomposition gets wrong: it tests ``y > 0`` and so sends the real-negative bins with a
    ``+0`` imaginary part (the DC bin of every negative-sum channel) to ``-pi`` instead of
    ``+pi``. NaN in either argument gives NaN; an infinite ``x`` or ``y`` alone gives atan2's
    value, both infinite gives NaN (atan2 gives an odd multiple of pi/4).

    Branches are selected with Cast-and-Mul, and `Where` only picks between scalars:
    onnxruntime's CPU Where with tensor operands is ~30x slower than an Add (5 ms vs 0.15 ms
    on a (1, 2048, 169) tensor), and the masker runs this on every spectral bin. The division
    by x = +-0 is intended: it gives +-inf and atan(+-inf) = +-pi/2, as IEEE guarantees in
    onnxruntime and TensorRT alike.

    Args:
        y: imaginary parts (floating point; float16/32/64 all work, the dtype is kept).
        x: real parts, same shape and dtype as `y` (or broadcastable to it).

    Returns:
        The angle in [-pi, pi], same dtype as the inputs.
    """
    dtype = torch.promote_types(x.dtype, y.dtype)
    # 0-dim constants (not *_like tensors): the exporter would store full-size initializers.
    pi = torch.full((), math.pi, dtype=dtype, device=x.device)
    one = torch.ones((), dtype=dtype, device=x.device)
    negative_zero = torch.full((), -0.0, dtype=dtype, device=x.device)
    # 0/0 is the only NaN the quotient can produce from non-NaN inputs: divide by 1 there,
    # which leaves the signed zero y as the arctangent, and the correction below adds +-pi
    # for x = -0 by the sign of y, exactly as atan2 does. Elsewhere add -0.0, which leaves
    # every x unchanged, -0 included (adding +0.0 would turn -0 into +0).
    guard = torch.where((x == 0) & (y == 0), one, negative_zero)
    base = torch.atan(y / (x + guard))
    # Left half-plane (incl. x = -0): move by +pi or -pi by the sign bit of y.
    turn = torch.where(signbit(y), -pi, pi)  # scalar operands: cheap even in onnxruntime
    return base + signbit(x).to(dtype) * turn


def self_conjugate_sums(x: torch.Tensor) -> torch.Tensor:
    """The real self-conjugate bins of fft2(x) for real x: DC and, for even sizes, Nyquist.

    Bin (0, 0) is sum(x); for even H, (H/2, 0) = sum((-1)^i x); for even W, (0, W/2) =
    sum((-1)^j x); for both even, (H/2, W/2) = sum((-1)^(i+j) x). Computed with strided
    slices and reductions, no constants, so any spatial size exports.

    Args:
        x: real tensor (..., H, W).

    Returns:
        Tensor (..., K) with K = 1, 2 or 4 bins, in the order DC, (H/2,0), (0,W/2), (H/2,W/2).
    """
    height, width = x.shape[-2], x.shape[-1]
    bins = [x.sum(dim=(-2, -1))]
    rows = None
    if height % 2 == 0:
        rows = x[..., 0::2, :] - x[..., 1::2, :]
        bins.append(rows.sum(dim=(-2, -1)))
    if width % 2 == 0:
        bins.append((x[..., 0::2] - x[..., 1::2]).sum(dim=(-2, -1)))
        if rows is not None:
            bins.append((rows[..., 0::2] - rows[..., 1::2]).sum(dim=(-2, -1)))
    return torch.stack(bins, dim=-1)


def self_conjugate_phase_mean(x: torch.Tensor) -> torch.Tensor:
    """Spatial mean of angle(fft2(x)) for real x, without a Fourier transform.

    For real x the spectrum is conjugate-symmetric, F[-k] = conj(F[k]), so angle(F[-k]) =
    -angle(F[k]) and every pair of distinct bins k != -k (mod (H, W)) cancels in the mean. What
    is left are the self-conjugate bins k = -k: DC, plus (H/2, 0), (0, W/2), (H/2, W/2) where
    the size is even. Each is real with imaginary part exactly +0 (as `torch.fft` returns it),
    so its angle is +pi when the sum is negative (or -0.0) and 0 otherwise. Hence::

        phase_mean(x) = pi * #{negative self-conjugate bins} / (H * W)

    This is exact, costs a few reductions, and removes the branch-cut trouble of computing the
    phase of near-real bins (ONNX DFT's DC imaginary parts have random sign: docs/numerics.md,
    "ACPA without a spectrum"). An
    exactly zero DC gives angle(0) = 0, as in torch (a -0.0 sum, from an all-(-0.0) map,
    counts as negative: angle(-0 + 0i) = pi, as torch gives for its -0 DC bin).

    Where it cannot match `torch.fft`: maps whose spectrum has non-self-conjugate bins that are
    *exactly* real and negative, or exactly zero with signed zeros (point-symmetric maps, a
    delta, constant maps, even-sized all-zero maps with mixed +-0 entries). Such bins lie on
    the branch cut, and torch's value depends on the signs of the zero imaginary parts its
    FFT happens to produce (a delta of -1 gives +pi for every bin, 144 of them at 12x12).
    No lowering reproduces that, and it carries no information about the features.

    Args:
        x: real tensor (B, C, H, W), float32 or float64.

    Returns:
        Tensor (B, C), dtype of `x`.
    """
    height, width = x.shape[-2], x.shape[-1]
    bins = self_conjugate_sums(x)
    # angle(s + 0i) is pi for sign-bit-negative s and 0 otherwise (see `safe_atan2`).
    half_turns = signbit(bins).to(bins.dtype)
    return half_turns.sum(dim=-1) * (math.pi / (height * width))


def _unit_circle(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2*pi*m/n for m = 0..n-1 in float64, exact at multiples of pi/2.

    Computed on the reduced index min(m, n - m) so that sin is exactly odd and cos exactly even
    in m (conjugate symmetry of the spectrum survives the rounding), and snapped to exact
    0/+-1 at m*4 % n == 0 so that DC and Nyquist rows carry no 1e-16 leakage.
    """
    m = np.arange(n)
    reduced = np.minimum(m, n - m)
    cos = np.cos(2.0 * np.pi * reduced / n)
    sin = np.sin(2.0 * np.pi * reduced / n) * np.where(m <= n - m, 1.0, -1.0)
    for quarter, (c, s) in enumerate(((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))):
        if (quarter * n) % 4 == 0:
            cos[quarter * n // 4] = c
            sin[quarter * n // 4] = s
    return cos, sin


def _shifted_dft_matrix(n: int) -> np.ndarray:
    """E[k', i] = exp(-2*pi*j*f(k')*i/n), f(k') = (k' - n//2) mod n: DFT with fftshift folded in.

    Row k' of the shifted spectrum holds frequency f(k'), because fftshift rolls by n//2; the
    same map sends a shifted index back for ifftshift (which rolls by -(n//2)). The index
    product is reduced mod n in integers, so every entry comes from the exact table.
    """
    cos, sin = _unit_circle(n)
    freq = (np.arange(n) - n // 2) % n
    index = np.outer(freq, np.arange(n)) % n
    return cos[index] - 1j * sin[index]


def _positive_zeros(a: np.ndarray) -> np.ndarray:
    # -0.0 entries would turn the +0 imaginary parts of exactly-real bins into -0 more often.
    a = np.array(a, dtype=np.float64)
    a[a == 0] = 0.0
    return a


class MatmulFFT(nn.Module):
    """The masker's spectral backend as real matrix products (the ``"matmul"`` lowering).

    The shifted 2-D DFT of an (H, W) map is one (HW x HW) complex matrix, the Kronecker product
    of the per-axis DFT matrices with fftshift folded into their rows; the inverse, with
    ifftshift and 1/(HW) folded in, is its conjugate. Both are split into real and imaginary
    parts, built once in float64 and stored (non-persistent, so state dicts do not change) in
    the module's dtype. `masked_filter` is then MatMul, Mul, Add, Sqrt, `safe_atan2`, Cos, Sin,
    MatMul: all TensorRT 10 ops, and one large GEMM per transform instead of many 13x13 ones.
    On (1, 2048, 13, 13) the four matrices hold 4 x 169^2 values (457 KB in float32).

    `.double()`, `.half()` or `.to(dtype)` rebuild the matrices from the float64 originals, so
    every dtype gets correctly rounded entries rather than twice-rounded ones.

    Args:
        height: spatial height H of the maps this backend will see.
        width: spatial width W.
        dtype: floating dtype of the constant matrices.

    Raises:
        ExportError: for non-positive sizes or more than 64x64 positions.
    """

    def __init__(self, height: int, width: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        height, width = int(height), int(width)
        if height < 1 or width < 1:
            raise ExportError(f"MatmulFFT needs a positive spatial size, got {height}x{width}")
        if height * width > _MAX_MATMUL_POSITIONS:
            raise ExportError(
                f"MatmulFFT builds dense (HW)^2 matrices; {height}x{width} is too large "
                f"(at most {_MAX_MATMUL_POSITIONS} positions)",
                api_hint="use lowering='dft' for large maps", cli_hint="use --lowering dft for large maps",
            )
        self.height = height
        self.width = width
        dft = np.kron(_shifted_dft_matrix(height), _shifted_dft_matrix(width))  # (freq, pos)
        inverse = np.conj(dft) / (height * width)
        # Row vectors (..., HW) multiply from the left: x @ E^T gives the spectrum, and
        # real(Z @ conj(E)/HW) = Zr @ Re(conj E)/HW - Zi @ Im(conj E)/HW gives the real output.
        self._tables64 = {
            "fwd_re": _positive_zeros(dft.real.T),
            "fwd_im": _positive_zeros(dft.imag.T),
            "inv_re": _positive_zeros(inverse.real),
            "inv_im": _positive_zeros(-inverse.imag),
        }
        for name, table in self._tables64.items():
            self.register_buffer(name, torch.tensor(table, dtype=dtype), persistent=False)

    def _apply(self, fn, recurse=True):
        # Casting float32 tables to float64 would keep float32 rounding (1e-8 errors): rebuild
        # them from the float64 originals in whatever dtype/device the cast produced.
        module = super()._apply(fn, recurse)
        for name, table in self._tables64.items():
            current = getattr(self, name)
            if current.is_floating_point():
                setattr(self, name, torch.tensor(table, dtype=current.dtype, device=current.device))
        return module

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"MatmulFFT was built for {self.height}x{self.width} maps, got {tuple(x.shape)}"
            )

    def masked_filter(
        self, x: torch.Tensor, amp_gate: torch.Tensor, phase_gate: torch.Tensor
    ) -> torch.Tensor:
        """real(ifft2(ifftshift(polar(amp_gate*|F|, phase_gate*angle(F))))), F = fftshift(fft2(x)).

        Args:
            x: real (B, C, H, W).
            amp_gate: (1, C or 1, H, W) gate on the shifted amplitude spectrum.
            phase_gate: (1, C or 1, H, W) gate on the shifted phase spectrum.

        Returns:
            Real (B, C, H, W), dtype of `x`.

        Raises:
            ValueError: if the spatial size is not the one the backend was built for.
        """
        self._check(x)
        dtype = x.dtype
        # reshape through the traced shape (not flatten): the TorchScript exporter bakes the
        # example's batch size into flatten/unflatten, breaking dynamic batches.
        flat = x.reshape(x.shape[:-2] + (-1,))
        re = flat @ self.fwd_re.to(dtype)
        im = flat @ self.fwd_im.to(dtype)
        amplitude = torch.sqrt(re * re + im * im) * amp_gate.flatten(-2)
        phase = safe_atan2(im, re) * phase_gate.flatten(-2)
        out = (amplitude * torch.cos(phase)) @ self.inv_re.to(dtype) + (
            amplitude * torch.sin(phase)
        ) @ self.inv_im.to(dtype)
        return out.reshape(out.shape[:-1] + (self.height, self.width))

    def phase_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial mean of angle(fft2(x)), (B, C, H, W) -> (B, C), via the exact identity.

        See `self_conjugate_phase_mean`: no spectrum is formed, only the DC (and, for even
        sizes, Nyquist) sums, so the result is exact and has no branch cut to fall off.

        Raises:
            ValueError: if the spatial size is not the one the backend was built for.
        """
        self._check(x)
        return self_conjugate_phase_mean(x)


class OnnxDFT(nn.Module):
    """The masker's spectral backend through ONNX `DFT` nodes (the ``"dft"`` lowering).

    Written with `torch.fft.fft2` / `ifft2` so that the dynamo exporter
    (`torch.onnx.export(..., dynamo=True)`, opset >= 18) emits one `DFT` per axis, with two
    deliberate departures from the literal `TorchFFT` code, both invisible in eager mode:

    - The angle is `safe_atan2(imag, real)`, not `torch.angle`: the exporter decomposes
      `angle` with a ``y > 0`` test and sends real-negative bins with a +0 imaginary part to
      -pi instead of +pi. For APM that is harmless (those bins are self-conjugate, where only
      A*cos(P) reaches the real output and cos is even), but using the same atan2 as
      `MatmulFFT` keeps the exported graph equal to eager bin by bin.
    - The gates are ifftshifted instead of the spectrum being fftshifted and shifted back
      (elementwise gating commutes with the permutation): the spectrum-sized Roll pairs
      (Slice/Concat) disappear and the gate shift constant-folds.

    ACPA's `phase_mean` uses the exact identity of `self_conjugate_phase_mean`, not a DFT.
    Measured on a (1, 2048, 13, 13) input with 1063 negative-sum channels, in onnxruntime:
    `torch.angle` through DFT flips 148 channels (error pi*2/169 = 0.037); `safe_atan2` alone
    still flips 143 (onnxruntime's DC imaginary parts are tiny numbers of random sign); DFT,
    then forcing the self-conjugate bins' imaginary parts to +0, then `safe_atan2` is right
    to 4.6e-6, because onnxruntime's DFT is not exactly conjugate-symmetric and the pairs no
    longer cancel; the identity is right to ~1e-8 (float32 summation of the eager mean). It is
    what `torch.fft` computes for real input, costs a few reductions, has no branch cut, and
    keeps DFT nodes out of the ACPA part of the graph.
    """

    def masked_filter(
        self, x: torch.Tensor, amp_gate: torch.Tensor, phase_gate: torch.Tensor
    ) -> torch.Tensor:
        """real(ifft2(ifftshift(polar(amp_gate*|F|, phase_gate*angle(F))))), F = fftshift(fft2(x)).

        Args:
            x: real (B, C, H, W).
            amp_gate: (1, C or 1, H, W) gate on the shifted amplitude spectrum.
            phase_gate: (1, C or 1, H, W) gate on the shifted phase spectrum.

        Returns:
            Real (B, C, H, W), dtype of `x`.
        """
        spectrum = torch.view_as_real(torch.fft.fft2(x))
        re, im = spectrum[..., 0], spectrum[..., 1]
        # Gates are given in fftshifted order; move them to the natural order instead.
        amp_gate = torch.fft.ifftshift(amp_gate, dim=(-2, -1))
        phase_gate = torch.fft.ifftshift(phase_gate, dim=(-2, -1))
        amplitude = torch.sqrt(re * re + im * im) * amp_gate
        phase = safe_atan2(im, re) * phase_gate
        filtered = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
        return torch.fft.ifft2(filtered).real

    def phase_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial mean of angle(fft2(x)), (B, C, H, W) -> (B, C), via the exact identity.

        See the class docstring for why this is not computed through DFT nodes.
        """
        return self_conjugate_phase_mean(x)


def _infer_spatial(model: nn.Module) -> Optional[Tuple[int, int]]:
    sizes = {m.shape[-2:] for m in model.modules() if isinstance(m, MaskModule)}
    return sizes.pop() if len(sizes) == 1 else None


def _module_dtype(module: nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _backend(lowering: str, spatial: Tuple[int, int], dtype: torch.dtype) -> nn.Module:
    if lowering == "torch":
        return TorchFFT()
    if lowering == "matmul":
        return MatmulFFT(spatial[0], spatial[1], dtype=dtype)
    return OnnxDFT()


def apply_lowering(
    model: nn.Module, lowering: str, spatial: Optional[Sequence[int]] = None
) -> nn.Module:
    """A deep copy of `model` whose masker modules compute with the chosen FFT lowering.

    Every `MaskModule` (APM) and `PhaseAttention` (ACPA) gets a new `spectral` backend:
    `TorchFFT` for ``"torch"``, `MatmulFFT` for ``"matmul"`` (sized from the APM mask shape;
    for ACPA from `spatial`, or from the model's APM when it has exactly one map size),
    `OnnxDFT` for ``"dft"``. Parameters, buffers and the state dict are copied unchanged (the
    lowering's constant matrices are non-persistent buffers); `model` itself is not modified.

    Args:
        model: any module containing masker modules (or a masker module itself).
        lowering: one of ``"torch"``, ``"matmul"``, ``"dft"``.
        spatial: (H, W) of the feature maps ACPA sees; needed for ``"matmul"`` when the model
            holds a `PhaseAttention` but no `MaskModule` to infer it from.

    Returns:
        The lowered copy, in the same train/eval mode as `model`.

    Raises:
        ExportError: for an unknown lowering, a malformed `spatial`, or an ACPA size that
            cannot be inferred.
    """
    if lowering not in LOWERINGS:
        raise ExportError(
            f"unknown FFT lowering {lowering!r}; valid lowerings: {', '.join(LOWERINGS)}"
        )
    if spatial is not None:
        try:
            spatial = tuple(int(s) for s in spatial)
        except (TypeError, ValueError):
            spatial = ()
        if len(spatial) != 2 or min(spatial) < 1:
            raise ExportError(f"spatial must be (height, width) with positive sizes, got {spatial}")
    lowered = copy.deepcopy(model)
    acpa_spatial = spatial if spatial is not None else _infer_spatial(lowered)
    for module in lowered.modules():
        if isinstance(module, MaskModule):
            module.spectral = _backend(lowering, module.shape[-2:], module.mask_amplitude.dtype)
        elif isinstance(module, PhaseAttention):
            if lowering == "matmul" and acpa_spatial is None:
                raise ExportError(
                    "cannot size the matmul lowering of PhaseAttention: the model has no single "
                    "APM map size to infer it from; pass spatial=(height, width)"
                )
            module.spectral = _backend(lowering, acpa_spatial, _module_dtype(module))
    return lowered
