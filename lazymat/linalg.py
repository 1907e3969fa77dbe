"""Linear algebra read off the smallest core (``torch.linalg`` names and conventions).

With ``X = L @ R`` from :func:`lazymat.core.factor` (``L: (..., m, r)``, ``R: (..., r, n)``):

- ``svd``: QR of ``L`` and of ``R^H``, then the SVD of the ``r x r`` core ``R_L R_R^H``.
  A tall leaf at an outer end that a whole batch shares is QR-factorised once instead
  (:func:`lazymat.core.reduced_factors`), when that is cheaper.
  Not the Gram route: forming ``L^H L`` squares the condition number, and the small
  singular values of a float32 circuit come out wrong by orders of magnitude.
- ``eigvals``/``eig``: the nonzero eigenvalues of ``L R`` are those of ``R L``; that core is
  planned as one product, so shared work (``W_U @ W_E`` across heads) is found.
- ``trace``/``diagonal``: closed einsum networks (O(m r) once the factors exist), no SVD.
- ``matrix_norm('fro')``: the cheaper of ``tr((L^H L)(R R^H))`` with each half formed
  once, and the closed network ``tr(X^H X)``; no SVD.

Results come back on the expression's device and dtype (complex for eigenvalues). 16-bit
inputs are decomposed in float32. Small cores of an expression on a GPU are decomposed
wherever that was measured fastest (``CPU_CORE_LIMIT``) and come back. Results are
cached on the expression and recomputed after an in-place change to any leaf tensor.

``lazymat.explain`` costs these routes (standard formulas for the decompositions).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .core import factor, is_identity, reduced_factors
from .execute import _Memo, view_value
from .expr import Expr, Leaf, Scale, as_expr, lazy, postorder
from .network import Shared, closed_chain, contract, gram_trace
from .plan import plan_expr
from .rewrite import canonical

# Widest core decomposed on the CPU when the expression lives on a GPU, per operation.
# Measured on an H100 against its host CPU (benchmarks/results/h100-small-cores.txt): the
# CPU round trip wins for eigenvalues up to r = 256, singular values up to 512, full SVDs
# up to 128; except that batches of cores up to 32 wide go to cuSOLVER's batched Jacobi
# SVD, 7-16x faster on the GPU.
CPU_CORE_LIMIT = {"eig": 256, "svdvals": 512, "svd": 128}


# ---- helpers ----------------------------------------------------------------------------
def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def _real(dtype: torch.dtype) -> torch.dtype:
    return torch.empty((), dtype=dtype, device="meta").real.dtype


def _complex(dtype: torch.dtype) -> torch.dtype:
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _data(x: Expr) -> tuple[torch.Tensor, ...]:
    """The tensors ``x`` reads: leaf tensors and tensor scalars (fixed by its structure)."""
    hit = x._cache.get("data")
    if hit is None:
        hit = x._cache["data"] = tuple(
            n.tensor if isinstance(n, Leaf) else n.coef
            for n in postorder(x)
            if (isinstance(n, Leaf) and n.tensor is not None)
            or (isinstance(n, Scale) and isinstance(n.coef, torch.Tensor))
        )
    return hit


def _needs_grad(x: Expr) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in _data(x))


def _cached(x: Expr, name: str, compute):
    """``compute()`` cached on ``x`` under ``name`` until a leaf tensor changes in place."""
    if _needs_grad(x):
        return compute()
    versions = tuple(t._version for t in _data(x))
    hit = x._cache.get(name)
    if hit is not None and hit[0] == versions:
        return hit[1]
    value = compute()
    x._cache[name] = (versions, value)
    return value


def _square(x: Expr, what: str) -> None:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{what} needs a square matrix, got shape {tuple(x.shape)}")


def _core_device(t: torch.Tensor, op: str) -> torch.device:
    """Where to decompose the small core ``t`` (see ``CPU_CORE_LIMIT``)."""
    if t.device.type == "cpu":
        return t.device
    r = max(t.shape[-2:])
    batched_jacobi = op != "eig" and r <= 32 and math.prod(t.shape[:-2]) > 1
    return torch.device("cpu") if r <= CPU_CORE_LIMIT[op] and not batched_jacobi else t.device


def _dense_reduced(x: Expr, vectors: bool):
    """Dense ``L'``, ``R'`` (working dtype; None for an identity side) and the orthonormal
    outer factors of :func:`lazymat.core.reduced_factors` (``L = Q_L L'``, ``R = R' Q_R^H``)."""
    L, R, QL, QR = reduced_factors(x, vectors)
    wd = _work_dtype(x.dtype)
    Ld = None if is_identity(L) else L.to_dense().to(wd)
    Rd = None if is_identity(R) else R.to_dense().to(wd)
    return Ld, Rd, QL, QR


# ---- singular values ----------------------------------------------------------------------
def _svd(x: Expr):
    def compute():
        Ld, Rd, QL, QR = _dense_reduced(x, vectors=True)
        if Ld is None or Rd is None:  # the matrix is its own core
            return torch.linalg.svd(Rd if Ld is None else Ld, full_matrices=False)
        Q1, R1 = torch.linalg.qr(Ld)
        Q2, R2 = torch.linalg.qr(Rd.mH)
        core = R1 @ R2.mH
        dev = _core_device(core, "svd")
        Uc, S, Vhc = torch.linalg.svd(core.to(dev), full_matrices=False)
        Uc, S, Vhc = Uc.to(core.device), S.to(core.device), Vhc.to(core.device)
        U, Vh = Q1 @ Uc, Vhc @ Q2.mH
        U = U if QL is None else QL.to(U.dtype) @ U  # the shared outer factors, applied once
        Vh = Vh if QR is None else Vh @ QR.to(Vh.dtype).mH
        return U, S, Vh

    return _cached(x, "svd", compute)


def svd(x: Any, full_matrices: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduced SVD ``X = U @ diag(S) @ Vh`` like ``torch.linalg.svd(X, full_matrices=False)``.

    Returns ``U: (..., m, r)``, ``S: (..., r)`` (descending), ``Vh: (..., r, n)`` with ``r``
    the core width: the other ``min(m, n) - r`` singular values are exactly zero."""
    x = as_expr(x)
    if full_matrices:
        raise NotImplementedError(
            f"full_matrices=True would build a {x.shape[-2]}x{x.shape[-2]} basis; lazymat "
            "returns the reduced SVD (pass full_matrices=False)"
        )
    U, S, Vh = _svd(x)
    return U.to(x.dtype), S.to(_real(x.dtype)), Vh.to(x.dtype)


def svdvals(x: Any, full: bool = False) -> torch.Tensor:
    """Singular values, descending, shape ``(..., r)`` (``(..., min(m, n))`` zero-padded
    with ``full=True``)."""
    x = as_expr(x)

    def compute():
        if "svd" in x._cache or _needs_grad(x):
            return _svd(x)[1]
        Ld, Rd, _, _ = _dense_reduced(x, vectors=False)
        if Ld is None or Rd is None:
            dense = Rd if Ld is None else Ld
            return torch.linalg.svdvals(dense)
        R1 = torch.linalg.qr(Ld, mode="r")[1]
        R2 = torch.linalg.qr(Rd.mH, mode="r")[1]
        core = R1 @ R2.mH
        return torch.linalg.svdvals(core.to(_core_device(core, "svdvals"))).to(core.device)

    S = _cached(x, "svdvals", compute).to(_real(x.dtype))
    return _pad(S, min(x.shape[-2:])) if full else S


def _pad(v: torch.Tensor, size: int) -> torch.Tensor:
    if v.shape[-1] >= size:
        return v
    return torch.cat([v, v.new_zeros(*v.shape[:-1], size - v.shape[-1])], dim=-1)


# ---- eigenvalues ----------------------------------------------------------------------------
def eig_core(x: Expr) -> Expr:
    """The ``r x r`` (lazy) matrix whose eigenvalues are ``X``'s nonzero ones: ``R @ L``."""
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


def eigvals(x: Any, full: bool = False) -> torch.Tensor:
    """Eigenvalues of a square ``X``, complex, shape ``(..., r)``, sorted by descending
    modulus (ties keep the solver's order). ``X`` has at most ``r`` nonzero eigenvalues; the
    other ``n - r`` are zero: ``full=True`` appends them."""
    x = as_expr(x)
    _square(x, "eigvals")

    def compute():
        core = eig_core(x).to_dense().to(_work_dtype(x.dtype))
        vals = torch.linalg.eigvals(core.to(_core_device(core, "eig"))).to(core.device)
        return _sort_desc(vals)[0]

    vals = _cached(x, "eigvals", compute).to(_complex(x.dtype))
    return _pad(vals, x.shape[-1]) if full else vals


def eig(x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs ``(vals (..., r), vecs (..., n, r))`` of a square ``X``, sorted like
    :func:`eigvals`; ``X @ vecs[..., k] = vals[k] * vecs[..., k]``, columns of unit norm.

    From ``R L w = lambda w`` follows ``X (L w) = lambda (L w)``. A column whose ``L w``
    vanishes (only possible for ``lambda = 0``) is returned as zeros."""
    x = as_expr(x)
    _square(x, "eig")

    def compute():
        L, R = factor(x)
        core = eig_core(x).to_dense().to(_work_dtype(x.dtype))
        vals, W = torch.linalg.eig(core.to(_core_device(core, "eig")))
        vals, W = _sort_desc(vals.to(core.device), W.to(core.device))
        if is_identity(L) or is_identity(R):
            return vals, W
        vecs = L.to_dense().to(W.dtype) @ W
        norms = torch.linalg.vector_norm(vecs, dim=-2, keepdim=True)
        vecs = torch.where(norms > 0, vecs / torch.where(norms > 0, norms, 1), 0)
        return vals, vecs

    vals, vecs = _cached(x, "eig", compute)
    c = _complex(x.dtype)
    return vals.to(c), vecs.to(c)


# ---- trace, diagonal, norms ---------------------------------------------------------------
def _closed(x: Expr, diag: bool) -> torch.Tensor:
    c = canonical(x)
    memo = _Memo()
    itemsize = torch.empty((), dtype=x.dtype, device="meta").element_size()
    total = None
    shared = Shared()  # steps repeated across the terms' networks run once
    for t in c.terms:
        net = closed_chain(t.factors, diag, itemsize, shared)
        val = contract(net, [view_value(f, memo) for f in t.factors], shared)
        if t.has_coefficient:
            val = val * t.coefficient()
        total = val if total is None else total + val
    target = (*x.shape[:-2], *((x.shape[-1],) if diag else ()))
    return total if total.shape == target else total.expand(target)


def trace(x: Any) -> torch.Tensor:
    """``tr(X)`` of a square ``X``, shape ``(...)``: a closed einsum network, no SVD."""
    x = as_expr(x)
    _square(x, "trace")
    return _cached(x, "trace", lambda: _closed(x, diag=False))


def diagonal(x: Any, offset: int = 0, dim1: int = -2, dim2: int = -1) -> torch.Tensor:
    """Main diagonal ``(..., min(m, n))``; for a product it costs O(m r) after the factors."""
    x = as_expr(x)
    if offset != 0 or (dim1 % x.ndim, dim2 % x.ndim) != (x.ndim - 2, x.ndim - 1):
        raise NotImplementedError("lazymat.linalg.diagonal supports the main diagonal of the "
                                  "last two dims (offset=0, dim1=-2, dim2=-1)")
    m, n = x.shape[-2], x.shape[-1]
    if m != n:
        k = min(m, n)
        x = x[..., :k, :k]
    return _cached(x, "diagonal", lambda: _closed(x, diag=True))


def fro_route(x: Expr):
    """The cheaper route to ``||X||_F^2`` by the planner's costs: ``("network", net)`` for the
    closed network ``tr(X^H X)`` of a single product, else ``("split", L, R)`` for
    ``tr((L^H L)(R R^H))`` with each half formed once (``explain`` shows the same choice)."""
    c = canonical(x)
    L, R = factor(x)
    if len(c.terms) == 1 and len(c.terms[0].factors) > 1:
        itemsize = torch.empty((), dtype=x.dtype, device="meta").element_size()
        net = gram_trace(c.terms[0].factors, itemsize, x.dtype.is_complex)
        if net.flops < split_gram_flops(L, R):
            return ("network", net)
    return ("split", L, R)


def split_gram_flops(L: Expr, R: Expr) -> int:
    """FLOPs of forming ``L`` and ``R`` and their Gram matrices."""
    total = sum(plan_expr(side).flops for side in (L, R) if not is_identity(side))
    m, r, n = L.shape[-2], L.shape[-1], R.shape[-1]
    batch = math.prod(torch.broadcast_shapes(L.shape[:-2], R.shape[:-2]))
    return total + 2 * batch * r * r * (m + n)


def _fro_squared(x: Expr) -> torch.Tensor:
    wd = _work_dtype(x.dtype)
    route = fro_route(x)
    if route[0] == "network":
        t = canonical(x).terms[0]
        memo = _Memo()
        vals = [view_value(f, memo).to(wd) for f in t.factors]
        val = contract(route[1], [v.conj() for v in vals] + vals).real
        k = t.coefficient()
        return val * (k.abs() ** 2 if isinstance(k, torch.Tensor) else abs(k) ** 2)
    _, L, R = route
    if is_identity(L) or is_identity(R):
        dense = (R if is_identity(L) else L).to_dense().to(wd)
        return torch.linalg.matrix_norm(dense) ** 2
    Ld, Rd = L.to_dense().to(wd), R.to_dense().to(wd)
    return torch.einsum("...ij,...ji->...", Ld.mH @ Ld, Rd @ Rd.mH).real


def matrix_norm(x: Any, ord: str | float = "fro", dim: tuple = (-2, -1), keepdim: bool = False,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Matrix norms like ``torch.linalg.matrix_norm``: ``'fro'`` (no SVD), ``'nuc'``, ``2``,
    ``-2`` from the core's singular values; ``1``, ``-1``, ``inf``, ``-inf`` stream the
    matrix in row blocks (it is never held whole)."""
    x = as_expr(x)
    if tuple(d % x.ndim for d in dim) != (x.ndim - 2, x.ndim - 1):
        raise NotImplementedError(f"matrix_norm over dims {dim}: lazymat supports the last two")
    if dtype is not None:
        x = x.to(dtype=dtype)
    real = _real(x.dtype)
    if ord == "fro":
        out = _cached(x, "fro", lambda: _fro_squared(x).clamp_min(0).sqrt())
    elif ord == "nuc":
        out = svdvals(x).sum(-1)
    elif ord in (2, -2):
        S = svdvals(x, full=True)
        out = S.amax(-1) if ord == 2 else S.amin(-1)
    elif ord in (1, -1, math.inf, -math.inf):
        out = _abs_sum_norm(x, ord)
    else:
        raise ValueError(f"matrix_norm: unsupported ord {ord!r} (use 'fro', 'nuc', 2, -2, 1, -1, "
                         "inf, -inf)")
    out = out.to(real)
    return out[..., None, None] if keepdim else out


def _abs_sum_norm(x: Expr, ord: float, block_bytes: int = 256 * 2**20) -> torch.Tensor:
    """Max/min absolute column (ord +-1) or row (ord +-inf) sum, streamed in row blocks."""
    m, n = x.shape[-2], x.shape[-1]
    rows = max(1, block_bytes // max(1, n * math.prod(x.shape[:-2]) * 8))
    col_sums = None
    row_sums = []
    for i in range(0, m, rows):
        block = x[..., i : i + rows, :].to_dense().abs()
        if ord in (1, -1):
            s = block.sum(-2)
            col_sums = s if col_sums is None else col_sums + s
        else:
            row_sums.append(block.sum(-1))
    sums = col_sums if ord in (1, -1) else torch.cat(row_sums, -1)
    return sums.amax(-1) if ord > 0 else sums.amin(-1)


def cond(x: Any, p: Any = None) -> torch.Tensor:
    """2-norm condition number ``S_max / S_min`` (inf when the rank is below ``min(m, n)``)."""
    x = as_expr(x)
    if p not in (None, 2, -2):
        raise NotImplementedError(f"cond with p={p!r}: lazymat supports p=None, 2, -2")
    S = svdvals(x, full=True)
    ratio = S.amax(-1) / S.amin(-1)
    return 1 / ratio if p == -2 else ratio


def _tolerance(x: Expr, S: torch.Tensor, atol, rtol) -> torch.Tensor:
    eps = torch.finfo(_work_dtype(_real(x.dtype))).eps
    if atol is None and rtol is None:
        rtol = eps * max(x.shape[-2], x.shape[-1])
    atol = 0.0 if atol is None else atol
    rtol = 0.0 if rtol is None else rtol
    smax = S.amax(-1, keepdim=True) if S.shape[-1] else S.new_zeros(*S.shape[:-1], 1)
    return torch.maximum(torch.as_tensor(atol, dtype=S.dtype, device=S.device), rtol * smax)


def matrix_rank(x: Any, atol: Any = None, rtol: Any = None, hermitian: bool = False) -> torch.Tensor:
    """Numerical rank with ``torch.linalg.matrix_rank``'s tolerance rule."""
    x = as_expr(x)
    S = svdvals(x)
    return (_tolerance(x, S, atol, rtol) < S).sum(-1)


def pinv(x: Any, atol: Any = None, rtol: Any = None, hermitian: bool = False) -> Expr:
    """Pseudo-inverse as a lazy product ``(V S^-1) @ U^H`` of shape ``(..., n, m)``."""
    x = as_expr(x)
    U, S, Vh = svd(x)
    keep = _tolerance(x, S, atol, rtol) < S
    inv = torch.where(keep, 1 / torch.where(keep, S, 1), 0).to(x.dtype)
    return lazy(Vh.mH * inv[..., None, :]) @ lazy(U.mH)


def truncate(x: Any, k: int) -> Expr:
    """Best rank-``k`` approximation as a lazy product ``(U_k S_k^1/2) @ (S_k^1/2 Vh_k)``."""
    x = as_expr(x)
    U, S, Vh = svd(x)
    if not k >= 0:
        raise ValueError(f"truncate: k must be >= 0, got {k}")
    k = min(k, S.shape[-1])
    root = S[..., :k].sqrt().to(x.dtype)
    return lazy(U[..., :k] * root[..., None, :]) @ lazy(root[..., :, None] * Vh[..., :k, :])


def make_even(x: Any) -> Expr:
    """The same matrix with factors ``U S^1/2`` and ``S^1/2 Vh`` (balanced singular values)."""
    x = as_expr(x)
    return truncate(x, min(x.shape[-2:]))


__all__ = [
    "cond", "diagonal", "eig", "eigvals", "make_even", "matrix_norm", "matrix_rank", "pinv",
    "svd", "svdvals", "trace", "truncate",
]
