"""Top-k entries of every row of the full QK circuit of one head under a memory budget:
``lm.topk`` streams row blocks through the chain and never forms the matrix (50257 x 50257 is
9.4 GiB in float32). The hand-written route does the same by hand (``W_E W_Q`` once, then
row blocks of it times ``W_K^T W_E^T``, ``torch.topk`` per block); TransformerLens's
``FactoredMatrix`` has no top-k (its ``AB`` is the dense matrix), dense torch only where it fits."""

from __future__ import annotations

import torch

import lazymat as lm

from ..case import Case, Context
from ..floor import Floor
from .circuits import lazy_qk

BUDGET = 256 * 2**20
TOP_K = 10


def hand_topk(E, Q, Wk, k: int, budget: int) -> torch.return_types.topk:
    left, right = E @ Q, Wk.mT @ E.mT
    n = right.shape[-1]
    rows = max(1, budget // (n * E.element_size()))
    blocks = [torch.topk(left[i:i + rows] @ right, k, dim=-1) for i in range(0, left.shape[0], rows)]
    values, indices = torch.cat([b.values for b in blocks]), torch.cat([b.indices for b in blocks])
    return torch.return_types.topk((values, indices))


def topk(ctx: Context) -> list[Case]:
    W = ctx.weights()
    E, Q, Wk = W["W_E"], W["W_Q"][0, 0], W["W_K"][0, 0]
    n = E.shape[0]

    def lazymat():
        with lm.config(memory_budget=BUDGET):
            return lm.topk(lazy_qk(E, Q, Wk), TOP_K, dim=-1)

    case = Case("topk", f"top-{TOP_K} of every row, budget {BUDGET // 2**20} MiB",
                {"lazymat": lazymat, "hand-written": lambda: hand_topk(E, Q, Wk, TOP_K, BUDGET)},
                floor=Floor(flops=2 * n * n * Q.shape[-1]))  # the row blocks' GEMMs; top-k itself free
    case.skipped["TransformerLens"] = "FactoredMatrix has no top-k (only the dense AB)"
    why = ctx.dense_skip(n * n * 4, 2 * n * n * Q.shape[-1], f"top-k of {n} x {n}")
    if why:
        case.skipped["dense torch"] = why
    else:
        case.impls["dense torch"] = lambda: torch.topk(E @ Q @ Wk.mT @ E.mT, TOP_K, dim=-1)
    case.notes.append("hand-written: W_E W_Q once, then row blocks within the budget, torch.topk per block")
    return [case]
