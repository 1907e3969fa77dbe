"""What every public call goes through: ``budgeted`` (the ``memory_budget=`` keyword, meta inputs
answered by shape, vmap errors named) and ``reads_through_casts`` (a call on a rounded cast
answers as its source's, rounded)."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from .. import settings
from ..expr import Cast, Expr, Leaf, as_expr, lazy, leaves
from ..rewrite import cast_commutes, rounded_source
from ..settings import BudgetTooSmall
from ..unread import joined
from ._common import _complex, _inner_width, _real
from .gradients import _budgeted_grad, _recomputed
from .small import _pinv_is_dense

# The calls whose answer holds only the nonzero values (its width a value: the rank)
_NONZERO = frozenset({"svd", "svdvals", "eig", "eigvals", "eigh", "eigvalsh"})


def _meta_answer(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """``fn(*args)`` for meta inputs (shapes and dtypes, no values), as torch answers them: the
    torch function of the same name on the inputs' meta tensors, since a spectrum has no values
    to read. :func:`svd`, :func:`eig` and the like answer the structural rank bound's values (their
    width for generic data: the actual rank is a value); a lazy answer (:func:`pinv`'s low-rank
    route) stays lazy, over the meta tensor."""
    ours = getattr(torch.linalg, fn.__name__, None) or getattr(torch, fn.__name__, None)
    if ours is None:
        raise NotImplementedError(
            f"{fn.__name__} of meta tensors: torch has no counterpart to answer its shapes, and lazymat "
            "needs values to compute it")
    dense = tuple(a.to_dense() if isinstance(a, Expr) else a for a in args)
    extra = {"full_matrices": False} if fn.__name__ == "svd" else {}
    out = ours(*dense, **{key: v for key, v in kwargs.items() if key != "full"}, **extra)
    if fn.__name__ in _NONZERO and not kwargs.get("full", False):
        # the nonzero values: as many as the structural rank bound (the generic data's count)
        x = as_expr(args[0])
        k = min(*x.shape[-2:], _inner_width(x))
        if isinstance(out, torch.Tensor):  # the values alone
            return out[..., :k]
        if fn.__name__ == "svd":  # (torch's named tuple kept: torch.return_types take a sequence)
            return type(out)((out[0][..., :k], out[1][..., :k], out[2][..., :k, :]))
        return type(out)((out[0][..., :k], out[1][..., :k]))  # (values, vectors)
    if fn.__name__ == "pinv" and isinstance(args[0], Expr) and not _pinv_is_dense(args[0]):
        return lazy(out)
    return out


def budgeted(fn: Callable) -> Callable:
    """Give ``fn`` a keyword-only ``memory_budget=`` (bytes or a string like ``"8GiB"``), the
    budget of everything the call runs (as ``lm.config(memory_budget=...)`` would set it)."""

    @functools.wraps(fn)
    def call(*args: Any, memory_budget: int | str | None = None, **kwargs: Any):
        try:
            if memory_budget is None:  # (the common call: no budget set, nothing more to ask)
                if settings.get("memory_budget") is None or not _budgeted_grad(fn, args):
                    return joined(fn(*args, **kwargs), args[0]) if args else fn(*args, **kwargs)
                return joined(_recomputed(fn, args, kwargs), args[0])
            with settings.scoped(memory_budget=memory_budget):
                out = _recomputed(fn, args, kwargs) if _budgeted_grad(fn, args) else fn(*args, **kwargs)
                return joined(out, args[0]) if args else out
        except (RuntimeError, NotImplementedError) as e:  # (free when nothing is raised)
            if any(isinstance(a, (Expr, torch.Tensor)) and a.device.type == "meta" for a in args):
                return _meta_answer(fn, args, kwargs)
            refused = vmap_error(args, fn.__name__, e) if isinstance(e, RuntimeError) else None
            if refused is None:
                raise
            raise refused from e
        except BudgetTooSmall as e:  # named after the user's call, whichever step refused
            x = args[0] if args else None
            if not isinstance(x, (Expr, torch.Tensor)):
                raise
            dtype = str(x.dtype).replace("torch.", "")
            raise e.within(f"{fn.__name__} of a {tuple(x.shape)} {dtype} expression") from None

    sig = inspect.signature(fn)
    param = inspect.Parameter("memory_budget", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation="int | str | None")
    call.__signature__ = sig.replace(parameters=[*sig.parameters.values(), param])
    call.unbudgeted = fn  # for callers that never pass the keyword (interop: torch's parser refuses it)
    return call


def vmap_error(args: tuple, op: str, error: Exception) -> RuntimeError | None:
    """The error to raise for ``error``, raised by ``op`` on ``args`` under ``torch.vmap`` with a
    batched leaf tensor: the spectral routes read values back to the host (ranks, tolerances,
    routes), which vmap cannot batch, and torch's own message names none of this (a data
    pointer, ``.item()``, an ``out=`` batching rule). None when ``error`` has another cause
    (lazymat's own refusals are other classes: ``NotImplementedError``, ``BudgetTooSmall``)."""
    if type(error) is not RuntimeError or not torch._C._are_functorch_transforms_active():
        return None
    if not _vmapped(args):
        return None
    return RuntimeError(
        f"{op} of a lazy expression under torch.vmap: lazymat's decompositions and streamed "
        "reductions read values back to the host, which vmap cannot batch. Give the batch as a "
        "leading dim of the leaves instead (lm.lazy(A) for A of shape (B, m, n) broadcasts like "
        "torch.matmul); to_dense, trace, diagonal, the Frobenius norm and products with tensors "
        f"work under vmap. (torch: {str(error).splitlines()[0] if str(error) else type(error).__name__})")


def _vmapped(args: tuple) -> bool:
    """Whether a leaf tensor of an expression among ``args`` is batched by ``torch.vmap``, at
    any depth of torch.func's wrappers (``vmap(grad(f))`` batches under the grad wrapper)."""
    functorch = torch._C._functorch
    for x in args:
        for leaf in leaves(x) if isinstance(x, Expr) else ():
            t = leaf.tensor
            while t is not None and functorch.is_functorch_wrapped_tensor(t):
                if functorch.is_batchedtensor(t):
                    return True
                t = functorch.get_unwrapped(t)
    return False


def _rounded_source(x: Any) -> Expr | None:
    """The expression that ``x`` rounds, when ``x`` is a narrowing cast (float64 to float32, to
    16 bits; complex alike) of an expression other than a leaf, on the same device, or holds one
    that floated out to the top (``X.half() @ W``: :func:`lazymat.rewrite.rounded_source`); else
    None. The rounded product has no factored form (rounding each entry is not a product of
    rounded factors), so read as it stands it would be formed whole."""
    if type(x) is not Cast:
        return rounded_source(x) if isinstance(x, Expr) else None
    src = x.children[0]
    if (isinstance(src, Leaf) or src.device != x.device or src.dtype.is_complex != x.dtype.is_complex
            or cast_commutes(src.dtype, x.dtype)):
        return None
    return src


def _rounded(out: Any, dtype: torch.dtype) -> Any:
    """An answer computed on a cast's source, in the cast's precision ``dtype``: floating
    tensors and expressions converted, integer ones (ranks) kept, tuples item by item."""
    if isinstance(out, tuple):  # a named tuple takes its items, torch.return_types a sequence
        items = [_rounded(o, dtype) for o in out]
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)
    if isinstance(out, Expr):
        return out.to(dtype)
    if isinstance(out, torch.Tensor) and (out.is_floating_point() or out.is_complex()):
        return out.to(_complex(dtype) if out.is_complex() else _real(dtype))
    return out


def reads_through_casts(fn: Callable) -> Callable:
    """Answer ``fn`` on a narrowing cast ``X.to(dtype)`` of a product from ``X`` itself, with
    the answer rounded to ``dtype``: the cast's rounding moves each entry by at most one unit
    in the last place of ``dtype``, below what a decomposition in ``dtype`` resolves anyway,
    while the rounded matrix has no factored form and would be formed whole (a 50257 x 50257
    matrix for ``(W_E @ W_Q @ W_K.T @ W_E.T).half()``)."""

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def call(x: Any, *args: Any, **kwargs: Any):
        src = _rounded_source(x)
        if src is None or sig.bind(x, *args, **kwargs).arguments.get("dtype") is not None:
            return fn(x, *args, **kwargs)  # (a norm asked in another dtype: the cast first)
        return _rounded(call(src, *args, **kwargs), x.dtype)

    return call
