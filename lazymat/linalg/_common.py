"""Helpers every route shares: work dtypes, an expression's factor form read once, results cached
against the leaves' versions, and where a small core is decomposed (``CPU_CORE_LIMIT``: the
CPU round trip for an expression on a GPU, packed into one transfer each way)."""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy
import torch
from torch.autograd import forward_ad

from .. import layout, settings
from ..caching import caches
from ..core import dense_side, factor, is_identity
from ..cpu_batches import split_batch
from ..execute import _Memo, view_value
from ..expr import Expr, Leaf, MatMul, tensor_state
from ..plan import plan_canon, rescales, scaled_operand
from ..qr import qr, qr_unchecked
from ..rewrite import Nested, canonical, leaf_chain

# Widest core decomposed on the CPU when the expression lives on a GPU, per operation.
# Measured on an H100 against its host CPU (benchmarks/results/h100-small-cores.txt): the
# CPU round trip wins for eigenvalues up to r = 256, singular values up to 512, full SVDs
# up to 128; except that batches of cores up to 32 wide go to cuSOLVER's batched Jacobi
# SVD, 7-16x faster on the GPU.
CPU_CORE_LIMIT = {"eig": 256, "svdvals": 512, "svd": 128}


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Decompositions run in float32 at least (16- and 8-bit floats have no LAPACK kernels)."""
    if dtype.is_floating_point and dtype.itemsize < 4:
        return torch.float32
    return dtype


def _real(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real()


def _complex(dtype: torch.dtype) -> torch.dtype:
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class _Form(NamedTuple):
    """What the linalg routes read off ``x``'s canonical form, in one walk (nested blocks
    included) cached on ``x``: ``data``, the tensors it reads (leaf tensors and tensor
    scalars); ``factors``, how many factors; ``dim``, the largest matrix dim of any factor or
    of ``x``; ``nested``, whether a top-level factor is a nested block; ``terms``, how many
    top-level terms; ``width``, a single product's narrowest chain dim (None for a sum);
    ``key``, for a single product of leaf views, what every route decision on it reads
    (shape, dtype, device, chain dims, each factor's batch shape: factor's split weighs where
    the batch sits; None otherwise: see :func:`dense_is_cheaper`)."""

    data: tuple[torch.Tensor, ...]
    factors: int
    dim: int
    nested: bool
    terms: int
    width: int | None
    key: tuple | None = None


def _form(x: Expr) -> _Form:
    hit = x._cache.get("form")
    if hit is None:
        hit = x._cache["form"] = _read_form(x)
    return hit


def _read_form(x: Expr) -> _Form:
    shape = x.shape
    unbatched = len(shape) == 2 or math.prod(shape[:-2]) == 1  # as execute's fresh path
    leaves = leaf_chain(x) if type(x) is MatMul and unbatched else None
    if leaves is not None and all(f.tensor is not None for f in leaves):
        # a run of @ over data leaves: its form is those leaves as plain views (rewrite's
        # _leaf_product), read here without building it, so a first evaluation stays fresh
        dims = (leaves[0].shape[-2], *(f.shape[-1] for f in leaves))
        data = tuple({id(f.tensor): f.tensor for f in leaves}.values())
        key = (tuple(x.shape), x.dtype, x.device, dims, tuple([f.shape[:-2] for f in leaves]))
        return _Form(data, len(leaves), max(dims), False, 1, min(dims), key)
    top = canonical(x)
    if len(top.terms) == 1:  # a single product of leaf views (most calls): one short pass
        t = top.terms[0]
        tensors = [f.base.tensor for f in t.factors if type(f.base) is Leaf and f.base.tensor is not None]
        if len(tensors) == len(t.factors):
            dims = tuple(t.dims)
            data = tuple({id(v): v for v in (*tensors, *t.scalars)}.values())
            key = (tuple(x.shape), x.dtype, x.device, dims, tuple([f.shape[:-2] for f in t.factors]))
            return _Form(data, len(tensors), max(dims), False, 1, min(dims), key)
    found: dict[int, torch.Tensor] = {}
    count, dim, width = 0, max(x.shape[-2:], default=1), None
    nested, todo = False, [top]
    while todo:
        canon = todo.pop()
        for t in canon.terms:
            count += len(t.factors)
            dims = t.dims  # the factors' matrix dims are the chain's
            dim = max(dim, *dims)
            if canon is top and len(top.terms) == 1:
                width = min(dims)
            for s in t.scalars:
                found[id(s)] = s
            for f in t.factors:
                base = f.base
                if type(base) is Leaf:  # not an identity marker (core.Identity) nor a block
                    if base.tensor is not None:
                        found[id(base.tensor)] = base.tensor
                elif isinstance(base, Nested):
                    nested = nested or canon is top
                    todo.extend(base.parts)
    return _Form(tuple(found.values()), count, dim, nested, len(top.terms), width)


def _data(x: Expr) -> tuple[torch.Tensor, ...]:
    """The tensors ``x`` reads (:class:`_Form`; fixed by its structure)."""
    return _form(x).data


def _needs_grad(x: Expr) -> bool:
    """Whether derivatives flow through ``x``'s tensors: gradients recorded, or forward-mode
    ones (``torch.func.jvp``/``jacfwd``, a ``torch.autograd.forward_ad.dual_level``), whose
    tangents do not set ``requires_grad``. The differentiable routes are taken then: the others
    decide on values read back and write results in place, which loses tangents (a wrong jvp)."""
    forward = forward_ad._current_level >= 0
    return forward or torch.is_grad_enabled() and any(t.requires_grad for t in _data(x))


def _cached(x: Expr, name: str, compute):
    """``compute()`` cached on ``x`` under ``name`` until a leaf tensor changes (``tensor_state``)
    or the caller writes into the answer handed out (its version counter; one made under
    ``torch.inference_mode`` has none and is not reused). A hit hands out a copy: two answers
    are never one tensor, which a write into either would change."""
    data = _form(x).data
    if not caches(data):
        return compute()
    state = tuple([tensor_state(t) for t in data])
    hit = x._cache.get(name)
    if hit is not None and hit[0] == state and hit[2] is not None and hit[2] == _versions(hit[1]):
        value = hit[1]
        return tuple(t.clone() for t in value) if isinstance(value, tuple) else value.clone()
    value = compute()
    x._cache[name] = (state, value, _versions(value))
    return value


def _versions(value: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[int, ...] | None:
    """The version counters of an answer (a tensor or a tuple of them), which a write into it
    advances; None when one has no counter (made under ``torch.inference_mode``)."""
    tensors = value if isinstance(value, tuple) else (value,)
    if any(t.is_inference() for t in tensors):
        return None
    return tuple(t._version for t in tensors)


def _int_arg(value: Any, what: str) -> int:
    """``value`` as a Python int, as torch takes one (an int, a NumPy int, a 0-dim integer tensor;
    not a bool); a TypeError naming ``what`` (``"matrix_power: n"``) and the value otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None


def _square(x: Expr, what: str) -> None:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{what} needs a square matrix, got shape {tuple(x.shape)}")


def _core_device(t: torch.Tensor, op: str) -> torch.device:
    """Where to decompose the small core ``t``: by ``CPU_CORE_LIMIT`` under
    ``lm.config(small_cores="auto")``, always round-tripped through the CPU under ``"cpu"``,
    on the expression's device under ``"device"``."""
    return core_place(t.shape, t.device, op)


def core_place(shape: tuple, device: torch.device, op: str) -> torch.device:
    """:func:`_core_device` of a core of ``shape`` on ``device`` (before it is formed)."""
    placement = settings.get("small_cores")
    if device.type == "cpu" or placement == "device":
        return device
    if placement == "cpu":
        return torch.device("cpu")
    r = max(shape[-2:])
    batched_jacobi = op != "eig" and r <= 32 and math.prod(shape[:-2]) > 1
    return torch.device("cpu") if r <= CPU_CORE_LIMIT[op] and not batched_jacobi else device


def _small(fn, core: torch.Tensor, op: str):
    """``fn(core)`` (a decomposition, tensor or tuple out) where ``_core_device`` places it, a
    batch on the CPU split across threads (:mod:`lazymat.cpu_batches`); back on ``core``'s device."""
    where = _core_device(core, op)
    out = split_batch(fn, core if where == core.device else core.to(where))
    return out if where == core.device else _to_device(out, core.device)


def _placed_with(core: torch.Tensor, op: str,
                 extras: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``core`` where ``_core_device`` places it, and ``extras`` (tensors on its device) on the
    host: brought together in one copy (each read of a device waits for its queue to drain)."""
    if core.device.type == "cpu":
        return core, list(extras)
    moved = _core_device(core, op) != core.device
    host = list(_unpacked(*_moved(_packed((core, *extras) if moved else tuple(extras)), "cpu")))
    return (host.pop(0) if moved else core), host


def on_host(parts: list[torch.Tensor]) -> list[numpy.ndarray]:
    """``parts`` (tensors on one device, not on the host) read back in one copy, as NumPy arrays
    (views of one buffer): the host's work on small factors then costs NumPy's microseconds,
    not a torch call's tens."""
    buffer, layout = _moved(_packed(tuple(parts)), "cpu")
    raw = buffer.numpy()
    arrays = []
    for dtype, shape, flipped, start, size in layout:
        a = raw[start:start + size]
        a = (a if dtype == buffer.dtype else a.view(_numpy_dtype(dtype))).reshape(shape)
        arrays.append(a.swapaxes(-1, -2) if flipped else a)
    return arrays


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> numpy.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def _moved(packed: tuple[torch.Tensor, list[tuple]],
           device: torch.device | str) -> tuple[torch.Tensor, list[tuple]]:
    buffer, layout = packed
    return buffer.to(device), layout


def _to_device(out: torch.Tensor | tuple[torch.Tensor, ...],
               device: torch.device) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Host tensors moved to ``device`` in one copy (a copy from the host's pageable memory
    waits for it, so three factors moved one by one wait three times); each keeps its layout
    (LAPACK's factors are column-major)."""
    if isinstance(out, torch.Tensor):
        return out.to(device)
    if all(o.device == device for o in out):
        return out
    return _unpacked(*_moved(_packed(out), device))


def _packed(parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[tuple]]:
    """``parts`` as one buffer and the layout :func:`_unpacked` reads them back by: in the first
    part's dtype when every part has its element size (no byte views), else as bytes, wider
    elements first, so that every part starts at a multiple of its element size (as a view in
    its dtype needs) with no padding. A column-major matrix is stored as its transpose,
    row-major, and so keeps its strides."""
    size = parts[0].element_size()
    unit = parts[0].dtype if all(p.element_size() == size for p in parts) else torch.uint8
    order = range(len(parts)) if unit != torch.uint8 else sorted(
        range(len(parts)), key=lambda i: -parts[i].element_size())
    layout, chunks = [None] * len(parts), []
    start = 0
    for i in order:
        p = parts[i]
        flipped = _column_major(p)
        if flipped:  # its data as stored, one view (no transpose taken to test or to read it)
            shape = (*p.shape[:-2], p.shape[-1], p.shape[-2])
            flat = p.as_strided((p.numel(),), (1,))
        else:
            shape = p.shape
            flat = p.contiguous().view(-1)
        flat = flat if flat.dtype == unit else flat.view(unit)
        layout[i] = (p.dtype, shape, flipped, start, len(flat))
        chunks.append(flat)
        start += len(flat)
    return torch.cat(chunks), layout


def _column_major(p: torch.Tensor) -> bool:
    """Whether ``p`` is not contiguous but ``p.mT`` is (LAPACK's column-major factors), read off
    its strides: asking ``p.mT`` costs a dispatch, tens of µs on a GPU machine's host."""
    if p.ndim < 2 or p.is_contiguous():
        return False
    shape, stride = list(p.shape), list(p.stride())
    shape[-2:], stride[-2:] = shape[:-3:-1], stride[:-3:-1]
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride), strict=True):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _unpacked(buffer: torch.Tensor, layout: list[tuple]) -> tuple[torch.Tensor, ...]:
    """The parts :func:`_packed` put in ``buffer``, as views of it, in their order."""
    parts = []
    for dtype, shape, flipped, start, size in layout:
        t = buffer[start:start + size]
        t = (t if dtype == buffer.dtype else t.view(dtype)).view(shape)
        parts.append(t.mT if flipped else t)
    return tuple(parts)


def _side_qr(side: Expr, adjoint: bool, vectors: bool, dtype: torch.dtype,
             unchecked: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, tuple | None]:
    """QR of one tall side (``adjoint``: of ``side^H``, a right factor's tall form), formed in
    ``dtype`` and dropped once factorised (only ``Q``, when ``vectors``, and ``R`` are kept),
    with None, or (``unchecked``) :func:`lazymat.qr.qr_unchecked`'s evidence, still on the
    device. A side that is not tall (``rows <= r``, such as a pair's ``r x r`` block after a
    shared leaf's QR) is its own factor: ``(None, side, None)``, ``Q = I`` (see
    :func:`core.side_qr_flops`)."""
    return tall_qr(dense_side(side, adjoint).to(dtype), vectors, unchecked)


def tall_qr(tall: torch.Tensor, vectors: bool,
            unchecked: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, tuple | None]:
    """:func:`_side_qr` of a side already formed: ``(Q or None, R, evidence or None)``."""
    if tall.shape[-2] <= tall.shape[-1]:
        return None, tall, None
    mode = "reduced" if vectors else "r"
    return qr_unchecked(tall, mode) if unchecked else (*qr(tall, mode), None)


def stacked_tall_qrs(form_into: Callable[[torch.Tensor, int], Any], shape: tuple, dtype: torch.dtype,
                     device: torch.device, vectors: bool
                     ) -> list[tuple[torch.Tensor | None, torch.Tensor, tuple | None]]:
    """:func:`tall_qr` of both tall sides ``(..., rows, r)`` of one product as one batch: each
    side written by ``form_into(out, k)`` (side ``k``, 0 the left, 1 ``R^H``) into its half of
    one ``(2, ..., rows, r)`` buffer, then one :func:`lazymat.qr.qr_unchecked` of the stack
    (half the torch calls of two QRs, the same FLOPs; ``lm.config(qr_sides=...)``). Returns
    ``[(Q or None, R, evidence or None)]`` per side, both sides with the stack's one evidence
    (the same tuple: :func:`lazymat.linalg.spectrum.placed_core` reads it once and judges the
    sides one by one, :func:`lazymat.qr.certified_members`), so that a side it refuses is
    redone alone, as a side factorised by itself is."""
    buffer = torch.empty(2, *shape, dtype=dtype, device=device)
    form_into(buffer[0], 0)
    form_into(buffer[1], 1)
    Q, R, evidence = qr_unchecked(buffer, "reduced" if vectors else "r")
    del buffer  # (the sides are not kept: only Q, when asked for, and R)
    Q1, Q2 = Q.unbind() if vectors else (None, None)
    R1, R2 = R.unbind()
    return [(Q1, R1, evidence), (Q2, R2, evidence)]


def side_into(side: Expr, out: torch.Tensor) -> None:
    """Write the dense ``side`` (one product of leaf views, :func:`formed_side`) into ``out``: its
    factors by its plan, the last product written there (:func:`run_into`), the coefficient on
    the factor the planner scales (:func:`lazymat.plan.scaled_operand`), as a compiled call
    forms a stacked side from the same leaves."""
    c = canonical(side)
    t, plan = c.terms[0], plan_canon(c).terms[0]
    memo = _Memo()
    values = [view_value(f, memo) for f in t.factors]
    if t.has_coefficient:
        at = scaled_operand(t, plan)
        values[at] = t.times(values[at])
    run_into(values, plan, out)


def formed_side(side: Expr) -> bool:
    """Whether ``side`` is formed by a product that :func:`side_into` can write into a buffer: one
    term of at least two leaf views, any coefficient on a factor (not on the value, nor rescaled:
    applied there, it would be a copy of the side). A side that is one factor is read as stored:
    stacking it would copy it."""
    c = canonical(side)
    if len(c.terms) != 1:
        return False
    t = c.terms[0]
    if len(t.factors) < 2 or any(type(f.base) is not Leaf for f in t.factors):
        return False
    return not t.has_coefficient or not rescales(t) and scaled_operand(t, plan_canon(c).terms[0]) is not None


def run_into(values: list[torch.Tensor], plan: Any, out: torch.Tensor) -> None:
    """The product of ``values`` (one tensor per factor, used up) by ``plan``'s program
    (:attr:`lazymat.plan.ChainPlan.program`), as :func:`lazymat.execute._contract` runs it,
    except that the last product is written into ``out``."""
    last = len(plan.program) - 1
    for step, ((a, b), plain) in enumerate(zip(plan.program, plan.plain, strict=True)):
        x, y = values[a], values[b]
        values[a] = values[b] = None
        if step == last:
            torch.matmul(x, y, out=out)
            return
        values.append(torch.matmul(x, y) if plain else layout.matmul(x, y, free_layout=True))


def _reduced_svd(t: torch.Tensor):
    return torch.linalg.svd(t, full_matrices=False)


def _svdvals(t: torch.Tensor) -> torch.Tensor:
    """The singular values of ``t`` without the vectors, as the budget counts them (only the
    values written). ``torch.linalg.svdvals`` also forms ``U`` and ``Vh`` whenever a torch
    dispatch mode is on (a memory counter, fake tensors) or ``t`` needs its gradient: three
    outputs the plan never counted. Recorded gradients still go through torch's own, and so do
    forward-mode ones (their rule needs the vectors: ``compute_uv=False`` fails)."""
    if torch.is_grad_enabled() and t.requires_grad or forward_ad._current_level >= 0:
        return torch.linalg.svdvals(t)
    return torch._linalg_svd(t, full_matrices=False, compute_uv=False)[1]


def _inner_width(x: Expr) -> int:
    """The inner width ``r`` of :func:`lazymat.core.factor`'s ``L @ R`` (a single product's
    narrowest chain dim, read off the canonical form without factoring)."""
    width = _form(x).width
    return factor(x)[0].shape[-1] if width is None else width


def eig_core(x: Expr) -> Expr:
    """The ``r x r`` (lazy) matrix ``R @ L`` whose nonzero eigenvalues are ``X``'s (the matrix
    itself when it is its own core)."""
    L, R = factor(x)
    if is_identity(L):
        return R
    if is_identity(R):
        return L
    return R @ L


# Every spectral answer is read off one cached, untruncated decomposition of the core
# (``_Spectrum``), and one rule (``_kept``) decides which singular values are zero.


class _Spectrum(NamedTuple):
    """``(U, S, Vh, floor, values)`` of ``X = L @ R``, untruncated (``U``/``Vh`` None when only
    values were asked for); ``floor (..., 1)`` (a float when it is one number for every member)
    bounds the rounding error of the core's singular values; ``values``, ``S`` read back as a
    list when it was (one matrix on the dense route; for a batch, a list per member, and
    ``floor`` then a list of floats, one per member), else None."""

    U: torch.Tensor | None
    S: torch.Tensor
    Vh: torch.Tensor | None
    floor: torch.Tensor | float | list[float]
    values: list[float] | list[list[float]] | None = None
