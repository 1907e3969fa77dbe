"""Deterministic memory counts of differentiable spectral calls under a memory budget, forward and
backward: the bytes torch allocates beside the answer during the forward call, and beside the
gradients it returns during ``backward()`` (counted allocation by allocation, as
``benchmarks/count_budget_blocks.py`` counts), for a batch of ``W_E W_Q[h] W_K[h]^T W_E^T`` QK
circuits whose ``W_Q`` and ``W_K`` require grad: unbudgeted, and under budgets from the least the
forward call names (``BudgetTooSmall.minimum``) up.

``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_budget_backward.py [heads vocab width head]``
"""

from __future__ import annotations

import sys

import torch

import lazymat as lm
from benchmarks.count_budget_blocks import Allocated, _bytes
from lazymat import linalg as LA

OPS = {
    "svdvals": lambda X, **k: LA.svdvals(X, **k).sum(),
    "nuc": lambda X, **k: LA.matrix_norm(X, "nuc", **k).sum(),
    "2": lambda X, **k: LA.matrix_norm(X, 2, **k).sum(),
    "eigvals": lambda X, **k: LA.eigvals(X, **k).abs().sum(),
    "eigvalsh": lambda X, **k: LA.eigvalsh(X, **k).sum(),
}


def _circuit(E, Q, K, op):
    leaves = [E.clone(), Q.clone().requires_grad_(), K.clone().requires_grad_()]
    e, q, k = (lm.lazy(t) for t in leaves)
    if op == "eigvalsh":  # a Hermitian score: W_E W_Q W_Q^T W_E^T
        return e @ q @ q.mT @ e.mT, leaves[1:]
    return e @ q @ k.mT @ e.mT, leaves[1:]


def _counted(E, Q, K, op, budget) -> tuple[int, int]:
    """(forward bytes beside the answer, backward bytes beside the gradients) of one call."""
    X, grads_of = _circuit(E, Q, K, op)
    kw = {} if budget is None else {"memory_budget": budget}
    with Allocated() as fwd:
        out = OPS[op](X, **kw)
    forward = fwd.peak - _bytes(out)
    with Allocated() as bwd:
        out.backward()
    backward = bwd.peak - sum(_bytes(t.grad) for t in grads_of if t.grad is not None)
    return forward, backward


def _least(E, Q, K, op) -> int:
    X, _ = _circuit(E, Q, K, op)
    try:
        OPS[op](X, memory_budget=1)
    except lm.BudgetTooSmall as err:
        return err.minimum
    return 1


def main(heads: int = 64, vocab: int = 1000, width: int = 64, head: int = 8) -> None:
    g = torch.Generator().manual_seed(0)
    E = torch.randn(vocab, width, generator=g, dtype=torch.float64)
    Q, K = (torch.randn(heads, width, head, generator=g, dtype=torch.float64) / width**0.5 for _ in range(2))
    print(f"({heads}, {vocab}, {vocab}) float64 QK circuits of rank {head}; W_Q, W_K require grad; "
          "bytes allocated beside the answer (forward) and beside the gradients (backward)")
    print(f"{'op':>9} {'budget':>12} {'forward':>12} {'backward':>12} {'backward/budget':>16}")
    for op in OPS:
        least = _least(E, Q, K, op)
        for label, budget in [("none", None), ("least", least), ("4x least", 4 * least),
                              ("16x least", 16 * least)]:
            forward, backward = _counted(E, Q, K, op, budget)
            ratio = "" if budget is None else f"{backward / budget:.2f}"
            shown = label if budget is None else f"{budget}"
            print(f"{op:>9} {shown:>12} {forward:>12} {backward:>12} {ratio:>16}  ({label})")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
