"""Leaves an expression holds that its canonical form never reads, and their zero gradients.

Indexing a cat selects from its parts (:func:`lazymat.rewrite.canonical`): a part it selects
nothing from is never run, so its leaves would drop out of autograd's graph
(``torch.autograd.grad`` answering None, ``.grad`` left unset) where torch, indexing the
formed matrix, gives them zero gradients. Every answer of such an expression (its dense value,
a linalg call, a reduction, a torch function) is joined to those leaves by :class:`_Joined`,
the identity whose backward gives each of them zeros, as torch's ``index``/``cat`` backward
does. Nothing runs unless gradients are recorded and the expression holds such a leaf.
"""

from __future__ import annotations

from typing import Any

import torch

from . import rewrite
from .expr import Concat, Expr, Leaf, MatMul, postorder
from .rewrite import Nested, canonical, leaf_chain

__all__ = ["joined", "unread"]


def unread(x: Any) -> list[torch.Tensor]:
    """The tensors requiring grad of ``x``'s data leaves that its canonical form never reads
    (a cat's parts indexed away); [] when no gradient is recorded. Which leaves, a structural
    fact, is cached on ``x`` (unless none is and ``x`` has no form of its own); a plain run of ``@``
    over leaves (the fresh-chain routes, which read every leaf) is answered without a walk."""
    if not rewrite.DROPPED_PARTS or not torch.is_grad_enabled() or not isinstance(x, Expr) or type(x) is Leaf:
        return []  # (no form has left out a cat part yet: no leaf is unread anywhere)
    cache = x._cache_dict  # read without making one (see Expr._cache)
    held = cache.get("unread") if cache else None
    if held is None:
        if type(x) is MatMul and leaf_chain(x) is not None:
            return []
        held = _unread_leaves(x)
        if held or cache and "canon" in cache:  # (a compiled call's fresh product keeps no more)
            x._cache["unread"] = held
    return [leaf.tensor for leaf in held if leaf.tensor.requires_grad]


def _unread_leaves(x: Expr) -> tuple[Leaf, ...]:
    """The data leaves below ``x`` that no term of its form (nested blocks included) reads;
    only a cat can drop one, so an expression without one is not canonicalised here."""
    nodes = postorder(x)
    if not any(type(n) is Concat for n in nodes):
        return ()
    read: set[int] = set()
    todo = [canonical(x)]
    while todo:
        form = todo.pop()
        for term in form.terms:
            for f in term.factors:
                if isinstance(f.base, Nested):
                    todo.extend(f.base.parts)
                else:
                    read.add(id(f.base))
    return tuple(n for n in nodes if type(n) is Leaf and n.tensor is not None and id(n) not in read)


class _Joined(torch.autograd.Function):
    """``out`` itself, with the ``unread`` tensors as inputs that get zero gradients (in the
    form ``torch.func`` transforms take: ``setup_context``, a generated vmap rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(out: torch.Tensor, *unread: torch.Tensor) -> torch.Tensor:
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.unread = [(t.shape, t.dtype, t.device) for t in inputs[1:]]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple:
        return (grad, *(torch.zeros(s, dtype=d, device=v) for s, d, v in ctx.unread))

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor | None, *_: Any) -> torch.Tensor | None:
        return tangent


def joined(out: Any, x: Any) -> Any:
    """``out``, an answer of ``x`` (a tensor, or a tuple of them such as ``svd``'s), with every
    floating-point tensor in it joined to :func:`unread` leaves of ``x`` (zero gradients); as it
    is when there are none. A lazy answer (an expression)
    is returned as it is."""
    if not rewrite.DROPPED_PARTS:  # (the common case: one read)
        return out
    extra = unread(x)
    if not extra:
        return out
    if isinstance(out, torch.Tensor):
        return _Joined.apply(out, *extra) if out.is_floating_point() or out.is_complex() else out
    if isinstance(out, tuple):  # (a named tuple takes its fields; torch.return_types, a sequence)
        parts = [joined(part, x) for part in out]
        return type(out)(*parts) if hasattr(out, "_fields") else type(out)(parts)
    return out
