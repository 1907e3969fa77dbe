"""Gradients under a memory budget: a call whose leaves record a gradient runs without recording
and is recomputed in the backward, block by block of the batch, so the budget holds in both
passes."""
from __future__ import annotations

import inspect
import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import torch

from .. import settings
from ..caching import uncached
from ..execute import device_budget
from ..expr import Add, Cast, Concat, Expr, Leaf, MatMul, Scale, Transpose, dim_index, postorder, with_tensors
from ..settings import BudgetTooSmall
from ._common import _data
from .small import _pinv_is_dense, _square_parts

# A differentiable call keeps what autograd saves (the sides formed again, the projected core,
# every block's intermediates) until the backward pass: far above the peak the budget bounds
# ((2,3) @ (3,2): 32 B named for the Frobenius norm, 330 B held). Under a memory budget the
# call runs as without gradients (its named peak, exactly) and its backward recomputes it with
# autograd (as torch.utils.checkpoint does). A call answered member by member over the batch
# dims (:func:`_batchwise`) recomputes and differentiates one block of the batch at a time: the
# blocks sized by the measured footprints of blocks of one and two members (what autograd saves
# has no plan to predict it), so the backward holds one block's footprint beside the gradients
# it returns. Where one member's does not fit, the backward runs one member at a time, the
# least it can hold; a call on one matrix (or not member by member) recomputes whole. A
# recompute the budget refuses (the differentiable route needs more) runs under the default
# budget.
_RECOMPUTING = threading.local()  # set while a backward recomputes: inner calls record as usual

# The calls answered member by member, their answers with the batch dims leading (for any
# options but those :func:`_batchwise` checks: the dims of a norm or a diagonal, tensor options).
_BATCHWISE = frozenset({"svd", "svdvals", "eigvals", "eig", "eigvalsh", "eigh", "trace", "diagonal",
                        "matrix_norm", "cond", "matrix_rank", "pinv"})
# The calls answering vectors (the position of each answer's vectors, and of svd's Vh): their
# signs (phases) are the route's, and a recompute's route (its own, or a block's: dense for a
# small block) can differ from the forward's; the recomputed vectors are turned to the forward's.
_VECTORS = {"svd": (0, 2), "eig": (1, None), "eigh": (1, None)}


def _budgeted_grad(fn: Callable, args: tuple) -> bool:
    """Whether ``fn(*args)`` runs under a set memory budget with gradients recorded to a leaf
    and answers tensors (not :func:`truncate`'s or a lazy :func:`pinv`'s or :func:`inv`'s
    expression). Not under ``torch.func``'s transforms (``grad``, ``vjp``, ``jacrev``): they take
    no ``autograd.Function`` that is not written for them (torch raised "it must override the
    setup_context staticmethod"), so the call records as without a budget there."""
    if not torch.is_grad_enabled() or settings.get("memory_budget") is None or not args or (
            getattr(_RECOMPUTING, "on", False)) or fn.__name__ in ("truncate", "make_even") or (
            torch._C._are_functorch_transforms_active()):
        return False
    x = args[0]
    if isinstance(x, torch.Tensor):
        return x.requires_grad
    if not isinstance(x, Expr) or not any(t.requires_grad for t in _data(x)):
        return False
    if fn.__name__ == "inv":  # a lazy inverse (several square segments) is an expression
        return len(_square_parts(x)[1]) == 1
    return fn.__name__ != "pinv" or _pinv_is_dense(x)


def _batchwise(fn: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether ``fn(*args, **kwargs)`` answers each member of its batch alone, with the batch
    dims leading (so a block of the batch answers its block): the calls of :data:`_BATCHWISE`,
    a norm or diagonal over the matrix dims, no tensor option (a batch of tolerances)."""
    options = (*args[1:], *kwargs.values())
    if fn.__name__ not in _BATCHWISE or any(isinstance(a, torch.Tensor) for a in options):
        return False
    x = args[0]
    if fn.__name__ not in ("matrix_norm", "diagonal"):
        return True
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    dims = a["dim"] if fn.__name__ == "matrix_norm" else (a["dim1"], a["dim2"])
    try:
        return {dim_index(d, x.shape, fn.__name__) for d in dims} == {x.ndim - 2, x.ndim - 1}
    except (TypeError, ValueError, IndexError):
        return False  # (the call raises its own error)


def _recomputed(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)`` computed without autograd, differentiable to the leaves of
    ``args[0]`` by recomputing it with autograd in the backward pass (:class:`_Recompute`),
    block by block of the batch when the call is :func:`_batchwise`."""
    x = args[0]
    leaves = _differentiated_inputs((*args, *kwargs.values()))
    budget = settings.get("memory_budget")

    def run(swap: Callable | None = None, y: Any = None) -> Any:
        """The call; with ``swap``, on its arguments' tensors swapped by it (and ``y``, a block
        of the swapped ``x``, for ``x``)."""
        if swap is None:
            return fn(*args, **kwargs)
        mine = [_swapped(a, swap) for a in (*args, *kwargs.values())]
        named = dict(zip(kwargs, mine[len(args):], strict=True))
        return fn(mine[0] if y is None else y, *mine[1:len(args)], **named)

    kind = []  # the answer's type, as the forward found it (a tensor, a tuple, a named tuple)
    blocks = x if _batchwise(fn, args, kwargs) and math.prod(x.shape[:-2]) > 1 else None
    out = _Recompute.apply(run, (budget, _VECTORS.get(fn.__name__)), kind, blocks, *leaves)
    if kind[0] is torch.Tensor:
        return out[0]
    if kind[0] is tuple:
        return out
    return kind[0](*out) if hasattr(kind[0], "_fields") else kind[0](out)  # (torch.return_types)


def _differentiated_inputs(args: tuple) -> tuple[torch.Tensor, ...]:
    """The tensors of a call's arguments that require grad, each once: the leaves of an
    expression and tensor arguments (``solve``'s right side, a tensor of tolerances). The
    gradient of an argument other than the first was dropped (``solve(X, B)``'s to ``B`` was
    None under a budget)."""
    found: dict[int, torch.Tensor] = {}
    for a in args:
        tensors = (a,) if isinstance(a, torch.Tensor) else _data(a) if isinstance(a, Expr) else ()
        found.update((id(t), t) for t in tensors if t.requires_grad)
    return tuple(found.values())


def _swapped(a: Any, swap: Callable) -> Any:
    """An argument with its tensors (an expression's leaves and tensor scalars) swapped."""
    if isinstance(a, torch.Tensor):
        return swap(a)
    return with_tensors(a, swap) if isinstance(a, Expr) else a


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` that is all of it (``t`` itself where it has no views: sparse), recorded
    under autograd: the recompute reads it in place of ``t``, so that its gradient is the one
    through this call alone. Differentiated to ``t`` itself, the gradient took every path from
    ``t`` again: through another argument made from it (``A.mT``, ``2 * A``) a second time, where
    autograd adds that path's own (twice the gradient), or through the graph that made it, whose
    saved tensors that freed (the outer backward then failed)."""
    return t.view_as(t) if t.layout == torch.strided else t


class _Recompute(torch.autograd.Function):
    """Forward: ``run()`` without autograd (nothing saved but the leaves); backward: ``run()``
    again with autograd (under ``budget`` where it fits), whole, or on blocks of the batch of
    ``blocks`` (the expression, :func:`_blocked_grads`), and its gradients to the leaves. A
    backward that records (``create_graph=True``) recomputes whole and records the gradients:
    unrecorded, a second derivative through the call was an error, or silently zero beside
    another term's."""

    @staticmethod
    def forward(ctx, run, how, kind, blocks, *leaves):
        with uncached():  # a differentiated call, though unrecorded here: no cache read or kept
            out = run()
        outs = tuple(out) if isinstance(out, tuple) else (out,)
        kind.append(type(out) if isinstance(out, tuple) else torch.Tensor)
        ctx.run, (ctx.budget, vectors), ctx.blocks, ctx.count = run, how, blocks, len(leaves)
        ctx.vectors = None if vectors is None else (vectors, [outs[i] for i in vectors if i is not None])
        ctx.save_for_backward(*leaves)
        ctx.mark_non_differentiable(*[t for t in outs if not (t.is_floating_point() or t.is_complex())])
        ctx.set_materialize_grads(False)  # an answer not used (svd's U) is not differentiated
        return outs

    @staticmethod
    def backward(ctx, *grads):
        leaves = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: recorded whole, to the leaves themselves
            found = _block_grads(ctx.run, None, None, ctx.budget, leaves, grads, ctx.vectors, graph=True)[0]
        elif ctx.blocks is None:
            found = _block_grads(ctx.run, None, None, ctx.budget, leaves, grads, ctx.vectors)[0]
        else:
            found = _blocked_grads(ctx.run, ctx.blocks, ctx.budget, leaves, grads, ctx.vectors)
        return (None, None, None, None, *found)


# The nodes that commute with taking a block of the batch: an expression of only these, read
# on blocks of its leaves' batches, is its own block (Index may select or reorder batch members).
_BLOCKWISE_NODES = (Leaf, Transpose, MatMul, Add, Scale, Cast, Concat)


def _leaf_blocks(x: Expr, key: tuple, leaves: tuple) -> tuple[Expr, list[tuple | None]] | None:
    """``x[key]`` built on blocks of its leaves (each leaf's batch dims cut as ``key`` cuts the
    batch dims they broadcast to), and for each of ``leaves`` the key of its block (None: read
    whole, a leaf the batch shares), so that a block's gradient to a leaf is the block's size,
    not the whole leaf's (the gradient of ``x[key]`` is a whole leaf of zeros but for the block);
    None where ``x`` holds a node that may not commute with the cut (an index)."""
    if not all(type(n) in _BLOCKWISE_NODES for n in postorder(x)):
        return None
    batch = tuple(x.shape[:-2])
    cut: dict[int, tuple] = {}

    def block(t: torch.Tensor) -> torch.Tensor:
        own = t.ndim - 2  # (a tensor scalar has none)
        if own <= 0:
            return t
        if id(t) in cut:  # (one tensor under two leaves: one block, one gradient)
            return cut[id(t)][1]
        at = tuple(key[len(batch) - own + d] if t.shape[d] == batch[len(batch) - own + d] > 1 else slice(None)
                   for d in range(own))
        if all(s == slice(None) for s in at):
            return t
        part = t.detach()[at].requires_grad_(t.requires_grad)
        cut[id(t)] = at, part
        return part

    y = with_tensors(x, block)
    return y, [cut.get(id(t)) for t in leaves]


def _block_grads(run: Callable, x: Any, key: tuple | None, budget: Any, leaves: tuple, grads: tuple,
                 vectors: tuple | None = None, graph: bool = False) -> tuple[tuple, list[tuple | None]]:
    """The gradients to ``leaves`` of ``run`` recomputed with autograd on ``x[key]`` (the whole
    call for ``key`` None) under ``budget`` (the default one where that refuses the route), for
    the answer's gradients ``grads``: their block, narrowed to the block's answer where a block
    keeps fewer values (``svd``'s rank is the batch's largest: the others are zeros). With
    ``vectors`` (:data:`_VECTORS`' positions and the forward's vectors), the recomputed vectors
    are turned to the forward's first (:func:`_turned`). The block is read off blocks of the
    leaves where it can be (:func:`_leaf_blocks`): a gradient is then the leaf block's, at the
    key returned beside it (None: the whole leaf's). With ``graph`` the gradients are recorded
    (``create_graph=True``), so that they can be differentiated again."""
    with torch.enable_grad():  # (a backward runs without recording)
        aliases = tuple(_alias(t) for t in leaves)
    by_id = {id(t): a for t, a in zip(leaves, aliases, strict=True)}

    def swap(t: torch.Tensor) -> torch.Tensor:
        return by_id.get(id(t), t)

    if key is None:
        blocked = None
    elif isinstance(x, torch.Tensor):  # its own leaf: a block cut off it (x[key], taken without
        mine = swap(x)  # recording in the backward, reached no leaf)
        part = mine.detach()[key].requires_grad_()
        blocked = part, [(key, part) if a is mine else None for a in aliases]
    else:
        blocked = _leaf_blocks(with_tensors(x, swap), key, aliases)
    if blocked is None:
        y, at = (None if key is None else _swapped(x, swap)[key]), [None] * len(leaves)
    else:
        y, at = blocked
    inputs = tuple(alias if a is None else a[1] for alias, a in zip(aliases, at, strict=True))
    _RECOMPUTING.on = True
    try:
        with torch.enable_grad():
            try:
                with settings.scoped(memory_budget=budget):
                    out = run(swap, y)
            except BudgetTooSmall:  # the differentiable route needs more: the default budget
                with settings.default_budget():  # (also past a process-wide lm.config budget)
                    out = run(swap, y)
    finally:
        _RECOMPUTING.on = False
    outs = tuple(out) if isinstance(out, tuple) else (out,)
    if vectors is not None:
        with torch.enable_grad():  # (a backward runs without recording)
            outs = _turned(outs, vectors, key)
    pairs = [(o, g if key is None else _narrowed(g[key], o.shape)) for o, g in zip(outs, grads, strict=True)
             if g is not None and o.requires_grad]
    places = [None if a is None else a[0] for a in at]
    if not pairs:
        return (None,) * len(leaves), places
    found = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True,
                                create_graph=graph)
    return found, places


def _turned(outs: tuple, vectors: tuple, key: tuple | None) -> tuple:
    """The recomputed answer ``outs`` with each vector (a column of ``outs[i]``, and of svd's
    ``Vh`` a row, for ``(i, j) = vectors[0]``) times the unit phase that makes it the forward's
    (``vectors[1]``, at ``key``): the gradients given are the forward's vectors', and a vector is
    only defined up to that phase. The phases are constants (no gradient through them)."""
    (i, j), (forward, *_) = vectors
    mine = outs[i]
    theirs = _narrowed(forward if key is None else forward[key], mine.shape)
    with torch.no_grad():
        dot = (mine.conj() * theirs).sum(-2)  # per vector: its phase against the forward's
        size = dot.abs()
        phase = torch.where(size > 0, dot / torch.where(size > 0, size, 1), torch.ones_like(dot))
    turned = list(outs)
    turned[i] = mine * phase[..., None, :]
    if j is not None:
        turned[j] = outs[j] * phase.conj()[..., :, None]
    return tuple(turned)


def _narrowed(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``g`` narrowed to ``shape`` in every dim where ``shape`` is shorter."""
    for d, (a, b) in enumerate(zip(g.shape, shape, strict=True)):
        if b < a:
            g = g.narrow(d, 0, b)
    return g


def _blocked_grads(run: Callable, x: Any, budget: Any, leaves: tuple, grads: tuple,
                   vectors: tuple | None = None) -> tuple:
    """The gradients of :func:`_block_grads`, summed over blocks of ``x``'s batch dims: as many
    members a block as fit the budget, so that the backward holds one block's footprint beside
    the gradients it returns (within the budget where one member fits it, else one member a
    block). What autograd saves has no plan to predict it: the footprints of blocks of one and
    (where twice one's fits) two members are measured (their recompute and gradients, counted
    by :class:`lazymat.allocated.Allocated`; their gradients dropped), and each member of a block
    taken to add the most of: the first member's, the second's, half the two's. Nothing the
    members share is counted once: a block of a leaf is differentiated into a whole leaf of
    zeros, but a leaf the batch broadcasts gets a member's gradient each before they are summed;
    and one member reads its views without the copies a batch's layout can need."""
    from ..allocated import Allocated  # (a dispatch mode: only a backward under a budget needs it)

    batch = tuple(x.shape[:-2])
    with settings.scoped(memory_budget=budget):
        limit = device_budget(x.device)
    wide = max(d for d, size in enumerate(batch) if size > 1)  # (the batch has two members or more)
    peaks: list[int] = []
    for n in (1, 2):  # (two only where they may fit: else one member a block)
        if peaks and 2 * peaks[0] > limit:
            break
        with Allocated() as counted:
            _block_grads(run, x, tuple(slice(0, n if d == wide else 1) for d in range(len(batch))),
                         budget, leaves, grads, vectors)
        peaks.append(counted.peak)
    each = max(peaks[0], peaks[-1] - peaks[0], -(-peaks[-1] // len(peaks)), 1)
    keys = _member_blocks(batch, max(1, limit // each))
    given = {id(g.untyped_storage()) for g in grads if g is not None}
    total: list = [None] * len(leaves)
    for key in keys:
        found, places = _block_grads(run, x, key, budget, leaves, grads, vectors)
        found = list(found)
        while found:  # (each block's gradient dropped once summed: the next block runs without it)
            i, g = len(found) - 1, found.pop()
            if g is None:
                pass
            elif places[i] is not None:  # a block of the leaf's gradient: written into the whole's
                if total[i] is None:
                    total[i] = torch.zeros_like(leaves[i])
                total[i][places[i]] += g
            elif total[i] is None:  # (summed into in place: never into the answer's gradient itself)
                total[i] = g.clone() if id(g.untyped_storage()) in given and len(keys) > 1 else g
            else:
                total[i].add_(g)
            del g
    return tuple(total)


def _member_blocks(batch: tuple, members: int) -> list[tuple]:
    """Index keys of equal blocks over ``batch`` holding at most ``members`` members each (at
    least one): the trailing dims taken whole first, then as much of the next as fits."""
    block = [1] * len(batch)
    room = members
    for d in reversed(range(len(batch))):
        block[d] = max(1, min(batch[d], room))
        room //= block[d]
    starts = [range(0, size, c) for size, c in zip(batch, block, strict=True)]
    return [tuple(slice(a, min(a + c, size)) for a, c, size in zip(at, block, batch, strict=True))
            for at in itertools.product(*starts)]
