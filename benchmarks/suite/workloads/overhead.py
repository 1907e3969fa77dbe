"""What lazymat adds to small products: build + plan + evaluate from fresh tensors each call
(while an identical expression is alive, hash-consing returns it and nothing is built), with
the shape-keyed plan table warm, and cold (emptied before every call)."""

from __future__ import annotations

import opt_einsum as oe
import torch

import lazymat as lm
from lazymat import plan as plan_module

from ..case import Case, Context
from ..floor import Floor


def _cold(fn):
    def call():
        plan_module.clear_plan_tables()  # plans kept by shapes are forgotten: the next one is cold
        return fn()
    return call


def overhead(ctx: Context) -> list[Case]:
    n = 16 if ctx.preset == "tiny" else 64
    g = torch.Generator().manual_seed(0)
    A, B, C, D, E = (torch.randn(n, n, generator=g).to(ctx.device) for _ in range(5))
    chain_eq = "ab,bc,cd,de->ae"

    def chain():
        return (lm.lazy(A[...]) @ B[...] @ C[...] @ D[...]).to_dense()

    def mixed():
        return ((lm.lazy(A[...]) @ B[...] + 2.0 * (lm.lazy(C[...]) @ D[...])).mT @ E[...]).to_dense()

    chain_peers = {
        "eager": lambda: A @ B @ C @ D,
        "multi_dot": lambda: torch.linalg.multi_dot([A, B, C, D]),
        "torch.einsum": lambda: torch.einsum(chain_eq, A, B, C, D),
        "opt_einsum": lambda: oe.contract(chain_eq, A, B, C, D, backend="torch"),
    }
    mixed_peers = {"eager": lambda: (A @ B + 2.0 * (C @ D)).mT @ E}
    chain_floor = Floor.of(lm.lazy(A) @ B @ C @ D, "to_dense")
    mixed_floor = Floor.of((lm.lazy(A) @ B + 2.0 * (lm.lazy(C) @ D)).mT @ E, "to_dense")
    label = f"4 x {n}x{n}"
    return [
        Case("overhead", f"chain {label}, warm plan", {"lazymat": chain, **chain_peers}, floor=chain_floor),
        Case("overhead", f"chain {label}, cold plan", {"lazymat": _cold(chain), **chain_peers},
             floor=chain_floor),
        Case("overhead", f"(AB + 2CD)^T E, {n}x{n}, warm plan", {"lazymat": mixed, **mixed_peers},
             floor=mixed_floor),
        Case("overhead", f"(AB + 2CD)^T E, {n}x{n}, cold plan", {"lazymat": _cold(mixed), **mixed_peers},
             floor=mixed_floor),
    ]
