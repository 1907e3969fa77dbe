"""Factor form ``X = L @ R`` with the smallest inner width the planner can find.

- A product is split at its narrowest chain dim; among equally narrow splits, the one
  whose two halves are cheapest to form (opt_einsum costs) wins.
- A sum of low-rank terms stacks its terms' factors, ``[c1 L1, c2 L2] @ [R1; R2]``, while
  that stays narrower than ``min(m, n)``; past that the matrix itself is the better core
  and one side is the identity.

Everything spectral (:mod:`lazymat.linalg`) is computed from ``L`` and ``R``: an
``(..., m, r)`` and an ``(..., r, n)`` matrix, never the ``m x n`` one.
"""

from __future__ import annotations

import torch

from .expr import Expr, Leaf
from .plan import plan_chain
from .rewrite import _RULES, Term, canonical, stack_low_rank, term_expr, to_expr


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


def factor(x: Expr) -> tuple[Expr, Expr]:
    """Lazy ``(L, R)`` with ``x == L @ R``, ``L: (..., m, r)``, ``R: (..., r, n)``, small ``r``.

    An identity factor stands for the side that needs none (``L = I_m`` when the matrix
    itself is the narrowest core). Cached on ``x``."""
    hit = x._cache.get("factor")
    if hit is not None:  # None stands for x itself (a cache holding x would be a cycle)
        return tuple(x if side is None else side for side in hit)
    c = canonical(x)
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
    x._cache["factor"] = tuple(None if side is x else side for side in out)
    return out


def is_identity(x: Expr) -> bool:
    """True for the identity factors :func:`factor` makes (so callers can skip them)."""
    return isinstance(x, Identity)
