"""How a product of two runtime tensors is handed to torch.

``torch.matmul`` of operands whose batch dims broadcast against each other, such as an
earlier head's ``(a, 1, m, k)`` against a later head's ``(b, k, n)`` in an all-pairs circuit,
first copies both operands to the full ``a x b`` batch (its batched GEMM needs one uniform
batch stride): ``b`` times the left operand and ``a`` times the right, memory that no plan
counts (60 x 60 pairs of 64 x 768 @ 768 x 64 products: 1410 MiB for a 59 MiB result, 4.5x
slower). :func:`matmul` hands such products to ``torch.einsum`` instead, which folds each
operand's own batch dims into its GEMM rows or columns: one GEMM, at most one copy of one
operand (to lay it out for that GEMM), and the result as a view of the one it writes.
"""

from __future__ import annotations

import math

import torch

__all__ = ["matmul"]


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)``, without materialising a broadcast of the batch dims."""
    if a.ndim > 2 and b.ndim > 2 and a.shape[:-2] != b.shape[:-2] \
            and math.prod(a.shape[:-2]) > 1 and math.prod(b.shape[:-2]) > 1:
        return torch.einsum("...ij,...jk->...ik", a, b)
    return torch.matmul(a, b)
