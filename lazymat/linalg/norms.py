"""trace, diagonal and norms: closed einsum networks for trace and diagonal (no SVD), the
cheapest Frobenius route (split Gram, closed network or the core's values), and the other
matrix and vector norms."""
from __future__ import annotations

import math
import operator
from collections import OrderedDict
from typing import Any

import torch

from .. import layout, settings
from ..coefficient import fold, magnitude, times
from ..core import dense_side, factor, is_identity, outer_reductions, reduced_factors
from ..execute import _Memo, contract, contract_sum, device_budget, view_value
from ..expr import Expr, as_expr, broadcast_shapes, dim_index
from ..layout import matmul
from ..network import Shared, closed_chain, gram_trace, leaf_kept_bytes, unsliced_peak
from ..plan import kept_bytes, plan_expr
from ..rewrite import Nested, canonical, diagonal_pieces
from ..settings import BudgetTooSmall, blas_workspace
from . import _common, compiled
from ._common import _cached, _real, _work_dtype
from .blocks import _in_blocks, _less_budget
from .calls import budgeted, reads_through_casts
from .peaks import _fits, _structure
from .singular import _extreme, svdvals
from .small import dense_is_cheaper, dense_norm_route
from .spectrum import _dense, _pad, _share_outer_qrs, _truncated


def _closed(x: Expr, diag: bool) -> torch.Tensor:
    """The trace or diagonal of a square ``x``: where a term is a cat (a product with one at an
    outer end is one), joined from the diagonal blocks of its parts and of the other terms
    (:func:`lazymat.rewrite.diagonal_pieces`), each its own closed network; else one network per
    term. The executor slices its networks to the budget itself, less what the blocks already
    run hold."""
    pieces = diagonal_pieces(x)
    return _closed_network(x, diag)[0] if pieces is None else _closed_pieces(x, pieces, diag)[0]


def _closed_pieces(x: Expr, pieces: list, diag: bool) -> tuple[torch.Tensor, int]:
    """:func:`_closed` of ``x`` from its diagonal blocks ``pieces``, and the bytes their networks
    keep on the leaves (held after they return)."""
    batch = tuple(x.shape[:-2])
    values, total, held, kept = [], None, 0, 0
    for start, p in pieces:
        try:
            with _less_budget(x.device, held):
                inner = diagonal_pieces(p)
                v, k = _closed_network(p, diag) if inner is None else _closed_pieces(p, inner, diag)
        except BudgetTooSmall:  # named for the whole: a block's own least less the held bytes is refused
            from ..explain import pieces_too_small  # explain reads linalg's routes: imported on use

            raise pieces_too_small(x, "diagonal" if diag else "trace", device_budget(x.device)) from None
        kept += k
        if diag:  # the blocks' diagonals are joined at the end
            values.append((start, v))
            held += v.numel() * v.element_size() + k
        else:  # the traces are added as they come
            total = v if total is None else total + v
            held = total.numel() * total.element_size() + kept
    if not diag:
        return total.expand(batch), kept
    return _join_diagonals(values, batch, x.shape[-1]), kept


def closed_kept_bytes(x: Expr, diag: bool) -> int:
    """Bytes the closed networks of a trace or diagonal of ``x`` keep on the leaves when run
    without a budget (:func:`lazymat.network.leaf_kept_bytes`), as :func:`_closed_pieces` counts
    them, without running anything."""
    pieces = diagonal_pieces(x)
    if pieces is not None:
        return sum(closed_kept_bytes(p, diag) for _, p in pieces)
    shared = Shared()
    return sum(leaf_kept_bytes(closed_chain(t.factors, diag, x.dtype.itemsize, shared))
               for t in canonical(x).terms)


def _join_diagonals(values: list[tuple[int, torch.Tensor]], batch: tuple, n: int) -> torch.Tensor:
    """The length-``n`` diagonal made of blocks' diagonals ``(start, d)``, each added in at
    ``start``: joined by one ``torch.cat`` where they tile it in order, else added into zeros."""
    values = [(start, v.expand(*batch, v.shape[-1])) for start, v in values]
    starts = [start for start, _ in values]
    ends = [start + v.shape[-1] for start, v in values]
    if starts == [0, *ends[:-1]] and ends[-1] == n:
        return values[0][1] if len(values) == 1 else torch.cat([v for _, v in values], dim=-1)
    v0 = values[0][1]
    out = v0.new_zeros((*batch, n))
    for start, v in values:
        out[..., start:start + v.shape[-1]] += v
    return out


def _closed_network(x: Expr, diag: bool) -> tuple[torch.Tensor, int]:
    """One closed network per term of ``x``, run; and the bytes they may keep on the leaves (a
    budgeted run keeps none: counted anyway, on the safe side)."""
    c = canonical(x)
    shared = Shared()  # steps repeated across the terms' networks run once
    nets = [closed_chain(t.factors, diag, x.dtype.itemsize, shared) for t in c.terms]
    target = (*x.shape[:-2], *((x.shape[-1],) if diag else ()))
    dtype = str(x.dtype).replace("torch.", "")
    what = (f"{'diagonal' if diag else 'trace'} of a {tuple(x.shape)} {dtype} expression "
            f"({len(nets)} closed networks)")
    value = contract_sum(c.terms, nets, target, x.device, what)
    return value, sum(leaf_kept_bytes(n) for n in nets)


@budgeted
@reads_through_casts
def trace(x: Any) -> torch.Tensor:
    """``tr(X)``, shape ``(...)``: the sum of the main diagonal (of its ``min(m, n)`` entries
    when ``X`` is not square, as ``torch.trace``), a closed einsum network, no SVD."""
    out = compiled._compiled(x, "trace", ())
    if out is not None:
        return out
    x = as_expr(x)
    m, n = x.shape[-2], x.shape[-1]
    if m != n:
        x = x[..., : min(m, n), : min(m, n)]
    return _cached(x, "trace", lambda: _closed(x, diag=False))


@budgeted
@reads_through_casts
def diagonal(x: Any, offset: int = 0, dim1: int = -2, dim2: int = -1) -> torch.Tensor:
    """Diagonal of the last two dims, like ``torch.diagonal``: the main one ``(..., min(m, n))``
    costs O(m r) for a product after the factors; ``offset`` k is the main diagonal of the
    columns ``k:`` (rows ``-k:`` for k < 0), and ``dim1=-1, dim2=-2`` read ``X.mT``."""
    x = as_expr(x)
    dims = tuple(dim_index(d, x.shape, "diagonal") for d in (dim1, dim2))
    if sorted(dims) != [x.ndim - 2, x.ndim - 1]:
        raise NotImplementedError(
            f"diagonal(offset={offset}, dim1={dim1}, dim2={dim2}) of shape {tuple(x.shape)}: "
            "lazymat takes diagonals of the last two dims (dim1=-2, dim2=-1 or the reverse)")
    if dims[0] > dims[1]:
        x = x.mT
    if offset:  # a lazy slice: the view is pushed to the leaves
        x = x[..., :, offset:] if offset > 0 else x[..., -offset:, :]
    m, n = x.shape[-2], x.shape[-1]
    if m != n:
        k = min(m, n)
        x = x[..., :k, :k]
    return _cached(x, "diagonal", lambda: _closed(x, diag=True))


def _has_sum(c) -> bool:
    """True when the canonical form adds anything: several terms, or a block (a sum or a
    stack of terms) inside a product. Only then can terms cancel."""
    return len(c.terms) > 1 or any(isinstance(f.base, Nested) for t in c.terms for f in t.factors)


def fro_route(x: Expr):
    """The route to ``||X||_F^2`` (``explain`` shows the same choice):

    - ``("core", L, R)`` when the form contains a sum: the squared singular values of the core,
      after the zero rule. A Gram route squares the rounding error, and where terms (nearly)
      cancel that leaves ``sqrt(eps)``-relative noise instead of zero or the true small value.
    - otherwise the cheapest, by the planner's costs, of ``("network", net)``, the closed
      network ``tr(X^H X)`` of a single product, ``("split", L, R)``, ``tr((L^H L)(R R^H))``
      with each half formed once, and, where a tall outer leaf is shared across the batch
      (:func:`lazymat.core.outer_reductions`), ``("core squares", L, R)``: the sum of squares of
      the ``r x r`` core ``R_L R_R^H`` that ``svdvals`` forms (all-pairs products of heads: one
      QR per head, then one GEMM over the pairs).

    Under the memory budget the cheapest whose predicted peak fits is taken; when none fits,
    the network (the executor slices it, down to blocks of single entries)."""
    c = canonical(x)
    L, R = factor(x)
    if _has_sum(c) and not (is_identity(L) or is_identity(R)):
        return ("core", L, R)
    split = ("split", L, R)
    if len(c.terms) == 1 and len(c.terms[0].factors) > 1:
        costs = _fro_costs(x)  # the route is built for the one taken
        if is_identity(L) or is_identity(R):
            (split_flops, _, _), (net_flops, _, _) = costs
            return _fro_route_of(x, "network") if net_flops < split_flops else split
        for _, peak, kind in sorted(costs, key=lambda route: route[0]):  # the cheapest that fits
            if _fits(x, peak)[0]:
                return split if kind == "split" else _fro_route_of(x, kind)
        return _fro_route_of(x, "network")  # sliced by the executor
    return split


def fro_candidates(x: Expr) -> list[tuple[float, int, tuple]]:
    """``(FLOPs, predicted peak bytes, route)`` of the routes :func:`fro_route` weighs for a
    single product: the split Grams, the network, and (a shared tall leaf) the core squares."""
    return [(flops, peak, _fro_route_of(x, kind)) for flops, peak, kind in _fro_costs(x)]


def _fro_route_of(x: Expr, kind: str) -> tuple:
    """The route ``kind`` of :func:`fro_route` for a single product ``x``."""
    if kind == "network":
        return ("network", gram_trace(canonical(x).terms[0].factors, x.dtype.itemsize, x.dtype.is_complex))
    return (kind, *factor(x))


# (FLOPs, peak) of the split and network routes by the structure of a single product, its leaves'
# strides and the settings its plans read: a new expression of the same kind, built for every
# call, costs them once (the core squares' cost reads the leaves' cached QRs: never kept here)
_FRO_COSTS: OrderedDict = OrderedDict()
_FRO_COSTS_KEPT = 1024


def _fro_costs(x: Expr) -> list[tuple[float, int, str]]:
    """``(FLOPs, predicted peak bytes, kind)`` of the routes :func:`fro_candidates` lists."""
    c, (L, R) = canonical(x), factor(x)
    structure = _structure(x)
    key = None if structure is None else (structure, settings.get("optimize"), layout.MIN_LAYOUT_MACS, tuple(
        [None if f.base.tensor is None else f.base.tensor.stride() for f in c.terms[0].factors]))
    routes = None if key is None else _FRO_COSTS.get(key)
    if routes is None:
        itemsize = x.dtype.itemsize
        net = gram_trace(c.terms[0].factors, itemsize, x.dtype.is_complex)
        routes = [(split_gram_flops(L, R), _split_gram_peak(L, R, itemsize), "split"),
                  (net.flops, unsliced_peak(net), "network")]  # run alone: nothing retained
        if key is not None:
            _FRO_COSTS[key] = routes
            if len(_FRO_COSTS) > _FRO_COSTS_KEPT:
                _FRO_COSTS.popitem(last=False)
    batch = math.prod(x.shape[:-2])  # a QR that no two matrices share costs as much as a Gram
    if batch > 1 and not (is_identity(L) or is_identity(R) or dense_is_cheaper(x)) and any(
            s is not None and s.count < batch for s in outer_reductions(x, False)):
        peak, flops = _core_squares_cost(x)
        return [*routes, (flops, peak, "core squares")]
    return list(routes)


def _split_gram_peak(L: Expr, R: Expr, itemsize: int) -> int:
    """Bytes live in the split route: ``L`` formed (a leaf is not; a view that copies, an index
    list or a cast, is: no FLOPs, but an allocation) and kept while ``R^H`` is
    formed, then both Gram matrices (over their own batches) and the traces of their product;
    with an identity side, the other side formed and its sum of squares (as explain schedules
    them). Products a side's evaluation keeps on the leaves stay held to the end."""
    if is_identity(L) or is_identity(R):
        side = R if is_identity(L) else L
        plan = plan_expr(side)
        held = (math.prod(side.shape) * itemsize if plan.peak_bytes else 0) + kept_bytes(side)
        return max(plan.peak_bytes, held + math.prod(side.shape[:-2]) * itemsize)
    left, right = plan_expr(L), plan_expr(R.mH)
    held_l = (math.prod(L.shape) * itemsize if left.peak_bytes else 0) + kept_bytes(L)
    held_r = (math.prod(R.shape) * itemsize if right.peak_bytes else 0) + kept_bytes(R.mH)
    batch = math.prod(broadcast_shapes(L.shape[:-2], R.shape[:-2]))
    grams = (math.prod(L.shape[:-2]) + math.prod(R.shape[:-2])) * L.shape[-1] ** 2 * itemsize  # own batches
    return max(left.peak_bytes, held_l + right.peak_bytes, held_l + held_r + grams + batch * itemsize)


def _core_squares_cost(x: Expr) -> tuple[int, float]:
    """``(peak bytes, FLOPs)`` of the core-squares route: ``svdvals``' route up to its core,
    then a sum of squares instead of the core's SVD (explain's schedule of it, cached on
    ``x``)."""
    hit = x._cache.get("core squares cost")
    if hit is None:
        from ..explain import core_squares_costs  # explain reads linalg's routes: imported on use

        hit = x._cache["core squares cost"] = core_squares_costs(x)
    return hit


def _core_squares(x: Expr) -> torch.Tensor | None:
    """``||X||_F^2`` as the sum of squares of ``R_L R_R^H`` (``X = Q_L R_L R_R^H Q_R^H``, the
    sides of :func:`lazymat.core.reduced_factors`); None when a sum is not finite (an infinity
    or a NaN in the sides reaches it; the QRs would turn an infinity into NaN: the Gram route
    answers those as torch does). Only the sums are scanned, not the pairs' cores."""
    L, R, _, _ = reduced_factors(x, vectors=False)
    wd = _work_dtype(x.dtype)
    R1 = _common._side_qr(L, False, False, wd)[1]
    R2 = _common._side_qr(R, True, False, wd)[1]
    core = matmul(R1, R2.mH)
    squares = (core.real.square() + core.imag.square() if core.is_complex() else core.square()).sum((-2, -1))
    return squares if bool(torch.isfinite(squares).all()) else None


def split_gram_flops(L: Expr, R: Expr) -> int:
    """FLOPs of forming ``L`` and ``R``, their Gram matrices (each over its side's own batch: a
    side the batch shares is multiplied once) and the traces of their products (over the batch;
    complex Grams are read as real pairs: twice the entries)."""
    total = sum(plan_expr(side).flops for side in (L, R) if not is_identity(side))
    m, r, n = L.shape[-2], L.shape[-1], R.shape[-1]
    batch_l, batch_r = math.prod(L.shape[:-2]), math.prod(R.shape[:-2])
    batch = math.prod(broadcast_shapes(L.shape[:-2], R.shape[:-2]))
    return total + 2 * r * r * (batch_l * m + batch_r * n) + gram_trace_flops(batch, r, L.dtype)


def gram_trace_flops(batch: int, r: int, dtype: torch.dtype) -> int:
    """FLOPs of ``tr(G_L G_R)`` over a batch of ``r x r`` Gram pairs as the split route runs it:
    one dot product of their entries (real pairs for a complex dtype)."""
    return 2 * batch * r * r * (2 if dtype.is_complex else 1)


def _fro_squared(x: Expr) -> torch.Tensor:
    route = fro_route(x)
    if route[0] == "core":  # svdvals obeys the budget itself
        return (svdvals(x).to(_real(_work_dtype(x.dtype))) ** 2).sum(-1)
    if route[0] == "network":  # the executor slices the network to the budget itself
        try:
            return _fro_squared_by_route(x, route)
        except BudgetTooSmall as err:  # the call's minimum: another route may run whole below it
            c, (L, R) = canonical(x), factor(x)
            if len(c.terms) != 1 or len(c.terms[0].factors) < 2 or is_identity(L) or is_identity(R):
                raise  # the network is the only route
            need = min(err.minimum - blas_workspace(x.device),
                       *(peak for _, peak, r in fro_candidates(x) if r[0] != "network"))
            dtype = str(x.dtype).replace("torch.", "")
            raise BudgetTooSmall(f"matrix_norm of a {tuple(x.shape)} {dtype} expression",
                                 "its least demanding route", device_budget(x.device), need,
                                 x.device) from None
    # the route is chosen once; a block of the batch chooses its own
    prefetch = (lambda block: _share_outer_qrs(x, False, block)) if route[0] == "core squares" else None
    return _in_blocks(x, "matrix_norm", lambda block, key: _fro_squared_by_route(
        block, route if key is None else None), prefetch)


def _fro_squared_by_route(x: Expr, route: tuple | None = None) -> torch.Tensor:
    wd = _work_dtype(x.dtype)
    route = fro_route(x) if route is None else route
    if route[0] == "network":
        t = canonical(x).terms[0]
        memo = _Memo()
        vals = [view_value(f, memo).to(wd) for f in t.factors]
        conj = [x.dtype.is_complex] * len(vals) + [False] * len(vals)
        val = contract(route[1], [v.conj() for v in vals] + vals, list(t.factors) * 2, conj).real
        if not t.has_coefficient:  # no scaling by 1 (an op, a launch on a GPU)
            return val
        if not t.scalars:  # |c|^2 exact, applied in steps within the range (c may be a Wide)
            size = magnitude(t.coef)
            return times(val, fold(size, size))
        k = t.coefficient()
        return val * (k.abs() ** 2 if isinstance(k, torch.Tensor) else abs(k) ** 2)
    if route[0] == "core squares":
        squares = _core_squares(x)
        if squares is not None:
            return squares
        route = ("split", *route[1:])
    _, L, R = route
    if is_identity(L) or is_identity(R):
        dense = (R if is_identity(L) else L).to_dense().to(wd)
        return torch.linalg.matrix_norm(dense) ** 2
    return split_squares(dense_side(L).to(wd), dense_side(R, adjoint=True).to(wd))


def split_squares(Ld: torch.Tensor, RdH: torch.Tensor) -> torch.Tensor:
    """``||L R||_F^2 = tr((L^H L)(R R^H))`` from the formed sides ``L`` and ``R^H``."""
    # tr(G_L G_R) = sum G_L * conj(G_R) (G_R is Hermitian): the Grams read as stored, each over
    # its own batch (einsum copied a transposed G_R, and would copy a conjugated one), a complex
    # Gram as its real pairs
    flat = [torch.view_as_real(g).flatten(-3) if g.is_complex() else g.flatten(-2)
            for g in (Ld.mH @ Ld, RdH.mH @ RdH)]
    if flat[0].ndim == flat[1].ndim == 1:  # one matrix: one dot product (einsum adds 11 views)
        return torch.dot(*flat)
    return torch.einsum("...k,...k->...", *flat)


def root_of_squares(squares: torch.Tensor) -> torch.Tensor:
    """A 2-norm from its square (rounding below 0 read as 0; NaN stays NaN), with torch's
    gradient at a zero norm when one is recorded: 0, where ``sqrt``'s infinite slope times the
    square's zero gradient gives NaN (six ops; without a gradient two, each a launch on a GPU)."""
    if not squares.requires_grad:
        return squares.clamp_min(0).sqrt_()
    zero = squares <= 0  # not a NaN
    return torch.where(zero, 0, torch.where(zero, 1, squares).sqrt())


def check_norm_dtype(x: Expr, dtype: torch.dtype | None, what: str) -> None:
    """torch's rule for a norm's ``dtype=``: a complex expression takes a complex dtype, a real
    one a real dtype, and the cast may only widen (float32 -> float64, never -> float16). A real
    dtype for a complex expression would otherwise drop the imaginary parts before the norm."""
    if dtype is None:
        return
    src = str(x.dtype).replace("torch.", "")
    if x.dtype.is_complex != dtype.is_complex:
        kind = "complex" if x.dtype.is_complex else "real"
        raise RuntimeError(f"{what}: dtype should be {kind} for the {kind} expression of shape "
                           f"{tuple(x.shape)} ({src}), got {dtype} (torch's rule)")
    if torch.promote_types(x.dtype, dtype) != dtype:
        raise RuntimeError(f"{what}: the {src} expression of shape {tuple(x.shape)} cannot be cast "
                           f"to {dtype} without narrowing (torch's rule); pick a wider dtype or none")


@budgeted
@reads_through_casts
def matrix_norm(x: Any, ord: str | float = "fro", dim: tuple = (-2, -1), keepdim: bool = False,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Matrix norms like ``torch.linalg.matrix_norm``: ``'fro'`` (no SVD), ``'nuc'``, ``2``,
    ``-2`` from the core's singular values; ``1``, ``-1``, ``inf``, ``-inf`` stream the
    matrix in row blocks (it is never held whole)."""
    if dim == (-2, -1) and dtype is None and type(ord) in (str, int, float) and ord in ("fro", "nuc", 2, -2):
        out = compiled._compiled(x, "fro", ()) if ord == "fro" else compiled._compiled(x, "norm", (ord,))
        if out is not None:
            out = _entries_where_infinite(as_expr(x), out) if ord == "fro" and out.requires_grad else out
            return out[..., None, None] if keepdim else out
    x = as_expr(x)
    dims = tuple(dim_index(d, x.shape, "matrix_norm") for d in dim)
    if sorted(dims) != [x.ndim - 2, x.ndim - 1]:
        if ord == "fro" and len(set(dims)) == 2:  # the 2-norm of the entries over those two dims
            from .. import reduce  # reduce builds on linalg: imported on use

            return reduce.vector_norm(x, 2, dim=dims, keepdim=keepdim, dtype=dtype)
        raise NotImplementedError(f"matrix_norm over dims {dim}: lazymat supports the last two "
                                  "(and 'fro' any two)")
    if dims[0] > dims[1]:  # the norm of the transpose (ord 1 and inf trade places)
        x = x.mT
    check_norm_dtype(x, dtype, "matrix_norm")
    if dtype is not None:
        x = x.to(dtype=dtype)
    real = _real(x.dtype)
    if ord == "fro" and dense_norm_route(x):  # small matrices that fit the budget, formed whole
        out = _cached(x, "fro", lambda: torch.linalg.matrix_norm(_dense(x)))
    elif ord == "fro":
        out = _cached(x, "fro", lambda: _entries_where_infinite(x, root_of_squares(_fro_squared(x))))
    elif ord == "nuc":
        out = _truncated(x, values_only=True)[1].sum(-1)
    elif ord in (2, -2):  # the smallest counts the zeros past the rank
        S = _truncated(x, values_only=True)[1]
        out = _extreme(S if ord > 0 else _pad(S, min(x.shape[-2:]), False), ord > 0, x, ord)
    elif ord in (1, -1, math.inf, -math.inf):
        out = _abs_sum_norm(x, ord)
    else:
        raise ValueError(f"matrix_norm: unsupported ord {ord!r} (use 'fro', 'nuc', 2, -2, 1, -1, "
                         "inf, -inf)")
    out = out if out.dtype == real else out.to(real)
    return out[..., None, None] if keepdim else out


def _entries_where_infinite(x: Expr, out: torch.Tensor) -> torch.Tensor:
    """``out``, the Frobenius norms of ``x`` by a squares' route (a Gram, a network, a core); when
    it records a gradient, is not finite and a leaf holds an infinite entry, the norms streamed
    from the entries (:func:`lazymat.reduce.streamed_norm`). The squares' routes read ``inf`` as
    ``inf - inf``, and the gradient of that NaN reached every entry of the member and of a leaf
    the batch shares, where torch's is NaN only where the infinity reaches (0 elsewhere in the
    member, finite for the other members). Reads one number back when differentiated (a norm
    not differentiated reads nothing: its value is NaN where torch's is inf); none under
    ``torch.func``'s transforms, which cannot read."""
    from .. import reduce  # reduce builds on linalg: imported on use

    if not out.requires_grad or torch._C._are_functorch_transforms_active():
        return out
    if math.isfinite(out.detach().sum()) or not reduce.holds_inf(x):  # norms >= 0: a finite sum
        return out
    return reduce.streamed_norm(x, 2, (x.ndim - 2, x.ndim - 1)).to(out.dtype)


def _abs_sum_norm(x: Expr, ord: float) -> torch.Tensor:
    """Max/min absolute column (ord +-1) or row (ord +-inf) sum: the 1-norms of the columns
    (rows), streamed in blocks sized to the memory budget by :func:`lazymat.reduce.vector_norm`."""
    from .. import reduce  # reduce builds on linalg: imported on use

    sums = reduce.vector_norm(x, 1, dim=-2 if ord in (1, -1) else -1)
    return _extreme(sums, ord > 0, x, ord)


def norm(x: Any, ord: Any = None, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.linalg.norm``: no ord and no dim is the 2-norm of the flattened tensor; a
    2-tuple ``dim`` (or a 2-D input) is a matrix norm; an int (or 1-tuple) ``dim`` a vector norm."""
    from .. import reduce as R  # reduce builds on linalg: imported on use

    if dim is None and ord is None:  # the vector norm over every dim
        return R.vector_norm(x, 2, None, keepdim, dtype=dtype)
    if not isinstance(dim, (tuple, list)) and hasattr(dim, "__index__"):  # an int, NumPy or 0-dim tensor
        dim = operator.index(dim)
    if isinstance(dim, int) or (isinstance(dim, (tuple, list)) and len(dim) == 1):
        if isinstance(ord, str):
            raise RuntimeError(f"torch.linalg.norm: ord={ord!r} is a matrix norm and needs a 2-tuple "
                               f"dim, got dim={dim!r} (shape {tuple(x.shape)})")
        return R.vector_norm(x, 2 if ord is None else ord, dim, keepdim, dtype=dtype)
    if dim is None:
        if x.ndim != 2:
            raise RuntimeError(f"torch.linalg.norm: ord={ord!r} without dim needs a 2-D input "
                               f"(torch's rule), got shape {tuple(x.shape)}; pass dim=(-2, -1)")
        dim = (-2, -1)
    if len(dim) != 2:
        raise RuntimeError(f"torch.linalg.norm: dim must be an int or a 1- or 2-tuple, got "
                           f"dim={dim!r} (shape {tuple(x.shape)})")
    return matrix_norm(x, ord="fro" if ord is None else ord, dim=tuple(dim), keepdim=keepdim,
                         dtype=dtype)


def vector_norm(x: Any, ord: Any = 2, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.linalg.vector_norm`` (:func:`lazymat.reduce.vector_norm`: closed or streamed in
    blocks within the memory budget, never the whole matrix)."""
    from .. import reduce as R  # reduce builds on linalg: imported on use

    return R.vector_norm(x, ord, dim, keepdim, dtype=dtype)
