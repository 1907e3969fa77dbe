"""Contraction plans from opt_einsum's cost model.

Every product ``V1 @ ... @ Vn`` (with batch dims) becomes an einsum network on shapes:
matrix dims get labels ``d0..dn``; a batch dim enters as a label only on the factors that
carry it at full size, so the cost model sees work shared across a broadcast batch (in
``W_O @ W_U @ W_E @ W_V`` over 144 heads, ``W_U @ W_E`` is one product, not 144). Batch
dims that every factor carries only scale the cost, so they are left out of the search
and multiplied back in.

FLOPs follow opt_einsum's convention: a multiply-add counts as 2 (``torch.linalg.multi_dot``
and cotengra count 1). Bytes use the expression's dtype. Intermediates only: leaf tensors
are not counted in ``peak_bytes``.

Plans are cached twice: on the canonical form they describe (found again when the same
expression is evaluated), and in a bounded table keyed on shapes alone (found again when
an identical structure is rebuilt from other tensors). Neither holds tensors.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import opt_einsum as oe

from . import product_cache, settings
from .coefficient import far, shrinks
from .expr import symbol
from .indexing import Gather, batch_shape_after, copies
from .layout import goes_through_einsum, is_plain_product
from .rewrite import (
    Canon,
    Leaf,
    Nested,
    Term,
    View,
    broadcast_batch,
    canonical,
    cut_points,
    term_expr,
    to_expr,
    view_expr,
)

__all__ = ["FLOP_UNIT", "ChainPlan", "Plan", "SlicedPlan", "Step", "clear_plan_tables", "kept_bytes",
           "block_kinds", "dim_cuts", "plan_canon", "plan_chain", "plan_expr",
           "slice_plan"]

FLOP_UNIT = "FLOPs (multiply-add = 2, opt_einsum's convention)"
_CACHE_SIZE = 4096
# Plans by shapes, bounded: (shapes, itemsize, optimizer) -> ChainPlan, and ("form", optimizer,
# itemsize, shape, shapes of each term, each term's coefficient and its bytes) -> Plan of a form without
# nested blocks. One table, so that clearing it makes every plan cold.
_chain_cache: OrderedDict = OrderedDict()


@dataclass(frozen=True)
class Step:
    """One pairwise product: factors ``left[0]..left[1]`` times ``right[0]..right[1]``."""

    left: tuple[int, int]
    right: tuple[int, int]
    left_shape: tuple
    right_shape: tuple
    out_shape: tuple
    flops: int
    out_bytes: int
    live_bytes: int  # intermediates alive while this product runs (its inputs and output)
    copy_bytes: int = 0  # inputs torch.matmul copies to lay out their batch (see broadcast_copy_bytes)


@dataclass(frozen=True)
class ChainPlan:
    """The planned order of one product, with its costs."""

    shapes: tuple
    path: tuple  # opt_einsum path (positions in the shrinking operand list)
    steps: tuple[Step, ...]
    flops: int
    naive_flops: int  # left-to-right
    largest_bytes: int
    peak_bytes: int
    optimizer: str
    program: tuple = ()  # per step (left slot, right slot); factors are slots 0..n-1, step k is n+k
    plain: tuple = ()  # per step: whether it is a plain torch.matmul (lazymat.layout.is_plain_product)
    work_bytes: int = 0  # peak_bytes without the result: Plan.work_bytes of this product alone, unbatched
    # steps whose span of factors carries no batch, as large as such spans get, in a product with a
    # batch: formed once for the whole batch (kept on the leaves when the factors are leaf views,
    # lazymat.product_cache); (step, first factor, last factor) each
    shared_steps: tuple = ()
    # per end (first factor, last factor): whether the last step's operand holding that end is a
    # product of 2-D factors alone (no batch dim, not even of size 1), so that a vector joining the
    # chain there stays 1-D through every step (lazymat.execute.times_vector)
    vector_ends: tuple = (False, False)
    # program and plain as one Python function (compiled_program), made with the plan
    run: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", compiled_program(self.program, self.plain))


@dataclass
class Plan:
    """What evaluating an expression costs: one :class:`ChainPlan` per term of the sum,
    plans of nested blocks, and totals. ``speedup = naive_flops / flops``."""

    terms: tuple[ChainPlan, ...]
    nested: tuple[Plan, ...]
    shape: tuple
    itemsize: int
    add_flops: int
    scale_flops: int
    work_bytes: int  # arrays the evaluation allocates, its result excluded: what the budget bounds
    peak_bytes: int  # the same with the result counted when it is made (a block's result is a temporary)
    shared_flops: int = 0  # of products the evaluation's memo forms once and finds again (plan_sharing)
    flops: int = field(init=False)
    naive_flops: int = field(init=False)
    largest_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        extra = self.add_flops + self.scale_flops
        # the nested blocks run within this evaluation, whose memo (shared_flops) covers theirs
        nest = sum(p.flops + p.shared_flops for p in self.nested)
        self.flops = sum(t.flops for t in self.terms) + extra + nest - self.shared_flops
        self.naive_flops = sum(t.naive_flops for t in self.terms) + extra + \
            sum(p.naive_flops for p in self.nested)
        self.largest_bytes = max([t.largest_bytes for t in self.terms] +
                                 [p.largest_bytes for p in self.nested] + [0])

    @property
    def path(self):
        """opt_einsum path of the product (a list of them for a sum)."""
        return self.terms[0].path if len(self.terms) == 1 else [t.path for t in self.terms]

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(s for t in self.terms for s in t.steps)

    @property
    def speedup(self) -> float:
        return self.naive_flops / self.flops if self.flops else 1.0

    def __repr__(self) -> str:
        return (
            f"Plan(flops={self.flops:.4g}, naive_flops={self.naive_flops:.4g}, "
            f"speedup={self.speedup:.3g}x, largest={settings.format_bytes(self.largest_bytes)}, "
            f"peak={settings.format_bytes(self.peak_bytes)}, terms={len(self.terms)})"
        )



# ---- one product --------------------------------------------------------------------------
class _Network:
    """The einsum view of a chain: labels, sizes and the cost of merging two intervals."""

    def __init__(self, shapes: tuple):
        self.shapes = shapes
        n = len(shapes)
        batch = broadcast_batch(shapes)
        nb = len(batch)
        self.batch = batch
        self.multiplier = 1
        self.sizes: dict[str, int] = {}
        self.dims = [shapes[0][-2], *(s[-1] for s in shapes)]
        labels: list[set[str]] = [set() for _ in range(n)]
        for p in range(nb):
            carriers = [i for i, s in enumerate(shapes)
                        if len(s) - 2 >= nb - p and s[len(s) - 2 - (nb - p)] == batch[p]]
            if batch[p] == 1:
                continue
            if len(carriers) == n:
                self.multiplier *= batch[p]
                continue
            lab = oe.get_symbol(n + 1 + p)
            self.sizes[lab] = batch[p]
            for i in carriers:
                labels[i].add(lab)
        self.mat = [oe.get_symbol(j) for j in range(n + 1)]
        for j, d in enumerate(self.dims):
            self.sizes[self.mat[j]] = d
        self.inputs = [frozenset(labels[i] | {self.mat[i], self.mat[i + 1]}) for i in range(n)]
        self.output = frozenset(set().union(*labels) | {self.mat[0], self.mat[n]})
        self._spans: dict[tuple[int, int], tuple[frozenset, tuple]] = {
            (i, i): (frozenset(labels[i]), tuple(shapes[i])) for i in range(n)
        }

    def merge(self, lo: int, mid: int, hi: int) -> tuple[int, tuple]:
        """FLOPs and output shape of ``(V_lo..V_mid) @ (V_mid+1..V_hi)``; both halves must
        have been formed (single factors or earlier merges), so each call is O(1)."""
        (lab_l, shp_l), (lab_r, shp_r) = self._spans[(lo, mid)], self._spans[(mid + 1, hi)]
        labels = lab_l | lab_r
        idx = labels | {self.mat[lo], self.mat[mid + 1], self.mat[hi + 1]}
        flops = oe.helpers.flop_count(idx, True, 2, self.sizes) * self.multiplier
        batch = broadcast_batch([shp_l, shp_r])
        shape = (*batch, self.dims[lo], self.dims[hi + 1])
        self._spans[(lo, hi)] = (labels, shape)
        return flops, shape

    def shape(self, lo: int, hi: int) -> tuple:
        return self._spans[(lo, hi)][1]


def _optimizer_for(n: int) -> str:
    choice = settings.get("optimize")
    if choice != "auto":
        return choice
    if n <= 4:
        return "optimal"
    if n <= 12:
        return "dp"
    return "greedy"


def _intervals_from_path(path, n: int) -> list[tuple[int, int, int]] | None:
    """(lo, mid, hi) merges of an opt_einsum path, or None if it joins non-adjacent factors."""
    live = [(i, i) for i in range(n)]
    merges = []
    for pair in path:
        if len(pair) != 2:
            return None
        i, j = sorted(pair)
        a, b = live[i], live[j]
        if a[0] > b[0]:
            a, b = b, a
        if a[1] + 1 != b[0]:
            return None
        del live[j], live[i]
        live.append((a[0], b[1]))
        merges.append((a[0], a[1], b[1]))
    return merges


def _interval_dp(net: _Network, n: int) -> list[tuple[int, int, int]]:
    """Best adjacent-merge order by the same cost model (used when opt_einsum's path
    is not a chain order); O(n^3), left-to-right past 64 factors."""
    if n > 64:
        return [(0, k, k + 1) for k in range(n - 1)]
    best = {(i, i): (0, None) for i in range(n)}
    for length in range(2, n + 1):
        for lo in range(n - length + 1):
            hi = lo + length - 1
            best[(lo, hi)] = min(
                (best[(lo, m)][0] + best[(m + 1, hi)][0] + net.merge(lo, m, hi)[0], m)
                for m in range(lo, hi)
            )
    merges: list[tuple[int, int, int]] = []
    stack = [(0, n - 1)]
    while stack:
        lo, hi = stack.pop()
        if lo == hi:
            continue
        m = best[(lo, hi)][1]
        merges.append((lo, m, hi))
        stack += [(lo, m), (m + 1, hi)]
    merges.reverse()
    return merges


@functools.lru_cache(maxsize=1024)  # few distinct programs: every 4-chain of squares has one
def compiled_program(program: tuple, plain: tuple) -> Callable:
    """:attr:`ChainPlan.program` with its steps' kinds (:attr:`ChainPlan.plain`) as one Python
    function ``run(values, matmul, layout_matmul)``: the product of ``values`` (a list, one tensor
    per factor, emptied), each step ``matmul(x, y)`` where plain, else ``layout_matmul(x, y,
    free_layout=...)`` (free but for the last step), each operand dropped once read. The loop it
    replaces (:func:`lazymat.execute._contract`'s) read the program step by step: ~30 bytecodes a
    step, against ~8 here, for every fresh product evaluated."""
    n = len(program) + 1
    names = [f"v{i}" for i in range(n)]
    body = [f"    {', '.join(names)}, = values", "    values.clear()"]
    last = len(program) - 1
    for k, ((a, b), p) in enumerate(zip(program, plain, strict=True)):
        call = f"matmul(v{a}, v{b})" if p else f"layout_matmul(v{a}, v{b}, free_layout={k != last})"
        if k == last and not p:  # (einsum's result laid out as its GEMM wrote it: row-major, as torch's)
            call += ".contiguous()"
        body.append(f"    return {call}" if k == last else f"    v{n + k} = {call}; del v{a}, v{b}")
    if not program:
        body.append("    return v0")
    scope: dict = {}
    exec("\n".join(["def run(values, matmul, layout_matmul):", *body]), scope)  # noqa: S102 (code made here)
    return scope["run"]


def _path_of(program: list[tuple[int, int]], n: int) -> tuple:
    """The opt_einsum path of ``program`` (:attr:`ChainPlan.program`'s slots: factors ``0..n-1``,
    step ``k``'s result ``n + k``): each step's two positions in the shrinking operand list. That
    list holds the live slots in increasing order (a result is appended, and is the largest slot),
    so a position is a binary search; searching it for the operands' spans compared tuples one by
    one, O(n^2) over the chain (0.3 s at n = 3,000)."""
    live = list(range(n))
    path = []
    for k, (a, b) in enumerate(program):
        i, j = sorted((bisect.bisect_left(live, a), bisect.bisect_left(live, b)))
        path.append((i, j))
        del live[j], live[i]
        live.append(n + k)
    return tuple(path)


def broadcast_copy_bytes(left: tuple, right: tuple, itemsize: int,
                         relaid: tuple[bool, bool] = (False, False)) -> int:
    """Bytes :func:`lazymat.layout.matmul` copies to lay out the inputs of ``left @ right``;
    ``relaid``: whether each input's batch dims do not merge into one as a view (a product that
    went through ``torch.einsum``, laid out as its GEMM wrote it; a factor of
    :func:`relaid_factors`).
    Batches that broadcast against each other go through ``torch.einsum``
    (:func:`lazymat.layout.goes_through_einsum`): one GEMM, each operand copied at most once at its
    own size, to bring the batch dims both carry outermost (counted for both: with row-major
    operands of batches ``(2, 3)`` and ``(2, 1, 3)`` both are copied, as the shared dim of 3 comes
    after a dim only one of them carries).
    Otherwise ``torch.matmul`` expands each input to the common batch and reshapes it to one
    batch dim, which is a view only when a row-major input spans all the batch dims larger than
    1 or none of them (then the expanded dims have stride 0 and collapse); an input broadcast over
    some of them but not all, or relaid, is copied at full batch size."""
    if goes_through_einsum(left, right):
        return (math.prod(left) + math.prod(right)) * itemsize
    return _matmul_copy_bytes(left, right, itemsize, relaid)


def _matmul_copy_bytes(left: tuple, right: tuple, itemsize: int, relaid: tuple[bool, bool]) -> int:
    """Bytes ``torch.matmul(left, right)`` copies to bring both inputs to one batch dim (see
    :func:`broadcast_copy_bytes`)."""
    batch = broadcast_batch([left, right])
    big = [p for p, size in enumerate(batch) if size > 1]
    total = 0
    for shape, made in zip((left, right), relaid, strict=True):
        own = (1,) * (len(batch) - (len(shape) - 2)) + tuple(shape[:-2])
        expanded = [own[p] == 1 for p in big]
        if (any(expanded) and not all(expanded)) or (made and big):
            total += math.prod(batch) * shape[-2] * shape[-1] * itemsize
    return total


def einsum_writes_row_major(left: tuple, right: tuple) -> bool:
    """Whether ``torch.einsum`` of ``left @ right`` (:func:`lazymat.layout.goes_through_einsum`)
    returns its result row-major. Its GEMM writes the batch dims both operands carry first, then
    the left one's own batch dims and its rows, then the right one's own batch dims and its
    columns; the result is a permuted view of that, row-major when the dims larger than 1 come in
    that order (read from the shapes: no tensor is made)."""
    batch = broadcast_batch([left, right])
    nb = len(batch)
    a = (1,) * (nb - len(left) + 2) + tuple(left[:-2])
    b = (1,) * (nb - len(right) + 2) + tuple(right[:-2])
    both = [d for d in range(nb) if a[d] > 1 and b[d] > 1]
    own_a = [d for d in range(nb) if a[d] > 1 and b[d] == 1]
    own_b = [d for d in range(nb) if b[d] > 1 and a[d] == 1]
    rows, cols = ([nb] if left[-2] > 1 else []), ([nb + 1] if right[-1] > 1 else [])
    written = both + own_a + rows + own_b + cols
    return written == sorted(written)


def plan_chain(shapes: tuple, itemsize: int, optimizer: str | None = None,
               relaid: frozenset = frozenset()) -> ChainPlan:
    """Plan ``V1 @ ... @ Vn`` given the factor shapes (tuples or ``torch.Size``; cached on
    shapes), and which factors ``torch.matmul`` copies to merge their batch dims
    (:func:`relaid_factors`): their copies are in the peak of the steps that read them.
    Keyed on the optimizer asked for (without one, the ``optimize`` setting: the optimizer it
    picks for ``n`` factors is resolved only when the plan is made)."""
    asked = optimizer or settings.get("optimize")
    key = (shapes, itemsize, asked, relaid)  # torch.Size hashes and compares as its tuple
    hit = _chain_cache.get(key)
    if hit is not None:
        _chain_cache.move_to_end(key)
        return hit
    n = len(shapes)
    optimizer = optimizer or _optimizer_for(n)
    shapes = tuple([tuple(s) for s in shapes])
    key = (shapes, itemsize, asked, relaid)
    net = _Network(shapes)
    naive = [(0, k, k + 1) for k in range(n - 1)]
    if n <= 2 or optimizer == "left-to-right":
        merges = naive
    else:
        path = oe.paths.get_path_fn(optimizer)(net.inputs, net.output, net.sizes, None)
        merges = _intervals_from_path(path, n) or _interval_dp(net, n)
    steps = []
    live = peak = largest = work = 0
    last_plain = False
    sizes: dict[tuple[int, int], int] = {}
    relaid_spans = {(i, i) for i in relaid}  # and products laid out by torch.einsum
    for lo, mid, hi in merges:
        flops, out_shape = net.merge(lo, mid, hi)
        out_bytes = math.prod(out_shape) * itemsize
        live += out_bytes
        left, right = net.shape(lo, mid), net.shape(mid + 1, hi)
        made = ((lo, mid) in relaid_spans, (mid + 1, hi) in relaid_spans)
        copies = broadcast_copy_bytes(left, right, itemsize, made)
        if goes_through_einsum(left, right):
            relaid_spans.add((lo, hi))
            if len(steps) == len(merges) - 1 and not einsum_writes_row_major(left, right):
                # the result is handed back row-major, as torch.matmul's: einsum's copied once
                # (both alive, its operands' copies freed), or torch.matmul's broadcast copies
                # when they are smaller (then it is the step's kind: ``last_plain``)
                copies = max(copies, out_bytes)
                broadcast = _matmul_copy_bytes(left, right, itemsize, made)
                if broadcast <= copies:
                    copies, last_plain = broadcast, True
        steps.append(Step((lo, mid), (mid + 1, hi), left, right, out_shape, flops, out_bytes, live + copies,
                          copies))
        peak = max(peak, live + copies)
        work = max(work, live + copies - (out_bytes if len(steps) == len(merges) else 0))
        largest = max(largest, out_bytes)
        live -= sizes.pop((lo, mid), 0) + sizes.pop((mid + 1, hi), 0)
        sizes[(lo, hi)] = out_bytes
    naive_flops = sum(net.merge(*m)[0] for m in naive)
    slots = {(i, i): i for i in range(n)}
    program = []
    for k, (lo, mid, hi) in enumerate(merges):
        program.append((slots.pop((lo, mid)), slots.pop((mid + 1, hi))))
        slots[(lo, hi)] = n + k
    plain = tuple(is_plain_product(s.left_shape, s.right_shape) for s in steps)
    if last_plain:
        plain = (*plain[:-1], True)
    plan = ChainPlan(shapes, _path_of(program, n), tuple(steps), sum(s.flops for s in steps),
                     naive_flops, largest, peak, optimizer, tuple(program), plain, work,
                     _shared_steps(shapes, merges, program, steps), _vector_ends(shapes, merges))
    _chain_cache[key] = plan
    if len(_chain_cache) > _CACHE_SIZE:
        _chain_cache.popitem(last=False)
    return plan


def _vector_ends(shapes: tuple, merges: list) -> tuple[bool, bool]:
    """:attr:`ChainPlan.vector_ends` of the product of factors of ``shapes`` merged by ``merges``:
    before its last step a vector at either end is only ever multiplied by matrices (a 1-D
    result), and ``torch.matmul`` broadcasts the last step's batch over it."""
    if not merges:
        return (len(shapes[0]) == 2,) * 2
    lo, mid, hi = merges[-1]
    halves = (shapes[lo : mid + 1], shapes[mid + 1 : hi + 1])
    return tuple([all([len(s) == 2 for s in half]) for half in halves])


def _shared_steps(shapes: tuple, merges: list, program: list, steps: list) -> tuple:
    """:attr:`ChainPlan.shared_steps` of the product of factors of ``shapes`` merged by ``merges``
    (``(first, middle, last)`` factor per step) as ``program`` runs them (``steps``: their
    costs), as :func:`cached_steps` finds them on a term of leaf views: those worth keeping
    (:func:`lazymat.product_cache.worth_keeping`)."""
    n = len(shapes)
    pure = [math.prod(s[:-2]) == 1 for s in shapes]  # per slot: factors, then steps
    if all(pure) or sum(pure) < 2:
        return ()
    consumer: dict[int, int] = {}
    for k, (a, b) in enumerate(program):
        pure.append(pure[a] and pure[b])
        consumer[a] = consumer[b] = n + k
    return tuple((k, lo, hi) for k, (lo, _, hi) in enumerate(merges)
                 if pure[n + k] and not (n + k in consumer and pure[consumer[n + k]])
                 and product_cache.worth_keeping(steps, program, n, k))


# ---- whole expressions ----------------------------------------------------------------------
def _shapes_and_blocks(c: Canon) -> tuple[tuple, tuple, list[Nested]]:
    """The factor shapes of each term; what else of each term its plan's cost reads (whether it
    has a coefficient, the bytes scaling it holds, which factors are unbatched leaf views); and
    the nested blocks the terms read (each once, in order): one pass, as a plan lookup needs."""
    chains, coefs, blocks = [], [], {}
    for t in c.terms:
        shapes = []
        viewed = False
        for v in t.factors:
            shapes.append(v.shape)
            viewed = viewed or not v.plain
            if type(v.base) is Nested:
                blocks[id(v.base)] = v.base
        chains.append(tuple(shapes))
        # without scalars, a batch or views, coefficient_bytes, _leaf_pattern, relaid_factors and
        # copied_factors give 0, (), nothing (one batch dim always merges) and nothing: not called
        # then (a plan lookup is on every evaluation's path)
        # (the coefficient applied: 0 none, 1 to the product's value, 2 to a factor first,
        # scaled_operand, 3 to factors rescaled, rescales)
        applied = 0 if not t.has_coefficient else 3 if rescales(t) else \
            1 + (not t.scalars and shrinks(t.coef))
        coefs.append((applied, coefficient_bytes(t) if t.scalars else 0,
                      _leaf_pattern(t) if len(t.shape) > 2 else (),
                      relaid_factors(t) if len(t.shape) > 3 else frozenset(),
                      tuple(copied_factors(t).items()) if viewed else ()))
    return tuple(chains), tuple(coefs), list(blocks.values())


def _same_views(c: Canon) -> tuple:
    """Each factor of each term of ``c`` as the position of its first equal view: what the
    products :func:`plan_sharing` keeps depend on, beyond the shapes."""
    first: dict = {}
    return tuple(first.setdefault(v, len(first)) for t in c.terms for v in t.factors)


def _leaf_pattern(term) -> tuple:
    """Which factors of a term with a batch are unbatched leaf views (what :func:`cached_steps`
    reads, beyond the shapes)."""
    if len(term.shape) <= 2 or math.prod(term.shape[:-2]) <= 1:
        return ()
    return tuple([product_cache.is_unbatched_leaf_view(v) for v in term.factors])


def plan_canon(c: Canon) -> Plan:
    """Plan every term of ``c`` and every nested block under it (cached on ``c``; a form
    without nested blocks also finds the plan of any earlier form of the same shapes)."""
    optimizer = settings.get("optimize")
    hit = c._plans.get(optimizer)
    if hit is not None:
        return hit
    itemsize = c.dtype.itemsize
    chains, coefs, blocks = _shapes_and_blocks(c)
    key = None
    if not blocks:
        # terms may share products (plan_sharing: across a sum's terms, or a pair repeated within
        # one, as in A @ A @ A @ A), which the peak counts: which views are the same is in the key
        key = ("form", optimizer, itemsize, c.shape, chains, coefs, _same_views(c))
        plan = _chain_cache.get(key)
        if plan is not None:
            _chain_cache.move_to_end(key)
            c._plans[optimizer] = plan
            return plan
    terms = tuple(plan_chain(shapes, itemsize, relaid=coef[3])
                  for shapes, coef in zip(chains, coefs, strict=True))
    nested = tuple(plan_canon(part) for blk in blocks for part in blk.parts)
    out = math.prod(c.shape)
    add_flops = out * (len(c.terms) - 1)
    work, peak, shared, scale_flops = evaluation_bytes(c, terms)
    plan = Plan(terms, nested, tuple(c.shape), itemsize, add_flops, scale_flops, work, peak, shared)
    c._plans[optimizer] = plan
    if key is not None:
        _chain_cache[key] = plan
        if len(_chain_cache) > _CACHE_SIZE:
            _chain_cache.popitem(last=False)
    return plan


def cached_steps(term, plan: ChainPlan) -> frozenset:
    """Steps of ``plan`` whose product :mod:`lazymat.product_cache` keeps on the leaves: the
    largest spans of unbatched leaf views in a term with a batch, where worth keeping
    (:func:`lazymat.product_cache.worth_keeping`). Their products stay alive to the end of the
    evaluation (and after it, as a cache)."""
    if len(term.shape) <= 2 or math.prod(term.shape[:-2]) <= 1:
        return frozenset()
    n = len(term.factors)
    pure = [product_cache.is_unbatched_leaf_view(v) for v in term.factors]
    consumer: dict[int, int] = {}
    for j, (a, b) in enumerate(plan.program):
        pure.append(pure[a] and pure[b])
        consumer[a] = consumer[b] = n + j
    return frozenset(j for j in range(len(plan.program))
                     if pure[n + j] and not (n + j in consumer and pure[consumer[n + j]])
                     and product_cache.worth_keeping(plan.steps, plan.program, n, j))


def rescales(term) -> bool:
    """Whether the executor evaluates ``term``, a product, from its factors rescaled by powers of
    two (:func:`lazymat.execute.rescaled`): its coefficient is a number far from 1 for its dtype
    (:func:`lazymat.coefficient.far`), which applied before or after the products could leave
    one out of range where the expression as written stays in it, or carries scales written on
    its factors whose product over a run of them is that far (a ``reach``, folded by
    :func:`lazymat.coefficient.chain_fold`: they cancel in the coefficient, not in a sub-product)."""
    if term.scalars or term.coef == 1 or len(term.factors) < 2:  # (one factor: times is exact)
        return False
    view = term.factors[0]
    dtype = view.base.dtype
    for op in view.ops:
        if op[0] == "to":
            dtype = op[2]
    return far(term.coef, dtype)


def scaled_operand(term, plan: ChainPlan, lengths: frozenset = frozenset(),
                   shapes: tuple | list | None = None) -> int | None:
    """The factor that ``term``'s coefficient multiplies before the products, or None: it
    multiplies the product's value (as ever for a coefficient of magnitude 1 or more, or 0-dim
    tensor scalars, whose size is not read). A number below 1 in magnitude
    (:func:`lazymat.coefficient.shrinks`) scales the smaller operand of ``plan``'s first step, so
    every product on its way to the answer is scaled down before it is formed, as the expression
    written with the scalar on a factor is: ``(1e-300 * A) @ B`` of ``1e200`` entries is
    ``4e100`` where ``A @ B`` overflows (and with it a coefficient applied last); in float16 a
    1/8 applied last left inf where the product passed 65504. A coefficient of 1 or more is
    applied last, so no product is scaled up before the answer. The scaled operand is a copy
    of the factor (its size in place of the result's, which scaling last copies). Not when the
    answer has fewer elements than that operand (``(A @ B) / 8`` of a ``2 x 64`` and a ``64 x 2``:
    4 multiplications in place of 128; the coefficient, near 1 or it would be rescaled, moves the
    products by at most its own factor, :func:`lazymat.coefficient.far`), nor when a
    product that reads the factor is looked up in the evaluation's memo (a span length in
    ``lengths``, the executor's ``kept_lengths``) or kept on the leaves (:func:`cached_steps`):
    another term reads it unscaled. ``shapes``: the plan's operands, when they are not
    ``term``'s factors (a vector joined to the chain)."""
    if term.scalars or not plan.program or not shrinks(term.coef):
        return None
    kept = frozenset()
    if shapes is None:  # (a plan with a vector joined keeps nothing on the leaves)
        shapes = [v.shape for v in term.factors]
        kept = cached_steps(term, plan)
    a, b = plan.program[0]
    i = a if math.prod(shapes[a]) <= math.prod(shapes[b]) else b
    if math.prod(plan.steps[-1].out_shape) < math.prod(shapes[i]):
        return None  # the answer is smaller than either operand: scaled last, the cheaper pass
    if lengths or kept:
        n = len(plan.program) + 1
        spans, slot = [(k, k) for k in range(n)], i
        for j, (x, y) in enumerate(plan.program):
            spans.append((spans[x][0], spans[y][1]))
            if slot in (x, y):
                if spans[-1][1] - spans[-1][0] + 1 in lengths or j in kept:
                    return None
                slot = n + j
    return i


def copied_factors(term) -> dict[int, tuple[int, int]]:
    """Factor position -> ``(held, forming)`` for the factors of ``term`` whose views copy (a dtype
    or device cast, as a narrowing cast floated outward widens the other leaves; an index list):
    the bytes of the copy, and the most alive while the view's ops make it (a copy and the copy
    it is made from). The executor forms every factor before the term's first product, in order,
    and frees each once read."""
    out = {}
    for i, v in enumerate(term.factors):
        if not v.ops:
            continue
        shape, dtype = tuple(v.base.shape), v.base.dtype
        held = forming = 0
        for op in v.ops:
            kind = op[0]
            if kind == "mT":
                shape = (*shape[:-2], shape[-1], shape[-2])
                continue
            if kind == "to":
                dtype = op[2]
            else:  # an index: a copy only for an index list
                shape = (*batch_shape_after(shape[:-2], op[1]), len(op[2]), len(op[3]))
                if not copies(op[1], op[2], op[3]):
                    continue  # a view (of the copy, if any: it holds the copy's whole storage)
            made = math.prod(shape) * dtype.itemsize
            forming, held = max(forming, held + made), made
        if held:
            out[i] = (held, forming)
    return out


def coefficient_bytes(term) -> int:
    """Bytes of the 0-dim tensors that multiplying a term's tensor scalars together makes (two
    alive at once, at most), held while the term is scaled."""
    return 2 * max(s.element_size() for s in term.scalars) if term.scalars else 0


def evaluation_bytes(c: Canon, terms: tuple[ChainPlan, ...]) -> tuple[int, int, int, int]:
    """``(work, peak, shared, scale)``: the most bytes that :func:`lazymat.execute.evaluate` of ``c`` holds at
    once in arrays it allocates, without and with its result (the operands are never counted).
    The walk follows the executor: nested blocks are computed before the first term that reads
    them and held to the end of the evaluation (a concatenation holds its parts, then the
    joined block); each term runs its planned products (an intermediate is freed after its
    reader), is scaled into a new array when it has a coefficient (or a factor is first,
    :func:`scaled_operand`), and is added into a new
    running sum, the previous one and the term alive meanwhile. A sub-product the executor's
    memo keeps for another product (:func:`plan_sharing`) is held from its forming to the end,
    and found there, not formed, by its later readers. This is the one estimate of an
    evaluation's memory: the executor checks it against the budget, ``explain`` reports it.
    ``shared``: the FLOPs of the products found in the memo, not formed again; ``scale``: the
    multiplications scaling ``c``'s terms (by their coefficients) make."""
    held, work, peak, seen, shared, scale_flops = 0, 0, 0, set(), 0, 0
    share, keep = plan_sharing(c, terms)
    formed: set = set()  # the memo's products, formed so far
    lengths = frozenset(map(len, keep))  # a span of another length is no key of keep: not sliced

    def note(alive: int, result: int = 0) -> None:
        nonlocal work, peak
        work, peak = max(work, held + alive - result), max(peak, held + alive)

    def run(form: Canon, plans: tuple, base: int, top: bool) -> int:
        """Evaluate ``form`` beside ``base`` bytes of the caller's; returns its result's bytes."""
        nonlocal held, shared, scale_flops
        total = 0
        last = len(form.terms) - 1
        read: set[int] = set()  # the blocks this form's terms read (each in its plan's nested once)
        for k, (t, tp) in enumerate(zip(form.terms, plans, strict=True)):
            final = top and k == last  # this term's last array is the result
            # the factors are formed in order before the first product: a nested block when its
            # first reader is (held to the end), beside the copies of the factors before it; a
            # view that copies is held until its product has read it
            alive: dict[int, int] = {}
            copies = copied_factors(t)
            for i, v in enumerate(t.factors):
                if isinstance(v.base, Nested) and id(v.base) not in read:
                    read.add(id(v.base))
                    if id(v.base) in seen:  # formed for another form (two parts of a cat read it):
                        # found in the memo, though this form's plan counts it among its nested
                        shared += sum(p.flops + p.shared_flops for p in map(plan_canon, v.base.parts))
                    else:
                        seen.add(id(v.base))
                        made = block(v.base, base + total + sum(alive.values()))  # it adds to held
                        held += made
                if i in copies:
                    held_i, forming = copies[i]
                    is_result = final and k == 0 and not t.has_coefficient and not tp.steps
                    note(base + total + sum(alive.values()) + forming, held_i if is_result else 0)
                    alive[i] = held_i
            resc = t.has_coefficient and rescales(t)  # every factor scaled into a copy, nothing shared
            first = scaled_operand(t, tp, lengths if share else frozenset()) \
                if t.has_coefficient and not resc else None
            for i in range(len(t.factors)) if resc else ():
                scaled = math.prod(t.factors[i].shape) * form.dtype.itemsize
                note(base + total + sum(alive.values()) + scaled)  # (|factor|, read for its largest size)
                alive[i] = scaled
                if top:  # c's own terms (not ``form is c``: run and block are a cycle, c would live on)
                    scale_flops += math.prod(t.factors[i].shape)
            if first is not None:  # the factor scaled into a copy, the one it was made from then freed
                scaled = math.prod(t.factors[first].shape) * form.dtype.itemsize
                note(base + total + sum(alive.values()) + scaled)
                alive[first] = scaled
                if top:
                    scale_flops += math.prod(t.factors[first].shape)
            value = alive.get(0, 0) if not tp.steps else 0  # a lone factor is a view unless it copies
            kept = frozenset() if resc else cached_steps(t, tp)
            n = len(t.factors)
            spans = [(i, i) for i in range(n)]
            for j, (st, (a, b)) in enumerate(zip(tp.steps, tp.program, strict=True)):
                spans.append((spans[a][0], spans[b][1]))
                lo, hi = spans[-1]
                key = t.factors[lo : hi + 1] if share and not resc and hi - lo + 1 in lengths else None
                if key in formed:  # the memo's: held already, and found there
                    shared += st.flops
                    alive.pop(a, None)
                    alive.pop(b, None)
                    value = 0
                    continue
                is_result = final and j == len(tp.steps) - 1 and k == 0 and (first is not None
                                                                              or not t.has_coefficient)
                now = sum(alive.values()) + st.out_bytes + st.copy_bytes
                note(base + total + now, st.out_bytes if is_result else 0)
                alive.pop(a, None)
                alive.pop(b, None)
                value = st.out_bytes
                if key in keep:  # kept in the memo for another product: held from now on
                    held += value
                    formed.add(key)
                    value = 0
                elif j in kept:  # kept on the leaves (lazymat.product_cache): held from now on
                    held += value
                else:
                    alive[n + j] = value
            if t.has_coefficient and first is None:
                scaled = math.prod(t.shape) * form.dtype.itemsize
                if top:
                    scale_flops += math.prod(t.shape)
                note(base + total + value + scaled + coefficient_bytes(t), scaled if final and k == 0 else 0)
                value = scaled
            if k == 0:
                total = value
                continue
            new = math.prod(form.shape) * form.dtype.itemsize
            note(base + total + value + new, new if final else 0)
            total = new
        return total

    def block(blk: Nested, base: int) -> int:
        if blk.kind == "sum":
            return run(blk.parts[0], plan_canon(blk.parts[0]).terms, base, False)
        parts = 0
        for part in blk.parts:
            parts += run(part, plan_canon(part).terms, base + parts, False)
        joined = math.prod(blk.shape) * blk.dtype.itemsize  # a floated block is the wider dtype
        note(base + parts + joined)
        return joined

    run(c, terms, 0, True)
    return work, peak, shared, scale_flops


NOTHING_SHARED = (False, frozenset())  # what :func:`plan_sharing` gives a form that shares nothing


def plan_sharing(c: Canon, terms: tuple | None = None) -> tuple[bool, frozenset]:
    """``(share, keep)`` for :class:`lazymat.execute._Memo`: whether sub-products are looked up at all (the
    form has more than one product, counting nested blocks, or repeats a view), and which
    are kept for another product (held to the end of the evaluation). ``terms``: the plans of
    ``c``'s own terms (default: its plan), as :func:`plan_canon` has them before it is done."""
    if len(c.terms) == 1 and _distinct_leaves(c.terms[0].factors):
        return NOTHING_SHARED  # one product of distinct leaves: nothing to reuse (the common case)
    every = _all_terms(c)
    factors = c.terms[0].factors
    if len(every) == 1 and len(set(factors)) == len(factors):
        return NOTHING_SHARED
    return True, _needed_wholes(every) | _repeated_spans(c, terms)


def _distinct_leaves(factors: tuple[View, ...]) -> bool:
    """True when every factor is a view of a leaf, and of a different leaf."""
    seen = set()
    for v in factors:
        base = v.base
        if type(base) is not Leaf or base in seen:
            return False
        seen.add(base)
    return True


def _all_terms(c: Canon) -> list[Term]:
    """The terms of ``c`` and of every block nested in it."""
    out, stack, seen = [], [c], set()
    while stack:
        canon = stack.pop()
        for t in canon.terms:
            out.append(t)
            for v in t.factors:
                if isinstance(v.base, Nested) and id(v.base) not in seen:
                    seen.add(id(v.base))
                    stack.extend(v.base.parts)
    return out


def _repeated_spans(c: Canon, terms: tuple | None = None) -> frozenset:
    """Sub-products that the plans of ``c`` and of its nested blocks form more than once: the
    only ones worth keeping for another term (the others are freed after their last reader,
    as the plan's peak assumes)."""
    formed, longest = [], 0  # (factors, lo, hi) of every product the plans form
    stack, seen = [c], set()
    while stack:
        canon = stack.pop()
        plans = terms if canon is c and terms is not None else plan_canon(canon).terms
        for t, p in zip(canon.terms, plans, strict=True):
            longest = max(longest, len(t.factors))
            spans = [(i, i) for i in range(len(t.factors))]
            for a, b in p.program:
                span = (spans[a][0], spans[b][1])
                spans.append(span)
                formed.append((t.factors, *span))
            for v in t.factors:
                if isinstance(v.base, Nested) and id(v.base) not in seen:
                    seen.add(id(v.base))
                    stack.extend(v.base.parts)
    if longest > _DIRECT_SPANS:
        return _repeated_by_hash(formed)
    count: dict[tuple, int] = {}
    for factors, lo, hi in formed:  # short chains: each span keyed by its views
        key = factors[lo : hi + 1]
        count[key] = count.get(key, 0) + 1
    return frozenset(k for k, n in count.items() if n > 1)


_DIRECT_SPANS = 32  # longer chains count their spans by hash: keyed by views, O(n^2) view hashes


def _repeated_by_hash(formed: list) -> frozenset:
    """:func:`_repeated_spans` of long chains: a span is counted by its length and a polynomial
    hash of its views (O(1) from its term's prefix hashes), and only the spans that share one
    are sliced and compared. Keying every span by its views was O(n^2) on a chain of n factors
    (1.5M view hashes, 0.3-0.9 s, for ``matrix_power(X, 1000)``)."""
    ids: dict[View, int] = {}
    prefixes: dict[int, list[int]] = {}
    found: dict[tuple[int, int], list] = {}
    for factors, lo, hi in formed:
        prefix = prefixes.get(id(factors))
        if prefix is None:
            prefix = prefixes[id(factors)] = _prefix_hashes(factors, ids)
        n = hi - lo + 1
        key = (n, (prefix[hi + 1] - prefix[lo] * _power(n)) % _MODULUS)
        found.setdefault(key, []).append((factors, lo, hi))
    repeated, once = set(), set()
    for spans in found.values():
        if len(spans) > 1:  # the same hash: compare the views themselves
            for factors, lo, hi in spans:
                views = factors[lo : hi + 1]
                (repeated if views in once else once).add(views)
    return frozenset(repeated)


_MODULUS = (1 << 61) - 1  # a Mersenne prime: span hashes of the views' small ids, as integers mod it
_BASE = 1_000_003
_POWERS = [1]


def _power(n: int) -> int:
    """``_BASE ** n`` modulo ``_MODULUS`` (a table grown as longer spans come)."""
    while len(_POWERS) <= n:
        _POWERS.append(_POWERS[-1] * _BASE % _MODULUS)
    return _POWERS[n]


def _prefix_hashes(factors: tuple[View, ...], ids: dict) -> list[int]:
    """``h[i]``: the hash of ``factors[:i]``, each view by its id in ``ids`` (equal views, one id)."""
    h = [0]
    for v in factors:
        h.append((h[-1] * _BASE + ids.setdefault(v, len(ids) + 1)) % _MODULUS)
    return h


def _needed_wholes(terms: list[Term]) -> frozenset:
    """Products that are a whole term and also a sub-product of another (or repeated)."""
    count: dict[tuple, int] = {}
    for t in terms:
        if len(t.factors) > 1:
            count[t.factors] = count.get(t.factors, 0) + 1
    needed = {w for w, k in count.items() if k > 1}
    lengths = {len(w) for w in count}
    for t in terms:
        f = t.factors
        for n in lengths:
            for i in range(len(f) - n + 1 if n < len(f) else 0):
                if f[i : i + n] in count:
                    needed.add(f[i : i + n])
    return frozenset(needed)


def blocks_bytes(terms) -> tuple[int, int]:
    """``(forming, held)`` for the nested blocks that ``terms`` read, formed once each, in order, as
    the operands of their closed networks are read (:func:`lazymat.execute.contract_sum`): the
    most bytes alive while they are formed (each part evaluated beside the blocks before it), and
    the bytes of the blocks, held beside every network to the end of the call. A part's products
    kept on the leaves (:func:`canon_kept_bytes`: ``t3x3 @ t3x3`` in a batched part) are held too, beside
    the later parts and the networks (a block of ``cat([t2x3 - t2x2x3 @ t3x3 @ t3x3, ...])`` named
    264 B where its trace allocated 280 B)."""
    forming = held = 0
    seen = set()
    for t in terms:
        for v in t.factors:
            blk = v.base
            if type(blk) is not Nested or id(blk) in seen:
                continue
            seen.add(id(blk))
            parts = kept = 0
            for part in blk.parts:
                forming = max(forming, held + parts + kept + plan_canon(part).peak_bytes)
                parts += math.prod(part.shape) * part.dtype.itemsize
                kept += canon_kept_bytes(part)
            if blk.kind != "sum":  # a concatenation: the parts, then the joined block
                parts, joined = math.prod(blk.shape) * blk.dtype.itemsize, parts
                forming = max(forming, held + kept + parts + joined)
            held += parts + kept
    return forming, held


def plan_expr(expr) -> Plan:
    """The plan that ``expr.to_dense()`` executes."""
    return plan_canon(canonical(expr))


def kept_bytes(expr) -> int:
    """Bytes of the products that ``expr.to_dense()`` leaves on the leaves
    (:func:`cached_steps`, nested blocks included): counted in its plan's peak while it runs,
    and still held after it, beside what a routine forms next from its value."""
    return canon_kept_bytes(canonical(expr))


def canon_kept_bytes(canon) -> int:
    """:func:`kept_bytes` of a canonical form."""
    total, todo = 0, [canon]
    while todo:
        c = todo.pop()
        for t, tp in zip(c.terms, plan_canon(c).terms, strict=True):
            total += sum(tp.steps[j].out_bytes for j in cached_steps(t, tp))
            todo.extend(part for v in t.factors if isinstance(v.base, Nested) for part in v.base.parts)
    return total


# ---- slicing to fit a memory budget -----------------------------------------------------------
@dataclass(frozen=True)
class SlicedPlan:
    """How ``to_dense`` runs under a memory budget of ``budget`` bytes: the result is filled block
    by block, each block ``X[key]`` a planned evaluation of its own. ``dims`` lists
    ``(dim, size, block, kind)`` per sliced dim (kind ``"batch"``, ``"row"`` or ``"column"``; empty
    when the plan fits as it is), ``slices`` the number of blocks, ``flops`` the total work
    (``added_flops`` over the unsliced plan) and ``peak_bytes`` the live peak of the run (the
    result, filled in place, is not counted).

    Work that reads no sliced dim (``W_K.T @ W_E.T`` when the rows of ``W_E @ W_Q @ W_K.T @ W_E.T``
    are sliced) is either formed once before the blocks and held through them (``shared``: the
    ``(term, first, last)`` factor spans of such products, :func:`shared_spans`, holding
    ``held_bytes``, which the block size is chosen around) or formed again by every block
    (``shared`` empty), whichever takes fewer FLOPs among the routes that fit; ``note`` says which
    and why (empty when the blocks share no work)."""

    plan: Plan
    dims: tuple
    slices: int
    flops: int
    peak_bytes: int
    budget: int
    shared: tuple = ()
    held_bytes: int = 0
    note: str = ""

    @property
    def added_flops(self) -> int:
        return self.flops - self.plan.flops


def _dim_kind(dim: int, ndim: int) -> str:
    return "row" if dim == ndim - 2 else "column" if dim == ndim - 1 else "batch"


def _block_key(ndim: int, where: dict) -> tuple:
    return tuple(slice(*where[d]) if d in where else slice(None) for d in range(ndim))


def reading_factors(t: Term, shape: tuple, dims) -> list[bool]:
    """Which factors of ``t`` (a term of a form of ``shape``) read one of the dims ``dims`` of
    ``shape``: the first factor reads the rows, the last the columns, and a factor reads a batch
    dim where it carries it at more than one entry (a broadcast factor reads none)."""
    ndim = len(shape)
    reads = [False] * len(t.factors)
    for d in dims:
        if d == ndim - 2:
            reads[0] = True
        elif d == ndim - 1:
            reads[-1] = True
        else:
            back = ndim - 2 - d  # position counted from the last batch dim
            for i, f in enumerate(t.factors):
                batch = f.shape[:-2]
                if len(batch) >= back and batch[len(batch) - back] > 1:
                    reads[i] = True
    return reads


def shared_spans(c: Canon, plan: Plan, dims) -> tuple:
    """``(term, first, last)`` of the work every block would form again: each largest product in
    ``plan``'s order that reads none of the sliced ``dims`` (:func:`reading_factors`), and, as
    ``(term, i, i)``, the block (a sum used as a factor, a concatenation) a factor ``i`` outside
    those products is a view of, which a block forms whole even when it reads a slice of it."""
    out = []
    for k, (t, tplan) in enumerate(zip(c.terms, plan.terms, strict=True)):
        reads = reading_factors(t, c.shape, dims)
        spans = [(s.left[0], s.right[1]) for s in tplan.steps]
        free = [(lo, hi) for lo, hi in spans if not any(reads[lo : hi + 1])]
        largest = [(lo, hi) for lo, hi in free
                   if not any(a <= lo and hi <= b and (a, b) != (lo, hi) for a, b in free)]
        blocks = [(i, i) for i, v in enumerate(t.factors) if isinstance(v.base, Nested)
                  and not any(lo <= i <= hi for lo, hi in largest)]
        out += [(k, lo, hi) for lo, hi in largest + blocks]
    return tuple(sorted(out))


def _shared_key(t: Term, lo: int, hi: int):
    """What a span stands for: the views of a product, or the block a lone factor views."""
    return t.factors[lo].base if lo == hi else t.factors[lo : hi + 1]


def span_products(c: Canon, spans: tuple) -> dict:
    """The distinct values of ``spans`` (equal views in two terms are one product, a block is
    one value however many factors view it): key (:func:`_shared_key`) -> its expression."""
    out: dict = {}
    for k, lo, hi in spans:
        t = c.terms[k]
        key = _shared_key(t, lo, hi)
        if key not in out:
            out[key] = view_expr(View(key, (), key.shape)) if lo == hi else \
                term_expr(t, key, with_coef=False)
    return out


def with_shared(c: Canon, spans: tuple, values: dict):
    """An expression equal to ``c`` with each span's value replaced by the leaf
    ``values[key]`` (a symbol when planning, the formed tensor when running); a factor viewing
    a shared block keeps its view ops on the leaf."""
    terms = []
    for k, t in enumerate(c.terms):
        factors = list(t.factors)
        for kk, lo, hi in sorted(spans, reverse=True):
            if kk == k:
                leaf = values[_shared_key(t, lo, hi)]
                v = t.factors[lo]
                factors[lo : hi + 1] = [View(leaf, v.ops, v.shape) if lo == hi else
                                        View(leaf, (), tuple(leaf.shape))]
        terms.append(Term(t.coef, t.scalars, tuple(factors), t.shape))
    return to_expr(Canon(tuple(terms), c.shape, c.dtype, c.device))


@dataclass(frozen=True)
class _SharedWork:
    """The shared route for one set of sliced dims: the spans formed once, their FLOPs, the peak
    while forming them, what they hold, and the expression whose blocks read them."""

    spans: tuple
    products: int  # distinct products among the spans
    flops: int
    forming_peak: int
    held_bytes: int
    expr: object


def _shared_work(c: Canon, plan: Plan, dims) -> _SharedWork | None:
    spans = shared_spans(c, plan, dims)
    if not spans:
        return None
    flops = peak = held = 0
    symbols = {}
    for k, (key, product) in enumerate(span_products(c, spans).items()):
        p = plan_expr(product)
        flops += p.flops
        nbytes = math.prod(product.shape) * product.dtype.itemsize
        # the products formed before it are held meanwhile; one laid out by torch.einsum is
        # copied to row-major once (:func:`lazymat.execute._with_shared_values`), both alive
        last = [t.steps[-1] for t in p.terms if t.steps]
        relaid = nbytes if any(goes_through_einsum(st.left_shape, st.right_shape) for st in last) else 0
        peak = max(peak, held + p.peak_bytes + relaid)
        held += nbytes
        symbols[key] = symbol(f"shared {k}", tuple(product.shape), product.dtype, str(product.device))
    return _SharedWork(spans, len(symbols), flops, peak, held, with_shared(c, spans, symbols))


@dataclass(frozen=True)
class _Option:
    """One way to slice ``dim``: blocks of ``block``, the whole run's FLOPs (every entry of the dims
    cut before, the shared work once) and the peak, the shared route's work (None: every block
    forms it again)."""

    dim: int
    block: int
    fits: bool
    flops: int = 0
    peak: int = 0
    shared: _SharedWork | None = None


def _options(expr, c: Canon, plan: Plan, where: dict, dim: int, budget: int) -> list[_Option]:
    """The ways to slice ``dim`` (the dims in ``where`` cut to single entries): every block
    forming all its work, or the work the blocks share formed once, as the unsliced order shares
    it (the fewest FLOPs) or as a block's own order does (a block of few rows prefers an order
    sharing less, which may fit where the unsliced order's shared products do not). Each option's
    FLOPs are the whole run's, over every entry of the dims in ``where`` and the shared work once;
    entries of the cut dims differ in form across a ``cat``'s parts (:func:`_entry_kinds`): every
    kind is costed, the block size is one that fits them all."""
    entries = _entry_kinds(expr, where)
    per_block = _fitting_entries(expr, entries, dim, budget)
    out = [per_block]
    orders = [plan]
    if per_block.fits and len(entries) == 1:
        first = _entry(expr, entries[0][0])
        block = first[_block_key(len(expr.shape), {dim: (0, per_block.block)})]
        if _same_terms(canonical(block), c):  # spans name positions in c's terms
            orders.append(plan_expr(block))
    tried = set()
    for order in orders:
        shared = _shared_work(c, order, {*where, dim})
        if shared is None or shared.spans in tried:
            continue
        tried.add(shared.spans)
        room = budget - shared.held_bytes
        o = _fitting_entries(shared.expr, _entry_kinds(shared.expr, where), dim, room) \
            if shared.forming_peak <= budget and room > 0 else None
        if o is not None and o.fits:
            out.append(_Option(dim, o.block, True, shared.flops + o.flops,
                               max(shared.forming_peak, shared.held_bytes + o.peak), shared))
        else:
            out.append(_Option(dim, 1, False, shared=shared))  # holding the shared work does not fit
    return out


def _entry_kinds(x, where: dict) -> list[tuple[dict, int]]:
    """The kinds of entry of ``x``'s dims in ``where`` (each cut to single entries): ``(where for
    the first entry of the kind, how many entries it stands for)``. Entries are alike but across a
    ``cat``'s parts (:func:`block_kinds` of one entry); one kind when nothing is cut."""
    dims = sorted(where)
    kinds = [block_kinds(x.shape[d], 1, dim_cuts(x, d)).items() for d in dims]
    return [({d: (start, start + 1) for d, (start, _) in zip(dims, combo, strict=True)},
             math.prod(n for _, n in combo)) for combo in itertools.product(*kinds)]


def _entry(x, where: dict):
    return x[_block_key(len(x.shape), where)] if where else x


def _fitting_entries(x, entries: list[tuple[dict, int]], dim: int, budget: int) -> _Option:
    """The largest block along ``dim`` that fits ``budget`` in every kind of entry of the cut dims
    (``entries``, :func:`_entry_kinds`): FLOPs summed over all the entries, the largest peak
    (``fits`` false when one entry of ``dim`` does not fit in some kind)."""
    views = [(_entry(x, w), n) for w, n in entries]
    blocks = [_largest_block(v, dim, budget) for v, _ in views]
    if not all(blocks):
        return _Option(dim, 1, False)
    b = min(blocks)
    costs = [(n, _block_costs(v, dim, b)) for v, n in views]
    flops = sum(n * f for n, (f, _) in costs)
    return _Option(dim, b, True, flops, max(peak for _, (_, peak) in costs))


def _same_terms(a: Canon, b: Canon) -> bool:
    """Whether ``a``'s terms line up with ``b``'s, factor for factor: a block's own order can
    stand for the unsliced form's only then (a block within one part of a ``cat`` is that part's
    form)."""
    return len(a.terms) == len(b.terms) and all(
        len(s.factors) == len(t.factors) for s, t in zip(a.terms, b.terms, strict=True))


def slice_plan(expr, budget: int) -> SlicedPlan:
    """The blocks ``expr.to_dense()`` runs in under ``budget`` bytes: the plan as it is when its
    intermediates (:attr:`Plan.work_bytes`) fit, else the dim (batch, row or column), the block
    size along it and the route for the work the blocks share (formed once and held, or formed
    by every block) that fit and take the fewest FLOPs; when no one dim can fit, the leading
    batch dim (else the rows) is cut to single entries and the search goes on inside the block.
    Raises :class:`lazymat.settings.BudgetTooSmall` naming the least budget that fits."""
    c = canonical(expr)
    bound = settings.get("max_slices")
    key = ("sliced", settings.get("optimize"), budget, bound)
    hit = c._plans.get(key)
    if hit is not None:
        return hit
    out = _slice_search(expr, c, budget, bound)
    if out is None:
        shape = tuple(expr.shape)
        hi = _least_budget(expr, c, budget, bound)
        block = "its smallest block"
        # the bound binds where it raises the least budget (more entries than slices allowed)
        if math.prod(shape) > bound and hi > _least_budget(expr, c, budget, math.prod(shape)):
            slices = _slice_search(expr, c, hi, bound).slices
            block = (f"a run in at most {bound} slices (the max_slices setting; {slices} "
                     f"slice{'s' if slices > 1 else ''} at that budget)")
        raise settings.BudgetTooSmall(
            f"to_dense of a {shape} {str(expr.dtype).replace('torch.', '')} expression",
            block, budget, hi, expr.device)
    c._plans[key] = out
    return out


def _least_budget(expr, c: Canon, budget: int, bound: int) -> int:
    """The least budget above ``budget`` with which to_dense of ``expr`` runs in at most
    ``bound`` slices: one entry of the result always fits its own plan's peak (the unsliced
    plan when that takes more than ``bound`` slices); blocks that hold shared work may need
    less: found by bisection."""
    lo = budget
    top = plan_canon(c).work_bytes if math.prod(expr.shape) > bound else _entry_peak(expr)
    hi = max(top, lo + 1)
    if _slice_search(expr, c, hi, bound) is None:  # no dim to cut (one entry's plan, composed
        hi = max(plan_canon(c).work_bytes, lo + 1)  # indexes, may need less): the unsliced plan fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _slice_search(expr, c, mid, bound) is not None else (mid, hi)
    return hi


def _entry_peak(expr) -> int:
    """The largest peak of one entry of ``expr``: of the first entry of every kind along the rows
    and the columns (:func:`block_kinds`; batch entries are alike)."""
    ndim = len(expr.shape)
    rows, cols = (block_kinds(expr.shape[d], 1, dim_cuts(expr, d)) for d in (ndim - 2, ndim - 1))
    return max(plan_expr(expr[_block_key(ndim, {**{d: (0, 1) for d in range(ndim - 2)}, ndim - 2: (i, i + 1),
                                                 ndim - 1: (j, j + 1)})]).peak_bytes
               for i in rows for j in cols)


def _slice_search(expr, c: Canon, budget: int, bound: int) -> SlicedPlan | None:
    """:func:`slice_plan`'s search; None when no block fits ``budget`` in at most ``bound``
    slices."""
    plan = plan_canon(c)
    if plan.work_bytes <= budget:
        out = SlicedPlan(plan, (), 1, plan.flops, plan.work_bytes, budget)
    else:
        dims, where = [], {}
        shape = tuple(expr.shape)
        while True:
            options = [o for d in range(len(shape)) if d not in where and shape[d] > 1
                       for o in _options(expr, c, plan, where, d, budget)]
            if not options:
                return None
            cut = math.prod(size for _, size, _, _ in dims)  # slices of the dims cut to entries
            fits = [o for o in options if o.fits and cut * -(-shape[o.dim] // o.block) <= bound]
            if any(o.fits for o in options) and not fits:
                return None  # cutting deeper only adds slices
            if fits:
                best = min(fits, key=lambda o: (o.flops, -o.block))
                d = best.dim
                dims.append((d, shape[d], best.block, _dim_kind(d, len(shape))))
                slices = math.prod(-(-size // blk) for _, size, blk, _ in dims)
                shared = best.shared
                note = _route_note(best, [o for o in options if o.dim == d])
                out = SlicedPlan(plan, tuple(dims), slices, int(best.flops),
                                 int(best.peak), budget, shared.spans if shared else (),
                                 shared.held_bytes if shared else 0, note)
                break
            # no one dim fits: cut the leading batch dim (batch entries share the least work),
            # else the rows, to single entries, and search again inside the block
            d = options[0].dim
            dims.append((d, shape[d], 1, _dim_kind(d, len(shape))))
            where[d] = (0, 1)
            if math.prod(size for _, size, _, _ in dims) > bound:
                return None
    return out


def _route_note(best: _Option, same_dim: list[_Option]) -> str:
    """What explain says about the work the blocks share."""
    if best.shared is not None:
        n = best.shared.products
        return (f"work the blocks share ({n} product{'s' if n > 1 else ''}, "
                f"{settings.format_bytes(best.shared.held_bytes)} held) formed once")
    others = [o for o in same_dim if o.shared is not None]
    if not others:
        return ""
    why = "fewer FLOPs than holding it" if any(o.fits for o in others) else "holding it does not fit"
    return f"each block forms again the work the blocks share ({why})"


def view_strides(v: View) -> tuple | None:
    """The strides of the tensor ``v`` stands for (its base row-major unless a wrapped tensor
    says otherwise); None when an op copies (a list index, a dtype cast)."""
    base = v.base
    shape = list(base.shape)
    tensor = getattr(base, "tensor", None)
    strides = list(tensor.stride()) if tensor is not None else \
        [math.prod(shape[i + 1:]) for i in range(len(shape))]
    for op in v.ops:
        if op[0] == "mT":
            shape[-2:], strides[-2:] = shape[:-3:-1], strides[:-3:-1]
            continue
        if op[0] != "index" or copies(op[1], op[2], op[3]):
            return None
        if isinstance(op[1], Gather):  # an expand of one member: its new dims step over nothing
            members = [int(op[1].array(k).reshape(-1)[0]) for k in range(len(op[1].arrays))]
            op = ("index", (*members, *[None] * len(op[1].shape)), op[2], op[3])
        batch = len(shape) - 2
        new_shape, new_strides, d = [], [], 0
        for e in (*op[1], *([range(shape[k]) for k in range(len(op[1]), batch)]), op[2], op[3]):
            if e is None:
                new_shape.append(1)
                new_strides.append(0)
                continue
            if isinstance(e, tuple):
                return None
            if isinstance(e, range):
                new_shape.append(len(e))
                new_strides.append(strides[d] * e.step)
            d += 1
        shape, strides = new_shape, new_strides
    return tuple(strides)


def merges_as_view(sizes, strides) -> bool:
    """Whether dims of these sizes and strides (outermost first) merge into one as a view, as
    ``reshape`` decides it: each dim larger than 1 must step over exactly the next such dim.
    Otherwise ``torch.matmul`` (merging batch dims) and ``torch.einsum`` (merging each operand's
    dims into its batched GEMM's three) copy the operand."""
    last = None
    for size, stride in zip(sizes, strides, strict=True):
        if size == 1:
            continue
        if last is not None and last[1] != stride * size:
            return False
        last = (size, stride)
    return True


def relaid_factors(t: Term) -> frozenset[int]:
    """Factors of ``t`` whose batch dims (those larger than 1) do not merge into one as a view, so
    that ``torch.matmul``, which reshapes a batched operand to one batch dim, copies them: a
    user's permuted leaf (``W.transpose(0, 1)`` of a ``(3, 2, m, k)`` tensor), a block of an inner
    batch dim (``t[:, :2]`` of a ``(2, 3, m, k)`` leaf). A lone factor is not multiplied: none."""
    if len(t.factors) < 2:
        return frozenset()
    out = []
    for i, v in enumerate(t.factors):
        dims = [k for k, size in enumerate(v.shape[:-2]) if size > 1]
        if len(dims) < 2:
            continue  # one batch dim always merges
        strides = view_strides(v)
        if strides is None:
            continue  # copying views are not counted (docs/memory-budgets.md)
        if not merges_as_view([v.shape[k] for k in dims], [strides[k] for k in dims]):
            out.append(i)
    return frozenset(out)


def _block_cost(block, dim: int, start: int, b: int) -> Plan:
    size = block.shape[dim]
    return plan_expr(block[_block_key(len(block.shape), {dim: (start, min(start + b, size))})])


def _block_peak(block, dim: int, b: int) -> int:
    """The largest peak of a block of ``b`` along ``dim``, over every kind (:func:`block_kinds`)."""
    return max(_block_cost(block, dim, start, b).peak_bytes
               for start in block_kinds(block.shape[dim], b, dim_cuts(block, dim)))


def _largest_block(block, dim: int, budget: int) -> int:
    """The largest block along ``dim`` whose peak fits ``budget`` (0 when one entry does not). Along
    a ``cat``'s parts (:func:`lazymat.rewrite.cut_points`) blocks differ: each kind is costed
    (:func:`block_kinds`), the peak is the largest."""
    if _block_peak(block, dim, 1) > budget:  # a block's result is a temporary, copied into the output
        return 0
    lo, hi = 1, block.shape[dim]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _block_peak(block, dim, mid) <= budget:  # lo fits, though a copy makes peaks non-monotonic
            lo = mid
        else:
            hi = mid - 1
    return lo


def _block_costs(block, dim: int, b: int) -> tuple[int, int]:
    """``(FLOPs over the whole dim, peak of one block)`` of blocks of ``b`` along ``dim``."""
    kinds = block_kinds(block.shape[dim], b, dim_cuts(block, dim))
    flops = sum(n * _block_cost(block, dim, start, b).flops for start, n in kinds.items())
    return flops, _block_peak(block, dim, b)


def dim_cuts(x, dim: int) -> tuple[int, ...]:
    """Where blocks of ``x`` along ``dim`` change form (:func:`lazymat.rewrite.cut_points`;
    none along a batch dim)."""
    ndim = len(x.shape)
    return cut_points(canonical(x), dim - ndim) if dim >= ndim - 2 else ()


def block_kinds(size: int, b: int, cuts: tuple) -> dict[int, int]:
    """``{start: how many blocks it stands for}`` over the blocks of ``b`` along a dim of ``size``
    cut at ``cuts`` (:func:`dim_cuts`): the blocks between two cuts alike (the first such), each
    block a cut falls inside, and a short last block, each its own. Costing these costs them all
    (an empty dim: its one empty block, standing for none)."""
    if not size:
        return {0: 0}
    full, rest = divmod(size, b)
    kinds: dict[int, int] = {}
    bounds = (0, *cuts, size)
    for lo, hi in itertools.pairwise(bounds):  # full blocks within [lo, hi)
        first, last = -(-lo // b), min(hi // b, full)
        if last > first:
            kinds[first * b] = last - first
    for q in cuts:  # a block a cut falls inside
        if q % b:
            kinds[q // b * b] = 1
    if rest:
        kinds[full * b] = 1
    return kinds


def clear_plan_tables() -> None:
    """Forget the plans kept by shapes (plans cached on live forms stay): the next new
    expression is planned from scratch (cold-planning benchmarks, tests)."""
    _chain_cache.clear()
