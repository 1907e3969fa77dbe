"""Run plans with torch: leaf views, planned pairwise products, sums, nested blocks.

Within one evaluation, a nested block (a sum used as a factor, a concatenation) is
computed once however often it appears, and, where a form repeats a factor, a sub-product
computed for one term is reused by any other that needs the same views in the same order.
"""

from __future__ import annotations

import torch

from . import product_cache, settings
from .indexing import torch_key
from .plan import ChainPlan, plan_canon
from .rewrite import Canon, Leaf, Nested, Term, View, canonical

__all__ = ["SymbolHasNoData", "evaluate", "run_canon", "view_value"]


class SymbolHasNoData(ValueError):
    """Raised when data is needed from a shape-only ``lm.symbol``."""


class _Memo:
    """Per-evaluation memory: nested blocks by identity, sub-products by their views.

    Sub-products are only remembered when the form has more than one product or repeats
    a view (otherwise nothing can be reused, and keying would cost O(n^2) on long chains).
    A whole term is remembered only if another term needs it (``keep``): most are summed
    right away, and keeping them all would hold every term's result to the end."""

    __slots__ = ("blocks", "chains", "share", "keep")

    def __init__(self, share: bool = True, keep: frozenset = frozenset()) -> None:
        self.blocks: dict[int, torch.Tensor] = {}
        self.chains: dict[tuple, torch.Tensor] = {}
        self.share = share
        self.keep = keep


def evaluate(expr) -> torch.Tensor:
    """Dense value of ``expr`` (see :meth:`lazymat.expr.Expr.to_dense`)."""
    c = canonical(expr)
    if c._sharing is None:
        terms = _all_terms(c)
        factors = c.terms[0].factors
        share = len(terms) > 1 or len(set(factors)) < len(factors)
        c._sharing = (share, _needed_wholes(terms) if share else frozenset())
    share, keep = c._sharing
    return run_canon(c, _Memo(share, keep))


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


def run_canon(c: Canon, memo: _Memo) -> torch.Tensor:
    plan = c._plans.get(settings.get("optimize")) or plan_canon(c)
    if len(c.terms) == 1:  # a single term has the form's shape
        return _run_term(c.terms[0], plan.terms[0], memo, memo.share)
    out = None
    for term, tplan in zip(c.terms, plan.terms, strict=True):
        value = _run_term(term, tplan, memo, memo.share)
        out = value if out is None else out + value
    if out.shape != c.shape:
        out = out.expand(c.shape)
    return out


def _run_term(term: Term, plan: ChainPlan, memo: _Memo, share: bool) -> torch.Tensor:
    factors = term.factors
    found, skip, keep = product_cache.leaf_products(term, plan)
    values: list = [None if i in skip else
                    v.base.checked_tensor() if v.plain else view_value(v, memo)
                    for i, v in enumerate(factors)]
    n = len(factors)
    matmul = torch.matmul
    if not share:
        for step, (a, b) in enumerate(plan.program):
            out = found.get(step)
            if out is None and n + step not in skip:
                out = matmul(values[a], values[b])
                if step in keep:
                    product_cache.store(keep[step], out)
            values.append(out)
            values[a] = values[b] = None  # free intermediates as soon as they are consumed
    else:
        spans = [(i, i) for i in range(n)]
        last = len(plan.program) - 1
        for step, (a, b) in enumerate(plan.program):
            span = (spans[a][0], spans[b][1])
            spans.append(span)
            if n + step in skip:
                values.append(None)
                continue
            key = factors[span[0] : span[1] + 1]
            out = memo.chains.get(key)
            if out is None:
                out = found.get(step)
            if out is None:
                out = matmul(values[a], values[b])
                if step in keep:
                    product_cache.store(keep[step], out)
            if step < last or key in memo.keep:
                memo.chains[key] = out
            values.append(out)
            values[a] = values[b] = None
    result = values[-1]
    if len(plan.program) - 1 in found:  # the user's result must not alias the leaves' cache
        result = result.clone()
    if term.has_coefficient:
        result = result * term.coefficient()
    return result


def view_value(v: View, memo: _Memo) -> torch.Tensor:
    """The tensor a view stands for: its base with the view's ops applied."""
    t = _base_value(v.base, memo)
    for op in v.ops:
        kind = op[0]
        if kind == "mT":
            t = t.mT
        elif kind == "index":
            t = t[torch_key(op[1], op[2], op[3], t.device)]
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
