"""The batch in blocks: a heavy step whose peak passes the memory budget runs on blocks of the
batch dims, concatenated (``_in_blocks``); the bytes that the answer and kept QRs hold beside
a block count against it."""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from .. import progress, settings
from ..core import block_reductions, outer_reductions, qr_flops, qr_is_cached, qr_key, qrs_assumed
from ..execute import device_budget
from ..expr import Expr
from ..settings import BudgetTooSmall, blas_workspace, format_bytes
from ._common import _complex, _inner_width, _real, _Spectrum, _work_dtype, eig_core
from .peaks import _fits, _peak, _peak_bound, _route_costs
from .small import dense_is_cheaper, small_reduction

# Every public function takes ``memory_budget=`` (bytes or "8GiB"); it is the active budget
# (``lazymat.settings.memory_budget``) for the call. The heavy steps (the decomposition behind
# the spectral answers, the closed networks of traces and diagonals, the Frobenius norm's
# Gram routes) run through :func:`_in_blocks`: the route's peak is predicted by ``explain``
# and, when over the budget, the step runs on blocks of the batch dims, concatenated.

# Rough throughput for the progress bar's time estimate (FLOP/s); only decides whether a bar
# is worth showing (work over two seconds).
_THROUGHPUT = {"cuda": 2e13, "cpu": 5e10}


def _in_blocks(x: Expr, op: str, compute: Callable[[Expr, tuple | None], Any],
               before_blocks: Callable[[Expr], None] | None = None,
               costs: Callable[[tuple], tuple[int, int]] | None = None, result: int | None = None) -> Any:
    """``compute(x, None)``, run as ``compute(x[key], key)`` on blocks of ``x``'s batch dims when
    the predicted peak of ``op`` exceeds the active budget. ``compute`` returns a tensor, or a
    tuple of tensors (or None), each with ``x``'s batch dims leading; the blocks' results are
    written into one result, identical to the unsliced one; ``before_blocks(first block)`` runs
    first (work the blocks share). Raises :class:`~lazymat.settings.BudgetTooSmall` when one
    batch member does not fit. A step that :func:`lazymat.explain` has no route for gives its
    ``costs(block shape) -> (peak bytes, FLOPs)`` instead, and runs one member a block where
    none fits (the budget was checked by the steps before it), and ``result``, the bytes of the
    batch's result where :func:`_result_bytes` does not know them.

    Each block's result is written into the batch's result as soon as it is computed and then
    dropped, so a block runs beside the whole result (:func:`_block_keys` counts it), never
    beside every block's result and their assembly too."""
    batch = tuple(x.shape[:-2])
    fits, budget = _fits(x, _peak_bound(x, op) if costs is None else costs(batch)[0])
    if fits or costs is None and _peak(x, op) <= budget:
        return compute(x, None)
    keys = _block_keys(x, op, budget, costs, result)
    seconds = (_route_costs(x, op) if costs is None else costs(batch))[1] / _THROUGHPUT.get(
        x.device.type, _THROUGHPUT["cpu"])
    if before_blocks is not None:
        before_blocks(x[keys[0]])
    out = None
    for key in progress.blocks(keys, total=len(keys), desc=f"lazymat {op}", estimate_seconds=seconds):
        out = _written(out, batch, key, compute(x[key], key))
    return out


def batch_blocks(x: Expr, op: str) -> tuple[list[tuple], int, int] | None:
    """How :func:`_in_blocks` runs ``op`` on ``x`` under the active budget: the blocks' index
    keys, the run's peak (a full block's beside the batch's result, as :func:`_block_keys`
    checks it) and its FLOPs (a full block's, times the blocks), or None when it runs whole;
    the schedule :func:`lazymat.explain` reports. (A last, smaller block's FLOPs are not weighed:
    alone it may take another route, one that would not share the leaves' QRs the run shares;
    its peak is, :func:`_cut_shapes`.)"""
    fits, budget = _fits(x, _peak_bound(x, op))
    if fits or _peak(x, op) <= budget:
        return None
    keys = _block_keys(x, op, budget)
    block = [k.stop - k.start for k in keys[0]]
    vectors = op == "svd"
    shared = _shared_qr_flops(x, op)  # run once, before the blocks: each block reads them
    before = block_reductions(x, vectors) if shared else ()

    def route(shape: tuple) -> tuple[int, int]:
        with qrs_assumed(before, vectors):
            return _route_costs(x[tuple(slice(0, c) for c in shape)], op)

    peak = max(route(cut)[0] for cut in _cut_shapes(x.shape[:-2], block))
    return keys, peak + _beside_blocks(x, op), route(tuple(block))[1] * len(keys) + shared


def _block_keys(x: Expr, op: str, budget: int, route: Callable[[tuple], tuple[int, int]] | None = None,
                result: int | None = None) -> list[tuple]:
    """Index keys of equal blocks over the batch dims whose predicted peak is within
    ``budget``. Starting from the whole batch, a block dim is halved at a time: the one whose
    halving adds the least work in total (blocks x FLOPs of a block) among those that lower
    the peak, so that work shared across one dim (all-pairs composition: each head's side)
    is not repeated for every block of another; then each dim grows back while it fits. The
    peaks are those of ``op``'s route (:func:`_route_costs`), or of ``route(block shape)``
    (:func:`_in_blocks`' ``costs``: blocks of one member where none fits), beside ``result``
    bytes (the batch's result; by default :func:`_beside_blocks`)."""
    batch = tuple(x.shape[:-2])
    block = list(batch)
    whole = _beside_blocks(x, op) if result is None else result
    own = route is not None  # a step's own costs: one member a block where none fits
    if route is None:
        def route(shape: tuple) -> tuple[int, int]:
            return _route_costs(x[tuple(slice(0, c) for c in shape)], op)

    def costs(shape: list[int]) -> tuple[int, int]:  # the largest block's peak beside the result
        peak = max(route(cut)[0] for cut in _cut_shapes(batch, shape))  # (a full block's FLOPs)
        return peak + whole, route(tuple(shape))[1]

    def count(shape: list[int]) -> int:
        return math.prod(-(-size // c) for size, c in zip(batch, shape, strict=True))

    peak = route(batch)[0]  # the whole batch in one block
    while peak > budget:
        options = []
        for d, c in enumerate(block):
            if c > 1:
                trial = [*block[:d], (c + 1) // 2, *block[d + 1:]]
                p, f = costs(trial)
                options.append((p >= peak, count(trial) * f, p, trial))
        if not options and own:
            break
        if not options:
            dtype = str(x.dtype).replace("torch.", "")
            one = x[tuple(slice(0, 1) for _ in batch)]
            if math.prod(batch) > 1:  # blocks of one, beside the batch's result; or the batch whole
                least = min(_least_budget(one, op, budget, peak, whole),
                            _least_budget(x, op, budget, _route_costs(x, op)[0]))
            else:
                least = _least_budget(one, op, budget, peak)
            held = f" beside the batch's {format_bytes(whole)} result" if batch and whole else ""
            raise BudgetTooSmall(f"{op} of a {tuple(x.shape)} {dtype} expression",
                                 f"one matrix of the batch{held}" if batch else "its least demanding route",
                                 budget, least, x.device)
        _, _, peak, block = min(options, key=lambda o: o[:3])
    for d, size in enumerate(batch):  # then grow each dim back while the block still fits
        while block[d] < size:
            trial = [*block[:d], -(-size // (-(-size // block[d]) - 1)), *block[d + 1:]]
            if costs(trial)[0] > budget:
                break
            block = trial
    starts = [range(0, size, c) for size, c in zip(batch, block, strict=True)]
    return [tuple(slice(a, min(a + c, size)) for a, c, size in zip(at, block, batch, strict=True))
            for at in itertools.product(*starts)]



def _cut_shapes(batch: tuple, block: list[int] | tuple) -> list[tuple]:
    """The shapes of the blocks ``block`` cuts ``batch`` into: a dim's last block may be smaller,
    and alone it may take another route with a larger peak (one member's dense SVD, 648 B, where
    two members' factored one held 608 B)."""
    dims = [sorted({c, size % c} - {0}) for size, c in zip(batch, block, strict=True)]
    return list(itertools.product(*dims))


def _least_budget(x: Expr, op: str, refused: int, peak: int, beside: int = 0) -> int:
    """The least budget (bytes, less the BLAS reserve) above ``refused`` under which ``op`` on
    ``x`` fits whole beside ``beside`` bytes (the rest of a batch's result), by the same test
    the run makes (its route's peak at that budget within it); ``peak`` is the route's peak
    under ``refused``. Found by bisection: the route, and so its peak, changes with the budget
    (a cheaper route, a network sliced finer), so the peak seen under ``refused`` is only an
    upper bound to start from."""
    reserve = blas_workspace(x.device)

    def fits_in(budget: int) -> bool:
        with settings.scoped(memory_budget=budget + reserve):
            return _route_costs(x, op)[0] + beside <= budget

    lo, hi = refused, max(peak + beside, refused + 1)
    while not fits_in(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_in(mid) else (mid, hi)
    return hi


def _written(out: Any, batch: tuple, key: tuple, result: Any) -> Any:
    """The batch's result ``out`` (None before the first block: made from its result) with a
    block's ``result`` written at ``key``: tensors, or tuples of tensors, None or a number, with
    the batch dims leading; a number is one the blocks share (a floor of 0, :func:`_sum_floor`)."""
    if isinstance(result, torch.Tensor):
        if out is None:
            out = result.new_empty((*batch, *result.shape[len(batch):]))
        out[key] = result
        return out
    if not isinstance(result, tuple):
        if out is not None and out != result:
            raise AssertionError(f"blocks of one call disagree on a shared number: {out}, {result}")
        return result
    parts = [None if p is None else _written(None if out is None else out[i], batch, key, p)
             for i, p in enumerate(result)]
    return type(result)(*parts) if isinstance(result, _Spectrum) else type(result)(parts)


def _result_bytes(x: Expr, op: str) -> int:
    """Bytes of what ``op``'s route returns for ``x`` (:func:`_in_blocks`' ``compute``): the
    Frobenius norm's squares, or the spectrum's values and rounding floor (``k + 1`` numbers a
    member, ``k`` the values the route's SVD gives: ``min(m, n)`` on the dense route, else at
    most the inner width; a reduced small matrix's, :func:`small_reduction`, too) and for ``"svd"``
    its ``(m + n) k`` vectors."""
    b, m, n = math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1]
    wd = _work_dtype(x.dtype)
    real = _real(wd).itemsize
    if op in ("matrix_norm", "hermitian check"):
        return b * real
    if op in ("eigvals core", "eigvals core full", "eig core"):  # a core's eigenvalues (and vectors), complex
        r = eig_core(x[tuple(0 for _ in x.shape[:-2])] if x.shape[:-2] else x).shape[-1]
        c = _complex(wd).itemsize  # (full=True's padding: n values, their NaN-kept copy and a flag)
        if op == "eig core":
            return b * r * (r + 1) * c
        return b * ((r + 2 * n) * c + 1 if op.endswith("full") else r * c)
    dense = dense_is_cheaper(x, op) and small_reduction(x, op) is None  # (a reduced matrix has r values)
    k = min(m, n) if dense else min(m, n, _inner_width(x))
    return b * (k + 1) * real + (b * k * (m + n) * wd.itemsize if op == "svd" else 0)


def _kept_qr_bytes(x: Expr, vectors: bool = True, blocked: bool = False) -> int:
    """Bytes of the shared leaves' QRs (``R``, and ``Q`` with ``vectors``) that the factored SVD
    of ``x`` keeps on the leaves (``blocked``: those :func:`_share_outer_qrs` computes before
    its blocks, held beside every block and after them); 0 on the dense route."""
    if dense_is_cheaper(x, "svd" if vectors else "svdvals"):
        return 0
    seen, total = set(), 0
    for s in block_reductions(x, vectors) if blocked else outer_reductions(x, vectors):
        if s is not None and (id(s.view.base), qr_key(s)) not in seen:
            seen.add((id(s.view.base), qr_key(s)))
            total += s.count * ((s.rows * s.k if vectors else 0) + s.k * s.k) * s.view.base.dtype.itemsize
    return total


def _shared_qr_flops(x: Expr, op: str) -> float:
    """FLOPs of the QRs of the leaves the batch shares that the factored route of ``op``
    (``"svd"``, ``"svdvals"``; 0 for any other) on ``x`` charges (:func:`lazymat.explain`'s
    "QR of ..., once for the batch" rows; none when cached on the leaf): a blocked run computes
    them once, before its blocks (:func:`_share_outer_qrs`), not once a block."""
    if op not in ("svd", "svdvals") or dense_is_cheaper(x, op):
        return 0.0
    vectors, seen, total = op == "svd", set(), 0.0
    for s in block_reductions(x, vectors):
        if (id(s.view.base), qr_key(s)) not in seen and not qr_is_cached(s, vectors):
            seen.add((id(s.view.base), qr_key(s)))
            total += s.count * qr_flops(s.rows, s.k, vectors)
    return total


def _beside_blocks(x: Expr, op: str) -> int:
    """Bytes held beside every block of ``op`` on ``x``'s batch: the batch's result
    (:func:`_result_bytes`) and, for the spectral routes, the shared leaves' QRs
    (:func:`_kept_qr_bytes`; a block's own route, costed cold, does not hold them after use)."""
    kept = _kept_qr_bytes(x, op == "svd", blocked=True) if op in ("svd", "svdvals") else 0
    return _result_bytes(x, op) + kept


def _less_budget(device: torch.device, held: int):
    """The memory budget set less ``held`` bytes (a context), when one is set and anything is
    held (the default, a fraction of free memory, is left as it is)."""
    if not held or settings.get("memory_budget") is None:
        return contextlib.nullcontext()
    return settings.scoped(memory_budget=max(device_budget(device, None) - held, 0))


def _after_spectrum_fits(x: Expr, held: Callable[[], int], call: str, block: str) -> None:
    """Raise :class:`~lazymat.settings.BudgetTooSmall` before anything runs when ``held()``,
    the bytes ``call`` holds once ``x``'s SVD is complete, exceeds the active budget, naming the
    least budget under which the whole call runs: found by bisection, as :func:`_least_budget`
    does, since the route (and so the spectrum's width, which ``held`` reads) changes with the
    budget."""
    need = held()
    fits, budget = _fits(x, need)
    if fits or need <= budget:
        return
    reserve = blas_workspace(x.device)

    def runs_in(b: int) -> bool:  # the call's end fits, and its spectrum whole or in blocks
        with settings.scoped(memory_budget=b + reserve):
            if held() > b:
                return False
            if _peak(x, "svd") <= b:
                return True
            try:
                _block_keys(x, "svd", b)
            except BudgetTooSmall:
                return False
            return True

    lo, hi = budget, max(need, budget + 1)
    while not runs_in(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if runs_in(mid) else (mid, hi)
    dtype = str(x.dtype).replace("torch.", "")
    raise BudgetTooSmall(f"{call} of a {tuple(x.shape)} {dtype} expression", block, budget, hi, x.device)
