"""Run plans with torch: leaf views, planned pairwise products, sums, nested blocks.

Within one evaluation, a nested block (a sum used as a factor, a concatenation) is
computed once however often it appears, and, where a form repeats a factor, a sub-product
computed for one term is reused by any other that needs the same views in the same order.
"""

from __future__ import annotations

import torch

from . import settings
from .indexing import torch_key
from .plan import ChainPlan, plan_canon
from .rewrite import Canon, Leaf, Nested, Term, View, canonical


class SymbolHasNoData(ValueError):
    """Raised when data is needed from a shape-only ``lm.symbol``."""


class _Memo:
    """Per-evaluation memory: nested blocks by identity, sub-products by their views.
    Sub-products are only remembered when the form has more than one product or repeats
    a view (otherwise nothing can be reused, and keying would cost O(n^2) on long chains)."""

    __slots__ = ("blocks", "chains", "share")

    def __init__(self, share: bool = True) -> None:
        self.blocks: dict[int, torch.Tensor] = {}
        self.chains: dict[tuple, torch.Tensor] = {}
        self.share = share


def evaluate(expr) -> torch.Tensor:
    """Dense value of ``expr`` (see :meth:`lazymat.expr.Expr.to_dense`)."""
    c = canonical(expr)
    share = c._may_share
    if share is None:
        factors = c.terms[0].factors
        share = c._may_share = len(c.terms) > 1 or len(set(factors)) < len(factors) or any(
            isinstance(v.base, Nested) for v in factors)
    return run_canon(c, _Memo(share=share))


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
    values: list = [v.base.tensor if v.plain else view_value(v, memo) for v in factors]
    matmul = torch.matmul
    if not share:
        for a, b in plan.program:
            values.append(matmul(values[a], values[b]))
            values[a] = values[b] = None  # free intermediates as soon as they are consumed
    else:
        spans = [(i, i) for i in range(len(factors))]
        last = len(plan.program) - 1
        for step, (a, b) in enumerate(plan.program):
            span = (spans[a][0], spans[b][1])
            spans.append(span)
            key = factors[span[0] : span[1] + 1]
            out = memo.chains.get(key) if step < last else None
            if out is None:
                out = matmul(values[a], values[b])
                if step < last:  # the whole term is not kept: it is summed right away
                    memo.chains[key] = out
            values.append(out)
            values[a] = values[b] = None
    result = values[-1]
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
        return base.tensor
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
