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
- Whole models: :func:`factorize_model` hooks every ``nn.Linear`` and ``nn.Conv2d``, runs the
  model once on sample inputs, splits each layer whose split saves parameters and
  multiply-adds (:func:`factorization_savings`), and reports what it did per layer.
- Least squares: a QR whose diagonal shows full column rank is solved by substitution (the
  fast, common case). Otherwise the minimum-norm solution through ``torch.linalg.pinv``
  (one SVD; the same answer as ``lstsq`` with driver ``gelsd`` at its default ``rcond``, 4x
  faster on a 4096 x 4096 triangle, and on CUDA, whose only driver ``gels`` assumes full
  rank). Not torch's CPU default ``gelsy``: it misses the optimum when an input feature that
  is not the last is exactly zero (torch 2.13; dead ReLU features make such columns).
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
import functools
import math
import numbers
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import lazymat as lm
from lazymat import progress
from lazymat.indexing import integer_scalar

__all__ = [
    "FactorizationReport", "FactorizationSavings", "LayerFactorization", "LowRankSolution",
    "factorization_savings", "factorize_conv2d", "factorize_conv2d_module", "factorize_linear",
    "factorize_matrix", "factorize_model",
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


def _count(value: Any, name: str) -> int:
    """``value`` as a non-negative int: a Python or numpy int or a 0-dim integer tensor, as
    ``rank`` is read (a bool, float or negative one raises a ``ValueError`` naming ``name``)."""
    number = None if isinstance(value, bool) else integer_scalar(value)
    if number is None or number < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return number


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
    n_iters = _count(n_iters, "n_iters")
    _check_matrix_args(X, Y, Wa, Wb, bias)
    return _fit(X, Y, Wa, Wb, bias, rank, n_iters, Y.dtype)


def _fit(X: torch.Tensor, Y: torch.Tensor, Wa: torch.Tensor, Wb: torch.Tensor | None,
         bias: torch.Tensor | None, rank: int | float, n_iters: int,
         out_dtype: torch.dtype, ridge: float = 0.0) -> LowRankSolution:
    """:func:`factorize_matrix` on checked arguments, returning tensors of ``out_dtype`` (and
    their nmse against ``Y``, which may be of a wider dtype: a convolution's exact outputs).

    ``ridge > 0`` adds ``lam ||Wa Wb||_F^2`` to the error minimised, ``lam = ridge`` times the
    centred inputs' mean squared norm per feature (``||X - mean||_F^2 / D``, so scale-free):
    directions the inputs barely excite get small weights rather than ones fitted to noise."""
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
    Xc, Tc = X - x_mean, Y - y_mean
    if ridge:  # D rows sqrt(lam) I below X (targets 0) add lam ||W||^2 to every solve below
        lam = ridge * float(Xc.abs().square().sum()) / max(D, 1)
        Xc = torch.cat([Xc, math.sqrt(lam) * torch.eye(D, dtype=Xc.dtype, device=Xc.device)])
        Tc = torch.cat([Tc, Tc.new_zeros(D, M)])
    Xs, Ts, triangular = _compress_samples(Xc, Tc)
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
    return _conv2d_solution(X, Wa, Wb, rank, biasA, biasB, n_iters, conv2d_kwargs)


def _conv2d_solution(X: torch.Tensor, Wa: torch.Tensor, Wb: torch.Tensor | None, rank: int | float,
                     biasA: torch.Tensor | None, biasB: torch.Tensor | None, n_iters: int,
                     conv2d_kwargs: dict, target: torch.Tensor | None = None,
                     ridge: float = 0.0) -> LowRankSolution:
    """:func:`factorize_conv2d`, fitted to ``target (N, C_out, H', W')`` when given (another
    layer's outputs: the original layer's on the original inputs) instead of the layer's own
    outputs on ``X``; ``ridge`` as in :func:`_fit`."""
    _check_conv_kwargs(conv2d_kwargs)
    n_iters = _count(n_iters, "n_iters")
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
    if target is None:
        Y_mat = X_mat @ Wa_mat if Wb_mat is None else (X_mat @ Wa_mat) @ Wb_mat
        if bias is not None:
            Y_mat = Y_mat + bias
    else:  # (N, C_out, H', W') -> one row per output position, in the order of X_mat's patches
        Y_mat = target.detach().to(wd).flatten(2).mT.reshape(-1, target.shape[1])
        if Y_mat.shape != (X_mat.shape[0], Wa_mat.shape[1] if Wb_mat is None else Wb_mat.shape[1]):
            raise ValueError(f"the target {_shape(target)} does not match the outputs of X {_shape(given)}")
    solution = _fit(X_mat, Y_mat, Wa_mat, Wb_mat, bias, rank, n_iters, out_dtype, ridge)
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
    _check_not_meta(X=X)  # (moving it to the layer's device would fail in torch, naming nothing)
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


def _warn_if_larger(module: torch.nn.Module, layers: torch.nn.Sequential, rank: int | float,
                    stacklevel: int = 3) -> None:
    """A warning when the two layers hold more parameters than ``module`` (a rank past
    ``in * out / (in + out)`` for a linear layer): a drop-in, but no smaller nor faster."""
    before = sum(p.numel() for p in module.parameters())
    after = sum(p.numel() for p in layers.parameters())
    if after > before:
        warnings.warn(f"rank {rank!r} splits {module} into layers of {after} parameters, more than its "
                      f"{before}: a lower rank is needed to save parameters or FLOPs", stacklevel=stacklevel)


def _frozen_like(module: torch.nn.Module, layers: torch.nn.Sequential) -> torch.nn.Sequential:
    """``layers`` trainable as ``module`` was: a frozen layer (``requires_grad=False``) is
    replaced by frozen ones, the weights as its weight, the new bias as its bias (or weight);
    and in its mode (``training``), so a model in eval mode stays in eval mode throughout."""
    layers.train(module.training)
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
    layers, _ = _split_linear(module, X, rank, n_iters)
    return layers


def _split_linear(module: torch.nn.Linear, X: torch.Tensor, rank: int | float, n_iters: int,
                  target: torch.Tensor | None = None,
                  ridge: float = 0.0) -> tuple[torch.nn.Sequential, LowRankSolution]:
    """:func:`factorize_linear`, and the solution it was built from (its nmse); fitted to
    ``target (rows, out_features)`` when given instead of ``module``'s outputs on ``X``
    (``ridge`` as in :func:`_fit`)."""
    if not isinstance(module, torch.nn.Linear):
        raise TypeError(f"factorize_linear expects an nn.Linear, got {type(module).__name__}")
    X = _as_layer_input(X, module)
    if X.shape[-1:] != (module.in_features,):
        raise ValueError(f"X must be (..., {module.in_features}) for {module}; got {_shape(X)}")
    X = X.reshape(-1, module.in_features)
    if target is None:
        with torch.no_grad():
            Y = module(X)
    else:
        Y = target.detach().to(device=X.device, dtype=X.dtype)
    bias = None if module.bias is None else module.bias.detach()
    Wa = module.weight.detach().mT
    n_iters = _count(n_iters, "n_iters")
    _check_matrix_args(X, Y, Wa, None, bias)
    solution = _fit(X, Y, Wa, None, bias, rank, n_iters, Y.dtype, ridge)
    _refuse_unfactorized(solution, str(module), rank)
    first = torch.nn.Linear(module.in_features, solution.rank, bias=False)
    second = torch.nn.Linear(solution.rank, module.out_features, bias=True)
    like = {"device": module.weight.device, "dtype": module.weight.dtype}
    with torch.no_grad():
        first.to(**like).weight.copy_(solution.Wa.mT)
        second.to(**like).weight.copy_(solution.Wb.mT)
        second.bias.copy_(solution.bias)
    layers = torch.nn.Sequential(first, second)
    _warn_if_larger(module, layers, rank, stacklevel=4)
    return _frozen_like(module, layers), solution


def factorize_conv2d_module(module: torch.nn.Conv2d, X: torch.Tensor, rank: int | float = 0.25,
                            n_iters: int = 3) -> torch.nn.Sequential:
    """Two ``nn.Conv2d`` layers (``kh x kw`` to ``k`` channels without bias, then ``1 x 1`` with
    one) fitted to ``module``'s outputs on inputs ``X (N, C_in, H, W)`` or ``(C_in, H, W)``; a
    drop-in."""
    layers, _ = _split_conv2d(module, X, rank, n_iters)
    return layers


def _split_conv2d(module: torch.nn.Conv2d, X: torch.Tensor, rank: int | float, n_iters: int,
                  target: torch.Tensor | None = None,
                  ridge: float = 0.0) -> tuple[torch.nn.Sequential, LowRankSolution]:
    """:func:`factorize_conv2d_module`, and the solution it was built from (its nmse); fitted
    to ``target`` when given instead of ``module``'s outputs on ``X`` (``ridge``: :func:`_fit`)."""
    if not isinstance(module, torch.nn.Conv2d):
        raise TypeError(f"factorize_conv2d_module expects an nn.Conv2d, got {type(module).__name__}")
    solution = _conv2d_solution(
        _as_layer_input(X, module), module.weight, None, rank, module.bias, None, n_iters,
        {"padding": module.padding, "padding_mode": module.padding_mode, "stride": module.stride,
         "dilation": module.dilation, "groups": module.groups}, target, ridge)
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
    _warn_if_larger(module, layers, rank, stacklevel=4)
    return _frozen_like(module, layers), solution


# ---- savings --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FactorizationSavings:
    """What splitting one layer at ``rank`` ``k`` into two costs and saves.

    A Linear ``D -> M`` (a Conv2d: ``D = C_in * kh * kw`` inputs per output position, ``M =
    C_out``) does ``D * M`` multiply-adds per sample (per input row; per output position for a
    convolution) and holds ``D * M`` weights plus ``M`` biases; split, it does ``k * (D + M)``
    and holds ``k * (D + M) + M`` (the second layer always has a bias). ``max_rank`` is the
    largest ``k`` with strictly fewer of both, ``(D * M - M * (no bias) - 1) // (D + M)`` (0:
    no rank saves); with a bias that is Composer's multiply-add criterion ``k < D M / (D + M)``.
    Bias additions are not counted as multiply-adds (as ``FlopCounterMode`` does not)."""

    rank: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    max_rank: int

    @property
    def saves(self) -> bool:
        """Whether the split layers hold fewer parameters and do fewer multiply-adds."""
        return self.params_after < self.params_before and self.macs_after < self.macs_before


def _layer_widths(module: torch.nn.Module) -> tuple[int, int, bool]:
    """``(D, M, has_bias)`` of a Linear or Conv2d, ``D`` its fan-in per output value."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features, module.bias is not None
    if isinstance(module, torch.nn.Conv2d):
        if module.groups != 1:
            raise NotImplementedError(f"{module}: grouped convolutions (groups={module.groups}) are not "
                                      "factorized, so their savings are not defined")
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw, module.out_channels, module.bias is not None
    raise TypeError(f"expected an nn.Linear or nn.Conv2d, got {type(module).__name__}")


def _layer_rank(module: torch.nn.Module, rank: int | float) -> int:
    """``k`` for ``module`` from ``rank``: an int, or a fraction of the narrower of its widths
    (``in_features``/``out_features``; ``in_channels``/``out_channels``), as Composer reads it."""
    if isinstance(module, torch.nn.Conv2d):
        narrow = min(module.in_channels, module.out_channels)
    else:
        narrow = min(module.in_features, module.out_features)
    return _target_rank(rank, narrow, narrow)


def factorization_savings(module: torch.nn.Linear | torch.nn.Conv2d,
                          rank: int | float = 0.25) -> FactorizationSavings:
    """Parameters and multiply-adds per sample of ``module`` before and after a split at
    ``rank`` (see :class:`FactorizationSavings`), and the largest rank that saves both.

    ``rank < 1`` is a fraction of the narrower of the layer's widths (features of a Linear,
    channels of a Conv2d: one fraction fits every layer of a model), at least 1."""
    D, M, has_bias = _layer_widths(module)
    k = _layer_rank(module, rank)
    return FactorizationSavings(
        rank=k, params_before=D * M + M * has_bias, params_after=k * (D + M) + M,
        macs_before=D * M, macs_after=k * (D + M),
        max_rank=max(0, (D * M - M * (not has_bias) - 1) // (D + M)),
    )


# ---- whole models ---------------------------------------------------------------------------
@dataclasses.dataclass
class LayerFactorization:
    """One layer of a :class:`FactorizationReport`: its names (a module reached under several
    names is one layer), what it is, and what was done (``note`` says why it was skipped).
    ``rank`` is the split's (when skipped: the rank asked, or 0 if skipped before it mattered).

    ``macs_*`` are the multiply-adds of all of this layer's calls in the forward on ``X``
    (``calls_rows`` rows or output positions times the per-sample count of ``savings``);
    ``nmse`` is the error of the new layers' outputs against the original layer's outputs on
    its inputs in the original model on ``X`` (``sequential=True``: the new layers run on the
    inputs of the model split so far; ``None`` when skipped)."""

    names: tuple[str, ...]
    layer: str
    rank: int
    factorized: bool
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    nmse: float | None
    note: str
    savings: FactorizationSavings | None
    calls_rows: int


@dataclasses.dataclass
class FactorizationReport:
    """What :func:`factorize_model` did, one row per layer; ``str()`` prints it as a table.
    ``model`` is the factorized model (the one given, changed in place, unless a copy was
    asked for); the totals sum the rows (skipped layers count as unchanged)."""

    model: torch.nn.Module
    layers: list[LayerFactorization]
    model_params_before: int
    model_params_after: int

    @property
    def factorized(self) -> list[LayerFactorization]:
        return [row for row in self.layers if row.factorized]

    @property
    def params_before(self) -> int:
        return sum(row.params_before for row in self.layers)

    @property
    def params_after(self) -> int:
        return sum(row.params_after for row in self.layers)

    @property
    def macs_before(self) -> int:
        return sum(row.macs_before for row in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(row.macs_after for row in self.layers)

    def __str__(self) -> str:
        def ratio(after: int, before: int) -> str:
            return f"{after / before:.3f}" if before else "-"

        head = ("layer", "shape", "rank", "params", "params after", "MACs on X", "MACs after", "nmse", "note")
        body = [(", ".join(r.names), r.layer, str(r.rank) if r.factorized else "-", f"{r.params_before:,}",
                 f"{r.params_after:,}", f"{r.macs_before:,}", f"{r.macs_after:,}",
                 "-" if r.nmse is None else f"{r.nmse:.4g}", r.note) for r in self.layers]
        total = ("total", f"{len(self.factorized)} of {len(self.layers)} split", "",
                 f"{self.params_before:,}", f"{self.params_after:,}", f"{self.macs_before:,}",
                 f"{self.macs_after:,}", "",
                 f"params x{ratio(self.params_after, self.params_before)}, "
                 f"MACs x{ratio(self.macs_after, self.macs_before)}")
        rows = [head, *body, total]
        width = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
        lines = ["  ".join(row[i].ljust(w) if i < 2 else row[i].rjust(w) for i, w in enumerate(width))
                 + "  " + row[-1] for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines.append(f"model parameters {self.model_params_before:,} -> {self.model_params_after:,} "
                     f"(x{ratio(self.model_params_after, self.model_params_before)})")
        return "\n".join(line.rstrip() for line in lines)


_KINDS = (torch.nn.Linear, torch.nn.Conv2d)


def _describe(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        return f"Conv2d({module.in_channels} -> {module.out_channels}, {kh}x{kw})"
    return f"Linear({module.in_features} -> {module.out_features})"


def _describe_input(X: Any) -> str:
    if isinstance(X, torch.Tensor):
        return f"X {_shape(X)} {X.dtype} on {X.device}"
    if isinstance(X, dict):
        return "X {" + ", ".join(f"{k!r}: {_describe_input(v)[2:]}" for k, v in X.items()) + "}"
    if isinstance(X, (tuple, list)):
        return "X (" + ", ".join(_describe_input(v)[2:] for v in X) + ")"
    return f"X of type {type(X).__name__}"


def _check_kinds(kinds: Any) -> tuple[type, ...]:
    kinds = (kinds,) if isinstance(kinds, type) else tuple(kinds)
    unknown = [k for k in kinds if k not in _KINDS]
    if not kinds or unknown:
        raise ValueError(f"kinds must be some of (torch.nn.Linear, torch.nn.Conv2d); got {kinds!r}")
    return kinds


def _name_matcher(names: Any):
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        try:
            pattern = re.compile(names)
        except re.error as error:  # (re's own message names neither the argument nor the pattern)
            raise ValueError(f"names {names!r} is not a regular expression: {error}") from None
        return lambda name: pattern.search(name) is not None
    if callable(names):
        return names
    raise TypeError(f"names must be a regular expression (str), a callable name -> bool, or None; "
                    f"got {type(names).__name__}")


def _skip_reason(module: torch.nn.Module, names: tuple[str, ...], keep: Callable[[str], bool],
                 min_features: int, min_channels: int, shared_weight: list[str]) -> str:
    """Why ``module`` is not factorized before any data is seen ('' if it may be)."""
    base = torch.nn.Conv2d if isinstance(module, torch.nn.Conv2d) else torch.nn.Linear
    if type(module).forward is not base.forward:
        return f"its class {type(module).__name__} overrides forward"
    if not any(keep(name) for name in names):
        return "excluded by names"
    if shared_weight:
        return f"its weight is also {', '.join(shared_weight)}: a split would untie it"
    if isinstance(module, torch.nn.Conv2d):
        if module.groups != 1 or _pair(module.stride) != (1, 1) or _pair(module.dilation) != (1, 1):
            return (f"stride {module.stride}, dilation {module.dilation}, groups {module.groups}: only 1 "
                    "is factorized")
        if min(module.in_channels, module.out_channels) < min_channels:
            return f"fewer than min_channels={min_channels} channels"
    elif min(module.in_features, module.out_features) < min_features:
        return f"fewer than min_features={min_features} features"
    return ""


def _find_layers(model: torch.nn.Module, kinds: tuple[type, ...], keep: Callable[[str], bool],
                 min_features: int, min_channels: int):
    """The layers of ``kinds`` in ``model`` (by id: one module under several names is one
    layer), every name of each, and why each may not be split before any data is seen."""
    found: dict[int, torch.nn.Module] = {}
    all_names: dict[int, tuple[str, ...]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, kinds):
            found.setdefault(id(module), module)
            all_names[id(module)] = (*all_names.get(id(module), ()), name)
    parameter_names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        parameter_names.setdefault(id(p), []).append(name)
    reasons = {}
    for key, module in found.items():
        own = {f"{n}.weight" if n else "weight" for n in all_names[key]}
        shared = [n for n in parameter_names.get(id(module.weight), []) if n not in own]
        reasons[key] = _skip_reason(module, all_names[key], keep, min_features, min_channels, shared)
    return found, all_names, reasons


SEQUENTIAL_RIDGE = 1e-3
"""The ridge (:func:`_fit`) of a sequential fit: an already split model's inputs can have
directions it barely excites (a feature alive on one sample), which plain least squares fits to
that sample; on a held-out batch they then blow up (1000x the error, measured on a random deep
MLP). 1e-3 of the inputs' mean energy per feature costs ~1% of the fit error on its data."""


class _Captured(Exception):
    """Ends a forward pass early: the layer a sequential step fits has had all its calls."""


@dataclasses.dataclass
class _Pass:
    """What one forward pass saw: the inputs of the layers kept (all their calls), every
    layer's calls, input shapes and rows (output positions), and the order of first calls."""

    inputs: dict[int, list[torch.Tensor]]
    calls: dict[int, int]
    shapes: dict[int, list[torch.Size]]
    rows: dict[int, int]
    order: list[int]
    split_ran: bool = False  # whether a layer replaced by ``splits`` was called


def _run_capturing(model: torch.nn.Module, X: Any, layers: dict[int, torch.nn.Module], keep: set[int],
                   names: dict[int, tuple[str, ...]], *, splits: dict[int, torch.nn.Module] | None = None,
                   stop: tuple[int, int] | None = None) -> _Pass:
    """Run ``model`` on ``X`` (no grad, in eval mode), keeping the inputs of the layers in ``keep``
    (all their calls). ``splits`` stand in for their layers during the pass (the model itself is
    not changed); ``stop=(key, calls)`` ends the pass once layer ``key`` had ``calls`` inputs.
    A failing forward is re-raised naming ``X``'s shapes and the layer it failed in."""
    seen = _Pass({key: [] for key in keep}, dict.fromkeys(layers, 0), {key: [] for key in layers},
                 dict.fromkeys(layers, 0), [])
    splits = splits or {}
    running: list[tuple[int, str]] = []

    def before(module, args, kwargs):
        key, x = id(module), (args[0] if args else kwargs.get("input"))
        running.append((key, _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__))
        if not isinstance(x, torch.Tensor):
            return
        if not seen.calls[key]:
            seen.order.append(key)
        seen.calls[key] += 1
        seen.shapes[key].append(x.shape)
        seen.split_ran |= key in splits
        if key in keep:
            seen.inputs[key].append(x.detach())
        if stop == (key, seen.calls[key]):
            raise _Captured

    def after(module, args, kwargs, output):
        running.pop()
        width = module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features
        seen.rows[id(module)] += output.numel() // width if width else 0

    handles, replaced = [], []
    for module in layers.values():
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    modes = [(module, module.training) for module in model.modules()]
    model.eval()  # (no dropout in the inputs, no batch-norm statistics updated: no side effects)
    try:
        for key, new in splits.items():  # (an instance attribute: nn.Module.__call__ runs it, hooks too)
            replaced.append((layers[key], vars(layers[key]).get("forward")))
            object.__setattr__(layers[key], "forward", new)
        with torch.no_grad():
            if isinstance(X, dict):
                model(**X)
            elif isinstance(X, (tuple, list)):
                model(*X)
            else:
                model(X)
    except _Captured:
        pass
    except Exception as error:
        where = ""
        if running:
            key, shape = running[-1]
            where = f" in layer {names[key][0]!r} ({_describe(layers[key])}, its input {shape})"
        raise ValueError(f"model({_describe_input(X)}) failed{where}: "
                         f"{type(error).__name__}: {error}") from error
    finally:
        for module, forward in replaced:
            object.__delattr__(module, "forward")
            if forward is not None:
                object.__setattr__(module, "forward", forward)
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.train(training)
    return seen


def _sequential_data(model: torch.nn.Module, X: Any, found: dict[int, torch.nn.Module], key: int,
                     calls: int, names: dict[int, tuple[str, ...]],
                     split: dict[int, torch.nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, target)`` for layer ``key`` in a sequential fit: its inputs (all ``calls``) in
    ``model`` with the layers of ``split`` standing in, and the original layer's outputs on its
    inputs in the original model (a second pass, needed only when a split layer ran before it).
    Each pass stops at the layer's last call; only this layer's inputs are held."""
    module = found[key]
    seen = _run_capturing(model, X, found, {key}, names, splits=split, stop=(key, calls))
    new = seen.inputs.pop(key)
    old = _run_capturing(model, X, found, {key}, names, stop=(key, calls)).inputs.pop(key) \
        if seen.split_ran else new
    if [x.shape for x in new] != [x.shape for x in old]:
        raise ValueError(f"layer {names[key][0]!r} ({_describe(module)}) had inputs "
                         f"{[tuple(x.shape) for x in old]} in the original model but "
                         f"{[tuple(x.shape) for x in new]} once earlier layers were split: the model's "
                         "control flow depends on values; fit with sequential=False")
    with torch.no_grad():
        if isinstance(module, torch.nn.Conv2d):
            target = torch.cat([module(x if x.ndim == 4 else x[None]) for x in old])
            return torch.cat([x if x.ndim == 4 else x[None] for x in new]), target
        target = torch.cat([module(x).reshape(-1, module.out_features) for x in old])
        return torch.cat([x.reshape(-1, module.in_features) for x in new]), target


def _replace(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def _rough_seconds(module: torch.nn.Module, rows: int, forward: bool = False) -> float:
    """A rough time for one layer's fit (a QR of its inputs, then D x D solves), or for its part
    of a forward pass, only to decide whether to show a progress bar."""
    D, M, _ = _layer_widths(module) if not isinstance(module, torch.nn.Conv2d) or module.groups == 1 \
        else (module.weight[0].numel(), module.out_channels, True)
    rate = 5e13 if module.weight.device.type == "cuda" else 5e10
    return (2 * rows * D * M if forward else 2 * rows * D * (D + M) + 20 * D**3) / rate


def factorize_model(
    model: torch.nn.Module,
    X: Any,
    rank: int | float = 0.25,
    *,
    kinds: type | tuple[type, ...] = (torch.nn.Linear, torch.nn.Conv2d),
    names: str | Callable[[str], bool] | None = None,
    min_features: int = 0,
    min_channels: int = 0,
    n_iters: int = 3,
    inplace: bool = True,
    sequential: bool = False,
) -> FactorizationReport:
    """Split every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` whose split at ``rank`` saves
    parameters and multiply-adds into two thinner layers, each fitted to the layer's own inputs
    when ``model`` runs once on ``X`` (``model(X)``; ``model(*X)`` for a tuple or list,
    ``model(**X)`` for a dict).

    ``sequential=False`` (the default): every layer is fitted to its inputs in the original
    model, all from one forward pass, holding every such layer's inputs at once.
    ``sequential=True``: the layers are fitted in the order the forward pass first calls them,
    each to the inputs it gets once the layers before it are split, against the original
    layer's outputs on its original inputs (it learns to undo the error upstream as far as it
    can; a small ridge keeps it from fitting noise). Two passes per layer, each stopped at
    that layer, hold only its own inputs and target; the split layers stand in during the
    passes without the model being changed. Usually closer to the original model on ``X``
    (68 of 79 random MLPs, the rest within 0.2%), less often on other inputs: on MiniLM's
    held-out text it lost when fitted to 64 sequences and won when fitted to 256
    (docs/factorization.md). Passes run in eval mode (no dropout; batch norm on its running
    statistics, left as they were); every module's mode is restored after, and the new layers
    take the replaced one's. The layers are replaced in ``model`` itself, or in a deep copy with
    ``inplace=False``; a module reached under several names is split once and stays shared.
    Skipped, with the reason in the report: layers whose split would not save
    (:func:`factorization_savings`), narrower than ``min_features`` (Linear) or ``min_channels``
    (Conv2d) on either side, none of whose names matches ``names`` (a regular expression
    searched in the qualified name, or a predicate), not called on ``X``, whose weight is shared
    with another module, convolutions with stride, dilation or groups other than 1, and
    subclasses that override ``forward``.

    ``rank``: an int, or a fraction of each layer's narrower width (features or channels).
    ``kinds``: ``nn.Linear``, ``nn.Conv2d`` or both. Raises ``ValueError`` when no layer of
    ``kinds`` is eligible, and, naming ``X``'s shapes and the layer, when ``model(X)`` fails
    (or, sequentially, when a layer's inputs change shape once earlier layers are split)."""
    kinds = _check_kinds(kinds)
    n_iters = _count(n_iters, "n_iters")
    _target_rank(rank, 1 << 62, 1 << 62)  # an invalid rank is named before any work
    keep = _name_matcher(names)
    min_features, min_channels = _count(min_features, "min_features"), _count(min_channels, "min_channels")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    lazy = next((name for name, p in model.named_parameters() if torch.nn.parameter.is_lazy(p)), None)
    if lazy is not None:  # (its numel, its shape and the layers' widths are not known yet)
        raise ValueError(f"model's parameter {lazy!r} is not initialized (a lazy module, such as "
                         "nn.LazyLinear): run model on an input once to initialize it, then factorize")
    if not inplace:
        model = copy.deepcopy(model)
    params_before = sum(p.numel() for p in model.parameters())

    found, all_names, reasons = _find_layers(model, kinds, keep, min_features, min_channels)
    if not found or all(reasons.values()):
        kinds_text = " or ".join(k.__name__ for k in kinds)
        why = "; ".join(f"{all_names[k][0]!r}: {reasons[k]}" for k in list(found)[:8])
        raise ValueError(f"no {kinds_text} layer of {type(model).__name__} can be factorized"
                         + (f" ({why})" if why else ": it has none"))

    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be a bool, got {type(sequential).__name__}")
    # (sequential: this first pass only counts the calls; each layer's inputs come in its own)
    first = _run_capturing(model, X, found, set() if sequential else {k for k in found if not reasons[k]},
                           all_names)
    inputs, rows = first.inputs, first.rows
    report_rows: dict[int, LayerFactorization] = {}
    todo = []
    for key, module in found.items():
        savings = None
        note = reasons[key]
        if not note:
            savings = factorization_savings(module, rank)
            if not first.calls[key]:
                note = "not called by the model on X"
            elif not savings.saves:
                note = (f"rank {savings.rank} would not save (params {savings.params_before} -> "
                        f"{savings.params_after}); the largest that does is {savings.max_rank}"
                        if savings.max_rank else "no rank saves")
            elif isinstance(module, torch.nn.Conv2d) and len({s[-3:] for s in first.shapes[key]}) > 1:
                note = "called on inputs of different sizes"
        params = sum(p.numel() for p in module.parameters())
        macs = module.weight.numel() * rows[key]  # (per row or position: grouped convolutions too)
        report_rows[key] = LayerFactorization(
            all_names[key], _describe(module), savings.rank if savings else 0, False, params, params,
            macs, macs, None, note, savings, rows[key])
        if not note:
            todo.append(key)
    todo.sort(key=first.order.index)  # in the order the forward pass calls them

    seconds = sum(_rough_seconds(found[key], rows[key]) for key in todo)
    if sequential:  # two passes up to each layer: about as many forwards as layers
        seconds += len(todo) * sum(_rough_seconds(found[key], rows[key], forward=True) for key in found)
    split: dict[int, torch.nn.Sequential] = {}  # (the model is changed only once all are fitted)
    for key in progress.blocks(todo, total=len(todo), desc="lazymat factorize", estimate_seconds=seconds,
                               unit="layer"):
        module, row = found[key], report_rows[key]
        conv = isinstance(module, torch.nn.Conv2d)
        if sequential:
            x, target = _sequential_data(model, X, found, key, first.calls[key], all_names, split)
        elif conv:
            x, target = torch.cat([x if x.ndim == 4 else x[None] for x in inputs.pop(key)]), None
        else:
            x, target = torch.cat([x.reshape(-1, module.in_features) for x in inputs.pop(key)]), None
        try:
            split[key], solution = (_split_conv2d if conv else _split_linear)(
                module, x, row.rank, n_iters, target, SEQUENTIAL_RIDGE if sequential else 0.0)
        except (ValueError, TypeError) as error:  # (NonFiniteError too) named with the layer
            raise type(error)(f"layer {row.names[0]!r} ({row.layer}): {error}") from error
        row.factorized, row.nmse = True, solution.nmse
        row.params_after = sum(p.numel() for p in split[key].parameters())
        row.macs_after = row.savings.macs_after * row.calls_rows
    for key, new in split.items():
        for name in all_names[key]:
            if name:
                _replace(model, name, new)
            else:
                model = new  # the model is itself the layer
    return FactorizationReport(model, list(report_rows.values()), params_before,
                               sum(p.numel() for p in model.parameters()))
