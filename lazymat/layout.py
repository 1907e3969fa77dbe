"""Which of ``C`` or ``C^T`` a matrix product writes: the layout BLAS runs fastest.

``C = A @ B`` and ``C^T = B^T @ A^T`` are the same FLOPs on the same memory; the free choice is
whether the result is written row-major (``C``) or column-major (``C^T`` row-major). Measured
with MKL on one core of the 2-core CPU (``benchmarks/bench_layout.py``'s shapes, vocabulary
50257; ``A`` the tall operand, N as stored, T a transposed view)::

    result written            A N B N   A N B T   A T B N   A T B T
    K = 768, long dim rows      92 ms      96        107       115
    K = 768, short dim rows    147        146        132       132
    K = 64,  long dim rows       8.0        8.0       10.3      10.2
    K = 64,  short dim rows     14.7       14.9       14.8      14.6

Writing the result with its long dim outermost (as rows) is what matters most (``W_E @ W_K``
row-major, not ``W_K^T @ W_E^T`` row-major: 92 against 132 ms); among those, reading the
operands as stored. So :func:`writes_transposed` (the rule) writes ``C^T`` when ``C`` is wider
than tall, or square with both operands transposed views;

- :func:`matmul` applies it to a product of tensors (the result is then a column-major view);
- :func:`contraction_output` orders the labels of a pairwise einsum's result for the same
  effect: ``torch.einsum`` writes its result contiguous in its output's label order, the
  leading labels' operand as the GEMM's left one.

Products contracting the long dim (``L^H L``) measured alike in every layout. cuBLAS tiles a
result the same way in either orientation, so on a GPU the choice costs nothing.

Operands whose batch dims broadcast against each other, such as an earlier head's
``(a, 1, m, k)`` against a later head's ``(b, k, n)`` in an all-pairs circuit, never reach
``torch.matmul``: it first copies both to the full ``a x b`` batch (its batched GEMM needs one
uniform batch stride), ``b`` times the left operand and ``a`` times the right, memory no plan
counts (60 x 60 pairs of 64 x 768 @ 768 x 64 products: 1410 MiB for a 59 MiB result, 4.5x
slower). ``torch.einsum`` folds each operand's own batch dims into its GEMM's rows or columns
instead: one GEMM, at most one copy of one operand to lay it out.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MIN_LAYOUT_MACS", "contraction_output", "goes_through_einsum", "is_plain_product",
           "is_transposed", "matmul", "writes_transposed"]

# Below this many multiply-adds per matrix a product is written as asked (row-major): small
# GEMMs run BLAS's small-matrix kernels, which the transposed form leaves (on the 2-core CPU
# an 8x512 @ 512x16 product took 7 us as written and 80 us as (B^T A^T)^T; 16x128 @ 128x64,
# 16 against 33 us), while the layout gains start in the tens of millions (a 256x768 @
# 768x2048 product, 0.77x): ``benchmarks/bench_layout.py --small --threads 1``.
MIN_LAYOUT_MACS = 2**25


def is_transposed(t: torch.Tensor) -> bool:
    """True when the last two dims of ``t`` are stored column-major (a transposed view of a
    row-major matrix); a vector or a matrix with a dim of size 1 counts as row-major."""
    return (t.ndim >= 2 and t.shape[-2] > 1 and t.shape[-1] > 1
            and t.stride(-2) == 1 and t.stride(-1) != 1)


def writes_transposed(rows: int, cols: int, a_transposed: bool, b_transposed: bool) -> bool:
    """Whether ``C = A @ B`` (``rows x cols``) runs faster computed as ``C^T = B^T @ A^T``: when
    ``C`` is wider than tall (its long dim becomes the rows written), or square with both
    operands transposed views (``B^T``, ``A^T`` are then read as stored)."""
    if rows != cols:
        return cols > rows
    return a_transposed and b_transposed


def goes_through_einsum(a_shape: tuple, b_shape: tuple) -> bool:
    """Whether :func:`matmul` runs ``a @ b`` as ``torch.einsum``: both batched (more than one
    matrix each) with batches that differ, contracting more than one index. (An outer product,
    ``k = 1``, is elementwise in einsum, and its copies are no larger than the result in
    ``torch.matmul``: it stays there.) The result is then laid out as einsum's GEMM wrote it:
    the batch dims both operands share outermost, then ``a``'s own batch dims and rows, then
    ``b``'s own batch dims and columns, which a later ``torch.matmul`` may have to copy."""
    return (len(a_shape) > 2 and len(b_shape) > 2 and tuple(a_shape[:-2]) != tuple(b_shape[:-2])
            and a_shape[-1] > 1 and math.prod(a_shape[:-2]) > 1 and math.prod(b_shape[:-2]) > 1)


def is_plain_product(a_shape: tuple, b_shape: tuple) -> bool:
    """Whether :func:`matmul` of operands of these shapes is ``torch.matmul(a, b)`` whatever their
    strides and ``free_layout``: no broadcast batch to keep from copying, and too few multiply-adds
    for the layout to matter. Read from a plan's shapes once, so that running the plan calls
    ``torch.matmul`` directly (a tensor's ``.shape`` is a new ``torch.Size`` on every read)."""
    if goes_through_einsum(a_shape, b_shape):
        return False
    return len(a_shape) < 2 or len(b_shape) < 2 or a_shape[-2] * a_shape[-1] * b_shape[-1] < MIN_LAYOUT_MACS


def matmul(a: torch.Tensor, b: torch.Tensor, free_layout: bool = True) -> torch.Tensor:
    """``torch.matmul(a, b)`` without copying a broadcast of the batch dims
    (:func:`goes_through_einsum`), computed as ``(b^T @ a^T)^T`` where :func:`writes_transposed`
    says so and the result's layout is ``free_layout`` (the result is then a column-major view of
    the same values)."""
    if goes_through_einsum(a.shape, b.shape):
        return torch.einsum("...ij,...jk->...ik", a, b)
    if free_layout and a.ndim >= 2 and b.ndim >= 2 \
            and a.shape[-2] * a.shape[-1] * b.shape[-1] >= MIN_LAYOUT_MACS \
            and writes_transposed(a.shape[-2], b.shape[-1], is_transposed(a), is_transposed(b)):
        return torch.matmul(b.mT, a.mT).mT
    return torch.matmul(a, b)


def contraction_output(first: str, second: str, kept: str, sizes: dict[str, int]) -> str | None:
    """Label order of the result of the two-operand contraction ``first,second->kept`` (each
    operand's labels in its storage order, innermost last; ``sizes`` per label) that lets its
    GEMM run in the layout :func:`writes_transposed` picks: the labels kept from both operands
    (batch dims), then the free labels of the GEMM's left operand, then the other's. None when
    the two orders are alike (neither writes a longer dim as rows, nor reads more operands as
    stored)."""
    if not first or not second:
        return None
    batch = [c for c in kept if c in first and c in second]
    free = [[c for c in t if c in kept and c not in batch] for t in (first, second)]
    contracted = set(first) & set(second) - set(kept)
    rows = [math.prod(sizes[c] for c in f) for f in free]
    if rows[0] != rows[1]:
        left = 0 if rows[0] > rows[1] else 1
    else:
        # as the GEMM's left operand, an operand is read as stored when its innermost label is
        # contracted; as the right one, when its innermost label is one of its free labels
        as_left = [t[-1] in contracted for t in (first, second)]
        as_right = [t[-1] in f for t, f in zip((first, second), free, strict=True)]
        stored = [as_left[0] + as_right[1], as_left[1] + as_right[0]]
        if stored[0] == stored[1]:
            return None
        left = 0 if stored[0] > stored[1] else 1
    return "".join(batch + free[left] + free[1 - left])
