"""Route torch functions called on lazy expressions (``__torch_function__``) to lazymat.

``torch.matmul(expr, x)``, ``torch.linalg.svd(expr)``, ``torch.trace(expr)`` ... answer
lazily; any other torch function raises a TypeError naming it instead of silently
materialising a possibly huge matrix. ``torch.linalg.svd(expr)`` returns the reduced SVD
(as with ``full_matrices=False``): a full ``m x m`` basis is what lazymat exists to avoid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import expr as E


def _table() -> dict[Callable, Callable]:
    from . import linalg as L

    table: dict[Callable, Callable] = {
        torch.matmul: E.matmul,
        torch.Tensor.matmul: E.matmul,
        torch.Tensor.__matmul__: E.matmul,
        torch.Tensor.__rmatmul__: lambda a, b: E.matmul(b, a),
        torch.mm: E.matmul,
        torch.bmm: E.matmul,
        torch.Tensor.__add__: E.add,
        torch.Tensor.__radd__: lambda a, b: E.add(b, a),
        torch.add: E.add,
        torch.Tensor.__sub__: lambda a, b: E.add(a, -E.as_expr(b)),
        torch.Tensor.__rsub__: lambda a, b: E.add(b, -E.as_expr(a)),
        torch.Tensor.__mul__: lambda a, b: E.scale(b, a) if E.is_lazy(b) else E.scale(a, b),
        torch.Tensor.__rmul__: lambda a, b: E.scale(a, b),
        torch.mul: lambda a, b: E.scale(b, a) if E.is_lazy(b) else E.scale(a, b),
        torch.transpose: _transpose,
        torch.t: E.transpose,
        torch.linalg.svd: L.svd,
        torch.svd: _torch_svd,
        torch.linalg.svdvals: L.svdvals,
        torch.linalg.eigvals: L.eigvals,
        torch.linalg.eig: L.eig,
        torch.linalg.matrix_norm: L.matrix_norm,
        torch.linalg.norm: _linalg_norm,
        torch.norm: _torch_norm,
        torch.linalg.matrix_rank: L.matrix_rank,
        torch.linalg.pinv: L.pinv,
        torch.linalg.cond: L.cond,
        torch.trace: L.trace,
        torch.diagonal: L.diagonal,
        torch.linalg.diagonal: L.diagonal,
    }
    return table


_TABLE: dict[Callable, Callable] | None = None


def _transpose(x: Any, dim0: int, dim1: int) -> Any:
    if sorted((dim0 % x.ndim, dim1 % x.ndim)) != [x.ndim - 2, x.ndim - 1]:
        raise NotImplementedError(
            f"torch.transpose(expr, {dim0}, {dim1}) on shape {tuple(x.shape)}: lazymat only "
            "transposes the last two dims"
        )
    return E.transpose(x)


def _linalg_norm(x: Any, ord: Any = None, dim: Any = None, keepdim: bool = False, *, dtype=None):
    from . import linalg as L

    return L.matrix_norm(x, ord="fro" if ord is None else ord, dim=(-2, -1) if dim is None else dim,
                         keepdim=keepdim, dtype=dtype)


def _torch_svd(x: Any, some: bool = True, compute_uv: bool = True):
    from . import linalg as L

    U, S, Vh = L.svd(x)
    return U, S, Vh.mH


def _torch_norm(x: Any, p: Any = "fro", dim: Any = None, keepdim: bool = False, **kw: Any):
    from . import linalg as L

    if dim not in (None, (-2, -1)) or keepdim or kw:
        raise NotImplementedError("torch.norm on a lazy expression supports matrix norms only")
    return L.matrix_norm(x, ord=p)


def dispatch(func: Callable, args: tuple, kwargs: dict) -> Any:
    global _TABLE
    if _TABLE is None:
        _TABLE = _table()
    impl = _TABLE.get(func)
    if impl is None:
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        shapes = [tuple(a.shape) for a in args if isinstance(a, (E.Expr, torch.Tensor))]
        raise TypeError(
            f"torch.{name} is not supported on lazy expressions (operand shapes {shapes}); "
            "use lazymat's own function, or call .to_dense() if materialising is intended"
        )
    return impl(*args, **kwargs)
