"""Run plans with torch: leaf views, planned pairwise products, sums, nested blocks, and the
closed networks of traces, diagonals and norms (:func:`contract`), within a memory budget.

Within one evaluation, a nested block (a sum used as a factor, a concatenation) is
computed once however often it appears, and, where a form repeats a factor, a sub-product
computed for one term is reused by any other that needs the same views in the same order.

Budgets: an evaluation whose planned peak fits :func:`device_budget` runs as planned (the
check is one comparison). One that does not runs in blocks: ``to_dense`` fills its result in
blocks of batch entries, rows or columns (:func:`lazymat.plan.slice_plan`), forming first, once,
the products the blocks would each form again where holding them fits, a closed network
loops over blocks of labels (:func:`lazymat.network.slice_network`). Loops go through
:func:`lazymat.progress.blocks`; a result is returned, and a value cached, only once complete,
so an interrupted run (Ctrl-C) leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time

import torch

from . import expr as nodes
from . import layout, product_cache, progress, settings
from .coefficient import far, fold, power_of_two, times
from .expr import Expr, MatMul, lazy, matmul, postorder
from .indexing import apply_key
from .network import (
    Network,
    NetworkRun,
    dependent_steps,
    held_keys,
    kept_steps,
    leaf_steps,
    pairwise_form,
    plan_networks,
    terms_reserve,
)
from .plan import (
    NOTHING_SHARED,
    ChainPlan,
    Plan,
    SlicedPlan,
    blocks_bytes,
    coefficient_bytes,
    merges_as_view,
    plan_canon,
    plan_chain,
    plan_sharing,
    relaid_factors,
    rescales,
    scaled_operand,
    slice_plan,
    span_products,
    with_shared,
)
from .rewrite import Canon, Leaf, Nested, Term, View, canonical, chain_views, leaf_chain

__all__ = ["SymbolHasNoData", "contract", "contract_sum", "device_budget", "evaluate", "evaluate_as_written",
           "rescaled", "run_canon", "times_vector", "view_value"]


class SymbolHasNoData(ValueError):
    """Raised when data is needed from a shape-only ``lm.symbol``."""


_BUDGET_TTL = 1.0  # seconds a device's default budget is reused before free memory is read again
_device_budgets: dict = {}


def fits(device: torch.device | str, work_bytes: int, override: int | str | None = None) -> bool:
    """Whether ``work_bytes`` of intermediates fit the budget; small work with no budget set
    fits without asking the device (:data:`lazymat.settings.ALWAYS_FITS`)."""
    if override is None and work_bytes <= settings.ALWAYS_FITS and settings.get("memory_budget") is None:
        return True
    return work_bytes <= device_budget(device, override)


def device_budget(device: torch.device | str, override: int | str | None = None) -> int:
    """:func:`lazymat.settings.memory_budget`, with the default (a fraction of the device's
    free memory, which costs a system call to read) reused for :data:`_BUDGET_TTL` seconds, so
    the check an evaluation that fits pays is a comparison."""
    if override is not None or settings.get("memory_budget") is not None:
        return settings.memory_budget(device, override)
    now = time.monotonic()
    hit = _device_budgets.get(device)
    if hit is None or now - hit[1] > _BUDGET_TTL:
        hit = _device_budgets[device] = (settings.memory_budget(device), now)
    return hit[0]


class _Memo:
    """Per-evaluation memory: nested blocks by identity, sub-products by their views.

    Sub-products are only looked up when the form has more than one product or repeats
    a view (otherwise nothing can be reused, and keying would cost O(n^2) on long chains),
    and only kept when another product needs them (``keep``: formed more than once by the
    plans, or a whole term that is part of another): keeping them all would hold every
    intermediate to the end, above the plan's peak."""

    __slots__ = ("blocks", "chains", "share", "keep", "kept_lengths")

    def __init__(self, share: bool = True, keep: frozenset = frozenset()) -> None:
        self.blocks: dict[int, torch.Tensor] = {}
        self.chains: dict[tuple, torch.Tensor] = {}
        self.share = share
        self.keep = keep
        # chains only ever holds keys of keep: a span of another length is neither looked up
        # nor keyed (a key is a tuple of the span's views, O(span) to build and hash: every
        # span of a long chain keyed made matrix_power(X, 1000) quadratic, ~1M hashes)
        self.kept_lengths = frozenset(map(len, keep))


def evaluate(expr, memory_budget: int | str | None = None) -> torch.Tensor:
    """Dense value of ``expr`` (see :meth:`lazymat.expr.Expr.to_dense`), in blocks
    (:func:`lazymat.plan.slice_plan`) when the plan's intermediates exceed the memory budget.

    A fresh product of distinct views of data leaves (:func:`_fresh_chain`: a run of ``@`` over
    leaves, each maybe transposed or scaled, the run too) runs straight from its leaves by its
    chain's plan (found by shapes), with nothing to share and nothing the leaves' product
    cache could give (:func:`lazymat.product_cache.holds_none`): its form would be that one term
    of leaf views, so building it would change nothing. In a chain with a batch, the products of
    unbatched leaves its plan forms once for the batch (``plan.shared_steps``) are kept on the
    leaves, as the form's evaluation (:func:`_run_term`) keeps them."""
    fresh = _fresh_chain(expr)
    if fresh is not None and product_cache.holds_none(fresh[0]) and (len(set(fresh[0])) == len(fresh[0])
                                                                      or _distinct_views(*fresh[:2])):
        leaves, transposed, values, shapes, relaid, coefs = fresh
        plan = plan_chain(shapes, expr.dtype.itemsize, relaid=relaid)
        if not (plan.shared_steps or coefs):
            if fits(expr.device, plan.work_bytes, memory_budget):
                return _contract(values, plan)  # checked by _fresh_chain
        else:
            scale = _multiplier(coefs)
            where = None if scale is None else _placed(scale, plan, shapes, expr.dtype)
            # (a coefficient far from 1 goes through the form, whose plan counts the rescaled copies)
            if where != "rescaled" and fits(expr.device, _fresh_work(plan, scale), memory_budget):
                kinds = _kept_kinds(plan, leaves, transposed) if plan.shared_steps else None
                if where is not None:
                    values[where] = scale.times(values[where])
                out = _contract(values, plan, kinds)
                return out if scale is None or where is not None else scale.times(out)
    c = canonical(expr)
    plan = c._plans.get(settings.get("optimize")) or plan_canon(c)
    if not fits(c.device, plan.work_bytes, memory_budget):
        return _evaluate_sliced(expr, slice_plan(expr, device_budget(c.device, memory_budget)))
    sharing = c._sharing
    if sharing is None:
        sharing = c._sharing = plan_sharing(c)
    return run_canon(c, _UNWRITTEN_MEMO if sharing is NOTHING_SHARED else _Memo(*sharing), plan)


def times_vector(expr, v: torch.Tensor, left: bool) -> torch.Tensor:
    """``expr @ v`` for a vector ``v`` of shape ``(n,)`` (``v @ expr`` when ``left``): the tensor
    of shape ``(..., m)`` (``(..., n)``); the caller has checked shapes, dtypes and devices.

    When ``expr`` is a fresh product of data leaves (:func:`_fresh_chain`: its leaves are read, no
    form is built) or its form is one product of leaf views (read as it is, cached on ``expr``),
    ``v`` joins that product as one more factor (a column ``(n, 1)``, or a row): no node is built
    for it, and the chain's plan (cached by shapes) orders the products, matrix-vector products
    from the vector's end. The products take ``v`` as it is (torch's matrix-vector products, the
    last one broadcast over the batch) unless the plan multiplies it by a factor with batch dims
    before its last step (:attr:`lazymat.plan.ChainPlan.vector_ends`): then as a column or row.
    Any other form (a sum, nested blocks), and a chain whose intermediates exceed the memory
    budget, goes through :func:`evaluate` with a leaf for the column or row (which slices to fit)."""
    end = -2 if left else -1
    shape = expr.shape
    fresh = _fresh_chain(expr)
    if fresh is not None:
        values, shapes, relaid = fresh[2], list(fresh[3]), fresh[4]
        term = _multiplier(fresh[5]) if fresh[5] else None
    else:
        c = canonical(expr)
        term = c.terms[0] if len(c.terms) == 1 else None
        shapes = [] if term is None else [f.shape for f in term.factors if type(f.base) is Leaf]
        if term is None or len(shapes) != len(term.factors):
            shapes = None
        # factors whose batch dims do not merge are copied by torch.matmul (one batch dim merges)
        relaid = relaid_factors(term) if shapes is not None and len(shape) > 3 else frozenset()
        values = None
    if shapes is not None:
        if left:
            shapes.insert(0, (1, v.shape[0]))
        else:
            shapes.append((v.shape[0], 1))
        if left and relaid:
            relaid = frozenset(i + 1 for i in relaid)
        plan = plan_chain(tuple(shapes), expr.dtype.itemsize, relaid=relaid)
        where = None if term is None or not term.has_coefficient else _placed(term, plan, shapes, expr.dtype)
        # (a coefficient far from 1: as a product with the vector's leaf, whose plan counts the copies)
        if where != "rescaled" and fits(expr.device, plan.peak_bytes):
            if values is None:
                values = [f.base.checked_tensor() if f.plain else view_value(f, _UNWRITTEN_MEMO)
                          for f in term.factors]
            column = len(shape) > 2 and not plan.vector_ends[0 if left else 1]
            operand = v.unsqueeze(end) if column else v
            if left:
                values.insert(0, operand)
            else:
                values.append(operand)
            if where is not None:
                values[where] = term.times(values[where])
            out = _contract(values, plan)
            if column:
                out = out.squeeze(end)
            return term.times(out) if term is not None and term.has_coefficient and where is None else out
    leaf = lazy(v.unsqueeze(end))
    return evaluate(matmul(leaf, expr) if left else matmul(expr, leaf)).squeeze(end)


def _fresh_chain(expr) -> tuple | None:
    """``expr`` read as one product of data-leaf views (:func:`lazymat.rewrite.chain_views`) when
    it holds nothing cached yet (a fresh expression): ``(leaves, transposed, values, shapes,
    relaid, coefs)``, ``values`` the tensors the views stand for (checked here, as
    :meth:`~lazymat.expr.Leaf.checked_tensor` does), ``shapes`` theirs and ``relaid`` the factors
    whose batch dims ``torch.matmul`` copies to merge (as :func:`lazymat.plan.relaid_factors`
    finds them on the form). Evaluated once, as most expressions are, its value is read straight
    from the leaves. ``expr`` is marked as read: evaluated again, it makes its form (cached on
    it, with its plan), which later evaluations read at less cost."""
    cache = expr._cache_dict  # read without making one (see Expr._cache)
    if cache and ("canon" in cache or "read" in cache):
        return None
    leaves = leaf_chain(expr) if type(expr) is MatMul else None
    if leaves is None:
        read = chain_views(expr)
        if read is None:
            return None
        leaves, transposed, coefs = read
    else:
        transposed = coefs = None
    values, shapes = [], []
    for x in leaves:
        t = x.tensor
        if t is None or t.shape != x.shape:
            if t is None:
                return None  # a symbol: the general path says it has no data
            x.checked_tensor()  # raises LeafChanged, naming both shapes
        values.append(t)
        shapes.append(x.shape)
    if transposed is not None:
        for i, flip in enumerate(transposed):
            if flip:
                values[i], shapes[i] = values[i].mT, (*shapes[i][:-2], shapes[i][-1], shapes[i][-2])
    relaid = _NONE_RELAID if len(expr.shape) < 4 else _relaid(leaves, shapes)
    (expr._cache if cache is None else cache)["read"] = True
    return leaves, transposed, values, tuple(shapes), relaid, coefs


_NONE_RELAID: frozenset = frozenset()


def _distinct_views(leaves: list[Leaf], transposed: list[bool] | None) -> bool:
    """Whether a fresh chain that reads a leaf twice reads no view twice (``E @ Q @ K.mT @ E.mT``
    reads ``E`` and ``E.mT``): then its form shares nothing (:func:`lazymat.plan.plan_sharing`)."""
    return transposed is not None and len(set(zip(leaves, transposed, strict=True))) == len(leaves)


def _relaid(leaves: list[Leaf], shapes: list) -> frozenset[int]:
    """Which of ``leaves`` (read as views of ``shapes``, their batch dims the leaves') have batch
    dims larger than 1 that do not merge into one as a view: :func:`lazymat.plan.relaid_factors`
    read from the tensors (a row-major tensor's always merge)."""
    if all([x.tensor.is_contiguous() for x in leaves]):
        return _NONE_RELAID
    out = []
    for i, (x, s) in enumerate(zip(leaves, shapes, strict=True)):
        dims = [k for k, size in enumerate(s[:-2]) if size > 1]
        if len(dims) > 1 and not merges_as_view([s[k] for k in dims], [x.tensor.stride(k) for k in dims]):
            out.append(i)
    return frozenset(out)


def _multiplier(coefs: list | None) -> Term | None:
    """The multipliers of a fresh chain (:func:`_fresh_chain`) as its form's term holds them (a term
    without factors: numbers folded into ``coef``, the innermost first, 0-dim tensors kept apart
    for autograd), or None when they make no coefficient."""
    if not coefs:
        return None
    coef, scalars = 1.0, []
    for k in reversed(coefs):
        if isinstance(k, torch.Tensor):
            scalars.append(k)
        else:
            coef = fold(coef, k)
    term = Term(coef, tuple(scalars), (), ())
    return term if term.has_coefficient else None


def _placed(term: Term, plan: ChainPlan, shapes, dtype: torch.dtype) -> int | str | None:
    """Where a product of ``shapes`` by ``plan`` (a fresh chain's, or a term's with a vector joined)
    applies ``term``'s coefficient, as its form's term would (:func:`lazymat.plan.rescales`,
    :func:`lazymat.plan.scaled_operand`): ``"rescaled"``, the operand it scales first, or None:
    the product's value. Not an operand of a product kept on the leaves (``plan.shared_steps``)."""
    if not term.scalars and far(term.coef, dtype):
        return "rescaled"
    i = scaled_operand(term, plan, shapes=shapes)
    if i is not None and any(lo <= i <= hi for _, lo, hi in plan.shared_steps):
        return None
    return i


def _fresh_work(plan: ChainPlan, scale: Term | None) -> int:
    """Bytes a fresh chain's evaluation by ``plan`` allocates beside its result, at most: the
    product's result is a temporary when scaled, and the products kept on the leaves are held
    to the end (as :func:`lazymat.plan.evaluation_bytes` counts them on the form)."""
    work = plan.work_bytes if scale is None else plan.peak_bytes + coefficient_bytes(scale)
    return work + sum([plan.steps[k].out_bytes for k, *_ in plan.shared_steps])


def _kept_kinds(plan: ChainPlan, leaves: list[Leaf], transposed: list[bool] | None) -> list:
    """How :func:`_contract` runs each step of ``plan`` over a fresh chain's leaves: ``plan.plain``,
    each of ``plan.shared_steps`` given as ``(leaves, ops, plain)``, the leaves and view ops
    (:class:`lazymat.rewrite.View`'s, per leaf) of the span whose product it keeps on the leaves
    (:func:`lazymat.product_cache.store_span`: no view is built)."""
    kinds: list = list(plan.plain)
    for k, lo, hi in plan.shared_steps:
        ops = ((),) * (hi - lo + 1) if transposed is None else \
            tuple([_TRANSPOSED if flip else () for flip in transposed[lo : hi + 1]])
        kinds[k] = (leaves[lo : hi + 1], ops, kinds[k])
    return kinds


_TRANSPOSED = (("mT",),)  # a leaf's view ops when read as .mT


def _contract(values: list, plan: ChainPlan, kinds: list | None = None) -> torch.Tensor:
    """The product of ``values`` (one tensor per factor; the list is used up) by ``plan.program``
    (pairs of slots; each step's result is the next slot), each intermediate freed once read: the
    loop every product without a cached or shared sub-product runs (as ``plan.run``, the program
    compiled, :func:`lazymat.plan.compiled_program`, unless ``kinds`` keeps products). A plain
    step (``plan.plain``, read from the shapes when the plan was made) is ``torch.matmul``
    itself; any other goes through :func:`lazymat.layout.matmul`, which never copies a broadcast
    batch and writes intermediates in the layout BLAS runs fastest (maybe as transposed views);
    the result is written row-major. ``kinds`` (:func:`_kept_kinds`) also names the views of the
    steps whose product is kept on the leaves. Without autograd recording, operands that require
    grad are read detached: ``torch.matmul`` folds a batch by another rule for them (a copy the
    plan does not count: the spectral norm of ``t2x1 @ t1x2 @ t2x2x2`` under 88 B allocated 96 B
    under ``torch.no_grad``)."""
    if not torch.is_grad_enabled() and any([v.requires_grad for v in values]):
        values[:] = [v.detach() for v in values]  # (in place: each is freed once read, as before)
    if kinds is None:
        return plan.run(values, torch.matmul, layout.matmul)  # the loop below, compiled for the plan
    torch_matmul, layout_matmul = torch.matmul, layout.matmul
    last = len(plan.program) - 1
    for step, ((a, b), plain) in enumerate(zip(plan.program, kinds or plan.plain, strict=True)):
        x, y = values[a], values[b]
        values[a] = values[b] = None
        values.append(torch_matmul(x, y) if plain is True else
                      layout_matmul(x, y, free_layout=step != last) if plain is False else _kept(x, y, plain))
    return values[-1].contiguous()  # (einsum's result as its GEMM wrote it: as plan_chain counts)


def _kept(x: torch.Tensor, y: torch.Tensor, kind: tuple) -> torch.Tensor:
    """``x @ y``, the product of the leaves ``kind[0]`` read with ``kind[1]``'s view ops
    (``kind[2]``: whether the step is plain), kept on the leaves
    (:func:`lazymat.product_cache.store_span`) for a later evaluation."""
    leaves, ops, plain = kind
    out = torch.matmul(x, y) if plain else layout.matmul(x, y)
    product_cache.store_span(leaves, ops, out)
    return out


def rescaled(values: list[torch.Tensor], k, product) -> torch.Tensor:
    """``k * product(values)`` with every factor first scaled by a power of two (exact) that
    centres its magnitudes on 1 (the middle, in exponent, of its smallest nonzero and largest
    magnitudes), the powers folded into ``k`` and applied last in range
    (:func:`lazymat.coefficient.times`): no product over- or underflows for the magnitudes of
    the factors or of ``k`` (only for the spread of the factors' own entries), wherever the
    answer is in range (``values`` is used up). Two reductions over each factor's magnitudes
    (two values read back) and one pass to scale it into a copy. What a term whose coefficient
    is far from 1 runs (:func:`lazymat.plan.rescales`); under a ``torch.func`` transform, the
    product scaled last."""
    if torch._C._are_functorch_transforms_active():  # (torch.vmap cannot read a value back)
        return times(product(values), k)
    total = 0
    for i, v in enumerate(values):
        if v.numel():
            size = v.detach().abs()
            hi = float(size.amax())
            if hi != 0 and math.isfinite(hi):
                lo = float(torch.where(size > 0, size, hi).amin())
                e = (math.frexp(lo)[1] + math.frexp(hi)[1]) // 2
                values[i], total = times(v, power_of_two(-e)), total + e
            del size
    return times(product(values), fold(k, power_of_two(total)))


# What a form with nothing shared runs with: it has no nested block and looks no sub-product
# up, so nothing is ever written into its memo, and one empty memo serves every such call.
_UNWRITTEN_MEMO = _Memo(*NOTHING_SHARED)


def _evaluate_sliced(expr, sliced: SlicedPlan) -> torch.Tensor:
    """Fill the result block by block (each block ``expr[key]`` evaluated as a plan that fits,
    within what the budget leaves); the work the blocks share is formed first when the plan
    says so (:func:`_with_shared_values`). The result is handed back only when every block is
    in place."""
    target, budget = expr, sliced.budget
    if sliced.shared:
        target = _with_shared_values(expr, sliced)
        budget -= sliced.held_bytes
    ndim = expr.ndim
    ranges = [[(s, min(s + blk, size)) for s in range(0, size, blk)] for _, size, blk, _ in sliced.dims]
    out = None
    estimate = sliced.flops / _FLOPS_PER_SECOND.get(torch.device(expr.device).type, 5e10)
    for spans in progress.blocks(itertools.product(*ranges), total=sliced.slices,
                                 desc="lazymat sliced evaluation", estimate_seconds=estimate):
        key = [slice(None)] * ndim
        for (dim, *_), (start, stop) in zip(sliced.dims, spans, strict=True):
            key[dim] = slice(start, stop)
        with product_cache.not_kept():  # what a block would keep on the leaves no other block reads
            block = evaluate(target[tuple(key)], memory_budget=budget)
        if out is None:
            out = block.new_empty(tuple(expr.shape))
        out[tuple(key)] = block
        del block
    return out


def _with_shared_values(expr, sliced: SlicedPlan):
    """``expr`` with the products the blocks share (``sliced.shared``) formed now, once each,
    and read by the blocks as leaves (:func:`lazymat.plan.with_shared`)."""
    c = canonical(expr)
    values, held = {}, 0
    for key, product in span_products(c, sliced.shared).items():
        with product_cache.not_kept():  # held_bytes counts the values, not what they leave on the leaves
            value = evaluate(product, memory_budget=sliced.budget - held)
        if not (value.is_contiguous() or value.mT.is_contiguous()):
            # laid out by torch.einsum: every block's torch.matmul would copy it (the blocks' plans
            # read it as a row-major leaf); copied once here, as plan._shared_work counts
            value = value.contiguous()
        values[key] = lazy(value)
        held += value.numel() * value.element_size()
    return with_shared(c, sliced.shared, values)


def run_canon(c: Canon, memo: _Memo, plan: Plan | None = None) -> torch.Tensor:
    """The dense value of ``c`` under ``plan`` (default: its plan for the current optimizer)."""
    if plan is None:
        plan = c._plans.get(settings.get("optimize")) or plan_canon(c)
    if len(c.terms) == 1:  # a single term has the form's shape
        return _run_term(c.terms[0], plan.terms[0], memo, memo.share)
    out = None
    for term, tplan in zip(c.terms, plan.terms, strict=True):
        value = _run_term(term, tplan, memo, memo.share)
        out = value if out is None else out + value
        del value  # freed now, not when the next term's value replaces it (the plan's peak)
    if out.shape != c.shape:
        out = out.expand(c.shape)
    return out


def _run_term(term: Term, plan: ChainPlan, memo: _Memo, share: bool) -> torch.Tensor:
    """The value of ``term`` by ``plan``: its products (:func:`_formed_term`), or, when its
    coefficient is far from 1 (:func:`lazymat.plan.rescales`), those of its factors rescaled
    (:func:`rescaled`: nothing shared or cached is read or kept)."""
    if rescales(term):
        values = [v.base.checked_tensor() if v.plain else view_value(v, memo) for v in term.factors]
        return rescaled(values, term.coef, lambda vs: _contract(vs, plan))
    return _formed_term(term, plan, memo, share)


def _formed_term(term: Term, plan: ChainPlan, memo: _Memo, share: bool) -> torch.Tensor:
    factors = term.factors
    found, skip, keep = product_cache.leaf_products(term, plan)
    if skip:
        values: list = [None if i in skip else
                        v.base.checked_tensor() if v.plain else view_value(v, memo)
                        for i, v in enumerate(factors)]
    else:
        values = [v.base.checked_tensor() if v.plain else view_value(v, memo) for v in factors]
    first = None
    if term.has_coefficient and not found:  # (a product found on the leaves was formed unscaled)
        first = scaled_operand(term, plan, memo.kept_lengths if share else frozenset())
        if first is not None:
            values[first] = term.times(values[first])
    if not (share or found or keep):
        result = _contract(values, plan)
        return term.times(result) if term.has_coefficient and first is None else result
    n = len(factors)
    matmul = layout.matmul  # never copies a broadcast batch; intermediates in the layout BLAS
    last = len(plan.program) - 1  # runs fastest (maybe transposed views), the result row-major
    spans = [(i, i) for i in range(n)]
    for step, (a, b) in enumerate(plan.program):
        span = (spans[a][0], spans[b][1])
        spans.append(span)
        if n + step in skip:
            values.append(None)
            continue
        kept = share and span[1] - span[0] + 1 in memo.kept_lengths
        key = factors[span[0] : span[1] + 1] if kept else None
        out = memo.chains.get(key) if kept else None
        if out is None:
            out = found.get(step)
        if out is None:
            if step != last:
                out = matmul(values[a], values[b])
            else:  # row-major, as plan_chain counts it (einsum's layout copied, or torch.matmul's broadcast)
                out = torch.matmul(values[a], values[b]) if plan.plain[last] else \
                    matmul(values[a], values[b], free_layout=False).contiguous()
            if step in keep:
                product_cache.store(keep[step], out)
        if kept and key in memo.keep:
            memo.chains[key] = out
        values.append(out)
        values[a] = values[b] = None  # free intermediates as soon as they are consumed
    result = values[-1]
    if last in found:  # the user's result must not alias the leaves' cache
        result = result.clone(memory_format=torch.contiguous_format)
    if term.has_coefficient and first is None:
        result = term.times(result)
    return result


def view_value(v: View, memo: _Memo, untransposed: bool = False) -> torch.Tensor:
    """The tensor a view stands for: its base with the view's ops applied (with all but the
    last, a ``.mT``, when ``untransposed``)."""
    t = _base_value(v.base, memo)
    for op in v.ops[:-1] if untransposed else v.ops:
        kind = op[0]
        if kind == "mT":
            t = t.mT
        elif kind == "index":
            t = apply_key(t, op[1], op[2], op[3])
        elif kind == "to":
            t = t.to(device=op[1], dtype=op[2])
        else:  # pragma: no cover
            raise ValueError(f"unknown view op {op!r}")
    return t


def _base_value(base: Leaf | Nested, memo: _Memo) -> torch.Tensor:
    if isinstance(base, Leaf):
        if base.tensor is None:
            raise SymbolHasNoData(
                f"symbol {base.name!r} of shape {tuple(base.shape)} has no data; plans and "
                "costs work on symbols, values need lm.lazy(tensor)"
            )
        return base.checked_tensor()
    hit = memo.blocks.get(id(base))
    if hit is None:
        if base.kind == "sum":
            hit = run_canon(base.parts[0], memo)
        else:
            parts = [run_canon(p, memo) for p in base.parts]
            batch = tuple(base.shape[:-2])
            parts = [p.expand(*batch, *p.shape[-2:]) for p in parts]
            hit = torch.cat(parts, dim=base.axis)
        memo.blocks[id(base)] = hit
    return hit


# ---- closed networks -------------------------------------------------------------------------
def contract(net: Network, operands: list[torch.Tensor], views: list | None = None,
             conj: list[bool] | None = None, memory_budget: int | str | None = None) -> torch.Tensor:
    """Run the closed network ``net`` on ``operands`` within the memory budget
    (:func:`lazymat.settings.memory_budget`). Given the operands' ``views`` (and which are
    conjugated), a step over unbatched leaf views is read from, or (when the network has a
    batch) kept in, the leaves' cache.

    When the schedule's live peak exceeds the budget, the network runs over blocks of the labels
    that :func:`lazymat.network.slice_network` picks (a batch dim, the diagonal's rows, or a
    contracted index, whose blocks are summed); steps that read no sliced label run once."""
    (run,), budgeted = _plan_call([net], 0, operands[0].device, memory_budget, None)
    with product_cache.not_kept() if budgeted else contextlib.nullcontext():
        return _run_planned(run, operands, {}, views, conj)


def contract_sum(terms: tuple[Term, ...], nets: list[Network], target: tuple, device: torch.device | str,
                 what: str, memory_budget: int | str | None = None) -> torch.Tensor:
    """``sum_t coef_t * net_t(factors of t)`` expanded to ``target``: the closed networks of a sum's
    terms (a trace or diagonal of a sum), run one after another as
    :func:`lazymat.network.plan_networks` plans them within the budget, a step that an earlier
    network kept read from there. ``what`` names the call in a
    :class:`lazymat.settings.BudgetTooSmall`."""
    reserve = terms_reserve(terms, target, nets[0].itemsize)
    runs, budgeted = _plan_call(nets, reserve, device, memory_budget, what, blocks_bytes(terms)[0])
    memo, values, total = _Memo(), {}, None
    with product_cache.not_kept() if budgeted else contextlib.nullcontext():
        for t in terms:  # the nested blocks first, in order, as blocks_bytes counts their forming
            for f in t.factors:
                if isinstance(f.base, Nested):
                    _base_value(f.base, memo)
        for t, run in zip(terms, runs, strict=True):
            for key in run.free:
                values.pop(key, None)  # (a rescaled network keeps none)
            # a factor whose class is its transpose is read untransposed (not transposed twice)
            flips = run.network.transposed
            operands = [view_value(f, memo, tr) for f, tr in zip(t.factors, flips, strict=True)]
            if rescales(t):  # (no step cached, nor kept for the next networks, is read)
                val = rescaled(operands, t.coef, lambda vs, r=run: _run_planned(r, vs, {}, None, None, True))
            else:
                val = _run_planned(run, operands, values, list(t.factors), None, untransposed=True)
                if t.has_coefficient:
                    val = t.times(val)
            del operands
            total = val if total is None else total + val
            del val
    return total if total.shape == target else total.expand(target)


def _plan_call(nets: list[Network], reserve: int, device: torch.device | str,
               memory_budget: int | str | None, what: str | None,
               forming: int = 0) -> tuple[tuple[NetworkRun, ...], bool]:
    """:func:`lazymat.network.plan_networks` under the budget, and whether it is budgeted; a call
    whose unbudgeted peak, or the ``forming`` of its nested blocks before it, fits (:func:`fits`)
    runs as planned without one. A budgeted call keeps nothing on the leaves (its plan counts
    no such value); blocks whose forming exceeds the budget are refused."""
    runs = plan_networks(nets, None, reserve)
    if fits(device, max(forming, *(r.peak_bytes for r in runs)), memory_budget):
        return runs, False
    budget = device_budget(device, memory_budget)
    return plan_networks(nets, budget, reserve, device, what, forming), True


def _run_planned(run: NetworkRun, operands: list[torch.Tensor], values: dict, views: list | None,
                 conj: list[bool] | None, untransposed: bool = False) -> torch.Tensor:
    """One network of a call as ``run`` says: whole or in blocks, keeping in ``values`` (key ->
    tensor) the steps later networks read (``untransposed``: see :func:`_prepared`)."""
    net = run.network
    if run.cost is None:
        out = _run_network(net, _prepared(net, operands, untransposed), values, run.keep, views, conj, {},
                           frozenset())
        return out if out.shape == net.out_shape else out.reshape(net.out_shape)
    return _run_sliced(net, run.cost, _prepared(net, operands, untransposed), values, run.keep, views, conj)


def _prepared(net: Network, operands: list[torch.Tensor], untransposed: bool = False) -> list[torch.Tensor]:
    """Operands as the program reads them: broadcast size-1 dims squeezed, transposed where
    their class is the other orientation (unless ``untransposed``: the caller read those
    without their last ``.mT``)."""
    out = []
    for t, sq, tr in zip(operands, net.squeeze, net.transposed, strict=True):
        t = t.squeeze(sq) if sq else t
        out.append(t.mT if tr and not untransposed else t)
    return out


def _run_network(net: Network, live: list, values: dict, keep: frozenset, views: list | None,
                 conj: list[bool] | None, fixed: dict, sliced: frozenset,
                 first: bool = True, dep: list[bool] | None = None,
                 hold: frozenset = frozenset()) -> torch.Tensor:
    """One run of ``net``'s program over ``live`` (one block when ``sliced``). Steps that read
    no sliced label (``dep[k]`` false) run in the first block only; those in ``hold`` are kept
    in ``fixed`` for later blocks. A step whose key is in ``values`` (kept by an earlier network
    of the call) is read from there. Each value is dropped after its last reader, unless a later
    step of this network reuses it or it is kept in ``values`` for later networks
    (:func:`lazymat.network.kept_steps` of ``keep``)."""
    dep = dep or [False] * len(net.program)
    leafy = {} if views is None else leaf_steps(net, views, conj or [False] * len(views), live[0].dtype)
    batched = views is not None and any(math.prod(v.shape[:-2]) > 1 for v in views)
    reused_later, last_use = _reused_keys(net)
    keep = kept_steps(net, keep)
    local: dict = {}
    found = False
    for k, (inds, order, run, key, _) in enumerate(net.program):
        ins = [live.pop(i) for i in inds]
        if not first and not dep[k]:
            live.append(fixed.get(key))
            continue
        out = None
        if not dep[k]:
            out = local.pop(key, None) if last_use[key] == k else local.get(key)
            out = values.get(key) if out is None else out
        found = out is None and k in leafy and not dep[k]
        if found:
            out = product_cache.lookup(*leafy[k])
            found = out is not None
        if out is None:
            out = _pairwise(run, [ins[i] for i in order])
            if k in leafy and batched and not dep[k]:
                product_cache.store(leafy[k][0], out, leafy[k][1])
        if k in keep and not dep[k] and key not in values:  # computed or found on the leaves alike
            values[key] = out
        if key in reused_later and not dep[k] and last_use[key] > k:  # (freed by its last reuse,
            local[key] = out  # as network.schedule_cost frees a value after its last reader)
        if key in hold and not dep[k]:  # a per-block step of the same key holds another block's value
            fixed[key] = out
        del ins
        live.append(out)
    last, final = net.out_labels
    out = live[0] if last == final else live[0].permute(*(last.index(c) for c in final))  # a view
    return out.clone() if found else out  # the user's result must not alias the leaves' cache


def _pairwise(run: str, operands: list[torch.Tensor]) -> torch.Tensor:
    """One step of a network: ``torch.einsum(run, *operands)``, a pairwise contraction lowered to
    its GEMM directly (:func:`lazymat.network.pairwise_form`: the same result, strides and
    copies, with a few views where einsum adds a dozen; on a GPU each costs the host a dispatch)."""
    form = pairwise_form(run, tuple([t.shape for t in operands])) if len(operands) == 2 else None
    if form is None:
        return torch.einsum(run, *operands)
    swap, perms, kind, (batch, rows, inner, cols), mid, out_perm = form
    a, b = operands[::-1] if swap else operands
    a = a if perms[0] is None else a.permute(perms[0])
    b = b if perms[1] is None else b.permute(perms[1])
    if kind == "dot":
        return torch.dot(a.reshape(inner), b.reshape(inner))
    shapes = ((rows, inner), (inner, cols)) if kind == "mm" else ((batch, rows, inner), (batch, inner, cols))
    a = a if a.shape == shapes[0] else a.reshape(shapes[0])
    b = b if b.shape == shapes[1] else b.reshape(shapes[1])
    out = torch.mm(a, b) if kind == "mm" else torch.bmm(a, b)
    out = out if out.shape == mid else out.view(mid)
    return out if out_perm is None else out.permute(out_perm)


@functools.lru_cache(maxsize=1024)
def _reused_keys(net: Network) -> tuple[frozenset, dict]:
    """The step keys a later step of ``net`` reuses, and per key the last step that has it."""
    return (frozenset(key for *_, key, reused in net.program if reused),
            {key: k for k, (*_, key, _) in enumerate(net.program)})


_FLOPS_PER_SECOND = {"cuda": 5e13, "cpu": 5e10}  # rough rates, only to decide on a progress bar


def _run_sliced(net: Network, cost, operands: list, values: dict, keep: frozenset, views: list | None,
                conj: list[bool] | None) -> torch.Tensor:
    """Run ``net`` once per block of the labels in ``cost.blocks``, writing each block's result
    into its place in the output (sliced output labels) or adding it there (sliced summed
    labels). The output is handed back only when every block has run."""
    blocks = dict(cost.blocks)
    sizes = dict(net.sizes)
    sliced = frozenset(blocks)
    dep = dependent_steps(net, set(sliced))
    hold = held_keys(net, set(sliced), keep)
    final = net.out_labels[1]
    summed = bool(sliced - set(final))
    names = sorted(blocks)
    starts = [range(0, sizes[c], blocks[c]) for c in names]
    fixed: dict = {}
    out = None
    estimate = cost.flops / _FLOPS_PER_SECOND.get(operands[0].device.type, 5e10)
    combos = itertools.product(*starts)
    for n, combo in enumerate(progress.blocks(combos, total=cost.slices, desc="lazymat sliced network",
                                              estimate_seconds=estimate)):
        where = {c: (s, min(blocks[c], sizes[c] - s)) for c, s in zip(names, combo, strict=True)}
        live = [_narrow(t, labels, where) for t, labels in zip(operands, net.labels, strict=True)]
        part = _run_network(net, live, values, keep, views, conj, fixed, sliced, n == 0, dep, hold)
        if out is None:
            out = part.new_zeros(tuple(sizes[c] for c in final))
        target = _narrow(out, final, where)
        if summed:
            target += part
        else:
            target.copy_(part)
        del part
    return out.reshape(net.out_shape)


def _narrow(t: torch.Tensor, labels: str, where: dict) -> torch.Tensor:
    """``t`` (dims named by ``labels``) cut to the block ``where`` (label -> (start, length))."""
    for dim, c in enumerate(labels):
        if c in where:
            start, length = where[c]
            t = t.narrow(dim, start, length)
    return t


def evaluate_as_written(x: Expr) -> torch.Tensor:
    """``x``'s dense value computed node by node as torch computes the expression written eagerly
    (each ``@`` in the order the user's parentheses give, each scalar where it was written): the
    inf and NaN entries torch's formed matrix has. Iterative; every node computed once."""
    values: dict[int, torch.Tensor] = {}
    for node in postorder(x):
        args = [values[child.uid] for child in node.children]
        if type(node) is nodes.Leaf:
            if node.tensor is None:
                raise SymbolHasNoData(f"symbol {node.name!r} of shape {tuple(node.shape)} has no data")
            out = node.checked_tensor()
        elif type(node) is nodes.Transpose:
            out = args[0].mT
        elif type(node) is nodes.MatMul:
            out = torch.matmul(*args)
        elif type(node) is nodes.Add:
            out = args[0] + args[1]
        elif type(node) is nodes.Scale:
            out = node.coef * args[0]
        elif type(node) is nodes.Cast:
            out = args[0].to(device=node.device, dtype=node.dtype)
        elif type(node) is nodes.Concat:
            out = torch.cat([a.expand(*node.shape[:-2], *a.shape[-2:]) for a in args], dim=node.axis)
        else:  # an Index
            out = apply_key(args[0], *node.key)
        values[node.uid] = out
    return values[x.uid]
