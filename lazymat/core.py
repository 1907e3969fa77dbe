"""Factor form ``X = L @ R`` with the smallest inner width the planner can find.

- A product is split at its narrowest chain dim; among equally narrow splits, the one
  whose two halves are cheapest to form (opt_einsum costs) wins.
- A sum first loses the views all its terms start or end with (``A B C + A B D =
  A B (C + D)``), then is read as a product if that leaves one term.
- A sum of low-rank terms stacks its terms' factors, ``[c1 L1, c2 L2] @ [R1; R2]``, while
  that stays narrower than ``min(m, n)``; past that the matrix itself is the better core
  and one side is the identity.

Everything spectral (:mod:`lazymat.linalg`) is computed from ``L`` and ``R``: an
``(..., m, r)`` and an ``(..., r, n)`` matrix, never the ``m x n`` one.
"""

from __future__ import annotations

import weakref

import torch

from .expr import Expr, lazy, symbol
from .plan import plan_chain
from .rewrite import Term, canonical, common_factors, stack_low_rank, term_expr, to_expr

_identities: weakref.WeakSet = weakref.WeakSet()


def _identity(n: int, like: Expr) -> Expr:
    if any(_symbols(like)):
        eye = symbol(f"I{n}", (n, n), dtype=like.dtype, device=like.device)
    else:
        eye = lazy(torch.eye(n, dtype=like.dtype, device=like.device), name=f"I{n}")
    _identities.add(eye)
    return eye


def _symbols(x: Expr):
    from .expr import leaves

    return (leaf.is_symbol for leaf in leaves(x))


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


def factor(x: Expr) -> tuple[Expr, Expr]:
    """Lazy ``(L, R)`` with ``x == L @ R``, ``L: (..., m, r)``, ``R: (..., r, n)``, small ``r``.

    An identity factor stands for the side that needs none (``L = I_m`` when the matrix
    itself is the narrowest core). Cached on ``x``."""
    hit = x._cache.get("factor")
    if hit is not None:
        return hit
    c = common_factors(canonical(x))
    m, n = x.shape[-2], x.shape[-1]
    if len(c.terms) == 1:
        t = c.terms[0]
        itemsize = torch.empty((), dtype=x.dtype, device="meta").element_size()
        j = _best_split(t, itemsize)
        if j == 0:
            out = (_identity(m, x), x)
        elif j == len(t.factors):
            out = (x, _identity(n, x))
        else:
            out = (term_expr(t, t.factors[:j]), term_expr(t, t.factors[j:], with_coef=False))
    else:
        stacked = stack_low_rank(c)
        if stacked is not None:
            out = (to_expr(stacked[0]), to_expr(stacked[1]))
        elif m <= n:
            out = (_identity(m, x), x)
        else:
            out = (x, _identity(n, x))
    x._cache["factor"] = out
    return out


def is_identity(x: Expr) -> bool:
    """True for the identity factors :func:`factor` makes (so callers can skip them)."""
    return x in _identities
