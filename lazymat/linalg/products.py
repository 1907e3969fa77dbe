"""Products: multi_dot and matrix_power, lazy (a negative power through :func:`.solve.inv`)."""
from __future__ import annotations

from typing import Any

import torch

from .. import settings
from ..expr import Expr, as_expr, lazy
from ..expr import matmul as lazy_matmul
from ._common import _int_arg, _square
from .systems import inv


def multi_dot(tensors: Any) -> Expr | torch.Tensor:
    """``torch.linalg.multi_dot``: the product of two or more matrices, lazy (the planner orders
    it, as torch orders its chain). As torch: every operand 2-D, but the first may be a vector
    (a row) and the last one (a column); then the answer is a tensor (the vector is multiplied
    in without forming the matrix), a scalar tensor when both ends are vectors."""
    items = list(tensors)
    if len(items) < 2:
        raise ValueError(f"multi_dot: expected at least 2 tensors, got {len(items)}")
    for i, t in enumerate(items):
        ends = i in (0, len(items) - 1)
        if not isinstance(t, (Expr, torch.Tensor)) or t.ndim not in ((1, 2) if ends else (2,)):
            what = f"shape {tuple(t.shape)}" if isinstance(t, (Expr, torch.Tensor)) else type(t).__name__
            raise ValueError(f"multi_dot: operand {i} must be {'1-D or 2-D' if ends else '2-D'} "
                             f"(as torch.linalg.multi_dot), got {what}")
    row, column = items[0].ndim == 1, items[-1].ndim == 1
    matrices = items[int(row): len(items) - int(column)]
    if not matrices:  # two vectors
        return torch.linalg.multi_dot(items)
    out = as_expr(matrices[0])
    for m in matrices[1:]:
        out = lazy_matmul(out, m)
    if column:
        out = lazy_matmul(out, items[-1])  # a tensor: the column multiplied in
    if row:
        out = lazy_matmul(items[0], out) if isinstance(out, Expr) else items[0] @ out
    return out


def matrix_power(x: Any, n: int) -> Expr:
    """``torch.linalg.matrix_power``: ``x @ x @ ... @ x`` as a lazy product (the planner finds
    its order: a low-rank ``x = L @ R`` contracts ``(R L)^(n-1)`` at its inner width; a repeated
    pair is formed once). ``n = 0`` is the identity, batched as ``x``, formed (within
    ``implicit_dense_limit``); ``n < 0`` is the power ``-n`` of :func:`inv` (lazy for a chain of
    square segments; ``torch.linalg.LinAlgError`` for a structurally singular ``x``)."""
    x = as_expr(x)
    _square(x, "matrix_power")
    n = _int_arg(n, "matrix_power: n")
    if n < 0:
        return matrix_power(as_expr(inv(x)), -n)
    if n == 0:
        size = x.shape[-1]
        limit = settings.get("implicit_dense_limit")
        if size * size * x.dtype.itemsize > limit:
            raise MemoryError(f"matrix_power(X, 0) would form the {size} x {size} identity "
                              f"({size * size * x.dtype.itemsize / 2**30:.3g} GiB), above "
                              f"implicit_dense_limit={limit} bytes; raise it with lm.config(...)")
        eye = torch.eye(size, dtype=x.dtype, device=x.device)
        return lazy(eye.expand(*x.shape[:-2], size, size))
    out = x
    for _ in range(n - 1):
        out = lazy_matmul(out, x)
    return out
