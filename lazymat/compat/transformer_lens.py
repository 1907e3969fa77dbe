"""A drop-in for TransformerLens 4.x ``FactoredMatrix``, backed by a lazymat expression.

``FactoredMatrix(A, B)`` keeps its two factors as lazy expressions, so ``fm @ W @ fm2`` stays
one planned chain instead of being re-collapsed into two tensors at every ``@``. The split
point (``mdim``) follows TransformerLens's rule, so ``A``, ``B`` and their shapes are the ones
TransformerLens users see; the factors are only formed when ``.A``/``.B`` are read.
Spectral questions (``svd``, ``norm``, ``eigenvalues``) go to :mod:`lazymat.linalg`, which
reads them off the smallest core of the whole chain.

Where lazymat differs on purpose (see docs/migrating-from-transformer-lens.md):
``eigenvalues`` are sorted by descending modulus (TransformerLens returns the solver's
order); ``norm()`` needs no SVD; results are recomputed after an in-place edit of a factor.
Over shape-only ``lm.symbol`` factors everything but values works (shapes, ``.T``, products,
indexing, ``unsqueeze``, ``lm.explain(fm.expr)``; ``A``, ``B``, ``AB`` and ``BA`` come back as lazy
expressions, as TransformerLens returns its duck-typed factors); what needs values raises
:class:`lazymat.SymbolHasNoData` naming the symbol and the operation.
Shape and device errors are ``ValueError``s (dtype errors ``TypeError``s) that also subclass the
exception TransformerLens raised (``AssertionError`` / ``RuntimeError``), so existing ``except``
clauses keep working.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np
import torch
from torch.autograd import forward_ad

import lazymat as lm
from lazymat.expr import Leaf, broadcast_shapes, leaves, postorder, tensor_state
from lazymat.indexing import integer_scalar

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)
_KEPT_SVD = ("compat.transformer_lens", "svd")  # FactoredMatrix.svd()'s answer, kept on expr (Expr.keep)
# (keyed by its width too: a hash-consed product node may be the expr of two splits)


class FactoredShapeError(ValueError, AssertionError):
    """Factors whose inner dims do not match (TransformerLens raised ``AssertionError``)."""


class FactoredBroadcastError(ValueError, RuntimeError):
    """Leading dims that do not broadcast (TransformerLens raised ``RuntimeError``)."""


class FactoredDtypeError(TypeError, RuntimeError):
    """Factors or operands of two dtypes, or an integer one (TransformerLens's torch matmul
    raised ``RuntimeError``)."""


class FactoredDeviceError(ValueError, RuntimeError):
    """Factors or operands on two devices (TransformerLens's torch matmul raised
    ``RuntimeError``)."""


class FactoredVectorError(ValueError, RuntimeError):
    """``fm @ v`` with ``v`` not of length ``rdim`` (TransformerLens's torch matmul raised
    ``RuntimeError``)."""


def _broadcast_batch(left: torch.Size, right: torch.Size, what: str) -> tuple[int, ...]:
    """The broadcast leading dims of ``left (..., m, k)`` and ``right (..., k, n)``, or
    :class:`FactoredBroadcastError` naming both shapes."""
    try:  # lazymat's own shape arithmetic: torch.broadcast_shapes imports sympy on first use
        return broadcast_shapes(left[:-2], right[:-2])
    except ValueError:
        raise FactoredBroadcastError(
            f"{what}: leading dims of {tuple(left)} and {tuple(right)} do not broadcast"
        ) from None


def _mixed_dtypes(a: lm.Expr, b: lm.Expr) -> FactoredDtypeError:
    """The refusal of factors of two dtypes, at construction: TransformerLens 4.3 accepts them
    but fails later, in ``AB``, ``@`` and (but for two 16-bit dtypes, each upcast alone)
    ``svd``/``norm``, with torch's unnamed mixed-dtype matmul error; lazymat's products refuse
    mixed dtypes as torch's do, so the error is raised where the factors enter."""
    common = str(torch.promote_types(a.dtype, b.dtype)).replace("torch.", "")
    return FactoredDtypeError(
        f"FactoredMatrix factors differ in dtype: A {tuple(a.shape)} {a.dtype}, B {tuple(b.shape)} "
        f"{b.dtype}. lazymat refuses them here, as torch.matmul does (TransformerLens 4.3 accepts them, "
        f"then AB, @, svd and norm fail with torch's mixed-dtype matmul error); "
        f"cast both, e.g. FactoredMatrix(A.to(torch.{common}), B.to(torch.{common}))")


def _mixed_devices(what: str, left: str, left_device: Any, right: str,
                   right_device: Any) -> FactoredDeviceError:
    """The refusal of two operands (``left``, ``right``: their names and shapes) on two devices,
    where they meet, as torch.matmul refuses them (TransformerLens 4.3 accepts such factors and
    fails later, at ``AB`` or ``@``)."""
    return FactoredDeviceError(
        f"{what}: devices differ, {left} on {left_device} and {right} on {right_device}; move one "
        "with .to(device)")


def _as_factor(x: Any, what: str) -> lm.Expr:
    """``x`` (``what`` names it: ``"factor A"``, ``"right operand of @"``) as an expression."""
    if lm.is_lazy(x):
        return x
    if not isinstance(x, torch.Tensor):
        hint = ""
        if isinstance(x, np.ndarray):
            hint = " (convert it with torch.as_tensor)"
        elif hasattr(x, "shape") and hasattr(x, "__matmul__"):  # TransformerLens 4.3 takes duck types
            hint = (" (TransformerLens also takes a duck-typed tensor, and its results are that type; "
                    "lazymat needs the torch.Tensor it wraps, or a lazymat expression)")
        raise TypeError(f"FactoredMatrix {what} must be a torch.Tensor, got {type(x).__name__}{hint}")
    if x.ndim < 2:
        raise FactoredShapeError(
            f"FactoredMatrix {what} needs at least 2 dims (..., rows, cols), got shape "
            f"{tuple(x.shape)}"
        )
    if not (x.dtype.is_floating_point or x.dtype.is_complex):
        raise FactoredDtypeError(
            f"FactoredMatrix {what} {tuple(x.shape)} has dtype {x.dtype}; lazymat needs a "
            "floating or complex dtype: cast it, e.g. with .float()"
        )
    return lm.lazy(x)


def _upcast(x: lm.Expr) -> lm.Expr:
    """16-bit expressions are decomposed in float32 (as TransformerLens does)."""
    return x.to(torch.float32) if x.dtype in _SIXTEEN_BIT else x


def _check_operand(fm: FactoredMatrix, other: Any, expression: str) -> None:
    """``fm @ other`` (``expression`` names it) in one dtype and on one device, as torch.matmul
    needs; ``other`` a tensor, an expression or either library's ``FactoredMatrix``."""
    first = _left(other) if _is_factored(other) else other
    if first.dtype != fm.dtype:
        raise FactoredDtypeError(
            f"{expression}: dtypes differ, FactoredMatrix {tuple(fm.shape)} {fm.dtype} and "
            f"{tuple(other.shape)} {first.dtype}; cast one with .to(dtype)"
        )
    if first.device != fm.device:
        raise _mixed_devices(expression, f"FactoredMatrix {tuple(fm.shape)}", fm.device,
                             f"{tuple(other.shape)}", first.device)


def _row_or_col_as_slice(item: Any) -> Any:
    """An integer row/column index keeps its dim: ``i -> slice(i, i + 1)`` (``-1 -> slice(-1, None)``)."""
    value = integer_scalar(item)
    if value is None:
        return item
    return slice(value, value + 1 if value != -1 else None)


def _dims_consumed(item: Any) -> int:
    """How many dims of the indexed matrix ``item`` uses up: a mask one per its dims (lists,
    tensors and numpy arrays alike, as torch reads them), ``None`` and ``...`` none."""
    if item is None or item is Ellipsis:
        return 0
    if isinstance(item, np.ndarray):
        item = torch.as_tensor(item)
    if isinstance(item, (list, tuple)):
        t = torch.as_tensor(item)
        return t.ndim if t.dtype == torch.bool else 1
    if isinstance(item, torch.Tensor) and item.dtype in (torch.bool, torch.uint8):
        return item.ndim
    return 1


def _symbol_in(x: lm.Expr) -> Any:
    """The first shape-only symbol below ``x``, or None when every leaf holds data."""
    return next((leaf for leaf in leaves(x) if leaf.is_symbol), None)


def _broadcast_lazily(x: lm.Expr, batch: tuple[int, ...]) -> lm.Expr:
    """``x (..., m, k)`` with leading dims ``batch``, built without data: new leading dims by
    ``None``, a size-1 dim repeated by an index list of zeros (one lazy index per dim)."""
    missing = len(batch) - (x.ndim - 2)
    if missing:
        x = x[(None,) * missing]
    for dim, (have, want) in enumerate(zip(x.shape[:-2], batch, strict=True)):
        if have != want:
            x = x[(slice(None),) * dim + ([0] * want,)]
    return x


class FactoredMatrix:
    """The matrix ``A @ B`` of shape ``(..., ldim, rdim)`` with ``A: (..., ldim, mdim)`` and
    ``B: (..., mdim, rdim)``; leading dims broadcast as in ``torch.matmul``.

    >>> fm = FactoredMatrix(torch.randn(12, 768, 64), torch.randn(12, 64, 768))
    >>> U, S, V = fm.svd()            # M == U @ diag(S) @ V.mT, 64 wide
    >>> (fm @ torch.randn(768, 50)).expr    # still lazy: a planned chain
    """

    __array_ufunc__ = None  # `array * fm` calls fm.__rmul__ (numpy would map * over fm as an object)

    def __init__(self, A: Any, B: Any):
        a, b = _as_factor(A, "factor A"), _as_factor(B, "factor B")
        if a.shape[-1] != b.shape[-2]:
            raise FactoredShapeError(
                f"FactoredMatrix factors must match on the inner dim: A {tuple(a.shape)} has "
                f"{a.shape[-1]} columns, B {tuple(b.shape)} has {b.shape[-2]} rows"
            )
        batch = _broadcast_batch(a.shape, b.shape, "FactoredMatrix factors A and B")
        if a.dtype != b.dtype:
            raise _mixed_dtypes(a, b)
        if a.device != b.device:
            raise _mixed_devices("FactoredMatrix factors A and B", f"A {tuple(a.shape)}", a.device,
                                 f"B {tuple(b.shape)}", b.device)
        # tensors are broadcast now (views, as TransformerLens does); lazy factors when needed
        if isinstance(A, torch.Tensor):
            a = lm.lazy(A.broadcast_to(*batch, *A.shape[-2:]))
        if isinstance(B, torch.Tensor):
            b = lm.lazy(B.broadcast_to(*batch, *B.shape[-2:]))
        self._a, self._b = a, b
        if isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor):
            self._symbol_found = None  # (tensors: no symbol to look for, see _symbol)
        self._expr = a @ b  # held, so that its cached decompositions live as long as this object
        self.ldim, self.mdim, self.rdim = a.shape[-2], a.shape[-1], b.shape[-1]
        self.shape = torch.Size((*batch, self.ldim, self.rdim))

    @classmethod
    def from_expr(cls, expr: lm.Expr) -> FactoredMatrix:
        """Wrap a lazymat expression, split at its narrowest inner dim (:func:`lazymat.factor`)."""
        return cls(*lm.factor(lm.lazy(expr)))

    # ---- what it is ------------------------------------------------------------------------
    @property
    def expr(self) -> lm.Expr:
        """The lazy product ``A @ B`` (plan it, explain it, use it in other expressions)."""
        return self._expr

    def __lazymat__(self) -> lm.Expr:
        return self.expr

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def has_leading_dims(self) -> bool:
        return self.ndim > 2

    @property
    def dtype(self) -> torch.dtype:
        return self._a.dtype

    @property
    def device(self) -> torch.device:
        return self._a.device

    @property
    def _symbol(self) -> Any:
        """The first shape-only symbol among the factors' leaves (None when all hold data);
        found once, as the factors never change."""
        if not hasattr(self, "_symbol_found"):
            self._symbol_found = _symbol_in(self._expr)
        return self._symbol_found

    def _require_data(self, operation: str) -> None:
        """Refuse ``operation`` (it needs values) on a matrix over a shape-only symbol, naming both."""
        symbol = self._symbol
        if symbol is not None:
            raise lm.SymbolHasNoData(
                f"FactoredMatrix {tuple(self.shape)}: {operation} needs values, but symbol "
                f"{symbol.name!r} of shape {tuple(symbol.shape)} has no data. Shapes, .A/.B/.AB/.BA "
                "(lazy expressions), .T, @, *, indexing, unsqueeze and lm.explain(fm.expr) work on "
                "symbols; pass tensors (or lm.lazy(tensor)) for values"
            )

    def _full(self, x: lm.Expr) -> lm.Expr:
        """``x`` with this matrix's leading dims: formed and broadcast as a view (no copy), or,
        in a matrix over a symbol (nothing can be formed), broadcast lazily."""
        batch = tuple(self.shape[:-2])
        if tuple(x.shape[:-2]) == batch:
            return x
        if self._symbol is not None:
            return _broadcast_lazily(x, batch)
        return lm.lazy(x.to_dense().broadcast_to(*batch, *x.shape[-2:]))

    def _formed(self, x: lm.Expr) -> Any:
        """``x`` as a tensor, or lazy when the factors are shape-only symbols (there is nothing
        to form: TransformerLens likewise returns duck-typed factors as they are)."""
        return x if self._symbol is not None else x.to_dense()

    @property
    def A(self) -> Any:
        """The left factor ``(..., ldim, mdim)``, formed from its lazy chain when read (a lazy
        expression over symbols)."""
        return self._formed(self._full(self._a))

    @property
    def B(self) -> Any:
        """The right factor ``(..., mdim, rdim)`` (a lazy expression over symbols)."""
        return self._formed(self._full(self._b))

    @property
    def pair(self) -> tuple[Any, Any]:
        return (self.A, self.B)

    @property
    def AB(self) -> Any:
        """The full ``(..., ldim, rdim)`` matrix (large: prefer the lazy routes; over symbols,
        the lazy product :attr:`expr`)."""
        return self._formed(self.expr)

    @property
    def BA(self) -> Any:
        """The ``(..., mdim, mdim)`` product ``B @ A``; needs ``ldim == rdim``."""
        if self.ldim != self.rdim:
            raise FactoredShapeError(f"BA needs ldim == rdim, shape is {tuple(self.shape)}")
        return self._formed(self._b @ self._a)

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self._b.mT, self._a.mT)

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"

    # ---- products --------------------------------------------------------------------------
    def __matmul__(self, other: Any) -> Any:
        if _is_factored(other):
            _check_operand(self, other, "FactoredMatrix @ FactoredMatrix")
            return (self @ _left(other)) @ _right(other)
        if isinstance(other, torch.Tensor) and other.ndim < 2:
            if other.shape != (self.rdim,):
                raise FactoredVectorError(
                    f"FactoredMatrix {tuple(self.shape)} @ vector {tuple(other.shape)}: the vector "
                    f"needs length {self.rdim}"
                )
            _check_operand(self, other, "FactoredMatrix @ vector")
            self._require_data("@ vector")
            return self.expr @ other  # a vector: computed as (A @ (B @ v)), a tensor back
        other = _as_factor(other, "right operand of @")
        _check_operand(self, other, "FactoredMatrix @ matrix")
        if other.shape[-2] != self.rdim:
            raise FactoredShapeError(
                f"FactoredMatrix {tuple(self.shape)} @ {tuple(other.shape)}: inner dims differ "
                f"({self.rdim} != {other.shape[-2]})"
            )
        _broadcast_batch(self.shape, other.shape, "FactoredMatrix @ matrix")
        if self.rdim > self.mdim:
            return FactoredMatrix(self._a, self._b @ other)
        return FactoredMatrix(self.expr, other)

    def __rmatmul__(self, other: Any) -> Any:
        if _is_factored(other):
            _check_operand(self, other, "FactoredMatrix @ FactoredMatrix")
            return _left(other) @ (_right(other) @ self)
        if isinstance(other, torch.Tensor) and other.ndim < 2:
            if other.shape[-1:] != (self.ldim,):
                raise FactoredShapeError(
                    f"vector {tuple(other.shape)} @ FactoredMatrix {tuple(self.shape)}: inner dims "
                    f"differ ({other.shape[-1] if other.ndim else 'scalar'} != {self.ldim})"
                )
            _check_operand(self, other, "vector @ FactoredMatrix")
            self._require_data("vector @")
            return other @ self.expr
        other = _as_factor(other, "left operand of @")
        _check_operand(self, other, "matrix @ FactoredMatrix")
        if other.shape[-1] != self.ldim:
            raise FactoredShapeError(
                f"{tuple(other.shape)} @ FactoredMatrix {tuple(self.shape)}: inner dims differ "
                f"({other.shape[-1]} != {self.ldim})"
            )
        _broadcast_batch(other.shape, self.shape, "matrix @ FactoredMatrix")
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self._a, self._b)
        return FactoredMatrix(other, self.expr)

    def __mul__(self, scalar: Any) -> FactoredMatrix:
        """``fm * c`` for a number or a one-element tensor or array (scales ``A``), in the dtype
        and shape of ``AB * c``: a scalar that promotes the dtype (``fm * 1j`` of a real ``fm``,
        or ``fm * torch.tensor([2.], dtype=torch.float64)`` of a float32 one, whose dims give it
        a say in torch's promotion where a 0-dim tensor has none) casts ``B`` too
        (TransformerLens 4.3 scales ``A`` alone, and its ``AB`` then fails). A one-element
        tensor of more dims than the matrix adds its leading 1s, as ``AB * c`` broadcasts
        (``fm * torch.full((1, 1, 1), 2.)`` of a 4 x 3 ``fm`` is 1 x 4 x 3)."""
        extra = 0
        promoted = None
        if isinstance(scalar, np.ndarray):
            scalar = torch.as_tensor(scalar)
        if isinstance(scalar, torch.Tensor):
            if scalar.numel() != 1:
                raise FactoredShapeError(
                    f"FactoredMatrix {tuple(self.shape)} * tensor of shape {tuple(scalar.shape)}: "
                    "only scalars multiply a FactoredMatrix (use @ for matrix products)"
                )
            extra = scalar.ndim - len(self.shape)
            # (the dtype of AB * c: an empty stand-in of AB's dtype, with dims, as AB has)
            promoted = torch.result_type(torch.empty(0, dtype=self.dtype), scalar)
            scalar = scalar.reshape(())
        elif not isinstance(scalar, numbers.Number):
            shape = getattr(scalar, "shape", None)
            what = type(scalar).__name__ + ("" if shape is None else f" of shape {tuple(shape)}")
            # (TransformerLens: AssertionError for a FactoredMatrix, torch's TypeError for others)
            error = FactoredShapeError if _is_factored(scalar) else TypeError
            raise error(f"FactoredMatrix {tuple(self.shape)} * {what}: only a number or a one-element "
                        "tensor multiplies a FactoredMatrix (use @ for matrix products)")
        a = (self._a if promoted in (None, self.dtype) else self._a.to(promoted)) * scalar
        b = self._b if a.dtype == self._b.dtype else self._b.to(a.dtype)
        for _ in range(extra):
            a, b = a[None], b[None]
        return FactoredMatrix(a, b)

    def __rmul__(self, scalar: Any) -> FactoredMatrix:
        return self * scalar

    # ---- decompositions (off the smallest core) -------------------------------------------
    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U, S, V)`` with ``M == U @ diag(S) @ V.mH``: ``U (..., ldim, k)``, ``S (..., k)``,
        ``V (..., rdim, k)``, ``k = min(ldim, mdim, rdim)`` (TransformerLens's convention: V,
        not torch's Vh). 16-bit inputs give float32 results.

        Kept, as TransformerLens does: later calls (and ``U``, ``S``, ``V``, ``collapse_l/r``,
        ``make_even``) hand out the same tensors, with no copy, until a factor's tensor or one of
        these answers is written into (then it is computed again); not kept while gradients are
        recorded (each call records its own). Kept among :attr:`expr`'s caches, so that
        ``fm.expr.clear_cache()`` drops it too."""
        self._require_data("svd()")
        memo = self._kept_svd()
        if memo is not None:
            return memo
        U, S, Vh = lm.linalg.svd(_upcast(self.expr))  # the nonzero triplets only
        width = min(self.ldim, self.mdim, self.rdim)
        if S.shape[-1] == width:
            answer = (U, S, Vh.mH)
        else:  # a rank-deficient matrix: zeros in S, orthonormal completions of U and V, as
            # TransformerLens's shapes promise
            pad = S.new_zeros(*S.shape[:-1], width - S.shape[-1])
            answer = (_complete_columns(U, width), torch.cat([S, pad], -1), _complete_columns(Vh.mH, width))
        state, versions = self._data_state(), _versions(answer)
        if state is not None and versions is not None:
            self._expr.keep((*_KEPT_SVD, width), (state, answer, versions))
        return answer

    def _kept_svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The kept ``svd()`` answer, or None when there is none or it is out of date."""
        kept = self._expr.kept((*_KEPT_SVD, min(self.ldim, self.mdim, self.rdim)))
        if kept is None or kept[2] != _versions(kept[1]):
            return None
        state = self._data_state()
        return kept[1] if state is not None and state == kept[0] else None

    def _data_state(self) -> tuple | None:
        """The state of every tensor the matrix reads (leaves and scale tensors; see
        :func:`lazymat.expr.tensor_state`), which a write into one changes; None while gradients
        are recorded through them, or for tensors with no version counter, where nothing is kept."""
        read = (n.tensor if isinstance(n, Leaf) else getattr(n, "coef", None) for n in postorder(self._expr))
        tensors = [t for t in read if isinstance(t, torch.Tensor)]  # (a symbol's leaf holds none)
        if forward_ad._current_level >= 0 or any(t.is_inference() for t in tensors):
            return None
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return None
        return tuple(tensor_state(t) for t in tensors)

    @property
    def U(self) -> torch.Tensor:
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        """Singular values ``(..., k)``, descending. Asked before ``svd()``, they are read alone,
        without forming ``U`` and ``V`` (TransformerLens computes all three); once ``svd()`` is
        kept, its ``S``."""
        memo = self._kept_svd()
        if memo is not None:
            return memo[1]
        self._require_data("S (the singular values of svd())")
        values = lm.linalg.svdvals(_upcast(self.expr))  # the nonzero ones
        width = min(self.ldim, self.mdim, self.rdim)
        if values.shape[-1] >= width:
            return values[..., :width]
        return torch.cat([values, values.new_zeros(*values.shape[:-1], width - values.shape[-1])], -1)

    @property
    def V(self) -> torch.Tensor:
        """Right singular vectors: ``M == U @ diag(S) @ V.mH``."""
        return self.svd()[2]

    @property
    def Vh(self) -> torch.Tensor:
        """Deprecated alias of :attr:`V` (it always returned V); warns like TransformerLens 4.x."""
        warnings.warn(
            "FactoredMatrix.Vh returns V (the right singular vectors), not V's conjugate "
            "transpose; use .V (or .V.mH for Vh)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.svd()[2]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of ``A @ B`` (needs ``ldim == rdim``), complex, ``(..., mdim)``: the
        nonzero ones sorted by descending modulus, then zeros (the eigenvalues of ``B @ A``)."""
        if self.ldim != self.rdim:
            raise FactoredShapeError(f"eigenvalues need ldim == rdim, shape is {tuple(self.shape)}")
        self._require_data("eigenvalues")
        vals = lm.linalg.eigvals(_upcast(self.expr))
        if vals.shape[-1] >= self.mdim:
            return vals[..., : self.mdim]
        pad = vals.new_zeros(*vals.shape[:-1], self.mdim - vals.shape[-1])
        return torch.cat([vals, pad], dim=-1)

    def norm(self) -> torch.Tensor:
        """Frobenius norm ``(...)``, without an SVD."""
        self._require_data("norm()")
        return lm.linalg.matrix_norm(_upcast(self.expr))

    def make_even(self) -> FactoredMatrix:
        """The same matrix as ``(U S^1/2) @ (S^1/2 V^H)``: balanced, orthogonal factors."""
        self._require_data("make_even()")
        U, S, V = self.svd()
        root = S.sqrt()
        return FactoredMatrix(U * root[..., None, :], root[..., :, None] * V.mH)

    def collapse_l(self) -> torch.Tensor:
        """``S V^H``, ``(..., k, rdim)``: the matrix with its left orthogonal factor removed."""
        self._require_data("collapse_l()")
        U, S, V = self.svd()
        return S[..., :, None] * V.mH

    def collapse_r(self) -> torch.Tensor:
        """``U S``, ``(..., ldim, k)``: the matrix with its right orthogonal factor removed."""
        self._require_data("collapse_r()")
        U, S, V = self.svd()
        return U * S[..., None, :]

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The ``k x k x ...`` corner of the full matrix, every dim cut to ``k``."""
        self._require_data(f"get_corner({k})")
        return self.expr[tuple(slice(k) for _ in range(self.ndim))].to_dense()

    # ---- reshaping and indexing -------------------------------------------------------------
    def unsqueeze(self, k: int) -> FactoredMatrix:
        """A new size-1 dim at position ``k`` of both factors (as ``A.unsqueeze(k)``); ``k`` an
        int, a numpy int or a 0-dim integer tensor, as torch takes it."""
        dim = None if isinstance(k, (bool, np.bool_)) else integer_scalar(k)
        if dim is None:
            raise TypeError(f"unsqueeze(k) of a FactoredMatrix {tuple(self.shape)}: k must be an int, "
                            f"got {type(k).__name__} {k!r}")
        k = dim
        a, b = self._full(self._a), self._full(self._b)
        if not -(a.ndim + 1) <= k <= a.ndim:  # (k % (ndim + 1) would wrap an out-of-range k round)
            raise IndexError(
                f"unsqueeze({k}) of a FactoredMatrix {tuple(self.shape)} with factors of {a.ndim} "
                f"dims: k must be in [{-(a.ndim + 1)}, {a.ndim}]"
            )
        pos = k % (a.ndim + 1)
        if pos <= a.ndim - 2:
            key = (slice(None),) * pos + (None,)
            return FactoredMatrix(a[key], b[key])
        if self._symbol is not None:  # the shape errors the factor tensors would give, then the refusal
            shapes = [(*x.shape[:pos], 1, *x.shape[pos:]) for x in (a, b)]
            FactoredMatrix(lm.symbol("A", shapes[0], self.dtype), lm.symbol("B", shapes[1], self.dtype))
            self._require_data(f"unsqueeze({k}) (a new dim among the rows and columns reshapes the factors)")
        return FactoredMatrix(a.to_dense().unsqueeze(k), b.to_dense().unsqueeze(k))

    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index leading dims, rows and columns; the inner dim is never indexed.

        As in TransformerLens, an integer row or column index keeps its dim (size 1), a key
        longer than the matrix raises, and ``None`` at the row/column positions reshapes the
        factors. Keys the lazy indexer does not take (several index lists, n-d masks) index the
        factor tensors instead."""
        idx = given = idx if isinstance(idx, tuple) else (idx,)
        ellipses = [i for i, item in enumerate(idx) if item is Ellipsis]  # `in` would compare arrays
        if len(ellipses) > 1:
            raise IndexError("an index can only have a single ellipsis")
        if ellipses:
            at = ellipses[0]
            fill = self.ndim - sum(_dims_consumed(item) for item in idx)
            idx = idx[:at] + (slice(None),) * fill + idx[at + 1 :]
        keys: list = []
        matrix_newaxes: list[int] = []
        length = 0
        for item in idx:
            if item is None and length >= self.ndim - 2:
                matrix_newaxes.append(length - (self.ndim - 2))
            else:
                keys.append(item)
            length += _dims_consumed(item)
        if length > self.ndim:
            raise FactoredShapeError(
                f"index {tuple(keys)} is too long for a FactoredMatrix of shape {tuple(self.shape)}"
            )
        keys_a = keys_b = tuple(keys)
        if length == self.ndim - 1:
            keys_a = (*keys[:-1], _row_or_col_as_slice(keys[-1]))
            keys_b = tuple(keys[:-1])
        elif length == self.ndim:
            keys_a = (*keys[:-2], _row_or_col_as_slice(keys[-2]))
            keys_b = (*keys[:-2], slice(None), _row_or_col_as_slice(keys[-1]))
        a, b = self._full(self._a), self._full(self._b)
        try:
            result = FactoredMatrix(a[keys_a], b[keys_b])
        except (NotImplementedError, TypeError) as error:
            self._require_data(f"indexing with {given} (lazymat's lazy indexer refused it: {error})")
            result = FactoredMatrix(a.to_dense()[keys_a], b.to_dense()[keys_b])
        if any(matrix_newaxes):  # (after the index errors the tensors would give)
            self._require_data(f"indexing with {given} (a None among the rows and columns reshapes factors)")
        for position in matrix_newaxes:
            result = result._new_matrix_axis(position)
        return result

    def _new_matrix_axis(self, position: int) -> FactoredMatrix:
        """``None`` before the rows (0), between rows and columns (1) or after the columns (2)."""
        if position == 0:
            return self.unsqueeze(self.ndim - 2)
        A, B = self.A, self.B
        if position == 1:  # the rows become a leading dim
            return FactoredMatrix(A.unsqueeze(-2), B.unsqueeze(-3))
        return FactoredMatrix(B.mT.unsqueeze(-3), A.unsqueeze(-1))  # the columns become rows


def _versions(answer: tuple[torch.Tensor, ...]) -> tuple[int, ...] | None:
    """The version counters of an answer's tensors, which a write into one advances (None for
    inference tensors, which have none)."""
    if any(t.is_inference() for t in answer):
        return None
    return tuple(t._version for t in answer)


def _complete_columns(Q: torch.Tensor, width: int) -> torch.Tensor:
    """``Q (..., n, k)`` with orthonormal columns, extended to ``(..., n, width)`` orthonormal
    columns: seeded Gaussian directions with ``Q``'s span projected out (twice, for
    orthogonality to rounding), then a QR. ``O(n width^2)``; the same columns on every call."""
    extra = width - Q.shape[-1]
    generator = torch.Generator(device=Q.device).manual_seed(0)
    real = Q.real.dtype if Q.is_complex() else Q.dtype
    directions = torch.randn(
        *Q.shape[:-1], extra, generator=generator, dtype=real, device=Q.device
    ).to(Q.dtype)
    for _ in range(2):
        directions = directions - Q @ (Q.mH @ directions)
        directions = torch.linalg.qr(directions).Q
    return torch.cat([Q, directions], -1)


def _is_factored(x: Any) -> bool:
    """A lazymat or TransformerLens ``FactoredMatrix`` (duck-typed: ``.A`` and ``.B``)."""
    return isinstance(x, FactoredMatrix) or (
        not isinstance(x, torch.Tensor) and not lm.is_lazy(x) and hasattr(x, "A") and hasattr(x, "B")
    )


def _left(x: Any) -> Any:
    return x._a if isinstance(x, FactoredMatrix) else x.A


def _right(x: Any) -> Any:
    return x._b if isinstance(x, FactoredMatrix) else x.B


def composition_scores(left: Any, right: Any, broadcast_dims: bool = True) -> torch.Tensor:
    """``||left @ right||_F / (||left||_F ||right||_F)`` for two factored matrices.

    With ``broadcast_dims`` every leading index of ``left`` is paired with every one of
    ``right`` (result ``(*left_leading, *right_leading)``), as TransformerLens does. Three
    Frobenius norms off the lazy products: no SVD, no full matrix."""
    left = left if isinstance(left, FactoredMatrix) else FactoredMatrix(left.A, left.B)
    right = right if isinstance(right, FactoredMatrix) else FactoredMatrix(right.A, right.B)
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        for i in range(n_left):
            right = right.unsqueeze(i)
        for i in range(n_right):
            left = left.unsqueeze(i + n_left)
    if left.rdim != right.ldim:
        raise FactoredShapeError(
            f"composition scores need left.rdim == right.ldim, shapes were left {tuple(left.shape)}, "
            f"right {tuple(right.shape)}"
        )
    _broadcast_batch(left.shape, right.shape, "composition scores")
    left._require_data("composition_scores (left)")
    right._require_data("composition_scores (right)")
    composed = _upcast(left.expr @ right.expr)
    return (
        lm.linalg.matrix_norm(composed)
        / lm.linalg.matrix_norm(_upcast(right.expr))
        / lm.linalg.matrix_norm(_upcast(left.expr))
    )
