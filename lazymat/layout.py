"""Which of ``C`` or ``C^T`` a matrix product writes, so that BLAS reads both operands as stored.

A GEMM ``C = A @ B`` (row-major ``C``) runs fastest when ``A``'s stride-1 dim is the contracted
one and ``B``'s is ``C``'s column dim: both operands read as stored ("NN"). For gpt2-small's
``W_E (50257 x 768) @ W_K (768 x 64)`` that layout ran at 15 ms on one core of the 2-core CPU
(MKL, single thread), the same product of transposed operands, ``W_K^T @ W_E^T``, at 19 ms.
The one free choice is the layout of the result: ``A @ B`` or ``(B^T @ A^T)^T`` are the same
FLOPs on the same memory, one writes ``C`` row-major and the other column-major. So:

- :func:`matmul` computes ``(B^T @ A^T)^T`` when both operands are transposed views, which makes
  both of them read as stored (the result is a free transposed view);
- :func:`contraction_output` orders the labels of a pairwise einsum's result for the same
  effect: ``torch.einsum`` writes its result contiguous in the output's label order, the
  leading labels' operand as the GEMM's left one.

Mixed layouts (one operand transposed) read one operand transposed either way and are left
as they are; so are the GEMMs that contract the long dim (``L^H L``), which measured alike in
every layout. cuBLAS takes all four layouts at full speed, so on a GPU the choice costs nothing.
"""

from __future__ import annotations

import torch

__all__ = ["contraction_output", "is_transposed", "matmul"]


def is_transposed(t: torch.Tensor) -> bool:
    """True when the last two dims of ``t`` are stored column-major (a transposed view of a
    row-major matrix); a vector or a matrix with a dim of size 1 counts as row-major."""
    return (t.ndim >= 2 and t.shape[-2] > 1 and t.shape[-1] > 1
            and t.stride(-2) == 1 and t.stride(-1) != 1)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)``, computed as ``(b^T @ a^T)^T`` when both are transposed views, so
    that BLAS reads both operands as stored; the result is then a column-major view."""
    if is_transposed(a) and is_transposed(b):
        return torch.matmul(b.mT, a.mT).mT
    return torch.matmul(a, b)


def contraction_output(first: str, second: str, kept: str) -> str | None:
    """Label order of the result of the two-operand contraction ``first,second->kept`` (each
    operand's labels in its storage order, innermost last) that makes the GEMM read both
    operands as stored: the labels kept from both operands (batch dims), then the free labels
    of the operand whose innermost label is contracted, then the other's. None when neither
    order reads more operands as stored than the other (any order is as good)."""
    batch = [c for c in kept if c in first and c in second]
    free = [[c for c in t if c in kept and c not in batch] for t in (first, second)]
    contracted = set(first) & set(second) - set(kept)

    def read_as_stored(left: int) -> int:  # operands a GEMM with ``left`` on the left reads NN
        right = 1 - left
        ops = (first, second)
        return (ops[left][-1] in contracted) + (bool(free[right]) and ops[right][-1] in free[right])

    if not first or not second:
        return None
    score = (read_as_stored(0), read_as_stored(1))
    if score[0] == score[1]:
        return None
    left = 0 if score[0] > score[1] else 1
    return "".join(batch + free[left] + free[1 - left])
