"""Linear algebra read off the smallest core (``torch.linalg`` names and conventions).

With ``X = L @ R`` from :func:`lazymat.core.factor` (``L: (..., m, r)``, ``R: (..., r, n)``):

- ``svd``: QR of ``L`` and of ``R^H``, then the SVD of the ``r x r`` core ``R_L R_R^H``.
  A tall leaf at an outer end that a whole batch shares is QR-factorised once instead
  (:func:`lazymat.core.reduced_factors`), when that is cheaper.
  Not the Gram route: forming ``L^H L`` squares the condition number, and the small
  singular values of a float32 circuit come out wrong by orders of magnitude.
- ``eigvals`` of a single product: the nonzero eigenvalues of ``L R`` are those of ``R L``;
  that core is planned as one product, so shared work (``W_U @ W_E`` across heads) is found.
  ``eig``, and ``eigvals`` of a sum: from the nonzero triplets ``X = U S Vh``, the ``k x k``
  core ``S Vh U`` (no noise eigenvalues from cancelling terms, true zero eigenvectors).
- One rule decides which singular values are zero (``_tolerance``): torch's
  ``atol``/``rtol`` rule raised to the core's rounding floor, so that exact cancellation
  (``X - X``) is the zero matrix. ``svd``/``svdvals`` return the nonzero triplets.
- ``trace``/``diagonal``: closed einsum networks (O(m r) once the factors exist), no SVD.
- ``det``/``slogdet``/``inv``/``solve``: read off the structure when the inner width is below
  ``n`` (singular for any leaf values); else one LU per square segment of a product
  (``det(A B C) = det A det B det C``), the product never formed. ``lstsq``: the minimum-norm
  solution ``V S^-1 U^H B`` off the nonzero triplets.
- ``matrix_norm('fro')``: for a product, the cheaper of ``tr((L^H L)(R R^H))`` with each
  half formed once and the closed network ``tr(X^H X)`` (no SVD); for a form containing a sum,
  the core's singular values (a Gram route would leave sqrt(eps) noise where terms cancel).

A fresh product of data leaves (``lazy(A) @ lazy(B) @ lazy(C)``, built for one call; leaves
read transposed, ``lazy(B).mT``, too) runs by
its structure's compiled call (``_compiled``): the route and rules decided once per structure,
then only the product, one LAPACK call and a threshold read on the host (for a batch, every
member's values read back at once and thresholded member by member). A small product narrower
than both its dims may be reduced first (``small_reduction``): one Householder QR of its longer
side, then LAPACK on the ``m x r`` matrix of the same singular values.

Results come back on the expression's device and dtype (complex for eigenvalues). 8- and
16-bit inputs are decomposed in float32. Small cores of an expression on a GPU are decomposed
wherever that was measured fastest (``CPU_CORE_LIMIT``) and come back. Results are
cached on the expression and recomputed after an in-place change to any leaf tensor.

``lazymat.explain`` costs these routes (standard formulas for the decompositions).
"""

from __future__ import annotations

import bisect
import cmath
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import itertools
import math
import numbers
import operator
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.autograd import forward_ad

from .. import layout, mkl_quiet, progress, settings
from ..coefficient import Wide, fold, log_magnitude, magnitude, power, reciprocal, times
from ..core import (
    dense_side,
    factor,
    is_identity,
    leaf_qr,
    outer_reductions,
    qr_flops,
    qr_is_cached,
    qr_key,
    reduced_factors,
    shared_outer,
)
from ..cpu_batches import for_shape, split_batch
from ..execute import (
    _contract,
    _Memo,
    contract,
    contract_sum,
    device_budget,
    evaluate_as_written,
    fits,
    run_canon,
    view_value,
)
from ..expr import (
    Add,
    Cast,
    Concat,
    Expr,
    Leaf,
    MatMul,
    Scale,
    Transpose,
    as_expr,
    broadcast_shapes,
    dim_index,
    lazy,
    leaves,
    postorder,
    tensor_state,
    with_tensors,
)
from ..expr import matmul as lazy_matmul
from ..layout import matmul
from ..network import Shared, closed_chain, gram_trace, leaf_kept_bytes, unsliced_peak
from ..plan import ChainPlan, kept_bytes, plan_canon, plan_chain, plan_expr, plan_sharing
from ..product_cache import holds_none, leaf_products, not_kept
from ..qr import certified, qr, qr_unchecked
from ..rewrite import (
    Canon,
    Nested,
    Term,
    View,
    canonical,
    cast_commutes,
    diagonal_pieces,
    leaf_chain,
    rounded_source,
    term_expr,
    transposed_leaf_chain,
    view_expr,
)
from ..settings import BudgetTooSmall, blas_workspace
from ..unread import joined

# Widest core decomposed on the CPU when the expression lives on a GPU, per operation.
# Measured on an H100 against its host CPU (benchmarks/results/h100-small-cores.txt): the
# CPU round trip wins for eigenvalues up to r = 256, singular values up to 512, full SVDs
# up to 128; except that batches of cores up to 32 wide go to cuSOLVER's batched Jacobi
# SVD, 7-16x faster on the GPU.
CPU_CORE_LIMIT = {"eig": 256, "svdvals": 512, "svd": 128}


# ---- helpers ----------------------------------------------------------------------------
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
    if forward_ad._current_level >= 0 or torch.is_grad_enabled() and any(t.requires_grad for t in data):
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


def _square(x: Expr, what: str) -> None:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{what} needs a square matrix, got shape {tuple(x.shape)}")


def _core_device(t: torch.Tensor, op: str) -> torch.device:
    """Where to decompose the small core ``t``: by ``CPU_CORE_LIMIT`` under
    ``lm.config(small_cores="auto")``, always round-tripped through the CPU under ``"cpu"``,
    on the expression's device under ``"device"``."""
    placement = settings.get("small_cores")
    if t.device.type == "cpu" or placement == "device":
        return t.device
    if placement == "cpu":
        return torch.device("cpu")
    r = max(t.shape[-2:])
    batched_jacobi = op != "eig" and r <= 32 and math.prod(t.shape[:-2]) > 1
    return torch.device("cpu") if r <= CPU_CORE_LIMIT[op] and not batched_jacobi else t.device


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
    moved = _core_device(core, op) != core.device
    host = list(_unpacked(*_moved(_packed((core, *extras) if moved else tuple(extras)), "cpu")))
    return (host.pop(0) if moved else core), host


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
    """``parts`` as one byte buffer and the layout :func:`_unpacked` reads them back by. Wider
    elements go first, so every part starts at a multiple of its element size (as a view in its
    dtype needs) with no padding; a column-major matrix is stored as its transpose, row-major,
    and so keeps its strides."""
    order = sorted(range(len(parts)), key=lambda i: -parts[i].element_size())
    layout, chunks = [None] * len(parts), []
    start = 0
    for i in order:
        p = parts[i]
        flipped = p.ndim >= 2 and not p.is_contiguous() and p.mT.is_contiguous()
        stored = (p.mT if flipped else p).contiguous()
        raw = stored.reshape(-1).view(torch.uint8)
        layout[i] = (stored.dtype, stored.shape, flipped, start, len(raw))
        chunks.append(raw)
        start += len(raw)
    return torch.cat(chunks), layout


def _unpacked(buffer: torch.Tensor, layout: list[tuple]) -> tuple[torch.Tensor, ...]:
    """The parts :func:`_packed` put in ``buffer``, as views of it, in their order."""
    parts = []
    for dtype, shape, flipped, start, size in layout:
        t = buffer[start:start + size].view(dtype).view(shape)
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
    tall = dense_side(side, adjoint).to(dtype)
    if tall.shape[-2] <= tall.shape[-1]:
        return None, tall, None
    mode = "reduced" if vectors else "r"
    return qr_unchecked(tall, mode) if unchecked else (*qr(tall, mode), None)


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


# ---- memory budget ----------------------------------------------------------------------
# Every public function takes ``memory_budget=`` (bytes or "8GiB"); it is the active budget
# (``lazymat.settings.memory_budget``) for the call. The heavy steps (the decomposition behind
# the spectral answers, the closed networks of traces and diagonals, the Frobenius norm's
# Gram routes) run through :func:`_in_blocks`: the route's peak is predicted by ``explain``
# and, when over the budget, the step runs on blocks of the batch dims, concatenated.

# Rough throughput for the progress bar's time estimate (FLOP/s); only decides whether a bar
# is worth showing (work over two seconds).
_THROUGHPUT = {"cuda": 2e13, "cpu": 5e10}


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
            with settings.config(memory_budget=memory_budget):
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


# ---- gradients under a budget ---------------------------------------------------------------
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
    expression)."""
    if not torch.is_grad_enabled() or settings.get("memory_budget") is None or not args or (
            getattr(_RECOMPUTING, "on", False)) or fn.__name__ in ("truncate", "make_even"):
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
    leaves = (x,) if isinstance(x, torch.Tensor) else tuple(t for t in _data(x) if t.requires_grad)
    budget = settings.get("memory_budget")

    def run(y: Any = x) -> Any:  # the call on x, or on a block of its batch
        return fn(y, *args[1:], **kwargs)

    kind = []  # the answer's type, as the forward found it (a tensor, a tuple, a named tuple)
    blocks = x if _batchwise(fn, args, kwargs) and math.prod(x.shape[:-2]) > 1 else None
    out = _Recompute.apply(run, (budget, _VECTORS.get(fn.__name__)), kind, blocks, *leaves)
    if kind[0] is torch.Tensor:
        return out[0]
    if kind[0] is tuple:
        return out
    return kind[0](*out) if hasattr(kind[0], "_fields") else kind[0](out)  # (torch.return_types)


class _Recompute(torch.autograd.Function):
    """Forward: ``run()`` without autograd (nothing saved but the leaves); backward: ``run()``
    again with autograd (under ``budget`` where it fits), whole, or on blocks of the batch of
    ``blocks`` (the expression, :func:`_blocked_grads`), and its gradients to the leaves."""

    @staticmethod
    def forward(ctx, run, how, kind, blocks, *leaves):
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
        if ctx.blocks is None:
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
                 vectors: tuple | None = None) -> tuple[tuple, list[tuple | None]]:
    """The gradients to ``leaves`` of ``run`` recomputed with autograd on ``x[key]`` (the whole
    call for ``key`` None) under ``budget`` (the default one where that refuses the route), for
    the answer's gradients ``grads``: their block, narrowed to the block's answer where a block
    keeps fewer values (``svd``'s rank is the batch's largest: the others are zeros). With
    ``vectors`` (:data:`_VECTORS`' positions and the forward's vectors), the recomputed vectors
    are turned to the forward's first (:func:`_turned`). The block is read off blocks of the
    leaves where it can be (:func:`_leaf_blocks`): a gradient is then the leaf block's, at the
    key returned beside it (None: the whole leaf's)."""
    blocked = None if key is None or isinstance(x, torch.Tensor) else _leaf_blocks(x, key, leaves)
    y, at = (x[key] if key is not None else None, [None] * len(leaves)) if blocked is None else blocked
    inputs = tuple(leaf if a is None else a[1] for leaf, a in zip(leaves, at, strict=True))
    _RECOMPUTING.on = True
    try:
        with torch.enable_grad():
            try:
                with settings.config(memory_budget=budget):
                    out = run() if key is None else run(y)
            except BudgetTooSmall:  # the differentiable route needs more: the default budget
                with settings.config(memory_budget=None):
                    out = run() if key is None else run(y)
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
    found = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
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
    with settings.config(memory_budget=budget):
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
    """What the predicted peak depends on: per term, its factors' shapes and views, which
    factors read the same leaf, that leaf's shape (a view of a larger leaf may copy, and bounds
    the products kept on it) and whether it holds cached work (a QR or a product the route then
    reads for free); None when a factor is a nested block (not keyed). Leaves are numbered
    across terms: a leaf two terms share is a common factor the route may take out."""
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
        terms.append(tuple(factors))
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
    budget = settings.get("memory_budget")  # it can change the route (fro_route)
    hit = x._cache.get(("peak", op, budget))
    if hit is not None:
        return hit
    shape_key = _structure(x)
    # (DENSE_MAX_ELEMENTS decides routes: tests patch it, and a peak kept under another is not this one)
    key = None if shape_key is None else (op, budget, DENSE_MAX_ELEMENTS, shape_key)
    hit = None if key is None else _PEAKS.get(key)
    if hit is None:
        from ..explain import whole_batch  # explain reads linalg's routes: imported on use

        try:  # the route taken (dense for small matrices) on the whole batch, sliced as it runs
            route = whole_batch(x, op).planned
        except BudgetTooSmall as err:  # no slicing fits: the route at its least budget, which does not fit
            route = whole_batch(x, op, memory_budget=err.minimum).planned
        hit = (route.peak_bytes, route.flops)
        if key is not None:
            _PEAKS[key] = hit
            if len(_PEAKS) > _PEAKS_KEPT:
                _PEAKS.popitem(last=False)
    x._cache[("peak", op, budget)] = hit
    return hit


def _fits(x: Expr, bound: int) -> tuple[bool, int | None]:
    """``(True, None)`` when ``bound`` bytes fit without asking the device; else whether they
    fit the active budget, and that budget (the device's free memory is read at most once a
    second, :func:`lazymat.execute.device_budget`: on CUDA each read costs a driver call and
    two walks of the allocator's statistics, and a call asks several times)."""
    if bound <= settings.ALWAYS_FITS and settings.get("memory_budget") is None:
        return True, None
    budget = device_budget(x.device)
    return bound <= budget, budget


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

    def route(shape: tuple) -> tuple[int, int]:
        return _route_costs(x[tuple(slice(0, c) for c in shape)], op)

    peak = max(route(cut)[0] for cut in _cut_shapes(x.shape[:-2], block))
    shared = _shared_qr_flops(x[tuple(slice(0, c) for c in block)], op)  # run once, before the blocks
    return keys, peak + _beside_blocks(x, op), (route(tuple(block))[1] - shared) * len(keys) + shared


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
            raise BudgetTooSmall(f"{op} of a {tuple(x.shape)} {dtype} expression",
                                 "one matrix of the batch" if batch else "its least demanding route",
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
        with settings.config(memory_budget=budget + reserve):
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


def _kept_qr_bytes(x: Expr, vectors: bool = True) -> int:
    """Bytes of the shared leaves' QRs (``R``, and ``Q`` with ``vectors``) that the factored SVD
    of ``x`` keeps on the leaves (:func:`_share_outer_qrs`: computed before its blocks, held
    beside every block and after them); 0 on the dense route."""
    if dense_is_cheaper(x, "svd" if vectors else "svdvals"):
        return 0
    seen, total = set(), 0
    for s in outer_reductions(x, vectors):
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
    for s in outer_reductions(x, vectors):
        if s is not None and (id(s.view.base), qr_key(s)) not in seen and not qr_is_cached(s, vectors):
            seen.add((id(s.view.base), qr_key(s)))
            total += s.count * qr_flops(s.rows, s.k, vectors)
    return total


def _beside_blocks(x: Expr, op: str) -> int:
    """Bytes held beside every block of ``op`` on ``x``'s batch: the batch's result
    (:func:`_result_bytes`) and, for the spectral routes, the shared leaves' QRs
    (:func:`_kept_qr_bytes`; a block's own route, costed cold, does not hold them after use)."""
    kept = _kept_qr_bytes(x, op == "svd") if op in ("svd", "svdvals") else 0
    return _result_bytes(x, op) + kept


# ---- small matrices: the dense and reduced routes ----------------------------------------
# Factoring, planning and two QRs cost a fixed time per call (Python, and one small torch call
# per step) that a small matrix does not repay: materialising it (or a reduced matrix of its
# singular values, below) and calling torch is then faster. One cost model decides, per
# operation: each route's FLOPs (``small_route_flops``, ``reduced_route_flops``) plus its extra
# fixed cost per call, expressed in FLOPs at the rate small LAPACK calls run
# (``FACTORED_OVERHEAD_FLOPS``; for the reduced route the two constants below). The constants
# are the thresholds that lost the least time over the sweeps of
# ``benchmarks/bench_small_cores.py`` on the 2-core CPU (single matrices, quiet:
# benchmarks/results/cpu-small-crossover-quiet.txt; batches of b 64 x 32 chains:
# cpu-small-batch-crossover.txt): the factored route's extra ~0.2-0.8 ms per call at
# 10-50 GFLOP/s. svd: single matrices want [1.53e7, 1.95e7), batches [1.82e7, 2.27e7) (a batch
# of 4 is dense); svdvals: single matrices [1.99e6, 2.52e6), batches [2.95e6, 3.54e6), so the
# single matrices' upper end. A matrix over DENSE_MAX_ELEMENTS is never materialised for speed
# alone (memory; the Frobenius norm's dense route still wins at 384^2).
# det, slogdet and solve of a single product of several square segments (see "square
# matrices" below): the factored route's fixed cost per segment beyond the first (one more LU
# call and the Python around it), against forming the product and one LU, in FLOPs of
# square_route_flops. Fitted like the spectral constants, chains of 2 and 3 squares of 8..384
# (bench_solve.py --part crossover; benchmarks/results/cpu-solve-crossover.txt, two runs under
# load): det and slogdet [1.18e6, 2.8e6) both runs, solve [1.11e6, 2.67e6) and [9.1e6, 2.2e7):
# chains of 64 x 64 squares are formed, of 128 x 128 not. inv keeps its segments: its answer
# there is lazy (the segments' inverses, the product never formed), which the FLOPs of the call
# alone do not price.
SEGMENT_OVERHEAD_FLOPS = 1.8e6
FACTORED_OVERHEAD_FLOPS = {"svdvals": 2.5e6, "svd": 1.9e7, "matrix_norm": 1.7e7,
                           "det": SEGMENT_OVERHEAD_FLOPS, "slogdet": SEGMENT_OVERHEAD_FLOPS,
                           "solve": SEGMENT_OVERHEAD_FLOPS}
DENSE_MAX_ELEMENTS = 512 * 512
# The small route materialises either the whole matrix or, when cheaper, a reduced one: a
# product ``L @ R`` of inner width ``r`` below both its dims has the singular values of
# ``L @ T^H`` (``m x r``; ``R^H = Q T`` a Householder QR of the ``n x r`` side, backward stable
# as the dense SVD is) with ``Vh = Vh_M Q^H``, or of ``T @ R`` (``L = Q T``) with ``U = Q U_M``
# (``reduce_small``). REDUCED_OVERHEAD_FLOPS: its extra fixed cost per call over the dense
# route (one QR and one product call, and the vectors' product), the threshold that lost the
# least time over ``bench_small_cores.py --part reduced`` (benchmarks/results/
# cpu-small-reduced.txt, four runs under load: svdvals [6.3e4, 8.8e4) twice, [8.8e4, 2.1e5)
# twice, one shape flipping within 20 us; svd [8.6e4, 2.3e5) three times, [2.8e5, 5.5e5) once).
# FACTORED_OVER_REDUCED_FLOPS: the factored route's extra fixed cost against the reduced route,
# fitted likewise. The reduced route's FLOPs (Householder QRs, tall SVDs) run at about the
# factored route's rate, the dense route's square SVDs faster, so FACTORED_OVERHEAD_FLOPS
# (fitted against the dense route) cannot serve both pairs. svdvals took the reduced route
# everywhere within DENSE_MAX_ELEMENTS (threshold >= 2.25e7, three runs); svd wants
# [1.73e7, 3.79e7) (two runs; one [7.4e6, 1.1e7): 256 x 128 chains, 1.13e7, a tie within
# 0.1 ms of 3.5-4 ms); 384 x 192 chains are factored.
REDUCED_OVERHEAD_FLOPS = {"svdvals": 1.5e5, "svd": 1.5e5}
FACTORED_OVER_REDUCED_FLOPS = {"svdvals": 4.5e7, "svd": 2.5e7}


def svd_flops(m: int, n: int, vectors: bool) -> float:
    """Golub-Reinsch SVD of an ``m x n`` matrix: ``4 M N^2 - 4/3 N^3`` for the values,
    ``14 M N^2 + 8 N^3`` with the reduced vectors (``M >= N``; Golub & Van Loan Fig. 8.6.1)."""
    big, k = max(m, n), min(m, n)
    return 14 * big * k * k + 8 * k**3 if vectors else 4 * big * k * k - 4 / 3 * k**3


@functools.lru_cache(maxsize=4096)  # a pure function of four numbers, asked on every call
def small_route_flops(m: int, n: int, r: int, op: str) -> tuple[float, float]:
    """``(dense, factored)`` FLOPs of ``op`` (``"svdvals"``, ``"svd"`` or ``"matrix_norm"``, the
    Frobenius norm) on one ``m x n`` matrix ``L @ R`` of inner width ``r``, leaving out the
    work both routes share (forming ``L`` and ``R``). Dense: the product ``L @ R`` then torch's
    routine. Factored: QRs of the ``m x r`` and ``n x r`` sides, the ``r x r`` core and its
    SVD (and ``U``, ``Vh`` formed from the Q factors), or for the norm the two Gram matrices."""
    materialise = 2 * m * n * r
    if op == "matrix_norm":
        return materialise + 2 * m * n, 2 * (m + n) * r * r + 2 * r * r
    vectors = op == "svd"
    factored = qr_flops(m, r, vectors) + qr_flops(n, r, vectors) + 2 * r**3 + svd_flops(r, r, vectors)
    if vectors:
        factored += 2 * (m + n) * r * r
    return materialise + svd_flops(m, n, vectors), factored


def reduced_route_flops(m: int, n: int, r: int, op: str, side: str) -> float:
    """FLOPs of the reduced small route of ``op`` (``"svdvals"`` or ``"svd"``) on one ``m x n``
    matrix ``L @ R`` of inner width ``r < min(m, n)``, leaving out forming ``L`` and ``R`` (as
    :func:`small_route_flops`): ``side="right"``, the QR of the ``n x r`` side ``R^H``, the
    ``m x r`` matrix ``L @ T^H`` and its SVD (with ``Vh = Vh_M Q^H``); ``"left"``, the same
    through ``L``'s QR and the ``r x n`` matrix ``T @ R``."""
    vectors = op == "svd"
    reduced, kept = (n, m) if side == "right" else (m, n)
    flops = qr_flops(reduced, r, vectors) + 2 * kept * r * r + svd_flops(kept, r, vectors)
    return flops + 2 * reduced * r * r if vectors else flops


def small_route(m: int, n: int, r: int, count: int, op: str, single: bool = True) -> tuple[str, float]:
    """``(route, cost)``: the cheapest small route of ``op`` on a batch of ``count`` ``m x n``
    matrices ``L @ R`` of inner width ``r``: ``"dense"``, or for the SVDs of a ``single``
    product (not a sum) narrower than both its dims ``"right"``/``"left"``
    (:func:`reduced_route_flops`), costed in FLOPs with the reduced route's fixed cost per call
    (:data:`REDUCED_OVERHEAD_FLOPS`)."""
    return _cheapest(m, n, r, count, op, single and r < min(m, n), REDUCED_OVERHEAD_FLOPS.get(op))


@functools.lru_cache(maxsize=4096)  # a pure function of numbers, asked on every call
def _cheapest(m: int, n: int, r: int, count: int, op: str, reducible: bool,
              overhead: float | None) -> tuple[str, float]:
    dense = count * small_route_flops(m, n, r, op)[0]
    if not reducible or overhead is None:
        return "dense", dense
    side = min(("right", "left"), key=lambda s: reduced_route_flops(m, n, r, op, s))
    cost = count * reduced_route_flops(m, n, r, op, side) + overhead
    return (side, cost) if cost < dense else ("dense", dense)


def _inner_width(x: Expr) -> int:
    """The inner width ``r`` of :func:`lazymat.core.factor`'s ``L @ R`` (a single product's
    narrowest chain dim, read off the canonical form without factoring)."""
    width = _form(x).width
    return factor(x)[0].shape[-1] if width is None else width


def dense_is_cheaper(x: Expr, op: str = "svdvals", k: int = 0, rhs: tuple | None = None) -> bool:
    """True when ``op`` (``"svdvals"`` for every answer read off the singular values: rank,
    pinv, cond, the nuclear and spectral norms; ``"svd"``; ``"matrix_norm"`` for the Frobenius
    norm; :data:`SQUARE_OPS`, ``"det"``, ``"slogdet"``, ``"solve"`` with ``k`` right-hand sides) on ``x``
    runs on the materialised matrix: over the batch, the dense route's FLOPs are at most the
    factored route's plus :data:`FACTORED_OVERHEAD_FLOPS` (a per-call cost, per square segment
    beyond the first for the square ops; see :func:`small_route_flops`,
    :func:`square_route_flops`), each matrix has at most :data:`DENSE_MAX_ELEMENTS`
    elements, the materialised batch fits the memory budget, and no sum sits inside a product
    (the rounding floor of a dense sum, :func:`_sum_floor`, is known only for a sum of
    products).

    Under a budget the generous bound may not fit where the dense route does: it is then
    weighed by its own peak (a square op's, :func:`_formed_fits`, ``rhs`` the shape of a ``B``
    whose batch dims ``solve`` broadcasts past ``x``'s), so a route that fits is taken.

    Asked on every call: for a single product of leaf views the part fixed by the structure
    (the FLOPs, and whether the generous peak bound fits without asking the device) is decided
    once per :attr:`_Form.key` and kept in a small table (:data:`_ROUTES_KEPT` decisions)."""
    key = _form(x).key
    if key is None:
        cheaper, small = _cheaper_by_flops(x, op), False
    else:
        key = (op, key, DENSE_MAX_ELEMENTS, FACTORED_OVERHEAD_FLOPS.get(op), REDUCED_OVERHEAD_FLOPS.get(op),
               FACTORED_OVER_REDUCED_FLOPS.get(op), k)
        hit = _ROUTES.get(key)
        if hit is None:
            hit = _remember(key, (_cheaper_by_flops(x, op, k), _peak_bound(x, op, k) <= settings.ALWAYS_FITS))
        cheaper, small = hit
    if not cheaper:
        return False
    if small and settings.get("memory_budget") is None:
        return True
    # the generous bound settles it without a schedule unless the budget is tight; then the dense
    # route's own peak (the budget check of the route taken follows: _lu_in_blocks for a square op)
    if _fits(x, _peak_bound(x, op, k))[0]:
        return True
    return _formed_fits(x, op, k, rhs) if op in SQUARE_OPS else _fits(x, _dense_peak(x, op))[0]


# set while explain schedules the formed route of a square op for _formed_fits: _square_parts
# then answers (1, [x]) without asking dense_is_cheaper
_FORMING: contextvars.ContextVar[bool] = contextvars.ContextVar("forming", default=False)


def _formed_fits(x: Expr, op: str, k: int, rhs: tuple | None) -> bool:
    """Whether the formed route of the square op ``op`` (``x`` formed whole, one LU; ``k``
    right-hand sides, of shape ``rhs`` where ``B`` adds batch dims) fits the active budget on
    the whole batch, by :func:`lazymat.explain`'s schedule of it under that budget: the figure
    :func:`_lu_in_blocks` checks it against. Cached on ``x`` by the budget."""
    from ..explain import whole_batch  # explain reads linalg's routes: imported on use

    budget = device_budget(x.device)
    key = ("formed fits", op, k, rhs, budget)
    hit = x._cache.get(key)
    if hit is None:
        options = ({"k": k} if rhs is None else {"B": rhs}) if op == "solve" else {}
        token = _FORMING.set(True)
        try:
            hit = whole_batch(x, op, **options).planned.peak_bytes <= budget
        except BudgetTooSmall:  # no slicing of the product's formation fits
            hit = False
        finally:
            _FORMING.reset(token)
        x._cache[key] = hit
    return hit


# Route decisions by structure (no tensors held), the oldest dropped first: dense_is_cheaper's
# (op, _Form.key, the constants it reads) -> (cheaper by FLOPs, peak bound within
# settings.ALWAYS_FITS); _rotated_core's ("eig split", _Form.key) -> factor's split.
_ROUTES: dict[tuple, Any] = {}
_ROUTES_KEPT = 1024


def _remember(key: tuple, decision: Any) -> Any:
    """``decision`` stored in :data:`_ROUTES` under ``key`` (the oldest dropped past
    :data:`_ROUTES_KEPT`), and returned."""
    _ROUTES[key] = decision
    if len(_ROUTES) > _ROUTES_KEPT:
        del _ROUTES[next(iter(_ROUTES))]
    return decision


def _cheaper_by_flops(x: Expr, op: str, k: int = 0) -> bool:
    """The part of :func:`dense_is_cheaper` that the shapes decide: element count, no nested
    block, and the FLOPs with the factored route's per-call cost."""
    m, n = x.shape[-2], x.shape[-1]
    if not 0 < m * n <= DENSE_MAX_ELEMENTS:
        return False
    form = _form(x)
    if form.nested:
        return False
    if op in SQUARE_OPS:
        dense, factored, calls = square_route_flops(x, op, k)
        return calls > 0 and dense - factored <= calls * FACTORED_OVERHEAD_FLOPS[op]
    if op == "matrix_norm" and form.terms > 1:
        op = "svdvals"  # a sum's Frobenius norm is read off its singular values
    factored = small_route_flops(m, n, min(m, n, _inner_width(x)), op)[1]
    route, cost = _small_route(x, op)
    overhead = (FACTORED_OVERHEAD_FLOPS if route == "dense" else FACTORED_OVER_REDUCED_FLOPS)[op]
    return cost - math.prod(x.shape[:-2]) * factored <= overhead


def _small_route(x: Expr, op: str) -> tuple[str, float]:
    """:func:`small_route` of ``x``: the reduced routes only for a single product (a sum's
    factors are stacked; its dense route keeps :func:`_sum_floor`) with no batched side ending
    in a tall leaf the batch shares (:func:`_shares_outer_leaf`)."""
    m, n = x.shape[-2], x.shape[-1]
    single = _form(x).width is not None and not _shares_outer_leaf(x)
    return small_route(m, n, min(m, n, _inner_width(x)), math.prod(x.shape[:-2]), op, single)


def _shares_outer_leaf(x: Expr) -> bool:
    """Whether a batched side of ``factor(x)`` ends in a tall leaf that the batch shares
    (:func:`lazymat.core.shared_outer`, ``W_E`` at both ends of a batch of heads): the factored
    route factorises that leaf once for the batch (:func:`lazymat.core.outer_reductions`) where
    the reduced route factorises every member's side, a saving the small routes' FLOP counts do
    not price (144 heads of ``96 x 32 @ 32 x 4 @ 4 x 32 @ 32 x 96``: reduced 2.7 ms, factored
    2.1 ms under load), so such a product keeps the dense or factored route. Read off the
    structure, not the batch's size: a block of the batch (a memory budget's, even of one
    member) decides as the whole batch, so its answers (the vectors' signs) are the same."""
    if len(x.shape) == 2:
        return False
    L, R = factor(x)
    return any(len(side.shape) > 2 and shared_outer(side, adjoint) is not None
               for side, adjoint in ((L, False), (R, True)))


def small_reduction(x: Expr, op: str) -> str | None:
    """``"right"`` or ``"left"``, the side whose QR the small route of ``op`` on ``x`` reduces
    (:func:`small_route`), or None for the whole matrix materialised. Asked only of a matrix
    :func:`dense_is_cheaper` sends to the small route."""
    if op not in REDUCED_OVERHEAD_FLOPS:
        return None
    route = _small_route(x, op)[0]
    return None if route == "dense" else route


def _dense_peak(x: Expr, op: str) -> int:
    """Peak bytes of the dense route of ``op`` on the whole batch of ``x``, as
    :func:`lazymat.explain` schedules it (the figure the budget is checked against); cached on
    ``x``."""
    hit = x._cache.get(("dense peak", op))
    if hit is None:
        from ..explain import dense_route_peak  # explain reads linalg's routes: imported on use

        hit = x._cache[("dense peak", op)] = dense_route_peak(x, op)
    return hit


def dense_norm_route(x: Expr) -> bool:
    """Whether :func:`matrix_norm` takes the Frobenius norm of ``x`` from the materialised
    matrix: a single product (a sum's norm is read off its singular values) for which
    :func:`dense_is_cheaper` says so (within the budget; else the factored route, which can be
    sliced to fit)."""
    return _form(x).terms == 1 and dense_is_cheaper(x, "matrix_norm")


# ---- singular values ----------------------------------------------------------------------
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
    m, n = x.shape[-2], x.shape[-1]
    scale = _eps(R1.dtype) * (R1.shape[-1] + math.sqrt(m + n))
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
    # each tall side is formed, factorised and dropped before the next (as a hand-written route);
    # their QRs' evidence comes to the host with the core (below): a side it fails is redone
    Q1, R1, ev1 = _side_qr(L, False, not values_only, wd, unchecked=True)
    Q2, R2, ev2 = _side_qr(R, True, not values_only, wd, unchecked=True)
    fn, op = (_svdvals, "svdvals") if values_only else (_reduced_svd, "svd")
    # a non-finite entry of L or R reaches the small triangular factors through the QR: they
    # are checked, never the tall factors; such members are answered NaN, the others as usual
    # (read with the core, the floor shows every entry of R1 and R2 finite when it is)
    while True:
        core, floor = R1 @ R2.mH, _rounding_floor(x, R1, R2)
        evidence = [ev for ev in (ev1, ev2) if ev is not None]
        extras = [floor, *(t for ev in evidence for t in ev)]
        placed, (host_floor, *host_evidence) = _placed_with(core, op, extras)
        on_host = iter(host_evidence)
        verdicts = iter([certified(tuple(next(on_host) for _ in ev)) for ev in evidence])
        redo = [ev is not None and not next(verdicts) for ev in (ev1, ev2)]
        if not any(redo):
            break
        if redo[0]:  # ill-conditioned (or not finite): the pass-by-pass route, or Householder
            Q1, R1, _ = _side_qr(L, False, not values_only, wd)
        if redo[1]:
            Q2, R2, _ = _side_qr(R, True, not values_only, wd)
        ev1 = ev2 = None
    bad, values, floors = None, None, host_floor.real.reshape(-1).tolist()
    if math.isfinite(sum(floors)):
        out = split_batch(fn, placed)
        if core.ndim == 2:  # one matrix: thresholded on the host (see _kept)
            floor, values = floors[0], (out if values_only else out[1]).tolist()
        out = _to_device(out, core.device)
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


def _share_outer_qrs(x: Expr, vectors: bool, block: Expr) -> None:
    """Factorise the tall leaves the whole batch shares (:func:`lazymat.core.outer_reductions`)
    before its blocks run, when a ``block`` takes the factored route (the dense one reads no
    QR): each block then reads the QR from the leaf's cache."""
    if not dense_is_cheaper(block, "svd" if vectors else "svdvals"):
        for shared in outer_reductions(x, vectors):
            if shared is not None:
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
        with torch.no_grad():
            return compute()
    state = tuple(tensor_state(t) for t in _data(x))
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
    if form.key is None or forward_ad._current_level >= 0 or torch.is_grad_enabled() and any(
            t.requires_grad for t in form.data):  # (_needs_grad)
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


def _differentiable(x: Expr, sp: _Spectrum, k: int, values_only: bool):
    """``(U, S, Vh)`` of the leading ``k`` triplets with autograd to the leaves.

    QR's backward divides by ``R``'s diagonal, which is zero for a rank-deficient factor
    (stacked sums) and gives NaN; an SVD's backward divides by differences of singular
    values, NaN for repeated zeros. Instead the core is projected onto the bases found without
    autograd, ``C = U_k^H L R V_k`` (k x k, only nonzero values), and differentiated there;
    the part of ``dU`` (``dV``) outside those bases, ``(I - U_k U_k^H) dX V S^-1``, is added
    as a term that is zero in value. Both are exact to first order for the nonzero triplets.
    A member with non-finite input (NaN triplets in ``sp``) is answered NaN, as without
    gradients: its ``C`` is zeroed for LAPACK, which raises for a NaN entry."""
    L, R = factor(x)
    wd = _work_dtype(x.dtype)
    if is_identity(L) or is_identity(R):  # the matrix itself: X = D @ I
        Ld, Rd = (R if is_identity(L) else L).to_dense().to(wd), None
    else:
        Ld, Rd = L.to_dense().to(wd), R.to_dense().to(wd)

    def times(Y):  # X @ Y, never forming X
        return Ld @ Y if Rd is None else Ld @ (Rd @ Y)

    def h_times(Y):  # X^H @ Y
        return Ld.mH @ Y if Rd is None else Rd.mH @ (Ld.mH @ Y)

    Uk, Vk = sp.U[..., :k], sp.Vh[..., :k, :].mH
    C = Uk.mH @ times(Vk)
    bad = _nonfinite_members(C.detach())
    C = _zero_members(C, bad)
    if values_only:
        return None, _nan_members(torch.linalg.svdvals(C), bad, 1), None
    Uc, S, Vhc = torch.linalg.svd(C, full_matrices=False)
    U, Vh = Uk @ Uc, Vhc @ Vk.mH
    with torch.no_grad():
        inv = torch.where(S > 0, 1 / torch.where(S > 0, S, 1), 0).to(U.dtype)[..., None, :]
        Vs, Us = Vh.mH * inv, U * inv
    T = times(Vs)
    U = U + (T - Uk @ (Uk.mH @ T))
    Tv = h_times(Us)
    Vh = Vh + (Tv - Vk @ (Vk.mH @ Tv)).mH
    return _nan_members(U, bad, 2), _nan_members(S, bad, 1), _nan_members(Vh, bad, 2)


def _leading(x: Expr, sp: _Spectrum, kept: tuple[int, torch.Tensor | None], values_only: bool = False,
             grad: bool | None = None, fill: float = 0.0):
    """The leading triplets that ``kept`` (:func:`_kept`) asks for (values outside it set to
    ``fill``: :func:`pinv` asks for inf, whose reciprocal is 0), differentiable when gradients
    are recorded (``grad``, by default :func:`_needs_grad`); views of ``sp``'s tensors where
    nothing is cut or set."""
    k, keep = kept
    if _needs_grad(x) if grad is None else grad:
        U, S, Vh = _differentiable(x, sp, k, values_only)
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


def _truncated(x: Expr, values_only: bool = False):
    """The nonzero triplets by :func:`_tolerance`'s default rule (see :func:`svd`)."""
    sp, grad = _call_spectrum(x, values_only)
    return _leading(x, sp, _kept(x, sp), values_only, grad)


@budgeted
@reads_through_casts
def svd(x: Any, full_matrices: bool = False) -> torch.return_types.linalg_svd:
    """Reduced SVD ``X = U @ diag(S) @ Vh`` of the nonzero singular triplets, as torch's named
    tuple (``.U``, ``.S``, ``.Vh``).

    Like ``torch.linalg.svd(X, full_matrices=False)`` but returns only the ``k`` triplets
    whose singular value is above ``matrix_rank``'s default tolerance (``k`` the largest rank
    in the batch; a member of lower rank has exact zeros in ``S`` past its rank). The other
    ``min(m, n) - k`` singular values are zero to the stated tolerance. ``U: (..., m, k)``,
    ``S: (..., k)`` descending, ``Vh: (..., k, n)``."""
    out = None if full_matrices else _compiled(x, "svd", ())
    if out is not None:
        return out
    x = as_expr(x)
    if full_matrices:
        raise NotImplementedError(
            f"full_matrices=True would build a {x.shape[-2]}x{x.shape[-2]} basis; lazymat "
            "returns the reduced SVD (pass full_matrices=False)"
        )
    U, S, Vh = _truncated(x)
    return _SVD((_owned(U, x.dtype), _owned(S, _real(x.dtype)), _owned(Vh, x.dtype)))


@budgeted
@reads_through_casts
def svdvals(x: Any, full: bool = False) -> torch.Tensor:
    """The nonzero singular values, descending, shape ``(..., k)`` as for :func:`svd`;
    ``full=True`` pads with zeros to ``(..., min(m, n))`` like ``torch.linalg.svdvals``."""
    out = _compiled(x, "svdvals", (full,))
    if out is not None:
        return out
    x = as_expr(x)
    sp, grad = _call_spectrum(x, values_only=True)
    S = _leading(x, sp, _kept(x, sp), True, grad)[1]
    real = _real(x.dtype)
    if full and S.shape[-1] < min(x.shape[-2:]):
        S = _pad(S, min(x.shape[-2:]), keep_nan=_may_hold_nan(sp, S.shape[-1]))
        return S if S.dtype == real else S.to(real)
    return _owned(S, real)


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


# ---- compiled calls ---------------------------------------------------------------------
# A product of data leaves built for one call (``torch.linalg.svdvals(lazy(A) @ lazy(B) @
# lazy(C))`` from new tensors, some maybe read ``.mT``: the commonest small-matrix call) asks the
# general path the same questions every time: which route, which LAPACK op, how many values past
# the rank bound are noise, which tolerance rule, whether a member may hold NaN. The first call
# of an op on a structure (the leaves' shapes and which are read transposed, the dtype, the
# device, the op and its options, the route constants and the planner) asks them once, with the
# general path's own functions, and keeps the answers in a closure (:class:`_Compiled`); every
# later call with the same key runs only the product through its warm plan, one LAPACK call, a
# read-back thresholded on the host and the answer out. What the closure cannot answer as the
# general path would (an inf or NaN entry, a budget that does not fit, gradients, a product read
# before) goes to the general path.


class _Compiled(NamedTuple):
    """One structure's call: ``run(tensors)`` (the leaves' tensors, left to right) gives the
    answer, or None where the general path must answer (non-finite values: it says which
    members are NaN); ``need``, the bytes the general path would check against the memory budget
    (the dense route's predicted peak, or the plan's work)."""

    run: Callable[[list[torch.Tensor]], Any]
    need: int


_GENERAL = _Compiled(lambda tensors: None, 0)  # a structure the general path answers
_CALLS: dict[tuple, _Compiled] = {}  # by (op, options, dtype, device, leaf shapes, settings, constants)
_CALLS_KEPT = 1024
# the route decision (dense_is_cheaper's op) behind each compiled op
_ROUTE_OP = {"svdvals": "svdvals", "matrix_rank": "svdvals", "norm": "svdvals", "cond": "svdvals",
             "fro": "matrix_norm", "svd": "svd", "pinv": "svd", "eigvals": None}


def _compiled(x: Any, op: str, options: tuple) -> Any:
    """``op`` with ``options`` on ``x`` by its structure's compiled call; None where the general
    path answers: ``x`` is not a product of distinct data leaves read for the first time (a
    second call reads the spectrum the general path caches on ``x``), gradients are
    recorded, a leaf holds cached products, the structure takes another route, the memory
    budget is set or tight and the call's work does not fit it, or the values are not finite."""
    if type(x) is not MatMul or x._cache_dict or forward_ad._current_level >= 0:  # (a plain tensor;
        return None  # a cache read without making one, see Expr._cache; forward mode, _needs_grad)
    leaves, transposed = leaf_chain(x), None
    if leaves is None:
        chain = transposed_leaf_chain(x)  # operands read as .mT (plain chains never get here)
        if chain is None:
            return None
        leaves, transposed = chain
    grad, shapes, tensors = torch.is_grad_enabled(), [], []
    for leaf in leaves:
        t = leaf.tensor
        if t is None or t.shape != leaf.shape:
            return None  # a symbol or a resized tensor (the general path raises)
        if t.requires_grad:
            if grad:
                return None  # autograd to record
            t = t.detach()  # read detached, as execute._contract reads it
        shapes.append(leaf.shape)
        tensors.append(t)
    if len(set(leaves)) != len(leaves) or not holds_none(leaves):
        return None  # the general path shares repeated leaves and reads products cached on them
    if transposed is not None:
        tensors = [t.mT if flip else t for t, flip in zip(tensors, transposed, strict=True)]
    route = _ROUTE_OP[op]
    key = (op, options, x.dtype, x.device, tuple(shapes), transposed, settings.get("optimize"),
           DENSE_MAX_ELEMENTS, FACTORED_OVERHEAD_FLOPS.get(route), REDUCED_OVERHEAD_FLOPS.get(route),
           FACTORED_OVER_REDUCED_FLOPS.get(route), HOST_VALUES, HOST_CHECK_ENTRIES)
    call = _CALLS.get(key)
    if call is None:
        call = _CALLS[key] = _compile(x, op, options, leaves, transposed)
        if len(_CALLS) > _CALLS_KEPT:
            _CALLS.pop(next(iter(_CALLS)), None)  # the oldest (another thread may have dropped it)
    if call is _GENERAL:
        return None
    if (call.need > settings.ALWAYS_FITS or settings.get("memory_budget") is not None) and (
            call.need > device_budget(x.device)):
        return None
    # read once: a second call takes the general path, which caches (the first call's compiling
    # may have cached the form). Marked before the run: after LAPACK every line runs from cold
    # caches, and making the node's cache is a frame and a dict
    cache = x._cache
    cache["read"] = True
    out = call.run(tensors)
    if out is None:  # the general path answers this first call as its own
        cache.pop("read", None)  # (another thread may have cleared it)
    return out


def _compile(x: Expr, op: str, options: tuple, leaves: list[Leaf], transposed: tuple[bool, ...] | None
             ) -> _Compiled:
    """The call of ``op`` on ``x``'s structure, decided by the general path's rules: ``x`` the
    product of ``leaves``, those flagged in ``transposed`` (None: none) read as ``.mT``."""
    batch = tuple(x.shape[:-2])
    count = math.prod(batch)
    if op == "eigvals":  # a batch's shared products are kept on its leaves (the general path)
        return _compile_eigvals(x, options, leaves, transposed) if not batch else _GENERAL
    route = _ROUTE_OP[op]
    if count == 0 or not _cheaper_by_flops(x, route) or (op == "fro" and _form(x).terms != 1):
        return _GENERAL  # the factored route (dense_is_cheaper, dense_norm_route)
    product = _product_plan(x, leaves, transposed)
    if product is None:
        return _GENERAL
    plan, work = product
    bound = _peak_bound(x, route)  # dense_is_cheaper's test: the bound fits, or else explain's peak
    need = max(bound if bound <= settings.ALWAYS_FITS else min(bound, _dense_peak(x, route)), work)
    wd = _work_dtype(x.dtype)

    def dense(tensors: list[torch.Tensor]) -> torch.Tensor:  # _dense
        D = _contract(tensors, plan)
        return D if D.dtype == wd else D.to(wd)

    if op == "fro":
        real = _real(x.dtype)

        def fro(tensors: list[torch.Tensor]) -> torch.Tensor:
            out = torch.linalg.matrix_norm(dense(tensors))
            return out if out.dtype == real else out.to(real)

        return _Compiled(fro, need)
    m, n = x.shape[-2:]
    width = min(m, n, _inner_width(x))  # _dense_decompose: values past it are rounding noise
    if batch and count * min(m, n) > HOST_VALUES:
        return _GENERAL  # the general path thresholds such a batch on the device
    finish, atol, rtol = (_batch_finisher if batch else _finisher)(x, op, options)
    scale = _eps(wd) * (width + math.sqrt(m + n))  # _dense_spectrum's floor of one product
    values_dtype = _real(wd)
    least, relative = _host_rule(x, values_dtype, atol, rtol)
    side = small_reduction(x, route)
    reduced = None if side is None else _reduced_call(x, leaves, transposed, side, route == "svd")
    shape = tuple(x.shape) if side is None else (*batch, *((m, width) if side == "right" else (width, n)))
    padding = min(m, n) - width if reduced and op == "svdvals" and options[0] else 0
    f32, cast = values_dtype == torch.float32, x.dtype != wd
    kept = _host_cut(width, least, relative, scale, f32)
    if not batch:
        single = _single_run(plan.run, reduced, side, route == "svd", shape, x.device, padding, kept,
                             finish, wd if cast else None)
        return _Compiled(single, need)
    lapack = _svdvals if route == "svdvals" else _reduced_svd
    decompose = for_shape(lapack, shape, x.device)  # split_batch's rule for this shape
    quiet, LinAlgError = mkl_quiet.quiet.call, torch.linalg.LinAlgError

    # after LAPACK every line runs with cold caches (each new function or torch op costs
    # microseconds): the least work, on the host, with the values read back at once
    def run(tensors: list[torch.Tensor]) -> Any:
        if reduced is None:
            D, Q = _contract(tensors, plan), None
            D = D.to(wd) if cast else D
        else:
            D, Q = reduced(tensors)
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

    return _Compiled(run, need)


_FLOAT32 = struct.Struct("f")


def _host_cut(width: int, least: float, relative: float, scale: float, f32: bool
              ) -> Callable[[list[float]], int]:
    """``kept(values)``: how many of one matrix's values read back :func:`_host_tolerance`'s
    rule keeps (``least``, ``relative`` to the largest, rounded as a float32 tensor holds it
    where ``f32``, and ``scale`` times their 2-norm: :func:`_dense_spectrum`'s floor), of those
    up to the rank bound ``width`` (LAPACK's are non-increasing: the kept ones are a prefix, at
    most ``width`` long, and the first is the largest); -1 when one is not finite (the general
    path answers such a member NaN)."""
    hypot, inf, pack, unpack, bisect_left, neg = (math.hypot, math.inf, _FLOAT32.pack, _FLOAT32.unpack,
                                                  bisect.bisect_left, operator.neg)
    last = width - 1
    # above ``top * over`` is above ``top`` rounded to the nearest float32 (at most half an ulp
    # away where ``top`` is at least float32's smallest normal, ``normal``): the commonest answer,
    # the whole prefix, is then decided without rounding (two C calls fewer, from cold caches)
    over, normal = (1 + 2.0**-23, 2.0**-126) if f32 else (1.0, 0.0)

    def kept(values: list[float]) -> int:
        total = hypot(*values)
        if not total < inf:
            return -1
        top = relative * values[0] if width else 0.0
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
    """The compiled call of one matrix (no batch): ``run(tensors)``, ``tensors`` the leaves'
    (as read, none recording a gradient), as :func:`_compile`'s batch loop for one member, with
    the fewest Python frames from the product to the answer's finisher. ``contract`` is the
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

    def run(tensors: list[torch.Tensor]) -> Any:
        if reduced is None:
            D, Q = contract(tensors, matmul, layout_matmul), None
            if cast is not None:
                D = D.to(cast)
        else:
            D, Q = reduced(tensors)
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
                  vectors: bool) -> Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]]:
    """``tensors -> (M, Q)``, :func:`reduce_small` of the product of ``leaves`` (as viewed) split
    where :func:`lazymat.core.factor` splits ``x``: each side contracted by its chain's plan,
    in the dtype decompositions run in."""
    L = factor(x)[0]
    j = len(canonical(L).terms[0].factors)
    shapes = [(*leaf.shape[:-2], leaf.shape[-1], leaf.shape[-2]) if transposed and transposed[i]
              else tuple(leaf.shape) for i, leaf in enumerate(leaves)]
    plans = [plan_chain(tuple(part), x.dtype.itemsize) if len(part) > 1 else None
             for part in (shapes[:j], shapes[j:])]
    wd = _work_dtype(x.dtype)
    cast = x.dtype != wd

    def formed(tensors: list[torch.Tensor], plan: ChainPlan | None) -> torch.Tensor:
        t = tensors[0] if plan is None else _contract(tensors, plan)
        return t.to(wd) if cast else t

    def reduced(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        left, right = formed(tensors[:j], plans[0]), formed(tensors[j:], plans[1])
        # R^H row-major, as the general path's dense_side(R, True): the reduced matrix's GEMM
        # then reads the same layouts (a view rounded otherwise: pinv's signs differed)
        return reduce_small(side, left, right.mH.contiguous(), vectors)

    return reduced


def _product_plan(x: Expr, leaves: list[Leaf], transposed: tuple[bool, ...] | None
                  ) -> tuple[ChainPlan, int] | None:
    """``(plan, work bytes)`` by which :func:`lazymat.execute.evaluate` runs the product of
    ``leaves`` (``transposed``: those read as ``.mT``) that ``x`` is: a plain chain without a
    batch by the chain's plan (execute's fresh path); else by the plan of its form's single
    term, every step through ``layout.matmul`` where the leaves' product cache would keep a
    step (``_run_term``'s loop; the compiled call keeps nothing). None when the form is not
    those leaves as those views, in order."""
    if transposed is None and (len(x.shape) == 2 or math.prod(x.shape[:-2]) == 1):
        plan = plan_chain(tuple([tuple(leaf.shape) for leaf in leaves]), x.dtype.itemsize)
        return plan, plan.work_bytes
    c = canonical(x)
    term = c.terms[0] if len(c.terms) == 1 else None
    views = [(("mT",),) if flip else () for flip in transposed or (False,) * len(leaves)]
    if (term is None or term.has_coefficient or len(term.factors) != len(leaves)
            or any(f.base is not leaf or f.ops != ops or not (f.plain or ops)
                   for f, leaf, ops in zip(term.factors, leaves, views, strict=False))):
        return None
    whole = plan_canon(c)
    plan = whole.terms[0]
    found, skip, keep = leaf_products(term, plan)
    if found or skip:
        return None  # a product cached on the leaves (holds_none said there is none)
    if keep:
        plan = dataclasses.replace(plan, plain=(False,) * len(plan.plain))
    return plan, whole.work_bytes


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


def _compile_eigvals(x: Expr, options: tuple, leaves: list[Leaf], transposed: tuple[bool, ...] | None
                     ) -> _Compiled:
    """eigvals of a single product from the core ``R @ L`` (:func:`_rotated_core`): the leaves
    rotated at :func:`lazymat.core.factor`'s split, contracted by their plan, checked finite
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
    wd, out_dtype = _work_dtype(x.dtype), _complex(x.dtype)
    if x.device.type != "cpu":  # the core's placement (_core_device) is asked on every call

        def placed(tensors: list[torch.Tensor]) -> torch.Tensor | None:
            core = _contract([tensors[i] for i in order], plan)
            core = core if core.dtype == wd else core.to(wd)
            if not math.isfinite(torch.linalg.vector_norm(core)):
                return None  # the general path finds the member and answers it NaN
            (vals,) = _core_eigen(core, False)
            vals = _pad(vals, n, keep_nan=False) if full else vals  # finite core: no NaN member
            return vals if vals.dtype == out_dtype else vals.to(out_dtype)

        return _Compiled(placed, plan.work_bytes)
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

    def run(tensors: list[torch.Tensor]) -> torch.Tensor | None:
        core = contract([tensors[i] for i in order], matmul, layout_matmul)
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
        return torch.tensor([values[i] for i in ranked] + zeros, dtype=out_dtype)

    return _Compiled(run, plan.work_bytes)


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


# ---- eigenvalues ----------------------------------------------------------------------------
def eig_core(x: Expr) -> Expr:
    """The ``r x r`` (lazy) matrix ``R @ L`` whose nonzero eigenvalues are ``X``'s (the matrix
    itself when it is its own core)."""
    L, R = factor(x)
    if is_identity(L):
        return R
    if is_identity(R):
        return L
    return R @ L


def _sort_desc(vals: torch.Tensor, *others: torch.Tensor):
    order = torch.argsort(vals.abs(), dim=-1, descending=True, stable=True)
    vals = vals.gather(-1, order)
    return (vals, *(o.gather(-1, order.unsqueeze(-2).expand_as(o)) for o in others))


def _eigen(x: Expr, vectors: bool, full: bool = False):
    """Eigenvalues (and vectors) of a square ``X``.

    - A single term that is its own core goes to ``torch.linalg.eig`` whole.
    - The eigenvalues of a single product are those of the ``r x r`` core ``R @ L`` (planned as
      one product, so shared work across a batch is found); a product cannot cancel.
    - A sum, or when vectors are asked for: ``X`` is replaced by its nonzero triplets,
      ``X = U S Vh``. The eigenvalues of the ``k x k`` core ``S Vh U`` are ``X``'s nonzero ones
      (plus zeros when ``X`` is not diagonalisable on its range), and ``U w`` is an
      eigenvector of ``X`` for every core eigenpair ``(lambda, w)``, the zero eigenvalues
      included (``X U w = U (S Vh U w) = 0``), never rounding noise. Exact cancellation
      leaves no triplets, hence no eigenvalues."""
    wd = _work_dtype(x.dtype)
    if settings.get("memory_budget") is not None and len(canonical(x).terms) == 1 and (
            not vectors or any(map(is_identity, factor(x)))):
        return _core_in_blocks(x, vectors, full)
    core = None if vectors else _rotated_core(x)
    if core is None:
        L, R = factor(x)
        single = len(canonical(x).terms) == 1
        if single and (not vectors or is_identity(L) or is_identity(R)):
            core = eig_core(x).to_dense()
    if core is not None:
        core = core.to(wd)
        bad = _nonfinite_members(core)
        return _nan_eigen(_core_eigen(_zero_members(core, bad), vectors), bad)
    U, S, Vh = _truncated_beside(x, "eig" if vectors else "eigvals full" if full else "eigvals")
    bad = _nonfinite_members(S[..., None])  # a member with non-finite input has NaN triplets
    U, S, Vh = _zero_members(U, bad), _zero_members(S[..., None], bad)[..., 0], _zero_members(Vh, bad)
    core = (S.to(U.dtype)[..., :, None] * Vh) @ U
    if not vectors:
        return _nan_eigen(_core_eigen(core, False), bad)
    vals, W = _core_eigen(core, True)
    return _nan_eigen((vals, U.to(W.dtype) @ W), bad)


def _solver_bytes(members: int, r: int, dtype: torch.dtype) -> int:
    """Bytes ``torch.linalg.eigvals`` (or ``eig``) of ``members`` ``r x r`` cores of ``dtype``
    allocates: ``linalg_eig``'s values and vectors (complex; the vectors for eigvals too), twice
    over where :func:`lazymat.cpu_batches.split_batch` runs them on threads and joins the parts."""
    c = _complex(dtype).itemsize
    joined = 2 if torch.get_num_threads() > 1 and members > 1 else 1
    return joined * members * r * (r + 1) * c


def _core_in_blocks(x: Expr, vectors: bool, full: bool) -> tuple[torch.Tensor, ...]:
    """Eigenvalues (and, for a matrix that is its own core, vectors) of a single product under
    a memory budget: the ``r x r`` cores (:func:`eig_core`) formed and solved as many members a
    block as fit, each block's peak its core's unsliced work, its cores, the solver's output
    (:func:`_solver_bytes`) and the sort's values, indices and gathered vectors, beside the
    batch's answer (``full``: padded to ``n``); :class:`BudgetTooSmall` names one member's."""
    wd = _work_dtype(x.dtype)
    batch = tuple(x.shape[:-2])
    r = eig_core(x[tuple(0 for _ in batch)] if batch else x).shape[-1]
    core_work: dict[tuple, int] = {}

    def costs(shape: tuple) -> tuple[int, int]:
        m = math.prod(shape)
        if shape not in core_work:
            core = eig_core(x[tuple(slice(0, c) for c in shape)])
            core_work[shape] = plan_canon(canonical(core)).work_bytes
        real, c = _real(wd).itemsize, _complex(wd).itemsize  # the sort: |values|, values, indices, gathered
        sort = m * r * (2 * c + 2 * real + 8) + (2 * m * r * r * c if vectors else 0)
        held = m * r * r * wd.itemsize + max(_solver_bytes(m, r, wd), sort)
        return core_work[shape] + held, m * 10 * r ** 3

    def compute(block: Expr, _: tuple | None) -> tuple[torch.Tensor, ...]:
        with not_kept():  # a span kept on the leaves would outlive the block that counted it
            core = eig_core(block).to_dense(memory_budget=2**62).to(wd)  # its work is in costs
        bad = _nonfinite_members(core)
        return _nan_eigen(_core_eigen(_zero_members(core, bad), vectors), bad)

    budget = device_budget(x.device)
    op = "eig core" if vectors else "eigvals core full" if full else "eigvals core"
    one = costs(tuple(1 for _ in batch))[0] + _result_bytes(x, op)
    if one > budget:
        dtype = str(x.dtype).replace("torch.", "")
        raise BudgetTooSmall(f"eigvals of a {tuple(x.shape)} {dtype} expression", "one matrix of the batch",
                             budget, one, x.device)
    return _in_blocks(x, op, compute, costs=costs)


def _after_svd_bytes(x: Expr, op: str) -> int:
    """Bytes the steps after the triplets ``U S Vh`` hold for the whole batch, beside them, at
    most (``k`` at most :func:`_result_bytes`' bound): the scaled ``S Vh``, the
    core ``S Vh U``, the solver's output (:func:`_solver_bytes`), the sort's (values, |values|,
    indices, the gathered vectors) and for eig ``U`` cast complex and ``U W`` (eigvals: the padded
    values of ``full=True``)."""
    b, n = math.prod(x.shape[:-2]), x.shape[-1]
    k = min(n, _inner_width(x))
    wd = _work_dtype(x.dtype)
    w, real, c = wd.itemsize, _real(wd).itemsize, _complex(wd).itemsize
    sort = k * (real + 8 + c) + (k * k * c if op == "eig" else 0)  # (op: "eigvals full" with full=True)
    vectors = 2 * n * k * c if op == "eig" else 2 * n * c + 1 if op == "eigvals full" else 0
    return b * (k * n * w + k * k * w + sort + vectors) + _solver_bytes(b, k, wd)


def _truncated_beside(x: Expr, op: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_truncated` under the budget less what ``op``'s steps after it hold for the whole
    batch (:func:`_after_svd_bytes`), so that the call's peak is within the budget; the
    minimum a refusal names is the SVD's plus theirs."""
    after = _after_svd_bytes(x, op) if settings.get("memory_budget") is not None else 0
    try:
        with _less_budget(x.device, after):
            return _truncated(x)
    except BudgetTooSmall as err:
        if not after:
            raise
        raise BudgetTooSmall(err.context, err.block, device_budget(x.device),
                             err.minimum - blas_workspace(x.device) + after, x.device) from None


def _rotated_core(x: Expr) -> torch.Tensor | None:
    """The dense core ``R @ L`` of :func:`eig_core` for a single product of leaf views
    ``c V_1 ... V_n``: the same views rotated at :func:`lazymat.core.factor`'s split ``j``,
    ``c V_{j+1} ... V_n V_1 ... V_j``, formed through the plan of its shapes (warm after the
    first call) without building an expression; ``j`` is decided once per structure
    (:data:`_ROUTES`). Autograd records through it as through ``to_dense``. None for any other
    form, and when the plan's work needs the budget checked (the general path slices it)."""
    form = _form(x)
    if form.key is None:
        return None
    key = ("eig split", form.key)
    j = _ROUTES.get(key)
    if j is None:
        L, R = factor(x)
        j = 0 if is_identity(L) else form.factors if is_identity(R) else len(canonical(L).terms[0].factors)
        _remember(key, j)
    t = canonical(x).terms[0]
    rotated = t.factors[j:] + t.factors[:j]
    shape = (*x.shape[:-2], rotated[0].shape[-2], rotated[-1].shape[-1])
    c = Canon((Term(t.coef, t.scalars, rotated, shape),), shape, x.dtype, x.device)
    plan = plan_canon(c)
    if not fits(c.device, plan.work_bytes):
        return None
    return run_canon(c, _Memo(*plan_sharing(c)), plan)


def _core_eigen(core: torch.Tensor, vectors: bool) -> tuple[torch.Tensor, ...]:
    """``(values,)`` or ``(values, vectors)`` of the square ``core``, by descending modulus."""
    if vectors:
        return _sort_desc(*_small(torch.linalg.eig, core, "eig"))
    return _sort_desc(_small(torch.linalg.eigvals, core, "eig"))


def _nan_eigen(result: tuple[torch.Tensor, ...], bad: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``result`` of :func:`_core_eigen` with the members ``bad`` (non-finite input) all NaN,
    as torch answers on CUDA for such a member; the other members keep their answers."""
    if bad is None:
        return result
    vals, *vecs = result
    return (_nan_members(vals, bad, 1), *(_nan_members(v, bad, 2) for v in vecs))


@budgeted
@reads_through_casts
def eigvals(x: Any, full: bool = False) -> torch.Tensor:
    """Eigenvalues of a square ``X``, complex, shape ``(..., k)`` with ``k`` the numerical rank
    (:func:`svd`), sorted by descending modulus (ties keep the solver's order); a single
    matrix that is its own core gives all ``n``. The other eigenvalues are zero: ``full=True`` appends
    them to length ``n``."""
    out = _compiled(x, "eigvals", (full,))
    if out is not None:
        return out
    x = as_expr(x)
    _square(x, "eigvals")
    vals = _cached(x, "eigvals", lambda: _eigen(x, vectors=False, full=full)[0])
    vals = _pad(vals, x.shape[-1]) if full else vals
    return vals if vals.dtype == _complex(x.dtype) else vals.to(_complex(x.dtype))


@budgeted
@reads_through_casts
def eig(x: Any) -> torch.return_types.linalg_eig:
    """Eigenpairs ``(vals (..., k), vecs (..., n, k))`` (torch's named tuple: ``.eigenvalues``,
    ``.eigenvectors``) of a square ``X``, sorted like
    :func:`eigvals`: ``X @ vecs[..., j] = vals[j] * vecs[..., j]`` with unit columns, for zero
    eigenvalues too (see :func:`_eigen`). The ``n - k`` pairs not returned span the null
    space of ``X`` beyond its range, which lazymat never builds."""
    x = as_expr(x)
    _square(x, "eig")
    vals, vecs = _cached(x, "eig", lambda: _eigen(x, vectors=True))
    c = _complex(x.dtype)
    return _EIG((vals.to(c), vecs.to(c)))


# ---- Hermitian eigenvalues ---------------------------------------------------------------
# A Hermitian ``X = U S Vh`` (its nonzero triplets) is ``U C U^H`` with the ``k x k`` core
# ``C = U^H X U = S Vh U``: its eigenvalues are ``C``'s and zeros, its eigenvectors ``U W``
# (orthonormal, as ``eigh``'s) for ``C = W diag(w) W^H``. Nothing is read off one triangle as
# torch does; ``X`` is checked Hermitian instead, from the same triplets and without
# cancellation: with ``V = U P + V_out`` (``P = U^H V``, ``V_out`` orthogonal to ``U``),
# ``||X - X^H||_F^2 = ||C - C^H||_F^2 + 2 ||V_out S||_F^2``.
def _hermitian_core(x: Expr) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(U, C, bad)``: the basis, the Hermitian core (``(C + C^H) / 2``) and the members with
    non-finite input (None when none); ValueError when ``X`` is not Hermitian to within the
    square root of its dtype's unit roundoff, relative to its largest singular value."""
    U, S, Vh = _truncated(x)
    bad = _nonfinite_members(S[..., None])  # (their core is zeroed for the solver, not U, S, Vh:
    S = S.to(U.dtype)                       # copies of those were held beside the spectrum, uncounted)
    VhU = Vh @ U
    C = S[..., :, None] * VhU  # no (k, n) temporary: rows scaled after the product
    with torch.no_grad():
        asymmetry = (torch.linalg.matrix_norm(C.detach() - C.detach().mH) ** 2
                     + 2 * _outside_squares(x, U.detach(), S.detach(), Vh.detach(), VhU.detach())).sqrt()
    largest = S.real[..., 0] if S.shape[-1] else torch.zeros(S.shape[:-1], dtype=asymmetry.dtype)
    tolerance = math.sqrt(_eps(x.dtype))
    over = asymmetry > tolerance * largest  # (False for a NaN member: it answers NaN)
    if bool(over.any()):
        at = tuple(over.nonzero()[0].tolist())
        ratio = (asymmetry[at] / largest[at]).item()
        member = f" (batch member {at})" if at else ""
        raise ValueError(f"eigvalsh/eigh need a Hermitian matrix: the {tuple(x.shape)} expression has "
                         f"||X - X^H||_F / ||X||_2 = {ratio:.3g}{member}, above the tolerance "
                         f"{tolerance:.2g}; (X + X.mH) / 2 is its Hermitian part")
    return U, _zero_members((C + C.mH) / 2, bad), bad


def _outside_squares(x: Expr, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor,
                     VhU: torch.Tensor) -> torch.Tensor:
    """``||(V - U U^H V) S||_F^2`` per batch member (``VhU = Vh @ U``): one ``(n, k)``
    temporary a member, made in place, for as many members at a time as fit the budget beside
    the triplets already held (:func:`_in_blocks`, one member a block where none fits): the whole
    batch's would hold half as much again as ``U`` and ``Vh``. No conjugated copy of ``U`` or
    ``Vh`` (the temporary is conjugated instead, which keeps its norm; S is real), no ``|.|``
    temporary (a complex value's norm is read off its real view)."""
    batch, n, k = U.shape[:-2], U.shape[-2], U.shape[-1]
    if not math.prod(batch):  # an empty batch
        return torch.zeros(batch, dtype=_real(U.dtype), device=U.device)
    real = _real(U.dtype).itemsize
    held = (sum(t.untyped_storage().nbytes() for t in (U, S, Vh))  # and the cores Vh U, C and ||C - C^H||^2
            + 2 * math.prod(batch) * k * k * U.element_size() + math.prod(batch) * real
            + _kept_qr_bytes(x))  # (and the shared leaves' QRs the SVD kept)
    member = (n * k + (k * k if U.is_complex() else 0)) * U.element_size() + 2 * real  # (resolve_conj, norm)

    def costs(shape: tuple) -> tuple[int, int]:  # a block's temporaries beside what is held
        return held + math.prod(shape) * member, math.prod(shape) * n * k * (2 * k + 3)

    def squares(_: Expr, key: tuple | None) -> torch.Tensor:
        u, s, vh, vhu = (U, S, Vh, VhU) if key is None else (U[key], S[key], Vh[key], VhU[key])
        outside = u @ vhu.mH.resolve_conj()  # U P, P = U^H V; conjugated in place: vh.mT read without a copy
        outside.conj_physical_().sub_(vh.mT).mul_(s[..., None, :])
        real = torch.view_as_real(outside) if outside.is_complex() else outside[..., None]
        return torch.linalg.vector_norm(real, dim=(-3, -2, -1)) ** 2

    return _in_blocks(x, "hermitian check", squares, costs=costs) if batch else squares(x, None)


def _hermitian_after_bytes(x: Expr, vectors: bool, full: bool) -> int:
    """Bytes eigvalsh/eigh hold beside the spectrum once their SVD is done (its blocks' work is
    freed by then: the SVD's peak and these are never held together), at most: ``S`` cast to
    ``U``'s dtype (complex) and the largest of the check's (``Vh U``, ``C`` and ``C - C^H`` or one
    member's ``(n, k)`` temporary of :func:`_outside_squares` with the norms), the symmetrised
    core's (``Vh U``, ``C``, ``C + C^H`` and its half), the solver's (the core, values, and for
    eigh ``W`` and ``U W``; twice where :func:`lazymat.cpu_batches.split_batch` joins thread
    parts) and ``full=True``'s (the values, the padded answer and its scatter index), with the
    answer's cast to ``X``'s dtype. ``k`` is the rank bound: the triplets kept are at most it."""
    b, n = math.prod(x.shape[:-2]), x.shape[-1]
    k = min(n, _inner_width(x))
    wd = _work_dtype(x.dtype)
    w, real = wd.itemsize, _real(wd).itemsize
    joined = 2 if torch.get_num_threads() > 1 and b > 1 else 1
    core = b * k * k * w  # the check: C - C^H and its norm; one member's temporary, its norm, beside
    member = (n * k + (k * k if wd.is_complex else 0)) * w + 2 * real  # ||C - C^H||^2 and the result; the sum
    check = 2 * core + max(core + 2 * b * real, 2 * b * real + member, 5 * b * real)
    # (and the values' NaN copy for members with non-finite input)
    solver = (core + joined * (b * k * real + (core if vectors else 0)) + (b * n * k * w if vectors else 0)
              + b * k * real)
    padded = b * k * real + b * n * real + b * k * 9 if full else 0
    cast = (b * n * k * x.dtype.itemsize if vectors else b * (n if full else k) * _real(x.dtype).itemsize
            ) if x.dtype != wd else 0
    symmetrised = 4 * core + b * real + b + 1  # beside the asymmetries and their test (and its any())
    return (b * k * w if wd.is_complex else 0) + max(check, symmetrised, solver, padded + cast)


def _hermitian_fits(x: Expr, vectors: bool, full: bool) -> None:
    """Raise :class:`BudgetTooSmall` before anything runs when the spectrum eigvalsh/eigh
    decompose (:func:`_result_bytes`) and what they hold beside it after the SVD
    (:func:`_hermitian_after_bytes`) exceed the active budget, naming the least budget under
    which both the SVD (in blocks) and the steps after it run: the SVD's peak and theirs are
    held one after the other (:func:`_after_spectrum_fits`)."""
    if settings.get("memory_budget") is not None:
        _after_spectrum_fits(x, lambda: _result_bytes(x, "svd") + _kept_qr_bytes(x)
                             + _hermitian_after_bytes(x, vectors, full),
                             "eigh" if vectors else "eigvalsh",
                             "its spectrum beside the Hermitian steps after the SVD")


def _hermitian_eigen(x: Expr, vectors: bool, full: bool = False) -> tuple[torch.Tensor, ...]:
    """Ascending eigenvalues of the nonzero triplets' core (and the eigenvectors ``U W``)."""
    _hermitian_fits(x, vectors, full)
    U, C, bad = _hermitian_core(x)
    if not vectors:
        return (_nan_members(_small(torch.linalg.eigvalsh, C, "eig"), bad, 1),)
    w, W = _small(torch.linalg.eigh, C, "eig")
    UW = U @ W
    if bad is not None:  # in place: U W is ours (the product's backward reads U and W, not it)
        UW.masked_fill_(bad[..., None, None], complex("nan+nanj") if UW.is_complex() else math.nan)
    return _nan_members(w, bad, 1), UW


def _uplo(UPLO: Any, what: str) -> None:
    if UPLO not in ("L", "U"):
        raise ValueError(f"{what}: UPLO must be 'L' or 'U' (as torch), got {UPLO!r}")


@budgeted
@reads_through_casts
def eigvalsh(x: Any, UPLO: str = "L", *, full: bool = False) -> torch.Tensor:  # noqa: N803 - torch's name
    """Eigenvalues of a Hermitian ``X`` in ascending order, real, like ``torch.linalg.eigvalsh``:
    the ``k`` of its nonzero singular triplets (:func:`svd`), or with ``full=True`` all ``n``
    (the zeros in their place). ``X`` must be Hermitian (checked, see :func:`_hermitian_core`);
    torch reads one triangle instead, so ``UPLO`` only is checked to be ``'L'`` or ``'U'``."""
    x = as_expr(x)
    _square(x, "eigvalsh")
    _uplo(UPLO, "eigvalsh")
    w = _cached(x, "eigvalsh", lambda: _hermitian_eigen(x, vectors=False, full=full)[0])
    return (_zeros_in_place(w, x.shape[-1]) if full else w).to(_real(x.dtype))


def _zeros_in_place(w: torch.Tensor, n: int) -> torch.Tensor:
    """Ascending ``w (..., k)`` with ``n - k`` zeros in their place, ascending, in one new
    ``(..., n)`` tensor (padding then sorting held three); a NaN member stays NaN throughout."""
    k = w.shape[-1]
    if k >= n:
        return w
    at = torch.arange(k, device=w.device) + (w >= 0) * (n - k)  # negatives first, the rest after the zeros
    out = w.new_zeros((*w.shape[:-1], n)).scatter_(-1, at, w)
    return out.masked_fill_(w[..., :1].isnan(), float("nan")) if k else out


@budgeted
@reads_through_casts
def eigh(x: Any, UPLO: str = "L") -> torch.return_types.linalg_eigh:  # noqa: N803 - torch's name
    """Eigenpairs ``(w (..., k), Q (..., n, k))`` (torch's named tuple: ``.eigenvalues``,
    ``.eigenvectors``) of a Hermitian ``X``, ascending, like
    ``torch.linalg.eigh``: ``X = Q diag(w) Q^H`` with orthonormal columns, for the ``k``
    nonzero singular triplets; the other ``n - k`` pairs (eigenvalue 0) span the null space,
    which lazymat never builds. ``X`` must be Hermitian (checked, as :func:`eigvalsh`)."""
    x = as_expr(x)
    _square(x, "eigh")
    _uplo(UPLO, "eigh")
    w, Q = _cached(x, "eigh", lambda: _hermitian_eigen(x, vectors=True))
    return _EIGH((w.to(_real(x.dtype)), Q.to(x.dtype)))


# ---- trace, diagonal, norms ---------------------------------------------------------------
def _closed(x: Expr, diag: bool) -> torch.Tensor:
    """The trace or diagonal of a square ``x``: where a term is a cat (a product with one at an
    outer end is one), joined from the diagonal blocks of its parts and of the other terms
    (:func:`lazymat.rewrite.diagonal_pieces`), each its own closed network; else one network per
    term. The executor slices its networks to the budget itself, less what the blocks already
    run hold."""
    pieces = diagonal_pieces(x)
    return _closed_network(x, diag)[0] if pieces is None else _closed_pieces(x, pieces, diag)[0]


def _closed_pieces(x: Expr, pieces: list, diag: bool) -> tuple[torch.Tensor, int]:
    """:func:`_closed` of ``x`` from its diagonal blocks ``pieces``, and the bytes their networks
    keep on the leaves (held after they return)."""
    batch = tuple(x.shape[:-2])
    values, total, held, kept = [], None, 0, 0
    for start, p in pieces:
        try:
            with _less_budget(x.device, held):
                inner = diagonal_pieces(p)
                v, k = _closed_network(p, diag) if inner is None else _closed_pieces(p, inner, diag)
        except BudgetTooSmall:  # named for the whole: a block's own least less the held bytes is refused
            from ..explain import pieces_too_small  # explain reads linalg's routes: imported on use

            raise pieces_too_small(x, "diagonal" if diag else "trace", device_budget(x.device)) from None
        kept += k
        if diag:  # the blocks' diagonals are joined at the end
            values.append((start, v))
            held += v.numel() * v.element_size() + k
        else:  # the traces are added as they come
            total = v if total is None else total + v
            held = total.numel() * total.element_size() + kept
    if not diag:
        return total.expand(batch), kept
    return _join_diagonals(values, batch, x.shape[-1]), kept


def closed_kept_bytes(x: Expr, diag: bool) -> int:
    """Bytes the closed networks of a trace or diagonal of ``x`` keep on the leaves when run
    without a budget (:func:`lazymat.network.leaf_kept_bytes`), as :func:`_closed_pieces` counts
    them, without running anything."""
    pieces = diagonal_pieces(x)
    if pieces is not None:
        return sum(closed_kept_bytes(p, diag) for _, p in pieces)
    shared = Shared()
    return sum(leaf_kept_bytes(closed_chain(t.factors, diag, x.dtype.itemsize, shared))
               for t in canonical(x).terms)


def _less_budget(device: torch.device, held: int):
    """The memory budget set less ``held`` bytes (a context), when one is set and anything is
    held (the default, a fraction of free memory, is left as it is)."""
    if not held or settings.get("memory_budget") is None:
        return contextlib.nullcontext()
    return settings.config(memory_budget=max(device_budget(device, None) - held, 0))


def _join_diagonals(values: list[tuple[int, torch.Tensor]], batch: tuple, n: int) -> torch.Tensor:
    """The length-``n`` diagonal made of blocks' diagonals ``(start, d)``, each added in at
    ``start``: joined by one ``torch.cat`` where they tile it in order, else added into zeros."""
    values = [(start, v.expand(*batch, v.shape[-1])) for start, v in values]
    starts = [start for start, _ in values]
    ends = [start + v.shape[-1] for start, v in values]
    if starts == [0, *ends[:-1]] and ends[-1] == n:
        return values[0][1] if len(values) == 1 else torch.cat([v for _, v in values], dim=-1)
    v0 = values[0][1]
    out = v0.new_zeros((*batch, n))
    for start, v in values:
        out[..., start:start + v.shape[-1]] += v
    return out


def _closed_network(x: Expr, diag: bool) -> tuple[torch.Tensor, int]:
    """One closed network per term of ``x``, run; and the bytes they may keep on the leaves (a
    budgeted run keeps none: counted anyway, on the safe side)."""
    c = canonical(x)
    shared = Shared()  # steps repeated across the terms' networks run once
    nets = [closed_chain(t.factors, diag, x.dtype.itemsize, shared) for t in c.terms]
    target = (*x.shape[:-2], *((x.shape[-1],) if diag else ()))
    dtype = str(x.dtype).replace("torch.", "")
    what = (f"{'diagonal' if diag else 'trace'} of a {tuple(x.shape)} {dtype} expression "
            f"({len(nets)} closed networks)")
    value = contract_sum(c.terms, nets, target, x.device, what)
    return value, sum(leaf_kept_bytes(n) for n in nets)


@budgeted
@reads_through_casts
def trace(x: Any) -> torch.Tensor:
    """``tr(X)``, shape ``(...)``: the sum of the main diagonal (of its ``min(m, n)`` entries
    when ``X`` is not square, as ``torch.trace``), a closed einsum network, no SVD."""
    x = as_expr(x)
    m, n = x.shape[-2], x.shape[-1]
    if m != n:
        x = x[..., : min(m, n), : min(m, n)]
    return _cached(x, "trace", lambda: _closed(x, diag=False))


@budgeted
@reads_through_casts
def diagonal(x: Any, offset: int = 0, dim1: int = -2, dim2: int = -1) -> torch.Tensor:
    """Diagonal of the last two dims, like ``torch.diagonal``: the main one ``(..., min(m, n))``
    costs O(m r) for a product after the factors; ``offset`` k is the main diagonal of the
    columns ``k:`` (rows ``-k:`` for k < 0), and ``dim1=-1, dim2=-2`` read ``X.mT``."""
    x = as_expr(x)
    dims = tuple(dim_index(d, x.shape, "diagonal") for d in (dim1, dim2))
    if sorted(dims) != [x.ndim - 2, x.ndim - 1]:
        raise NotImplementedError(
            f"diagonal(offset={offset}, dim1={dim1}, dim2={dim2}) of shape {tuple(x.shape)}: "
            "lazymat takes diagonals of the last two dims (dim1=-2, dim2=-1 or the reverse)")
    if dims[0] > dims[1]:
        x = x.mT
    if offset:  # a lazy slice: the view is pushed to the leaves
        x = x[..., :, offset:] if offset > 0 else x[..., -offset:, :]
    m, n = x.shape[-2], x.shape[-1]
    if m != n:
        k = min(m, n)
        x = x[..., :k, :k]
    return _cached(x, "diagonal", lambda: _closed(x, diag=True))


def _has_sum(c) -> bool:
    """True when the canonical form adds anything: several terms, or a block (a sum or a
    stack of terms) inside a product. Only then can terms cancel."""
    return len(c.terms) > 1 or any(isinstance(f.base, Nested) for t in c.terms for f in t.factors)


def fro_route(x: Expr):
    """The route to ``||X||_F^2`` (``explain`` shows the same choice):

    - ``("core", L, R)`` when the form contains a sum: the squared singular values of the core,
      after the zero rule. A Gram route squares the rounding error, and where terms (nearly)
      cancel that leaves ``sqrt(eps)``-relative noise instead of zero or the true small value.
    - otherwise the cheapest, by the planner's costs, of ``("network", net)``, the closed
      network ``tr(X^H X)`` of a single product, ``("split", L, R)``, ``tr((L^H L)(R R^H))``
      with each half formed once, and, where a tall outer leaf is shared across the batch
      (:func:`lazymat.core.outer_reductions`), ``("core squares", L, R)``: the sum of squares of
      the ``r x r`` core ``R_L R_R^H`` that ``svdvals`` forms (all-pairs products of heads: one
      QR per head, then one GEMM over the pairs).

    Under the memory budget the cheapest whose predicted peak fits is taken; when none fits,
    the network (the executor slices it, down to blocks of single entries)."""
    c = canonical(x)
    L, R = factor(x)
    if _has_sum(c) and not (is_identity(L) or is_identity(R)):
        return ("core", L, R)
    split = ("split", L, R)
    if len(c.terms) == 1 and len(c.terms[0].factors) > 1:
        costs = _fro_costs(x)  # the route is built for the one taken
        if is_identity(L) or is_identity(R):
            (split_flops, _, _), (net_flops, _, _) = costs
            return _fro_route_of(x, "network") if net_flops < split_flops else split
        for _, peak, kind in sorted(costs, key=lambda route: route[0]):  # the cheapest that fits
            if _fits(x, peak)[0]:
                return split if kind == "split" else _fro_route_of(x, kind)
        return _fro_route_of(x, "network")  # sliced by the executor
    return split


def fro_candidates(x: Expr) -> list[tuple[float, int, tuple]]:
    """``(FLOPs, predicted peak bytes, route)`` of the routes :func:`fro_route` weighs for a
    single product: the split Grams, the network, and (a shared tall leaf) the core squares."""
    return [(flops, peak, _fro_route_of(x, kind)) for flops, peak, kind in _fro_costs(x)]


def _fro_route_of(x: Expr, kind: str) -> tuple:
    """The route ``kind`` of :func:`fro_route` for a single product ``x``."""
    if kind == "network":
        return ("network", gram_trace(canonical(x).terms[0].factors, x.dtype.itemsize, x.dtype.is_complex))
    return (kind, *factor(x))


# (FLOPs, peak) of the split and network routes by the structure of a single product, its leaves'
# strides and the settings its plans read: a new expression of the same kind, built for every
# call, costs them once (the core squares' cost reads the leaves' cached QRs: never kept here)
_FRO_COSTS: OrderedDict = OrderedDict()
_FRO_COSTS_KEPT = 1024


def _fro_costs(x: Expr) -> list[tuple[float, int, str]]:
    """``(FLOPs, predicted peak bytes, kind)`` of the routes :func:`fro_candidates` lists."""
    c, (L, R) = canonical(x), factor(x)
    structure = _structure(x)
    key = None if structure is None else (structure, settings.get("optimize"), layout.MIN_LAYOUT_MACS, tuple(
        [None if f.base.tensor is None else f.base.tensor.stride() for f in c.terms[0].factors]))
    routes = None if key is None else _FRO_COSTS.get(key)
    if routes is None:
        itemsize = x.dtype.itemsize
        net = gram_trace(c.terms[0].factors, itemsize, x.dtype.is_complex)
        routes = [(split_gram_flops(L, R), _split_gram_peak(L, R, itemsize), "split"),
                  (net.flops, unsliced_peak(net), "network")]  # run alone: nothing retained
        if key is not None:
            _FRO_COSTS[key] = routes
            if len(_FRO_COSTS) > _FRO_COSTS_KEPT:
                _FRO_COSTS.popitem(last=False)
    batch = math.prod(x.shape[:-2])  # a QR that no two matrices share costs as much as a Gram
    if batch > 1 and not (is_identity(L) or is_identity(R) or dense_is_cheaper(x)) and any(
            s is not None and s.count < batch for s in outer_reductions(x, False)):
        peak, flops = _core_squares_cost(x)
        return [*routes, (flops, peak, "core squares")]
    return list(routes)


def _split_gram_peak(L: Expr, R: Expr, itemsize: int) -> int:
    """Bytes live in the split route: ``L`` formed (a leaf is not; a view that copies, an index
    list or a cast, is: no FLOPs, but an allocation) and kept while ``R^H`` is
    formed, then both Gram matrices (over their own batches) and the traces of their product;
    with an identity side, the other side formed and its sum of squares (as explain schedules
    them). Products a side's evaluation keeps on the leaves stay held to the end."""
    if is_identity(L) or is_identity(R):
        side = R if is_identity(L) else L
        plan = plan_expr(side)
        held = (math.prod(side.shape) * itemsize if plan.peak_bytes else 0) + kept_bytes(side)
        return max(plan.peak_bytes, held + math.prod(side.shape[:-2]) * itemsize)
    left, right = plan_expr(L), plan_expr(R.mH)
    held_l = (math.prod(L.shape) * itemsize if left.peak_bytes else 0) + kept_bytes(L)
    held_r = (math.prod(R.shape) * itemsize if right.peak_bytes else 0) + kept_bytes(R.mH)
    batch = math.prod(broadcast_shapes(L.shape[:-2], R.shape[:-2]))
    grams = (math.prod(L.shape[:-2]) + math.prod(R.shape[:-2])) * L.shape[-1] ** 2 * itemsize  # own batches
    return max(left.peak_bytes, held_l + right.peak_bytes, held_l + held_r + grams + batch * itemsize)


def _core_squares_cost(x: Expr) -> tuple[int, float]:
    """``(peak bytes, FLOPs)`` of the core-squares route: ``svdvals``' route up to its core,
    then a sum of squares instead of the core's SVD (explain's schedule of it, cached on
    ``x``)."""
    hit = x._cache.get("core squares cost")
    if hit is None:
        from ..explain import core_squares_costs  # explain reads linalg's routes: imported on use

        hit = x._cache["core squares cost"] = core_squares_costs(x)
    return hit


def _core_squares(x: Expr) -> torch.Tensor | None:
    """``||X||_F^2`` as the sum of squares of ``R_L R_R^H`` (``X = Q_L R_L R_R^H Q_R^H``, the
    sides of :func:`lazymat.core.reduced_factors`); None when a sum is not finite (an infinity
    or a NaN in the sides reaches it; the QRs would turn an infinity into NaN: the Gram route
    answers those as torch does). Only the sums are scanned, not the pairs' cores."""
    L, R, _, _ = reduced_factors(x, vectors=False)
    wd = _work_dtype(x.dtype)
    R1 = _side_qr(L, False, False, wd)[1]
    R2 = _side_qr(R, True, False, wd)[1]
    core = matmul(R1, R2.mH)
    squares = (core.real.square() + core.imag.square() if core.is_complex() else core.square()).sum((-2, -1))
    return squares if bool(torch.isfinite(squares).all()) else None


def split_gram_flops(L: Expr, R: Expr) -> int:
    """FLOPs of forming ``L`` and ``R``, their Gram matrices (each over its side's own batch: a
    side the batch shares is multiplied once) and the traces of their products (over the batch;
    complex Grams are read as real pairs: twice the entries)."""
    total = sum(plan_expr(side).flops for side in (L, R) if not is_identity(side))
    m, r, n = L.shape[-2], L.shape[-1], R.shape[-1]
    batch_l, batch_r = math.prod(L.shape[:-2]), math.prod(R.shape[:-2])
    batch = math.prod(broadcast_shapes(L.shape[:-2], R.shape[:-2]))
    return total + 2 * r * r * (batch_l * m + batch_r * n) + gram_trace_flops(batch, r, L.dtype)


def gram_trace_flops(batch: int, r: int, dtype: torch.dtype) -> int:
    """FLOPs of ``tr(G_L G_R)`` over a batch of ``r x r`` Gram pairs as the split route runs it:
    one dot product of their entries (real pairs for a complex dtype)."""
    return 2 * batch * r * r * (2 if dtype.is_complex else 1)


def _fro_squared(x: Expr) -> torch.Tensor:
    route = fro_route(x)
    if route[0] == "core":  # svdvals obeys the budget itself
        return (svdvals(x).to(_real(_work_dtype(x.dtype))) ** 2).sum(-1)
    if route[0] == "network":  # the executor slices the network to the budget itself
        try:
            return _fro_squared_by_route(x, route)
        except BudgetTooSmall as err:  # the call's minimum: another route may run whole below it
            c, (L, R) = canonical(x), factor(x)
            if len(c.terms) != 1 or len(c.terms[0].factors) < 2 or is_identity(L) or is_identity(R):
                raise  # the network is the only route
            need = min(err.minimum - blas_workspace(x.device),
                       *(peak for _, peak, r in fro_candidates(x) if r[0] != "network"))
            dtype = str(x.dtype).replace("torch.", "")
            raise BudgetTooSmall(f"matrix_norm of a {tuple(x.shape)} {dtype} expression",
                                 "its least demanding route", device_budget(x.device), need,
                                 x.device) from None
    # the route is chosen once; a block of the batch chooses its own
    prefetch = (lambda block: _share_outer_qrs(x, False, block)) if route[0] == "core squares" else None
    return _in_blocks(x, "matrix_norm", lambda block, key: _fro_squared_by_route(
        block, route if key is None else None), prefetch)


def _fro_squared_by_route(x: Expr, route: tuple | None = None) -> torch.Tensor:
    wd = _work_dtype(x.dtype)
    route = fro_route(x) if route is None else route
    if route[0] == "network":
        t = canonical(x).terms[0]
        memo = _Memo()
        vals = [view_value(f, memo).to(wd) for f in t.factors]
        conj = [x.dtype.is_complex] * len(vals) + [False] * len(vals)
        val = contract(route[1], [v.conj() for v in vals] + vals, list(t.factors) * 2, conj).real
        if not t.has_coefficient:  # no scaling by 1 (an op, a launch on a GPU)
            return val
        if not t.scalars:  # |c|^2 exact, applied in steps within the range (c may be a Wide)
            size = magnitude(t.coef)
            return times(val, fold(size, size))
        k = t.coefficient()
        return val * (k.abs() ** 2 if isinstance(k, torch.Tensor) else abs(k) ** 2)
    if route[0] == "core squares":
        squares = _core_squares(x)
        if squares is not None:
            return squares
        route = ("split", *route[1:])
    _, L, R = route
    if is_identity(L) or is_identity(R):
        dense = (R if is_identity(L) else L).to_dense().to(wd)
        return torch.linalg.matrix_norm(dense) ** 2
    Ld, RdH = dense_side(L).to(wd), dense_side(R, adjoint=True).to(wd)
    # tr(G_L G_R) = sum G_L * conj(G_R) (G_R is Hermitian): the Grams read as stored, each over
    # its own batch (einsum copied a transposed G_R, and would copy a conjugated one), a complex
    # Gram as its real pairs
    flat = [torch.view_as_real(g).flatten(-3) if g.is_complex() else g.flatten(-2)
            for g in (Ld.mH @ Ld, RdH.mH @ RdH)]
    if flat[0].ndim == flat[1].ndim == 1:  # one matrix: one dot product (einsum adds 11 views)
        return torch.dot(*flat)
    return torch.einsum("...k,...k->...", *flat)


def root_of_squares(squares: torch.Tensor) -> torch.Tensor:
    """A 2-norm from its square (rounding below 0 read as 0; NaN stays NaN), with torch's
    gradient at a zero norm when one is recorded: 0, where ``sqrt``'s infinite slope times the
    square's zero gradient gives NaN (six ops; without a gradient two, each a launch on a GPU)."""
    if not squares.requires_grad:
        return squares.clamp_min(0).sqrt_()
    zero = squares <= 0  # not a NaN
    return torch.where(zero, 0, torch.where(zero, 1, squares).sqrt())


def check_norm_dtype(x: Expr, dtype: torch.dtype | None, what: str) -> None:
    """torch's rule for a norm's ``dtype=``: a complex expression takes a complex dtype, a real
    one a real dtype, and the cast may only widen (float32 -> float64, never -> float16). A real
    dtype for a complex expression would otherwise drop the imaginary parts before the norm."""
    if dtype is None:
        return
    src = str(x.dtype).replace("torch.", "")
    if x.dtype.is_complex != dtype.is_complex:
        kind = "complex" if x.dtype.is_complex else "real"
        raise RuntimeError(f"{what}: dtype should be {kind} for the {kind} expression of shape "
                           f"{tuple(x.shape)} ({src}), got {dtype} (torch's rule)")
    if torch.promote_types(x.dtype, dtype) != dtype:
        raise RuntimeError(f"{what}: the {src} expression of shape {tuple(x.shape)} cannot be cast "
                           f"to {dtype} without narrowing (torch's rule); pick a wider dtype or none")


@budgeted
@reads_through_casts
def matrix_norm(x: Any, ord: str | float = "fro", dim: tuple = (-2, -1), keepdim: bool = False,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Matrix norms like ``torch.linalg.matrix_norm``: ``'fro'`` (no SVD), ``'nuc'``, ``2``,
    ``-2`` from the core's singular values; ``1``, ``-1``, ``inf``, ``-inf`` stream the
    matrix in row blocks (it is never held whole)."""
    if dim == (-2, -1) and dtype is None and type(ord) in (str, int, float) and ord in ("fro", "nuc", 2, -2):
        out = _compiled(x, "fro", ()) if ord == "fro" else _compiled(x, "norm", (ord,))
        if out is not None:
            return out[..., None, None] if keepdim else out
    x = as_expr(x)
    dims = tuple(dim_index(d, x.shape, "matrix_norm") for d in dim)
    if sorted(dims) != [x.ndim - 2, x.ndim - 1]:
        if ord == "fro" and len(set(dims)) == 2:  # the 2-norm of the entries over those two dims
            from .. import reduce  # reduce builds on linalg: imported on use

            return reduce.vector_norm(x, 2, dim=dims, keepdim=keepdim, dtype=dtype)
        raise NotImplementedError(f"matrix_norm over dims {dim}: lazymat supports the last two "
                                  "(and 'fro' any two)")
    if dims[0] > dims[1]:  # the norm of the transpose (ord 1 and inf trade places)
        x = x.mT
    check_norm_dtype(x, dtype, "matrix_norm")
    if dtype is not None:
        x = x.to(dtype=dtype)
    real = _real(x.dtype)
    if ord == "fro" and dense_norm_route(x):  # small matrices that fit the budget, formed whole
        out = _cached(x, "fro", lambda: torch.linalg.matrix_norm(_dense(x)))
    elif ord == "fro":
        out = _cached(x, "fro", lambda: root_of_squares(_fro_squared(x)))
    elif ord == "nuc":
        out = _truncated(x, values_only=True)[1].sum(-1)
    elif ord in (2, -2):  # the smallest counts the zeros past the rank
        S = _truncated(x, values_only=True)[1]
        out = _extreme(S if ord > 0 else _pad(S, min(x.shape[-2:]), False), ord > 0, x, ord)
    elif ord in (1, -1, math.inf, -math.inf):
        out = _abs_sum_norm(x, ord)
    else:
        raise ValueError(f"matrix_norm: unsupported ord {ord!r} (use 'fro', 'nuc', 2, -2, 1, -1, "
                         "inf, -inf)")
    out = out if out.dtype == real else out.to(real)
    return out[..., None, None] if keepdim else out


def _abs_sum_norm(x: Expr, ord: float) -> torch.Tensor:
    """Max/min absolute column (ord +-1) or row (ord +-inf) sum: the 1-norms of the columns
    (rows), streamed in blocks sized to the memory budget by :func:`lazymat.reduce.vector_norm`."""
    from .. import reduce  # reduce builds on linalg: imported on use

    sums = reduce.vector_norm(x, 1, dim=-2 if ord in (1, -1) else -1)
    return _extreme(sums, ord > 0, x, ord)


def _extreme(values: torch.Tensor, largest: bool, x: Expr, ord: Any) -> torch.Tensor:
    """Max or min over the last dim; over no values the max is 0 and the min an IndexError,
    as ``torch.linalg.matrix_norm`` does on empty matrices (in an empty batch too: torch's
    ``amin`` raises over an empty dim whatever the other dims). The zeros are a sum over no
    values, so they stay in the autograd graph (the zero matrix's norm, its values all cut)."""
    if values.shape[-1] == 0:
        if largest:
            return values.sum(-1)
        raise IndexError(f"matrix_norm(ord={ord}) of the empty matrices of shape {tuple(x.shape)}: "
                         "the minimum over no values is undefined (torch raises too)")
    return values.amax(-1) if largest else values.amin(-1)


@budgeted
@reads_through_casts
def cond(x: Any, p: Any = None) -> torch.Tensor:
    """2-norm condition number ``S_max / S_min`` like ``torch.linalg.cond`` (p None, 2, -2).

    Singular values below the core's rounding floor count as zero, so a rank-deficient
    ``X`` gives inf (torch: a huge finite number from rounding noise) and the zero matrix
    NaN (0/0, as torch); an empty matrix gives 0 like torch.

    Gradients are torch's for a matrix whose smallest singular value is exactly zero: NaN
    for ``p`` None or 2 at a rank-deficient ``X`` (its condition number is infinite; torch's
    huge finite gradient there comes from the rounding noise in its smallest value), and for
    ``p=-2`` a finite one, with 0 for the zero singular values (``sigma_min`` has a kink
    there, like ``abs`` at 0; torch takes the derivative of one side for its last
    triplet)."""
    if p is None or type(p) is int and p in (2, -2):
        out = _compiled(x, "cond", (p == -2,))
        if out is not None:
            return out
    x = as_expr(x)
    if p not in (None, 2, -2):
        raise NotImplementedError(f"cond with p={p!r}: lazymat supports p=None, 2, -2")
    real = _real(x.dtype)
    if min(x.shape[-2:]) == 0:
        return torch.zeros(x.shape[:-2], dtype=real, device=x.device)
    sp, grad = _call_spectrum(x, values_only=True)  # differentiable as torch's (_leading)
    S = _pad(_leading(x, sp, _kept(x, sp, atol=0.0, rtol=0.0), True, grad)[1], min(x.shape[-2:]), False)
    if _needs_grad(x):
        S = S + _zero_linked(x)[..., None]
        ratio = S.amin(-1) / S.amax(-1) if p == -2 else S.amax(-1) / S.amin(-1)
    else:  # divided in place: one extreme beside the answer (the budget counts no more)
        ratio = S.amin(-1).div_(S.amax(-1)) if p == -2 else S.amax(-1).div_(S.amin(-1))
    return ratio.to(real)


def _zero_linked(x: Expr) -> torch.Tensor:
    """Zeros of shape ``x.shape[:-2]`` whose gradient to each member's leaves is 0 times the
    incoming one: the singular values cut or padded as exact zeros are constants, so a
    non-finite gradient at them (``cond`` at a zero singular value: NaN, as torch answers)
    was dropped and the zero matrix got gradient 0. Added to the values, it carries that NaN
    to the member's leaves and leaves finite gradients unchanged (a product with ones)."""
    from .. import reduce  # reduce builds on linalg: imported on use

    total = reduce.sum(x, dim=(-2, -1))
    total = total.real if total.is_complex() else total
    return torch.where(total.isfinite(), total, 0) * 0


def _tolerance_args(atol: Any, rtol: Any, tol: Any, what: str) -> tuple[Any, Any]:
    """torch's legacy positional ``tol``/``rcond`` means ``atol=tol, rtol=0`` for
    ``matrix_rank`` and ``rtol=rcond`` for ``pinv``."""
    if tol is None:
        return atol, rtol
    if atol is not None or rtol is not None:
        raise TypeError(f"{what}: pass either the legacy positional tolerance or atol/rtol, "
                        "not both")
    return (tol, 0.0) if what == "matrix_rank" else (None, tol)


@budgeted
@reads_through_casts
def matrix_rank(x: Any, tol: Any = None, hermitian: bool = False, *, atol: Any = None,
                rtol: Any = None) -> torch.Tensor:
    """Numerical rank with ``torch.linalg.matrix_rank``'s tolerance rule (see
    :func:`_tolerance`): the singular values above ``max(atol, rtol * S_max)``, and above
    the core's rounding floor. ``hermitian`` is accepted for torch compatibility: the matrix
    must then be square, as torch's, and all of it is read (torch reads one triangle).

    A member with an inf or NaN entry has NaN singular values and no rank: the call raises
    :class:`NonFiniteError` (a ``torch.linalg.LinAlgError``, as torch raises for a NaN entry;
    torch's 0 for an inf entry is its NaN values compared with a tolerance)."""
    if hermitian:  # torch reads only one triangle, so it needs a square matrix
        _square(as_expr(x), "matrix_rank(hermitian=True)")
    atol, rtol = _tolerance_args(atol, rtol, tol, "matrix_rank")
    if _keyable(atol) and _keyable(rtol):
        out = _compiled(x, "matrix_rank", (atol, rtol))
        if out is not None:
            return out
    x = as_expr(x)
    sp = _small_spectrum(x, True) or _spectrum(x, values_only=True)
    k, keep = _kept(x, sp, atol, rtol, rank=True)
    if keep is None:  # every member keeps k
        return torch.full(x.shape[:-2], k, dtype=torch.int64, device=x.device)
    return keep.sum(-1)


@budgeted
@reads_through_casts
def pinv(x: Any, rcond: Any = None, hermitian: bool = False, *, atol: Any = None,
         rtol: Any = None) -> Expr | torch.Tensor:
    """Pseudo-inverse as a lazy product ``(V S^-1) @ U^H`` of shape ``(..., n, m)``, from the
    singular values kept by ``torch.linalg.pinv``'s rule (as :func:`matrix_rank`); a tensor,
    as torch's, when the ``n x m`` matrix holds no more numbers than those two factors at the
    largest rank its shapes allow (a small matrix, or one of full inner width). A member
    with an inf or NaN entry is NaN throughout (its NaN triplets are kept, as by :func:`svd`;
    torch on the CPU answers 0 for an inf entry: its NaN values fail the tolerance test)."""
    if hermitian:  # torch reads only one triangle, so it needs a square matrix
        _square(as_expr(x), "pinv(hermitian=True)")
    atol, rtol = _tolerance_args(atol, rtol, rcond, "pinv")
    if _keyable(atol) and _keyable(rtol):
        out = _compiled(x, "pinv", (atol, rtol))
        if out is not None:
            return out
    x = as_expr(x)
    _pinv_fits(x)
    sp, grad = _call_spectrum(x, values_only=False)
    kept = _kept(x, sp, atol, rtol)
    # inf past a member's rank (1 / inf = 0): every other value is above a tolerance >= 0 (or NaN)
    U, S, Vh = _leading(x, sp, kept, grad=grad, fill=math.inf)
    return _pinv_of(U, S, Vh, x.dtype, _pinv_is_dense(x), False)


def _pinv_bytes(x: Expr) -> int:
    """Bytes :func:`pinv` holds once its spectrum is complete, its answer excluded (the
    caller's): the spectrum (:func:`_result_bytes`), the values set past a member's rank with
    their mask (counted whether or not the data asks for them: ``k + 1`` numbers a member), and
    beside them what :func:`_pinv_of` forms: the scaled side ``U / S`` of a dense answer, or the
    reciprocals of a lazy one, and the answer in the work dtype before its cast."""
    b, m, n = math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1]
    wd = _work_dtype(x.dtype)
    real = _real(wd).itemsize
    k = min(m, n) if dense_is_cheaper(x, "svd") else min(m, n, _inner_width(x))
    zeroed = b * k * (real + 1)  # _leading's torch.where, and _kept's mask
    if _pinv_is_dense(x):
        formed = b * m * k * wd.itemsize + (b * n * m * wd.itemsize if wd != x.dtype else 0)
    else:
        formed = b * k * real + (b * n * k * wd.itemsize if wd != x.dtype else 0)
    return _result_bytes(x, "svd") + zeroed + formed


def _pinv_fits(x: Expr) -> None:
    """Raise :class:`~lazymat.settings.BudgetTooSmall` before anything runs when what
    :func:`pinv` holds after its spectrum (:func:`_pinv_bytes`) exceeds the active budget."""
    _after_spectrum_fits(x, lambda: _pinv_bytes(x), "pinv", "the spectrum beside the answer's factors")


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
        with settings.config(memory_budget=b + reserve):
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


def _pinv_is_dense(x: Expr) -> bool:
    """Whether :func:`pinv` answers ``x`` with a tensor: its ``n x m`` matrix holds no more
    numbers than its factors ``V S^-1`` and ``U^H`` at the largest rank the shapes allow."""
    m, n = x.shape[-2], x.shape[-1]
    return n * m <= (n + m) * min(m, n, _inner_width(x))


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


# ---- determinants and linear systems ----------------------------------------------------------
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


def _square_parts(x: Expr, op: str | None = None, k: int = 0,
                  rhs: tuple | None = None) -> tuple[Any, list[Expr | View]]:
    """:func:`square_segments` with a segment that is one view of a data leaf left a view:
    :func:`_segment` reads it as it is, without building, planning and running an expression
    (a chain of two 64 x 64 leaves' ``det`` ran ~580 lines of lazymat, ~460 of them to form
    the two segments). With ``op`` (``k`` right-hand sides for ``"solve"``), the segments its
    route factorises: for :data:`SQUARE_OPS`, ``(1, [x])`` (``x`` formed whole) where
    :func:`dense_is_cheaper` says so. ``c`` exact: a :class:`~lazymat.coefficient.Wide` past
    the float range (a number's reader applies it with :func:`_times_coefficient`), tensor
    scales multiplied with the folded number in range (:meth:`Term.times` of a float64 one:
    ``X * 1e200 * 1e200 * t`` with ``t = 1e-300`` is ``1e100``, where ``Term.coefficient``'s
    float product overflowed to inf and ``inv`` answered 0)."""
    c = canonical(x)
    if len(c.terms) != 1:
        return 1, [x]
    t, n = c.terms[0], x.shape[-1]
    spans = _square_spans(t, n)
    if op in SQUARE_OPS and len(spans) > 1 and (_FORMING.get() or dense_is_cheaper(x, op, k, rhs)):
        return 1, [x]
    c = t.times(torch.ones((), dtype=torch.float64, device=x.device)) if t.scalars else t.coef
    return c, [
        t.factors[a] if b == a + 1 and type(t.factors[a].base) is Leaf
        and t.factors[a].base.tensor is not None
        else term_expr(t, t.factors[a:b], with_coef=False) for a, b in spans]


def _square_spans(t: Term, n: int) -> list[tuple[int, int]]:
    """The square segments of the term ``t`` of an ``n x n`` product: ``(first factor, last + 1)``
    each, cut at every chain dim equal to ``n``."""
    cuts = [i for i, d in enumerate(t.dims) if d == n]  # the first and the last among them
    return list(itertools.pairwise(cuts))


# the ops whose route between square segments and the formed product is a cost comparison (not
# inv: see SEGMENT_OVERHEAD_FLOPS)
SQUARE_OPS = ("det", "slogdet", "solve")


def square_route_flops(x: Expr, op: str, k: int = 0) -> tuple[float, float, int]:
    """``(dense, factored, calls)`` for ``op`` (one of :data:`SQUARE_OPS`; ``k`` right-hand
    sides for ``"solve"``) on a single product ``x`` of ``n x n``: dense, the product formed as
    planned and one LU (with its solves, ``2 n^2 k``); factored, each square segment formed (a
    leaf view: nothing) and its own LU (and solves) per member of
    its batch; ``calls``, the factored route's LU calls beyond the dense route's one (priced by
    :data:`FACTORED_OVERHEAD_FLOPS`)."""
    t, n = canonical(x).terms[0], x.shape[-1]
    shapes = tuple([tuple(f.shape) for f in t.factors])
    itemsize = x.dtype.itemsize

    def lu(batch: int) -> float:
        each = 2 * n**3 / 3
        return batch * (each + (2 * n * n * k if op == "solve" else 0))

    spans = _square_spans(t, n)
    dense = plan_chain(shapes, itemsize).flops + lu(math.prod(x.shape[:-2]))
    factored = sum([plan_chain(shapes[a:b], itemsize).flops + lu(math.prod(broadcast_shapes(*(
        s[:-2] for s in shapes[a:b])))) for a, b in spans])
    return dense, factored, len(spans) - 1


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
    keys = _block_keys(x, op, budget, costs, answer)
    block = [key.stop - key.start for key in keys[0]]
    peak = max(costs(cut)[0] for cut in _cut_shapes(batch, block))
    return keys, peak + answer, costs(tuple(block))[1] * len(keys)


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
    form = _form(x)
    batch = tuple(x.shape[:-2])
    members = math.prod(batch if rhs is None else broadcast_shapes(batch, rhs[:-2]))
    bound = (form.factors + 8) * members * (form.dim * form.dim + 2 * form.dim * k) * 16
    fits, budget = _fits(x, bound)
    if fits:
        return compute(x, None)
    whole = _lu_block_costs(x, op, k, rhs)(batch)[0]
    if whole <= budget:
        return compute(x, None)
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
    logs = log or type(cn) is Wide  # det as sign * exp(logabsdet) when c^n is past the float range
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


def _lstsq_bytes(x: Expr, Bm: Any, driver: str) -> int:
    """Bytes :func:`lstsq` holds at once after its spectrum: the spectrum with its zeroed values
    and mask (as :func:`_pinv_bytes`), ``B`` in the work dtype, ``U^H B`` and its quotient by
    ``S``, the solution ``(..., n, k)`` and its cast, and the residuals' steps."""
    m, n, cols = x.shape[-2], x.shape[-1], Bm.shape[-1]
    b = math.prod(broadcast_shapes(x.shape[:-2], Bm.shape[:-2]))
    wd = _work_dtype(x.dtype)
    k = min(m, n) if dense_is_cheaper(x, "svd") else min(m, n, _inner_width(x))
    spectrum = _result_bytes(x, "svd") + math.prod(x.shape[:-2]) * k * (_real(wd).itemsize + 1)
    b_cast = b * m * cols * wd.itemsize if isinstance(Bm, Expr) or Bm.dtype != wd else 0
    solved = 2 * b * k * cols * wd.itemsize + b * n * cols * wd.itemsize
    cast = b * n * cols * x.dtype.itemsize if wd != x.dtype else 0
    # X Y, then X Y - B beside its abs, then the abs beside its square, then the sum and its cast
    residuals = (3 * b * m * cols + 2 * b * cols) * x.dtype.itemsize if m > n and driver != "gelsy" else 0
    return spectrum + b_cast + solved + cast + residuals


def _lstsq_rule(driver: str, rcond: float | None, eps: float) -> tuple[float | None, float | None, Any]:
    """``(rtol, atol, fixed)``: how ``driver`` turns ``rcond`` into the rank torch reports, as the
    LAPACK routine behind it does (``eps`` the work dtype's; LAPACK's is half of it), read off the
    singular values ``S`` (each member's largest ``S_1``). A value counts when it is above
    ``max(rtol * S_1, atol)`` (and above the core's rounding floor); ``fixed``, where the rank is
    not such a count: ``"full"``, ``min(m, n)`` for a nonzero member; ``1``, the leading value.

    - gels is not rank-revealing and ignores ``rcond``: torch's default rule (lazymat's solution
      stays the minimum-norm one).
    - gelsd (``?lalsd``): ``rcond`` outside ``(0, 1)`` is LAPACK's eps; NaN compares false, so
      every value counts.
    - gelss: ``max(rcond * S_1, sfmin)``; a negative ``rcond`` is LAPACK's eps; NaN gives sfmin
      (``max`` drops it); ``rcond >= 1`` counts none.
    - gelsy estimates the condition of the pivoted QR's leading ``R11`` (``?laic1``): the rank
      grows while ``cond(R11) < 1 / rcond``, from 1 for a nonzero matrix. ``rcond <= 0``: every
      value; NaN or ``rcond >= 1``: only the first; between, the count of values above
      ``rcond * S_1`` (the estimate's rank where the spectrum has no value near the cut)."""
    if rcond is None or driver == "gels":
        return None, None, None
    lapack_eps = eps / 2
    if driver == "gelsd":
        if math.isnan(rcond):
            return 0.0, None, "full"
        return (rcond if 0 < rcond < 1 else lapack_eps), None, None
    if driver == "gelss":
        sfmin = torch.finfo(torch.float32 if eps > 1e-10 else torch.float64).tiny
        return (0.0 if math.isnan(rcond) else lapack_eps if rcond < 0 else rcond), sfmin, None
    if math.isnan(rcond) or rcond >= 1:
        return 0.0, None, 1
    if rcond <= 0:
        return 0.0, None, "full"
    return rcond, None, None


@budgeted
def lstsq(x: Any, B: Any, rcond: float | None = None, *, driver: str | None = None):
    """``torch.linalg.lstsq``: ``(solution, residuals, rank, singular_values)`` as a
    ``torch.return_types.linalg_lstsq``, for ``X (..., m, n)`` and ``B (..., m, k)`` (or a batch
    of vectors, ``B.ndim == X.ndim - 1``, as torch).

    The solution is always the minimum-norm one, ``pinv(X) @ B = V S^-1 (U^H B)``, from the
    nonzero triplets of the low-rank core (:func:`svd`'s route: the ``m x n`` matrix is never
    formed; ``O((m + n) r k)`` after the SVD): singular values at or below ``rcond * S_max``
    (default ``eps * max(m, n)``, torch's) or the core's rounding floor count as zero. What is
    filled follows torch's ``driver`` (default ``'gelsy'`` on the CPU, ``'gels'`` on CUDA; here
    any driver on any device, since the route is lazymat's own), and so does ``rcond``'s reading
    (:func:`_lstsq_rule`: LAPACK's edges at ``rcond <= 0``, ``>= 1`` and NaN): ``rank`` for gelsy, gelsd,
    gelss; ``singular_values`` (all ``min(m, n)``, zeros past the floor) for gelsd, gelss;
    ``residuals`` ``||X Y - B||^2`` per column when ``m > n``, for gels, and for gelsd and gelss
    when every member has rank ``n``; the others are empty tensors. ``B`` has as many dims as
    ``X`` or one fewer, as torch. 16-bit inputs run in float32 (torch refuses them on the CPU).
    Differentiable as :func:`pinv`."""
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
    if vector and isinstance(B, Expr):  # a batch of vectors has the answer's size
        B = B.to_dense()
    Bm = B.unsqueeze(-1) if vector else B
    if Bm.ndim < 2 or Bm.shape[-2] != m:
        raise ValueError(f"lstsq: incompatible shapes X {tuple(x.shape)} and B {tuple(B.shape)} "
                         f"(B needs {m} rows)")
    wd = _work_dtype(x.dtype)
    rtol, atol, fixed = _lstsq_rule(driver, None if rcond is None else float(rcond), _eps(wd))
    _after_spectrum_fits(x, lambda: _lstsq_bytes(x, Bm, driver), "lstsq",
                         "the spectrum beside U^H B and the solution")
    sp, grad = _call_spectrum(x, values_only=False)
    kept = _kept(x, sp, atol, rtol)
    if fixed == 1:  # gelsy's rank-1 estimate: the leading triplet of a nonzero member
        kept = (min(kept[0], 1), None if kept[1] is None else kept[1][..., :1])
    U, S, Vh = _leading(x, sp, kept, grad=grad, fill=math.inf)  # 1 / inf = 0 past a member's rank
    Uh = U.mH
    UhB = (lazy_matmul(lazy(Uh), Bm.to(wd)).to_dense() if isinstance(Bm, Expr)
           else Uh @ (Bm if Bm.dtype == wd else Bm.to(wd)))
    solution = Vh.mH @ (UhB / S.to(UhB.dtype)[..., :, None])
    solution = solution.to(x.dtype)
    k, keep = kept
    ranks = (torch.full(x.shape[:-2], k, dtype=torch.int64, device=x.device) if keep is None
             else keep[..., :k].sum(-1))
    if fixed == "full":  # every value counts but a zero matrix's
        ranks = torch.where(ranks > 0, min(m, n), ranks)
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
        residuals = (fitted - dense_B).abs().square().sum(-2).to(real)
    return torch.return_types.linalg_lstsq((solution.squeeze(-1) if vector else solution, residuals, rank,
                                            values))


@budgeted
@reads_through_casts
def truncate(x: Any, k: int) -> Expr:
    """Best rank-``k`` approximation as a lazy product ``(U_k S_k^1/2) @ (S_k^1/2 Vh_k)``
    (all of ``X``'s nonzero triplets when ``k`` exceeds their number)."""
    x = as_expr(x)
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"truncate: k must be an int, got {type(k).__name__} {k!r}") from None
    if k < 0:
        raise ValueError(f"truncate: k must be >= 0, got {k}")
    U, S, Vh = svd(x)
    k = min(k, S.shape[-1])
    root = S[..., :k].sqrt().to(x.dtype)
    return lazy(U[..., :k] * root[..., None, :]) @ lazy(root[..., :, None] * Vh[..., :k, :])


@budgeted
@reads_through_casts
def make_even(x: Any) -> Expr:
    """The same matrix with factors ``U S^1/2`` and ``S^1/2 Vh`` (balanced singular values)."""
    x = as_expr(x)
    return truncate(x, min(x.shape[-2:]))


def norm(x: Any, ord: Any = None, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
         dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.linalg.norm``: no ord and no dim is the 2-norm of the flattened tensor; a
    2-tuple ``dim`` (or a 2-D input) is a matrix norm; an int (or 1-tuple) ``dim`` a vector norm."""
    from .. import reduce as R  # reduce builds on linalg: imported on use

    if dim is None and ord is None:  # the vector norm over every dim
        return R.vector_norm(x, 2, None, keepdim, dtype=dtype)
    if not isinstance(dim, (tuple, list)) and hasattr(dim, "__index__"):  # an int, NumPy or 0-dim tensor
        dim = operator.index(dim)
    if isinstance(dim, int) or (isinstance(dim, (tuple, list)) and len(dim) == 1):
        if isinstance(ord, str):
            raise RuntimeError(f"torch.linalg.norm: ord={ord!r} is a matrix norm and needs a 2-tuple "
                               f"dim, got dim={dim!r} (shape {tuple(x.shape)})")
        return R.vector_norm(x, 2 if ord is None else ord, dim, keepdim, dtype=dtype)
    if dim is None:
        if x.ndim != 2:
            raise RuntimeError(f"torch.linalg.norm: ord={ord!r} without dim needs a 2-D input "
                               f"(torch's rule), got shape {tuple(x.shape)}; pass dim=(-2, -1)")
        dim = (-2, -1)
    if len(dim) != 2:
        raise RuntimeError(f"torch.linalg.norm: dim must be an int or a 1- or 2-tuple, got "
                           f"dim={dim!r} (shape {tuple(x.shape)})")
    return matrix_norm(x, ord="fro" if ord is None else ord, dim=tuple(dim), keepdim=keepdim,
                         dtype=dtype)


def vector_norm(x: Any, ord: Any = 2, dim: Any = None, keepdim: bool = False, *,  # noqa: A002
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.linalg.vector_norm`` (:func:`lazymat.reduce.vector_norm`: closed or streamed in
    blocks within the memory budget, never the whole matrix)."""
    from .. import reduce as R  # reduce builds on linalg: imported on use

    return R.vector_norm(x, ord, dim, keepdim, dtype=dtype)


# ---- products ------------------------------------------------------------------------------
def multi_dot(tensors: Any) -> Expr | torch.Tensor:
    """``torch.linalg.multi_dot``: the product of two or more matrices, lazy (the planner orders
    it, as torch orders its chain). As torch: every operand 2-D, but the first may be a vector
    (a row) and the last one (a column); then the answer is a tensor (the vector is multiplied
    in without forming the matrix), a scalar tensor when both ends are vectors."""
    items = list(tensors)
    if len(items) < 2:
        raise ValueError(f"multi_dot: expected at least 2 tensors, got {len(items)}")
    for i, t in enumerate(items):
        ends = i in (0, len(items) - 1)
        if not isinstance(t, (Expr, torch.Tensor)) or t.ndim not in ((1, 2) if ends else (2,)):
            what = f"shape {tuple(t.shape)}" if isinstance(t, (Expr, torch.Tensor)) else type(t).__name__
            raise ValueError(f"multi_dot: operand {i} must be {'1-D or 2-D' if ends else '2-D'} "
                             f"(as torch.linalg.multi_dot), got {what}")
    row, column = items[0].ndim == 1, items[-1].ndim == 1
    matrices = items[int(row): len(items) - int(column)]
    if not matrices:  # two vectors
        return torch.linalg.multi_dot(items)
    out = as_expr(matrices[0])
    for m in matrices[1:]:
        out = lazy_matmul(out, m)
    if column:
        out = lazy_matmul(out, items[-1])  # a tensor: the column multiplied in
    if row:
        out = lazy_matmul(items[0], out) if isinstance(out, Expr) else items[0] @ out
    return out


def matrix_power(x: Any, n: int) -> Expr:
    """``torch.linalg.matrix_power``: ``x @ x @ ... @ x`` as a lazy product (the planner finds
    its order: a low-rank ``x = L @ R`` contracts ``(R L)^(n-1)`` at its inner width; a repeated
    pair is formed once). ``n = 0`` is the identity, batched as ``x``, formed (within
    ``implicit_dense_limit``); ``n < 0`` is the power ``-n`` of :func:`inv` (lazy for a chain of
    square segments; ``torch.linalg.LinAlgError`` for a structurally singular ``x``)."""
    x = as_expr(x)
    _square(x, "matrix_power")
    try:  # an int, a NumPy int or a 0-dim integer tensor, as torch takes
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"matrix_power: n must be an int, got {type(n).__name__} {n!r}") from None
    if n < 0:
        return matrix_power(as_expr(inv(x)), -n)
    if n == 0:
        size = x.shape[-1]
        limit = settings.get("implicit_dense_limit")
        if size * size * x.dtype.itemsize > limit:
            raise MemoryError(f"matrix_power(X, 0) would form the {size} x {size} identity "
                              f"({size * size * x.dtype.itemsize / 2**30:.3g} GiB), above "
                              f"implicit_dense_limit={limit} bytes; raise it with lm.config(...)")
        eye = torch.eye(size, dtype=x.dtype, device=x.device)
        return lazy(eye.expand(*x.shape[:-2], size, size))
    out = x
    for _ in range(n - 1):
        out = lazy_matmul(out, x)
    return out


__all__ = [
    "NonFiniteError", "cond", "det", "diagonal", "eig", "eigh", "eigvals", "eigvalsh", "inv", "logdet",
    "lstsq", "make_even", "matrix_norm", "matrix_power", "matrix_rank", "multi_dot", "norm", "pinv",
    "slogdet", "solve", "square_segments", "structural_rank", "svd", "svdvals", "trace", "truncate",
    "vector_norm",
]
