"""Route peaks: the memory a call's route needs at its widest, predicted by ``explain`` once
per structure (``_PEAKS``), and whether it fits the memory budget."""
from __future__ import annotations

import math
from collections import OrderedDict

from .. import settings
from ..core import assumes_qrs
from ..execute import device_budget
from ..expr import Expr
from ..rewrite import Nested, canonical
from ..settings import BudgetTooSmall
from . import costs
from ._common import _form


def _peak_bound(x: Expr, op: str, k: int = 0) -> int:
    """A generous upper bound on the peak of any route of ``op`` on ``x``: every value a route
    holds is at most ``batch x D x D`` (``D`` the largest matrix dim of any factor of the
    canonical form, nested blocks included) in at most 16-byte elements, and fewer than
    ``factors + 8`` are live at once (the factors' products, the dense sides, their QRs, the
    core and its decomposition); a diagonal's network may keep one more dim; a solve's values
    also ``2 D k`` more elements for ``k`` right-hand sides and their solutions."""
    form = _form(x)
    bound = (form.factors + 8) * math.prod(x.shape[:-2]) * (form.dim * form.dim + 2 * form.dim * k) * 16
    return bound * max(x.shape[-2:], default=1) if op == "diagonal" else bound


# Predicted peaks by the structure and shapes of an expression (no tensors held): a new
# expression of the same shapes, built for every call, asks explain only once.
_PEAKS: OrderedDict = OrderedDict()
_PEAKS_KEPT = 1024


def _structure(x: Expr) -> tuple | None:
    """What the predicted peak depends on: per term, its coefficient (the number and how many
    0-dim tensors: a scaled product's route copies a factor or the product), its factors' shapes
    and views, which factors read the same leaf, that leaf's shape (a view of a larger leaf may
    copy, and bounds the products kept on it) and whether it holds cached work (a QR or a
    product the route then reads for free); None when a factor is a nested block (not keyed).
    Leaves are numbered across terms: a leaf two terms share is a common factor the route may
    take out."""
    terms = []
    bases: dict[int, int] = {}
    for t in canonical(x).terms:
        factors = []
        for f in t.factors:
            if isinstance(f.base, Nested):
                return None
            base = f.base
            factors.append((f.shape, f.ops, bases.setdefault(id(base), len(bases)), base.shape,
                            bool(base._cache_dict)))
        # the term's scale: where the route applies it (a factor's copy, the product, rescaled
        # steps for a far one) follows its value, and 0-dim tensors scale the product
        terms.append((t.coef, len(t.scalars), tuple(factors)))
    return (tuple(x.shape), str(x.dtype), x.device.type, tuple(terms))


def _peak(x: Expr, op: str) -> int:
    """Predicted peak bytes of ``op`` on ``x`` (see :func:`_route_costs`)."""
    return _route_costs(x, op)[0]


def _route_costs(x: Expr, op: str) -> tuple[int, int]:
    """``(peak bytes, FLOPs)`` of ``op`` on ``x`` as :func:`lazymat.explain` schedules it (the
    route that runs, dense for a small matrix); cached on ``x`` and by its structure. Where no
    slicing of the route fits the budget, those of the route at the least budget that runs it:
    a peak over the budget (a block that does not fit), never an error, so that the block
    search and the minimum it names weigh every block alike."""
    # the settings that choose the route: the budget (fro_route), the QR and how the sides stack
    chosen = tuple(settings.get(name) for name in ("memory_budget", "qr", "qr_sides"))
    if assumes_qrs():  # (weighed as if QRs were kept: a block's cost, kept nowhere)
        return _scheduled_costs(x, op)
    hit = x._cache.get(("peak", op, chosen))
    if hit is not None:
        return hit
    shape_key = _structure(x)
    # (DENSE_MAX_ELEMENTS decides routes: tests patch it, and a peak kept under another is not this one)
    key = None if shape_key is None else (op, chosen, costs.DENSE_MAX_ELEMENTS, shape_key)
    hit = None if key is None else _PEAKS.get(key)
    if hit is None:
        hit = _scheduled_costs(x, op)
        if key is not None:
            _PEAKS[key] = hit
            if len(_PEAKS) > _PEAKS_KEPT:
                _PEAKS.popitem(last=False)
    x._cache[("peak", op, chosen)] = hit
    return hit


def _scheduled_costs(x: Expr, op: str) -> tuple[int, int]:
    """:func:`_route_costs`, not kept."""
    from ..explain import whole_batch  # explain reads linalg's routes: imported on use

    try:  # the route taken (dense for small matrices) on the whole batch, sliced as it runs
        route = whole_batch(x, op).planned
    except BudgetTooSmall as err:  # no slicing fits: the route at its least budget, which does not fit
        route = whole_batch(x, op, memory_budget=err.minimum).planned
    return route.peak_bytes, route.flops


def _fits(x: Expr, bound: int) -> tuple[bool, int | None]:
    """``(True, None)`` when ``bound`` bytes fit without asking the device; else whether they
    fit the active budget, and that budget (the device's free memory is read at most once a
    second, :func:`lazymat.execute.device_budget`: on CUDA each read costs a driver call and
    two walks of the allocator's statistics, and a call asks several times)."""
    if bound <= settings.ALWAYS_FITS and settings.get("memory_budget") is None:
        return True, None
    budget = device_budget(x.device)
    return bound <= budget, budget
