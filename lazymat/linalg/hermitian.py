"""Hermitian eigenvalues (eigvalsh, eigh) from the nonzero singular triplets and the signs
read off the core."""
from __future__ import annotations

import math
from typing import Any

import torch

from .. import settings
from ..expr import Expr, as_expr
from . import spectrum
from ._common import _cached, _inner_width, _real, _small, _square, _work_dtype
from .blocks import _after_spectrum_fits, _in_blocks, _kept_qr_bytes, _result_bytes
from .calls import budgeted, reads_through_casts
from .spectrum import _EIGH, _eps, _nan_members, _truncated, _zero_members


# A Hermitian ``X = U S Vh`` (its nonzero triplets) is ``U C U^H`` with the ``k x k`` core
# ``C = U^H X U = S Vh U``: its eigenvalues are ``C``'s and zeros, its eigenvectors ``U W``
# (orthonormal, as ``eigh``'s) for ``C = W diag(w) W^H``. Nothing is read off one triangle as
# torch does; ``X`` is checked Hermitian instead, from the same triplets and without
# cancellation: with ``V = U P + V_out`` (``P = U^H V``, ``V_out`` orthogonal to ``U``),
# ``||X - X^H||_F^2 = ||C - C^H||_F^2 + 2 ||V_out S||_F^2``.
def _hermitian_core(x: Expr) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(U, C, bad)``: the basis, the Hermitian core (``(C + C^H) / 2``) and the members with
    non-finite input (None when none); ValueError when ``X`` is not Hermitian to within the
    square root of its dtype's unit roundoff, relative to its largest singular value."""
    U, S, Vh = _truncated(x, pull=False)  # C's second order comes through U and Vh
    bad = spectrum._nonfinite_members(S[..., None])  # (their core is zeroed for the solver, not U, S, Vh:
    S = S.to(U.dtype)                       # copies of those were held beside the spectrum, uncounted)
    VhU = Vh @ U
    C = S[..., :, None] * VhU  # no (k, n) temporary: rows scaled after the product
    with torch.no_grad():
        asymmetry = (torch.linalg.matrix_norm(C.detach() - C.detach().mH) ** 2
                     + 2 * _outside_squares(x, U.detach(), S.detach(), Vh.detach(), VhU.detach())).sqrt()
    largest = S.real[..., 0] if S.shape[-1] else torch.zeros(S.shape[:-1], dtype=asymmetry.dtype)
    tolerance = math.sqrt(_eps(x.dtype))
    over = asymmetry > tolerance * largest  # (False for a NaN member: it answers NaN)
    if bool(over.any()):
        at = tuple(over.nonzero()[0].tolist())
        ratio = (asymmetry[at] / largest[at]).item()
        member = f" (batch member {at})" if at else ""
        raise ValueError(f"eigvalsh/eigh need a Hermitian matrix: the {tuple(x.shape)} expression has "
                         f"||X - X^H||_F / ||X||_2 = {ratio:.3g}{member}, above the tolerance "
                         f"{tolerance:.2g}; (X + X.mH) / 2 is its Hermitian part")
    return U, _zero_members((C + C.mH) / 2, bad), bad


def _outside_squares(x: Expr, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor,
                     VhU: torch.Tensor) -> torch.Tensor:
    """``||(V - U U^H V) S||_F^2`` per batch member (``VhU = Vh @ U``): one ``(n, k)``
    temporary a member, made in place, for as many members at a time as fit the budget beside
    the triplets already held (:func:`_in_blocks`, one member a block where none fits): the whole
    batch's would hold half as much again as ``U`` and ``Vh``. No conjugated copy of ``U`` or
    ``Vh`` (the temporary is conjugated instead, which keeps its norm; S is real), no ``|.|``
    temporary (a complex value's norm is read off its real view)."""
    batch, n, k = U.shape[:-2], U.shape[-2], U.shape[-1]
    if not math.prod(batch):  # an empty batch
        return torch.zeros(batch, dtype=_real(U.dtype), device=U.device)
    real = _real(U.dtype).itemsize
    held = (sum(map(_storage_bytes, (U, S, Vh)))  # and the cores Vh U, C and ||C - C^H||^2
            + 2 * math.prod(batch) * k * k * U.element_size() + math.prod(batch) * real
            + _kept_qr_bytes(x))  # (and the shared leaves' QRs the SVD kept)
    member = (n * k + (k * k if U.is_complex() else 0)) * U.element_size() + 2 * real  # (resolve_conj, norm)

    def costs(shape: tuple) -> tuple[int, int]:  # a block's temporaries beside what is held
        return held + math.prod(shape) * member, math.prod(shape) * n * k * (2 * k + 3)

    def squares(_: Expr, key: tuple | None) -> torch.Tensor:
        u, s, vh, vhu = (U, S, Vh, VhU) if key is None else (U[key], S[key], Vh[key], VhU[key])
        outside = u @ vhu.mH.resolve_conj()  # U P, P = U^H V; conjugated in place: vh.mT read without a copy
        outside.conj_physical_().sub_(vh.mT).mul_(s[..., None, :])
        real = torch.view_as_real(outside) if outside.is_complex() else outside[..., None]
        return torch.linalg.vector_norm(real, dim=(-3, -2, -1)) ** 2

    return _in_blocks(x, "hermitian check", squares, costs=costs) if batch else squares(x, None)


def _storage_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t``'s storage (a view holds all of it); a torch.func wrapper, which has none to
    read, counts its own elements."""
    try:
        return t.untyped_storage().nbytes()
    except NotImplementedError:  # "Cannot access storage of TensorWrapper"
        return t.numel() * t.element_size()


def _hermitian_after_bytes(x: Expr, vectors: bool, full: bool) -> int:
    """Bytes eigvalsh/eigh hold beside the spectrum once their SVD is done (its blocks' work is
    freed by then: the SVD's peak and these are never held together), at most: ``S`` cast to
    ``U``'s dtype (complex) and the largest of the check's (``Vh U``, ``C`` and ``C - C^H`` or one
    member's ``(n, k)`` temporary of :func:`_outside_squares` with the norms), the symmetrised
    core's (``Vh U``, ``C``, ``C + C^H`` and its half), the solver's (the core, values, and for
    eigh ``W`` and ``U W``; twice where :func:`lazymat.cpu_batches.split_batch` joins thread
    parts) and ``full=True``'s (the values, the padded answer and its scatter index), with the
    answer's cast to ``X``'s dtype. ``k`` is the rank bound: the triplets kept are at most it."""
    b, n = math.prod(x.shape[:-2]), x.shape[-1]
    k = min(n, _inner_width(x))
    wd = _work_dtype(x.dtype)
    w, real = wd.itemsize, _real(wd).itemsize
    joined = 2 if torch.get_num_threads() > 1 and b > 1 else 1
    core = b * k * k * w  # the check: C - C^H and its norm; one member's temporary, its norm, beside
    member = (n * k + (k * k if wd.is_complex else 0)) * w + 2 * real  # ||C - C^H||^2 and the result; the sum
    check = 2 * core + max(core + 2 * b * real, 2 * b * real + member, 5 * b * real)
    # (and the values' NaN copy for members with non-finite input)
    solver = (core + joined * (b * k * real + (core if vectors else 0)) + (b * n * k * w if vectors else 0)
              + b * k * real)
    padded = b * k * real + b * n * real + b * k * 9 if full else 0
    cast = (b * n * k * x.dtype.itemsize if vectors else b * (n if full else k) * _real(x.dtype).itemsize
            ) if x.dtype != wd else 0
    symmetrised = 4 * core + b * real + b + 1  # beside the asymmetries and their test (and its any())
    return (b * k * w if wd.is_complex else 0) + max(check, symmetrised, solver, padded + cast)


def _hermitian_fits(x: Expr, vectors: bool, full: bool) -> None:
    """Raise :class:`BudgetTooSmall` before anything runs when the spectrum eigvalsh/eigh
    decompose (:func:`_result_bytes`) and what they hold beside it after the SVD
    (:func:`_hermitian_after_bytes`) exceed the active budget, naming the least budget under
    which both the SVD (in blocks) and the steps after it run: the SVD's peak and theirs are
    held one after the other (:func:`_after_spectrum_fits`)."""
    if settings.get("memory_budget") is not None:
        _after_spectrum_fits(x, lambda: _result_bytes(x, "svd") + _kept_qr_bytes(x)
                             + _hermitian_after_bytes(x, vectors, full),
                             "eigh" if vectors else "eigvalsh",
                             "its spectrum beside the Hermitian steps after the SVD")


def _hermitian_eigen(x: Expr, vectors: bool, full: bool = False) -> tuple[torch.Tensor, ...]:
    """Ascending eigenvalues of the nonzero triplets' core (and the eigenvectors ``U W``)."""
    _hermitian_fits(x, vectors, full)
    U, C, bad = _hermitian_core(x)
    if not vectors:
        return (_nan_members(_small(torch.linalg.eigvalsh, C, "eig"), bad, 1),)
    w, W = _small(torch.linalg.eigh, C, "eig")
    UW = U @ W
    if bad is not None:  # in place: U W is ours (the product's backward reads U and W, not it)
        UW.masked_fill_(bad[..., None, None], complex("nan+nanj") if UW.is_complex() else math.nan)
    return _nan_members(w, bad, 1), *spectrum.first_order_only(UW)


def _uplo(UPLO: Any, what: str) -> None:
    if UPLO not in ("L", "U"):
        raise ValueError(f"{what}: UPLO must be 'L' or 'U' (as torch), got {UPLO!r}")


@budgeted
@reads_through_casts
def eigvalsh(x: Any, UPLO: str = "L", *, full: bool = False) -> torch.Tensor:  # noqa: N803 - torch's name
    """Eigenvalues of a Hermitian ``X`` in ascending order, real, like ``torch.linalg.eigvalsh``:
    the ``k`` of its nonzero singular triplets (:func:`svd`), or with ``full=True`` all ``n``
    (the zeros in their place). ``X`` must be Hermitian (checked, see :func:`_hermitian_core`);
    torch reads one triangle instead, so ``UPLO`` only is checked to be ``'L'`` or ``'U'``."""
    x = as_expr(x)
    _square(x, "eigvalsh")
    _uplo(UPLO, "eigvalsh")
    w = _cached(x, "eigvalsh", lambda: _hermitian_eigen(x, vectors=False, full=full)[0])
    return (_zeros_in_place(w, x.shape[-1]) if full else w).to(_real(x.dtype))


def _zeros_in_place(w: torch.Tensor, n: int) -> torch.Tensor:
    """Ascending ``w (..., k)`` with ``n - k`` zeros in their place, ascending, in one new
    ``(..., n)`` tensor (padding then sorting held three); a NaN member stays NaN throughout."""
    k = w.shape[-1]
    if k >= n:
        return w
    at = torch.arange(k, device=w.device) + (w >= 0) * (n - k)  # negatives first, the rest after the zeros
    out = w.new_zeros((*w.shape[:-1], n)).scatter_(-1, at, w)
    return out.masked_fill_(w[..., :1].isnan(), float("nan")) if k else out


@budgeted
@reads_through_casts
def eigh(x: Any, UPLO: str = "L") -> torch.return_types.linalg_eigh:  # noqa: N803 - torch's name
    """Eigenpairs ``(w (..., k), Q (..., n, k))`` (torch's named tuple: ``.eigenvalues``,
    ``.eigenvectors``) of a Hermitian ``X``, ascending, like
    ``torch.linalg.eigh``: ``X = Q diag(w) Q^H`` with orthonormal columns, for the ``k``
    nonzero singular triplets; the other ``n - k`` pairs (eigenvalue 0) span the null space,
    which lazymat never builds. ``X`` must be Hermitian (checked, as :func:`eigvalsh`)."""
    x = as_expr(x)
    _square(x, "eigh")
    _uplo(UPLO, "eigh")
    w, Q = _cached(x, "eigh", lambda: _hermitian_eigen(x, vectors=True))
    return _EIGH((w.to(_real(x.dtype)), Q.to(x.dtype)))
