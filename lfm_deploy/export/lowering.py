"""FFT lowerings for export: swap the masker's `torch.fft` backend for exportable graphs.

Three lowerings, chosen explicitly (never by sniffing whether a trace is running): ``"torch"``
(`TorchFFT`, the eager reference), ``"matmul"`` (`MatmulFFT`: constant matrix products, TensorRT
10 ops only) and ``"dft"`` (`OnnxDFT`: ONNX `DFT` nodes, TensorRT >= 11.2). How each is built
and why `safe_atan2` and `self_conjugate_phase_mean` exist: docs/numerics.md, "FFT lowering",
"abs, angle and the +pi case", "ACPA without a spectrum".
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
    few ulps (the table and the exporter's ``y > 0`` mistake it avoids: docs/numerics.md, "abs,
    angle and the +pi case"). NaN in either argument gives NaN; an infinite ``x`` or ``y`` alone
    gives atan2's value, both infinite gives NaN (atan2 gives an odd multiple of pi/4).
    Branches are selected with Cast-and-Mul, and `Where` only picks between scalars (onnxruntime's
    CPU Where on tensors is ~30x slower than an Add); the division by x = +-0 is intended
    (+-inf, and atan(+-inf) = +-pi/2 in onnxruntime and TensorRT alike).

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

    For real x only the self-conjugate bins (DC, and Nyquist for even sizes) survive the mean,
    each real with imaginary part +0, so (docs/numerics.md, "ACPA without a spectrum")::

        phase_mean(x) = pi * #{negative self-conjugate bins} / (H * W)

    Exact, a few reductions, no branch cut. An exactly zero DC gives 0, as in torch; a -0.0 sum
    counts as negative (angle(-0 + 0i) = pi, as torch gives). It cannot match `torch.fft` on
    degenerate maps whose other bins are exactly real and negative or exactly zero (a delta,
    constant or point-symmetric maps): torch's value there depends on the signs of the zeros its
    FFT happens to produce, and carries no information about the features.

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

    The shifted 2-D DFT of an (H, W) map as one (HW x HW) matrix (Kronecker product, fftshift
    folded in), its inverse the conjugate, both split into real and imaginary parts, built in
    float64 and stored as non-persistent buffers (state dicts do not change); construction
    details: docs/numerics.md, "FFT lowering". `.double()`, `.half()` or `.to(dtype)` rebuild
    the matrices from the float64 originals, so every dtype gets correctly rounded entries.

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

    Written with `torch.fft.fft2` / `ifft2` so that the dynamo exporter (opset >= 18) emits one
    `DFT` per axis, with two departures invisible in eager mode: the angle is `safe_atan2` (the
    exporter's `angle` sends real-negative bins to -pi), and the gates are ifftshifted instead of
    the spectrum being shifted there and back (no spectrum-sized Roll pairs). ACPA's `phase_mean`
    uses `self_conjugate_phase_mean`, not a DFT: onnxruntime's DFT gives DC imaginary parts of
    random sign (measurements: docs/numerics.md, "ACPA without a spectrum").
    """

    def masked_filter(
        self, x: torch.Tensor, amp_gate: torch.Tensor, phase_gate: torch.Tensor
    ) -> torch.Tensor:
        """As `MatmulFFT.masked_filter`, through ONNX `DFT` nodes."""
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
        """Spatial mean of angle(fft2(x)), (B, C, H, W) -> (B, C): `self_conjugate_phase_mean`."""
        return self_conjugate_phase_mean(x)


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
    sizes = {m.shape[-2:] for m in lowered.modules() if isinstance(m, MaskModule)}
    acpa_spatial = spatial if spatial is not None else sizes.pop() if len(sizes) == 1 else None
    for module in lowered.modules():
        if isinstance(module, MaskModule):
            module.spectral = _backend(lowering, module.shape[-2:], module.mask_amplitude.dtype)
        elif isinstance(module, PhaseAttention):
            if lowering == "matmul" and acpa_spatial is None:
                raise ExportError(
                    "cannot size the matmul lowering of PhaseAttention: the model has no single "
                    "APM map size to infer it from; pass spatial=(height, width)"
                )
            dtype = next((t.dtype for t in module.parameters() if t.is_floating_point()), torch.get_default_dtype())
            module.spectral = _backend(lowering, acpa_spatial, dtype)
    return lowered
