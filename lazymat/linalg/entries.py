"""The entries of an expression that torch's advanced indexing reads where it pairs an index
array on the row or column dim with another (``X[rows, cols]``, ``X[b, rows, cols]``,
``X[b, rows]``): a tensor, computed from what the key reads and never more.

:func:`lazymat.indexing.getitem` lays the key out (one index array per dim of ``X``, as torch
broadcasts them) and asks :func:`picked` for the entries. Where the batch indices are paired
with the rows or columns (``X[b, rows, cols]``: one member per pair), the positions are grouped
by the batch member they read and each group reads only its own entries: ``T`` triples of a
rank-``r`` product cost ``2 T r`` FLOPs (the diagonal of each member's pairs, which
``lm.explain(..., "diagonal")`` costs), not the distinct members times the distinct pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..expr import Expr, Leaf
from ..indexing import apply_key, as_range, copies, make_index
from ..rewrite import canonical, term_expr
from . import norms

__all__ = ["CALL_ENTRIES", "picked", "read_counts"]

# What one more read (a diagonal network, or a block formed) costs beyond its entries, counted in
# entries: its planning and Python, ~0.25 ms, where an entry of a rank-64 float32 product read
# with the others of a large key costs ~0.5 us (its row and column gathered, and its dot):
# benchmarks/results/cpu-index19-per-member.txt. Reading per member pays it once per member.
CALL_ENTRIES = 512


def picked(x: Expr, arrays: list) -> torch.Tensor:
    """The entries of ``x`` that ``arrays`` (one per dim of ``x``, broadcasting together, as
    :func:`lazymat.indexing._layout` has them) read, in their broadcast shape. A sum's product
    terms and lone-factor terms are read apart (:func:`_lone_entries`: one gather of a leaf);
    the rest by :func:`_read`; the pairs of a product for the whole key at once or per batch
    member, whichever reads fewer entries (:func:`read_counts`), each read counted
    ``CALL_ENTRIES`` more."""
    rows, cols = arrays[-2], arrays[-1]
    paired = any(a > 1 and b > 1 for a, b in zip(rows.shape, cols.shape, strict=True))
    terms = canonical(x).terms if paired else ()
    products = [t for t in terms if len(t.factors) > 1]
    if products and len(products) < len(terms):  # the lone factors' terms apart
        alone = [t for t in terms if len(t.factors) == 1]
        parts = [_summed([term_expr(t) for t in products]), _summed([term_expr(t) for t in alone])]
        return sum(picked(p, _arrays_for(p, x, arrays)) for p in parts)
    if paired and not products:
        value = _lone_entries(x, terms, arrays)
        if value is not None:
            return value
    if products:
        whole, grouped, members = read_counts(x, arrays)
        if grouped + members * CALL_ENTRIES < whole + CALL_ENTRIES:
            return _per_member(x, arrays)
    return _read(x, arrays, bool(products))


def read_counts(x: Expr, arrays: list) -> tuple[int, int, int]:
    """The diagonal entries :func:`_read` computes for paired ``arrays`` at once (the distinct
    members of each batch dim times the distinct pairs), summed over the batch members they
    read one at a time (the distinct triples), and the number of those members."""
    flat = [a.reshape(-1) for a in np.broadcast_arrays(*arrays)]  # (as large as the result)
    batch, key = flat[:-2], flat[-2] * max(int(x.shape[-1]), 1) + flat[-1]  # (a pair as one integer)
    members = int(np.prod([len(np.unique(a)) for a in arrays[:-2]]))
    whole = members * len(np.unique(key))
    if not batch:
        return whole, whole, 1
    grouped = np.unique(np.stack([*batch, key]), axis=1).shape[1]
    return whole, grouped, np.unique(np.stack(batch), axis=1).shape[1]


def _per_member(x: Expr, arrays: list) -> torch.Tensor:
    """:func:`_read` once per batch member the positions read (its pairs only), the entries put
    back in the positions' order."""
    flat = [a.reshape(-1) for a in np.broadcast_arrays(*arrays)]
    members, gid = np.unique(np.stack(flat[:-2]), axis=1, return_inverse=True)
    gid = gid.reshape(-1)
    order = np.argsort(gid, kind="stable")
    ends = np.cumsum(np.bincount(gid, minlength=members.shape[1]))
    values, start = [], 0
    for g, end in enumerate(ends.tolist()):
        at = order[start:end]
        own = [np.full(1, m, dtype=np.int64) for m in members[:, g].tolist()]
        values.append(_read(x, [*own, flat[-2][at], flat[-1][at]], True))
        start = end
    value = torch.cat(values)
    back = torch.from_numpy(np.argsort(order)).to(value.device)
    return value[back].reshape(np.broadcast_shapes(*(a.shape for a in arrays)))


def _read(x: Expr, arrays: list, pairs: bool) -> torch.Tensor:
    """The entries ``arrays`` read, from the distinct members of each batch dim they read, by
    the diagonal of ``x[members][:, rows][:, :, cols]`` over the distinct (row, column) pairs
    with ``pairs`` (a closed network, the row-wise dots of ``A[rows]`` and ``B[:, cols]`` of a
    product: no ``len(rows) x len(cols)`` matrix), else from the block of the distinct rows and
    columns."""
    rows, cols = arrays[-2], arrays[-1]
    picks = [np.unique(a) for a in arrays[:-2]]
    at = [np.searchsorted(u, a) for u, a in zip(picks, arrays[:-2], strict=True)]
    batch = tuple(as_range(tuple(u.tolist())) for u in picks)
    if pairs:
        # the distinct pairs in (row, column) order, each as one integer (entries are resolved,
        # non-negative): a sort of P numbers, ~6x faster than numpy's unique over pairs
        width = max(int(x.shape[-1]), 1)
        r, c = np.broadcast_arrays(rows, cols)
        keys, which = np.unique((r * width + c).reshape(-1), return_inverse=True)
        at.append(which.reshape(r.shape))
        square = make_index(x, batch, tuple((keys // width).tolist()), tuple((keys % width).tolist()))
        value = norms.diagonal(square)
    else:
        lines = [np.unique(a) for a in (rows, cols)]
        at += [np.searchsorted(u, a) for u, a in zip(lines, (rows, cols), strict=True)]
        value = make_index(x, batch, *(as_range(tuple(u.tolist())) for u in lines)).to_dense()
    return value[tuple(torch.from_numpy(np.array(a)).to(value.device) for a in at)]


def _lone_entries(x: Expr, terms: tuple, arrays: list) -> torch.Tensor | None:
    """The entries of ``x``, a sum of lone-factor terms, that the paired ``arrays`` read: each
    term's leaf tensor, through its view's transposes and indexes that make views, picked by one
    gather of torch's (its casts applied after, to the picked entries: a cast commutes with
    picking), times its coefficient. ``P`` pairs read ``P`` entries of each term, never the
    ``len(set(rows)) x len(set(cols))`` block of them. None where a term's view copies (an index
    list, a cast of a nested block) or has no data: the caller's general route."""
    value = None
    for t in terms:
        v = t.factors[0]
        if not isinstance(v.base, Leaf) or v.base.tensor is None:
            return None
        if any(op[0] == "index" and copies(*op[1:]) for op in v.ops):
            return None
        tensor, casts = v.base.checked_tensor(), []
        for op in v.ops:
            if op[0] == "mT":
                tensor = tensor.mT
            elif op[0] == "index":
                tensor = apply_key(tensor, op[1], op[2], op[3])
            else:
                casts.append(op)
        first = x.ndim - tensor.ndim  # a term broadcast along the batch reads its one member there
        key = tuple(torch.as_tensor(a if tensor.shape[d - first] == x.shape[d] else np.zeros_like(a),
                                    dtype=torch.long, device=tensor.device)
                    for d, a in enumerate(arrays) if d >= first)
        picked = tensor[key]
        for op in casts:
            picked = picked.to(device=op[1], dtype=op[2])
        picked = t.times(picked)
        value = picked if value is None else value + picked
    return value


def _summed(xs: list[Expr]) -> Expr:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _arrays_for(part: Expr, x: Expr, arrays: list) -> list:
    """``arrays`` (over ``x``'s dims) as they read a term of ``x`` that broadcasts along the batch
    (it lacks leading dims, or has one where ``x`` has more)."""
    first = x.ndim - part.ndim
    zero = np.zeros((1,) * arrays[0].ndim, dtype=np.int64)
    return [a if part.shape[d - first] == x.shape[d] else zero for d, a in enumerate(arrays) if d >= first]


