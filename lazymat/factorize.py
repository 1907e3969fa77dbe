"""Data-aware low-rank factorization of linear and 2-D convolution layers.

Given inputs ``X`` and the layer's outputs ``Y``, find ``Wa (D, k)``, ``Wb (k, M)`` and a bias
minimising ``||X @ Wa @ Wb + bias - Y||_F`` (Composer's ``factorize`` behaviour, written anew
on lazymat): SVD initialisation, then alternating least squares. The best bias for any
product is the mean residual, so ALS runs on the centred ``X`` and ``Y``, where each half-step
is an exact minimisation of the error itself, bias included (also for inputs of deficient
rank): the error never grows with ``n_iters``. The bias is re-fitted last and the factors are
returned ``k`` wide (also for a weight of lower rank), singular values split evenly.
With more samples than features, one QR of ``X`` replaces it by its ``D x D`` triangle for
every solve.

- The data-free best rank-``k`` approximation is the special case ``X = I``:
  :func:`lazymat.linalg.truncate`. With data, directions the inputs never excite cost nothing.
- An already factored ``Wa @ Wb`` is initialised from the SVD of its small core
  (:func:`lazymat.linalg.svd` on the lazy product): ``Wa @ Wb`` is never formed.
- ``nmse`` is the true normalised error of the returned solution against the original
  outputs (bias included), ``mean(|Y - Y_hat|^2) / var(Y)`` (complex data too).
- Least squares: a QR whose diagonal shows full column rank is solved by substitution (the
  fast, common case). Otherwise the minimum-norm solution through ``torch.linalg.pinv``
  (one SVD; the same answer as ``lstsq`` with driver ``gelsd`` at its default ``rcond``, 4x
  faster on a 4096 x 4096 triangle, and on CUDA, whose only driver ``gels`` assumes full
  rank). Not torch's CPU default ``gelsy``: it misses the optimum when an input feature that
  is not the last is exactly zero (torch 2.13; dead ReLU features make such columns).
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import lazymat as lm

__all__ = [
    "LowRankSolution", "factorize_conv2d", "factorize_conv2d_module", "factorize_linear",
    "factorize_matrix",
]


@dataclasses.dataclass
class LowRankSolution:
    """``Wa`` then ``Wb`` then ``+ bias``; ``rank`` is ``k`` (-1: not factorized), ``nmse`` the
    true normalised error of this solution on the data it was fitted to.

    Matrices: ``Wa (D, k)``, ``Wb (k, M)``. Convolutions: ``Wa (k, C_in, kh, kw)``,
    ``Wb (C_out, k, 1, 1)``. With ``rank == -1``, ``Wb`` may be ``None`` (one matrix)."""

    Wa: torch.Tensor | None = None
    Wb: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    rank: int = -1
    nmse: float = 0.0

    @property
    def expr(self) -> lm.Expr:
        """The lazy matrix ``Wa @ Wb`` (``(fan_in, out)``; convolution weights are unfolded)."""
        Wa, Wb = self.Wa, self.Wb
        if Wa is None:
            raise ValueError("this LowRankSolution has no Wa")
        if Wa.ndim == 4:
            Wa = _conv_weight_to_matrix(Wa)
            Wb = None if Wb is None else _conv_weight_to_matrix(Wb)
        return lm.lazy(Wa) if Wb is None else lm.lazy(Wa) @ lm.lazy(Wb)


# ---- least squares ------------------------------------------------------------------------
def _lstsq(A: torch.Tensor, B: torch.Tensor, triangular: bool = False) -> torch.Tensor:
    """``argmin_W ||A @ W - B||_F``, the minimum-norm one (``triangular``: ``A`` is upper
    triangular already). A QR whose diagonal shows full column rank is solved by substitution;
    a rank-deficient or wide ``A`` goes to the SVD-based solver of its device."""
    if A.shape[0] >= A.shape[1]:
        R, QtB = (A, B) if triangular else _qr_apply(A, B)
        d = R.diagonal().abs()
        if d.numel() and d.min() > torch.finfo(A.dtype).eps * max(A.shape) * d.max():
            return torch.linalg.solve_triangular(R, QtB, upper=True)
    # the minimum-norm solution at rcond = eps * max(m, n) (gelsd's default), read off one SVD:
    # gelsd took 66 s on a 4096 x 4096 float32 triangle where the SVD takes 16 s, and CUDA's
    # only lstsq driver (gels) assumes full rank
    return torch.linalg.pinv(A) @ B


def _qr_apply(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, Q^T B)`` for the reduced QR ``A = Q R`` of a tall ``A``, without forming ``Q``
    (Householder reflectors applied to ``B``: about half the cost of ``linalg.qr``)."""
    n = A.shape[-1]
    reflectors, tau = torch.geqrf(A)
    QtB = torch.ormqr(reflectors, tau, B, left=True, transpose=True)
    return reflectors[:n].triu(), QtB[:n]


def _nmse(Y: torch.Tensor, Y_hat: torch.Tensor) -> float:
    """``mean(|Y - Y_hat|^2) / var(Y)`` (``|.|^2``: complex outputs too). An exact fit is 0.0
    whatever ``var(Y)``: no outputs (``M = 0``), a constant ``Y`` or a single entry would be
    ``0 / 0``, NaN; an inexact fit of such a ``Y`` is ``inf`` (no variance to normalise by).
    Both are read at ``Y``'s scale (divided by its largest entry): squares of outputs near
    1e-160 or 1e160 (float64; 1e-19, 1e19 in float32) would underflow to an "exact" 0.0 or
    overflow to NaN, while the fit itself does not depend on the scale."""
    if not Y.numel():
        return 0.0  # nothing to predict: exact
    scale = Y.abs().amax()
    if 0 < scale < math.inf:
        Y, Y_hat = Y / scale, Y_hat / scale
    error = float((Y - Y_hat).abs().square().mean())
    if error == 0:
        return 0.0
    variance = float(Y.var()) if Y.numel() > 1 else 0.0  # (unbiased: one entry has none)
    return error / variance if variance > 0 else math.inf


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _target_rank(rank: int | float, in_width: int, current: int) -> int:
    """``k`` from ``rank``: a positive integer (Python, numpy or a 0-dim tensor; ``4.0`` too),
    or a fraction in ``(0, 1)`` of ``in_width``. ``2.5`` or ``inf`` is neither and raises."""
    if isinstance(rank, torch.Tensor) and rank.ndim == 0 and rank.dtype != torch.bool:
        # (a float32 tensor as np.float32: its decimal is the shortest float32 one, '0.58')
        rank = np.float32(rank.item()) if rank.dtype == torch.float32 else rank.item()
    if (isinstance(rank, bool) or not isinstance(rank, numbers.Real) or not 0 < rank < math.inf
            or (rank >= 1 and rank != int(rank))):
        raise ValueError(f"rank must be a positive int, or a float in (0, 1) for a fraction; got {rank!r}")
    if rank < 1:  # a fraction of the input width, capped by the current rank
        return max(1, min(_fraction_of(rank, in_width), current))
    return int(rank)


def _fraction_of(fraction: float, width: int) -> int:
    """``floor(fraction * width)`` for the fraction the user meant: ``0.29 * 100`` is
    ``28.999999999999996`` in binary floating point, which ``int`` cut to 28. The float is read
    as the shortest decimal that reads back as it (of its own precision: ``np.float32(0.58)`` is
    ``'0.58'``), the one it was written as; the product is rounded to 9 decimals before the
    floor, so ``1/3`` (``0.3333333333333333``) of 9 is 3."""
    text = str(fraction) if isinstance(fraction, np.floating) else repr(float(fraction))
    return int(round(decimal.Decimal(text) * width, 9))


# ---- matrices -----------------------------------------------------------------------------
def _check_matrix_args(X, Y, Wa, Wb, bias) -> None:
    for name, t in (("X", X), ("Y", Y), ("Wa", Wa), ("Wb", Wb), ("bias", bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must be (N, D) and (N, M) with the same N; got X {_shape(X)}, Y {_shape(Y)}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"X {_shape(X)} holds no samples: the fit needs at least one row")
    D, M = X.shape[1], Y.shape[1]
    if Wa.ndim != 2 or Wa.shape[0] != D:
        raise ValueError(f"Wa must be ({D}, d) to take X {_shape(X)}; got Wa {_shape(Wa)}")
    if Wb is None and Wa.shape[1] != M:
        raise ValueError(f"Wa must be ({D}, {M}) to map X {_shape(X)} to Y {_shape(Y)}; got {_shape(Wa)}")
    if Wb is not None and (Wb.ndim != 2 or Wb.shape != (Wa.shape[1], M)):
        raise ValueError(
            f"Wb must be ({Wa.shape[1]}, {M}) to follow Wa {_shape(Wa)} and give Y {_shape(Y)}; "
            f"got Wb {_shape(Wb)}"
        )
    if bias is not None and bias.shape != (M,):
        raise ValueError(f"bias must be ({M},) for Y {_shape(Y)}; got {_shape(bias)}")
    _check_one_device(X=X, Y=Y, Wa=Wa, Wb=Wb, bias=bias)
    _check_not_meta(X=X, Y=Y, Wa=Wa, Wb=Wb, bias=bias)
    if not (Y.dtype.is_floating_point or Y.dtype.is_complex):  # (X, Wa, Wb may be integers: promoted)
        raise TypeError(f"Y {_shape(Y)} has dtype {Y.dtype}; the solution takes Y's dtype, which must "
                        "be floating or complex (cast Y with .float())")


def _check_n_iters(n_iters: Any) -> None:
    if isinstance(n_iters, bool) or not isinstance(n_iters, int) or n_iters < 0:
        raise ValueError(f"n_iters must be a non-negative int, got {n_iters!r}")


def _check_one_device(**tensors: torch.Tensor | None) -> None:
    """Refuse tensors on several devices, naming each (torch's error names none of them)."""
    given = {name: t for name, t in tensors.items() if t is not None}
    if len({t.device for t in given.values()}) > 1:
        where = ", ".join(f"{name} {_shape(t)} on {t.device}" for name, t in given.items())
        raise ValueError(f"the tensors are on different devices: {where}; move them to one (.to(device))")


def _check_not_meta(**tensors: torch.Tensor | None) -> None:
    """Refuse a tensor on the meta device, naming it: the fit needs values (torch's error, from
    deep in a solve, names nothing)."""
    for name, t in tensors.items():
        if t is not None and t.device.type == "meta":
            raise ValueError(f"{name} {_shape(t)} is on the meta device (a shape, no values): the fit "
                             "needs its values; load or create the tensors on a real device")


def _check_finite(**tensors: torch.Tensor | None) -> None:
    """Raise :class:`lazymat.linalg.NonFiniteError` naming the first tensor with an inf or NaN
    entry: no least-squares fit exists (torch's QR and SVD would fail with no name)."""
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            raise lm.linalg.NonFiniteError(f"{name} {_shape(t)} holds an inf or NaN entry, so no "
                                           "least-squares fit exists; check it with torch.isfinite")


def _compress_samples(X: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(R, Q^T T, True)`` from ``X = Q R`` when there are more samples than features: for
    every ``A``, ``||X A - T||^2 = ||R A - Q^T T||^2 + const`` (Q has orthonormal columns,
    whatever X's rank), so each least-squares solve works on ``D`` rows instead of ``N``."""
    if X.shape[0] <= X.shape[1]:
        return X, T, False
    R, QtT = _qr_apply(X, T)
    return R, QtT, True


def _orthonormal_complement(U: torch.Tensor, width: int) -> torch.Tensor:
    """``width`` orthonormal columns orthogonal to those of ``U (D, r)``, ``r + width <= D``:
    the next columns of the complete Q of ``U``'s Householder QR (deterministic; the first
    ``width`` unit vectors when ``U`` has no columns)."""
    reflectors, tau = torch.geqrf(U)
    r = U.shape[1]
    unit = torch.eye(U.shape[0], r + width, dtype=U.dtype, device=U.device)[:, r:]
    return torch.ormqr(reflectors, tau, unit, left=True, transpose=False)


def _balanced_factors(Wa: torch.Tensor, Wb: torch.Tensor | None, k: int):
    """Best rank-``k`` factors of ``Wa`` (or of ``Wa @ Wb``, from its small core), with the
    singular values split evenly: ``U_k S_k^1/2`` and ``S_k^1/2 Vh_k``.

    :func:`lazymat.linalg.svd` returns only the ``r`` nonzero triplets. When ``r < k`` the
    factors are still ``k`` wide: ``Wa`` gets ``k - r`` orthonormal columns beyond ``U``'s span
    and ``Wb`` zero rows there, so the product is unchanged and ALS (or later training) can
    put the missing directions to use."""
    W = lm.lazy(Wa) if Wb is None else lm.lazy(Wa) @ lm.lazy(Wb)
    U, S, Vh = lm.linalg.svd(W)
    U, S, Vh = U[:, :k], S[:k], Vh[:k]
    root, missing = S.sqrt(), k - S.shape[0]
    Wa = torch.cat([U * root, _orthonormal_complement(U, missing)], dim=1)
    Wb = torch.cat([root[:, None] * Vh, Vh.new_zeros(missing, Vh.shape[1])])
    return Wa, Wb


def factorize_matrix(
    X: torch.Tensor,
    Y: torch.Tensor,
    Wa: torch.Tensor,
    Wb: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    rank: int | float = 0.25,
    n_iters: int = 3,
) -> LowRankSolution:
    """Rank-``k`` ``Wa (D, k) @ Wb (k, M)`` and bias fitting ``Y ~ X @ W + bias``.

    ``X (N, D)``, ``Y (N, M)``; the layer is ``Wa (D, M)`` or an already factored
    ``Wa (D, d) @ Wb (d, M)``. ``rank < 1`` is a fraction of ``D`` (capped by the current
    rank). A rank reaching ``D`` or ``M`` returns the single least-squares matrix with its
    bias fitted too, as every rank's is (Composer keeps the given bias there, or none: a fit
    worse than a lower rank's); one above the current rank ``d`` returns the input unchanged
    (both with ``rank = -1``).
    The factors are ``k`` wide whatever ``W``'s rank; with enough ``n_iters`` the error
    reaches the rank-``k`` optimum (reduced-rank regression).
    Cost: one QR of ``X``, the SVD of ``W`` (of the ``d x d`` core when factored), one
    ``D x D`` triangular solve, then ``n_iters`` rounds of ``(D, k)``-sized solves."""
    _check_n_iters(n_iters)
    _check_matrix_args(X, Y, Wa, Wb, bias)
    return _fit(X, Y, Wa, Wb, bias, rank, n_iters, Y.dtype)


def _fit(X: torch.Tensor, Y: torch.Tensor, Wa: torch.Tensor, Wb: torch.Tensor | None,
         bias: torch.Tensor | None, rank: int | float, n_iters: int,
         out_dtype: torch.dtype) -> LowRankSolution:
    """:func:`factorize_matrix` on checked arguments, returning tensors of ``out_dtype`` (and
    their nmse against ``Y``, which may be of a wider dtype: a convolution's exact outputs)."""
    wd = _work_dtype(torch.promote_types(torch.promote_types(X.dtype, Y.dtype), out_dtype))
    X, Y, Wa = X.detach().to(wd), Y.detach().to(wd), Wa.detach().to(wd)
    Wb = None if Wb is None else Wb.detach().to(wd)
    given_bias = None if bias is None else bias.detach().to(wd)
    _check_finite(X=X, Y=Y, Wa=Wa, Wb=Wb, bias=given_bias)
    D, M = X.shape[1], Y.shape[1]
    k = _target_rank(rank, D, Wa.shape[1])

    def cast(t):
        return None if t is None else t.to(out_dtype)

    def solution(Wa, Wb, bias, rank):
        """The returned tensors, and the nmse measured from exactly those tensors."""
        Wa, Wb, bias = cast(Wa), cast(Wb), cast(bias)
        Y_hat = X @ Wa.to(wd) if Wb is None else (X @ Wa.to(wd)) @ Wb.to(wd)
        if bias is not None:
            Y_hat = Y_hat + bias.to(wd)
        return LowRankSolution(Wa, Wb, bias, rank, _nmse(Y, Y_hat))

    if Wb is not None and k < min(D, M) and k >= Wa.shape[1]:  # already at or below rank k
        return solution(Wa, Wb, given_bias, -1)
    # For any product W the best bias is mean(Y - X W): centring X and Y removes it exactly,
    # so every step below minimises the error itself (bias included), given the other factor.
    x_mean, y_mean = X.mean(dim=0), Y.mean(dim=0)
    Xs, Ts, triangular = _compress_samples(X - x_mean, Y - y_mean)
    Ya = _lstsq(Xs, Ts, triangular)  # the minimum-norm unconstrained optimum (D, M)
    if k >= D or k >= M:  # a factorization would not be smaller: the least-squares matrix and
        return solution(Ya, None, y_mean - x_mean @ Ya, -1)  # its bias (never worse than rank k)
    Wa, Wb = _balanced_factors(Wa, Wb, k)
    for _ in range(n_iters):
        Wb = _lstsq(Xs @ Wa, Ts)
        # Wa step, exact whatever X's rank: with Q (M, k) an orthonormal basis of (at least)
        # Wb's rows (conjugated), ||X Z Q^H - T||^2 = ||X Z - T Q||^2 + ||T (I - Q Q^H)||^2,
        # minimised by Z = X^+ T Q = Ya Q (X^+ is linear); Wa Wb = (Wa Wb Q) Q^H is one such Z Q^H
        Q = torch.linalg.qr(Wb.mH)[0]
        Wa, Wb = Ya @ Q, Q.mH
    Wa, Wb = _balanced_factors(Wa, Wb, k)  # same product, singular values split evenly
    return solution(Wa, Wb, y_mean - (x_mean @ Wa) @ Wb, k)


# ---- convolutions -------------------------------------------------------------------------
_CONV_ARGS = ("padding", "padding_mode", "stride", "dilation", "groups")


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _check_conv_kwargs(kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - set(_CONV_ARGS))
    if unknown:
        raise TypeError(f"unexpected conv2d argument(s) {unknown}; expected some of {list(_CONV_ARGS)}")
    for name in ("stride", "dilation"):
        value = kwargs.get(name, 1)
        if _pair(value) != (1, 1):
            raise NotImplementedError(f"factorize_conv2d supports {name}=1 only; got {name}={value!r}")
    if kwargs.get("groups", 1) != 1:
        raise NotImplementedError(f"factorize_conv2d supports groups=1 only; got groups={kwargs['groups']!r}")


def _padding_amounts(padding: Any, kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` as ``F.pad`` takes them, for nn.Conv2d's ``padding``."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":  # nn.Conv2d puts the extra one of an even kernel on the right/bottom
        (th, tw) = (kernel[0] - 1, kernel[1] - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = _pair(padding)
    return (pw, pw, ph, ph)


def _conv_inputs_to_matrix(X: torch.Tensor, kernel: tuple[int, int], padding: Any, mode: str) -> torch.Tensor:
    """Every ``C_in x kh x kw`` input patch (stride 1) as a row: ``(N * positions, fan_in)``."""
    pad = _padding_amounts(padding, kernel)
    if any(pad):
        X = F.pad(X, pad, mode="constant" if mode == "zeros" else mode)
    patches = F.unfold(X, kernel_size=kernel)  # (N, fan_in, positions)
    return patches.mT.reshape(-1, patches.shape[1])


def _conv_weight_to_matrix(W: torch.Tensor) -> torch.Tensor:
    return W.reshape(W.shape[0], -1).mT  # (fan_in, out_channels)


def _matrix_to_conv_weight(W: torch.Tensor | None, kernel: tuple[int, int]) -> torch.Tensor | None:
    return None if W is None else W.mT.reshape(W.shape[1], -1, *kernel)


def factorize_conv2d(
    X: torch.Tensor,
    Wa: torch.Tensor,
    Wb: torch.Tensor | None = None,
    rank: int | float = 0.25,
    biasA: torch.Tensor | None = None,
    biasB: torch.Tensor | None = None,
    n_iters: int = 3,
    **conv2d_kwargs: Any,
) -> LowRankSolution:
    """A ``kh x kw`` convolution as a ``kh x kw`` one with ``k`` output channels followed by a
    ``1 x 1`` one, fitted on inputs ``X (N, C_in, H, W)`` (or one unbatched ``(C_in, H, W)``,
    as ``nn.Conv2d`` takes).

    The layer is ``Wa (C_out, C_in, kh, kw)`` (+ ``biasA``), or an already factored
    ``Wa (d, C_in, kh, kw)`` (+ ``biasA``) then ``Wb (C_out, d, 1, 1)`` (+ ``biasB``).
    ``conv2d_kwargs``: ``padding`` (int, pair, ``'same'``, ``'valid'``) and ``padding_mode`` as in
    ``nn.Conv2d``; ``stride``, ``dilation``, ``groups`` other than 1 raise ``NotImplementedError``.
    Returns ``Wa (k, C_in, kh, kw)``, ``Wb (C_out, k, 1, 1)`` and a bias ``(C_out,)``, of the
    layer's dtype (its weights and biases promoted; ``X`` is promoted with them)."""
    _check_conv_kwargs(conv2d_kwargs)
    _check_n_iters(n_iters)
    for name, t in (("X", X), ("Wa", Wa), ("Wb", Wb), ("biasA", biasA), ("biasB", biasB)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if biasB is not None and Wb is None:
        raise ValueError(f"biasB {_shape(biasB)} was given without Wb: there is no second convolution")
    _check_not_meta(X=X, Wa=Wa, Wb=Wb, biasA=biasA, biasB=biasB)
    given, X = X, X[None] if X.ndim == 3 else X  # unbatched (C_in, H, W): one sample, as nn.Conv2d reads it
    if X.ndim != 4 or Wa.ndim != 4 or Wa.shape[1] != X.shape[1]:
        raise ValueError(
            f"X must be (N, C_in, H, W) or (C_in, H, W) and Wa (C, C_in, kh, kw) with the same C_in; got X "
            f"{_shape(given)}, Wa {_shape(Wa)}"
        )
    if Wb is not None and (Wb.ndim != 4 or Wb.shape[1:] != (Wa.shape[0], 1, 1)):
        raise ValueError(
            f"Wb must be (C_out, {Wa.shape[0]}, 1, 1) to follow Wa {_shape(Wa)}; got {_shape(Wb)}"
        )
    if biasA is not None and biasA.shape != (Wa.shape[0],):
        raise ValueError(f"biasA must be ({Wa.shape[0]},) for Wa {_shape(Wa)}; got {_shape(biasA)}")
    if biasB is not None and biasB.shape != (Wb.shape[0],):
        raise ValueError(f"biasB must be ({Wb.shape[0]},) for Wb {_shape(Wb)}; got {_shape(biasB)}")
    if not (Wa.dtype.is_floating_point or Wa.dtype.is_complex):
        raise TypeError(f"Wa {_shape(Wa)} has dtype {Wa.dtype}; a convolution weight must be floating "
                        "or complex (the solution takes its dtype)")
    _check_one_device(X=X, Wa=Wa, Wb=Wb, biasA=biasA, biasB=biasB)
    kernel = (Wa.shape[2], Wa.shape[3])
    left, right, top, bottom = _padding_amounts(conv2d_kwargs.get("padding", 0), kernel)
    if X.shape[2] + top + bottom < kernel[0] or X.shape[3] + left + right < kernel[1]:
        raise ValueError(f"X {_shape(given)} is smaller than the {kernel[0]} x {kernel[1]} kernel of Wa "
                         f"{_shape(Wa)} (padded by {(top, bottom)} rows, {(left, right)} columns): "
                         "the convolution has no output position to fit")
    # the solution takes the layer's dtype (its weights and biases promoted); the outputs are
    # formed with X in the dtype of all of them (float32 for 16-bit ones), as matmul needs one
    layer = [t for t in (Wa, Wb, biasA, biasB) if t is not None]
    out_dtype = functools.reduce(torch.promote_types, [t.dtype for t in layer])
    wd = _work_dtype(torch.promote_types(X.dtype, out_dtype))
    X, Wa, Wb, biasA, biasB = (None if t is None else t.detach().to(wd) for t in (X, Wa, Wb, biasA, biasB))
    X_mat = _conv_inputs_to_matrix(
        X, kernel, conv2d_kwargs.get("padding", 0), conv2d_kwargs.get("padding_mode", "zeros")
    )
    Wa_mat = _conv_weight_to_matrix(Wa)
    Wb_mat = None if Wb is None else _conv_weight_to_matrix(Wb)
    # the layer's own bias, as seen at its output: biasA passes through the 1x1 convolution
    bias = biasA
    if Wb_mat is not None:
        bias = None if bias is None else bias @ Wb_mat
        if biasB is not None:
            bias = biasB if bias is None else bias + biasB
    Y_mat = X_mat @ Wa_mat if Wb_mat is None else (X_mat @ Wa_mat) @ Wb_mat
    if bias is not None:
        Y_mat = Y_mat + bias
    solution = _fit(X_mat, Y_mat, Wa_mat, Wb_mat, bias, rank, n_iters, out_dtype)
    solution.Wa = _matrix_to_conv_weight(solution.Wa, kernel)
    solution.Wb = _matrix_to_conv_weight(solution.Wb, (1, 1))
    return solution


# ---- modules --------------------------------------------------------------------------------
def _as_layer_input(X: Any, module: torch.nn.Module) -> torch.Tensor:
    """``X`` detached, in the layer's dtype and on its device (as the layer itself would need
    it: a float64 batch for a float32 layer is fitted in float32)."""
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
    if module.weight.device.type == "meta":  # (X would be moved there, and named instead)
        raise ValueError(f"{module} has its weight {_shape(module.weight)} on the meta device (a shape, "
                         "no values): the fit needs its values; load the layer's weights first")
    if X.dtype.is_complex and not module.weight.dtype.is_complex:  # the cast would drop X.imag
        raise TypeError(f"X {_shape(X)} is {X.dtype} for {module} of dtype {module.weight.dtype}: "
                        "a real layer takes real inputs (its forward raises too)")
    return X.detach().to(device=module.weight.device, dtype=module.weight.dtype)


def _refuse_unfactorized(solution: LowRankSolution, what: str, rank: int | float) -> None:
    if solution.rank == -1:
        raise ValueError(
            f"rank {rank!r} would not shrink {what}: a rank below both its input and output "
            "widths is needed to split it into two layers"
        )


def _warn_if_larger(module: torch.nn.Module, layers: torch.nn.Sequential, rank: int | float) -> None:
    """A warning when the two layers hold more parameters than ``module`` (a rank past
    ``in * out / (in + out)`` for a linear layer): a drop-in, but no smaller nor faster."""
    before = sum(p.numel() for p in module.parameters())
    after = sum(p.numel() for p in layers.parameters())
    if after > before:
        warnings.warn(f"rank {rank!r} splits {module} into layers of {after} parameters, more than its "
                      f"{before}: a lower rank is needed to save parameters or FLOPs", stacklevel=3)


def _frozen_like(module: torch.nn.Module, layers: torch.nn.Sequential) -> torch.nn.Sequential:
    """``layers`` trainable as ``module`` was: a frozen layer (``requires_grad=False``) is
    replaced by frozen ones, the weights as its weight, the new bias as its bias (or weight).
    Warns when they hold more parameters than ``module`` (:func:`_warn_if_larger`)."""
    first, second = layers
    first.weight.requires_grad_(module.weight.requires_grad)
    second.weight.requires_grad_(module.weight.requires_grad)
    source = module.bias if module.bias is not None else module.weight
    second.bias.requires_grad_(source.requires_grad)
    return layers


def factorize_linear(module: torch.nn.Linear, X: torch.Tensor, rank: int | float = 0.25,
                     n_iters: int = 3) -> torch.nn.Sequential:
    """Two ``nn.Linear`` layers (``in -> k`` without bias, ``k -> out`` with one) fitted to
    ``module``'s outputs on inputs ``X (..., in_features)``; a drop-in replacement."""
    if not isinstance(module, torch.nn.Linear):
        raise TypeError(f"factorize_linear expects an nn.Linear, got {type(module).__name__}")
    X = _as_layer_input(X, module)
    if X.shape[-1:] != (module.in_features,):
        raise ValueError(f"X must be (..., {module.in_features}) for {module}; got {_shape(X)}")
    X = X.reshape(-1, module.in_features)
    with torch.no_grad():
        Y = module(X)
    bias = None if module.bias is None else module.bias.detach()
    solution = factorize_matrix(X, Y, module.weight.detach().mT, bias=bias, rank=rank, n_iters=n_iters)
    _refuse_unfactorized(solution, str(module), rank)
    first = torch.nn.Linear(module.in_features, solution.rank, bias=False)
    second = torch.nn.Linear(solution.rank, module.out_features, bias=True)
    like = {"device": module.weight.device, "dtype": module.weight.dtype}
    with torch.no_grad():
        first.to(**like).weight.copy_(solution.Wa.mT)
        second.to(**like).weight.copy_(solution.Wb.mT)
        second.bias.copy_(solution.bias)
    layers = torch.nn.Sequential(first, second)
    _warn_if_larger(module, layers, rank)
    return _frozen_like(module, layers)


def factorize_conv2d_module(module: torch.nn.Conv2d, X: torch.Tensor, rank: int | float = 0.25,
                            n_iters: int = 3) -> torch.nn.Sequential:
    """Two ``nn.Conv2d`` layers (``kh x kw`` to ``k`` channels without bias, then ``1 x 1`` with
    one) fitted to ``module``'s outputs on inputs ``X (N, C_in, H, W)`` or ``(C_in, H, W)``; a
    drop-in."""
    if not isinstance(module, torch.nn.Conv2d):
        raise TypeError(f"factorize_conv2d_module expects an nn.Conv2d, got {type(module).__name__}")
    solution = factorize_conv2d(
        _as_layer_input(X, module), module.weight, rank=rank, biasA=module.bias, n_iters=n_iters,
        padding=module.padding, padding_mode=module.padding_mode, stride=module.stride,
        dilation=module.dilation, groups=module.groups,
    )
    _refuse_unfactorized(solution, str(module), rank)
    first = torch.nn.Conv2d(module.in_channels, solution.rank, module.kernel_size, padding=module.padding,
                            padding_mode=module.padding_mode, bias=False)
    second = torch.nn.Conv2d(solution.rank, module.out_channels, 1, bias=True)
    like = {"device": module.weight.device, "dtype": module.weight.dtype}
    with torch.no_grad():
        first.to(**like).weight.copy_(solution.Wa)
        second.to(**like).weight.copy_(solution.Wb)
        second.bias.copy_(solution.bias)
    layers = torch.nn.Sequential(first, second)
    _warn_if_larger(module, layers, rank)
    return _frozen_like(module, layers)

