"""Random chains of 6-10 matrices with irregular sizes (fixed seed): ``to_dense()`` against
``torch.linalg.multi_dot``, left-to-right ``@``, ``opt_einsum.contract`` and ``torch.einsum``.

lazymat wraps fresh tensor objects every call (build + warm plan + evaluate), so nothing is
served from an expression's or a leaf's cache: what a user pays for a new expression."""

from __future__ import annotations

import random

import opt_einsum as oe
import torch

import lazymat as lm

from ..case import Case, Context
from ..floor import Floor

SIZES = (8, 16, 32, 64, 128, 256, 512, 700)


def _lazy_chain(mats: list[torch.Tensor]) -> lm.Expr:
    x = lm.lazy(mats[0][...])
    for m in mats[1:]:
        x = x @ m[...]
    return x


def _left_to_right(mats: list[torch.Tensor]) -> torch.Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = out @ m
    return out


def chains(ctx: Context) -> list[Case]:
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    count = 4 if ctx.quick else 12
    sizes = SIZES[:4] if ctx.preset == "tiny" else SIZES
    cases = []
    for i in range(count):
        n = rng.randint(6, 10)
        dims = [rng.choice(sizes) for _ in range(n + 1)]
        mats = [torch.randn(dims[k], dims[k + 1], generator=g).to(ctx.device) for k in range(n)]
        eq = ",".join(oe.get_symbol(k) + oe.get_symbol(k + 1) for k in range(n)) + "->" + \
            oe.get_symbol(0) + oe.get_symbol(n)
        planned = oe.contract_expression(eq, *[m.shape for m in mats])
        case = Case("chains", f"chain {i + 1}: " + "x".join(map(str, dims)), {
            "lazymat": lambda mats=mats: _lazy_chain(mats).to_dense(),
            "multi_dot": lambda mats=mats: torch.linalg.multi_dot(mats),
            "left-to-right": lambda mats=mats: _left_to_right(mats),
            "opt_einsum": lambda mats=mats, planned=planned: planned(*mats, backend="torch"),
            "torch.einsum": lambda mats=mats, eq=eq: torch.einsum(eq, *mats),
        }, floor=Floor.of(_lazy_chain(mats), "to_dense"))
        cases.append(case)
    cases[0].notes.append("opt_einsum: contract_expression planned once, outside the timing")
    return cases
