"""Factor form ``X = L @ R`` with the smallest inner width the planner can find.

- A product is split at its narrowest chain dim; among equally narrow splits, the one
  whose two halves are cheapest to form (opt_einsum costs) wins.
- A sum first loses the views all its terms start or end with (``A B C + A B D =
  A B (C + D)``), then is read as a product if that leaves one term.
- A sum of low-rank terms stacks its terms' factors, ``[c1 L1, c2 L2] @ [R1; R2]``, while
  that stays narrower than ``min(m, n)``; past that the matrix itself is the better core
  and one side is the identity.
- A concatenation of low-rank parts likewise: ``[L1 R1, L2 R2] = [L1, L2] @ blockdiag(R1, R2)``.

Everything spectral (:mod:`lazymat.linalg`) is computed from ``L`` and ``R``: an
``(..., m, r)`` and an ``(..., r, n)`` matrix, never the ``m x n`` one.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .caching import caches
from .execute import _Memo, view_value
from .expr import Expr, Leaf, as_expr, cat, lazy, leaves, scale, symbol, tensor_state, transpose
from .indexing import Gather, apply_key, batch_shape_after, composed_keys, distinct_members, member_numbers
from .plan import plan_canon, plan_chain
from .qr import qr
from .rewrite import (
    _RULES,
    Canon,
    Nested,
    Term,
    View,
    canonical,
    common_factors,
    stack_low_rank,
    term_expr,
    to_expr,
    view_expr,
)


class Identity(Leaf):
    """The identity side of a matrix that is its own core: a structural marker, not data.

    Its own node type, so it never collides with a user's leaf or symbol (a user's
    ``symbol("I64", ...)`` stays the user's), and linalg/explain skip it without forming
    anything. Only if it is evaluated (``L.to_dense()`` of a factor) is a fresh
    ``torch.eye`` made, and not kept."""

    __slots__ = ()

    def _set_params(self, params: tuple) -> None:
        self.name = f"I{params[1]}"

    @property
    def tensor(self) -> torch.Tensor:  # type: ignore[override]
        n = self.shape[-1]
        return torch.eye(n, dtype=self.dtype, device=self.device)

    @property
    def is_symbol(self) -> bool:
        return False


# canonical() dispatches on the exact node type: an identity rewrites like any leaf
_RULES[Identity] = _RULES[Leaf]


def _identity(n: int, like: Expr) -> Expr:
    return Identity._make(("identity", n, str(like.device)), (), (n, n), like.dtype, like.device)


MAX_SPLITS_COSTED = 16  # equally narrow splits costed per product (the most central ones)


def _best_split(t: Term, itemsize: int) -> int:
    """The narrowest chain dim of ``t``; ties broken by the cost of forming both halves
    (among the ``MAX_SPLITS_COSTED`` most central, so long uniform chains stay cheap)."""
    dims = t.dims
    n = len(t.factors)
    width = min(dims)
    shapes = tuple(f.shape for f in t.factors)

    def cost(j: int) -> int:
        left = plan_chain(shapes[:j], itemsize).flops if j > 1 else 0
        right = plan_chain(shapes[j:], itemsize).flops if n - j > 1 else 0
        return left + right

    ties = sorted((j for j in range(n + 1) if dims[j] == width), key=lambda j: abs(2 * j - n))
    return min(ties[:MAX_SPLITS_COSTED], key=cost)


def factor(x: Expr | torch.Tensor | object) -> tuple[Expr, Expr]:
    """Lazy ``(L, R)`` with ``x == L @ R``, ``L: (..., m, r)``, ``R: (..., r, n)``, small ``r``.

    An identity factor stands for the side that needs none (``L = I_m`` when the matrix
    itself is the narrowest core). Cached on ``x``. ``x`` may be a tensor or a factored matrix,
    as :mod:`lazymat.linalg` takes (:func:`~lazymat.expr.as_expr`)."""
    x = as_expr(x)
    hit = x._cache.get("factor")
    if hit is not None:  # None stands for x itself (a cache holding x would be a cycle)
        return tuple(x if side is None else side for side in hit)
    c = common_factors(canonical(x))
    m, n = x.shape[-2], x.shape[-1]
    joined = _factor_cat(x, c)
    if joined is not None:
        out = joined
    elif len(c.terms) == 1:
        t = c.terms[0]
        itemsize = x.dtype.itemsize
        j = _best_split(t, itemsize)
        if j == 0:
            out = (_identity(m, x), x)
        elif j == len(t.factors):
            out = (x, _identity(n, x))
        else:
            out = (term_expr(t, t.factors[:j]), term_expr(t, t.factors[j:], with_coef=False))
    else:
        stacked = stack_low_rank(c)
        joined = _factor_terms(x, c) if stacked is None else None
        if stacked is not None:
            out = (to_expr(stacked[0]), to_expr(stacked[1]))
        elif joined is not None:
            out = joined
        elif m <= n:
            out = (_identity(m, x), x)
        else:
            out = (x, _identity(n, x))
    x._cache["factor"] = tuple(None if side is x else side for side in out)
    return out


def _factor_cat(x: Expr, c: Canon) -> tuple[Expr, Expr] | None:
    """A concatenation of low-rank parts as one low-rank product, as a sum of them is: along
    the columns ``[L1 R1, L2 R2] = [L1, L2] @ blockdiag(R1, R2)``, along the rows
    ``[L1 R1; L2 R2] = blockdiag(L1, L2) @ [R1; R2]``, each part split by :func:`factor`.
    The off-diagonal blocks are broadcast zeros (nothing allocated); a part that is its own
    core (an identity side) gets a ``torch.eye`` there, only ever narrower than the matrix.
    A scaled or transposed concatenation is its concatenation's factors, the left one scaled,
    or both transposed and swapped. None unless ``c`` is one such term whose stacked width is
    below ``min(m, n)`` (past that the matrix itself is the better core)."""
    if len(c.terms) != 1 or len(c.terms[0].factors) != 1:
        return None
    t = c.terms[0]
    view = t.factors[0]
    if not isinstance(view.base, Nested) or view.base.kind != "cat" or view.base.stack \
            or view.ops not in ((), (("mT",),)):
        return None
    if view.ops or t.has_coefficient:
        L, R = factor(view_expr(View(view.base, (), view.base.shape)))
        if is_identity(L) or is_identity(R):
            return None
        L, R = (transpose(R), transpose(L)) if view.ops else (L, R)
        for k in (*t.scalars, *((t.coef,) if t.coef != 1 else ())):
            L = scale(L, k)
        return L, R
    sides = [factor(to_expr(p)) for p in view.base.parts]
    width = sum(L.shape[-1] for L, _ in sides)
    if width >= min(x.shape[-2], x.shape[-1]):
        return None
    sides = [(_constant("eye", L.shape[-2:], R) if is_identity(L) else L,
              _constant("eye", R.shape[-2:], L) if is_identity(R) else R) for L, R in sides]
    if view.base.axis == -1:  # columns: the left factors side by side, the right ones down a diagonal
        return cat([L for L, _ in sides], dim=-1), _block_diagonal([R for _, R in sides], x)
    return _block_diagonal([L for L, _ in sides], x), cat([R for _, R in sides], dim=-2)


def _factor_terms(x: Expr, c: Canon) -> tuple[Expr, Expr] | None:
    """A sum whose terms :func:`stack_low_rank` cannot split (a term that is one block, such as a
    concatenation of low-rank parts) as its terms' own factors stacked, ``[L1, L2] @ [R1; R2]``;
    None when a term has no factors narrower than itself or the stacked width is not below
    ``min(m, n)``."""
    sides = [factor(term_expr(t)) for t in c.terms]
    if any(is_identity(L) or is_identity(R) for L, R in sides) or \
            sum(L.shape[-1] for L, _ in sides) >= min(x.shape[-2], x.shape[-1]):
        return None
    return cat([L for L, _ in sides], dim=-1), cat([R for _, R in sides], dim=-2)


def _block_diagonal(blocks: list[Expr], like: Expr) -> Expr:
    """``blocks`` down the diagonal of one matrix, broadcast zeros elsewhere."""
    rows = []
    for i, b in enumerate(blocks):
        row = [b if j == i else _zeros((b.shape[-2], other.shape[-1]), like)
               for j, other in enumerate(blocks)]
        rows.append(cat(row, dim=-1))
    return cat(rows, dim=-2)


def _zeros(shape: tuple[int, int], like: Expr) -> Expr:
    return _constant("zeros", shape, like)


def _constant(kind: str, shape: tuple, like: Expr) -> Expr:
    """A block of zeros (a broadcast 0: no memory) or an identity, in ``like``'s dtype and
    device; a symbol of that shape where ``like`` is built on symbols (no data to match)."""
    rows, cols = shape[-2], shape[-1]
    if any(leaf.is_symbol for leaf in leaves(like)):
        name = f"{'0' if kind == 'zeros' else 'I'}_{rows}x{cols}"
        return symbol(name, (rows, cols), like.dtype, like.device)
    if kind == "zeros":
        return lazy(torch.zeros((), dtype=like.dtype, device=like.device).expand(rows, cols))
    return lazy(torch.eye(rows, dtype=like.dtype, device=like.device))


def dense_side(side: Expr, adjoint: bool = False) -> torch.Tensor:
    """Dense ``side``, or (``adjoint=True``) ``side^H``: the tall form of a right factor, the
    one its QR and Gram matrix read. ``W_K^T @ W_E^T`` as an adjoint is ``W_E @ W_K``, and
    each product of a longer side runs in the layout :mod:`lazymat.layout` picks."""
    return (side.mH if adjoint else side).to_dense()


def is_identity(x: Expr) -> bool:
    """True for the identity factors :func:`factor` makes (so callers can skip them)."""
    return isinstance(x, Identity)


# ---- an outer factor shared across the batch ----------------------------------------------
# Singular values, norms, rank, pinv and the SVD factors are invariant under an orthonormal
# outer factor. When ``L = V @ rest`` with ``V`` a tall view of one leaf that reads fewer
# distinct matrices than ``L`` has (none of its own, as a shared ``W_E``; one per earlier head
# of an all-pairs product; or a list of pairs that reads each head many times), ``V = Q_V R_V``
# is factorised once per distinct matrix and ``L' = R_V @ rest`` (``(..., k, r)``, ``k`` the
# leaf's short side, ``R_V`` read back to ``L``'s batch) takes ``L``'s place; ``Q_V`` is applied
# only where a result needs it (``U = Q_V U'``). The same at the right end of ``R``, through
# ``R^H``. The QR lives in the leaf's cache, so every analysis of the same weights reuses it.
_QR_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def qr_flops(m: int, n: int, with_q: bool) -> float:
    """Householder QR of an ``m x n`` matrix (``m >= n``): ``2 n^2 (m - n/3)``, the same
    again to form ``Q`` (Golub & Van Loan, 4th ed., Sec. 5.2)."""
    return 2 * n * n * (m - n / 3) * (2 if with_q else 1)


def side_qr_flops(rows: int, r: int, with_q: bool) -> float:
    """FLOPs of factorising one side (``rows x r`` as the QR sees it) for the core: a tall side
    is QR-factorised; a square one (``rows <= r``) is its own factor, with ``Q = I`` (the core
    ``R_L @ side^H`` has the same singular values), and costs nothing."""
    return qr_flops(rows, r, with_q) if rows > r else 0.0


@dataclass(frozen=True)
class SharedOuter:
    """``side = view @ ...`` (``adjoint=False``: the left end of ``L``) or ``side = ... @ view``
    (``adjoint=True``: the right end of ``R``), the one product ``term``. The QR is of
    ``members`` (or its adjoint), of shape ``(*batch, rows, k)``, ``rows > k``: the distinct
    matrices ``view`` reads, which ``spread`` (None: all distinct) reads back to its batch."""

    view: View
    adjoint: bool
    term: Term
    members: View
    spread: tuple | Gather | None
    rows: int
    k: int
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.view.base.name or "leaf"

    @property
    def batch(self) -> tuple[int, ...]:
        return tuple(self.members.shape[:-2])

    @property
    def count(self) -> int:
        """How many QRs: one per distinct matrix the view reads."""
        return math.prod(self.batch)

    def attached(self, F: Leaf, transposed: bool = False) -> Expr:
        """The side with its view replaced by ``F`` (``F.mT`` if ``transposed``): ``R_V``, or
        ``R_V^H`` at a right end, one per member, read back to the view's batch; the term's
        coefficient kept."""
        rows, cols = F.shape[-2:][::-1] if transposed else F.shape[-2:]
        ops = (("mT",),) if transposed else ()
        if self.spread is not None:
            ops = (*ops, ("index", self.spread, range(rows), range(cols)))
        f = View(F, ops, (*self.view.shape[:-2], rows, cols))
        t = self.term
        return term_expr(t, (*t.factors[:-1], f) if self.adjoint else (f, *t.factors[1:]))


def _distinct(v: View) -> tuple[View, tuple | Gather | None]:
    """``(members, spread)`` of a view (:func:`lazymat.indexing.distinct_members` of its batch
    keys in turn): the view of the distinct matrices it reads, along one batch dim, and the key
    reading its batch back; ``(v, None)`` when it reads no matrix twice."""
    keys = [op[1] for op in v.ops if op[0] == "index"]
    split = distinct_members(composed_keys(keys)) if keys else None
    if split is None:
        return v, None
    members = split[0]
    batch = batch_shape_after(tuple(v.base.shape[:-2]), members)
    rows, cols = v.base.shape[-2:]
    whole = tuple(range(n) for n in batch)  # later index ops keep the members, cut the matrices
    ops = (("index", members, range(rows), range(cols)),
           *(("index", whole, *op[2:]) if op[0] == "index" else op for op in v.ops))
    return View(v.base, ops, (*batch, *v.shape[-2:])), split[1]


def _outer_view(side: Expr, adjoint: bool) -> SharedOuter | None:
    """The tall leaf view at the outer end of ``side`` (its left end, or the right end with
    ``adjoint``), whether or not the batch shares it; None where the end is no leaf view."""
    if is_identity(side) or side.dtype not in _QR_DTYPES:
        return None
    c = canonical(side)
    if len(c.terms) != 1:
        return None
    t = c.terms[0]
    v = t.factors[-1] if adjoint else t.factors[0]
    if not isinstance(v.base, Leaf):
        return None
    members, spread = _distinct(v)
    rows, k = (v.shape[-1], v.shape[-2]) if adjoint else (v.shape[-2], v.shape[-1])
    return SharedOuter(v, adjoint, t, members, spread, rows, k, side.dtype) if rows > k else None


def shared_outer(side: Expr, adjoint: bool) -> SharedOuter | None:
    """The tall leaf view at the outer end of ``side`` when it reads fewer distinct matrices
    than ``side`` has (it is broadcast over the rest of the batch, or gathers repeats), or when
    the leaf keeps their QR already (a block of a batch whose QRs ran first)."""
    s = _outer_view(side, adjoint)
    if s is None:
        return None
    alone = len(s.term.factors) < 2 and s.spread is None  # a view that is the whole side
    shared = not alone and not 1 < s.count >= math.prod(side.shape[:-2])
    return s if shared or qr_is_cached(s, False) else None  # (the leaf's cache read only if need be)


def qr_key(s: SharedOuter) -> tuple:
    """Cache key of the tall matrices on their leaf: the members' ops and a conjugation flag,
    normalised so that ``W`` at a left end and ``W.T`` at a right end (real) share one QR."""
    ops, conj = s.members.ops, False
    if s.adjoint:
        conj = s.view.base.dtype.is_complex
        ops = ops[:-1] if ops and ops[-1] == ("mT",) else (*ops, ("mT",))
    return ("qr", ops, conj)


def _family(s: SharedOuter) -> tuple:
    """The key under which a leaf lists the QRs it keeps of ``s``'s kind of tall matrix, for
    any members: :func:`qr_key` with the batch selection dropped (a block of a batch finds its
    members' QRs in the one its whole batch kept)."""
    _, ops, conj = qr_key(s)
    shape, out = tuple(s.view.base.shape[-2:]), []
    for op in ops:
        if op[0] == "index":
            if (op[2], op[3]) != (range(shape[0]), range(shape[1])):
                out.append(("index", None, op[2], op[3]))
            shape = (len(op[2]), len(op[3]))
        elif op == ("mT",) and out and out[-1] == ("mT",):
            out.pop()  # a transpose undone
            shape = shape[::-1]
        else:
            out.append(op)
            shape = shape[::-1] if op[0] == "mT" else shape
    return ("qr family", tuple(out), conj)


def _numbers(s: SharedOuter) -> np.ndarray:
    """The leaf's batch members (row-major numbers) whose matrices ``s``'s QR factorises, in
    the order of its batch."""
    keys = [op[1] for op in s.members.ops if op[0] == "index"]
    return member_numbers(tuple(s.view.base.shape[:-2]), keys)


_FAMILY_KEPT = 8  # QRs of one kind listed per leaf (the newest first)


def _covering(s: SharedOuter, with_q: bool) -> tuple[tuple, np.ndarray | None] | None:
    """A valid QR the leaf keeps of ``s``'s matrices (and ``Q`` if asked), and where each of
    ``s``'s members sits in its batch (None: the QR is ``s``'s own); None if none is kept."""
    leaf = s.view.base
    if leaf.tensor is None:
        return None
    state = tensor_state(leaf.tensor)
    hit = leaf._cache.get(qr_key(s))
    if hit is not None and hit[0] == state and not (with_q and hit[1] is None):
        return hit, None
    want = None
    for numbers, key in leaf._cache.get(_family(s), ()):
        hit = leaf._cache.get(key)
        if hit is None or hit[0] != state or (with_q and hit[1] is None):
            continue
        want = _numbers(s) if want is None else want
        order = np.argsort(numbers, kind="stable")
        at = np.minimum(np.searchsorted(numbers[order], want), len(numbers) - 1)
        if (numbers[order][at] == want).all():
            return hit, order[at]
    return None


def _kept(s: SharedOuter, hit: tuple) -> None:
    """Keep ``hit``, the QR of ``s``'s matrices, on the leaf, listed under its kind."""
    leaf = s.view.base
    leaf._cache[qr_key(s)] = hit
    kind = [(n, k) for n, k in leaf._cache.get(_family(s), ()) if k != qr_key(s)]
    leaf._cache[_family(s)] = [(_numbers(s), qr_key(s)), *kind][:_FAMILY_KEPT]


# QRs a cost is weighed as if the leaves kept: (leaf, kind, members, with Q) of each
_ASSUMED: contextvars.ContextVar[tuple] = contextvars.ContextVar("lazymat_assumed_qrs", default=())


@contextlib.contextmanager
def qrs_assumed(shared: Iterable[SharedOuter | None], with_q: bool) -> Iterator[None]:
    """Weigh costs inside as if the leaves kept the QRs of ``shared`` (a batch's, which its
    blocked run factorises before the blocks, so that each block reads them)."""
    kept = tuple((s.view.base, _family(s), _numbers(s), with_q) for s in shared if s is not None)
    token = _ASSUMED.set(_ASSUMED.get() + kept)
    try:
        yield
    finally:
        _ASSUMED.reset(token)


def assumes_qrs() -> bool:
    """Whether costs are being weighed under :func:`qrs_assumed` (not to be kept)."""
    return bool(_ASSUMED.get())


def _assumed(s: SharedOuter, with_q: bool) -> bool:
    assumed = [(family, numbers) for leaf, family, numbers, q in _ASSUMED.get()
               if leaf is s.view.base and (q or not with_q)]
    return any(family == _family(s) and np.isin(_numbers(s), numbers).all() for family, numbers in assumed)


def qr_is_cached(s: SharedOuter, with_q: bool) -> bool:
    """True when the leaf holds a valid QR of ``s``'s tall matrices (with ``Q`` if asked), its
    own or one of more members, or a cost is weighed as if it did (:func:`qrs_assumed`)."""
    return _covering(s, with_q) is not None or _assumed(s, with_q)


def _rows(t: torch.Tensor, at: np.ndarray, batch: tuple) -> torch.Tensor:
    """The members ``at`` of ``t``'s batch (flattened), as a ``batch`` of matrices."""
    flat = t.reshape(-1, *t.shape[-2:])
    return flat.index_select(0, torch.as_tensor(at, device=t.device)).reshape(*batch, *t.shape[-2:])


def reduced_side(s: SharedOuter) -> Expr:
    """The side with a shape-only stand-in for ``R_V`` (or ``R_V^H``): what
    :func:`reduced_factors` forms, for costing."""
    stand_in = symbol(f"R_{s.name}", (*s.batch, s.k, s.k), dtype=s.dtype, device=s.view.base.device)
    return s.attached(stand_in, transposed=s.adjoint)


def leaf_qr(s: SharedOuter, with_q: bool) -> tuple[torch.Tensor | None, Expr]:
    """``(Q, side')``: ``Q`` of the shared view (``(..., rows, k)`` read back to the view's
    batch, None unless ``with_q``) and the side with the view replaced by its lazy triangular
    factor, ``R_V`` at a left end, ``R_V^H`` at a right end. The QR is cached on the leaf until
    its tensor changes in place (not while recording grads)."""
    leaf = s.view.base
    cached = leaf.tensor is not None and caches([leaf.tensor])
    found = _covering(s, with_q) if cached else None
    if found is None:
        tall = view_value(s.members, _Memo())
        tall = tall.mH if s.adjoint else tall
        Q, Rt = qr(tall, mode="reduced" if with_q else "r")
        hit = (tensor_state(leaf.tensor), Q if with_q else None, lazy(Rt), lazy(Rt.mH))
        if cached:
            _kept(s, hit)
    elif found[1] is None:
        hit = found[0]
    else:  # the members' rows of a QR kept for more of them
        Q, Rt = found[0][1] if with_q else None, _rows(found[0][2].tensor, found[1], s.batch)
        hit = (None, None if Q is None else _rows(Q, found[1], s.batch), lazy(Rt), lazy(Rt.mH))
    Q = hit[1]
    if Q is not None and s.spread is not None:
        Q = apply_key(Q, s.spread, range(Q.shape[-2]), range(Q.shape[-1]))
    return Q, s.attached(hit[3] if s.adjoint else hit[2])


def _side_flops(side: Expr, s: SharedOuter | None, adjoint: bool, vectors: bool,
                qr_free: bool = False) -> float:
    """FLOPs of reducing one side (``(..., rows, r)`` seen from its outer end) to its ``r x r``
    triangular factor, plus applying its orthonormal factor to an ``r``-wide basis when
    ``vectors``: directly, or (``s``) through the shared leaf's QR."""
    rows, r = (side.shape[-1], side.shape[-2]) if adjoint else (side.shape[-2], side.shape[-1])
    batch = math.prod(side.shape[:-2])
    basis = 2 * rows * r * r if vectors and rows > r else 0
    if s is None:
        return plan_canon(canonical(side)).flops + batch * (side_qr_flops(rows, r, vectors) + basis)
    shapes = [f.shape for f in canonical(side).terms[0].factors]
    shapes[-1 if adjoint else 0] = (*s.view.shape[:-2], s.k, s.k)
    itemsize = side.dtype.itemsize
    form = plan_chain(tuple(shapes), itemsize).flops
    once = 0 if qr_free or qr_is_cached(s, vectors) else s.count * qr_flops(s.rows, s.k, vectors)
    per = side_qr_flops(s.k, r, vectors) + ((2 * s.k * r * r if s.k > r else 0) + 2 * rows * s.k * r
                                            if vectors else 0)
    return once + form + batch * per


def outer_reductions(x: Expr, vectors: bool) -> tuple[SharedOuter | None, SharedOuter | None]:
    """For each side of ``factor(x)``, the shared outer view to replace by its triangular
    factor, where that costs fewer FLOPs (a QR already cached costs nothing): with one
    matrix the direct route stays, with a batch sharing a leaf the shared QR wins."""
    L, R = factor(x)
    if is_identity(L) or is_identity(R):
        return None, None
    out: list[SharedOuter | None] = []
    for side, adjoint in ((L, False), (R, True)):
        s = shared_outer(side, adjoint)
        direct = _side_flops(side, None, adjoint, vectors)
        same_qr = s is not None and any(  # the other side's QR, of the same leaf's matrix
            o is not None and o.view.base is s.view.base and qr_key(o) == qr_key(s) for o in out)
        if s is not None and _side_flops(side, s, adjoint, vectors, same_qr) >= direct:
            s = None
        out.append(s)
    return out[0], out[1]


def block_reductions(x: Expr, vectors: bool) -> list[SharedOuter]:
    """The outer views whose QRs a run of ``x`` cut into blocks factorises before the blocks, so
    that each block reads them: those :func:`outer_reductions` takes, and the outer view of a
    side that ``x``'s batch broadcasts (``W_V[:, None]`` in all pairs), whose members several
    blocks read."""
    out = [s for s in outer_reductions(x, vectors) if s is not None]
    L, R = factor(x)
    if is_identity(L) or is_identity(R):
        return out
    taken = {s.adjoint for s in out}
    for side, adjoint in ((L, False), (R, True)):
        if adjoint not in taken and math.prod(side.shape[:-2]) < math.prod(x.shape[:-2]):
            s = _outer_view(side, adjoint)
            out.extend([] if s is None else [s])
    return out


def reduced_factors(x: Expr, vectors: bool) -> tuple[Expr, Expr, torch.Tensor | None, torch.Tensor | None]:
    """``(L', R', Q_L, Q_R)`` with ``L = Q_L @ L'`` and ``R = R' @ Q_R^H``, ``Q_L``, ``Q_R``
    with orthonormal columns (None: that side is unchanged), so ``L' R'`` has ``X``'s
    singular values. ``Q`` s are formed only when ``vectors``."""
    L, R = factor(x)
    left, right = outer_reductions(x, vectors)
    QL = QR = None
    if left is not None:
        QL, L = leaf_qr(left, vectors)
    if right is not None:
        QR, R = leaf_qr(right, vectors)
    return L, R, QL, QR
