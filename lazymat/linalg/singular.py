"""The calls read off the nonzero singular triplets: svd, svdvals, matrix_rank, pinv, cond,
truncate and make_even."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..expr import Expr, as_expr, lazy
from . import compiled, spectrum
from ._common import _inner_width, _int_arg, _needs_grad, _real, _square, _work_dtype
from .blocks import _after_spectrum_fits, _result_bytes
from .calls import budgeted, reads_through_casts
from .small import _pinv_is_dense, dense_is_cheaper
from .spectrum import (
    _SVD,
    _call_spectrum,
    _kept,
    _keyable,
    _leading,
    _may_hold_nan,
    _owned,
    _pad,
    _pinv_of,
    _spectrum,
    _truncated,
)


@budgeted
@reads_through_casts
def svd(x: Any, full_matrices: bool = False) -> torch.return_types.linalg_svd:
    """Reduced SVD ``X = U @ diag(S) @ Vh`` of the nonzero singular triplets, as torch's named
    tuple (``.U``, ``.S``, ``.Vh``).

    Like ``torch.linalg.svd(X, full_matrices=False)`` but returns only the ``k`` triplets
    whose singular value is above ``matrix_rank``'s default tolerance (``k`` the largest rank
    in the batch; a member of lower rank has exact zeros in ``S`` past its rank). The other
    ``min(m, n) - k`` singular values are zero to the stated tolerance. ``U: (..., m, k)``,
    ``S: (..., k)`` descending, ``Vh: (..., k, n)``."""
    out = None if full_matrices else compiled._compiled(x, "svd", ())
    if out is not None:
        return out
    x = as_expr(x)
    if full_matrices:
        raise NotImplementedError(
            f"full_matrices=True would build a {x.shape[-2]}x{x.shape[-2]} basis; lazymat "
            "returns the reduced SVD (pass full_matrices=False)"
        )
    U, S, Vh = _truncated(x)
    return _SVD((_owned(U, x.dtype), _owned(S, _real(x.dtype)), _owned(Vh, x.dtype)))


@budgeted
@reads_through_casts
def svdvals(x: Any, full: bool = False) -> torch.Tensor:
    """The nonzero singular values, descending, shape ``(..., k)`` as for :func:`svd`;
    ``full=True`` pads with zeros to ``(..., min(m, n))`` like ``torch.linalg.svdvals``."""
    out = compiled._compiled(x, "svdvals", (full,))
    if out is not None:
        return out
    x = as_expr(x)
    sp, grad = _call_spectrum(x, values_only=True)
    S = _leading(x, sp, _kept(x, sp), True, grad)[1]
    real = _real(x.dtype)
    if full and S.shape[-1] < min(x.shape[-2:]):
        S = _pad(S, min(x.shape[-2:]), keep_nan=_may_hold_nan(sp, S.shape[-1]))
        return S if S.dtype == real else S.to(real)
    return _owned(S, real)


def _extreme(values: torch.Tensor, largest: bool, x: Expr, ord: Any) -> torch.Tensor:
    """Max or min over the last dim; over no values the max is 0 and the min an IndexError,
    as ``torch.linalg.matrix_norm`` does on empty matrices (in an empty batch too: torch's
    ``amin`` raises over an empty dim whatever the other dims). The zeros are a sum over no
    values, so they stay in the autograd graph (the zero matrix's norm, its values all cut)."""
    if values.shape[-1] == 0:
        if largest:
            return values.sum(-1)
        raise IndexError(f"matrix_norm(ord={ord}) of the empty matrices of shape {tuple(x.shape)}: "
                         "the minimum over no values is undefined (torch raises too)")
    return values.amax(-1) if largest else values.amin(-1)


@budgeted
@reads_through_casts
def cond(x: Any, p: Any = None) -> torch.Tensor:
    """2-norm condition number ``S_max / S_min`` like ``torch.linalg.cond`` (p None, 2, -2).

    Singular values below the core's rounding floor count as zero, so a rank-deficient
    ``X`` gives inf (torch: a huge finite number from rounding noise) and the zero matrix
    NaN (0/0, as torch); an empty matrix gives 0 like torch.

    Gradients are torch's for a matrix whose smallest singular value is exactly zero: NaN
    for ``p`` None or 2 at a rank-deficient ``X`` (its condition number is infinite; torch's
    huge finite gradient there comes from the rounding noise in its smallest value), and for
    ``p=-2`` a finite one, with 0 for the zero singular values (``sigma_min`` has a kink
    there, like ``abs`` at 0; torch takes the derivative of one side for its last
    triplet)."""
    if p is None or type(p) is int and p in (2, -2):
        out = compiled._compiled(x, "cond", (p == -2,))
        if out is not None:
            return out
    x = as_expr(x)
    if p not in (None, 2, -2):
        raise NotImplementedError(f"cond with p={p!r}: lazymat supports p=None, 2, -2")
    real = _real(x.dtype)
    if min(x.shape[-2:]) == 0:
        return torch.zeros(x.shape[:-2], dtype=real, device=x.device)
    sp, grad = _call_spectrum(x, values_only=True)  # differentiable as torch's (_leading)
    S = _leading(x, sp, _kept(x, sp, atol=0.0, rtol=0.0), True, grad)[1]
    if _needs_grad(x):
        S = _pad(S, min(x.shape[-2:]), False) + _zero_linked(x)[..., None]
        ratio = S.amin(-1) / S.amax(-1) if p == -2 else S.amax(-1) / S.amin(-1)
    elif S.shape[-1] < min(x.shape[-2:]):  # exact zeros past the kept values: the least is 0, no
        # padded copy of the values formed to find it (the budget counts none)
        top = S.amax(-1) if S.shape[-1] else S.new_zeros(S.shape[:-1])
        ratio = torch.zeros_like(top).div_(top) if p == -2 else top.div_(0.0)
    else:  # divided in place: one extreme beside the answer (the budget counts no more)
        ratio = S.amin(-1).div_(S.amax(-1)) if p == -2 else S.amax(-1).div_(S.amin(-1))
    return ratio.to(real)


def _zero_linked(x: Expr) -> torch.Tensor:
    """Zeros of shape ``x.shape[:-2]`` whose gradient to each member's leaves is 0 times the
    incoming one: the singular values cut or padded as exact zeros are constants, so a
    non-finite gradient at them (``cond`` at a zero singular value: NaN, as torch answers)
    was dropped and the zero matrix got gradient 0. Added to the values, it carries that NaN
    to the member's leaves and leaves finite gradients unchanged (a product with ones)."""
    from .. import reduce  # reduce builds on linalg: imported on use

    total = reduce.sum(x, dim=(-2, -1))
    total = total.real if total.is_complex() else total
    return torch.where(total.isfinite(), total, 0) * 0


def _tolerance_front(x: Any, op: str, atol: Any, rtol: Any, tol: Any,
                     hermitian: bool) -> tuple[Any, Any, Any]:
    """The front of ``matrix_rank`` and ``pinv``: ``hermitian`` needs a square matrix (torch reads
    one triangle), torch's tolerance arguments read (:func:`_tolerance_args`), and the answer of
    the structure's compiled call when there is one: ``(atol, rtol, answer or None)``."""
    if hermitian:
        _square(as_expr(x), f"{op}(hermitian=True)")
    atol, rtol = _tolerance_args(atol, rtol, tol, op)
    out = compiled._compiled(x, op, (atol, rtol)) if _keyable(atol) and _keyable(rtol) else None
    return atol, rtol, out


def _tolerance_args(atol: Any, rtol: Any, tol: Any, what: str) -> tuple[Any, Any]:
    """torch's legacy positional ``tol``/``rcond`` means ``atol=tol, rtol=0`` for
    ``matrix_rank`` and ``rtol=rcond`` for ``pinv``."""
    if tol is None:
        return atol, rtol
    if atol is not None or rtol is not None:
        raise TypeError(f"{what}: pass either the legacy positional tolerance or atol/rtol, "
                        "not both")
    return (tol, 0.0) if what == "matrix_rank" else (None, tol)


@budgeted
@reads_through_casts
def matrix_rank(x: Any, tol: Any = None, hermitian: bool = False, *, atol: Any = None,
                rtol: Any = None) -> torch.Tensor:
    """Numerical rank with ``torch.linalg.matrix_rank``'s tolerance rule (see
    :func:`_tolerance`): the singular values above ``max(atol, rtol * S_max)``, and above
    the core's rounding floor. ``hermitian`` is accepted for torch compatibility: the matrix
    must then be square, as torch's, and all of it is read (torch reads one triangle).

    A member with an inf or NaN entry has NaN singular values and no rank: the call raises
    :class:`NonFiniteError` (a ``torch.linalg.LinAlgError``, as torch raises for a NaN entry;
    torch's 0 for an inf entry is its NaN values compared with a tolerance)."""
    atol, rtol, out = _tolerance_front(x, "matrix_rank", atol, rtol, tol, hermitian)
    if out is not None:
        return out
    x = as_expr(x)
    sp = spectrum._small_spectrum(x, True) or _spectrum(x, values_only=True)
    k, keep = _kept(x, sp, atol, rtol, rank=True)
    if keep is None:  # every member keeps k
        return torch.full(x.shape[:-2], k, dtype=torch.int64, device=x.device)
    return keep.sum(-1)


@budgeted
@reads_through_casts
def pinv(x: Any, rcond: Any = None, hermitian: bool = False, *, atol: Any = None,
         rtol: Any = None) -> Expr | torch.Tensor:
    """Pseudo-inverse as a lazy product ``(V S^-1) @ U^H`` of shape ``(..., n, m)``, from the
    singular values kept by ``torch.linalg.pinv``'s rule (as :func:`matrix_rank`); a tensor,
    as torch's, when the ``n x m`` matrix holds no more numbers than those two factors at the
    largest rank its shapes allow (a small matrix, or one of full inner width). A member
    with an inf or NaN entry is NaN throughout (its NaN triplets are kept, as by :func:`svd`;
    torch on the CPU answers 0 for an inf entry: its NaN values fail the tolerance test)."""
    atol, rtol, out = _tolerance_front(x, "pinv", atol, rtol, rcond, hermitian)
    if out is not None:
        return out
    x = as_expr(x)
    _pinv_fits(x)
    sp, grad = _call_spectrum(x, values_only=False)
    kept = _kept(x, sp, atol, rtol)
    # inf past a member's rank (1 / inf = 0): every other value is above a tolerance >= 0 (or NaN)
    U, S, Vh = _leading(x, sp, kept, grad=grad, fill=math.inf)
    return _pinv_of(U, S, Vh, x.dtype, _pinv_is_dense(x), False)


def _pinv_bytes(x: Expr) -> int:
    """Bytes :func:`pinv` holds once its spectrum is complete, its answer excluded (the
    caller's): the spectrum (:func:`_result_bytes`), the values set past a member's rank with
    their mask (counted whether or not the data asks for them: ``k + 1`` numbers a member), and
    beside them what :func:`_pinv_of` forms: the scaled side ``U / S`` of a dense answer, or the
    reciprocals of a lazy one, and the answer in the work dtype before its cast."""
    b, m, n = math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1]
    wd = _work_dtype(x.dtype)
    real = _real(wd).itemsize
    k = min(m, n) if dense_is_cheaper(x, "svd") else min(m, n, _inner_width(x))
    zeroed = b * k * (real + 1)  # _leading's torch.where, and _kept's mask
    if _pinv_is_dense(x):
        formed = b * m * k * wd.itemsize + (b * n * m * wd.itemsize if wd != x.dtype else 0)
    else:
        formed = b * k * real + (b * n * k * wd.itemsize if wd != x.dtype else 0)
    return _result_bytes(x, "svd") + zeroed + formed


def _pinv_fits(x: Expr) -> None:
    """Raise :class:`~lazymat.settings.BudgetTooSmall` before anything runs when what
    :func:`pinv` holds after its spectrum (:func:`_pinv_bytes`) exceeds the active budget."""
    _after_spectrum_fits(x, lambda: _pinv_bytes(x), "pinv", "the spectrum beside the answer's factors")


@budgeted
@reads_through_casts
def truncate(x: Any, k: int) -> Expr:
    """Best rank-``k`` approximation as a lazy product ``(U_k S_k^1/2) @ (S_k^1/2 Vh_k)``
    (all of ``X``'s nonzero triplets when ``k`` exceeds their number)."""
    x = as_expr(x)
    k = _int_arg(k, "truncate: k")
    if k < 0:
        raise ValueError(f"truncate: k must be >= 0, got {k}")
    U, S, Vh = svd(x)
    k = min(k, S.shape[-1])
    root = S[..., :k].sqrt().to(x.dtype)
    return lazy(U[..., :k] * root[..., None, :]) @ lazy(root[..., :, None] * Vh[..., :k, :])


@budgeted
@reads_through_casts
def make_even(x: Any) -> Expr:
    """The same matrix with factors ``U S^1/2`` and ``S^1/2 Vh`` (balanced singular values)."""
    x = as_expr(x)
    return truncate(x, min(x.shape[-2:]))
