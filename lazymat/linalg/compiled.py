"""Compiled calls: a fresh product of data leaves runs by its structure's call, the route and rules
decided once per structure (``_CALLS``), then only the product, one LAPACK call and a
threshold read on the host (``_host_cut``)."""
from __future__ import annotations

import bisect
import cmath
import dataclasses
import functools
import itertools
import math
import operator
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.autograd import forward_ad

from .. import layout, mkl_quiet, settings
from ..coefficient import Wide, far, shrinks
from ..core import factor, is_identity, outer_reductions
from ..cpu_batches import for_shape
from ..execute import _contract, _multiplier, _run_planned, device_budget
from ..expr import Expr, Leaf, MatMul, Scale, Transpose, _set_cache_dict
from ..network import Shared, closed_chain, plan_networks, terms_reserve
from ..plan import ChainPlan, plan_canon, plan_chain, rescales, scaled_operand
from ..product_cache import holds_none, leaf_products
from ..rewrite import Term, canonical, chain_views, diagonal_pieces, leaf_chain, scaled_leaf_chain
from . import _common, costs, peaks, spectrum
from ._common import (
    _complex,
    _form,
    _inner_width,
    _real,
    _reduced_svd,
    _svdvals,
    _to_device,
    _work_dtype,
)
from .costs import FACTORED_OVER_REDUCED_FLOPS, FACTORED_OVERHEAD_FLOPS, REDUCED_OVERHEAD_FLOPS
from .peaks import _peak_bound
from .small import _cheaper_by_flops, _dense_peak, _pinv_is_dense, small_reduction
from .spectrum import _SVD, _core_eigen, _eps, _host_rule, _pad, _pinv_of

# A product of data leaves built for one call (``torch.linalg.svdvals(lazy(A) @ lazy(B) @
# lazy(C))`` from new tensors, some maybe read ``.mT``, maybe scaled, ``(lazy(A) / 8) @ ...``: the
# commonest small-matrix call) asks the general path the same questions every time: which
# route, which LAPACK op, how many values past the rank bound are noise, which tolerance rule,
# whether a member may hold NaN. The first call of an op on a structure (the leaves' shapes and
# which are read transposed, where a scale goes, the dtype, the device, the op and its options,
# the route constants and the planner) asks them once, with the general path's own functions,
# and keeps the answers in a closure (:class:`_Compiled`); every later call with the same key
# runs only the product through its warm plan (the scale applied where the general path's
# evaluation applies it, :func:`lazymat.plan.scaled_operand`: its answers bit for bit), one
# LAPACK call, a read-back thresholded on the host and the answer out. What the closure cannot
# answer as the general path would (an inf or NaN entry, a budget that does not fit, gradients,
# a product read before, a scale of 0, inf, NaN or far from 1) goes to the general path.


class _Compiled(NamedTuple):
    """One structure's call: ``run(tensors, scale)`` (the leaves' tensors, left to right, and the
    scale to apply to the product's value, or None) gives the answer, or None where the general
    path must answer (non-finite values: it says which members are NaN); ``need``, the bytes the
    general path would check against the memory budget (the dense route's predicted peak, or
    the plan's work); ``scaled``, the leaf whose tensor a scale multiplies before the products,
    as the general path applies it (None: the product's value); ``factored``, whether it runs
    the factored route, which a QR cached on a leaf would change (the general path reads it)."""

    run: Callable[[list[torch.Tensor], Term | None], Any]
    need: int
    scaled: int | None = None
    factored: bool = False


_GENERAL = _Compiled(lambda tensors, scale: None, 0)  # a structure the general path answers
_CALLS: dict[tuple, _Compiled] = {}  # by (op, options, dtype, device, leaf views, scale, settings, constants)
_CALLS_KEPT = 1024
# the route decision (dense_is_cheaper's op) behind each compiled op
_ROUTE_OP = {"svdvals": "svdvals", "matrix_rank": "svdvals", "norm": "svdvals", "cond": "svdvals",
             "fro": "matrix_norm", "svd": "svd", "pinv": "svd", "eigvals": None, "trace": None}


def _compiled(x: Any, op: str, options: tuple) -> Any:
    """``op`` with ``options`` on ``x`` by its structure's compiled call; None where the general
    path answers: ``x`` is not a product of distinct data leaves, each maybe read ``.mT`` or
    scaled, the product too (:func:`lazymat.rewrite.chain_views`), read for the first time (a
    second call reads the spectrum the general path caches on ``x``), gradients are recorded,
    a leaf holds cached products, the structure takes another route, the memory budget is set
    or tight and the call's work does not fit it, the values are not finite, or the scale is
    0, inf, NaN or far from 1 (the form rescales such a product)."""
    kind = type(x)
    if kind is not MatMul and kind is not Scale and kind is not Transpose or x._cache_dict or (
            forward_ad._current_level >= 0):  # (a plain tensor; a cache read without making one,
        return None  # see Expr._cache; forward mode, _needs_grad)
    leaves, transposed, scale = leaf_chain(x) if kind is MatMul else None, None, None
    if leaves is None:  # operands read as .mT or scaled (a run of @), the product too
        chain = scaled_leaf_chain(x) if kind is MatMul else chain_views(x)
        if chain is None:
            return None
        leaves, flips, coefs = chain
        transposed = tuple(flips) if flips is not None and True in flips else None
        if coefs:  # (chain_views' order, the last folded first: the run's own reversed)
            scale = _multiplier(coefs[::-1] if kind is MatMul else coefs)
            if scale is not None and _unscalable(scale, x.dtype):
                return None
    shapes, tensors = [], []
    for leaf in leaves:
        t = leaf.tensor
        if t is None or t.shape != leaf.shape:
            return None  # a symbol or a resized tensor (the general path raises)
        if t.requires_grad:
            if torch.is_grad_enabled():  # (asked only here: most leaves record no gradient)
                return None  # autograd to record
            t = t.detach()  # read detached, as execute._contract reads it
        shapes.append(leaf.shape)
        tensors.append(t)
    if not holds_none(leaves):
        return None  # the general path reads products cached on the leaves
    # a leaf read more than once (W_E at both ends of a circuit): the general path shares its
    # products, except on the factored route, whose sides are formed apart (_compile_factored)
    shared = None if len(set(leaves)) == len(leaves) else tuple([leaves.index(leaf) for leaf in leaves])
    route = _ROUTE_OP[op]
    # the scale's structure, not its value: where the general path applies it (a factor for a
    # number below 1 in magnitude, the product for any other or for 0-dim tensors)
    placement = None if scale is None else (bool(scale.scalars), shrinks(scale.coef))
    # (the Frobenius norm's route, the trace's network and the small route's reduced matrix
    # weigh the leaves' strides)
    strides = tuple([t.stride() for t in tensors])
    key = (op, options, x.dtype, x.device, tuple(shapes), transposed, shared, placement, strides,
           settings.get("optimize"), settings.get("qr_sides"), costs.DENSE_MAX_ELEMENTS,
           FACTORED_OVERHEAD_FLOPS.get(route), REDUCED_OVERHEAD_FLOPS.get(route),
           FACTORED_OVER_REDUCED_FLOPS.get(route), spectrum.HOST_VALUES, HOST_CHECK_ENTRIES)
    call = _CALLS.get(key)
    if call is None:
        call = _CALLS[key] = _compile(x, op, options, leaves, transposed, scale is not None,
                                      shared is not None)
        if len(_CALLS) > _CALLS_KEPT:
            _CALLS.pop(next(iter(_CALLS)), None)  # the oldest (another thread may have dropped it)
    if call is _GENERAL or call.factored and any([leaf._cache_dict for leaf in leaves]):
        return None
    if (call.need > settings.ALWAYS_FITS or settings.get("memory_budget") is not None) and (
            call.need > device_budget(x.device)):
        return None
    # read once: a second call takes the general path, which caches (the first call's compiling
    # may have cached the form). Marked before the run: after LAPACK every line runs from cold
    # caches. The node's cache is made here, without x._cache's frame
    cache = x._cache_dict
    if cache is None:
        cache = {}
        _set_cache_dict(x, cache)
    cache["read"] = True
    if transposed is not None and not call.factored:  # (a factored call or a trace reads them as stored)
        tensors = [t.mT if flip else t for t, flip in zip(tensors, transposed, strict=True)]
    if scale is not None and call.scaled is not None:  # on a factor, as the general path scales it
        tensors[call.scaled] = scale.times(tensors[call.scaled])
        scale = None
    out = call.run(tensors, scale)
    if out is None:  # the general path answers this first call as its own
        cache.pop("read", None)  # (another thread may have cleared it)
    return out


def _unscalable(scale: Term, dtype: torch.dtype) -> bool:
    """Whether the general path must answer a product scaled by ``scale``: the folded number is
    far from 1 for ``dtype`` (the form rescales the product's factors), or 0, inf or NaN (the
    form's answers for those are its own); a 0-dim tensor recording a gradient. A 0-dim tensor's
    value is not read: the product it scales is formed and checked finite as any other."""
    k = scale.coef
    if k != 1 and (type(k) is Wide or far(k, dtype) or k == 0 or not math.isfinite(abs(k))):
        return True
    return bool(scale.scalars) and torch.is_grad_enabled() and any(s.requires_grad for s in scale.scalars)


def _compile(x: Expr, op: str, options: tuple, leaves: list[Leaf], transposed: tuple[bool, ...] | None,
             scaled: bool = False, shared: bool = False) -> _Compiled:
    """The call of ``op`` on ``x``'s structure, decided by the general path's rules: ``x`` the
    product of ``leaves``, those flagged in ``transposed`` (None: none) read as ``.mT``, times a
    scale where ``scaled`` (its form's one term has a coefficient); ``shared``: a leaf is read
    more than once (only the factored route is compiled then)."""
    batch = tuple(x.shape[:-2])
    count = math.prod(batch)
    term = canonical(x).terms[0] if scaled else None  # (where the form applies the scale)
    if op == "trace":  # one closed network (a batch's steps may be kept on its leaves)
        return _compile_trace(x, leaves, transposed) if not batch else _GENERAL
    if op == "eigvals":  # a batch's shared products are kept on its leaves (the general path)
        return _compile_eigvals(x, options, leaves, transposed, term) if not (batch or shared) else _GENERAL
    route = _ROUTE_OP[op]
    if not batch and min(x.shape) > 0 and not _cheaper_by_flops(x, route):
        factored = _compile_split_fro if op == "fro" else _compile_factored
        return factored(x, op, options, leaves, transposed, term)
    if shared:
        return _GENERAL
    if count == 0 or not _cheaper_by_flops(x, route) or (op == "fro" and _form(x).terms != 1):
        return _GENERAL  # the factored route (dense_is_cheaper, dense_norm_route)
    product = _product_plan(x, leaves, transposed, term)
    if product is None:
        return _GENERAL
    plan, work, at = product
    bound = _peak_bound(x, route)  # dense_is_cheaper's test: the bound fits, or else explain's peak
    need = max(bound if bound <= settings.ALWAYS_FITS else min(bound, _dense_peak(x, route)), work)
    wd = _work_dtype(x.dtype)

    def dense(tensors: list[torch.Tensor], scale: Term | None) -> torch.Tensor:  # _dense
        D = _contract(tensors, plan)
        D = D if scale is None else scale.times(D)
        return D if D.dtype == wd else D.to(wd)

    if op == "fro":
        real = _real(x.dtype)

        def fro(tensors: list[torch.Tensor], scale: Term | None) -> torch.Tensor:
            out = torch.linalg.matrix_norm(dense(tensors, scale))
            return out if out.dtype == real else out.to(real)

        return _Compiled(fro, need, at)
    m, n = x.shape[-2:]
    width = min(m, n, _inner_width(x))  # _dense_decompose: values past it are rounding noise
    if batch and count * min(m, n) > spectrum.HOST_VALUES:
        return _GENERAL  # the general path thresholds such a batch on the device
    finish, atol, rtol = (_batch_finisher if batch else _finisher)(x, op, options)
    scale = _eps(wd) * (width + math.sqrt(m + n))  # _dense_spectrum's floor of one product
    values_dtype = _real(wd)
    least, relative = _host_rule(x, values_dtype, atol, rtol)
    side = small_reduction(x, route)
    if side is not None:
        reduced = _reduced_call(x, leaves, transposed, side, route == "svd", term)
        if reduced is None:
            return _GENERAL
        reduced, at = reduced
    else:
        reduced = None
    shape = tuple(x.shape) if side is None else (*batch, *((m, width) if side == "right" else (width, n)))
    padding = min(m, n) - width if reduced and op == "svdvals" and options[0] else 0
    f32, cast = values_dtype == torch.float32, x.dtype != wd
    kept = _host_cut(width, least, relative, scale, f32, min(shape[-2:]) + padding)
    if not batch:
        single = _single_run(plan.run, reduced, side, route == "svd", shape, x.device, padding, kept,
                             finish, wd if cast else None)
        return _Compiled(single, need, at)
    lapack = _svdvals if route == "svdvals" else _reduced_svd
    decompose = for_shape(lapack, shape, x.device)  # split_batch's rule for this shape
    quiet, LinAlgError = mkl_quiet.quiet.call, torch.linalg.LinAlgError

    # after LAPACK every line runs with cold caches (each new function or torch op costs
    # microseconds): the least work, on the host, with the values read back at once
    def run(tensors: list[torch.Tensor], scale: Term | None) -> Any:
        if reduced is None:
            D, Q = _contract(tensors, plan), None
            D = D if scale is None else scale.times(D)
            D = D.to(wd) if cast else D
        else:
            D, Q = reduced(tensors, scale)
        try:
            out = quiet(decompose, D)
        except LinAlgError:
            return None  # the general path says which member is at fault
        S = out if route == "svdvals" else out[1]
        if Q is not None:  # the reduced matrix's vectors rotated back (_rotated_back)
            out = (out[0], S, out[2] @ Q.mH) if side == "right" else (Q @ out[0], S, out[2])
        if padding:  # exact zeros past the rank bound (the dense route zeroes its values there)
            S = torch.constant_pad_nd(S, (0, padding))
        members = (S if S.ndim == 2 else S.reshape(-1, S.shape[-1])).tolist()  # a list per member
        counts = [kept(values) for values in members]
        return None if min(counts) < 0 else finish(out, S, members, counts, max(counts))

    return _Compiled(run, need, at)


def _compile_trace(x: Expr, leaves: list[Leaf], transposed: tuple[bool, ...] | None) -> _Compiled:
    """``tr(X)`` of one square product of leaves by the general path's closed network
    (:func:`lazymat.network.closed_chain`), planned once; a call runs it on the leaves'
    tensors as stored (a leaf the network reads transposed is passed as it is, as
    ``view_value`` reads it untransposed), the call's scale applied to the value."""
    m, n = x.shape
    c = canonical(x)
    if m != n or len(c.terms) != 1 or diagonal_pieces(x) is not None:
        return _GENERAL  # (a slice of the product, a sum, a cat: the general path's)
    t = c.terms[0]
    views = [(("mT",),) if flip else () for flip in transposed or (False,) * len(leaves)]
    if len(t.factors) != len(leaves) or any(f.base is not leaf or f.ops != ops
                                            for f, leaf, ops in zip(t.factors, leaves, views, strict=True)):
        return _GENERAL
    if t.has_coefficient and rescales(t):
        return _GENERAL
    net = closed_chain(t.factors, False, x.dtype.itemsize, Shared())
    (run,) = plan_networks([net], None, terms_reserve(c.terms, (), x.dtype.itemsize))
    # each leaf as the network reads it: untransposed where its view ends in .mT and the
    # network says transposed (view_value's rule), else as viewed
    flips = [bool(ops) and not tr for ops, tr in zip(views, run.network.transposed, strict=True)]

    def trace_(tensors: list[torch.Tensor], scale: Term | None) -> torch.Tensor:
        operands = [v.mT if flip else v for v, flip in zip(tensors, flips, strict=True)]
        value = _run_planned(run, operands, {}, None, None, untransposed=True)
        return value if scale is None else scale.times(value)  # (the call's own scale)

    return _Compiled(trace_, run.peak_bytes, None, factored=True)


def _compile_split_fro(x: Expr, op: str, options: tuple, leaves: list[Leaf],
                       transposed: tuple[bool, ...] | None, term: Term | None) -> _Compiled:
    """The Frobenius norm of one matrix on the split route (``tr((L^H L)(R R^H))``, each side
    formed once) where :func:`lazymat.linalg.norms.fro_route` takes it: the sides formed from the
    leaves (:func:`_side_tensors`), their Grams and one dot product, the general path's
    operations in its order."""
    from .norms import fro_route, root_of_squares, split_squares  # norms reads compiled calls

    if x.dtype.is_complex or fro_route(x)[0] != "split":
        return _GENERAL
    made = _side_tensors(x, leaves, transposed, term, adjoint_by_copy=False)
    if made is None:
        return _GENERAL
    side, at = made
    need = min(_peak_bound(x, "matrix_norm"), peaks._peak(x, "matrix_norm"))
    real = _real(x.dtype)

    def fro(tensors: list[torch.Tensor], scale: Term | None) -> torch.Tensor:
        out = root_of_squares(split_squares(side(tensors, scale, 0), side(tensors, None, 1)))
        return out if out.dtype == real else out.to(real)

    return _Compiled(fro, need, at, factored=True)


def _compile_factored(x: Expr, op: str, options: tuple, leaves: list[Leaf],
                      transposed: tuple[bool, ...] | None, term: Term | None) -> _Compiled:
    """The call of ``op`` on one matrix that takes the factored route (``_decompose``): each side
    formed from the leaves (:func:`_side_tensors`) and factorised (:func:`_common.tall_qr`), the
    core, its rounding floor and the QRs' evidence read in one copy
    (:func:`spectrum.placed_core`), the core's LAPACK call where the general path places it, the
    values cut on the host by :func:`spectrum._host_tolerance`'s rule and the vectors rotated
    back: the general path's operations in its order, so its answers bit for bit. A side whose
    QR is not certified, or a floor or a value that is not finite, goes to the general path."""
    m, n = x.shape
    vectors = _ROUTE_OP[op] == "svd"
    if x.dtype.is_complex or outer_reductions(x, vectors) != (None, None):
        return _GENERAL  # (a shared outer leaf's QR; conjugated sides: the general path's)
    made = _side_tensors(x, leaves, transposed, term, adjoint_by_copy=False)
    if made is None:
        return _GENERAL
    side, at = made
    route = "svd" if vectors else "svdvals"
    need = min(_peak_bound(x, route), peaks._peak(x, route))  # (_in_blocks' test)
    # both sides formed into one buffer and factorised as one batch, as the general path decides
    # (under the budget of the compiling call: a later budget it does not fit goes there)
    L, R = factor(x)
    stacked = spectrum.stacks_sides(x, L, R, vectors)
    rows_r = tuple(L.shape)
    wd = _work_dtype(x.dtype)
    values_dtype = _real(wd)
    finish, atol, rtol = _finisher(x, op, options)
    rule = spectrum._host_rule(x, values_dtype, atol, rtol)
    tolerance, tall_qr, stacked_tall_qrs = spectrum._host_tolerance, _common.tall_qr, _common.stacked_tall_qrs
    placed_core, host_decomposition = spectrum.placed_core, spectrum.host_decomposition
    padding = min(m, n) - _inner_width(x) if op == "svdvals" and options[0] else 0
    lapack = _svdvals if route == "svdvals" else _reduced_svd
    LinAlgError, matmul = torch.linalg.LinAlgError, layout.matmul

    def run(tensors: list[torch.Tensor], scale: Term | None) -> Any:
        left_device = tensors[0].device
        if stacked and scale is None:  # (stacks_sides keeps a side whose value is scaled apart)
            (Q1, R1, ev1), (Q2, R2, ev2) = stacked_tall_qrs(
                lambda out, k: side(tensors, None, k, out), rows_r, wd, left_device, vectors)
        else:  # each side formed, factorised and dropped before the next
            left = side(tensors, scale, 0)
            Q1, R1, ev1 = tall_qr(left, vectors, unchecked=True)
            del left
            Q2, R2, ev2 = tall_qr(side(tensors, None, 1), vectors, unchecked=True)
        _, placed, _, (floor,), certain = placed_core(m, n, R1, R2, (ev1, ev2), route)
        if not (certain[0] and certain[1] and math.isfinite(floor)):
            return None  # the general path redoes a side by the pass-by-pass route, or answers NaN
        try:
            out = host_decomposition(lapack, placed, left_device)
        except LinAlgError:
            return None
        values = (out if route == "svdvals" else out[1]).tolist()
        tol = tolerance(values, floor, rule, values_dtype)
        if math.isnan(tol):
            return None  # (a NaN value: the general path keeps it)
        k = sum(map(tol.__lt__, values))
        out = _to_device(out, left_device)
        if vectors:
            Uc, S, Vhc = out
            out = (Uc if Q1 is None else matmul(Q1, Uc), S, Vhc if Q2 is None else matmul(Vhc, Q2.mH))
        else:
            S = out
        if padding:  # the zeros past the rank bound (svdvals' full=True)
            S, values = torch.constant_pad_nd(S, (0, padding)), values + [0.0] * padding
        return finish(out, S, values, k)

    return _Compiled(run, need, at, factored=True)


_FLOAT32 = struct.Struct("f")


def _host_cut(width: int, least: float, relative: float, scale: float, f32: bool,
              count: int | None = None) -> Callable[[list[float]], int]:
    """``kept(values)``: how many of one matrix's values read back :func:`_host_tolerance`'s
    rule keeps (``least``, ``relative`` to the largest, rounded as a float32 tensor holds it
    where ``f32``, and ``scale`` times their 2-norm: :func:`_dense_spectrum`'s floor), of those
    up to the rank bound ``width`` (LAPACK's are non-increasing: the kept ones are a prefix, at
    most ``width`` long, and the first is the largest); -1 when one is not finite (the general
    path answers such a member NaN). ``count``: how many values a matrix has (None: not known, every
    answer then takes the 2-norm)."""
    hypot, inf, pack, unpack, bisect_left, neg = (math.hypot, math.inf, _FLOAT32.pack, _FLOAT32.unpack,
                                                  bisect.bisect_left, operator.neg)
    last = width - 1
    # above ``top * over`` is above ``top`` rounded to the nearest float32 (at most half an ulp
    # away where ``top`` is at least float32's smallest normal, ``normal``): the commonest answer,
    # the whole prefix, is then decided without rounding (two C calls fewer, from cold caches)
    over, normal = (1 + 2.0**-23, 2.0**-126) if f32 else (1.0, 0.0)

    # the 2-norm of ``count`` values is at most sqrt(count) times the largest: above that bound
    # times ``scale`` (widened by 2**-40 for the roundings), a value is above the floor, and the
    # commonest answer, the whole prefix, needs no norm (a C call with the values unpacked, ~2k
    # instructions); only with the largest value at least 2**-960 (the bound's product normal)
    bound = inf if count is None else scale * math.sqrt(count) * (1 + 2.0**-40)

    def kept(values: list[float]) -> int:
        largest = values[0] if values else 0.0
        top = relative * largest if width else 0.0
        if (width and values[last] > max(least, top * over, bound * largest) and (top >= normal or not top)
                and largest > 2.0**-960 and sum(values) < inf):  # (NaN is not below inf: all finite)
            return width
        total = hypot(*values)
        if not total < inf:
            return -1
        if width and values[last] > max(least, top * over, scale * total) and (top >= normal or not top):
            return width
        if f32:  # as a float32 tensor holds it (_held)
            try:
                top = unpack(pack(top))[0]
            except OverflowError:
                top = math.copysign(inf, top)
        tol = max(least, top, scale * total)
        if width and values[last] > tol:  # the whole prefix (at the rounding's edge)
            return width
        return bisect_left(values, -tol, 0, width, key=neg)

    return kept


def _single_run(contract: Callable, reduced: Callable | None, side: str | None, vectors: bool,
                shape: tuple, device: torch.device, padding: int, kept: Callable[[list[float]], int],
                finish: Callable, cast: torch.dtype | None) -> Callable:
    """The compiled call of one matrix (no batch): ``run(tensors, scale)``, ``tensors`` the
    leaves' (as read, none recording a gradient), ``scale`` the product's (or None), as
    :func:`_compile`'s batch loop for one member, with the fewest Python frames from the
    product to the answer's finisher. ``contract`` is the
    product's plan (``ChainPlan.run``) unless ``reduced`` forms the matrix (and its ``Q``) on the
    reduced route; LAPACK (``_linalg_svd`` of the matrix of ``shape``, the values only unless
    ``vectors``) runs inside an open :mod:`~lazymat.mkl_quiet` block, with one intra-op thread
    where :func:`lazymat.cpu_batches.for_shape` says so; the values read back are cut by
    ``kept`` (:func:`_host_cut`). Every frame and torch op after the decomposition runs from
    cold caches (microseconds each): there are none but the read-back, the cut and the finisher's."""
    svd, matmul, layout_matmul = torch._linalg_svd, torch.matmul, layout.matmul
    opened, LinAlgError = mkl_quiet.quiet.blocks(), torch.linalg.LinAlgError
    plain = functools.partial(svd, full_matrices=False, compute_uv=vectors)
    threaded = for_shape(plain, shape, device)
    threaded = None if threaded is plain else threaded

    def run(tensors: list[torch.Tensor], scale: Term | None) -> Any:
        if reduced is None:
            D, Q = contract(tensors, matmul, layout_matmul), None
            if scale is not None:
                D = scale.times(D)
            if cast is not None:
                D = D.to(cast)
        else:
            D, Q = reduced(tensors, scale)
        opened.append(None)
        try:
            out = svd(D, False, vectors) if threaded is None else threaded(D)
        except LinAlgError:
            return None  # the general path says which member is at fault
        finally:
            opened.pop()
        S = out[1]
        if Q is not None:  # the reduced matrix's vectors rotated back (_rotated_back)
            out = (out[0], S, out[2] @ Q.mH) if side == "right" else (Q @ out[0], S, out[2])
        if padding:  # exact zeros past the rank bound (the dense route zeroes its values there)
            S = torch.constant_pad_nd(S, (0, padding))
        values = S.tolist()
        k = kept(values)
        return None if k < 0 else finish(out, S, values, k)

    return run

# The widest core (in entries) that eigvals checks finite on the host (its entries read back and
# summed in Python) rather than by a reduction read back: 4.4 against 5.7 us for 8 x 8, 6.7
# against 5.8 us for 12 x 12 on the 2-core CPU (warm; the reduction is one more kernel).
HOST_CHECK_ENTRIES = 128


def _reduced_call(x: Expr, leaves: list[Leaf], transposed: tuple[bool, ...] | None, side: str,
                  vectors: bool, term: Term | None = None) -> tuple[Callable, int | None] | None:
    """``(reduced, at)``: ``reduced(tensors, scale) -> (M, Q)``, :func:`reduce_small` of the
    product of ``leaves`` (as viewed) from its two sides (:func:`_side_tensors`, ``R^H``
    row-major as the general path's ``dense_side(R, True)``: the reduced matrix's GEMM then
    reads the same layouts; a view rounded otherwise: pinv's signs differed); None where a side
    is the whole product."""
    made = _side_tensors(x, leaves, transposed, term, adjoint_by_copy=True)
    if made is None:
        return None
    sides, at = made

    def reduced(tensors: list[torch.Tensor], scale: Term | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return spectrum.reduce_small(side, sides(tensors, scale, 0), sides(tensors, scale, 1), vectors)

    return reduced, at


def _side_tensors(x: Expr, leaves: list[Leaf], transposed: tuple[bool, ...] | None, term: Term | None,
                  adjoint_by_copy: bool) -> tuple[Callable, int | None] | None:
    """``(side, at)``: ``side(tensors, scale, k)``, side ``k`` of the product of ``leaves`` split
    where :func:`lazymat.core.factor` splits ``x`` (0: ``L``, 1: ``R^H``), contracted by its
    chain's plan in the dtype decompositions run in, one at a time (a caller factorises the
    first before forming the second, as the general path does). ``R^H`` is ``R`` formed and
    copied transposed where ``adjoint_by_copy`` (``tensors`` then read as viewed), else the
    product of the leaves' adjoints, right to left, from ``tensors`` as stored (``transposed``
    names those the product reads ``.mT``; real dtypes): the tall form a right side's QR reads,
    formed as ``dense_side(R, True)`` forms it, each GEMM in its stored layouts, no copy and no
    view taken twice. ``term``: ``x``'s form's one term where it has a coefficient, which the
    left side carries (``factor``), on its factor ``at`` (the general path's choice,
    :func:`lazymat.plan.scaled_operand`) or else on its value (``scale``); None where a side is
    the whole product or reads a leaf twice."""
    L, R = factor(x)
    if is_identity(L) or is_identity(R):
        return None  # a matrix that is its own core: the general path decomposes it as it stands
    j = len(canonical(L).terms[0].factors)
    right_stored = all([leaf.tensor.is_contiguous() for leaf in leaves[j:]])
    if adjoint_by_copy and (x.dtype.is_complex or not right_stored):
        return None  # (R^H copied from R rounds as dense_side's product of adjoints only so)
    if not 0 < j < len(leaves) or any(len(set(part)) != len(part) for part in (leaves[:j], leaves[j:])):
        return None  # (a side reading a leaf twice: the general path shares its products)
    flips = transposed or (False,) * len(leaves)
    shapes = [(*leaf.shape[:-2], leaf.shape[-1], leaf.shape[-2]) if flips[i] else tuple(leaf.shape)
              for i, leaf in enumerate(leaves)]
    right = shapes[j:] if adjoint_by_copy else [(*s[:-2], s[-1], s[-2]) for s in reversed(shapes[j:])]
    plans = [plan_chain(tuple(part), x.dtype.itemsize) if len(part) > 1 else None
             for part in (shapes[:j], right)]
    at = None
    if term is not None and plans[0] is not None:
        at = scaled_operand(canonical(L).terms[0], plans[0])
    wd = _work_dtype(x.dtype)
    cast = x.dtype != wd
    left_flips, right_flips = flips[:j], [not f for f in reversed(flips[j:])]

    def formed(tensors: list[torch.Tensor], plan: ChainPlan | None, scale: Term | None = None
               ) -> torch.Tensor:
        t = tensors[0] if plan is None else _contract(tensors, plan)
        t = t if scale is None else scale.times(t)
        return t.to(wd) if cast else t

    def side(tensors: list[torch.Tensor], scale: Term | None, k: int,
             out: torch.Tensor | None = None) -> torch.Tensor | None:
        if adjoint_by_copy:
            return formed(tensors[:j], plans[0], scale) if k == 0 else formed(
                tensors[j:], plans[1]).mH.contiguous()
        if k == 0:
            operands = [t.mT if f else t for t, f in zip(tensors[:j], left_flips, strict=True)]
        else:
            operands = [t.mT if f else t for t, f in zip(reversed(tensors[j:]), right_flips, strict=True)]
        if out is not None:  # (a stacked side: formed by a product, no scale on its value, no cast)
            return _common.run_into(operands, plans[k], out)
        return formed(operands, plans[k], scale if k == 0 else None)

    return side, at


def _product_plan(x: Expr, leaves: list[Leaf], transposed: tuple[bool, ...] | None, scaled: Term | None
                  ) -> tuple[ChainPlan, int, int | None] | None:
    """``(plan, work bytes, at)`` by which :func:`lazymat.execute.evaluate` runs the product of
    ``leaves`` (``transposed``: those read as ``.mT``) that ``x`` is: a plain chain without a
    batch by the chain's plan (execute's fresh path); else by the plan of its form's single
    term, every step through ``layout.matmul`` where the leaves' product cache would keep a
    step (``_run_term``'s loop; the compiled call keeps nothing), its coefficient (``scaled``:
    the term, where it has one) on the factor ``at`` (:func:`lazymat.plan.scaled_operand`), or
    on the product's value (None). None when the form is not those leaves as those views, in
    order."""
    if scaled is None and transposed is None and (len(x.shape) == 2 or math.prod(x.shape[:-2]) == 1):
        plan = plan_chain(tuple([tuple(leaf.shape) for leaf in leaves]), x.dtype.itemsize)
        return plan, plan.work_bytes, None
    c = canonical(x)
    term = c.terms[0] if len(c.terms) == 1 else None
    views = [(("mT",),) if flip else () for flip in transposed or (False,) * len(leaves)]
    if (term is None or term.has_coefficient != (scaled is not None) or len(term.factors) != len(leaves)
            or any(f.base is not leaf or f.ops != ops or not (f.plain or ops)
                   for f, leaf, ops in zip(term.factors, leaves, views, strict=False))):
        return None
    whole = plan_canon(c)
    plan = whole.terms[0]
    found, skip, keep = leaf_products(term, plan)
    if found or skip:
        return None  # a product cached on the leaves (holds_none said there is none)
    at = None if scaled is None else scaled_operand(term, plan)  # (_formed_term's choice)
    if keep:
        plan = dataclasses.replace(plan, plain=(False,) * len(plan.plain))
    return plan, whole.work_bytes, at


def _batch_finisher(x: Expr, op: str, options: tuple) -> tuple[Callable, Any, Any]:
    """:func:`_finisher` for a batch: ``finish(out, S, members, counts, k)``, ``members`` the
    values read back (a list per member), ``counts`` the number of values each keeps and ``k``
    the most; the answers are the general path's, made by
    its own expressions (:func:`_leading`'s cut and zeros, :func:`_pad`, :func:`_owned`)."""
    m, n = x.shape[-2:]
    p = min(m, n)
    batch = tuple(x.shape[:-2])
    dtype, real = x.dtype, _real(x.dtype)

    def keep(S: torch.Tensor, counts: list[int], k: int) -> torch.Tensor | None:
        """The mask of the kept values among the ``k`` leading, None when every member keeps ``k``."""
        if counts.count(k) == len(counts):
            return None
        rows = [[j < c for j in range(k)] for c in counts]
        return torch.tensor(rows, device=S.device).reshape(*batch, k)

    def leading(S: torch.Tensor, counts: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = keep(S, counts, k)
        S = S.narrow(-1, 0, k) if k < S.shape[-1] else S  # (p values, or r on the reduced route)
        return (S if mask is None else torch.where(mask, S, 0)), mask

    def on_host(S: torch.Tensor, numbers: list[float]) -> torch.Tensor:
        """One number per member, worked out on the host (exact in ``S``'s dtype), batch-shaped:
        one op when every member has the same (a factory from a list parses it in Python)."""
        first = numbers[0]
        if all(v == first for v in numbers) and first == first:  # (NaN != NaN: by the list)
            return torch.full(batch, first, dtype=S.dtype, device=S.device)
        return torch.tensor(numbers, dtype=S.dtype, device=S.device).reshape(batch)

    if op == "svdvals":
        (full,) = options

        def svdvals_(out, S, members, counts, k):
            if full and k < p and counts.count(k) == len(counts):
                cut = max(values[k] for values in members)  # the largest value cut
                if k == 0 or cut < min(values[k - 1] for values in members):
                    # every value not above it is cut: zeroed by one op (the host's decision,
                    # with a threshold the values' dtype holds exactly); none when all are zeros
                    if cut > 0:  # (the reduced route's padding)
                        torch.nn.functional.threshold_(S, cut, 0.0)
                    return S if S.dtype == real else S.to(real)
            if not full and k < S.shape[-1] and counts.count(k) == len(counts):
                S = torch.narrow_copy(S, -1, 0, k)  # the k leading, copied by one op
                return S if S.dtype == real else S.to(real)
            S = leading(S, counts, k)[0]
            # a cut copied, as _owned copies it; LAPACK's own tensor is the caller's
            S = _pad(S, p, keep_nan=False) if full and k < p else S.contiguous()
            return S if S.dtype == real else S.to(real)

        return svdvals_, None, None
    if op == "matrix_rank":

        def rank(out, S, members, counts, k):
            if counts.count(k) == len(counts):
                return torch.full(batch, k, dtype=torch.int64, device=S.device)
            return torch.tensor(counts, dtype=torch.int64, device=S.device).reshape(batch)

        return rank, *options
    if op == "norm":
        (ord,) = options

        def norm(out, S, members, counts, k):
            if ord == "nuc":  # summed by torch, in its order
                value = leading(S, counts, k)[0].sum(-1)
            elif ord == 2 and min(counts) > 0 or ord == -2 and min(counts) == p:  # a value of each, one op
                value = S.select(-1, 0 if ord == 2 else p - 1)
            else:  # 2: the largest kept value, or 0; -2: the smallest of min(m, n), 0 past the rank
                value = on_host(S, [(v[0] if c else 0.0) if ord == 2 else (v[p - 1] if c == p else 0.0)
                                    for v, c in zip(members, counts, strict=True)])
            return value if value.dtype == real else value.to(real)

        return norm, None, None
    if op == "cond":
        (smallest_over_largest,) = options

        def cond_(out, S, members, counts, k):  # the ratio of the extremes of the kept values padded to p
            ratios = []
            for v, c in zip(members, counts, strict=True):
                low, high = (v[p - 1] if c == p else 0.0), (v[0] if c else 0.0)
                a, b = (low, high) if smallest_over_largest else (high, low)
                # one rounding of a double quotient of two floats is the float quotient
                ratios.append(math.nan if a == b == 0 else math.inf if b == 0 else a / b)
            value = on_host(S, ratios)
            return value if value.dtype == real else value.to(real)

        return cond_, 0.0, 0.0
    if op == "svd":
        same = dtype == _work_dtype(dtype)  # LAPACK's answers are the caller's as they stand

        def svd_(out, S, members, counts, k):
            U, _, Vh = out
            S = leading(S, counts, k)[0]
            if k < U.shape[-1]:
                U, Vh = U.narrow(-1, 0, k), Vh.narrow(-2, 0, k)
            return _SVD((U, S, Vh) if same else (U.to(dtype), S.to(real), Vh.to(dtype)))

        return svd_, None, None
    if op == "pinv":
        dense = _pinv_is_dense(x)

        def pinv_(out, S, members, counts, k):
            U, _, Vh = out
            S, mask = leading(S, counts, k)
            if k < U.shape[-1]:
                U, Vh = U.narrow(-1, 0, k), Vh.narrow(-2, 0, k)
            return _pinv_of(U, S, Vh, dtype, dense, mask is not None)

        return pinv_, *options
    raise ValueError(f"no compiled call for {op!r}")


def _finisher(x: Expr, op: str, options: tuple) -> tuple[Callable, Any, Any]:
    """``(finish, atol, rtol)`` of a compiled call on the singular values: the tolerances its
    rule takes, and ``finish(out, S, values, k)``, its answer from LAPACK's output ``out`` (``S``
    its values, ``values`` those read back), keeping the ``k`` leading ones. The answers are
    the general path's, as LAPACK's own tensors (nothing is cached, so an answer is never
    shared): cut by ``resize_``, which keeps the leading elements of a contiguous tensor and
    costs less than a view (every op after LAPACK runs with cold caches), or views of them made
    by ``as_strided`` with the tensor's own strides (one op where ``narrow`` is two, a slice and
    the strided view: 7.6 us less per svd from cold caches on the 2-core CPU)."""
    m, n = x.shape
    p = min(m, n)
    dtype, real = x.dtype, _real(x.dtype)  # the closures hold no expression (nor its tensors)
    if op == "svdvals":
        (full,) = options

        def svdvals_(out, S, values, k):
            if k < p and full and values[k] == 0:
                pass  # every value past the k kept is zero already (the reduced route's padding)
            elif k < p and full and (k == 0 or values[k - 1] > values[k]):
                # the values past the k kept are zeros: those not above the largest of them (the
                # host's decision, with a threshold the values' dtype holds exactly)
                torch.nn.functional.threshold_(S, values[k], 0.0)
            elif k < p and full:  # the first value cut equals the last kept (past the rank bound)
                S.narrow(-1, k, p - k).zero_()
            elif k < len(values):  # or cut (p values, or r on the reduced route)
                S.resize_(k)
            return S if S.dtype == real else S.to(real)

        return svdvals_, None, None
    if op == "matrix_rank":
        return (lambda out, S, values, k: torch.full((), k, dtype=torch.int64, device=S.device)), *options
    if op == "norm":
        (ord,) = options

        def norm(out, S, values, k):
            if ord == "nuc":
                value = S.resize_(k).sum(-1)
            elif ord == 2:  # the largest kept value, or 0
                value = S.resize_(()) if k else S.new_zeros(())
            else:  # -2: the smallest of min(m, n), 0 past the rank
                value = S[p - 1] if k == p else S.new_zeros(())
            return value if value.dtype == real else value.to(real)

        return norm, None, None
    if op == "cond":
        (smallest_over_largest,) = options

        def cond_(out, S, values, k):  # the ratio of the extremes of the kept values padded to p
            low, high = (values[p - 1] if k == p else 0.0), (values[0] if k else 0.0)
            a, b = (low, high) if smallest_over_largest else (high, low)
            # one rounding of a double quotient of two floats is the float quotient
            ratio = math.nan if a == b == 0 else math.inf if b == 0 else a / b
            value = torch.full((), ratio, dtype=S.dtype, device=S.device)
            return value if value.dtype == real else value.to(real)

        return cond_, 0.0, 0.0
    if op == "svd":
        same = dtype == _work_dtype(dtype)  # LAPACK's answers are the caller's as they stand

        def svd_(out, S, values, k):
            U, S, Vh = out
            if k < len(values):  # the leading triplets (of p, or r on the reduced route)
                U, S, Vh = U.as_strided((m, k), U.stride()), S.resize_(k), Vh.as_strided((k, n), Vh.stride())
            return _SVD((U, S, Vh) if same else (U.to(dtype), S.to(real), Vh.to(dtype)))

        return svd_, None, None
    if op == "pinv":
        dense = _pinv_is_dense(x)

        def pinv_(out, S, values, k):
            U, S, Vh = out
            if k < len(values):  # (as svd_)
                U, S, Vh = U.as_strided((m, k), U.stride()), S.resize_(k), Vh.as_strided((k, n), Vh.stride())
            return _pinv_of(U, S, Vh, dtype, dense, False)

        return pinv_, *options
    raise ValueError(f"no compiled call for {op!r}")


def _compile_eigvals(x: Expr, options: tuple, leaves: list[Leaf], transposed: tuple[bool, ...] | None,
                     term: Term | None = None) -> _Compiled:
    """eigvals of a single product from the core ``R @ L`` (:func:`_rotated_core`): the leaves
    rotated at :func:`lazymat.core.factor`'s split, contracted by their plan (``term``: ``x``'s
    form's one term where it has a coefficient, applied where the rotated term's evaluation
    applies it, :func:`lazymat.plan.scaled_operand`), checked finite
    (LAPACK's eigenvalue routines are not trusted with NaN; a core of at most
    :data:`HOST_CHECK_ENTRIES` entries read back and summed on the host), then
    :func:`_core_eigen`'s answer: on the CPU its order found on the host (:func:`_host_order`)."""
    (full,) = options
    n = x.shape[-1]
    if x.shape[-2] != n:
        return _GENERAL  # the general path raises
    L, R = factor(x)
    j = 0 if is_identity(L) else len(leaves) if is_identity(R) else len(canonical(L).terms[0].factors)
    order = [*range(j, len(leaves)), *range(j)]
    shapes = [(leaf.shape[-1], leaf.shape[-2]) if transposed and transposed[i] else tuple(leaf.shape)
              for i, leaf in enumerate(leaves)]  # one matrix: the leaves have no batch dims
    plan = plan_chain(tuple([shapes[i] for i in order]), x.dtype.itemsize)
    at = None
    if term is not None:
        at = scaled_operand(term, plan, shapes=[shapes[i] for i in order])
        at = None if at is None else order[at]
    wd, out_dtype = _work_dtype(x.dtype), _complex(x.dtype)
    if x.device.type != "cpu":  # the core's placement (_core_device) is asked on every call

        def placed(tensors: list[torch.Tensor], scale: Term | None) -> torch.Tensor | None:
            core = _contract([tensors[i] for i in order], plan)
            core = core if scale is None else scale.times(core)
            core = core if core.dtype == wd else core.to(wd)
            if not math.isfinite(torch.linalg.vector_norm(core)):
                return None  # the general path finds the member and answers it NaN
            (vals,) = _core_eigen(core, False)
            vals = _pad(vals, n, keep_nan=False) if full else vals  # finite core: no NaN member
            return vals if vals.dtype == out_dtype else vals.to(out_dtype)

        return _Compiled(placed, plan.work_bytes, at)
    r = shapes[order[0]][0]
    eigvals_ = for_shape(torch.linalg.eigvals, (r, r), x.device)  # _small's call for the CPU
    cast, finite = x.dtype != wd, math.isfinite
    on_host = r * r <= HOST_CHECK_ENTRIES
    finite_sum = cmath.isfinite if wd.is_complex else finite  # (a complex core's entries sum to a complex)
    norm = torch.linalg.vector_norm
    zeros = [0j] * (n - r) if full else []
    tie, tiny = 4 * torch.finfo(wd).eps, torch.finfo(wd).tiny  # (_host_order)

    # after LAPACK every op runs from cold caches: the values are read back once, _sort_desc's
    # order (a stable sort by descending modulus) and _pad's zeros are made on the host, and the
    # answer is one tensor made from the list (values read back exactly)
    contract, matmul, layout_matmul = plan.run, torch.matmul, layout.matmul  # (leaves read detached)

    def run(tensors: list[torch.Tensor], scale: Term | None) -> torch.Tensor | None:
        core = contract([tensors[i] for i in order], matmul, layout_matmul)
        core = core if scale is None else scale.times(core)
        core = core.to(wd) if cast else core
        if not (finite_sum(sum(map(sum, core.tolist()))) if on_host else finite(norm(core))):
            return None  # the general path finds the member and answers it NaN
        vals = eigvals_(core)
        values = vals.tolist()
        moduli = list(map(abs, values))
        if not finite(sum(moduli)):
            return None  # (a solver's inf or NaN: the general path answers as it does)
        ranked = _host_order(values, moduli, tie, tiny)
        if ranked is None:  # a near tie: ordered by the moduli torch computes, as _sort_desc
            moduli = vals.abs().tolist()
            ranked = sorted(range(r), key=moduli.__getitem__, reverse=True)
        return torch.tensor([*map(values.__getitem__, ranked), *zeros], dtype=out_dtype)

    return _Compiled(run, plan.work_bytes, at)


def _host_order(values: list[complex], moduli: list[float], tie: float, tiny: float) -> list[int] | None:
    """The indices of ``values`` by descending modulus, ties in the solver's order: the order
    :func:`_sort_desc`'s stable sort gives, from ``moduli`` computed on the host (``abs``, a
    double ``hypot``). torch's moduli differ from these by an ulp of the dtype at most, so they
    order alike any two that differ by more than ``tie`` (relative; ``tiny``, the dtype's
    smallest normal, covers subnormal moduli), and tie alike two with the same ``|re|`` and
    ``|im|`` (a conjugate pair, ``+-a``); None for any other near tie: torch's own moduli must
    decide it."""
    ranked = sorted(range(len(values)), key=moduli.__getitem__, reverse=True)
    for i, j in itertools.pairwise(ranked):
        if moduli[i] - moduli[j] <= tie * (moduli[i] + tiny):
            a, b = values[i], values[j]
            if a != b.conjugate() and (abs(a.real) != abs(b.real) or abs(a.imag) != abs(b.imag)):
                return None  # (a conjugate pair, the commonest tie, is asked first)
    return ranked
