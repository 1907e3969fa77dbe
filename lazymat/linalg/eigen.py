"""Eigenvalues: of a single product from its ``R L`` core, planned as one product; ``eig``, and
``eigvals`` of a sum, from the nonzero triplets' ``k x k`` core ``S Vh U``."""
from __future__ import annotations

import math
from typing import Any

import torch

from .. import settings
from ..core import factor, is_identity
from ..execute import _Memo, device_budget, fits, run_canon
from ..expr import Expr, as_expr
from ..plan import plan_canon, plan_sharing
from ..product_cache import not_kept
from ..rewrite import Canon, Term, canonical
from ..settings import BudgetTooSmall, blas_workspace
from . import compiled, spectrum
from ._common import _cached, _complex, _form, _inner_width, _real, _square, _work_dtype, eig_core
from .blocks import _in_blocks, _less_budget, _result_bytes
from .calls import budgeted, reads_through_casts
from .small import _ROUTES, _remember
from .spectrum import _EIG, _core_eigen, _nan_members, _pad, _truncated, _zero_members


def _eigen(x: Expr, vectors: bool, full: bool = False):
    """Eigenvalues (and vectors) of a square ``X``.

    - A single term that is its own core goes to ``torch.linalg.eig`` whole.
    - The eigenvalues of a single product are those of the ``r x r`` core ``R @ L`` (planned as
      one product, so shared work across a batch is found); a product cannot cancel.
    - A sum, or when vectors are asked for: ``X`` is replaced by its nonzero triplets,
      ``X = U S Vh``. The eigenvalues of the ``k x k`` core ``S Vh U`` are ``X``'s nonzero ones
      (plus zeros when ``X`` is not diagonalisable on its range), and ``U w`` is an
      eigenvector of ``X`` for every core eigenpair ``(lambda, w)``, the zero eigenvalues
      included (``X U w = U (S Vh U w) = 0``), never rounding noise. Exact cancellation
      leaves no triplets, hence no eigenvalues."""
    wd = _work_dtype(x.dtype)
    if settings.get("memory_budget") is not None and len(canonical(x).terms) == 1 and (
            not vectors or any(map(is_identity, factor(x)))):
        return _core_in_blocks(x, vectors, full)
    core = None if vectors else _rotated_core(x)
    if core is None:
        L, R = factor(x)
        single = len(canonical(x).terms) == 1
        if single and (not vectors or is_identity(L) or is_identity(R)):
            core = eig_core(x).to_dense()
    if core is not None:
        core = core.to(wd)
        bad = spectrum._nonfinite_members(core)
        return _nan_eigen(_core_eigen(_zero_members(core, bad), vectors), bad)
    U, S, Vh = _truncated_beside(x, "eig" if vectors else "eigvals full" if full else "eigvals")
    bad = spectrum._nonfinite_members(S[..., None])  # a member with non-finite input has NaN triplets
    U, S, Vh = _zero_members(U, bad), _zero_members(S[..., None], bad)[..., 0], _zero_members(Vh, bad)
    core = (S.to(U.dtype)[..., :, None] * Vh) @ U
    if not vectors:
        return _nan_eigen(_core_eigen(core, False), bad)
    vals, W = _core_eigen(core, True)
    return _nan_eigen((vals, *spectrum.first_order_only(U.to(W.dtype) @ W)), bad)


def _solver_bytes(members: int, r: int, dtype: torch.dtype) -> int:
    """Bytes ``torch.linalg.eigvals`` (or ``eig``) of ``members`` ``r x r`` cores of ``dtype``
    allocates: ``linalg_eig``'s values and vectors (complex; the vectors for eigvals too), twice
    over where :func:`lazymat.cpu_batches.split_batch` runs them on threads and joins the parts."""
    c = _complex(dtype).itemsize
    joined = 2 if torch.get_num_threads() > 1 and members > 1 else 1
    return joined * members * r * (r + 1) * c


def _core_in_blocks(x: Expr, vectors: bool, full: bool) -> tuple[torch.Tensor, ...]:
    """Eigenvalues (and, for a matrix that is its own core, vectors) of a single product under
    a memory budget: the ``r x r`` cores (:func:`eig_core`) formed and solved as many members a
    block as fit, each block's peak its core's unsliced work, its cores, the solver's output
    (:func:`_solver_bytes`) and the sort's values, indices and gathered vectors, beside the
    batch's answer (``full``: padded to ``n``); :class:`BudgetTooSmall` names one member's."""
    wd = _work_dtype(x.dtype)
    batch = tuple(x.shape[:-2])
    r = eig_core(x[tuple(0 for _ in batch)] if batch else x).shape[-1]
    core_work: dict[tuple, int] = {}

    def costs(shape: tuple) -> tuple[int, int]:
        m = math.prod(shape)
        if shape not in core_work:
            core = eig_core(x[tuple(slice(0, c) for c in shape)])
            core_work[shape] = plan_canon(canonical(core)).work_bytes
        real, c = _real(wd).itemsize, _complex(wd).itemsize  # the sort: |values|, values, indices, gathered
        sort = m * r * (2 * c + 2 * real + 8) + (2 * m * r * r * c if vectors else 0)
        held = m * r * r * wd.itemsize + max(_solver_bytes(m, r, wd), sort)
        return core_work[shape] + held, m * 10 * r ** 3

    def compute(block: Expr, _: tuple | None) -> tuple[torch.Tensor, ...]:
        with not_kept():  # a span kept on the leaves would outlive the block that counted it
            core = eig_core(block).to_dense(memory_budget=2**62).to(wd)  # its work is in costs
        bad = spectrum._nonfinite_members(core)
        return _nan_eigen(_core_eigen(_zero_members(core, bad), vectors), bad)

    budget = device_budget(x.device)
    op = "eig core" if vectors else "eigvals core full" if full else "eigvals core"
    one = costs(tuple(1 for _ in batch))[0] + _result_bytes(x, op)
    if one > budget:
        dtype = str(x.dtype).replace("torch.", "")
        raise BudgetTooSmall(f"eigvals of a {tuple(x.shape)} {dtype} expression", "one matrix of the batch",
                             budget, one, x.device)
    return _in_blocks(x, op, compute, costs=costs)


def _after_svd_bytes(x: Expr, op: str) -> int:
    """Bytes the steps after the triplets ``U S Vh`` hold for the whole batch, beside them, at
    most (``k`` at most :func:`_result_bytes`' bound): the scaled ``S Vh``, the
    core ``S Vh U``, the solver's output (:func:`_solver_bytes`), the sort's (values, |values|,
    indices, the gathered vectors) and for eig ``U`` cast complex and ``U W`` (eigvals: the padded
    values of ``full=True``)."""
    b, n = math.prod(x.shape[:-2]), x.shape[-1]
    k = min(n, _inner_width(x))
    wd = _work_dtype(x.dtype)
    w, real, c = wd.itemsize, _real(wd).itemsize, _complex(wd).itemsize
    sort = k * (real + 8 + c) + (k * k * c if op == "eig" else 0)  # (op: "eigvals full" with full=True)
    vectors = 2 * n * k * c if op == "eig" else 2 * n * c + 1 if op == "eigvals full" else 0
    return b * (k * n * w + k * k * w + sort + vectors) + _solver_bytes(b, k, wd)


def _truncated_beside(x: Expr, op: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_truncated` under the budget less what ``op``'s steps after it hold for the whole
    batch (:func:`_after_svd_bytes`), so that the call's peak is within the budget; the
    minimum a refusal names is the SVD's plus theirs."""
    after = _after_svd_bytes(x, op) if settings.get("memory_budget") is not None else 0
    try:
        with _less_budget(x.device, after):
            return _truncated(x, pull=False)  # the core S Vh U: second order through U, Vh
    except BudgetTooSmall as err:
        if not after:
            raise
        raise BudgetTooSmall(err.context, err.block, device_budget(x.device),
                             err.minimum - blas_workspace(x.device) + after, x.device) from None


def _rotated_core(x: Expr) -> torch.Tensor | None:
    """The dense core ``R @ L`` of :func:`eig_core` for a single product of leaf views
    ``c V_1 ... V_n``: the same views rotated at :func:`lazymat.core.factor`'s split ``j``,
    ``c V_{j+1} ... V_n V_1 ... V_j``, formed through the plan of its shapes (warm after the
    first call) without building an expression; ``j`` is decided once per structure
    (:data:`_ROUTES`). Autograd records through it as through ``to_dense``. None for any other
    form, and when the plan's work needs the budget checked (the general path slices it)."""
    form = _form(x)
    if form.key is None:
        return None
    key = ("eig split", form.key)
    j = _ROUTES.get(key)
    if j is None:
        L, R = factor(x)
        j = 0 if is_identity(L) else form.factors if is_identity(R) else len(canonical(L).terms[0].factors)
        _remember(key, j)
    t = canonical(x).terms[0]
    rotated = t.factors[j:] + t.factors[:j]
    shape = (*x.shape[:-2], rotated[0].shape[-2], rotated[-1].shape[-1])
    c = Canon((Term(t.coef, t.scalars, rotated, shape),), shape, x.dtype, x.device)
    plan = plan_canon(c)
    if not fits(c.device, plan.work_bytes):
        return None
    return run_canon(c, _Memo(*plan_sharing(c)), plan)


def _nan_eigen(result: tuple[torch.Tensor, ...], bad: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``result`` of :func:`_core_eigen` with the members ``bad`` (non-finite input) all NaN,
    as torch answers on CUDA for such a member; the other members keep their answers."""
    if bad is None:
        return result
    vals, *vecs = result
    return (_nan_members(vals, bad, 1), *(_nan_members(v, bad, 2) for v in vecs))


@budgeted
@reads_through_casts
def eigvals(x: Any, full: bool = False) -> torch.Tensor:
    """Eigenvalues of a square ``X``, complex, shape ``(..., k)`` with ``k`` the numerical rank
    (:func:`svd`), sorted by descending modulus (ties keep the solver's order); a single
    matrix that is its own core gives all ``n``. The other eigenvalues are zero: ``full=True`` appends
    them to length ``n``."""
    out = compiled._compiled(x, "eigvals", (full,))
    if out is not None:
        return out
    x = as_expr(x)
    _square(x, "eigvals")
    vals = _cached(x, "eigvals", lambda: _eigen(x, vectors=False, full=full)[0])
    vals = _pad(vals, x.shape[-1]) if full else vals
    return vals if vals.dtype == _complex(x.dtype) else vals.to(_complex(x.dtype))


@budgeted
@reads_through_casts
def eig(x: Any) -> torch.return_types.linalg_eig:
    """Eigenpairs ``(vals (..., k), vecs (..., n, k))`` (torch's named tuple: ``.eigenvalues``,
    ``.eigenvectors``) of a square ``X``, sorted like
    :func:`eigvals`: ``X @ vecs[..., j] = vals[j] * vecs[..., j]`` with unit columns, for zero
    eigenvalues too (see :func:`_eigen`). The ``n - k`` pairs not returned span the null
    space of ``X`` beyond its range, which lazymat never builds."""
    x = as_expr(x)
    _square(x, "eig")
    vals, vecs = _cached(x, "eig", lambda: _eigen(x, vectors=True))
    c = _complex(x.dtype)
    return _EIG((vals.to(c), vecs.to(c)))
