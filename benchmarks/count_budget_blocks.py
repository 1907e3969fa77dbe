"""Deterministic memory counts of batched spectral calls run in blocks of heads under the least
budget each names (``BudgetTooSmall.minimum``): the bytes torch allocates beside the answer,
counted allocation by allocation (a ``TorchDispatchMode``: every new storage from the op that
makes it until it is freed: :class:`lazymat.allocated.Allocated`), on 12 heads of a
``W_E W_Q W_K^T W_E^T`` circuit (2000-row vocabulary, width 64, head width 8), float64.

``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_budget_blocks.py``
"""

from __future__ import annotations

import torch

import lazymat as lm
from lazymat import linalg as LA
from lazymat.allocated import Allocated  # (imported from here by the other count scripts)


def _bytes(out) -> int:
    return out.untyped_storage().nbytes() if isinstance(out, torch.Tensor) else sum(map(_bytes, out))


def main() -> None:
    g = torch.Generator().manual_seed(0)
    heads, vocab, width, head = 12, 2000, 64, 8
    E = torch.randn(vocab, width, generator=g, dtype=torch.float64)
    Q, K = (torch.randn(heads, width, head, generator=g, dtype=torch.float64) for _ in range(2))
    ops = {"svdvals": LA.svdvals, "svd": LA.svd, "matrix_rank": LA.matrix_rank,
           "norm nuc": lambda X, **k: LA.matrix_norm(X, "nuc", **k)}
    print(f"({heads}, {vocab}, {vocab}) float64 circuits of rank {head}, each call from fresh leaves")
    print(f"{'op':>12} {'named minimum':>14} {'allocated beside the answer':>28} {'answer':>9}")
    for name, fn in ops.items():
        leaves = [lm.lazy(t.clone()) for t in (E, Q, K)]
        X = leaves[0] @ leaves[1] @ leaves[2].mT @ leaves[0].mT
        try:
            fn(X, memory_budget=1)
            least = 1
        except lm.BudgetTooSmall as err:
            least = err.minimum
        leaves = [lm.lazy(t.clone()) for t in (E, Q, K)]
        X = leaves[0] @ leaves[1] @ leaves[2].mT @ leaves[0].mT
        with Allocated() as counted:
            out = fn(X, memory_budget=least)
        print(f"{name:>12} {least:>12} B {counted.peak - _bytes(out):>26} B {_bytes(out):>7} B")


if __name__ == "__main__":
    main()
