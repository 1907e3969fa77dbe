"""The canonical form every layer above reads: a sum of scaled products of leaf views.

``canonical(expr)`` returns a :class:`Canon`, a tuple of :class:`Term` s, each
``coef * scalars * V1 @ V2 @ ... @ Vn``. A :class:`View` is a base with a list of ops
applied to it: transposes (``mT``), indexing and casts, pushed down from the expression.
A base is a :class:`~lazymat.expr.Leaf`, or a :class:`Nested` block for what cannot be
flattened into a product: a sum used as a factor, or a concatenation.

Rules (each small, each tested):

- products flatten and multiply their coefficients (exactly: :func:`~lazymat.coefficient.fold`
  keeps a product past the float range as a mantissa and a power of two, applied to the
  value in in-range steps, so ``X * 1e200 * 1e200`` is finite where torch's answer is);
- a transpose reverses the factors and transposes each view (two transposes cancel);
- a scale folds into the coefficient (Python numbers) or the scalar list (0-dim tensors); a
  number scale of a lone ``cat`` whose parts have coefficients into theirs (each part scaled
  once);
- indexing goes to the factors: batch entries to every factor (respecting broadcasting),
  rows to the first factor, columns to the last; an index of a ``cat`` goes into the parts it
  selects from (a slice within one part is that part's slice);
- a cast goes to every view when it is exact and commutes with products: a widening cast
  (``torch.promote_types(src, dst) == dst``: every source value is a target value) or a
  device move, or any cast of a lone view (which is the result). Any other (narrowing,
  complex -> real, float16 <-> bfloat16) applies to the result computed in the source
  dtype, as torch would: ``(A @ B).half()`` is the float64 product rounded once, not a
  float16 product that can overflow;
- a same-kind narrowing cast of anything but a leaf floats outward through the products,
  sums, scales, transposes, indexing and concatenations built on it (:func:`rounded`):
  ``(A @ B).half() @ W`` is ``((A @ B) @ W.float()).half()``, never the rounded ``A @ B``;
- the views all terms of a sum start or end with are taken out of the sum before it is
  stacked, ``A B C + A B D = A B (C + D)`` (``common_factors``);
- a sum of low-rank terms used as a factor becomes two stacked factors
  ``[c1 L1, c2 L2] @ [R1; R2]`` when that is narrower than the matrix (``stack_low_rank``);
- a user's ``cat`` with a factor across its joined dim is distributed over its parts, the
  neighbour split by indexing: ``[X1, X2] @ G = X1 @ G[:n1] + X2 @ G[n1:]`` (one term each);
  one at an outer end takes the rest of the product into its parts: ``[X1; X2] @ G =
  [X1 @ G; X2 @ G]``.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any

import torch

from .coefficient import Wide, chain_fold, fold, number, times
from .expr import (
    Add,
    Cast,
    Concat,
    Expr,
    Index,
    Leaf,
    MatMul,
    Scale,
    Transpose,
    add,
    broadcast_shapes,
    cast,
    cat,
    matmul,
    scale,
    transpose,
)
from .indexing import (
    Gather,
    as_range,
    batch_shape_after,
    compose,
    expanded_dims,
    gather_for_factor,
    is_whole,
    make_index,
    narrowed,
)


class View:
    """``base`` with ``ops`` applied in order; hashable by base identity and ops."""

    __slots__ = ("base", "ops", "shape", "_hash", "plain")

    def __init__(self, base: Leaf | Nested, ops: tuple, shape: tuple):
        self.base = base
        self.ops = ops
        self.shape = tuple(shape)
        self._hash: int | None = None  # computed when first hashed (most views never are)
        self.plain = not ops and isinstance(base, Leaf) and base.tensor is not None  # the tensor itself

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = hash((id(self.base), self.ops))
        return h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, View) and other.base is self.base and other.ops == self.ops

    def with_op(self, op: tuple, shape: tuple) -> View:
        if op == ("mT",) and self.ops and self.ops[-1] == ("mT",):
            return View(self.base, self.ops[:-1], shape)
        return View(self.base, (*self.ops, op), shape)

    def transposed(self) -> View:
        return self.with_op(("mT",), (*self.shape[:-2], self.shape[-1], self.shape[-2]))

    def __repr__(self) -> str:
        return f"View({_base_name(self.base)}, {self.ops}, {self.shape})"


def _base_name(base: Any) -> str:
    if isinstance(base, Leaf):
        return base.name or "leaf"
    return f"<{base.kind}>"


class Term:
    """``coef * prod(scalars) * factors[0] @ ... @ factors[-1]`` (immutable by convention;
    a plain class with slots: one is built per term per evaluation)."""

    __slots__ = ("coef", "scalars", "factors", "shape")

    def __init__(self, coef: complex | float, scalars: tuple, factors: tuple[View, ...], shape: tuple):
        self.coef = coef
        self.scalars = scalars  # 0-dim tensors (kept separate so autograd reaches them)
        self.factors = factors
        self.shape = shape

    def __repr__(self) -> str:
        return f"Term(coef={self.coef!r}, scalars={len(self.scalars)}, factors={self.factors!r})"

    def coefficient(self):
        """``coef * prod(scalars)``: a Python number, or a 0-dim tensor if there are scalars; a
        coefficient past the float range as inf or 0 (:func:`~lazymat.coefficient.number`). To
        scale a term's value, :meth:`times` keeps the range."""
        k = number(self.coef)
        for s in self.scalars:
            k = s * k
        return k

    def times(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (the product's value) times the coefficient as torch multiplies by each
        multiplier in turn: the 0-dim tensors one by one (their product could overflow where
        each step does not), then the folded number in in-range steps
        (:func:`~lazymat.coefficient.times`): finite wherever the exact answer is. A 0-dim ``x``
        (a trace) is scaled as the matrix it stands for: torch promotes a matrix by a 0-dim
        tensor only to a higher kind (``float32 X * float64 t`` is float32), two 0-dim tensors
        to the wider dtype."""
        if self.scalars and not x.ndim:
            return times(x.reshape(1), self.coef, self.scalars).reshape(())
        return times(x, self.coef, self.scalars)

    @property
    def has_coefficient(self) -> bool:
        return bool(self.scalars) or self.coef != 1

    @property
    def dims(self) -> list[int]:
        """Matrix dims along the chain: ``d0, d1, ..., dn``."""
        return [self.factors[0].shape[-2], *(f.shape[-1] for f in self.factors)]


class Canon:
    """A sum of terms with the expression's shape, dtype and device, and what the layers
    above cache on it: its factors inside a product, its plans, its sharing analysis."""

    __slots__ = ("terms", "shape", "dtype", "device", "rounds", "_as_factors", "_plans", "_sharing")

    def __init__(self, terms: tuple[Term, ...], shape: tuple, dtype: torch.dtype, device: torch.device):
        self.terms = terms
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self.rounds: Canon | None = None  # the wider form this one rounds (:func:`rounded`), if any
        self._as_factors: tuple | None = None
        self._plans: dict = {}  # optimizer -> Plan (plan.py)
        self._sharing: tuple | None = None  # execute.py

    def __repr__(self) -> str:
        return f"Canon(terms={self.terms!r}, shape={self.shape}, dtype={self.dtype})"


class Nested:
    """A block evaluated on its own: ``kind`` 'sum' (one Canon) or 'cat' (parts along axis);
    ``stack``: a cat of stacked low-rank factors (:func:`stack_low_rank`), not a user's."""

    __slots__ = ("kind", "parts", "axis", "shape", "dtype", "device", "stack")

    def __init__(self, kind: str, parts: tuple[Canon, ...], axis: int, shape: tuple, dtype, device,
                 stack: bool = False):
        self.kind, self.parts, self.axis = kind, parts, axis
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self.stack = stack


def broadcast_batch(shapes: list[tuple]) -> tuple:
    """The broadcast batch dims (all but the last two) of ``shapes``."""
    batch = shapes[0][:-2]
    for s in shapes:
        if s[:-2] != batch:
            return broadcast_shapes(*(s[:-2] for s in shapes))
    return tuple(batch)


def _term(coef, scalars, factors) -> Term:
    batch = broadcast_batch([f.shape for f in factors])
    if len(factors) > 1 and batch:
        factors = _narrowed_expands(factors, batch)
    return Term(coef, scalars, tuple(factors), (*batch, factors[0].shape[-2], factors[-1].shape[-1]))


def _batch_gather(f: View) -> tuple[int, Gather] | None:
    """``(position in f.ops, key)`` of the one index op of ``f`` whose batch key is a
    :class:`Gather`, else None."""
    found = [(i, op[1]) for i, op in enumerate(f.ops) if op[0] == "index"]
    return found[0] if len(found) == 1 and isinstance(found[0][1], Gather) else None


def _narrowed_expands(factors, batch: tuple) -> tuple[View, ...]:
    """``factors`` with each batch gather that only expands along a dim another factor carries
    cut to size 1 there (:func:`lazymat.indexing.narrowed`): the product broadcasts it as it
    broadcasts ``x[:, None]``, so its products run once per distinct member, not once per
    expanded copy (``W[a] @ V[b]`` with ``a, b = torch.meshgrid(...)``: 12, not 144, members
    of ``W``'s products). The term's batch is unchanged: another factor spans each cut dim."""
    nb = len(batch)
    gathers = [_batch_gather(f) for f in factors]
    if all(g is None for g in gathers):
        return tuple(factors)
    expands, carries = [], []
    for f, g in zip(factors, gathers, strict=True):
        first = nb - (len(f.shape) - 2)
        only = {first + j for j in expanded_dims(g[1])} if g is not None else set()
        expands.append(only)
        carries.append({first + j for j, n in enumerate(f.shape[:-2]) if n != 1} - only)
    out = list(factors)
    for i, (f, g) in enumerate(zip(factors, gathers, strict=True)):
        cut = {j for j in expands[i] if any(j in c for k, c in enumerate(carries) if k != i)}
        if not cut:
            continue
        first = nb - (len(f.shape) - 2)
        at, key = g
        new = narrowed(key, {j - first for j in cut})
        ops = (*f.ops[:at], ("index", new, *f.ops[at][2:]), *f.ops[at + 1:])
        shape = (*(1 if first + j in cut else n for j, n in enumerate(f.shape[:-2])), *f.shape[-2:])
        out[i] = View(f.base, ops, shape)
    return tuple(out)


# ---- rules --------------------------------------------------------------------------------
def _leaf(node: Leaf) -> Canon:
    v = View(node, (), tuple(node.shape))
    return Canon((_term(1.0, (), (v,)),), tuple(node.shape), node.dtype, node.device)


# Each rule builds the form of ``node`` from its children's forms, in ``dtype``: the node's own, or
# the wider one a narrowing cast floats out in (:func:`_floated`).
def _transpose(node: Transpose, dtype: torch.dtype, c: Canon) -> Canon:
    return _transposed(c, tuple(node.shape), dtype)


def _transposed(c: Canon, shape: tuple, dtype: torch.dtype) -> Canon:
    terms = tuple(
        _term(t.coef, t.scalars, tuple(f.transposed() for f in reversed(t.factors))) for t in c.terms
    )
    return Canon(terms, shape, dtype, c.device)


def _scale(node: Scale, dtype: torch.dtype, c: Canon) -> Canon:
    if c.dtype != dtype:  # a promoting scale (real * 1j): its views read in the wider dtype too,
        c = _widened(c, dtype)  # so that a product with a factor of that dtype is of one dtype
    k = node.coef
    if isinstance(k, torch.Tensor):
        terms = tuple(Term(t.coef, (*t.scalars, k), t.factors, t.shape) for t in c.terms)
    else:
        terms = tuple(_scaled_term(t, k, c.dtype is dtype) for t in c.terms)
    return Canon(terms, tuple(node.shape), dtype, c.device)


def _scaled_term(t: Term, k: Any, same_dtype: bool) -> Term:
    """``k * t`` for a number ``k``: folded into the coefficient, and for a lone user's cat (in
    the same dtype) moved into its parts' coefficients when they have some (:func:`_into_parts`)."""
    out = Term(fold(t.coef, k), t.scalars, t.factors, t.shape)
    if len(t.factors) != 1 or not same_dtype or _joined_axis(t.factors[0]) is None:
        return out
    return _into_parts(out)


def _add(node: Add, dtype: torch.dtype, a: Canon, b: Canon) -> Canon:
    return Canon(a.terms + b.terms, tuple(node.shape), dtype, node.device)


def _index(node: Index, dtype: torch.dtype, c: Canon) -> Canon:
    return _index_form(c, node.key, tuple(node.shape), dtype)


def _index_form(c: Canon, key: tuple, shape: tuple, dtype: torch.dtype) -> Canon:
    """``c[key]`` (a normalised ``(batch, row, col)``): the rows index the first factor of each
    term, the columns the last, the batch every factor. A plain view of a ``cat`` takes the
    index into its parts (:func:`_index_cat`): the parts it selects nothing from are never run."""
    batch, row, col = key
    terms = []
    for t in c.terms:
        n = len(t.factors)
        tkey = _batch_key_for(t.shape, c.shape, batch)
        factors: list = []
        coef, scalars = t.coef, t.scalars
        expanded = None
        for i, f in enumerate(t.factors):
            fkey = _batch_key_for(f.shape, t.shape, tkey)
            r = row if i == 0 else range(f.shape[-2])
            cl = col if i == n - 1 else range(f.shape[-1])
            if n == 1 and (part := _index_cat(f, fkey, r, cl)) is not None:
                expanded = part
                continue
            k, ks, views = _indexed(f, fkey, r, cl)
            factors.extend(views)
            coef, scalars = fold(coef, k), (*scalars, *ks)
        if expanded is not None:  # the term is the cat alone: its selected parts' terms
            terms.extend(Term(fold(coef, pt.coef), (*scalars, *pt.scalars), pt.factors, pt.shape)
                         for pt in expanded.terms)
        else:
            terms.append(_term(coef, scalars, tuple(factors)))
    return Canon(tuple(terms), shape, dtype, c.device)


def _indexed(v: View, key: tuple, row: Any, col: Any) -> tuple[Any, tuple, list[View]]:
    """``(coef, scalars, views)`` standing for ``v[key, row, col]`` inside a product: a cat's
    indexed form (:func:`_index_cat`) as its one term's factors, or as a sum block; any other
    view indexed as it is."""
    part = _index_cat(v, key, row, col) if type(v.base) is Nested else None
    if part is None:
        return 1.0, (), [_index_view(v, key, row, col)]
    if len(part.terms) == 1:  # one term: its factors join the product
        pt = part.terms[0]
        return pt.coef, pt.scalars, list(pt.factors)
    nested = Nested("sum", (part,), 0, part.shape, part.dtype, part.device)
    return 1.0, (), [View(nested, (), part.shape)]


def _index_cat(v: View, key: tuple, row: Any, col: Any) -> Canon | None:
    """The form of ``v[key, row, col]`` with the index taken into the parts, when ``v`` is a
    plain (or transposed) view of a ``cat`` block: the batch entries and the entry across the
    joined axis index every part; the entry along it is split into runs within one part
    (:func:`_runs`), each indexing its part, and the runs are joined again. One run is that
    part's indexed form itself: ``cat([A @ B, C @ D], dim=-1)[:, :10]`` is ``A @ B[:, :10]``,
    ``cat([A @ B, C @ D], dim=-1)[i]`` joins ``A[i] @ B`` and ``C[i] @ D``; a part the index
    selects nothing from never runs. Blocks a budget slices along the joined axis then differ
    in cost; :func:`cut_points` says where (the slicing plan costs each kind of block). None
    for any other view, or for an empty entry along the axis."""
    base = v.base
    if not isinstance(base, Nested) or base.kind != "cat":
        return None
    if v.ops == (("mT",),):  # a transposed cat: the cat indexed with rows and columns swapped
        form = _index_cat(View(base, (), base.shape), key, col, row)
        if form is None:
            return None
        return _transposed(form, (*form.shape[:-2], form.shape[-1], form.shape[-2]), form.dtype)
    if v.ops:
        return None
    along = col if base.axis == -1 else row
    if len(along) == 0:
        return None
    across = row if base.axis == -1 else col
    forms = []
    runs = _runs([p.shape[base.axis] for p in base.parts], along)
    if len({k for k, _ in runs}) < len(base.parts):
        _note_dropped_part()
    for k, sel in runs:
        part = base.parts[k]
        r, c = (across, sel) if base.axis == -1 else (sel, across)
        pkey = _batch_key_for(part.shape, base.shape, key)
        pshape = (*batch_shape_after(part.shape[:-2], pkey), len(r), len(c))
        forms.append(_index_form(part, (pkey, r, c), pshape, part.dtype))
    shape = (*batch_shape_after(base.shape[:-2], key), len(row), len(col))
    forms = _spanning(forms, shape[:-2])
    if len(forms) == 1:
        return forms[0]
    nested = Nested("cat", tuple(forms), base.axis, shape, base.dtype, base.device, stack=base.stack)
    return Canon((_term(1.0, (), (View(nested, (), shape),)),), shape, base.dtype, base.device)


def _spanning(forms: list[Canon], batch: tuple) -> list[Canon]:
    """The indexed parts of a cat, ``forms``, the first one broadcast to the cat's ``batch`` when
    together they span less of it (the part that carried a batch dim indexed away): a product,
    a factor or a reduction reads a cat as its parts, and would lose that dim. Broadcast as an
    index of the part's expression that repeats its entries (torch's ``x[None][ix_(...)]``)."""
    if tuple(broadcast_batch([f.shape for f in forms])) == tuple(batch):
        return forms
    x = to_expr(forms[0])
    if len(x.shape) - 2 < len(batch):
        x = x[(None,) * (len(batch) - len(x.shape) + 2)]
    entries = []
    for d, size in enumerate(batch):
        entry = torch.arange(size) if x.shape[d] == size else torch.zeros(size, dtype=torch.long)
        entries.append(entry.reshape([size if k == d else 1 for k in range(len(batch))]))
    return [canonical(x[tuple(entries)]), *forms[1:]]


# Whether some form has left out a cat part its index selects nothing from (whose leaves then no
# answer reads: lazymat.unread gives them zero gradients). Until one has, no expression holds an
# unread leaf, and the answers skip looking for one.
DROPPED_PARTS = False


def _note_dropped_part() -> None:
    global DROPPED_PARTS
    DROPPED_PARTS = True


def _runs(sizes: list[int], along: range | tuple) -> list[tuple[int, range | tuple]]:
    """``along`` (indices into parts of ``sizes`` laid end to end) as runs of consecutive
    entries within one part: ``(part, its local indices)``, in order. A range of positive step
    is cut by arithmetic (a 50000-long slice costs one step per part, not per entry)."""
    out: list[tuple[int, range | tuple]] = []
    if isinstance(along, range) and along.step > 0:
        offset = 0
        for k, size in enumerate(sizes):
            lo, hi = max(along.start, offset), min(along.stop, offset + size)
            first = along.start + -(-(lo - along.start) // along.step) * along.step
            if first < hi:
                out.append((k, range(first - offset, hi - offset, along.step)))
            offset += size
        return out
    ends = list(itertools.accumulate(sizes))
    for i in along:
        k = bisect.bisect_right(ends, i)
        local = i - (ends[k - 1] if k else 0)
        if out and out[-1][0] == k:
            out[-1][1].append(local)
        else:
            out.append((k, [local]))
    return [(k, as_range(tuple(local))) for k, local in out]


def _index_view(v: View, key: tuple, row: Any, col: Any) -> View:
    if (row, col) == (range(v.shape[-2]), range(v.shape[-1])) and is_whole(key, tuple(v.shape[:-2])):
        return v
    shape = (*batch_shape_after(v.shape[:-2], key), len(row), len(col))
    last = v.ops[-1] if v.ops else None
    if last is not None and last[0] == "index":  # an index of an index is one index
        return View(v.base, (*v.ops[:-1], ("index", *compose(last[1:], (key, row, col)))), shape)
    return v.with_op(("index", key, row, col), shape)


def _batch_key_for(fshape: tuple, full_shape: tuple, key: tuple) -> tuple:
    """The batch part of ``key`` (written for ``full_shape``) as it applies to one factor.

    The factor's batch dims are the trailing ones of the full batch (torch broadcasting).
    Entries for dims the factor lacks are dropped; on a factor dim of size 1 that
    broadcasts, an int selects 0 and a slice or list keeps the 1 (it still broadcasts)."""
    nfull, nf = len(full_shape) - 2, len(fshape) - 2
    first = nfull - nf  # full-batch position of the factor's first batch dim
    if isinstance(key, Gather):
        return gather_for_factor(key, fshape[:-2], full_shape[:-2])
    out: list = []
    dim = 0
    for e in key:
        if e is None:
            if dim >= first:
                out.append(None)
            continue
        if dim >= first:
            size = fshape[dim - first]
            if size == 1 and full_shape[dim] != 1:
                e = 0 if isinstance(e, int) else range(0, 1) if len(e) > 0 else range(0, 0)
            out.append(e)
        dim += 1
    return tuple(out)


def cast_commutes(src: torch.dtype, dst: torch.dtype) -> bool:
    """True when casting each factor to ``dst`` is as good as casting the result: the cast
    is exact on every value (widening, or the same dtype on another device)."""
    return torch.promote_types(src, dst) == dst


def narrows(src: torch.dtype, dst: torch.dtype) -> bool:
    """True for a same-kind narrowing cast: float64 -> float32, float16 or bfloat16, float32 ->
    float16 or bfloat16, complex128 -> complex64 (every ``dst`` value is a ``src`` value; not
    complex -> real, nor float16 <-> bfloat16, nor integers)."""
    return (src != dst and src.is_complex == dst.is_complex and (dst.is_floating_point or dst.is_complex)
            and torch.promote_types(src, dst) == src)


def _cast(node: Cast, dtype: torch.dtype, c: Canon) -> Canon:
    single = len(c.terms) == 1 and len(c.terms[0].factors) == 1 and not c.terms[0].has_coefficient
    if node.device == c.device and narrows(c.dtype, dtype) and not (
            single and isinstance(c.terms[0].factors[0].base, Leaf)):  # (a leaf's view: cast the leaf)
        return rounded(c if c.rounds is None else c.rounds, dtype)  # once, from the widest form
    op = ("to", str(node.device), dtype)
    if not (single or cast_commutes(c.dtype, dtype)):  # cast the result, in c's dtype
        nested = Nested("sum", (c,), 0, c.shape, c.dtype, c.device)
        view = View(nested, (op,), tuple(node.shape))
        return Canon((_term(1.0, (), (view,)),), tuple(node.shape), dtype, node.device)
    return _cast_terms(c, op, tuple(node.shape))


def _cast_terms(c: Canon, op: tuple, shape: tuple) -> Canon:
    """``c`` with the cast ``op`` on every view (exact, or ``c`` a lone view); a user's ``cat``
    takes an exact one into its parts (so it stays a cat of low-rank parts, :func:`_joined_axis`)."""
    exact = cast_commutes(c.dtype, op[2])
    terms = tuple(Term(t.coef, t.scalars, tuple(_cast_view(f, op, exact) for f in t.factors), t.shape)
                  for t in c.terms)
    return Canon(terms, shape, op[2], torch.device(op[1]))


def _cast_view(f: View, op: tuple, exact: bool) -> View:
    """``f`` cast by ``op``: a plain or transposed view of a user's ``cat`` as the cat of its cast
    parts when the cast is ``exact`` (any other is elementwise on the cat formed), any other view
    with the op."""
    base = f.base
    if not exact or _joined_axis(f) is None:
        return f.with_op(op, f.shape)
    parts = tuple(_cast_terms(p, op, p.shape) for p in base.parts)
    nested = Nested("cat", parts, base.axis, base.shape, op[2], torch.device(op[1]))
    return View(nested, f.ops, f.shape)


def _concat(node: Concat, dtype: torch.dtype, *parts: Canon) -> Canon:
    nested = Nested("cat", parts, node.axis, tuple(node.shape), dtype, node.device)
    view = View(nested, (), tuple(node.shape))
    return Canon((_term(1.0, (), (view,)),), tuple(node.shape), dtype, node.device)


# ---- narrowing casts float outward --------------------------------------------------------
def rounded(form: Canon, dtype: torch.dtype) -> Canon:
    """``form`` rounded once to the narrower ``dtype`` (:func:`narrows`): one view of the block
    ``form`` with the cast, whose ``rounds`` is ``form``. Nodes over it take the cast outward
    (:func:`_floated`), so a narrowing cast of a product inside a product never forms the
    rounded product: ``(A @ B).half() @ W`` is ``((A @ B) @ W.float()).half()``."""
    nested = Nested("sum", (form,), 0, form.shape, form.dtype, form.device)
    view = View(nested, (("to", str(form.device), dtype),), form.shape)
    out = Canon((_term(1.0, (), (view,)),), form.shape, dtype, form.device)
    out.rounds = form
    return out


def _widened(c: Canon, dtype: torch.dtype) -> Canon:
    """``c`` cast to the wider ``dtype`` view by view (exact: see :func:`cast_commutes`)."""
    if c.dtype == dtype:
        return c
    return _cast_terms(c, ("to", str(c.device), dtype), c.shape)


def _wide_dtype(node: Expr, forms: list[Canon]) -> torch.dtype | None:
    """The dtype ``node`` is computed in when some of its ``forms`` round a wider form: the
    node's dtype promoted with the wider forms', or None when the node's dtype is not a
    same-kind narrowing of it (nothing floats out)."""
    wide = node.dtype
    for f in forms:
        if f.rounds is not None:
            wide = torch.promote_types(wide, f.rounds.dtype)
    return wide if narrows(wide, node.dtype) else None


def _floated(node: Expr, forms: list[Canon]) -> Canon | None:
    """The form of ``node`` (a transpose, index, scale, sum or concatenation) over ``forms``,
    some of which round a wider form: the node's rule on the wider forms (the others widened,
    exactly) and the result rounded once, in place of a rounded matrix formed whole. Exact for
    transposes, indexing and concatenation (rounding is elementwise); a scale or sum is rounded
    once instead of once per operand. None when nothing floats out (:func:`_wide_dtype`)."""
    wide = _wide_dtype(node, forms)
    if wide is None:
        return None
    forms = [_widened(f if f.rounds is None else f.rounds, wide) for f in forms]
    return rounded(_RULES[type(node)](node, wide, *forms), node.dtype)


# ---- sums as factors ----------------------------------------------------------------------
def split_point(term: Term) -> int:
    """Index ``j`` of the narrowest chain dim ``d_j`` (ties: the most central one)."""
    dims = term.dims
    n = len(dims) - 1
    return min(range(len(dims)), key=lambda j: (dims[j], abs(2 * j - n)))


def common_factors(c: Canon) -> Canon:
    """``c`` with the views every term starts (``P``) and ends (``S``) with taken out:
    ``P @ (sum of the middles) @ S`` as one term, ``A B C + A B D = A B (C + D)``, so that a
    core read off it is no wider than the sum's rank allows. Each middle keeps its own
    coefficient (exact); the middles' sum is itself factored and stacked (:func:`as_factors`).
    A middle is never empty (that would need an identity): where one would be, one common
    view is left in the middles, on the side that keeps the outer chain narrower.
    Returns ``c`` itself when the terms share no outer view."""
    terms = c.terms
    if len(terms) < 2:
        return c
    first = terms[0].factors
    shortest = min(len(t.factors) for t in terms)
    p = 0
    while p < shortest and all(t.factors[p] == first[p] for t in terms):
        p += 1
    s = 0
    while s < shortest - p and all(t.factors[-1 - s] == first[-1 - s] for t in terms):
        s += 1
    if p + s == shortest:  # some middle would be empty
        options = [(p - 1, s)] * (p > 0) + [(p, s - 1)] * (s > 0)
        p, s = min(options, key=lambda o: _outer_width(first, *o))
    if p + s == 0:
        return c
    middles = tuple(_term(t.coef, t.scalars, t.factors[p : len(t.factors) - s]) for t in terms)
    inner = Canon(middles, (*broadcast_batch([t.shape for t in middles]), first[p].shape[-2],
                            first[len(first) - s - 1].shape[-1]), c.dtype, c.device)
    term = _term(1.0, (), (*first[:p], *as_factors(inner), *first[len(first) - s :]))
    return Canon((term,), c.shape, c.dtype, c.device)


def _outer_width(factors: tuple[View, ...], p: int, s: int) -> int:
    """Narrowest dim of ``P @ M @ S`` outside the middle ``M`` (its two ends included)."""
    n = len(factors)
    dims = [factors[0].shape[-2], *(f.shape[-1] for f in factors)]
    return min(dims[: p + 1] + dims[n - s :])


def stack_low_rank(c: Canon) -> tuple[Canon, Canon] | None:
    """``(L, R)`` canons with ``sum(c) == L @ R`` by stacking each term's narrowest split,
    or None when the stacked width would not be below ``min(m, n)``."""
    m, n = c.shape[-2], c.shape[-1]
    splits = [split_point(t) for t in c.terms]
    width = sum(t.dims[j] for t, j in zip(c.terms, splits, strict=True))
    if width >= min(m, n) or any(j in (0, len(t.factors)) for t, j in zip(c.terms, splits, strict=True)):
        return None
    lefts, rights = [], []
    for t, j in zip(c.terms, splits, strict=True):
        lt = _term(t.coef, t.scalars, t.factors[:j])
        rt = _term(1.0, (), t.factors[j:])
        lefts.append(Canon((lt,), lt.shape, c.dtype, c.device))
        rights.append(Canon((rt,), rt.shape, c.dtype, c.device))
    # each stack has the broadcast batch of its own parts (which may be narrower than the
    # sum's): views of the stack are keyed on this shape, and to_expr rebuilds it from them
    lshape = (*broadcast_batch([p.shape for p in lefts]), m, width)
    rshape = (*broadcast_batch([p.shape for p in rights]), width, n)
    lcat = Nested("cat", tuple(lefts), -1, lshape, c.dtype, c.device, stack=True)
    rcat = Nested("cat", tuple(rights), -2, rshape, c.dtype, c.device, stack=True)
    L = Canon((_term(1.0, (), (View(lcat, (), lshape),)),), lshape, c.dtype, c.device)
    R = Canon((_term(1.0, (), (View(rcat, (), rshape),)),), rshape, c.dtype, c.device)
    return L, R


def as_factors(c: Canon) -> tuple[View, ...]:
    """The views that stand for ``c`` inside a product (cached on ``c``)."""
    if c._as_factors is None:
        common = common_factors(c)
        if len(common.terms) == 1:
            c._as_factors = common.terms[0].factors
        else:
            stacked = stack_low_rank(c)
            if stacked is not None:
                c._as_factors = stacked[0].terms[0].factors + stacked[1].terms[0].factors
            else:
                nested = Nested("sum", (c,), 0, c.shape, c.dtype, c.device)
                c._as_factors = (View(nested, (), c.shape),)
    return c._as_factors


# ---- driver -------------------------------------------------------------------------------
def canonical(root: Expr) -> Canon:
    """The canonical form of ``root`` (cached on the node; iterative over the DAG).

    A run of nested ``@`` is flattened in one pass (its inner products, read by nothing
    else, get no form of their own), and forms are dropped once their last reader has
    used them: a chain of n successive ``@`` costs O(n), not O(n^2). A leaf read by a
    product enters it as a view directly (no form of its own).

    A leaf's form is not cached: it would hold a view of the leaf itself, a reference cycle
    that keeps the tensor alive after ``del`` until the cyclic GC runs (and it is O(1))."""
    cache = root._cache_dict  # read without making one (see Expr._cache)
    cached = cache.get("canon") if cache else None
    if cached is not None:
        return cached
    if not root.children:  # a leaf
        return _RULES[type(root)](root)
    if type(root) is MatMul:
        form = _leaf_product(root)
        if form is not None:
            root._cache["canon"] = form
            return form
    elif type(root) in _VIEWING:
        form = _viewed_product(root)
        if form is not None:
            root._cache["canon"] = form
            return form
    # One pass over the DAG's edges: how many readers each non-leaf node has, and which
    # products are read only by one product (flattened into it, no form of their own).
    readers: dict[int, int] = {}
    inner: set[int] = set()
    nodes = [root]
    stack = [root]
    while stack:
        node = stack.pop()
        product = isinstance(node, MatMul)
        for ch in node.children:
            if not ch.children:  # leaves: formed where they are read
                continue
            u = ch.uid
            count = readers.get(u)
            if count is None:
                readers[u] = 1
                nodes.append(ch)
                stack.append(ch)
                if product and isinstance(ch, MatMul):
                    inner.add(u)
            else:
                readers[u] = count + 1
                inner.discard(u)
    # a node is built after its children, so uids order children before parents
    order = sorted([n for n in nodes if n.uid not in inner], key=_uid)
    done: dict[int, Canon] = {}

    def release(child: Expr) -> None:  # a form is dropped once its last reader has used it
        u = child.uid
        left = readers.get(u)
        if left == 1:
            done.pop(u, None)
        elif left is not None:
            readers[u] = left - 1

    for node in order:
        cache = node._cache_dict
        hit = cache.get("canon") if cache else None
        if hit is None:
            if isinstance(node, MatMul):
                hit = _product(node, inner, done, release)
            else:
                forms = [_form(ch, done) for ch in node.children]
                for f in forms:
                    if f.rounds is not None and type(node) is not Cast:  # a narrowing cast floats out
                        hit = _floated(node, forms)
                        break
                if hit is None:
                    hit = _RULES[type(node)](node, node.dtype, *forms)
                for ch in node.children:
                    release(ch)
        done[node.uid] = hit
    root._cache["canon"] = form = done[root.uid]
    return form


def leaf_chain(root: MatMul) -> list[Leaf] | None:
    """The leaves, left to right, of a run of ``@`` over leaves alone (the commonest expression),
    read in one walk with no reader counts; None as soon as the run holds anything else. A
    chain built left to right (``A @ B @ C``: every right operand a leaf) is read down its left
    spine alone."""
    leaves: list[Leaf] = []
    x = root
    while type(x) is MatMul:
        x, right = x.children
        if type(right) is not Leaf:
            return _nested_leaf_chain(root) if type(right) is MatMul else None
        leaves.append(right)
    if type(x) is not Leaf:
        return None
    leaves.append(x)
    leaves.reverse()
    return leaves


def _nested_leaf_chain(root: MatMul) -> list[Leaf] | None:
    """:func:`leaf_chain` of a run of ``@`` with products on the right (``A @ (B @ C)``)."""
    operands = _matmul_operands(root)
    return operands if all(type(x) is Leaf for x in operands) else None


def transposed_leaf_chain(root: MatMul) -> tuple[list[Leaf], tuple[bool, ...]] | None:
    """``(leaves, transposed)`` of a run of ``@`` whose operands are leaves or transposed leaves
    (``lazy(A) @ lazy(B).mT``), left to right, ``transposed[i]`` when the ``i``-th is read as
    ``.mT`` (its canonical view is the leaf with the one op ``("mT",)``); None for any other
    operand."""
    leaves, transposed = [], []
    for x in _matmul_operands(root):
        flip = type(x) is Transpose
        if flip:
            x = x.children[0]
        if type(x) is not Leaf:
            return None
        leaves.append(x)
        transposed.append(flip)
    return leaves, tuple(transposed)


def scaled_leaf_chain(root: MatMul) -> tuple[list[Leaf], list[bool], list] | None:
    """``(leaves, transposed, coefs)`` of a run of ``@`` whose operands are leaves under
    transposes and multiples in the leaf's dtype (``(c * A) @ B @ (k * C).mT``), left to right:
    ``transposed[i]`` when the ``i``-th is read as ``.mT``, and the multipliers in the order the
    form folds them (:func:`_product`): each operand's numbers folded into one first, from its
    leaf outward, as its own form folds them (:func:`_scaled_term`), its 0-dim tensors kept
    apart, the operands left to right. None for any other operand. A run built left to right
    (every right operand a leaf's) is read down its left spine alone, as :func:`leaf_chain` reads."""
    operands: list[Expr] | None = []
    x = root
    while type(x) is MatMul:
        x, right = x.children
        if type(right) is MatMul:
            operands = None  # (products on the right: every operand read in order)
            break
        operands.append(right)
    if operands is None:
        operands = _matmul_operands(root)
    else:
        operands.append(x)
        operands.reverse()
    leaves, transposed, coefs = [], [], []
    numbers = 0  # operands whose numbers fold to other than 1 (only two or more can cancel)
    for x in operands:
        if type(x) is Leaf:  # (the commonest operand)
            leaves.append(x)
            transposed.append(False)
            continue
        x, flip, own = _peeled(x)
        if type(x) is not Leaf:
            return None
        if own:
            k: Any = 1.0
            for c in reversed(own):  # (read from the outside in, folded from the leaf out)
                if isinstance(c, torch.Tensor):
                    coefs.append(c)
                else:
                    k = fold(k, c)
            coefs.append(k)
            if k != 1 or type(k) is complex:
                numbers += 1
        leaves.append(x)
        transposed.append(flip)
    if numbers > 1 and len(leaves) > 2 and _reaches_far(coefs, len(leaves), root.dtype):
        return None  # scales that cancel around a sub-product: the form rescales the term
    return leaves, transposed, coefs


def _peeled(x: Expr) -> tuple[Expr, bool, list]:
    """``(inner, flip, coefs)``: ``x`` under its transposes and multiples in its own dtype, whether
    those transpose it, and their multipliers, outermost first."""
    flip, coefs = False, []
    while type(x) is Transpose or type(x) is Scale and x.dtype is x.children[0].dtype:
        if type(x) is Transpose:
            flip = not flip
        else:
            coefs.append(x.coef)
        x = x.children[0]
    return x, flip, coefs


def _reaches_far(coefs: list, factors: int, dtype: torch.dtype) -> bool:
    """Whether the operands' numbers in ``coefs`` (a run's, :func:`scaled_leaf_chain`) fold, as
    the form folds them (:func:`_product`), to a coefficient marked with a reach, which
    :func:`lazymat.coefficient.chain_fold` records only where it is far for ``dtype``: a
    sub-product far from what eager forms, which the form rescales."""
    numbers = [k for k in coefs if not isinstance(k, torch.Tensor) and (k != 1 or type(k) is complex)]
    folded = chain_fold(numbers, factors, dtype)
    return type(folded) is Wide and folded.reach > 0


def chain_views(root: Expr) -> tuple[list[Leaf], list[bool] | None, list] | None:
    """``root`` read as the one term ``coef * V1 @ ... @ Vn`` of its form, every ``Vi`` a leaf or
    its ``.mT``, without building the form: multipliers (``Scale`` in the child's dtype) and
    transposes (``(A @ B).mT`` is ``B.mT @ A.mT``) above a run of ``@`` whose operands are leaves
    under transposes and multiples (:func:`scaled_leaf_chain`). Returns ``(leaves, transposed,
    coefs)``: the leaves left to right, which are read as ``.mT`` (None when none is) and the
    multipliers, the last folded first (those above the run outermost first, then the operands'
    in the reverse of the order the form folds them); None for any other expression."""
    x, flip, coefs = _peeled(root)
    if type(x) is not MatMul:
        return None
    # (a bare run was read by leaf_chain or _leaves_only first: every caller reads it so)
    leaves, transposed = leaf_chain(x) if x is not root else None, None
    if leaves is None:
        chain = scaled_leaf_chain(x)
        if chain is None:
            return None
        leaves, transposed, inner = chain
        coefs += reversed(inner)
    if flip:
        leaves.reverse()
        transposed = [True] * len(leaves) if transposed is None else [not t for t in reversed(transposed)]
    return leaves, transposed if transposed is None or any(transposed) else None, coefs


def _matmul_operands(root: MatMul) -> list[Expr]:
    """The operands, left to right, of the run of ``@`` at ``root`` (its nodes other than products)."""
    operands: list[Expr] = []
    rights: list[Expr] = [root]  # the right operands still to read, the next one last
    while rights:
        x = rights.pop()
        while type(x) is MatMul:  # down the left spine (a chain built left to right has no other)
            x, right = x.children
            rights.append(right)
        operands.append(x)
    return operands


def _leaves_only(root: MatMul) -> bool:
    """``leaf_chain(root) is not None``, read without a list for a chain built left to right
    (every right operand a leaf: the commonest expression, on every linalg call's path)."""
    x = root
    while type(x) is MatMul:
        x, right = x.children
        if type(right) is not Leaf:
            return leaf_chain(root) is not None
    return type(x) is Leaf


def _leaf_product(root: MatMul) -> Canon | None:
    """The form of a run of ``@`` over leaves alone (:func:`leaf_chain`). The general pass gives
    the same form (its products over leaves flatten into the same views), at the price of
    counting readers and ordering nodes first."""
    leaves = leaf_chain(root)
    if leaves is None:
        return None
    factors = tuple([View(x, (), x.shape) for x in leaves])
    shape = tuple(root.shape)  # the leaves' broadcast batch and the outer dims, as _term finds
    return Canon((Term(1.0, (), factors, shape),), shape, root.dtype, root.device)


def _viewed_product(root: Expr) -> Canon | None:
    """The form of a stack of nodes that each read one child (transposes, multiples, indexing,
    casts) over a run of ``@`` over leaves and transposed leaves (``chain[:, :5]``,
    ``chain.to(torch.float64)``, ``2 * chain.mT``), made by :func:`canonical`'s own rules in its
    order, from the run's one term up, without its reader counts and ordering: the same form.
    None for any other expression, and where a narrowing cast below a node floats out (the
    pass's :func:`_floated`)."""
    above, x = [], root
    while type(x) in _VIEWING:
        above.append(x)
        x = x.children[0]
    if type(x) is not MatMul:
        return None
    form = _leaf_product(x)
    if form is None:
        chain = transposed_leaf_chain(x)
        if chain is None:
            return None
        factors = tuple([View(leaf, (), leaf.shape).transposed() if flip else View(leaf, (), leaf.shape)
                         for leaf, flip in zip(*chain, strict=True)])
        form = Canon((_term(1.0, (), factors),), tuple(x.shape), x.dtype, x.device)
    for node in reversed(above):
        if form.rounds is not None:
            return None
        form = _RULES[type(node)](node, node.dtype, form)
    return form


def _uid(node: Expr) -> int:
    return node.uid


def _form(node: Expr, done: dict[int, Canon]) -> Canon:
    """The form of a child: computed earlier in the pass, or a leaf's (made now)."""
    form = done.get(node.uid)
    return _RULES[type(node)](node) if form is None else form


def _product(node: MatMul, inner: set[int], done: dict[int, Canon], release) -> Canon:
    """Flatten a run of ``@`` into one term, left to right. A factor that rounds a wider form
    (:func:`rounded`) takes the rounding outward: the product is computed in the wider dtype,
    its other factors widened (exactly), and rounded once (:func:`_floated`'s rule)."""
    parts: list[View | Canon] = []  # a leaf's view, or another operand's form
    floats = False
    stack: list[Expr] = [node.children[1], node.children[0]]
    while stack:
        x = stack.pop()
        if x.uid in inner:
            stack += (x.children[1], x.children[0])
            continue
        if type(x) is Leaf:  # a plain leaf: its own view
            parts.append(View(x, (), x.shape))
            continue
        c = _form(x, done)
        release(x)
        floats = floats or c.rounds is not None
        parts.append(c)
    wide = _wide_dtype(node, [p for p in parts if type(p) is Canon]) if floats else None
    dtype = node.dtype if wide is None else wide
    op = None if wide is None else ("to", str(node.device), wide)
    coefs: list = []  # the parts' own, in order (chain_fold: their runs' products are measured)
    scalars: tuple = ()
    factors: list[View] = []
    for p in parts:
        if type(p) is View:
            factors.append(p if wide is None else p.with_op(op, p.shape))
            continue
        if wide is not None:
            p = _widened(p if p.rounds is None else p.rounds, wide)
        if len(p.terms) == 1:
            k = p.terms[0].coef
            if k != 1 or type(k) is complex:  # (a complex 1 kept: the fold's type is the product's)
                coefs.append(k)
            scalars = scalars + p.terms[0].scalars
        factors.extend(as_factors(p))
    terms = _distribute_cats(chain_fold(coefs, len(factors), dtype), scalars, factors, dtype)
    form = Canon(terms, tuple(node.shape), dtype, node.device)
    return form if wide is None else rounded(form, node.dtype)


def _joined_axis(f: View) -> int | None:
    """The dim a factor joins its parts along when it is a user's cat read plainly or transposed
    (a transposed cat of columns is a cat of rows), else None."""
    base = f.base
    if not isinstance(base, Nested) or base.kind != "cat" or base.stack or f.ops not in ((), (("mT",),)):
        return None
    return base.axis if not f.ops else -3 - base.axis


def _joined_at(factors: list[View]) -> int | None:
    """The first factor that is a user's cat with a neighbour across its joined dim (the next
    factor for columns, the previous one for rows), or a sum holding a lone one (a block: its
    terms could not be stacked, :func:`_holds_cat`), or None."""
    for i, f in enumerate(factors):
        if type(f.base) is not Nested:  # a leaf's view (the common case)
            continue
        axis = _joined_axis(f)
        if axis is not None and (i + 1 < len(factors) if axis == -1 else i > 0) or _holds_cat(f):
            return i
    return None


def _holds_cat(f: View) -> bool:
    """Whether ``f`` is a plain view of a sum block with a term that is a lone user's ``cat``:
    a product with it is distributed over its terms (the cat's parts then read the product)."""
    base = f.base
    if not isinstance(base, Nested) or base.kind != "sum" or f.ops or len(base.parts[0].terms) < 2:
        return False
    return any(len(t.factors) == 1 and _joined_axis(t.factors[0]) is not None for t in base.parts[0].terms)


def _distribute_cats(coef, scalars: tuple, factors: list[View], dtype: torch.dtype) -> tuple[Term, ...]:
    """The terms of a product whose factors include a user's ``cat`` joined along the dim the
    product contracts: ``P @ [X1, X2] @ G @ S = P @ X1 @ G[:n1] @ S + P @ X2 @ G[n1:] @ S``
    (rows alike, splitting the previous factor's columns). Each part keeps its own form (a
    product stays low rank), and the neighbour is split by indexing, so the cat is never
    formed; a transposed cat is a cat of its transposed parts. A cat at an outer end takes the
    rest of the product into its parts (:func:`_outer_cat`)."""
    if _joined_at(factors) is None:  # the common case: one term, as built
        outer = _outer_cat(coef, scalars, factors)
        return (_term(coef, scalars, factors) if outer is None else outer,)
    out: list[Term] = []
    todo = [(coef, scalars, list(factors))]
    while todo:
        k, ks, fs = todo.pop(0)
        i = _joined_at(fs)
        if i is None:
            outer = _outer_cat(k, ks, fs)
            out.append(_term(k, ks, fs) if outer is None else outer)
            continue
        nested, axis = fs[i].base, _joined_axis(fs[i])
        if axis is None:  # a sum holding a cat: one product per term
            for t in nested.parts[0].terms:  # (chain_fold: a part's scale may cancel the product's)
                new = fs[:i] + list(t.factors) + fs[i + 1:]
                todo.append((chain_fold([k, t.coef], len(new), dtype), ks + t.scalars, new))
            continue
        offset = 0
        for part in nested.parts:
            if fs[i].ops:  # a transposed cat: its parts transposed
                part = _transposed(part, (*part.shape[:-2], part.shape[-1], part.shape[-2]), part.dtype)
            size = part.shape[axis]
            pk, pks = (part.terms[0].coef, part.terms[0].scalars) if len(part.terms) == 1 else (1.0, ())
            inner = list(as_factors(part))
            # the neighbour split (a cat itself: into its parts)
            if axis == -1:  # the columns: the next factor's rows split
                g = fs[i + 1]
                gk, gks, gj = _indexed(g, tuple(range(d) for d in g.shape[:-2]), range(offset, offset + size),
                                       range(g.shape[-1]))
                new = fs[:i] + inner + gj + fs[i + 2:]
            else:  # the rows: the previous factor's columns split
                g = fs[i - 1]
                gk, gks, gj = _indexed(g, tuple(range(d) for d in g.shape[:-2]), range(g.shape[-2]),
                                       range(offset, offset + size))
                new = fs[: i - 1] + gj + inner + fs[i + 1:]
            todo.append((chain_fold([k, pk, gk], len(new), dtype), ks + pks + gks, new))
            offset += size
    return tuple(out)


def _outer_cat(coef, scalars: tuple, factors: list[View]) -> Term | None:
    """The term ``coef * [X1; X2] @ G`` as the one cat ``coef * [X1 @ G; X2 @ G]`` when the first
    factor is a user's ``cat`` of rows (``G @ [X1, X2] = [G @ X1, G @ X2]`` when the last is one of
    columns; plain or transposed): each part a product of its own, so neither the cat nor a
    product with it is formed whole, and whatever reads the term reads the parts (a trace, a
    factor, a block of rows). When a part has a coefficient of its own, the term's goes into
    the parts' (:func:`_into_parts`). None for any other product (a lone factor too)."""
    if len(factors) < 2 or type(factors[0].base) is not Nested and type(factors[-1].base) is not Nested:
        return None
    rows = _joined_axis(factors[0]) == -2
    if not rows and _joined_axis(factors[-1]) != -1:
        return None
    view = factors[0] if rows else factors[-1]
    rest = factors[1:] if rows else factors[:-1]
    base = view.base
    parts = []
    for part in base.parts:
        if view.ops:  # a transposed cat: its parts transposed
            part = _transposed(part, (*part.shape[:-2], part.shape[-1], part.shape[-2]), part.dtype)
        terms: list[Term] = []
        for pt in part.terms:
            terms.extend(_distribute_cats(pt.coef, pt.scalars, [*pt.factors, *rest] if rows else
                                          [*rest, *pt.factors], part.dtype))
        shape = (*broadcast_batch([t.shape for t in terms]), terms[0].shape[-2], terms[0].shape[-1])
        parts.append(Canon(tuple(terms), shape, part.dtype, part.device))
    batch = broadcast_batch([*(p.shape for p in parts), view.shape])  # (a cat may broadcast its parts)
    m = sum(p.shape[-2] for p in parts) if rows else parts[0].shape[-2]
    n = parts[0].shape[-1] if rows else sum(p.shape[-1] for p in parts)
    shape = (*batch, m, n)
    nested = Nested("cat", tuple(parts), -2 if rows else -1, shape, base.dtype, base.device)
    return _into_parts(Term(coef, scalars, (View(nested, (), shape),), shape))


def _into_parts(t: Term) -> Term:
    """``t``, a lone view of a user's cat (the cat being scaled), with its coefficient moved
    into the parts' own when some part has one: each part then scaled once, exactly
    (:func:`~lazymat.coefficient.fold`), where a part scaled on its own and the cat scaled
    again could overflow or underflow in between. Unchanged otherwise (one scale of the cat)."""
    view = t.factors[0]
    base = view.base
    if not t.has_coefficient or not any(pt.has_coefficient for p in base.parts for pt in p.terms):
        return t
    parts = tuple(Canon(tuple(Term(fold(t.coef, pt.coef), t.scalars + pt.scalars, pt.factors, pt.shape)
                              for pt in p.terms), p.shape, p.dtype, p.device) for p in base.parts)
    nested = Nested("cat", parts, base.axis, base.shape, base.dtype, base.device)
    return Term(1.0, (), (View(nested, view.ops, view.shape),), t.shape)


def cut_points(c: Canon, axis: int) -> tuple[int, ...]:
    """The positions ``0 < p < c.shape[axis]`` along the matrix axis (-2 rows, -1 columns) where
    ``c``'s form changes which part of a ``cat`` it reads (at any depth: the first factors' rows,
    the last factors' columns, through transposes and indexing). Blocks of ``c`` along ``axis``
    that meet the same cut points at the same offsets have the same form, up to where they start
    within each part: a budget's slicing plan costs one block of each kind (:func:`_index_cat`
    makes a block within one part that part's own form). Empty when no cat is read along it."""
    memo: dict[int, tuple[set, set]] = {}
    out: set[int] = set()
    for t in c.terms:
        out |= _view_cuts(t.factors[0] if axis == -2 else t.factors[-1], memo)[axis]
    return tuple(sorted(p for p in out if 0 < p < c.shape[axis]))


def _view_cuts(v: View, memo: dict) -> dict[int, set]:
    """``{-2: row cuts, -1: column cuts}`` of the matrix ``v`` stands for (:func:`cut_points`)."""
    if isinstance(v.base, Leaf):
        return {-2: set(), -1: set()}
    rows, cols = _block_cuts(v.base, memo)
    for op in v.ops:
        if op[0] == "mT":
            rows, cols = cols, rows
        elif op[0] == "index":
            rows, cols = _mapped_cuts(rows, op[2]), _mapped_cuts(cols, op[3])
    return {-2: rows, -1: cols}


def _block_cuts(base: Nested, memo: dict) -> tuple[set, set]:
    """Row and column cuts of a block, its nested blocks first (an explicit stack: blocks nest as
    deep as the expression)."""
    stack = [base]
    while stack:
        b = stack[-1]
        if id(b) in memo:
            stack.pop()
            continue
        views = [f for part in b.parts for t in part.terms for f in (t.factors[0], t.factors[-1])]
        todo = [f.base for f in views if isinstance(f.base, Nested) and id(f.base) not in memo]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        cuts: dict[int, set] = {-2: set(), -1: set()}
        offset = 0
        for part in b.parts:
            shift = offset if b.kind == "cat" else 0
            for ax in (-2, -1):
                shift_ax = shift if ax == b.axis else 0
                for t in part.terms:
                    cuts[ax] |= {p + shift_ax for p in _view_cuts(t.factors[0 if ax == -2 else -1], memo)[ax]}
            if b.kind == "cat":
                offset += part.shape[b.axis]
                cuts[b.axis].add(offset)
        memo[id(b)] = (cuts[-2], cuts[-1])
    return memo[id(base)]


def _mapped_cuts(cuts: set, sel: range | tuple) -> set:
    """The cuts of ``x[sel]`` along an axis of ``x`` cut at ``cuts``: where consecutive entries of
    ``sel`` fall between different cuts."""
    if not cuts:
        return set()
    if isinstance(sel, range) and sel.step > 0:
        return {i for q in cuts if 0 < (i := max(0, -(-(q - sel.start) // sel.step))) < len(sel)}
    ordered = sorted(cuts)
    regions = [bisect.bisect_right(ordered, i) for i in sel]
    return {i for i in range(1, len(regions)) if regions[i] != regions[i - 1]}


def diagonal_pieces(x: Expr) -> list[tuple[int, Expr]] | None:
    """Square blocks ``(start, B)`` along the main diagonal of a square ``x`` whose diagonals,
    each added in at ``start``, make ``x``'s, when a term of ``x`` is a user's ``cat``
    (:func:`_term_blocks`; a product with one at an outer end is one, ``M @ [X1, X2] =
    [M @ X1, M @ X2]``, whose diagonal blocks are ``M[:n1] @ X1`` and ``M[n1:] @ X2``). The
    diagonal of a sum is the sum of its terms', so a trace or diagonal costs what the parts'
    blocks cost, never the cat. The terms with no such cat make one block ``(0, their sum)``;
    blocks of the same rows from several terms are added into one. None when no term splits."""
    c = canonical(x)
    n = x.shape[-1]
    if c.dtype != x.dtype or x.shape[-2] != n or all(len(t.factors) > 1 for t in c.terms):
        return None
    whole: list[Term] = []
    blocks: dict[tuple[int, int], Expr] = {}
    for t in c.terms:
        split = _term_blocks(t)
        if split is None:
            whole.append(t)
            continue
        for start, size, block in split:
            if size:
                have = blocks.get((start, size))
                blocks[start, size] = block if have is None else add(have, block)
    if not blocks:
        return None
    pieces = [(0, to_expr(Canon(tuple(whole), c.shape, c.dtype, c.device)))] if whole else []
    return pieces + [(start, block) for (start, _), block in sorted(blocks.items())]


def _term_blocks(t: Term) -> list[tuple[int, int, Expr]] | None:
    """``(start, size, block)`` of a square term that is a user's ``cat`` (read plainly or
    transposed; a product with a cat at an outer end is one, :func:`_outer_cat`): its diagonal
    blocks, one per part, each read from its part alone. None for any other term."""
    if len(t.factors) != 1:
        return None
    view = t.factors[0]
    axis = _joined_axis(view)
    if axis is None:
        return None
    out = []
    offset = 0
    for part in view.base.parts:
        x = to_expr(part)
        x = transpose(x) if view.ops else x
        size = x.shape[axis]
        every = tuple(range(d) for d in x.shape[:-2])
        span = range(offset, offset + size)
        x = make_index(x, every, range(size), span) if axis == -2 else make_index(x, every, span, range(size))
        for k in t.scalars:
            x = scale(x, k)
        out.append((offset, size, x if t.coef == 1 else scale(x, t.coef)))
        offset += size
    return out


_VIEWING = frozenset([Transpose, Scale, Index, Cast])  # the nodes _viewed_product reads through

_RULES = {
    Leaf: _leaf,
    Transpose: _transpose,
    Scale: _scale,
    Add: _add,
    Index: _index,
    Cast: _cast,
    Concat: _concat,
}


# ---- back to expressions ------------------------------------------------------------------
def view_expr(v: View) -> Expr:
    """The expression a view stands for (inverse of the pushdown rules)."""
    base = v.base
    if isinstance(base, Leaf):
        x: Expr = base
    elif base.kind == "sum":
        x = to_expr(base.parts[0])
    else:
        x = cat([to_expr(p) for p in base.parts], dim=base.axis)
    if not isinstance(base, Leaf) and tuple(x.shape) != base.shape:
        x = _broadcast(x, base.shape)
    for op in v.ops:
        if op[0] == "mT":
            x = transpose(x)
        elif op[0] == "index":
            x = make_index(x, op[1], op[2], op[3])
        else:
            x = cast(x, device=op[1], dtype=op[2])
    return x


def _broadcast(x: Expr, shape: tuple) -> Expr:
    """``x`` broadcast to the batch of ``shape``: a block keeps the batch of parts an index left
    behind (``cat([A (3, m, 1), b (m, 1)])[..., [1]]`` is ``b`` broadcast to ``(3, m, 1)``, as
    torch's value is), which its remaining parts' expression lacks; each size-1 dim is repeated
    by an index list (a copy of the parts' leaves: a rare form)."""
    extra = len(shape) - x.ndim
    if extra:
        x = x[(None,) * extra]
    for d, size in enumerate(shape[:-2]):
        if x.shape[d] != size:
            x = x[(slice(None),) * d + ([0] * size,)]
    return x


def term_expr(t: Term, factors: tuple[View, ...] | None = None, with_coef: bool = True) -> Expr:
    """The product of ``factors`` (default: all of ``t``'s), times ``t``'s coefficient."""
    factors = t.factors if factors is None else factors
    x = view_expr(factors[0])
    for f in factors[1:]:
        x = matmul(x, view_expr(f))
    if with_coef:
        for s in t.scalars:
            x = scale(x, s)
        if t.coef != 1:
            x = scale(x, t.coef)
    return x


def to_expr(c: Canon) -> Expr:
    """An expression equal to the canonical form ``c``."""
    x = term_expr(c.terms[0])
    for t in c.terms[1:]:
        x = add(x, term_expr(t))
    return x


def rounded_source(x: Expr) -> Expr | None:
    """The expression, in the wider dtype, that ``x`` rounds once when a narrowing cast inside it
    floated out to the top (:func:`rounded`): ``((A @ B) @ W.float())`` for ``(A @ B).half() @ W``;
    None otherwise (kept on ``x``). A product of leaves, or of leaves read transposed, rounds
    nothing and is not formed, nor one read as leaves under transposes and scales
    (:func:`chain_views`)."""
    kind = type(x)
    if kind is Leaf or kind is MatMul and (_leaves_only(x) or scaled_leaf_chain(x) is not None):
        return None  # (no cast inside: a scale in another dtype is not read through)
    if (kind is Scale or kind is Transpose) and chain_views(x) is not None:
        return None
    hit = x._cache_dict.get("rounded_source", False) if x._cache_dict else False
    if hit is False:
        form = canonical(x).rounds
        hit = x._cache["rounded_source"] = None if form is None else to_expr(form)
    return hit
