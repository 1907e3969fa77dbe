"""Determinants and linear systems: det, slogdet, inv, solve and lstsq read off the structure
(singular below full inner width), else one LU per square segment of a product, the product
never formed; lstsq off the nonzero triplets."""
from __future__ import annotations

import cmath
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from ..coefficient import Wide, far, log_magnitude, power, reciprocal, times
from ..execute import _contract, _Memo, device_budget, evaluate_as_written, view_value
from ..expr import Expr, MatMul, as_expr, broadcast_shapes, lazy
from ..expr import matmul as lazy_matmul
from ..plan import plan_chain
from ..product_cache import holds_none
from ..rewrite import View, canonical, leaf_chain, view_expr
from ..settings import BudgetTooSmall
from . import blocks
from ._common import _complex, _form, _inner_width, _needs_grad, _real, _square, _work_dtype
from .blocks import _after_spectrum_fits, _cut_shapes, _in_blocks, _less_budget, _result_bytes
from .calls import _vmapped, budgeted, reads_through_casts
from .peaks import _fits
from .small import _square_parts, dense_is_cheaper, small_reduction
from .spectrum import (
    _call_spectrum,
    _eps,
    _is_number,
    _kept,
    _leading,
    _nan_members,
    _nonfinite_members,
    _pad,
    _zero_members,
)


# A square ``X = L @ R`` whose inner width ``r`` (its structural rank, :func:`structural_rank`) is
# below ``n`` is singular whatever its leaves hold: ``det`` is 0 and no inverse exists, read off
# the structure alone. Otherwise a single product splits at its chain dims equal to ``n`` into
# square segments, ``X = c S_1 @ ... @ S_j`` (each a leaf view, or a product whose inner dims all
# exceed ``n``, formed once): ``det X = c^n prod det S_i``, ``X^-1 = S_j^-1 ... S_1^-1 / c``, and
# ``X^-1 B`` is solved segment by segment (an LU of each, ``O(n^3)``; the product is never formed).
# Anything else (a sum of full structural rank) is formed whole. The ``n x n`` matrices these
# routes hold are checked against the memory budget before anything runs (``explain``'s schedule).
def structural_rank(x: Any) -> int:
    """The rank ``X`` has at most for any values of its leaves: the inner width of
    :func:`lazymat.core.factor`'s ``L @ R`` (a single product's narrowest chain dim, a sum's
    stacked width), at most ``min(m, n)``. The numerical rank (:func:`matrix_rank`) may be lower."""
    x = as_expr(x)
    return min(*x.shape[-2:], _inner_width(x))


def square_segments(x: Any, op: str | None = None, k: int = 0, *,
                    rhs: tuple | None = None) -> tuple[Any, list[Expr]]:
    """``(c, [S_1, ..., S_j])`` with ``X = c * S_1 @ ... @ S_j``, each ``S_i`` square
    (``n x n``; batched as its factors are): a single product cut at every chain dim equal to
    ``n``; ``(1, [X])`` for a sum. ``c`` exactly, as the expression's form holds it: a Python
    number (complex for a complex scale), a :class:`lazymat.coefficient.Wide` (``mantissa *
    2**exponent``) past the float64 range, or a 0-dim tensor where ``X`` holds tensor scales (at
    least float64, multiplied in range: finite wherever the exact product is);
    :func:`lazymat.coefficient.times` applies a number or a Wide to a tensor in range. ``X``
    a tensor or an expression; a non-square one raises ValueError (it has no square segments).
    With ``op`` (``"det"``, ``"slogdet"``, ``"inv"``, ``"solve"`` with ``k`` right-hand sides),
    the segments that op's route factorises: ``(1, [X])`` where forming ``X`` is cheaper
    (:data:`SQUARE_OPS`, :func:`dense_is_cheaper`: small matrices, and under a budget the route
    that fits; never for ``inv``), ``rhs`` the shape of a ``B`` that adds batch dims to
    ``solve``'s answer."""
    x = as_expr(x)
    _square(x, "square_segments")
    c, parts = _square_parts(x, op, k, rhs)
    return c, [view_expr(p) if isinstance(p, View) else p for p in parts]


def _segment(part: Expr | View, dtype: torch.dtype) -> torch.Tensor:
    """A part of :func:`_square_parts` as a tensor in ``dtype``: a view of a leaf read as it is,
    a product formed (:func:`_formed`)."""
    D = view_value(part, _Memo()) if isinstance(part, View) else _formed(part)
    return D if D.dtype == dtype else D.to(dtype)


def _formed(x: Expr) -> torch.Tensor:
    """``x.to_dense()``; an unbatched plain chain of data leaves holding no product is read
    straight from its leaves by its chain's plan, as :func:`lazymat.execute.evaluate` reads a
    fresh chain (``x``'s form, made by the route's decisions, would send ``to_dense`` through
    the general path: ~80 lines more for a chain of three 16 x 16 leaves formed for its det).
    The caller has checked the route's peak against the budget."""
    leaves = leaf_chain(x) if type(x) is MatMul and len(x.shape) == 2 else None
    if leaves is None or not holds_none(leaves) or any([leaf.tensor is None for leaf in leaves]):
        return x.to_dense()
    plan = plan_chain(tuple([leaf.shape for leaf in leaves]), x.dtype.itemsize)
    return _contract([leaf.checked_tensor() for leaf in leaves], plan)


def _lu_block_costs(x: Expr, op: str, k: int = 1, rhs: tuple | None = None, answer: int = 0,
                    free: bool = False) -> Callable[[tuple], tuple[int, int]]:
    """``costs(block shape) -> (peak bytes, FLOPs)`` of the route of ``op`` (``"det"``,
    ``"slogdet"``, ``"inv"``, ``"solve"`` with ``k`` right-hand sides, of shape ``rhs`` where
    ``B`` adds batch dims: the whole batch only) on a block of ``x``'s
    batch, as :func:`lazymat.explain.explain` schedules it whole (one LU per square segment);
    where no slicing of a segment's formation fits, the route at its least budget (a peak over
    the budget, as :func:`_route_costs`). ``answer``: bytes held beside a block (the batch's
    answer), taken off the budget that chooses a block's route (formed whole or by segments,
    :func:`dense_is_cheaper`), as :func:`_lu_in_blocks` runs it; ``free``: the route a budget
    without bound chooses (its peak is a budget that chooses it too). Each shape is explained once."""
    from ..explain import whole_batch  # explain reads linalg's routes: imported on use

    found: dict[tuple, tuple[int, int]] = {}
    options = ({"k": k} if rhs is None else {"B": rhs}) if op == "solve" else {}

    def costs(shape: tuple) -> tuple[int, int]:
        if shape not in found:
            block = x[tuple(slice(0, c) for c in shape)] if shape != tuple(x.shape[:-2]) else x
            with _less_budget(x.device, answer):
                try:
                    route = whole_batch(block, op, memory_budget=2**62 if free else None, **options).planned
                except BudgetTooSmall as err:
                    route = whole_batch(block, op, memory_budget=err.minimum, **options).planned
            found[shape] = route.peak_bytes, route.flops
        return found[shape]

    return costs


def _lu_answer_bytes(x: Expr, op: str, k: int = 1) -> int:
    """Bytes of the answer of ``op`` (:func:`_lu_block_costs`) for ``x``'s batch, in ``x``'s
    dtype: the dets, the signs and real log-dets, the inverses, or the ``(n, k)`` solutions."""
    b, n, item = math.prod(x.shape[:-2]), x.shape[-1], x.dtype.itemsize
    return b * {"det": item, "slogdet": item + _real(x.dtype).itemsize, "inv": n * n * item,
                "solve": n * k * item}[op]


def lu_batch_blocks(x: Expr, op: str, k: int = 1) -> tuple[list[tuple], int, int] | None:
    """How ``op`` (:func:`_lu_block_costs`) runs on ``x`` under the active budget when the whole
    batch's route does not fit it but one member's does beside the batch's answer: the blocks'
    index keys (:func:`_block_keys`), the run's peak and FLOPs; None when it runs whole, or
    cannot run (the call refuses: :func:`_lu_in_blocks`). The schedule :func:`lazymat.explain`
    reports."""
    batch = tuple(x.shape[:-2])
    if math.prod(batch) < 2 or structural_rank(x) < x.shape[-1]:
        return None
    answer = _lu_answer_bytes(x, op, k)
    costs = _lu_block_costs(x, op, k, answer=answer)
    budget = device_budget(x.device)
    one = tuple(1 for _ in batch)
    if _lu_block_costs(x, op, k)(batch)[0] <= budget or costs(one)[0] + answer > budget:
        return None
    keys = blocks._block_keys(x, op, budget, costs, answer)
    block = [key.stop - key.start for key in keys[0]]
    peak = max(costs(cut)[0] for cut in _cut_shapes(batch, block))
    return keys, peak + answer, costs(tuple(block))[1] * len(keys)


def lu_route(x: Expr, op: str, k: int = 1, blocks: bool = True,
             rhs: tuple | None = None) -> tuple[Callable, int] | None:
    """How :func:`_lu_in_blocks` runs ``op`` on ``x`` under the active budget: None when its route
    fits whole, else ``(block costs, answer bytes)`` for blocks of the batch; raises
    :class:`BudgetTooSmall` (naming the least budget) where neither fits, so that
    :func:`lazymat.explain` refuses where the call does. Arguments as :func:`_lu_in_blocks`'."""
    form = _form(x)
    batch = tuple(x.shape[:-2])
    members = math.prod(batch if rhs is None else broadcast_shapes(batch, rhs[:-2]))
    bound = (form.factors + 8) * members * (form.dim * form.dim + 2 * form.dim * k) * 16
    fits, budget = _fits(x, bound)
    if fits:
        return None
    whole = _lu_block_costs(x, op, k, rhs)(batch)[0]
    if whole <= budget:
        return None
    answer = _lu_answer_bytes(x, op, k)
    costs = _lu_block_costs(x, op, k, rhs, answer)
    blocks = blocks and math.prod(batch) > 1
    one = tuple(1 for _ in batch)
    least = min(whole, costs(one)[0] + answer) if blocks else whole
    if least > budget:  # the least of both routes (formed whole or by segments), whole or in blocks
        free = _lu_block_costs(x, op, k, rhs, answer, free=True)
        whole = min(whole, _lu_block_costs(x, op, k, rhs, free=True)(batch)[0])
        least = min(whole, least, free(one)[0] + answer if blocks else whole)
        dtype = str(x.dtype).replace("torch.", "")
        raise BudgetTooSmall(f"{op} of a {tuple(x.shape)} {dtype} expression",
                             "one matrix of the batch beside the batch's answer" if least < whole else
                             "the route (its square segments or the matrix formed whole, and their LU "
                             "factors)", budget, least, x.device)
    return costs, answer


def _lu_in_blocks(x: Expr, op: str, compute: Callable[[Expr, tuple | None], Any], k: int = 1,
                  blocks: bool = True, rhs: tuple | None = None) -> Any:
    """``compute(x, None)`` for ``op`` (:func:`_lu_block_costs`) when its route fits the active
    budget, else on blocks of ``x``'s batch (:func:`_in_blocks`, the spectral calls' mechanism:
    each block's answer written into the batch's as it comes) where one member's route fits
    beside the batch's answer (not when ``blocks`` is False: an answer that cannot be written in
    blocks). Else :class:`BudgetTooSmall` before anything runs, naming the least budget: the
    whole batch's peak or one member's beside the answer, whichever is less (the route is fixed
    by the structure, one LU per segment). ``rhs``: the shape of a ``B`` (``(..., n, k)``) whose
    batch dims ``solve``'s route broadcasts past ``x``'s (``blocks`` is then False)."""
    route = lu_route(x, op, k, blocks, rhs)
    if route is None:
        return compute(x, None)
    costs, answer = route

    def beside(block: Expr, key: tuple | None) -> Any:  # a block's route chosen beside the answer
        with _less_budget(x.device, answer):
            return compute(block, key)

    return _in_blocks(x, op, beside, costs=costs, result=answer)


def _singular_error(x: Expr, op: str) -> torch.linalg.LinAlgError:
    dtype = str(x.dtype).replace("torch.", "")
    return torch.linalg.LinAlgError(
        f"{op}: the {tuple(x.shape)} {dtype} expression has structural rank {structural_rank(x)} < "
        f"{x.shape[-1]} (its narrowest factorisation is {x.shape[-2]} x {structural_rank(x)} @ "
        f"{structural_rank(x)} x {x.shape[-1]}), so it is singular for any values of its leaves; "
        "use lm.linalg.lstsq or lm.linalg.pinv for the least-squares answer")


def _entry_total(x: Expr) -> torch.Tensor:
    """``1^T X 1`` per member, real, ``x``'s batch shape: planned as a product with ones (no
    ``n x n`` matrix), finite unless an entry of a factor is inf or NaN (or the sum overflows)."""
    wd = _work_dtype(x.dtype)
    y = x if wd == x.dtype else x.to(wd)
    m, n = x.shape[-2:]
    row, column = torch.ones(1, m, dtype=wd, device=x.device), torch.ones(n, 1, dtype=wd, device=x.device)
    total = (lazy(row) @ y @ lazy(column)).to_dense()[..., 0, 0]
    return total.real if total.is_complex() else total


def _singular_parts(x: Expr, log: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(det or sign, logabsdet)`` of a structurally singular ``X``: 0 (sign 0 and -inf), NaN
    for a member with an inf or NaN entry (as torch's: its sign stays 0). Nothing ``n x n`` is
    formed. ``det`` is 0 for all values of the leaves, so its gradient to them is exactly 0
    (at rank ``n - 1`` the adjugate is the gradient to ``X``, but ``adj(X) L = 0`` and
    ``R adj(X) = 0`` for ``X = L R``): the zeros are ``0 * (1^T X 1)``, linked to the leaves,
    whose gradient is 0 times theirs."""
    nan_or_zero = _entry_total(x) * 0
    if not log:
        return nan_or_zero.to(x.dtype), nan_or_zero
    sign = torch.zeros(x.shape[:-2], dtype=x.dtype, device=x.device)
    return sign, nan_or_zero.to(_real(x.dtype)) - math.inf


def _determinant(x: Expr, log: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(det, None)`` or ``(sign, logabsdet)`` of a square ``x`` (see the section's note)."""
    if structural_rank(x) < x.shape[-1]:
        out = _singular_parts(x, log)
        return out if log else (out[0], None)
    out = _lu_in_blocks(x, "slogdet" if log else "det", lambda block, _: _segments_determinant(block, log))
    return out if log else (out, None)


def _segments_determinant(x: Expr, log: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``det`` or ``(sign, logabsdet)`` of a structurally nonsingular ``x`` (or a block of its
    batch) off its square segments' LU factors, with ``x``'s batch shape. Where a segment's det
    (a logabsdet) or the coefficient is NaN or inf, which an inf or NaN entry makes it, torch's
    on the matrix formed as written (:func:`_as_written_determinant`; :func:`answer_checked`
    says where it is read). A product of finite dets past the float range is not re-read."""
    batch, n = tuple(x.shape[:-2]), x.shape[-1]
    wd = _work_dtype(x.dtype)
    c, segments = _square_parts(x, "slogdet" if log else "det")
    checked = answer_checked(x, c, len(segments))
    if checked and _is_number(c) and not math.isfinite(abs(c)):  # (an inf or NaN scale)
        return _as_written_determinant(x, log)
    formed = None
    if scaled_segment(c, len(segments), wd):  # det(c S) as torch's formed matrix
        formed, c = [_times_coefficient(_segment(segments[0], wd), c)], 1
    exact = not isinstance(c, torch.Tensor)  # c^n applied after the segments (it may pass the range)
    cn = power(c, n) if exact and not log else None
    # det as sign * exp(logabsdet) when c^n is past the float range, or far from 1 (the segments'
    # dets times c^n could under- or overflow where the matrix's det does not)
    logs = log or type(cn) is Wide or (exact and far(cn, wd))
    zero = None  # (det: 0 times each det and c, summed: NaN where one is not finite)
    if exact:
        value = torch.ones((), dtype=wd, device=x.device)
        sign, logabs = value, torch.zeros((), dtype=_real(wd), device=x.device)
    else:
        c = _scalar(c, wd, x.device)
        if not log:
            value = c**n
            zero = c * 0 if checked else None
        else:
            size = c.abs()
            sign = torch.where(size > 0, c / torch.where(size > 0, size, 1), 0) ** n
            logabs = n * torch.log(size)
    for D in formed or (_segment(seg, wd) for seg in segments):
        if not logs:
            d = torch.linalg.det(D)
            if checked:
                zero = d * 0 if zero is None else zero + d * 0
            value = value * d
            continue
        s, la = torch.linalg.slogdet(D)
        sign, logabs = sign * s, logabs + la
    if exact and logs:  # |c|^n as its log and c's phase to the n-th power: finite past the float range
        sign = _times_coefficient(sign, _phase(c) ** n if c != 0 else 0.0)
        logabs = logabs + n * log_magnitude(c)
    if not log:
        value = sign * torch.exp(logabs) if logs else _times_coefficient(value, cn) if exact else value
    if checked:
        flag, flag_log = (logabs, True) if logs else (zero, False)
        if _unreadable(x):  # both computed, selected member by member: no value read back
            bad = (flag.isnan() | (flag == math.inf)) if flag_log else ~torch.isfinite(flag)
            formed = _as_written_determinant(x, log)
            if log:
                s, la = formed
                sign, logabs = torch.where(bad, s.to(sign.dtype), sign), torch.where(bad, la, logabs)
            else:
                value = torch.where(bad, formed.to(value.dtype), value)
        elif not _read_finite(flag, flag_log):
            return _as_written_determinant(x, log)
    if not log:
        return _batched(value, batch).to(x.dtype)
    return _batched(sign, batch).to(x.dtype), _batched(logabs, batch).to(_real(x.dtype))


def _read_finite(t: torch.Tensor, log: bool) -> bool:
    """Whether ``t`` (0 or NaN; ``log``: logabsdets, finite or ``-inf`` for a det of 0) is all
    finite: its sum read back, one number (NaN or inf where a member is)."""
    total = (t.sum() if t.ndim else t).item()
    if log:
        return total == total and total != math.inf
    return cmath.isfinite(total) if isinstance(total, complex) else math.isfinite(total)


def _unreadable(x: Expr) -> bool:
    """Whether a value of ``x``'s route cannot be read back (a leaf batched by ``torch.vmap``):
    the det's check then computes the answer as written too and selects, with no host sync."""
    return torch._C._are_functorch_transforms_active() and _vmapped((x,))


def scaled_segment(c: Any, k: int, dtype: torch.dtype) -> bool:
    """Whether :func:`det`'s route scales a lone complex segment by its coefficient ``c`` before
    its LU (``det(c S)``, torch's det of the formed matrix; an ``n x n`` product more) instead
    of ``c^n det S``: ``c`` times a complex inf entry has a NaN part (``inf * 0``), which the
    formed matrix's LU turns into a NaN det where ``c^n det S`` gave a number or inf."""
    return k == 1 and dtype.is_complex and not (_is_number(c) and c == 1)


def answer_checked(x: Expr, c: Any, k: int) -> bool:
    """Whether :func:`det`'s route on ``x = c S_1 ... S_k`` (``n x n``, ``n > 1``) reads its
    answer back for NaN or inf (one host sync): unless ``x`` is one view of a leaf times a
    finite number, whose det is torch's on the matrix as written. Elsewhere the route
    associates differently (the segments' dets multiplied, a product contracted in the plan's
    order, ``c`` applied last), and an inf entry turns into a NaN or an inf by the order
    (``inf - inf`` or not); a det with an inf or NaN entry is itself NaN or inf, which is where
    it is re-read."""
    if x.shape[-1] < 2:
        return False
    form = canonical(x)
    lone = k == 1 and len(form.terms) == 1 and len(form.terms[0].factors) == 1
    return not lone or isinstance(c, torch.Tensor) or not (type(c) is Wide or math.isfinite(abs(c)))


def _as_written_determinant(x: Expr, log: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """torch's det or slogdet of ``x`` formed as written (:func:`~lazymat.execute.evaluate_as_written`),
    in the work dtype, answered in ``x``'s: the route for an inf or NaN entry, where the order of the products
    decides whether LU meets ``inf - inf`` (``(A @ B) @ C`` against ``A @ (B @ C)``)."""
    D = evaluate_as_written(x)
    wd = _work_dtype(x.dtype)
    D = D if D.dtype == wd else D.to(wd)
    if not log:
        return torch.linalg.det(D).to(x.dtype)
    sign, logabs = torch.linalg.slogdet(D)
    return sign.to(x.dtype), logabs.to(_real(x.dtype))


def _times_coefficient(t: torch.Tensor, c: Any, inverse: bool = False) -> torch.Tensor:
    """``t * c`` (``t / c`` when ``inverse``) for a coefficient ``c`` of :func:`_square_parts`:
    a number or a Wide applied in steps that stay in ``t``'s range
    (:func:`lazymat.coefficient.times`: finite wherever the answer is), a 0-dim tensor as one
    operation (its autograd graph kept); nothing for 1."""
    if isinstance(c, torch.Tensor):
        return t / c if inverse else t * c
    if c == 1:
        return t
    return times(t, reciprocal(c) if inverse else c)


def _phase(c: Any) -> float | complex:
    """``c / |c|`` of a nonzero coefficient (a Wide's mantissa has its phase)."""
    m = c.mantissa if type(c) is Wide else c
    return m / abs(m)


def _scalar(c: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The coefficient ``c`` (a number or a 0-dim tensor) as a 0-dim tensor in ``dtype`` (complex
    when ``c`` is), on ``device``; a tensor keeps its autograd graph."""
    complex_ = c.is_complex() if isinstance(c, torch.Tensor) else isinstance(c, complex)
    return torch.as_tensor(c, dtype=_complex(dtype) if complex_ else dtype, device=device)


def _batched(t: torch.Tensor, batch: tuple) -> torch.Tensor:
    """``t`` broadcast to the shape ``batch`` (segments may not all carry every batch dim), a
    tensor of its own (never an expanded view)."""
    return t if tuple(t.shape) == batch else t.expand(batch).clone()


@budgeted
@reads_through_casts
def det(x: Any) -> torch.Tensor:
    """``torch.linalg.det`` of a square ``X`` (batched), without forming it where its structure
    allows: 0 when its structural rank (:func:`structural_rank`) is below ``n`` (nothing formed;
    NaN for a member with an inf or NaN entry), the product of its square segments' dets for a
    single product (``det(A @ B @ C) = det A det B det C``, scaled by ``c^n``), else the det of
    the formed matrix. Within the memory budget (:class:`~lazymat.settings.BudgetTooSmall` before
    anything runs). Differentiable: through torch's det of each segment (the adjugate at a singular
    one); exactly 0 where ``X`` is structurally singular (``det`` is 0 for all leaf values)."""
    x = as_expr(x)
    _square(x, "det")
    return _determinant(x, log=False)[0]


@budgeted
@reads_through_casts
def slogdet(x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.slogdet``: ``(sign, logabsdet)`` as a ``torch.return_types.linalg_slogdet``,
    by :func:`det`'s routes (signs multiplied, logs added: no overflow for a long chain); ``(0,
    -inf)`` for a structurally singular ``X`` (``logabsdet`` NaN for a member with an inf or NaN
    entry, as torch). ``sign`` has ``X``'s dtype (a unit complex number for complex ``X``),
    ``logabsdet`` the real one."""
    x = as_expr(x)
    _square(x, "slogdet")
    return torch.return_types.linalg_slogdet(_determinant(x, log=True))


@budgeted
def logdet(x: Any) -> torch.Tensor:
    """``torch.logdet``: ``log(det X)`` from :func:`slogdet`; NaN for a negative real det,
    ``-inf`` for a zero one, ``logabsdet + log(sign)`` for complex ``X``."""
    sign, logabs = slogdet.unbudgeted(x)
    if sign.is_complex():
        return logabs.to(sign.dtype) + torch.log(sign)
    return torch.where(sign < 0, math.nan, logabs)


def _inverse_parts(x: Expr, op: str, k: int = 0, rhs: tuple | None = None) -> tuple[Any, list[Expr | View]]:
    """``(c, square parts)`` (:func:`_square_parts` of ``op``'s route) of a square ``x`` for its
    inverse or solve (``k`` right-hand sides, of shape ``rhs`` where ``B`` adds batch dims), or
    raise the structural-singularity ``LinAlgError``, or torch's for a coefficient ``c`` of 0
    (``0 * A``: singular for any values of its leaves; dividing by it gave inf)."""
    if structural_rank(x) < x.shape[-1]:
        raise _singular_error(x, op)
    c, parts = _square_parts(x, op, k, rhs)
    if x.shape[-1] and bool(c == 0):  # (a number, or a 0-dim tensor read back: a value)
        dtype = str(x.dtype).replace("torch.", "")
        raise torch.linalg.LinAlgError(
            f"{op}: the {tuple(x.shape)} {dtype} expression is scaled by {c!r}, so it is singular "
            "(the zero matrix); use lm.linalg.lstsq or lm.linalg.pinv for the least-squares answer")
    return c, parts


def _solved(op: str, i: int, count: int, fn: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``fn(*args, **kwargs)`` (torch's inverse or solve of segment ``i``), its singular-matrix
    error naming the segment."""
    try:
        return fn(*args, **kwargs)
    except torch.linalg.LinAlgError as e:
        if count == 1:
            raise
        raise torch.linalg.LinAlgError(f"{op}: square segment {i} of {count} of the product is singular "
                                       f"({e})") from e


@budgeted
@reads_through_casts
def inv(x: Any) -> Expr | torch.Tensor:
    """``torch.linalg.inv`` of a square ``X``. A product of several square segments
    (``A @ B @ C``, each ``n x n``) answers lazily: ``C^-1 @ B^-1 @ (A^-1 / c)``, each segment's
    inverse formed once now (a snapshot of the leaves' values, as :func:`pinv`'s factors), the
    product never. Anything else answers a tensor, as torch: the inverse of the formed matrix.
    A structurally singular ``X`` (:func:`structural_rank` below ``n``) raises
    ``torch.linalg.LinAlgError`` naming its shape and structural rank; a segment singular by its
    values raises torch's, naming the segment. Differentiable through torch's inverses."""
    x = as_expr(x)
    _square(x, "inv")
    parts = _inverse_parts(x, "inv")
    return _lu_in_blocks(x, "inv", lambda block, key: _inverse(block, parts if key is None else None),
                         blocks=len(parts[1]) == 1)


def _inverse(x: Expr, parts: tuple[Any, list] | None = None) -> Expr | torch.Tensor:
    """:func:`inv` of a structurally nonsingular ``x`` (or a block of its batch); ``parts``: its
    square parts where the caller has them (the whole batch)."""
    c, segments = parts or _square_parts(x)
    wd = _work_dtype(x.dtype)
    invs = [_solved("inv", i, len(segments), torch.linalg.inv, _segment(seg, wd))
            for i, seg in enumerate(segments)]
    first = _times_coefficient(invs[0], c, inverse=True).to(x.dtype)
    if len(invs) == 1:
        return first
    out = lazy(first)
    for t in invs[1:]:
        out = lazy_matmul(lazy(t.to(x.dtype)), out)
    return out


def _rhs(x: Expr, B: Any, left: bool) -> tuple[torch.Tensor, bool]:
    """``(B as a matrix tensor, whether B is a batch of vectors)`` for :func:`solve`: a vector
    by torch's rule (``B`` 1-D, or ``B.shape == X.shape[:-1]``) as a column, or a row when not
    ``left``; a lazy ``B`` evaluated (it has the answer's size). Shape and dtype checked."""
    if isinstance(B, Expr):
        B = B.to_dense()
    if not isinstance(B, torch.Tensor):
        raise TypeError(f"solve: B must be a tensor or a lazy expression, got {type(B).__name__}")
    if B.dtype != x.dtype:
        raise TypeError(f"solve: X and B must have the same dtype (as torch), got {x.dtype} "
                        f"{tuple(x.shape)} and {B.dtype} {tuple(B.shape)}")
    if B.device != x.device:
        raise ValueError(f"solve: X and B must be on the same device (as torch), got {x.device} "
                         f"{tuple(x.shape)} and {B.device} {tuple(B.shape)}; move one with .to(device)")
    vector = B.ndim == 1 or B.ndim == x.ndim - 1 and tuple(B.shape) == tuple(x.shape[:-1])
    matrix = (B.unsqueeze(-1) if left else B.unsqueeze(-2)) if vector else B
    dim = x.shape[-2] if left else x.shape[-1]
    if matrix.ndim < 2 or matrix.shape[-2 if left else -1] != dim:
        raise ValueError(f"solve: incompatible shapes X {tuple(x.shape)} and B {tuple(B.shape)} "
                         f"({'X @ Y = B' if left else 'Y @ X = B'} needs B's {'rows' if left else 'columns'} "
                         f"to be {dim})")
    return matrix, vector


@budgeted
def solve(x: Any, B: Any, *, left: bool = True) -> torch.Tensor:
    """``torch.linalg.solve``: ``Y`` with ``X @ Y = B`` (``left=False``: ``Y @ X = B``) for a square
    ``X``, ``B (..., n, k)`` or a batch of vectors ``(..., n)`` (torch's rule: ``B`` 1-D, or
    ``B.shape == X.shape[:-1]``; not ``left``: a batch of rows), batches broadcast. Through the
    square segments of a product (:func:`square_segments`): ``Y = S_j^-1 ... S_1^-1 B / c``, one
    LU solve per segment, the product never formed; a sum's matrix is formed. A structurally
    singular ``X`` raises ``torch.linalg.LinAlgError`` naming its structural rank.
    Differentiable through torch's solves."""
    x = as_expr(x)
    _square(x, "solve")
    Y, vector = _rhs(x, B, left)
    k = Y.shape[-1] if left else Y.shape[-2]
    batch = tuple(x.shape[:-2])
    blocks = tuple(broadcast_shapes(batch, Y.shape[:-2])) == batch  # (B adds no batch dims of its own)
    rhs = None if blocks else (*Y.shape[:-2], x.shape[-1], k)  # B's own batch dims: explain's B=
    parts = _inverse_parts(x, "solve", k, rhs)
    Yx = Y.expand(*batch, *Y.shape[-2:]) if blocks else Y

    def compute(block: Expr, key: tuple | None) -> torch.Tensor:
        if key is None:
            return _solved_segments(block, Yx, left, parts)
        return _solved_segments(block, Yx[key], left)

    Y = _lu_in_blocks(x, "solve", compute, k, blocks, rhs)
    return Y.squeeze(-1 if left else -2) if vector else Y


def _solved_segments(x: Expr, Y: torch.Tensor, left: bool,
                     parts: tuple[Any, list] | None = None) -> torch.Tensor:
    """``X^-1 Y`` (``Y X^-1`` when not ``left``) for a structurally nonsingular ``x`` (or a block
    of its batch), one LU solve per square segment, in ``x``'s dtype; ``parts``: its square parts
    where the caller has them (the whole batch)."""
    c, segments = parts or _square_parts(x, "solve", Y.shape[-1] if left else Y.shape[-2])
    wd = _work_dtype(x.dtype)
    Y = Y if Y.dtype == wd else Y.to(wd)
    for i, seg in (enumerate(segments) if left else reversed(list(enumerate(segments)))):
        S = _segment(seg, wd)
        # Y is (..., n, k) (or (..., k, n)): one dim fewer than S, torch would read it as a batch
        # of vectors where its shape is S's batch and n (an (n, 1) Y of a (1, n, n) segment)
        Y = Y.unsqueeze(0) if Y.ndim == S.ndim - 1 else Y
        Y = _solved("solve", i, len(segments), torch.linalg.solve, S, Y, left=left)
    return _times_coefficient(Y, c, inverse=True).to(x.dtype)


_DRIVERS = ("gels", "gelsy", "gelsd", "gelss")


def _lstsq_bytes(x: Expr, Bm: Any, driver: str, qr: bool = False) -> int:
    """Bytes :func:`lstsq` holds at once after its spectrum: the spectrum with its zeroed values
    and mask (as :func:`_pinv_bytes`), ``B`` in the work dtype, ``U^H B`` and its quotient by
    ``S``, the solution ``(..., n, k)`` and its cast, and the residuals' steps. ``qr``: gelsy on
    its core (:func:`_pivoted_qr_solution`) in place of the quotient: ``C`` (``r x n``; on the
    formed route, :func:`_qr_core`, ``R`` beside ``R^-1`` and the identity, and ``Q^H B`` at
    ``B``'s height), the pivoting's
    float64 host copy of ``C`` with its update's temporary (and the cast before it), then ``C``
    in pivot order (per member of the answer's batch) beside ``Q_k^H C``, LAPACK's copy of it
    and the QR's ``Q`` (``n x k``, ``k <= r``); ``U^H B`` and ``Q_k^H U^H B``, the solution
    before and after its columns are put back, and the pivots and other index vectors."""
    m, n, cols = x.shape[-2], x.shape[-1], Bm.shape[-1]
    b = math.prod(broadcast_shapes(x.shape[:-2], Bm.shape[:-2]))
    own = math.prod(x.shape[:-2])
    wd = _work_dtype(x.dtype)
    k = min(m, n) if dense_is_cheaper(x, "svd") else min(m, n, _inner_width(x))
    spectrum = _result_bytes(x, "svd") + own * k * (_real(wd).itemsize + 1)
    b_cast = b * m * cols * wd.itemsize if isinstance(Bm, Expr) or Bm.dtype != wd else 0
    if qr:
        r = min(m, n, _inner_width(x))
        host = 3 * own * r * n * (16 if wd.is_complex else 8)
        formed = _formed_route(x)
        inverse = 2 * own * n * n * wd.itemsize if m >= n and formed else 0
        inverse += own * min(m, n) * wd.itemsize if formed else 0  # geqrf's reflector scales (tau)
        # the Hoelder bounds' temporaries (|R| or |R^-1|, its row and column sums, their maxima)
        inverse += own * (n * n + 2 * n + 4) * _real(wd).itemsize if m >= n and formed else 0
        # ?ormqr's Q^H B is as tall as B (m x k) before its first min(m, n) rows are kept
        inverse += b * m * cols * wd.itemsize if formed else 0
        indices = 4 * (own + b) * (n + 1) * 8  # the pivots, their inverse, the norms, members' ranks
        solved = (4 * b * r * n + b * r * r + 3 * b * r * cols + 2 * b * n * cols) * wd.itemsize + indices
        solved += host + inverse
    else:
        solved = 2 * b * k * cols * wd.itemsize + b * n * cols * wd.itemsize
    cast = b * n * cols * x.dtype.itemsize if wd != x.dtype else 0
    # X Y, then X Y - B beside it, then its columns' norms, their squares and cast
    residuals = (2 * b * m * cols + 3 * b * cols) * x.dtype.itemsize if m > n and driver != "gelsy" else 0
    return spectrum + b_cast + solved + cast + residuals


def _lstsq_rule(driver: str, rcond: float | None, eps: float) -> tuple[float | None, float | None, bool]:
    """``(rtol, atol, full)``: how ``driver`` turns ``rcond`` into the rank torch reports, as the
    LAPACK routine behind it does (``eps`` the work dtype's; LAPACK's is half of it), read off the
    singular values ``S`` (each member's largest ``S_1``). A value counts when it is above
    ``max(rtol * S_1, atol)`` (and above the core's rounding floor); ``full``: the rank is
    ``min(m, n)`` for a nonzero member instead of a count.

    - gels is not rank-revealing and ignores ``rcond``: torch's default rule (lazymat's solution
      stays the minimum-norm one).
    - gelsd (``?lalsd``): ``rcond`` outside ``(0, 1)`` is LAPACK's eps; NaN compares false, so
      every value counts.
    - gelss: ``max(rcond * S_1, sfmin)``; a negative ``rcond`` is LAPACK's eps; NaN gives sfmin
      (``max`` drops it); ``rcond >= 1`` counts none.
    - gelsy with ``rcond <= 0`` accepts every column of its pivoted QR (its condition test
      ``smax * rcond <= smin`` always holds): every nonzero value, rank ``min(m, n)``. Any other
      ``rcond`` is read by its own pivoted QR of the core (:func:`_pivoted_qr_solution`)."""
    if rcond is None or driver == "gels":
        return None, None, False
    lapack_eps = eps / 2
    if driver == "gelsd":
        if math.isnan(rcond):
            return 0.0, None, True
        return (rcond if 0 < rcond < 1 else lapack_eps), None, False
    if driver == "gelss":
        sfmin = torch.finfo(torch.float32 if eps > 1e-10 else torch.float64).tiny
        return (0.0 if math.isnan(rcond) else lapack_eps if rcond < 0 else rcond), sfmin, False
    return 0.0, None, True  # gelsy, rcond <= 0


def _condition_step(x: np.ndarray, sest: np.ndarray, w: np.ndarray,
                    gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of incremental condition estimation (LAPACK's ``?laic1``, from its definition),
    for every member at once, the smallest and the largest value together: ``x (N, 2, k)``
    unit with ``||L x|| = sest (N, 2)`` for a lower-triangular ``L = R11^H``; bordering ``L``
    with the row ``(w^H, conj(gamma))`` (``w (N, k)`` a column of ``R`` above its diagonal entry
    ``gamma (N,)``), the smallest (``[:, 0]``) and largest (``[:, 1]``) value of
    ``||L' [s x; c]||`` over unit ``(s, c)`` are the extreme singular values of
    ``[[sest, 0], [w^H x, conj(gamma)]]``: ``(value, s, c)``, each ``(N, 2)``, from its Gram
    matrix's eigenvector (the smallest value as ``sest |gamma| / largest``, no cancellation).
    ``O(k)`` per member."""
    alpha = (x @ w.conj()[:, :, None])[..., 0]
    g = abs(gamma)
    a, d = sest * sest + abs(alpha) ** 2, (g * g)[:, None]
    b = alpha.conj() * gamma.conj()[:, None]
    top = np.sqrt((a + d) / 2 + np.hypot((a - d) / 2, abs(b)))
    value = top.copy()
    positive = top[:, 0] > 0
    value[:, 0] = np.where(positive, sest[:, 0] * g / np.where(positive, top[:, 0], 1.0), 0.0)
    lam = value * value
    # the eigenvector (b, lam - a) or (lam - d, conj(b)): the longer (both hold |b|^2)
    first = abs(lam - a) >= abs(lam - d)
    s, c = np.where(first, b, lam - d), np.where(first, lam - a, b.conj())
    norm = np.hypot(abs(s), abs(c))
    unit = np.where(norm > 0, norm, 1.0)
    return value, np.where(norm > 0, s / unit, 1.0), np.where(norm > 0, c / unit, 0.0)


def _gelsy_pivots(C: torch.Tensor, rcond: float) -> tuple[torch.Tensor, list[int]]:
    """``(order (N, n), ranks)``: LAPACK's gelsy on each member of ``C (N, w, n)`` up to its
    rank: the column-pivoted Householder QR of ``?geqp3`` (``?laqp2``: the first column of
    largest partial norm swapped into place, the norms downdated and recomputed where
    cancellation would spoil them), interleaved with the incremental condition estimate of the
    leading block ``R11`` (:func:`_condition_step`). A member stops at the first column whose
    estimate breaks ``smax * rcond <= smin`` (never kept for a NaN ``rcond``; rank 0 when
    ``R[0, 0]`` is 0): its ``R11`` and ``R12`` are final there, the columns after its rank
    only permute ``R12``'s and the minimum-norm answer's entries, so the pivoting stops.

    Run on a float64 (complex128) numpy copy on the host: each step is ``O(w n)`` work in a few
    dozen small array operations, a microsecond or two each in numpy against several for a
    torch call (the step's one large operation, the trailing block's rank-1 update, is torch's
    in place on the same memory: faster than numpy's broadcast product). A member that stops
    is dropped from the arrays. ``O(k w n)`` for rank ``k``; no gradient (the order and rank
    are held)."""
    N, w, n = C.shape
    complex_ = C.is_complex()
    A = C.detach().to("cpu", torch.complex128 if complex_ else torch.float64).numpy().copy()
    order = np.broadcast_to(np.arange(n), (N, n)).copy()
    ranks = np.zeros(N, dtype=np.int64)
    live = np.arange(N)  # the members still pivoting (rows of A, norms, order's rows ``live``)
    vn1 = np.linalg.norm(A, axis=1)
    vn2 = vn1.copy()
    tol3z = math.sqrt(np.finfo(np.float64).eps / 2)
    steps = min(w, n)
    x = np.zeros((N, 2, steps), dtype=A.dtype)  # the smallest value's vector, the largest's
    sest = None
    rows = np.arange(N)
    for j in range(steps):
        # the pivot: the first column of largest partial norm, swapped into place
        p = j + vn1[:, j:].argmax(-1)
        if (p != j).any():
            rows = rows[:len(p)]
            A[rows, :, j], A[rows, :, p] = A[rows, :, p], A[rows, :, j].copy()
            order[live, j], order[live, p] = order[live, p], order[live, j]
            vn1[rows, p], vn2[rows, p] = vn1[rows, j], vn2[rows, j]
        # Householder reflector H = I - tau v v^H of column j below row j (LAPACK's ?larfg)
        v = A[:, j:, j].copy()
        alpha = v[:, 0].copy()
        xnorm = np.linalg.norm(v[:, 1:], axis=-1)
        still = (xnorm == 0) & (alpha.imag == 0)  # H = I
        beta = np.where(still, alpha.real, -np.copysign(np.hypot(abs(alpha), xnorm), alpha.real))
        tau = np.where(still, 0, (beta - alpha) / np.where(still, 1, beta))
        v[:, 0] = 1
        v[:, 1:] /= np.where(still, 1, alpha - beta)[:, None]
        A[:, j, j] = beta
        if j + 1 < n:  # H^H applied to the trailing columns, their partial norms downdated
            T = A[:, j:, j + 1:]
            left = torch.from_numpy(tau.conj()[:, None] * v)
            right = torch.from_numpy(v.conj()[:, None, :] @ T)
            if len(T) == 1:  # (torch's rank-1 update in place: several times numpy's broadcast product)
                torch.from_numpy(T[0]).addr_(left[0], right[0, 0], alpha=-1)
            else:
                torch.from_numpy(T).sub_(left[:, :, None] * right)
            vn, ref = vn1[:, j + 1:], vn2[:, j + 1:]
            nonzero = vn != 0
            temp = np.maximum(1 - (abs(A[:, j, j + 1:]) / np.where(nonzero, vn, 1)) ** 2, 0)
            redo = nonzero & (temp * (vn / np.where(nonzero, ref, 1)) ** 2 <= tol3z)
            vn *= np.sqrt(temp)
            if redo.any():
                fresh = np.linalg.norm(A[:, j + 1:, j + 1:], axis=1)
                vn[redo], ref[redo] = fresh[redo], fresh[redo]
        # the condition estimate of R11 bordered by column j: smin and smax together
        if j == 0:
            sest = np.repeat(abs(beta)[:, None], 2, axis=1)
            x[:, :, 0] = 1
            keep = sest[:, 1] > 0
        else:
            sest, s, c = _condition_step(x[:, :, :j], sest, A[:, :j, j], A[:, j, j])
            keep = sest[:, 1] * rcond <= sest[:, 0]
            x[:, :, :j] *= s[:, :, None]
            x[:, :, j] = c
        ranks[live[keep]] = j + 1
        if not keep.all():  # members whose estimate broke stop here
            live, A, vn1, vn2, x, sest = (t[keep] for t in (live, A, vn1, vn2, x, sest))
            if not len(live):
                break
    return torch.from_numpy(order).to(C.device), ranks.tolist()


def _truncated_solution(Cp: torch.Tensor, UhB: torch.Tensor, k: int, triangular: bool) -> torch.Tensor:
    """gelsy's answer at rank ``k`` for columns already in pivot order, ``Cp (N, w, n)`` and
    ``U^H B (N, w, c)``: the minimum-norm ``y`` of ``[R11 R12] y = (Q^H U^H B)_k``, i.e. of
    ``Q_k^H Cp y = Q_k^H U^H B`` with ``Q_k`` an orthonormal basis of the first ``k`` columns
    (a QR of that well-conditioned block), solved by a QR of the ``n x k`` ``(Q_k^H Cp)^H``;
    at ``k = w = n`` the unique ``Cp^-1 U^H B`` (one LU, or a triangular solve where ``Cp`` is
    upper-triangular: ``triangular``). Differentiable."""
    if k == 0:
        return UhB.new_zeros(Cp.shape[0], Cp.shape[-1], UhB.shape[-1])
    if k == Cp.shape[-2] == Cp.shape[-1]:
        return (torch.linalg.solve_triangular(Cp, UhB, upper=True) if triangular
                else torch.linalg.solve(Cp, UhB))
    Qk = torch.linalg.qr(Cp[..., :k]).Q
    Q3, T3 = torch.linalg.qr((Qk.mH @ Cp).mH)
    return Q3 @ torch.linalg.solve_triangular(T3.mH, Qk.mH @ UhB, upper=False)


class _Core(NamedTuple):
    """``X = U C`` with ``U (..., m, w)`` orthonormal columns: ``X``'s column-pivoted QR is ``U``
    times ``C``'s (the same ``R`` and pivots in exact arithmetic), so gelsy's rank and truncated
    answer for ``X`` and ``B`` are those of ``C (..., w, n)`` and ``UhB = U^H B``. ``low``,
    ``high`` (``(...)``, or both None where ``C`` is not square or is empty): bounds
    ``sigma_min(C) >= low`` and ``sigma_max(C) <= high``, which may certify rank ``n``
    (:func:`_full_rank_certified`);
    ``triangular``: ``C`` is upper-triangular."""

    UhB: torch.Tensor
    C: torch.Tensor
    low: torch.Tensor | None
    high: torch.Tensor | None
    triangular: bool


def _projected(U: torch.Tensor, Bm: Any, wd: torch.dtype) -> torch.Tensor:
    """``U^H B`` in the work dtype (``B`` a tensor or a lazy expression, read as a product)."""
    if isinstance(Bm, Expr):
        return lazy_matmul(lazy(U.mH), Bm.to(wd)).to_dense()
    return U.mH @ (Bm if Bm.dtype == wd else Bm.to(wd))


def _svd_core(x: Expr, sp: Any, grad: bool, Bm: Any, wd: torch.dtype) -> _Core:
    """``C = S Vh`` (``r x n``, values at or below the core's rounding floor zero) off the thin
    SVD of the low-rank core, the factored route (``X`` never formed): its values bound it."""
    U, S, Vh = _leading(x, sp, _kept(x, sp, 0.0, 0.0), grad=grad)
    bounded = S.shape[-1] == x.shape[-1] > 0  # (a square core)
    return _Core(_projected(U, Bm, wd), S.to(Vh.dtype)[..., :, None] * Vh,
                 S[..., -1].detach() if bounded else None, S[..., 0].detach() if bounded else None, False)


def _qr_core(x: Expr, D: torch.Tensor, Bm: Any, wd: torch.dtype) -> _Core:
    """``C = R`` off the Householder QR ``D = Q R`` of the formed ``X`` (the dense route: several
    times cheaper than its SVD), ``Q`` left implicit (``?geqrf``, ``Q^H B`` by ``?ormqr``) unless
    derivatives flow or ``B`` adds batch dims. For ``m >= n`` the bounds are Hoelder's,
    ``||A||_2 <= sqrt(||A||_1 ||A||_inf)``, on ``R`` and on ``R^-1`` (one triangular solve,
    ``n^3``): within ``sqrt(n)`` of ``sigma``, so a well-conditioned ``X`` is certified; a
    singular ``R`` gives inf or NaN, which certifies nothing."""
    m, n = D.shape[-2:]
    D = D if D.dtype == wd else D.to(wd)
    B = Bm.to_dense() if isinstance(Bm, Expr) else Bm
    B = B if B.dtype == wd else B.to(wd)
    if _needs_grad(x) or B.requires_grad or B.shape[:-2] != D.shape[:-2]:
        Q, R = torch.linalg.qr(D)
        UhB = Q.mH @ B
    else:
        H, tau = torch.geqrf(D)
        R = H[..., :min(m, n), :].triu()
        UhB = torch.ormqr(H, tau, B, left=True, transpose=True)[..., :min(m, n), :]
    if m < n or n == 0:
        return _Core(UhB, R, None, None, True)
    eye = torch.eye(n, dtype=R.dtype, device=R.device)
    low = 1 / _hoelder(torch.linalg.solve_triangular(R.detach(), eye, upper=True))
    return _Core(UhB, R, low, _hoelder(R.detach()), True)


def _hoelder(A: torch.Tensor) -> torch.Tensor:
    """``sqrt(||A||_1 ||A||_inf) >= ||A||_2`` for each member of ``A (..., a, b)``."""
    a = A.abs()
    return (a.sum(-2).amax(-1) * a.sum(-1).amax(-1)).sqrt()


def _full_rank_certified(core: _Core, rcond: float, slack: float) -> torch.Tensor:
    """Mask over ``core``'s members whose gelsy rank is ``n`` without pivoting: every leading
    block ``R11`` of any column-pivoted QR of a square ``C`` has ``smax <= sigma_max(C)`` and
    ``smin >= sigma_min(C)`` (its inverse is a block of ``R^-1``), and the condition estimates
    lie inside (``smax`` from below, ``smin`` from above), so ``smax * rcond <= smin`` holds at
    every step where ``low > 2 rcond high + slack high``: the factor 2 and ``slack`` (LAPACK's
    rounding on the dense ``X``) keep the decision clear of the cut. False for a NaN, infinite
    or ``>= 1/2`` ``rcond``, and where ``C`` is not square (a wide ``R11`` has no such bound)."""
    if core.low is None:
        return torch.zeros(core.C.shape[:-2], dtype=torch.bool, device=core.C.device)
    return core.low > (2 * rcond + slack) * core.high


def _formed_route(x: Expr) -> bool:
    """Whether gelsy runs on the formed ``X`` (:func:`_qr_core`): where the SVD route would form
    it too (:func:`dense_is_cheaper`, and no small reduction of one side applies) and ``X`` has
    full structural rank. A structurally deficient ``X`` keeps ``S Vh``, whose values below the
    formed matrix's rounding floor are exact zeros (:func:`structural_rank`): its formed ``R``
    holds that rounding, which gelsy may count at a small ``rcond`` (16-bit inputs: any)."""
    return (structural_rank(x) == min(x.shape[-2:]) and dense_is_cheaper(x, "svd")
            and small_reduction(x, "svd") is None)


def _pivoted_qr_solution(x: Expr, core: _Core, rcond: float | None,
                         wd: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(solution, rank)`` of LAPACK's gelsy on ``X = U C`` (:class:`_Core`) and ``B``, run
    here, not through ``torch.linalg.lstsq``, whose gelsy reads its pivot array uninitialised
    (pytorch/pytorch#187411: columns marked fixed by stale memory, its rank changing from call
    to call): a member whose bounds certify rank ``n`` (:func:`_full_rank_certified`) skips the
    pivoting, the others are pivoted up to their rank (:func:`_gelsy_pivots`, ``O(k w n)`` on
    the host for rank ``k``), then each group of one rank is solved in a batch
    (:func:`_truncated_solution`). ``rcond`` None is torch's default for ``X``'s shape,
    ``eps * max(m, n)``, not ``C``'s. Differentiable (not through the rank and pivots). A
    member with an inf or NaN entry is answered NaN, rank 0."""
    m, n = x.shape[-2:]
    C, UhB = core.C, core.UhB
    bad_x, bad_b = _nonfinite_members(C), _nonfinite_members(UhB)
    C, UhB = _zero_members(C, bad_x), _zero_members(UhB, bad_b)
    rcond = _eps(wd) * max(m, n) if rcond is None else rcond
    own, w, cols_b = tuple(x.shape[:-2]), C.shape[-2], UhB.shape[-1]
    answers = tuple(broadcast_shapes(own, UhB.shape[:-2]))
    bad = None if bad_x is None and bad_b is None else torch.zeros(answers, dtype=torch.bool, device=C.device)
    for mask in (bad_x, bad_b):
        bad = bad if mask is None else bad | mask
    if not math.prod(answers):
        return UhB.new_zeros(*answers, n, cols_b), torch.zeros(own, dtype=torch.int64, device=x.device)
    Cf = C.reshape(math.prod(own), w, n)
    certified = _full_rank_certified(core, rcond, 16 * max(m, n) * _eps(wd)).reshape(-1).tolist()
    order = torch.arange(n, device=Cf.device).expand(len(Cf), n).clone()
    ranks = [n if sure else 0 for sure in certified]
    pivoted = [i for i, sure in enumerate(certified) if not sure]
    if pivoted:
        order[pivoted], found = _gelsy_pivots(Cf[pivoted], rcond)
        for i, k in zip(pivoted, found, strict=True):
            ranks[i] = k
    identity = not pivoted
    Cp = Cf if identity else Cf.gather(-1, order[:, None, :].expand_as(Cf))
    del C, Cf
    member = torch.arange(len(ranks), device=Cp.device).reshape(own).expand(answers).reshape(-1)
    Bf = UhB.expand(*answers, w, cols_b).reshape(math.prod(answers), w, cols_b)
    by_rank = torch.tensor(ranks, dtype=torch.int64)[member.cpu()]
    parts, where = [], []
    for k in sorted(set(by_rank.tolist())):
        sel = (by_rank == k).nonzero().reshape(-1).to(Cp.device)
        whole = len(sel) == len(member) and len(member) == Cp.shape[0]  # (one group: X's own batch)
        parts.append(_truncated_solution(Cp if whole else Cp[member[sel]], Bf if whole else Bf[sel], k,
                                         core.triangular and identity))
        where.append(sel)
    y = torch.cat(parts) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        y = y[torch.argsort(torch.cat(where))]
    if not identity:  # the answer's rows back in X's column order
        y = y.gather(-2, torch.argsort(order[member], -1)[:, :, None].expand(-1, n, cols_b))
    rank = torch.tensor(ranks, dtype=torch.int64).reshape(own).to(x.device)
    return _nan_members(y.reshape(*answers, n, cols_b), bad, 2), rank


@budgeted
def lstsq(x: Any, B: Any, rcond: float | None = None, *, driver: str | None = None):
    """``torch.linalg.lstsq``: ``(solution, residuals, rank, singular_values)`` as a
    ``torch.return_types.linalg_lstsq``, for ``X (..., m, n)`` and ``B (..., m, k)`` (or a batch
    of vectors, ``B.ndim == X.ndim - 1``, as torch), off the thin SVD ``X = U S Vh`` of the
    low-rank core (:func:`svd`'s route: the ``m x n`` matrix is never formed).

    gels, gelsd, gelss: the minimum-norm solution ``pinv(X) @ B = V S^-1 (U^H B)``
    (``O((m + n) r k)`` after the SVD), singular values at or below the driver's cut (default
    ``eps * max(m, n) * S_max``, torch's; :func:`_lstsq_rule`: LAPACK's edges at ``rcond <= 0``,
    ``>= 1`` and NaN) or the core's rounding floor counting as zero. gelsy (torch's CPU default):
    LAPACK's gelsy, run here (torch's reads its pivot array uninitialised, pytorch/pytorch#187411),
    on a core ``C`` with ``X = U C``, ``U`` orthonormal columns (:func:`_pivoted_qr_solution`):
    ``S Vh`` on the factored route, ``R`` of the formed ``X``'s QR where the SVD route would form
    it. Its rank estimate and truncated answer exactly: no pivoting where ``C``'s bounds
    certify full rank, else ``O(k r n)`` host steps to rank ``k``; at ``rcond <= 0`` (every
    column accepted) rank ``min(m, n)`` and the minimum-norm answer. Any driver on any device
    (default ``'gelsy'`` on the CPU, ``'gels'`` on CUDA), since the route is lazymat's own.
    ``rank`` for gelsy, gelsd, gelss;
    ``singular_values`` (all ``min(m, n)``, zeros past the floor) for gelsd, gelss;
    ``residuals`` ``||X Y - B||^2`` per column when ``m > n``, for gels, and for gelsd and gelss
    when every member has rank ``n``; the others are empty tensors. ``B`` has as many dims as
    ``X`` or one fewer, as torch. 16-bit inputs run in float32 (torch refuses them on the CPU).
    Differentiable (as :func:`pinv`; gelsy's answer with its rank and pivots held)."""
    x = as_expr(x)
    driver = ("gelsy" if x.device.type == "cpu" else "gels") if driver is None else driver
    if driver not in _DRIVERS:
        raise ValueError(f"lstsq: driver must be one of {', '.join(_DRIVERS)} (as torch), got {driver!r}")
    if not (rcond is None or isinstance(rcond, numbers.Real)
            or isinstance(rcond, torch.Tensor) and rcond.ndim == 0
            and not (rcond.is_complex() or rcond.dtype == torch.bool)):
        shape = f" of shape {tuple(rcond.shape)}" if isinstance(rcond, torch.Tensor) else ""
        raise TypeError(f"lstsq: rcond must be a real number or None (as torch), got {type(rcond).__name__}"
                        f"{shape} {rcond!r}")
    if not isinstance(B, (torch.Tensor, Expr)):
        raise TypeError(f"lstsq: B must be a tensor or a lazy expression, got {type(B).__name__}")
    if B.ndim not in (x.ndim, x.ndim - 1):  # torch's rule: B's batch dims broadcast with X's, none more
        raise ValueError(f"lstsq: B must have as many dims as X or one fewer (a batch of vectors), as torch; "
                         f"got X {tuple(x.shape)} and B {tuple(B.shape)}")
    vector = B.ndim == x.ndim - 1
    m, n = x.shape[-2:]
    if B.dtype != x.dtype:
        raise TypeError(f"lstsq: X and B must have the same dtype (as torch), got {x.dtype} "
                        f"{tuple(x.shape)} and {B.dtype} {tuple(B.shape)}")
    if B.device != x.device:
        raise ValueError(f"lstsq: X and B must be on the same device (as torch), got {x.device} "
                         f"{tuple(x.shape)} and {B.device} {tuple(B.shape)}; move one with .to(device)")
    if vector and isinstance(B, Expr):  # a batch of vectors has the answer's size
        B = B.to_dense()
    Bm = B.unsqueeze(-1) if vector else B
    if Bm.ndim < 2 or Bm.shape[-2] != m:
        raise ValueError(f"lstsq: incompatible shapes X {tuple(x.shape)} and B {tuple(B.shape)} "
                         f"(B needs {m} rows)")
    wd = _work_dtype(x.dtype)
    rc = None if rcond is None else float(rcond)
    qr = driver == "gelsy" and not (rc is not None and rc <= 0)  # gelsy's own pivoted QR of the core
    rtol, atol, full = _lstsq_rule(driver, rc, _eps(wd))
    _after_spectrum_fits(x, lambda: _lstsq_bytes(x, Bm, driver, qr), "lstsq",
                         "the spectrum beside U^H B and the solution")
    if qr and _formed_route(x):  # gelsy on the formed X's R
        solution, ranks = _pivoted_qr_solution(x, _qr_core(x, _formed(x), Bm, wd), rc, wd)
    elif qr:  # gelsy on the factored route's S Vh
        sp, grad = _call_spectrum(x, values_only=False)
        solution, ranks = _pivoted_qr_solution(x, _svd_core(x, sp, grad, Bm, wd), rc, wd)
    else:
        sp, grad = _call_spectrum(x, values_only=False)
        kept = _kept(x, sp, atol, rtol)
        U, S, Vh = _leading(x, sp, kept, grad=grad, fill=math.inf)  # 1 / inf = 0 past a member's rank
        Uh = U.mH
        UhB = (lazy_matmul(lazy(Uh), Bm.to(wd)).to_dense() if isinstance(Bm, Expr)
               else Uh @ (Bm if Bm.dtype == wd else Bm.to(wd)))
        solution = Vh.mH @ (UhB / S.to(UhB.dtype)[..., :, None])
        del U, Uh, UhB  # (freed before the residuals, as _lstsq_bytes and explain count them)
        k, keep = kept
        ranks = (None if driver == "gels"  # (gels reports no rank: none is made)
                 else torch.full(x.shape[:-2], k, dtype=torch.int64, device=x.device) if keep is None
                 else keep[..., :k].sum(-1))
        if full and ranks is not None:  # every value counts but a zero matrix's
            ranks = torch.where(ranks > 0, min(m, n), ranks)
    solution = solution.to(x.dtype)
    real = _real(x.dtype)
    empty = torch.empty(0, dtype=real, device=x.device)
    rank = torch.empty(0, dtype=torch.int64, device=x.device) if driver == "gels" else ranks
    values = empty
    if driver in ("gelsd", "gelss"):
        above = _leading(x, sp, _kept(x, sp, 0.0, 0.0), True, grad)[1]
        values = _pad(above, min(m, n)).to(real)
    residuals = empty
    if m > n and driver != "gelsy" and (driver == "gels" or bool((ranks == n).all())):
        dense_B = Bm.to_dense() if isinstance(Bm, Expr) else Bm
        fitted = lazy_matmul(x, solution)
        fitted = fitted.to_dense() if isinstance(fitted, Expr) else fitted
        difference = fitted - dense_B
        del fitted  # (two m x k arrays at most: the fit beside its difference with B, then that
        # beside its squares; a real difference's abs is itself)
        residuals = (difference.abs() if difference.is_complex() else difference).square().sum(-2).to(real)
    return torch.return_types.linalg_lstsq((solution.squeeze(-1) if vector else solution, residuals, rank,
                                            values))
