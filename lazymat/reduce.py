"""Reductions along dims of a lazy expression (top-k, max/min, argmax/argmin, sums, vector
norms), never forming the matrix.

Two routes, both returning exactly what torch returns on the dense tensor:

- **closed** (no streaming): sums and means are products with a ones vector,
  ``X.sum(-1) = X @ 1`` (a matvec the planner orders right to left), and row or column 2-norms
  are the diagonal of ``X X^H`` (or ``X^H X``), a closed network (:func:`lazymat.linalg.diagonal`).
- **streamed**: everything else evaluates ``X`` in blocks of whole rows (or whole columns when
  reducing along the rows), each block sized to :func:`lazymat.settings.memory_budget`, and
  reduces each block with torch's own function. A block holds whole lines of the reduced dim, so
  per-line results (top-k, argmax, ties, NaN) are torch's on the same values; reductions over
  both matrix dims combine the per-block partials (max of maxima, norm of norms, first
  occurrence for argmax). When ``X = L @ R`` has a narrow core, the far factor (``R`` for row
  blocks) is formed once and each block costs one ``(rows, r) @ (r, n)`` product.

Every public function takes a keyword-only ``memory_budget=`` (bytes or a string like ``"1GiB"``):
the budget of that call, as ``X.to_dense(memory_budget=)`` and the :mod:`lazymat.linalg` functions
take it; without one the active budget applies (``lm.config(memory_budget=...)``, else a fraction
of the device's free memory).

Results are built in local lists and nothing is cached, so an interrupted stream (Ctrl-C)
leaves no partial state behind. Long streams show a progress bar (:mod:`lazymat.progress`).

    >>> import torch, lazymat as lm
    >>> A, B = torch.randn(500, 8, dtype=torch.float64), torch.randn(8, 400, dtype=torch.float64)
    >>> X = lm.lazy(A) @ lm.lazy(B)
    >>> values, indices = torch.topk(X, 3, dim=-1)
    >>> torch.equal(indices, torch.topk(A @ B, 3, dim=-1).indices)
    True
"""

from __future__ import annotations

import builtins
import contextlib
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import forward_ad

from . import linalg, product_cache, progress, settings
from .core import factor, is_identity
from .expr import Expr, Leaf, as_expr, dim_index, lazy, postorder, symbol
from .linalg.calls import budgeted
from .plan import block_kinds, dim_cuts, plan_expr
from .wide_topk import topk_last

__all__ = ["ROUGH_FLOPS_PER_SECOND", "Stream", "amax", "amin", "argmax", "argmin", "kept_bytes", "max",
           "mean", "min", "stream_plan", "sum", "topk", "vector_norm"]

# Only for the progress bar's "is this worth a bar" estimate (see lazymat.progress), never for a
# decision about results: a few-core CPU multiplies float32 at tens of GFLOP/s, a datacenter GPU
# at tens of TFLOP/s.
ROUGH_FLOPS_PER_SECOND = {"cpu": 3e10, "cuda": 3e13}

# Working memory of the reduction itself per element of a block (torch's topk/sort buffers,
# the |x|^p temporaries of a norm), on top of the block the planner forms.
_REDUCTION_COPIES = 1

Blockwise = Callable[[torch.Tensor, tuple[int, ...]], tuple[torch.Tensor, ...]]
# merges the blocks' partial results (what a Blockwise returned, concatenated) along the dims given
Combine = Callable[[tuple[torch.Tensor, ...], tuple[int, ...]], tuple[torch.Tensor, ...]]


# ---- dims ------------------------------------------------------------------------------------
def _index(v: Any) -> int | None:
    """``v`` as a Python int when torch would take it as one (an int, a NumPy integer, a 0-dim
    integer tensor: anything with ``__index__``), else None; bools are refused."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def _dim(x: Expr, d: Any, what: str) -> int:
    given, d = d, _index(d)
    if d is None:
        raise TypeError(f"{what}: dim must be an int, got {given!r} (expression of shape {tuple(x.shape)})")
    return dim_index(d, x.shape, what)


def _dims(x: Expr, dim: Any, what: str) -> tuple[int, ...]:
    """``dim`` (None, an int or a sequence of ints; None and ``()`` mean every dim, as in
    ``torch.amax``/``torch.sum``) as sorted non-negative dims, duplicates refused."""
    if dim is None:
        return tuple(range(x.ndim))
    if _index(dim) is not None:
        return (_dim(x, dim, what),)
    if not isinstance(dim, Sequence):
        raise TypeError(f"{what}: dim must be an int or a tuple of ints, got {dim!r}")
    dims = [_dim(x, d, what) for d in dim]
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"{what}: dim {tuple(dim)} names a dim twice (shape {tuple(x.shape)})")
    return tuple(sorted(dims)) if dims else tuple(range(x.ndim))


def _squeeze(t: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return t if keepdim or not dims else t.squeeze(dims)


def _stream_dim(x: Expr, dims: tuple[int, ...]) -> int:
    """The matrix dim to cut into blocks: the rows, unless only the rows are reduced."""
    rows, cols = x.ndim - 2, x.ndim - 1
    return cols if rows in dims and cols not in dims else rows


# ---- the streamed route ------------------------------------------------------------------------
def _block(x: Expr, s: int, i: int, j: int) -> Expr:
    return x[..., i:j, :] if s == x.ndim - 2 else x[..., :, i:j]


def _line_bytes(x: Expr, s: int) -> int:
    """Bytes of one line along dim ``s`` (the product of the other dims; 0 lines along ``s``
    still have a line size)."""
    return math.prod(n for d, n in enumerate(x.shape) if d != s % x.ndim) * x.dtype.itemsize


def _block_bytes(x: Expr, s: int, lines: int, held: int) -> int:
    """Bytes a block of ``lines`` rows (columns) needs: the planner's peak for forming it, the
    block itself and the reduction's working copies, plus ``held`` (kept across all blocks)."""
    block = lines * _line_bytes(x, s)
    forming = builtins.max(plan_expr(_block(x, s, i, i + lines)).peak_bytes
                           for i in block_kinds(x.shape[s], lines, dim_cuts(x, s)))
    return held + forming + (1 + _REDUCTION_COPIES) * block


def _near_block(near: Expr, rows: bool, i: int, j: int) -> Expr:
    """Rows (columns) ``[i:j]`` of the near factor (it may have fewer dims than ``x``)."""
    return near[..., i:j, :] if rows else near[..., :, i:j]


def _factored_block_bytes(x: Expr, s: int, near: Expr, far: Expr, lines: int, held: int) -> int:
    """Bytes a block of ``lines`` rows (columns) needs on the factored route, as
    :func:`_product_blocks` runs it: the held far factor and the block (its buffer, kept between
    blocks), beside the larger of forming the near factor's block (its plan's peak, its result
    included, then held through the product with the far factor, with that product's working
    copies: a batched product's planned ones) and the reduction's copies."""
    rows = s == x.ndim - 2
    block = lines * _line_bytes(x, s)
    d = near.ndim - (2 if rows else 1)
    forming = 0
    for i in block_kinds(near.shape[d], lines, dim_cuts(near, d)):
        part = _near_block(near, rows, i, i + lines)
        formed = symbol("near block", part.shape, part.dtype, part.device)
        copies = plan_expr(formed @ far if rows else far @ formed).work_bytes if x.ndim > 2 else 0
        forming = builtins.max(forming, plan_expr(part).peak_bytes + copies)
    return held + block + builtins.max(forming, _REDUCTION_COPIES * block)


def _lines_per_block(size: int, bytes_of: Callable[[int], int], budget: int) -> int:
    """How many of ``size`` rows (or columns) one block may hold within ``budget`` bytes (at
    least one line's), ``bytes_of(lines)`` being a block's bytes: they grow linearly with its
    lines (fitted on blocks of 1 and up to 64 lines), and the figure for the chosen size is
    checked (the planner may pick another order for a larger block)."""
    need = bytes_of(1)
    few = builtins.min(size, 64)
    per_line = builtins.max((bytes_of(few) - need) / builtins.max(few - 1, 1), 1.0)
    lines = builtins.max(1, builtins.min(size, 1 + int((budget - need) // per_line)))  # 1 for no lines
    while lines > 1 and (over := bytes_of(lines)) > budget:
        lines = builtins.max(1, builtins.min(lines - 1, int(lines * budget / over)))
    return lines


@dataclass(frozen=True)
class Stream:
    """How a reduction streams ``x`` along dim ``dim``: ``lines`` rows (columns) per block,
    ``blocks`` blocks. On the factored route (``far`` is not None) ``x = L @ R`` has a narrow
    core and the far factor (``R`` for row blocks, ``L`` for column blocks) is formed once and
    held (``held_bytes``): each block is then one product with it. ``source`` is what a block is
    cut from (``far`` replaced by a stand-in of its shape), ``peak_bytes`` what one block needs
    beside the held factor (:func:`_block_bytes`, :func:`_factored_block_bytes`: the figure
    checked against the budget), ``flops`` the whole stream's products (the far factor's
    included), both as the blocks run."""

    dim: int
    lines: int
    blocks: int
    source: Expr
    far: Expr | None
    held_bytes: int
    peak_bytes: int
    flops: int


def kept_bytes(x: Expr, dims: tuple[int, ...], s: int, flattened: bool = False) -> int:
    """Bytes per line along ``s`` of the partial results a stream reducing ``dims`` keeps to its
    end when they are not its answer: the blocks' extremes (norms, sums) that a combine step
    reduces again (``s`` among ``dims``), or each row's best value and its column for the
    flattened argmax (``flattened``); 0 when the partials are the answer (the caller's)."""
    if flattened:
        return math.prod(x.shape[:-2]) * (x.dtype.itemsize + torch.int64.itemsize)
    if s not in dims:
        return 0
    return math.prod(n for d, n in enumerate(x.shape) if d not in dims) * x.dtype.itemsize


def stream_plan(x: Expr, s: int, budget: int, what: str, kept: int = 0) -> Stream:
    """The blocks of ``x`` along dim ``s`` within ``budget`` bytes, without running anything
    (works on symbols). The far factor is formed once when it fits the budget beside a block
    (for a QK circuit, ``W_K^T W_E^T`` once rather than once per block); else blocks of ``x``
    itself. ``kept`` bytes per line (:func:`kept_bytes`) are held beside the blocks until the
    stream ends, and twice over while they are concatenated. Raises
    :class:`~lazymat.settings.BudgetTooSmall` naming the least budget of the two routes."""
    L, R = factor(x)
    size = x.shape[s]
    kept *= size

    def plain_bytes(lines: int) -> int:
        return builtins.max(_block_bytes(x, s, lines, kept), 2 * kept)

    need = plain_bytes(1)  # one line of x itself
    if not (is_identity(L) or is_identity(R)):
        rows = s == x.ndim - 2
        near, far = (L, R) if rows else (R, L)
        held = math.prod(far.shape) * x.dtype.itemsize
        stand_in = symbol("far factor", far.shape, far.dtype, far.device)
        source = L @ stand_in if rows else stand_in @ R
        # its result (the held factor) counted when made, and beside it the compact row-major
        # copy :func:`_source` may make of it
        formed = plan_expr(far).peak_bytes
        forming = formed + (held if _may_compact(far, formed, held) else 0)

        def factored_bytes(lines: int) -> int:
            return builtins.max(_factored_block_bytes(x, s, near, stand_in, lines, held + kept), 2 * kept)

        factored_need = builtins.max(forming, factored_bytes(1))  # no partials kept yet
        if factored_need <= budget:
            lines = _lines_per_block(size, factored_bytes, budget)
            peak = builtins.max(factored_bytes(lines), forming)
            return Stream(s, lines, -(-size // lines), source, far, held, peak,
                          plan_expr(far).flops + _factored_stream_flops(near, stand_in, rows, size, lines))
        need = builtins.min(need, factored_need)
    if budget < plain_bytes(1):
        line = "row" if s == x.ndim - 2 else "column"
        raise settings.BudgetTooSmall(
            f"{what} of a {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} expression",
            f"one {line} (with the reduction's working copies)", budget, need, x.device)
    lines = _lines_per_block(size, plain_bytes, budget)
    return Stream(s, lines, -(-size // lines), x, None, 0, plain_bytes(lines), _stream_flops(x, s, lines))


def _stream_flops(x: Expr, s: int, lines: int) -> int:
    """FLOPs of forming every block of ``lines`` rows (columns) of ``x`` (the last may be short)."""
    size = x.shape[s]
    return builtins.sum(n * plan_expr(_block(x, s, i, builtins.min(i + lines, size))).flops
               for i, n in block_kinds(size, lines, dim_cuts(x, s)).items())


def _factored_stream_flops(near: Expr, far: Expr, rows: bool, size: int, lines: int) -> int:
    """FLOPs of every block on the factored route as :func:`_product_blocks` runs it: the near
    factor's block by its own plan, then its product with the (held) far factor."""
    def flops(i: int, j: int) -> int:
        block = _near_block(near, rows, i, j)
        formed = symbol("near block", block.shape, block.dtype, block.device)
        return plan_expr(block).flops + plan_expr(formed @ far if rows else far @ formed).flops

    d = near.ndim - (2 if rows else 1)
    return builtins.sum(n * flops(i, builtins.min(i + lines, size))
               for i, n in block_kinds(size, lines, dim_cuts(near, d)).items())


def _source(x: Expr, s: int, budget: int, what: str, kept: int) -> tuple[Expr, int, Callable | None]:
    """The expression to cut into blocks along ``s``, the lines per block, and (on the factored
    route, :func:`stream_plan`) a function computing block ``[i:j]`` directly from the far factor,
    formed here once, each block written into one buffer reused by the blocks (a fresh block of a
    vocabulary-wide product costs its page faults again: a quarter of the block's time)."""
    plan = stream_plan(x, s, budget, what, kept)
    if plan.far is None:
        return x, plan.lines, None
    L, R = factor(x)
    rows = s == x.ndim - 2
    dense = plan.far.to_dense()
    if _may_compact(plan.far, plan_expr(plan.far).peak_bytes, plan.held_bytes) and (
            not dense.is_contiguous() or dense.untyped_storage().nbytes() > plan.held_bytes):
        dense = dense.clone(memory_format=torch.contiguous_format)
    source = L @ lazy(dense) if rows else lazy(dense) @ R
    return source, plan.lines, _product_blocks(L if rows else R, dense, rows)


def _may_compact(far: Expr, formed: int, held: int) -> bool:
    """Whether the held far factor may be copied compact and row-major once formed: a batched one
    can come in a layout no block's product reads as one batch (its batch dims in einsum's
    order: each block would copy it, the blocks being costed with a row-major factor), and one
    whose plan allocates more than itself can be a view of a larger copy (rows of a list index),
    which it would hold to the end, counted as its own size."""
    return far.ndim > 2 or formed > held


def _product_blocks(near: Expr, far: torch.Tensor, rows: bool) -> Callable:
    """Rows (columns) ``[i:j]`` of ``near @ far`` (``far @ near``); 2-D
    blocks of the same shape are written into one buffer (not under autograd: ``out=`` has none)."""
    buffer: list[torch.Tensor] = []

    def block(i: int, j: int) -> torch.Tensor:
        part = _near_block(near, rows, i, j).to_dense()
        a, b = (part, far) if rows else (far, part)
        if a.ndim != 2 or b.ndim != 2:  # the planner's product: torch's matmul would copy the
            return (lazy(a) @ lazy(b)).to_dense()  # held factor expanded to a broadcast batch
        if _differentiated(a, b):
            return a @ b  # derivatives: a new block each time
        shape = (a.shape[0], b.shape[1])
        if not buffer or buffer[0].shape != shape:
            buffer[:] = [torch.empty(shape, dtype=torch.result_type(a, b), device=a.device)]
        return torch.mm(a, b, out=buffer[0])

    return block


def _differentiated(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether derivatives flow through ``a @ b`` (recorded gradients; forward-mode ones, which
    do not set ``requires_grad``; torch.func's wrapped tensors): ``out=`` supports none of them."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
            or forward_ad._current_level >= 0 or wrapped(a) or wrapped(b))


def _streamed(x: Expr, s: int, reduce_block: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
              what: str, kept: int = 0) -> tuple[torch.Tensor, ...]:
    """``reduce_block`` of every block of ``x`` along dim ``s``, concatenated along ``s``
    (``kept``: :func:`kept_bytes`)."""
    source, lines, direct = _source(x, s, settings.memory_budget(x.device), what, kept)
    size = x.shape[s]
    starts = range(0, size, lines)
    seconds = plan_expr(source).flops / ROUGH_FLOPS_PER_SECOND.get(x.device.type, 3e10)
    parts: list[tuple[torch.Tensor, ...]] = []
    # a block's products over its own rows, kept on the leaves, would be read by no other block
    # and stay held, uncounted, beside the next blocks
    with product_cache.not_kept() if len(starts) > 1 else contextlib.nullcontext():
        for i in progress.blocks(starts, total=len(starts), desc=what, estimate_seconds=seconds):
            j = builtins.min(i + lines, size)
            block = direct(i, j) if direct is not None else _block(source, s, i, j).to_dense()
            parts.append(reduce_block(block))
            del block  # else it stays alive while the next block is formed: two blocks at once
    del source, direct  # the held far factor and the blocks' buffer, freed before the concatenation
    if len(parts) == 1:
        return parts[0]
    return tuple(torch.cat(p, dim=s) for p in zip(*parts, strict=True))


def _reduce(x: Expr, dims: tuple[int, ...], blockwise: Blockwise, what: str,
            combine: Combine | None = None) -> tuple[torch.Tensor, ...]:
    """Reduce ``x`` over ``dims`` (results keep the reduced dims, size 1 or k).

    ``blockwise(t, ds)`` reduces a dense tensor over dims ``ds`` keeping them; ``combine``
    merges the partials of the blocks along the streamed dim when that dim is reduced too
    (only reductions over both matrix dims need one); a reduction that has one returns one
    tensor, the first partial (the others, such as tie counts, serve only the combine step)."""
    if math.prod(x.shape) == 0:  # nothing to stream: torch's own answer (or error) on no data
        return blockwise(x.to_dense(), dims)
    s = _stream_dim(x, dims)
    inner = tuple(d for d in dims if d != s)
    out = _streamed(x, s, lambda t: blockwise(t, inner), what, kept_bytes(x, dims, s))
    if s not in dims:  # per line: the answer (a combine step's extra partials, tie counts, unread)
        return out if combine is None else out[:1]
    if combine is None:
        raise ValueError(f"{what}: reducing dims {dims} of shape {tuple(x.shape)} needs a combine step")
    return combine(out, (s,))


# ---- extremes over several blocks: torch's gradient among ties -------------------------------
def _tied(t: torch.Tensor, partial: torch.Tensor, ds: tuple[int, ...], magnitude: bool) -> torch.Tensor:
    """How many entries of ``t`` (of ``|t|`` for a norm) equal their line's extreme ``partial``
    over dims ``ds`` (kept), with no gradient."""
    with torch.no_grad():
        return ((t.abs() if magnitude else t) == partial).sum(ds, keepdim=True)


def _with_ties(blockwise: Blockwise, magnitude: bool = False) -> Blockwise:
    """``blockwise`` (an extreme of each block: amax, amin, an infinity norm), with each block's
    count of entries at its extreme beside it when derivatives flow through the block: the
    combine step needs them to share the gradient among ties as torch does (:class:`_TiedExtreme`)."""
    def reduce_block(t: torch.Tensor, ds: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        (partial,) = blockwise(t, ds)
        if not _differentiated(t, t):
            return (partial,)
        return partial, _tied(t, partial, ds, magnitude)
    return reduce_block


class _TiedExtreme(torch.autograd.Function):
    """The extreme of the blocks' extremes along ``dims``, whose derivative shares the gradient
    among every entry at the extreme in proportion to how many each block holds.

    torch's ``amax`` (``max``, infinity norms) splits the gradient evenly among the tied entries
    of the whole tensor; combining the blocks' extremes with it again would split it evenly among
    the tied blocks, then within each block: a block holding two of three tied entries would get
    half, not two thirds. Here block ``b`` gets ``c_b / C`` (``c_b`` its tied entries, ``C``
    all of them). A NaN extreme ties nothing: its gradient is NaN for ``amax`` (``norm=False``)
    and zero for a norm, as torch's."""

    generate_vmap_rule = True  # torch.func's jacfwd and jacrev batch it (its steps are torch ops)

    @staticmethod
    def forward(partials: torch.Tensor, counts: torch.Tensor, dims: tuple[int, ...],
                largest: bool, norm: bool) -> torch.Tensor:
        return (torch.amax if largest else torch.amin)(partials, dim=dims, keepdim=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        partials, counts, dims, _, norm = inputs
        # (counts can pass float16's range: weighed in float32 at least)
        wide = torch.promote_types(partials.dtype, torch.float32)
        weights = torch.where(partials == output, counts, 0).to(wide)
        total = weights.sum(dims, keepdim=True)
        ctx.weights = torch.where(total > 0, weights / total, 0) if norm else weights / total
        ctx.dims = dims

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (grad * ctx.weights).to(grad.dtype), None, None, None, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        return (tangent * ctx.weights).sum(ctx.dims, keepdim=True).to(tangent.dtype)


def _partials_of(blockwise: Blockwise) -> Combine:
    """The combine step that reduces the blocks' partials with ``blockwise`` again."""
    return lambda partials, ds: blockwise(partials[0], ds)


def _extremes_of(largest: bool, norm: bool = False) -> Combine:
    """The combine step of blocks' maxima (minima) for amax, max, and infinity norms (whose
    partials are maxima of magnitudes), with their tie counts when :func:`_with_ties` gave them."""
    def combine(partials: tuple[torch.Tensor, ...], ds: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        if len(partials) == 1:
            return ((torch.amax if largest else torch.amin)(partials[0], dim=ds, keepdim=True),)
        return (_TiedExtreme.apply(*partials, ds, largest, norm),)
    return combine


# ---- top-k, max, min, argmax, argmin --------------------------------------------------------
def topk_count(x: Expr, k: Any, dim: Any) -> tuple[int, int]:
    """``(d, k)``: ``dim`` as an index of ``x``'s dims and ``k`` as an int within
    ``[0, x.shape[d]]``, as ``torch.topk`` takes them (evaluation and ``explain`` check alike);
    a ``TypeError`` or torch's ``RuntimeError`` otherwise."""
    d = _dim(x, dim, "topk")
    given, k = k, _index(k)
    if k is None:
        raise TypeError(f"topk: k must be an int, got {given!r}")
    if not 0 <= k <= x.shape[d]:
        raise RuntimeError(f"topk: k={k} is out of range for dim {dim} of size {x.shape[d]} "
                           f"(shape {tuple(x.shape)}); k must be in [0, {x.shape[d]}]")
    return d, k


@budgeted
def topk(x: Any, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):  # noqa: A002
    """``torch.topk`` of a lazy expression: ``(values, indices)`` along ``dim``, streamed.

    Each block holds whole lines of ``dim``, so values, indices and ties are those of
    ``torch.topk`` on the same values. Only the rounding of a block's product can differ from
    a one-shot ``to_dense()`` (the planner may order a block's product differently); on exactly
    representable data the indices are torch's."""
    x = as_expr(x)
    d, k = topk_count(x, k, dim)
    values, indices = _reduce(
        x, (d,), lambda t, ds: (topk_last(t, k, largest, sorted) if d == t.ndim - 1 else
                                tuple(t.topk(k, dim=d, largest=largest, sorted=sorted))), "topk")
    return torch.return_types.topk((values, indices))


def _extreme(x: Any, dim: Any, keepdim: bool, largest: bool, what: str) -> torch.Tensor:
    x = as_expr(x)
    dims = _dims(x, dim, what)
    fn = torch.amax if largest else torch.amin
    if math.prod(x.shape) == 0:  # torch's answer, or its error, for the user's own dim
        return fn(x.to_dense(), dim=dim, keepdim=keepdim)
    reduce_dims: Blockwise = lambda t, ds: (fn(t, dim=ds, keepdim=True),)  # noqa: E731
    (out,) = _reduce(x, dims, _with_ties(reduce_dims), what, combine=_extremes_of(largest))
    return _squeeze(out, dims, keepdim)


@budgeted
def amax(x: Any, dim: Any = (), keepdim: bool = False) -> torch.Tensor:
    """``torch.amax``: largest value over ``dim`` (an int, a tuple, or ``()`` for all), streamed;
    NaN propagates as in torch."""
    return _extreme(x, dim, keepdim, True, "amax")


@budgeted
def amin(x: Any, dim: Any = (), keepdim: bool = False) -> torch.Tensor:
    """``torch.amin``: smallest value over ``dim``, streamed (see :func:`amax`)."""
    return _extreme(x, dim, keepdim, False, "amin")


def _arg(x: Any, dim: Any, keepdim: bool, largest: bool, what: str) -> torch.Tensor:
    x = as_expr(x)
    fn = torch.argmax if largest else torch.argmin
    if dim is not None:
        d = _dim(x, dim, what)
        (out,) = _reduce(x, (d,), lambda t, ds: (fn(t, dim=d, keepdim=True),), what)
        return _squeeze(out, (d,), keepdim)
    # over the flattened tensor: the best of every row (value, column), then the first best row
    if math.prod(x.shape) == 0:
        return fn(x.to_dense())  # torch's error for an empty tensor
    pick = torch.max if largest else torch.min
    cols = x.ndim - 1
    values, where = _streamed(x, cols - 1, lambda t: tuple(pick(t, dim=cols, keepdim=True)), what,
                              kept_bytes(x, (cols,), cols - 1, flattened=True))
    row = fn(values.flatten())
    out = row * x.shape[-1] + where.flatten()[row]
    return out.reshape((1,) * x.ndim) if keepdim else out


@budgeted
def argmax(x: Any, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """``torch.argmax``: index of the first largest value along ``dim``, or in the flattened
    tensor when ``dim`` is None (NaN counts as largest, as in torch), streamed."""
    return _arg(x, dim, keepdim, True, "argmax")


@budgeted
def argmin(x: Any, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """``torch.argmin``: index of the first smallest value (see :func:`argmax`)."""
    return _arg(x, dim, keepdim, False, "argmin")


def _max_min(x: Any, dim: Any, keepdim: bool, largest: bool, what: str) -> Any:
    x = as_expr(x)
    if dim is None:
        if math.prod(x.shape) == 0:  # torch's own error on no data
            return (torch.max if largest else torch.min)(x.to_dense())
        return _extreme(x, (), False, largest, what)
    if isinstance(dim, (Expr, torch.Tensor)):
        raise TypeError(f"torch.{what}(expr, other): the elementwise {what} of a lazy expression of "
                        f"shape {tuple(x.shape)} is not a low-rank operation; call .to_dense() first")
    d = _dim(x, dim, what)
    fn = torch.max if largest else torch.min
    values, indices = _reduce(x, (d,), lambda t, ds: tuple(fn(t, dim=d, keepdim=True)), what)
    ret = torch.return_types.max if largest else torch.return_types.min
    return ret((_squeeze(values, (d,), keepdim), _squeeze(indices, (d,), keepdim)))


@budgeted
def max(x: Any, dim: Any = None, keepdim: bool = False) -> Any:  # noqa: A001
    """``torch.max``: the largest value (``dim=None``) or ``(values, indices)`` along ``dim``."""
    return _max_min(x, dim, keepdim, True, "max")


@budgeted
def min(x: Any, dim: Any = None, keepdim: bool = False) -> Any:  # noqa: A001
    """``torch.min``: the smallest value or ``(values, indices)`` along ``dim``."""
    return _max_min(x, dim, keepdim, False, "min")


# ---- sums and means: products with ones --------------------------------------------------------
def _widened(x: Expr) -> Expr:
    """``x`` in float32 (complex64) when it is float16 or bfloat16: the closed routes add up
    intermediate products (``1^T A`` of ``1^T A B``, the squares of a norm) that overflow or
    lose digits in half precision where torch's own reductions accumulate in float32."""
    half = x.dtype.itemsize < (8 if x.dtype.is_complex else 4)
    return x.to(torch.promote_types(x.dtype, torch.float32)) if half else x


def _cast(x: Expr, dtype: torch.dtype | None) -> Expr:
    return x if dtype is None else x.to(dtype)


@budgeted
def sum(x: Any, dim: Any = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:  # noqa: A001
    """``torch.sum`` over ``dim`` (all dims by default). Over a matrix dim it is a product with a
    ones vector, ``X @ 1`` or ``1^T @ X``, planned like any product; over batch dims only (whose
    result is a full matrix) it is streamed."""
    x = _cast(as_expr(x), dtype)
    dims = _dims(x, dim, "sum")
    rows, cols = x.ndim - 2, x.ndim - 1
    if rows not in dims and cols not in dims:
        (out,) = _reduce(x, dims, lambda t, ds: (t.sum(ds, keepdim=True),), "sum")
        return _squeeze(out, dims, keepdim)
    y = _widened(x)
    batch = tuple(d for d in dims if d < rows)
    ones = []
    if cols in dims:
        ones.append(torch.ones(x.shape[-1], 1, dtype=y.dtype, device=x.device))
        y = y @ lazy(ones[-1])
    if rows in dims:
        ones.append(torch.ones(1, x.shape[-2], dtype=y.dtype, device=x.device))
        y = lazy(ones[-1]) @ y
    del ones
    beside = ones_beside(x, dims)
    what = f"sum of a {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} expression"
    out = _dense_beside(y, beside, what)
    if not all_finite(out) and holds_inf(x):
        # an infinite entry: the product with ones adds it up in another order than the matrix's
        # sum does (inf - inf where the matrix holds inf, or the reverse), so such a call sums
        # the entries of streamed blocks instead
        del y, out
        add_up: Blockwise = lambda t, ds: (t.sum(ds, keepdim=True),)  # noqa: E731
        (out,) = _reduce(x, dims, add_up, "sum", _partials_of(add_up))
        return _squeeze(out, dims, keepdim)
    return _squeeze(out.sum(batch, keepdim=True) if batch else out, dims, keepdim).to(x.dtype)


def ones_beside(x: Expr, dims: tuple[int, ...]) -> int:
    """Bytes a sum of ``x`` over ``dims`` (a matrix dim among them) holds beside what its product
    with ones plans: the ones vectors (leaves to the plan), and the product's result when it is
    not the answer (summed over batch dims further, or widened from half precision)."""
    wide = _widened(x).dtype
    rows, cols = x.ndim - 2, x.ndim - 1
    out = list(x.shape)
    beside = 0
    for d in (rows, cols):
        if d in dims:
            beside += x.shape[d] * wide.itemsize
            out[d] = 1
    if any(d < rows for d in dims) or wide != x.dtype:
        beside += math.prod(out) * wide.itemsize
    return beside


def _dense_beside(y: Expr, beside: int, what: str) -> torch.Tensor:
    """``y.to_dense()`` within the active budget less ``beside`` bytes that the call holds next
    to the evaluation; :class:`~lazymat.settings.BudgetTooSmall` naming the least budget for both."""
    budget = settings.memory_budget(y.device)
    reserve = settings.blas_workspace(y.device)  # memory_budget= is the budget as set, before it
    try:
        if budget >= beside:
            return y.to_dense(memory_budget=budget - beside + reserve)
        least = 0 if plan_expr(y).work_bytes == 0 else None
        if least is None:
            y.to_dense(memory_budget=reserve)  # raises, naming the product's least budget
    except settings.BudgetTooSmall as e:
        least = e.minimum - reserve
    raise settings.BudgetTooSmall(what, "the product with ones (beside the ones vectors)", budget,
                                  least + beside, y.device)


@budgeted
def mean(x: Any, dim: Any = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.mean``: :func:`sum` divided by the number of entries reduced (NaN over none)."""
    x = _cast(as_expr(x), dtype)
    dims = _dims(x, dim, "mean")
    count = math.prod(x.shape[d] for d in dims)
    return sum(x, dims, keepdim) / count


# ---- vector norms ---------------------------------------------------------------------------
def _line_norms(x: Expr, cols: bool) -> torch.Tensor:
    """2-norms of every row (``cols``: of every column), keeping the reduced dim: the diagonal of
    ``X X^H`` (``X^H X``), a closed network, never the matrix. Half-precision expressions are
    squared in float32 (as torch accumulates their norms): a float16 square overflows from 256."""
    out_dtype = x.dtype.to_real() if x.dtype.is_complex else x.dtype
    x = _widened(x)
    gram = x.mH @ x if cols else x @ x.mH
    squares = linalg.diagonal(gram)
    squares = squares.real if squares.is_complex() else squares
    return linalg.norms.root_of_squares(squares).to(out_dtype).unsqueeze(-2 if cols else -1)


def _abs_power(t: torch.Tensor, p: float) -> torch.Tensor:
    """``|t|^p`` entrywise, real, in one working copy where nothing is recorded; a complex entry's
    magnitude as torch's (``|inf + NaN j|`` is inf, where its parts' squares add to NaN)."""
    if p == 2 and not t.is_complex():
        return t.square()
    size = t.abs()  # the one working copy of a block the stream plans (_REDUCTION_COPIES)
    if p == 1:
        return size
    return size.pow(p) if size.requires_grad else size.pow_(p)


def _root(total: torch.Tensor, p: float) -> torch.Tensor:
    """``total^(1/p)``, a ``p``-norm from its sum of ``|x|^p``, with torch's gradient at a zero
    norm when one is recorded: 0, where the root's infinite slope times the sum's zero gradient
    gives NaN."""
    if p == 1:
        return total
    if p == 2:
        return linalg.norms.root_of_squares(total)
    if not total.requires_grad:
        return total.clamp_min(0).pow(1 / p)
    zero = total <= 0  # not a NaN
    return torch.where(zero, 0, torch.where(zero, 1, total).pow(1 / p))


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, read off its largest and smallest entries (two
    numbers: ``torch.isfinite`` forms ``|t|`` and three masks of ``t``'s size, past the budget)."""
    if _vmapped(t):  # torch.vmap cannot read a value back: the answer as its route gives it
        return True
    t = torch.view_as_real(t.detach()) if t.is_complex() else t.detach()  # (read, not differentiated)
    return t.numel() == 0 or math.isfinite(t.amax()) and math.isfinite(t.amin())


def _vmapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by ``torch.vmap`` at any depth of torch.func's wrappers."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return True
        t = functorch.get_unwrapped(t)
    return False


def holds_inf(x: Expr) -> bool:
    """Whether a leaf of ``x`` holds an infinite entry (read only after a sum or norm came out
    non-finite)."""
    return any(type(n) is Leaf and n.tensor is not None and bool(torch.isinf(n.tensor).any())
               for n in postorder(x))


def _combine_norms(ord: float) -> Blockwise:  # noqa: A002
    if ord == 0:  # the count of nonzeros adds up
        return lambda t, ds: (t.sum(ds, keepdim=True),)
    return lambda t, ds: (torch.linalg.vector_norm(t, ord, ds, keepdim=True),)


def vector_order(ord: Any) -> float:
    """``ord`` of a vector norm as a float, as torch takes it (a number, a NumPy scalar or a
    one-element real tensor); TypeError otherwise (a string, a bool)."""
    if isinstance(ord, (str, bool)) or not isinstance(ord, (numbers.Real, torch.Tensor)) or (
            isinstance(ord, torch.Tensor) and (ord.numel() != 1 or ord.is_complex())):
        raise TypeError(f"vector_norm: ord must be a number, got {ord!r}")
    return float(ord)


@budgeted
def vector_norm(x: Any, ord: float = 2, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.linalg.vector_norm`` over ``dim`` (all dims when None).

    2-norms come from closed networks (row or column norms from ``diag(X X^H)``, a whole
    matrix's from its Frobenius norm); other orders (``1``, ``inf``, ``-inf``, ``0``, any ``p``)
    are streamed. The 2-norm routes square the entries, so where terms of a sum nearly cancel
    the result carries ``sqrt(eps)``-relative noise that the dense norm would not."""
    x = as_expr(x)
    linalg.norms.check_norm_dtype(x, dtype, "vector_norm")
    x = _cast(x, dtype)
    ord = vector_order(ord)  # noqa: A001
    dims = _dims(x, dim, "vector_norm")
    rows, cols = x.ndim - 2, x.ndim - 1
    combine = _combine_norms(ord)
    if ord == 2 and math.prod(x.shape) and (rows in dims or cols in dims):
        if rows in dims and cols in dims:
            out = linalg.matrix_norm(x, "fro", keepdim=True)
        else:
            out = _line_norms(x, cols=rows in dims)
        if all_finite(out) or not holds_inf(x):
            batch = tuple(d for d in dims if d < rows)
            out = combine(out, batch)[0] if batch else out
            return _squeeze(out, dims, keepdim)
        # a non-finite norm over an infinite entry: the squares' network reads it as inf - inf
        # (NaN) where torch's norm of the matrix is inf, so such a call streams the entries
    return streamed_norm(x, ord, dims, keepdim)


def streamed_norm(x: Expr, ord: float, dims: tuple[int, ...], keepdim: bool = False) -> torch.Tensor:  # noqa: A002
    """``torch.linalg.vector_norm(X, ord, dims)`` from the entries, formed in blocks sized to the
    memory budget: torch's norm of each block, its values and gradients (inf, NaN and the NaN
    positions of a gradient as torch's on the formed matrix), combined across blocks. The route of
    a norm whose squares' route (a Gram, a network) reads an infinite entry as ``inf - inf``.
    A ``p``-norm (``0 < p < inf``) adds the blocks' sums of ``|x|^p`` and takes one root: each
    block's norm (torch's) combined by a norm again gave a NaN or infinite block's every entry a
    NaN gradient (``inf / inf``, or a 1-norm's ``sgn(NaN)``, at the combine step times every
    entry's) where torch's is NaN only at the entries that make it."""
    if 0 < ord < math.inf:
        wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None  # as torch's
        add: Blockwise = lambda t, ds: (t.sum(ds, keepdim=True),)  # noqa: E731
        powers: Blockwise = lambda t, ds: add(_abs_power(t if wide is None else t.to(wide), ord), ds)  # noqa: E731
        (out,) = _reduce(x, dims, powers, "vector_norm", _partials_of(add))
        out = _root(out, ord).to(x.dtype.to_real() if x.dtype.is_complex else x.dtype)
        return _squeeze(out, dims, keepdim)
    combine = _combine_norms(ord)
    norms: Blockwise = lambda t, ds: (torch.linalg.vector_norm(t, ord, ds, keepdim=True),)  # noqa: E731
    if math.isinf(ord):  # the largest (smallest) magnitude: an extreme, its ties counted
        (out,) = _reduce(x, dims, _with_ties(norms, magnitude=True), "vector_norm",
                         _extremes_of(ord > 0, norm=True))
    else:
        (out,) = _reduce(x, dims, norms, "vector_norm", _partials_of(combine))
    return _squeeze(out, dims, keepdim)
