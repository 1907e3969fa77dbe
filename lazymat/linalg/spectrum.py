"""The spectrum of an expression: the singular triplets off its factors (a QR of each side, LAPACK
on the ``r x r`` core) or off its dense matrix, and the one rule that decides which singular
values are zero (``_tolerance``); results come back where the expression lives."""
from __future__ import annotations

import contextlib
import functools
import math
import struct
from typing import Any

import numpy
import torch
from torch.autograd import forward_ad

from .. import mkl_quiet, settings
from ..caching import caches, uncached
from ..core import block_reductions, dense_side, factor, is_identity, leaf_qr, reduced_factors
from ..cpu_batches import split_batch
from ..expr import Expr, lazy, tensor_state
from ..layout import matmul
from ..qr import certified, certified_members, takes_cholesky
from ..rewrite import canonical, term_expr
from . import _common
from ._common import (
    _data,
    _form,
    _inner_width,
    _needs_grad,
    _real,
    _reduced_svd,
    _small,
    _Spectrum,
    _svdvals,
    _to_device,
    _work_dtype,
)
from .blocks import _in_blocks
from .peaks import _fits
from .small import dense_is_cheaper, small_reduction


class NonFiniteError(torch.linalg.LinAlgError, ValueError):
    """An integer asked of a matrix with an inf or NaN entry (``matrix_rank``), which has no
    answer: the calls answering floats answer NaN for such a matrix, an integer cannot. A
    ``torch.linalg.LinAlgError``, as torch raises for a NaN entry, and a ``ValueError``."""

    @classmethod
    def of(cls, x: Expr, op: str, members: list[list[int]]) -> NonFiniteError:
        """The error for ``op`` on ``x`` whose batch ``members`` (indices; [] for one matrix)
        have non-finite input."""
        where = f" (batch members {[tuple(i) for i in members[:8]]})" if members and members[0] else ""
        dtype = str(x.dtype).replace("torch.", "")
        return cls(f"{op}: the {tuple(x.shape)} {dtype} expression has an inf or NaN entry{where}, so "
                   "no rank: its singular values are NaN (torch.linalg.matrix_rank raises for NaN "
                   "as well); check the inputs with torch.isfinite")


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(_real(dtype)).eps


def _rounding_floor(x: Expr, R1: torch.Tensor, R2: torch.Tensor, scaled: bool = False) -> torch.Tensor:
    """Bound on the rounding noise in the singular values of the stacked core ``R1 @ R2^H``.

    The core sums ``r`` rank-one terms ``L[:, j] R[j, :]``, each carrying the rounding of the
    Householder QRs of ``m``- and ``n``-long columns, so when terms cancel (``X - X``) what is
    left is noise up to ``eps * (r + sqrt(m + n)) * sum_j |L[:, j]| |R[j, :]|``, however small
    the result's own singular values are (``|L[:, j]| = |R1[:, j]|`` and ``|R[j, :]| =
    |R2[:, j]|``: the Q factors are orthonormal). Measured on random cancelling sums (m, n up
    to 1500, factor condition numbers up to 1e6, float32 and float64) the noise stayed below
    a seventh of this bound. ``scaled``: the column norms are read without overflow
    (:func:`_column_norms`; when a norm of ``R1`` or ``R2`` was not finite)."""
    return core_floor(x.shape[-2], x.shape[-1], R1, R2, scaled)


def core_floor(m: int, n: int, R1: torch.Tensor, R2: torch.Tensor, scaled: bool = False) -> torch.Tensor:
    """:func:`_rounding_floor` of an ``m x n`` matrix's core ``R1 @ R2^H``."""
    scale = _eps(R1.dtype) * (R1.shape[-1] + math.sqrt(m + n))
    # norms do not see a conjugation: read a conjugated view's data, which torch would first copy
    R1, R2 = (R.conj() if R.is_conj() else R for R in (R1, R2))
    with torch.no_grad():  # the constant first: the products stay in range wherever the floor does
        if scaled:
            left, right = _column_norms(R1, scale), _column_norms(R2, 1.0)
        else:
            left = scale * torch.linalg.vector_norm(R1, dim=-2)
            right = torch.linalg.vector_norm(R2, dim=-2)
        return (left * right).sum(-1)[..., None]


def _column_norms(R: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale`` times the column norms of ``R``, each column divided by its largest entry
    first: ``vector_norm`` sums squares, which pass the dtype's range from entries near the
    square root of its largest value (1.8e19 in float32) though the norm is in range."""
    top = R.abs().amax(-2, keepdim=True)
    top = torch.where(top > 0, top, 1)
    return (scale * top[..., 0, :]) * torch.linalg.vector_norm(R / top, dim=-2)


def _sum_floor(x: Expr, D: torch.Tensor) -> tuple[torch.Tensor | float, bool]:
    """Rounding floor of a matrix that is its own core: 0 for a single term (torch's rule
    alone), ``eps * (terms + sqrt(m + n)) * sum_t |term_t|_F`` for a sum evaluated densely,
    whose entries carry about that much rounding when its terms cancel. Also whether the floor
    is finite: a term with an inf or NaN entry makes it not (known without a read of ``D``)."""
    terms = canonical(x).terms
    real = _real(D.dtype)
    if len(terms) == 1:
        return 0.0, True
    from .norms import matrix_norm  # norms reads spectra (a sum's through svdvals): imported on use
    m, n = x.shape[-2], x.shape[-1]
    scale = _eps(D.dtype) * (len(terms) + math.sqrt(m + n))
    finite = True
    with torch.no_grad():
        floor = scale * sum(matrix_norm(term_expr(t)).to(real) for t in terms)
        if not math.isfinite(floor.sum()):  # a norm past the range (or a non-finite entry)
            floor = sum(_scaled_fro(term_expr(t), scale, D.dtype) for t in terms)
            finite = math.isfinite(floor.sum())
    return floor[..., None].expand(*D.shape[:-2], 1), finite


def _scaled_fro(term: Expr, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``scale * ||term||_F`` read from the materialised term divided by its largest entry:
    the Frobenius norm sums squares, which pass the dtype's range from entries near the square
    root of its largest value (1.8e19 in float32) though the norm itself is in range."""
    T = term.to_dense().to(dtype)
    top = T.abs().amax((-2, -1))
    top = torch.where(top > 0, top, 1)
    return (scale * top) * torch.linalg.matrix_norm(T / top[..., None, None].to(T.dtype))


def _nonfinite_members(*tensors: torch.Tensor) -> torch.Tensor | None:
    """Mask over the broadcast batch of ``tensors`` (each ``(..., a, b)``) of the members with
    an inf or nan entry in any of them; None when every entry is finite (the common case: the
    sum of their norms, read back once; a sum past the dtype's range is then checked entry by
    entry)."""
    norms = [torch.linalg.vector_norm(t.detach()) for t in tensors]
    if math.isfinite(sum(norms[1:], norms[0])):
        return None
    masks = [~torch.isfinite(t).flatten(-2).all(-1) for t in tensors]
    return functools.reduce(torch.logical_or, masks)


def _zero_members(t: torch.Tensor, bad: torch.Tensor | None) -> torch.Tensor:
    """``t`` (``(..., a, b)``) with the batch members ``bad`` set to zero, so that a
    decomposition of the whole batch runs on finite input (LAPACK refuses non-finite input)."""
    return t if bad is None else torch.where(bad[..., None, None], torch.zeros((), dtype=t.dtype), t)


def _nan_members(t: torch.Tensor | None, bad: torch.Tensor | None, core_dims: int) -> torch.Tensor | None:
    """``t`` (batch dims, then ``core_dims`` more) with the batch members ``bad`` all NaN."""
    if t is None or bad is None:
        return t
    mask = bad.reshape(*bad.shape, *[1] * core_dims)
    nan = complex("nan+nanj") if t.is_complex() else float("nan")
    return torch.where(mask, torch.full((), nan, dtype=t.dtype, device=t.device), t)


def _nan_spectrum(sp: _Spectrum, bad: torch.Tensor | None) -> _Spectrum:
    """``sp`` with the triplets of the members ``bad`` (non-finite input) all NaN, as torch
    answers on CUDA for such a member; the other members keep their own answers."""
    if bad is None:
        return sp
    if not any(t is not None and t.requires_grad for t in (sp.U, sp.S, sp.Vh)):  # in place: no copies
        for t, dims in ((sp.U, 2), (sp.S, 1), (sp.Vh, 2)):  # (fresh from the SVD, or views of it)
            if t is not None:
                t.masked_fill_(bad.reshape(*bad.shape, *[1] * dims), complex("nan+nanj") if t.is_complex()
                               else math.nan)
        return sp
    return _Spectrum(_nan_members(sp.U, bad, 2), _nan_members(sp.S, bad, 1), _nan_members(sp.Vh, bad, 2),
                     sp.floor)


def _dense_spectrum(x: Expr, D: torch.Tensor, values_only: bool, width: int | None = None,
                    host: bool = False) -> _Spectrum:
    """torch's answer on the dense matrix ``D`` of ``x``, cut to the first ``width`` triplets.

    A matrix that is its own core (``width`` None) has the floor :func:`_sum_floor`. A small
    product materialised (the dense route) keeps the factored route's answers: ``X = L @ R``
    has rank at most ``width = r``, so values past it are rounding noise and are cut; its
    floor is :func:`_rounding_floor` with ``||X||_F = ||S||_2`` for ``sum_j |L[:, j]| |R[j, :]|``
    (the factors are not formed), or :func:`_sum_floor` for a sum.

    LAPACK's SVD runs on ``D`` as it is: an inf or NaN entry makes torch raise or its member's
    singular values non-finite, which their norms (one reduction, read back; for one matrix,
    its values read back) show. Only then are the members checked one by one, LAPACK runs
    again with those zeroed, and they are answered NaN. A sum's floor, read from its terms
    before LAPACK, flags a non-finite term first: LAPACK then never sees that input (MKL
    prints "Parameter 4 was incorrect on entry to SLASCL" for it; for a single term's inf entry
    it is silenced, :mod:`lazymat.mkl_quiet`). (The eigenvalue routines
    are not trusted so: MKL's crashes on a NaN, and :func:`_eigen` checks its cores first.)

    One matrix has its values read back (one transfer) and is thresholded on the host; so is
    a batch of a product when ``host`` (the whole call's spectrum, not a block's, see
    :func:`_in_blocks`) and it has at most :data:`HOST_VALUES` values: its members' values and
    floors are lists, and no reduction runs on the device (``_kept``)."""
    k = min(D.shape[-2:]) if width is None else width
    summed = width is None or _form(x).terms > 1
    floor, finite = _sum_floor(x, D) if summed else (None, True)
    out = None
    if finite:  # torch raises for a non-finite entry, or no convergence: then out stays None
        with contextlib.suppress(torch.linalg.LinAlgError), mkl_quiet.quiet:  # MKL prints for an inf
            out = split_batch(_svdvals if values_only else _reduced_svd, D)
    S = out if values_only else None if out is None else out[1]
    values = None
    if S is None:
        total = math.nan
    elif D.ndim == 2:
        values = S.tolist()
        total = math.hypot(*values)
    elif host and not summed and S.numel() <= HOST_VALUES:
        values = (S if S.ndim == 2 else S.reshape(-1, S.shape[-1])).tolist()  # a list per member
        totals = [math.hypot(*v) for v in values]
        total = sum(totals)
    else:
        norms = torch.linalg.vector_norm(S, dim=-1, keepdim=True)
        total = sum(norms.reshape(-1).tolist())  # read back: no tensor for the sum
    bad, rescaled = None, not math.isfinite(total)
    if rescaled:  # the members with an inf or NaN entry are answered NaN
        bad, values, out, S = _nonfinite_members(D), None, None, None  # (the first answer freed)
        D = _zero_members(D, bad)
        out = split_batch(_svdvals if values_only else _reduced_svd, D)
        S = out if values_only else out[1]
        # ||S||_2 can pass the dtype's range though every value is finite (float32 values
        # near 1e38): here it is read as top * ||S / top||, and the floor scaled before the
        # product (it is far below the range)
        top = S.amax(-1, keepdim=True)
        norms = torch.linalg.vector_norm(S / torch.where(top > 0, top, 1), dim=-1, keepdim=True)
    if not summed:  # one matrix: a number, thresholded on the host (see _kept)
        scale = _eps(D.dtype) * (width + math.sqrt(x.shape[-2] + x.shape[-1]))
        if rescaled:
            floor = (scale * top) * norms if D.ndim > 2 else float(scale * top) * float(norms)
        elif D.ndim == 2:
            floor = scale * total
        else:
            floor = norms.mul_(scale) if values is None else [scale * t for t in totals]
    U, Vh = (None, None) if values_only else (out[0], out[2])
    if k < S.shape[-1]:  # past the rank bound: rounding noise
        S = S.narrow(-1, 0, k)
        if values is not None:
            values = values[:k] if D.ndim == 2 else [v[:k] for v in values]
        U, Vh = (None, None) if values_only else (U.narrow(-1, 0, k), Vh.narrow(-2, 0, k))
    sp = _Spectrum(U, S, Vh, floor, values)
    return sp if bad is None else _nan_spectrum(sp, bad)


def _dense(x: Expr) -> torch.Tensor:
    """``x`` materialised in the dtype decompositions run in."""
    D, wd = x.to_dense(), _work_dtype(x.dtype)
    return D if D.dtype == wd else D.to(wd)


def _dense_decompose(x: Expr, values_only: bool, host: bool = False) -> _Spectrum:
    """The spectrum of a small ``x`` (:func:`dense_is_cheaper`): materialised whole or reduced
    (:func:`small_reduction`), then torch's (``host``: see :func:`_dense_spectrum`)."""
    width = min(*x.shape[-2:], _inner_width(x))
    side = small_reduction(x, "svdvals" if values_only else "svd")
    if side is None:
        return _dense_spectrum(x, _dense(x), values_only, width, host)
    L, R = factor(x)
    wd = _work_dtype(x.dtype)
    D, Q = reduce_small(side, L.to_dense().to(wd), dense_side(R, True).to(wd), not values_only)
    sp = _dense_spectrum(x, D, values_only, width, host)
    return sp if values_only else sp._replace(**_rotated_back(side, Q, sp.U, sp.Vh))


def reduce_small(side: str, L: torch.Tensor, Rh: torch.Tensor,
                 vectors: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(M, Q)``: the reduced matrix of the small route whose singular values are those of
    ``L @ Rh^H`` (``L: (..., m, r)``, ``Rh: (..., n, r)``, both tall): by a Householder QR of
    ``Rh = Q T`` (``side="right"``) ``M = L @ T^H``, ``m x r``; of ``L = Q T`` (``"left"``)
    ``M = T @ Rh^H``, ``r x n``. ``Q`` (None unless ``vectors``) rotates ``M``'s vectors back
    (:func:`_rotated_back`). LAPACK's QR passes a non-finite entry on to ``M`` (NaN), where
    :func:`_dense_spectrum` finds it."""
    with mkl_quiet.quiet:
        if side == "right":
            Q, T = torch.linalg.qr(Rh, "reduced" if vectors else "r")
            return torch.matmul(L, T.mH), Q if vectors else None
        Q, T = torch.linalg.qr(L, "reduced" if vectors else "r")
        return torch.matmul(T, Rh.mH), Q if vectors else None


def _rotated_back(side: str, Q: torch.Tensor, U: torch.Tensor, Vh: torch.Tensor) -> dict:
    """``{"U": ..., "Vh": ...}`` of ``X`` from those of its reduced matrix (:func:`reduce_small`):
    ``Vh = Vh_M Q^H`` (``"right"``) or ``U = Q U_M`` (``"left"``)."""
    return {"U": U, "Vh": torch.matmul(Vh, Q.mH)} if side == "right" else {"U": torch.matmul(Q, U), "Vh": Vh}


# Most values of a batch read back and thresholded on the host (_dense_spectrum, _kept): a few
# float operations per value instead of a dozen small torch calls per batch.
HOST_VALUES = 4096


def _decompose(x: Expr, values_only: bool) -> _Spectrum:
    """The untruncated spectrum of the core (no autograd needed through it)."""
    if dense_is_cheaper(x, "svdvals" if values_only else "svd"):  # small: materialise, ask torch
        return _dense_decompose(x, values_only)
    L, R, QL, QR = reduced_factors(x, vectors=not values_only)
    wd = _work_dtype(x.dtype)
    if is_identity(L) or is_identity(R):  # the matrix is its own core: torch's dense answer
        return _dense_spectrum(x, (R if is_identity(L) else L).to_dense().to(wd), values_only)
    # each tall side is formed, factorised and dropped before the next (as a hand-written route),
    # or both formed and factorised as one batch (stacks_sides); their QRs' evidence comes to the
    # host with the core (below): a side it fails is redone alone
    if stacks_sides(x, L, R, not values_only):
        (Q1, R1, ev1), (Q2, R2, ev2) = _common.stacked_tall_qrs(
            lambda out, k: _common.side_into(R.mH if k else L, out), tuple(L.shape), wd, x.device,
            not values_only)
    else:
        Q1, R1, ev1 = _common._side_qr(L, False, not values_only, wd, unchecked=True)
        Q2, R2, ev2 = _common._side_qr(R, True, not values_only, wd, unchecked=True)
    fn, op = (_svdvals, "svdvals") if values_only else (_reduced_svd, "svd")
    # a non-finite entry of L or R reaches the small triangular factors through the QR: they
    # are checked, never the tall factors; such members are answered NaN, the others as usual
    # (read with the core, the floor shows every entry of R1 and R2 finite when it is)
    m, n = x.shape[-2], x.shape[-1]
    while True:
        core, placed, floor, floors, certain = placed_core(m, n, R1, R2, (ev1, ev2), op)
        redo = [not ok for ok in certain]
        if not any(redo):
            break
        if redo[0]:  # ill-conditioned (or not finite): the pass-by-pass route, or Householder
            Q1, R1, _ = _common._side_qr(L, False, not values_only, wd)
        if redo[1]:
            Q2, R2, _ = _common._side_qr(R, True, not values_only, wd)
        ev1 = ev2 = None
    bad, values = None, None
    if math.isfinite(sum(floors)):
        out = host_decomposition(fn, placed, R1.device)
        if core.ndim == 2:  # one matrix: thresholded on the host (see _kept)
            floor, values = floors[0], (out if values_only else out[1]).tolist()
        out = _to_device(out, R1.device)
    else:  # the members with an inf or nan entry are answered NaN
        bad = _nonfinite_members(R1, R2)
        R1, R2 = _zero_members(R1, bad), _zero_members(R2, bad)
        core, floor = R1 @ R2.mH, _rounding_floor(x, R1, R2, bad is not None)
        out = _small(fn, core, op)
    if values_only:
        return _nan_spectrum(_Spectrum(None, out, None, floor, values), bad)
    Uc, S, Vhc = out
    U = Uc if Q1 is None else matmul(Q1, Uc)  # LAPACK's Q is column-major: read as stored
    Vh = Vhc if Q2 is None else matmul(Vhc, Q2.mH)
    U = U if QL is None else matmul(QL.to(U.dtype), U)  # a shared outer leaf's Q, applied once
    Vh = Vh if QR is None else matmul(Vh, QR.to(Vh.dtype).mH)
    # orthonormal Q_L, Q_R keep the column norms the floor reads: it is the unreduced one
    return _nan_spectrum(_Spectrum(U, S, Vh, floor, values), bad)


def stacked_sides_bytes(shape: tuple, itemsize: int, vectors: bool) -> int:
    """An upper bound on what the stacked sides' route holds at once (:func:`stacks_sides`),
    sides ``(..., rows, r)`` of ``itemsize``-byte elements: the two sides' buffer, CholeskyQR2's
    ``X`` of both, ``Q`` when ``vectors`` (two sides more; the vectors rotated back after the
    buffer is freed), and the small ``r x r`` factors, evidence and core (sixteen of them)."""
    side = math.prod(shape) * itemsize
    small = math.prod(shape[:-2]) * shape[-1] * shape[-1] * itemsize
    return (6 if vectors else 4) * side + 16 * small


def stacks_sides(x: Expr, L: Expr, R: Expr, vectors: bool) -> bool:
    """Whether the factored route forms both tall sides of ``x = L @ R`` (after any shared-leaf
    reduction) into one ``(2, ..., rows, r)`` buffer and factorises them as one batch
    (:func:`lazymat.linalg._common.stacked_tall_qrs`): under ``lm.config(qr_sides="stacked")``,
    where ``L`` and ``R^H`` have the same shape, are tall, take the CholeskyQR route
    (:func:`lazymat.qr.takes_cholesky`: GEMMs, Cholesky factorisations and triangular solves,
    one batched call each), are both formed by a product
    (:func:`lazymat.linalg._common.formed_side`: a side read as stored is not copied), need no
    cast to the dtype decompositions run in, carry no derivative ``out=`` cannot (forward mode,
    torch.func), and the stacked route's memory (:func:`stacked_sides_bytes`) fits the budget;
    else each side is formed and factorised before the next (``"separate"``, and ``"auto"``
    until a GPU measures the stacked route: the same FLOPs in half the QR's torch calls)."""
    if settings.get("qr_sides") != "stacked" or is_identity(L) or is_identity(R):
        return False
    shape = tuple(L.shape)
    if tuple(R.mH.shape) != shape or shape[-2] <= shape[-1] or _work_dtype(x.dtype) != x.dtype:
        return False
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        return False
    if not takes_cholesky((2, *shape), x.dtype, x.device, "reduced" if vectors else "r"):
        return False  # (a batched Householder QR ran slower than two: 1.35x on the CPU, 50257 x 64)
    if not (_common.formed_side(L) and _common.formed_side(R.mH)):
        return False
    return _fits(x, stacked_sides_bytes(shape, x.dtype.itemsize, vectors))[0]


def placed_core(m: int, n: int, R1: torch.Tensor, R2: torch.Tensor, evidence: tuple, op: str
                ) -> tuple[Any, torch.Tensor, torch.Tensor | float, list[float], list[bool]]:
    """``(core, placed, floor, floors, certain)`` of an ``m x n`` matrix from its sides'
    triangular factors: the core ``R1 @ R2^H``, the core where ``op`` is decomposed
    (:func:`_core_device`), its rounding floor (beside the core), that floor read back (a float
    per member) with the sides' QR ``evidence`` (each None or :func:`lazymat.qr.qr_unchecked`'s)
    in one copy, and whether each side's QR holds (:func:`lazymat.qr.certified`; True where
    there was nothing to judge; both sides factorised as one stack share one evidence, read
    once and judged member by member, :func:`lazymat.qr.certified_members`). One matrix on a
    device whose core is decomposed on the host sends its factors there with the evidence
    instead, and the core, its floor and the certificates are worked out there in NumPy
    (launches and torch calls fewer)."""
    stacked = evidence[0] is not None and evidence[0] is evidence[1]
    judged = evidence[:1] if stacked else [ev for ev in evidence if ev is not None]
    read = [t for ev in judged for t in ev]
    shape = (*R1.shape[:-1], R2.shape[-2])
    if R1.ndim == 2 and R1.device.type != "cpu" and _common.core_place(shape, R1.device, op).type == "cpu":
        r1, r2, *host_evidence = _common.on_host([R1, R2, *read])
        core = r1 @ r2.conj().T
        scale = _eps(R1.dtype) * (R1.shape[-1] + math.sqrt(m + n))  # (core_floor's)
        floor = float(scale * numpy.dot(numpy.linalg.norm(r1, axis=0), numpy.linalg.norm(r2, axis=0)))
        placed, floors = torch.from_numpy(core), [floor]
    else:
        core, floor = R1 @ R2.mH, core_floor(m, n, R1, R2)
        placed, (host_floor, *host_evidence) = _common._placed_with(core, op, [floor, *read])
        floors = host_floor.real.reshape(-1).tolist()
    on_host = iter(host_evidence)
    if stacked:
        return core, placed, floor, floors, certified_members(tuple(on_host))
    verdicts = iter([certified(tuple(next(on_host) for _ in ev)) for ev in judged])
    return core, placed, floor, floors, [ev is None or next(verdicts) for ev in evidence]


def host_decomposition(fn, placed: torch.Tensor, device: torch.device):
    """``fn(placed)``, a decomposition of the core :func:`placed_core` placed, by
    :func:`split_batch` on the CPU; one matrix brought from a device runs with torch's threads as
    set: a GPU machine's host is not shared, and switching to one intra-op thread and back cost
    ~0.2 ms there, where a 64 x 64 SVD ran as fast with 16 threads as with 1
    (benchmarks/results/h100-core-probe.txt)."""
    if placed.ndim == 2 and device.type != "cpu":
        return fn(placed)
    return split_batch(fn, placed)


def _share_outer_qrs(x: Expr, vectors: bool, block: Expr) -> None:
    """Factorise the tall leaves the whole batch shares (:func:`lazymat.core.block_reductions`)
    before its blocks run, when a ``block`` takes the factored route (the dense one reads no
    QR): each block then reads the QR from the leaf's cache."""
    if not dense_is_cheaper(block, "svd" if vectors else "svdvals"):
        for shared in block_reductions(x, vectors):
            leaf_qr(shared, vectors)


def _spectrum(x: Expr, values_only: bool = False, grad: bool | None = None) -> _Spectrum:
    """Cached untruncated spectrum (as :func:`_cached`; computed without autograd when ``grad``,
    by default :func:`_needs_grad`); values only are read off a cached full one if present. A
    small matrix whose dense route fits the budget runs whole; else the budget may cut the
    batch into blocks (:func:`_in_blocks`)."""
    op = "svdvals" if values_only else "svd"

    def compute() -> _Spectrum:
        if dense_is_cheaper(x, op):  # within the budget whole
            return _dense_decompose(x, values_only, host=True)
        return _read_back(_in_blocks(x, op, lambda block, _: _decompose(block, values_only),
                                     lambda block: _share_outer_qrs(x, not values_only, block)))

    if _needs_grad(x) if grad is None else grad:
        with torch.no_grad(), uncached():  # (a differentiated call reads and keeps no cache)
            return compute()
    data = _data(x)
    if not caches(data):
        return compute()
    state = tuple(tensor_state(t) for t in data)
    for name in ("svd", "svdvals") if values_only else ("svd",):
        hit = x._cache.get(name)
        if hit is not None and hit[0] == state:
            return hit[1]
    value = compute()
    x._cache[op] = (state, value)
    return value


def _read_back(sp: _Spectrum) -> _Spectrum:
    """``sp`` of a batch with its values and floors read back (lists per member, one transfer)
    when it has at most :data:`HOST_VALUES` values, so that it is thresholded on the host
    (:func:`_kept`): no mask, tolerance or count is formed on the device beside the spectrum."""
    S, floor = sp.S, sp.floor
    if sp.values is not None or S.ndim < 2 or S.numel() > HOST_VALUES or isinstance(floor, list):
        return sp
    members = S.flatten(0, -2).tolist()  # (the batch dims in one; a member may have no values)
    floors = ([floor] * len(members) if isinstance(floor, float) else
              floor.expand(*S.shape[:-1], 1).reshape(-1).tolist())
    return sp._replace(floor=floors, values=members)


def _small_spectrum(x: Expr, values_only: bool) -> _Spectrum | None:
    """:func:`_spectrum` of a single product of leaf views that takes the dense route while no
    gradient is recorded, on the lean path of small-matrix calls (issue 12): the route was
    decided once for the structure (:func:`dense_is_cheaper`), so what runs is the cache check,
    the matrix through its warm plan, one LAPACK call and one read-back (:func:`_dense_spectrum`).
    None for any other expression or call (the general path answers it)."""
    form = _form(x)
    if form.key is None or not caches(form.data):  # (_needs_grad, or a cache not to read)
        return None
    op = "svdvals" if values_only else "svd"
    if not dense_is_cheaper(x, op):
        return None
    state = tuple([tensor_state(t) for t in form.data])
    hit = x._cache.get("svd")
    if hit is None or hit[0] != state:
        hit = x._cache.get(op)
    if hit is not None and hit[0] == state:
        return hit[1]
    value = _dense_decompose(x, values_only, host=True)
    x._cache[op] = (state, value)
    return value


def _tolerance(x: Expr, S: torch.Tensor, floor: torch.Tensor | float, atol: Any = None,
               rtol: Any = None) -> torch.Tensor:
    """The ``(..., 1)`` threshold at or below which a singular value counts as zero.

    torch's rule (``torch.linalg.matrix_rank``/``pinv``): ``max(atol, rtol * S_max)`` with
    ``atol`` 0 when not given and ``rtol`` ``eps * max(m, n)`` when not given, except 0 when
    ``atol > 0`` is given, in ``S``'s dtype. lazymat then raises it to the core's rounding
    floor, so that values the factored route cannot tell from zero (exact cancellation) are
    zero. :func:`_host_tolerances` is the same rule on the host."""
    eps = _eps(_work_dtype(x.dtype))  # the dtype the decomposition ran in
    m, n = x.shape[-2], x.shape[-1]

    def as_t(v):
        t = torch.as_tensor(v, device=S.device)
        if t.is_complex():
            raise TypeError(f"tolerances must be real, got {v!r}")
        return torch.as_tensor(v, dtype=S.dtype, device=S.device)  # a number in S's dtype, as torch

    smax = S.amax(-1, keepdim=True) if S.shape[-1] else S.new_zeros(*S.shape[:-1], 1)
    if atol is None and rtol is None:  # the default rule, without tensors for its constants
        tol = smax * (eps * max(m, n))
    else:
        default_rtol = as_t(eps * max(m, n))
        atol_t = as_t(0.0 if atol is None else atol)
        if rtol is not None:
            rtol_t = as_t(rtol)
        elif atol is None:
            rtol_t = default_rtol
        else:
            rtol_t = torch.where(atol_t > 0, torch.zeros_like(default_rtol), default_rtol)
        tol = torch.maximum(atol_t[..., None], rtol_t[..., None] * smax)
    return tol.clamp_min(floor) if isinstance(floor, float) else torch.maximum(tol, floor)


def _host_tolerances(x: Expr, members: list[list[float]], dtype: torch.dtype, floors: list[float],
                     atol: float | None, rtol: float | None) -> list[float]:
    """:func:`_tolerance` of each matrix whose singular values ``members[i]`` (of ``dtype``)
    were read back, with its floor ``floors[i]``, in Python floats rounded as torch rounds them
    in ``dtype`` (NaN when a value, a tolerance or the floor is NaN, as ``torch.maximum``
    propagates it)."""
    rule = _host_rule(x, dtype, atol, rtol)
    return [_host_tolerance(v, floor, rule, dtype) for v, floor in zip(members, floors, strict=True)]


def _host_rule(x: Expr, dtype: torch.dtype, atol: float | None, rtol: float | None) -> tuple[float, float]:
    """``(atol, rtol)`` of :func:`_tolerance`'s rule for ``x``, as numbers of ``dtype`` (the
    singular values') hold them: fixed by the shape, the dtype and the call's options."""
    if rtol is None:
        m, n = x.shape[-2], x.shape[-1]
        rtol = 0.0 if atol is not None and atol > 0 else _eps(_work_dtype(x.dtype)) * max(m, n)
    return 0.0 if atol is None else _held(atol, dtype), _held(rtol, dtype)


def _host_tolerance(values: list[float], floor: float, rule: tuple[float, float],
                    dtype: torch.dtype) -> float:
    """The threshold of one matrix's singular values ``values`` (of ``dtype``) read back, by
    ``rule`` (:func:`_host_rule`) raised to ``floor``: NaN when a value, a part or the floor is."""
    atol, rtol = rule
    smax = math.nan if math.isnan(sum(values)) else max(values, default=0.0)  # values are >= 0
    parts = (atol, _held(rtol * smax, dtype), floor)
    return math.nan if any(map(math.isnan, parts)) else float(max(parts))


def _held(v: float, dtype: torch.dtype) -> float:
    """``v`` as a tensor of ``dtype`` (float32 or float64) holds it: a product of two float32
    numbers, exact in a double, rounded once as float32 arithmetic rounds it."""
    if dtype != torch.float32:
        return v
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:  # rounds past float32's largest value
        return math.copysign(math.inf, v)


def _is_number(v: Any) -> bool:
    return v is None or type(v) in (int, float)


def _keyable(v: Any) -> bool:
    """A tolerance a compiled call can be keyed by: None or a plain number that equals itself
    (a NaN key would never be found again)."""
    return v is None or type(v) in (int, float) and v == v


def _kept(x: Expr, sp: _Spectrum, atol: Any = None, rtol: Any = None,
          rank: bool = False) -> tuple[int, torch.Tensor | None]:
    """``(k, keep)``: which singular values are above :func:`_tolerance` (NaN values are kept,
    so that a member with non-finite input is answered NaN; for a ``rank``, which cannot be
    NaN, such a member raises :class:`NonFiniteError`).

    They lead each member's ``S`` (it descends): ``k`` is the most that any member keeps, and
    ``keep`` the mask over ``S`` of the kept ones, None when every member keeps its first ``k``.
    With number tolerances, one matrix is thresholded on the host from its values read back
    (a few float operations instead of a dozen small torch calls), and so is a batch whose
    values were read back (:func:`_host_kept`); other batches on the device."""
    vals = sp.S
    if _is_number(atol) and _is_number(rtol):
        if vals.ndim == 1:
            values = vals.tolist() if sp.values is None else sp.values
            tol = _host_tolerances(x, [values], vals.dtype, [float(sp.floor)], atol, rtol)[0]
            if math.isnan(tol):  # only NaN values are kept (NaN compares false)
                if rank:
                    raise NonFiniteError.of(x, "matrix_rank", [])
                return sum(map(math.isnan, values)), None
            return sum(map(tol.__lt__, values)), None
        if sp.values is not None:
            kept = _host_kept(x, sp, atol, rtol)
            if kept is not None:
                return kept
    floor = sp.floor
    if isinstance(floor, list):
        floor = torch.tensor(floor, dtype=vals.dtype).to(vals.device).reshape(*vals.shape[:-1], 1)
    keep = vals > _tolerance(x, vals, floor, atol, rtol)
    nan = vals.isnan()
    if rank:
        bad = nan.any(-1)
        if bool(bad.any()):
            raise NonFiniteError.of(x, "matrix_rank", bad.nonzero().tolist())
    else:
        keep = keep | nan
    return (keep.shape[-1] if keep.numel() == 0 else int(keep.sum(-1).max())), keep


def _host_kept(x: Expr, sp: _Spectrum, atol: float | None,
               rtol: float | None) -> tuple[int, torch.Tensor | None] | None:
    """:func:`_kept` of a batch whose values and floors were read back (lists per member),
    each member by :func:`_host_tolerances`; ``keep`` is None when every member keeps the same
    number. None when a tolerance is NaN (the device rule keeps NaN values where they stand)."""
    tols = _host_tolerances(x, sp.values, sp.S.dtype, sp.floor, atol, rtol)
    if any(map(math.isnan, tols)):
        return None
    counts = [sum(map(tol.__lt__, values)) for tol, values in zip(tols, sp.values, strict=True)]
    n = sp.S.shape[-1]
    k = max(counts, default=n)
    if counts.count(k) == len(counts):
        return k, None
    keep = torch.tensor([[j < c for j in range(n)] for c in counts])
    return k, keep.to(sp.S.device).reshape(sp.S.shape)


def _differentiable(x: Expr, sp: _Spectrum, k: int, values_only: bool, pull: bool = True):
    """``(U, S, Vh)`` of the leading ``k`` triplets with autograd to the leaves.

    QR's backward divides by ``R``'s diagonal, which is zero for a rank-deficient factor
    (stacked sums) and gives NaN; an SVD's backward divides by differences of singular
    values, NaN for repeated zeros. Instead the core is projected onto the bases found without
    autograd, ``C = U_k^H L R V_k`` (k x k, only nonzero values), and differentiated there;
    the part of ``dU`` (``dV``) outside those bases, ``(I - U_k U_k^H) dX V S^-1``, is added
    as a term that is zero in value. Both are exact to first order for the nonzero triplets.
    With ``pull`` (the triplets are the caller's answer) the values also take the second-order
    pull of those outside parts, a term zero in value and in first derivative, so that their
    second derivatives (Hessians, ``create_graph=True``) are exact too, and the vectors, whose
    second derivatives are not, refuse them (:func:`first_order_only`). A caller that reads
    values off a core of the corrected vectors (``S Vh U``: ``eig``, ``eigh``) passes ``pull``
    False: that core has the pull through the vectors, and the caller marks the vectors it
    answers itself. A member with non-finite input (NaN triplets in ``sp``) is answered NaN, as without
    gradients: its ``C`` is zeroed for LAPACK, which raises for a NaN entry."""
    L, R = factor(x)
    wd = _work_dtype(x.dtype)
    if is_identity(L) or is_identity(R):  # the matrix itself: X = D @ I
        Ld, Rd = (R if is_identity(L) else L).to_dense().to(wd), None
    else:
        Ld, Rd = L.to_dense().to(wd), R.to_dense().to(wd)

    Uk, Vk = sp.U[..., :k], sp.Vh[..., :k, :].mH
    W = _times(Ld, Rd, Vk)  # X V_k, read again for the vectors: two passes over the factors (X V_k, X^H U_k)
    C = Uk.mH @ W
    bad = _nonfinite_members(C.detach())
    C = _zero_members(C, bad)
    if values_only:
        S = torch.linalg.svdvals(C)
        with torch.no_grad():
            Uc, _, Vhc = torch.linalg.svd(C, full_matrices=False)
    else:
        Uc, S, Vhc = torch.linalg.svd(C, full_matrices=False)
    with torch.no_grad():
        inv = torch.where(S > 0, 1 / torch.where(S > 0, S, 1), 0).to(Uc.dtype)[..., None, :]
        Vs, Us = Vhc.mH * inv, Uc * inv  # V S^-1 = V_k Vs, U S^-1 = U_k Us
    if values_only:
        if pull:
            S = S + _Pull.apply(S.detach(), Ld, Rd, Uk, Vk, Us, Vs)
        return None, _nan_members(S, bad, 1), None
    dU, dV = _outside(W, _h_times(Ld, Rd, Uk), Uk, Vk, Us, Vs)
    if pull:
        S = S + _pull_of(S.detach(), dU, dV)
    U, Vh = Uk @ Uc + dU, Vhc @ Vk.mH + dV.mH
    if pull:
        U, Vh = first_order_only(U, Vh)
    return _nan_members(U, bad, 2), _nan_members(S, bad, 1), _nan_members(Vh, bad, 2)


def _outside(W: torch.Tensor, Z: torch.Tensor, Uk: torch.Tensor, Vk: torch.Tensor, Us: torch.Tensor,
             Vs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dU, dV)``: the parts of ``X V S^-1`` and ``X^H U S^-1`` outside the bases ``U_k``, ``V_k``
    (``(I - U_k U_k^H) X V S^-1``; zero in value), from ``W = X V_k`` and ``Z = X^H U_k``."""
    T, Tv = W @ Vs, Z @ Us
    return T - Uk @ (Uk.mH @ T), Tv - Vk @ (Vk.mH @ Tv)


def _pull_of(S: torch.Tensor, dU: torch.Tensor, dV: torch.Tensor) -> torch.Tensor:
    """The second-order pull of the directions outside the bases on each singular value,
    ``s_i / 2 (|dU e_i|^2 + |dV e_i|^2)`` (the Hermitian dilation's second-order eigenvalue
    term): zero in value and in first derivative."""
    return S / 2 * (_squared_columns(dU) + _squared_columns(dV))


class _Pull(torch.autograd.Function):
    """:func:`_pull_of` for the values alone, formed only when a backward records
    (``create_graph=True``): the pull is zero and so is its first derivative, so the forward
    answers zeros and a plain backward nothing; a recording one differentiates the pull, formed
    then (two more passes over the factors), so that its gradient carries the second
    derivative. Under torch.func's transforms or forward mode it is formed as it stands."""

    @staticmethod
    def forward(ctx, S, Ld, Rd, Uk, Vk, Us, Vs):
        ctx.save_for_backward(Ld, Rd)
        ctx.constants = S, Uk, Vk, Us, Vs
        return torch.zeros_like(S)

    @staticmethod
    def backward(ctx, grad):
        if not torch.is_grad_enabled():
            return (None,) * 7
        Ld, Rd = ctx.saved_tensors
        S, Uk, Vk, Us, Vs = ctx.constants
        pull = _pull_of(S, *_outside(_times(Ld, Rd, Vk), _h_times(Ld, Rd, Uk), Uk, Vk, Us, Vs))
        inputs = [t for t in (Ld, Rd) if t is not None and t.requires_grad]
        found = iter(torch.autograd.grad(pull, inputs, grad, create_graph=True, allow_unused=True))
        return (None, *(next(found) if t is not None and t.requires_grad else None for t in (Ld, Rd)),
                None, None, None, None)

    @classmethod
    def apply(cls, S, Ld, Rd, Uk, Vk, Us, Vs):  # (the transforms' cases: formed as it stands)
        if torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
            return _pull_of(S, *_outside(_times(Ld, Rd, Vk), _h_times(Ld, Rd, Uk), Uk, Vk, Us, Vs))
        return super().apply(S, Ld, Rd, Uk, Vk, Us, Vs)


def _times(Ld: torch.Tensor, Rd: torch.Tensor | None, Y: torch.Tensor) -> torch.Tensor:
    """``X @ Y`` for ``X = Ld @ Rd`` (``Ld`` alone where ``Rd`` is None), never forming ``X``."""
    return Ld @ Y if Rd is None else Ld @ (Rd @ Y)


def _h_times(Ld: torch.Tensor, Rd: torch.Tensor | None, Y: torch.Tensor) -> torch.Tensor:
    """``X^H @ Y``, as :func:`_times`."""
    return Ld.mH @ Y if Rd is None else Rd.mH @ (Ld.mH @ Y)


class SecondDerivativeRefused(RuntimeError):
    """A second derivative through singular or eigen vectors of a low-rank expression: their
    differentiable route is exact to first order only."""


def first_order_only(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` as they are, but differentiable once only: a backward that records
    (``create_graph=True``, ``torch.func.hessian``) hands back gradients that raise
    :class:`SecondDerivativeRefused` when differentiated again, where the route's second
    derivatives would be wrong without a word (the vectors' projected construction). Only where
    a backward may run: forward mode alone (``jvp``, ``jacfwd(jacfwd(f))``) carries the bases'
    tangents, exact to every order."""
    if not _reverse_mode(tensors):
        return tensors
    return _FirstOrder.apply(*tensors)


def _reverse_mode(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether a backward may run through ``tensors``: one records a gradient, or torch.func's
    transforms include a reverse-mode one (``grad``, ``vjp``, ``jacrev``, ``hessian``)."""
    if torch._C._are_functorch_transforms_active():
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        grad_key = torch._C._functorch.TransformType.Grad
        return any(i.key() == grad_key for i in retrieve_all_functorch_interpreters())
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _FirstOrder(torch.autograd.Function):
    """The identity, whose recorded backward passes the gradients through :class:`_Refused`,
    anchored on the outputs so that differentiating them again reaches it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*tensors):
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output)

    @staticmethod
    def backward(ctx, *grads):
        if not torch.is_grad_enabled():  # a plain backward: nothing to refuse
            return grads
        anchors = ctx.saved_tensors
        return tuple(None if g is None else _Refused.apply(g, *anchors) for g in grads)

    @staticmethod
    def jvp(ctx, *tangents):
        return tuple(t.view_as(t) for t in tangents)  # (views, as forward's outputs are)


class _Refused(torch.autograd.Function):
    """The identity on a gradient (``anchors`` only tie it to the graph), which raises when
    differentiated, backward or forward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, *anchors):
        return g.view_as(g)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise _refusal()

    @staticmethod
    def jvp(ctx, *tangents):
        raise _refusal()


def _refusal() -> SecondDerivativeRefused:
    return SecondDerivativeRefused(
        "second derivatives through the singular or eigen vectors of a low-rank lazy expression "
        "(svd's U and Vh, pinv, lstsq, truncate, eig's and eigh's vectors) are not supported: their "
        "differentiable route is exact to first order only. The singular values and eigenvalues "
        "(svdvals, the spectral and nuclear norms, cond, eigvals, eigvalsh) have exact second "
        "derivatives; for the vectors', use torch.linalg on X.to_dense()")


def _squared_columns(t: torch.Tensor) -> torch.Tensor:
    """The squared 2-norm of each column of ``t`` (``(..., m, k)`` -> ``(..., k)``), real."""
    return (t.real.square() + t.imag.square() if t.is_complex() else t.square()).sum(-2)


def _leading(x: Expr, sp: _Spectrum, kept: tuple[int, torch.Tensor | None], values_only: bool = False,
             grad: bool | None = None, fill: float = 0.0, pull: bool = True):
    """The leading triplets that ``kept`` (:func:`_kept`) asks for (values outside it set to
    ``fill``: :func:`pinv` asks for inf, whose reciprocal is 0), differentiable when gradients
    are recorded (``grad``, by default :func:`_needs_grad`; ``pull`` as there); views of ``sp``'s
    tensors where nothing is cut or set."""
    k, keep = kept
    if _needs_grad(x) if grad is None else grad:
        U, S, Vh = _differentiable(x, sp, k, values_only, pull)
    elif k == sp.S.shape[-1]:
        U, S, Vh = sp.U, sp.S, sp.Vh
    else:
        U, S, Vh = sp.U, sp.S.narrow(-1, 0, k), sp.Vh
        if not values_only:
            U, Vh = U.narrow(-1, 0, k), Vh.narrow(-2, 0, k)
    return U, (S if keep is None else torch.where(keep[..., :k], S, fill)), Vh


def _call_spectrum(x: Expr, values_only: bool) -> tuple[_Spectrum, bool]:
    """``(spectrum, grad)`` for one call: the lean small-matrix one (:func:`_small_spectrum`)
    where it applies, else :func:`_spectrum`, differentiable when gradients are recorded."""
    sp = _small_spectrum(x, values_only)
    if sp is not None:
        return sp, False
    grad = _needs_grad(x)
    return _spectrum(x, values_only and not grad, grad), grad


def _may_hold_nan(sp: _Spectrum, k: int) -> bool:
    """Whether the ``k`` leading values kept of ``sp`` may hold a NaN member: a NaN member keeps
    all its values (:func:`_kept`), so not when some were cut; nor when the values read back
    (``sp.values``) hold no NaN."""
    if k < sp.S.shape[-1]:
        return False
    if sp.values is None:
        return True
    rows = sp.values if sp.S.ndim > 1 else [sp.values]
    return any(map(math.isnan, map(sum, rows)))  # singular values are >= 0: a sum is NaN for a NaN


def _truncated(x: Expr, values_only: bool = False, pull: bool = True):
    """The nonzero triplets by :func:`_tolerance`'s default rule (see :func:`svd`); ``pull`` as
    :func:`_differentiable`'s."""
    sp, grad = _call_spectrum(x, values_only)
    return _leading(x, sp, _kept(x, sp), values_only, grad, pull=pull)


# torch's named answers, on every path (general, compiled, meta, budgeted; torch.linalg's routes)
_SVD, _EIG, _EIGH = (torch.return_types.linalg_svd, torch.return_types.linalg_eig,
                     torch.return_types.linalg_eigh)


def _owned(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, never a view of a cached spectrum (a caller may write into it);
    a tensor autograd made is already the caller's."""
    if t.grad_fn is not None:
        return t if t.dtype == dtype else t.to(dtype)
    return t.clone() if t.dtype == dtype else t.to(dtype)


def _pad(v: torch.Tensor, size: int, keep_nan: bool = True) -> torch.Tensor:
    """``v (..., k)`` padded with zeros to ``(..., size)``, a new tensor; a member whose values
    are NaN (non-finite input, :func:`_nan_spectrum`) is NaN throughout, as torch answers, unless
    not ``keep_nan`` (the caller reduces it with ``amax``/``amin``, which give NaN anyway)."""
    if v.shape[-1] >= size:
        return v
    padded = torch.constant_pad_nd(v, (0, size - v.shape[-1]))
    if v.shape[-1] == 0 or not keep_nan:
        return padded
    first = v[..., :1]
    return torch.where(first.isnan(), first, padded)


def _sort_desc(vals: torch.Tensor, *others: torch.Tensor):
    order = torch.argsort(vals.abs(), dim=-1, descending=True, stable=True)
    vals = vals.gather(-1, order)
    return (vals, *(o.gather(-1, order.unsqueeze(-2).expand_as(o)) for o in others))


def _core_eigen(core: torch.Tensor, vectors: bool) -> tuple[torch.Tensor, ...]:
    """``(values,)`` or ``(values, vectors)`` of the square ``core``, by descending modulus."""
    if vectors:
        return _sort_desc(*_small(torch.linalg.eig, core, "eig"))
    return _sort_desc(_small(torch.linalg.eigvals, core, "eig"))


def _pinv_of(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, dtype: torch.dtype, dense: bool,
             zeros: bool) -> Expr | torch.Tensor:
    """``V diag(1 / S) U^H`` ``(..., n, m)`` in ``dtype`` from the kept triplets ``U (..., m, k)``,
    ``S (..., k)``, ``Vh (..., k, n)``; ``zeros``: some members have zeros past their rank in
    ``S``, which count as 0 (every other value is above a tolerance >= 0, or NaN). The matrix
    when ``dense``, as torch answers: ``Vh^H @ (U / S)^H``, a division and one GEMM (after LAPACK
    every op runs from cold caches); else the lazy product ``(V S^-1) @ U^H``. ``U`` may be a
    view of a cached spectrum: a leaf handed out never is (the caller may write into it)."""
    if dense:
        if zeros:
            S = torch.where(S != 0, S, math.inf)  # 1 / inf = 0 past a member's rank
        scaled = U / (S if S.ndim == 1 else S.unsqueeze(-2))
        # (torch.matmul of one batch dim expands and reshapes both sides around its bmm)
        P = (torch.bmm if U.ndim == 3 else torch.matmul)(Vh.mH, scaled.mH)
        return P if P.dtype == dtype else P.to(dtype)
    inv = torch.where(S != 0, 1 / torch.where(S != 0, S, 1), 0) if zeros else S.reciprocal()
    left = Vh.mH * inv.unsqueeze(-2)
    return lazy(left if left.dtype == dtype else left.to(dtype)) @ lazy(_owned(U, dtype).mH)
