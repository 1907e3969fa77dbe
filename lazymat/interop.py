"""Route torch functions called on lazy expressions (``__torch_function__``) to lazymat.

``torch.matmul(expr, x)``, ``torch.linalg.svd(expr)``, ``torch.trace(expr)`` ... answer
lazily; any other torch function raises a TypeError naming it instead of silently
materialising a possibly huge matrix. Each routed function takes torch's arguments with
torch's defaults and meanings, or raises a clear error where the answer would need what
lazymat exists to avoid (a full ``m x m`` basis). Deliberate, documented differences:
``torch.linalg.svd(expr)`` returns the reduced SVD of the nonzero triplets (as
``lazymat.linalg.svd``), and ``torch.linalg.eig`` the pairs of the nonzero eigenvalues;
``torch.linalg.svdvals``/``eigvals`` pad with zeros to torch's length;
``torch.linalg.inv`` of a product of several square segments answers lazily (the reversed chain
of their inverses), and ``torch.linalg.lstsq`` always the minimum-norm solution.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from . import expr as E
from . import linalg as _linalg  # (beside this module: imported by the package first)
from .unread import joined


def _table() -> dict[Callable, Callable]:
    from . import linalg as L
    from . import reduce as R

    # torch.linalg's functions route to lazymat's without the memory_budget= wrapper
    # (``.unbudgeted``): torch's parser refuses that keyword, so the wrapper's frame would only cost
    table: dict[Callable, Callable] = {
        torch.matmul: E.matmul,
        torch.Tensor.matmul: E.matmul,
        torch.Tensor.__matmul__: E.matmul,
        torch.Tensor.__rmatmul__: lambda a, b: E.matmul(b, a),
        torch.mm: E.matmul,
        torch.bmm: E.matmul,
        torch.Tensor.__add__: E.add,
        torch.Tensor.__radd__: lambda a, b: E.add(b, a),
        torch.add: E.add,
        torch.Tensor.__sub__: lambda a, b: E.add(a, -E.as_expr(b)),
        torch.Tensor.__rsub__: lambda a, b: E.add(b, -E.as_expr(a)),
        torch.Tensor.__mul__: lambda a, b: E.scale(b, a) if E.is_lazy(b) else E.scale(a, b),
        torch.Tensor.__rmul__: lambda a, b: E.scale(a, b),
        torch.mul: lambda a, b: E.scale(b, a) if E.is_lazy(b) else E.scale(a, b),
        torch.transpose: _transpose,
        torch.t: lambda x: E.as_expr(x).t(),  # a 2-D matrix only, as torch (.mT takes a batch)
        torch.linalg.svd: L.svd.unbudgeted,
        torch.svd: _torch_svd,
        torch.linalg.svdvals: lambda x, *, driver=None: L.svdvals.unbudgeted(x, full=True),
        torch.linalg.eigvals: lambda x: L.eigvals.unbudgeted(x, full=True),
        torch.linalg.eig: L.eig.unbudgeted,
        torch.linalg.eigvalsh: lambda x, UPLO="L": L.eigvalsh.unbudgeted(x, UPLO, full=True),  # noqa: N803
        torch.linalg.eigh: L.eigh.unbudgeted,
        torch.linalg.matrix_norm: L.matrix_norm.unbudgeted,
        torch.linalg.norm: L.norm,
        torch.norm: _torch_norm,
        torch.linalg.matrix_rank: L.matrix_rank.unbudgeted,
        torch.linalg.pinv: L.pinv.unbudgeted,
        torch.linalg.cond: L.cond.unbudgeted,
        torch.linalg.det: L.det.unbudgeted,
        torch.det: L.det.unbudgeted,
        torch.linalg.slogdet: L.slogdet.unbudgeted,
        torch.slogdet: lambda x: torch.return_types.slogdet(tuple(L.slogdet.unbudgeted(x))),
        torch.logdet: L.logdet.unbudgeted,
        torch.linalg.inv: L.inv.unbudgeted,
        torch.inverse: L.inv.unbudgeted,
        torch.linalg.solve: L.solve.unbudgeted,
        torch.linalg.inv_ex: _inv_ex,
        torch.linalg.solve_ex: _solve_ex,
        torch.linalg.lstsq: L.lstsq.unbudgeted,
        torch.trace: _torch_trace,
        torch.diagonal: _torch_diagonal,
        torch.linalg.diagonal: L.diagonal.unbudgeted,
        torch.linalg.vector_norm: R.vector_norm,
        torch.linalg.multi_dot: L.multi_dot,
        torch.chain_matmul: _chain_matmul,
        torch.linalg.matrix_power: L.matrix_power,
        torch.matrix_power: L.matrix_power,
    }
    table.update({
        torch.add: _add, torch.sub: _sub, torch.subtract: _sub, torch.neg: _neg, torch.negative: _neg,
        torch.div: _div, torch.divide: _div, torch.true_divide: _div, torch.multiply: table[torch.mul],
        torch.conj: E.conj, torch.adjoint: lambda x: E.transpose(E.conj(x)),
        torch.swapaxes: _transpose, torch.swapdims: _transpose,
        torch.linalg.matmul: E.matmul, torch.mv: _mv,
        torch.real: lambda x: E.as_expr(x).real, torch.imag: lambda x: E.as_expr(x).imag,
        torch.numel: lambda x: E.as_expr(x).numel(), torch.is_complex: lambda x: E.as_expr(x).is_complex(),
        torch.is_floating_point: lambda x: E.as_expr(x).is_floating_point(),
        torch.Tensor.type_as: lambda x, other: x.type(other.type()),
        torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
        torch.hstack: lambda tensors: E.cat(tensors, 1), torch.vstack: lambda tensors: E.cat(tensors, 0),
    })
    for name in ("topk", "amax", "amin", "argmax", "argmin", "max", "min", "sum", "mean"):
        table[getattr(torch, name)] = table[getattr(torch.Tensor, name)] = getattr(R, name)
    # each routed torch function is also the Tensor method of that name (X.mm(t), X.neg(), ...)
    for func in list(table):
        method = getattr(torch.Tensor, getattr(func, "__name__", ""), None)
        if getattr(func, "__module__", None) == "torch" and method is not None:
            table.setdefault(method, table[func])
    return table


def _compiled_calls() -> dict[tuple, tuple[str, tuple, tuple]]:
    """``(func, the arguments after the expression, keyword items) -> (op, options, types)``: the
    compiled call (:func:`lazymat.linalg.compiled._compiled`) that the routed function, called so, asks
    first on a fresh product of leaves, as its own code does (``svdvals`` with ``full=True``,
    ``matrix_norm``'s orders read from the singular values, ``cond`` for 2 and -2, the default
    tolerances); ``types``: those of the arguments, which a call must match exactly (``2.0`` and
    ``True`` hash as ``2`` and ``1``, and some routed functions tell them apart)."""
    linalg, fro, no_tolerance = torch.linalg, ("fro", ()), (None, None)
    calls = {
        (linalg.svdvals, (), ()): ("svdvals", (True,)),
        (linalg.eigvals, (), ()): ("eigvals", (True,)),
        (linalg.svd, (False,), ()): ("svd", ()),
        (linalg.svd, (), (("full_matrices", False),)): ("svd", ()),
        (linalg.matrix_norm, (), ()): fro,
        (linalg.matrix_norm, ("fro",), ()): fro,
        (linalg.matrix_norm, (), (("ord", "fro"),)): fro,
        (linalg.cond, (), ()): ("cond", (False,)),
        (linalg.matrix_rank, (), ()): ("matrix_rank", no_tolerance),
        (linalg.pinv, (), ()): ("pinv", no_tolerance),
    }
    for ord in ("nuc", 2, -2):
        norm = ("norm", (ord,))
        calls[(linalg.matrix_norm, (ord,), ())] = calls[(linalg.matrix_norm, (), (("ord", ord),))] = norm
        if ord != "nuc":
            calls[(linalg.cond, (ord,), ())] = ("cond", (ord == -2,))
    return {key: (*call, tuple(map(type, (*key[1], *(v for _, v in key[2]))))) for key, call in calls.items()}


# (func, args after the expression, keyword items) -> its compiled call: dispatch asks it first for
# a fresh product (none of the routed function's own frames)
_COMPILED_CALLS = _compiled_calls()


def _info(x: Any) -> torch.Tensor:
    """The ``info`` of a ``*_ex`` call that succeeded: int32 zeros of ``x``'s batch shape."""
    x = E.as_expr(x)
    return torch.zeros(x.shape[:-2], dtype=torch.int32, device=x.device)


def _inv_ex(A: Any, *, check_errors: bool = False) -> torch.return_types.linalg_inv_ex:  # noqa: N803
    """``torch.linalg.inv_ex``: ``(inverse, info)`` from :func:`lazymat.linalg.inv`, ``info`` 0. A
    singular ``X`` raises ``LinAlgError`` as ``inv`` does, also with ``check_errors=False``
    (torch's ``info > 0``, the LU's first zero pivot of the formed matrix, is not read off the
    segments)."""
    return torch.return_types.linalg_inv_ex((_linalg.inv.unbudgeted(A), _info(A)))


def _solve_ex(A: Any, B: Any, *, left: bool = True,  # noqa: N803
              check_errors: bool = False) -> torch.return_types.linalg_solve_ex:
    """``torch.linalg.solve_ex``: ``(result, info)`` from :func:`lazymat.linalg.solve`, ``info`` 0;
    a singular ``X`` raises as :func:`_inv_ex`."""
    return torch.return_types.linalg_solve_ex((_linalg.solve.unbudgeted(A, B, left=left), _info(A)))


def _add(a: Any, b: Any, *, alpha: Any = 1) -> Any:
    """``torch.add(a, b, alpha=...)``: ``a + alpha * b``."""
    return E.add(a, b if alpha == 1 else E.term(b, alpha))


def _sub(a: Any, b: Any, *, alpha: Any = 1) -> Any:
    """``torch.sub(a, b, alpha=...)``: ``a - alpha * b``."""
    return E.add(a, E.term(b, -alpha))


def _cat(tensors: Any, dim: int = 0) -> Any:
    """``torch.cat`` with torch's default ``dim=0`` (for matrices, the rows)."""
    return E.cat(tensors, dim)


def _mv(a: Any, v: Any) -> Any:
    """``torch.mv``: a 2-D matrix times a 1-D vector (torch's rule), as ``torch.matmul``."""
    if a.ndim != 2 or v.ndim != 1:
        raise RuntimeError(f"torch.mv takes a 2-D matrix and a 1-D vector (torch's rule); got shapes "
                           f"{tuple(a.shape)} and {tuple(v.shape)}")
    return E.matmul(a, v)


def _neg(x: Any) -> Any:
    return E.scale(x, -1)


def _div(a: Any, b: Any, *, rounding_mode: str | None = None) -> Any:
    """``torch.div(X, c)`` for a scalar ``c`` (true division; rounding is elementwise, not lazy)."""
    if rounding_mode is not None or E.is_lazy(b):
        shapes = [tuple(t.shape) for t in (a, b) if hasattr(t, "shape")]
        raise TypeError(f"torch.div with a lazy expression takes a scalar divisor and no rounding_mode "
                        f"(operand shapes {shapes}, rounding_mode={rounding_mode!r})")
    return a / b


def method(name: str) -> Callable | None:
    """The lazy implementation of ``torch.Tensor.<name>`` when it is routed, else None."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _table()
    func = getattr(torch.Tensor, name, None)
    if func is None or func not in _TABLE:
        return None
    return lambda x, *args, **kwargs: dispatch(func, (x, *args), kwargs)


_TABLE: dict[Callable, Callable] | None = None


def _transpose(x: Any, dim0: int, dim1: int) -> Any:
    if sorted(E.dim_index(d, x.shape, "torch.transpose") for d in (dim0, dim1)) != [x.ndim - 2, x.ndim - 1]:
        raise NotImplementedError(
            f"torch.transpose(expr, {dim0}, {dim1}) on shape {tuple(x.shape)}: lazymat only "
            "transposes the last two dims"
        )
    return E.transpose(x)


def _flat_norm(x: Any, keepdim: bool, dtype: Any) -> torch.Tensor:
    """2-norm of the flattened tensor (torch's ``norm`` without ord and dim): the vector norm
    over every dim, which combines the batch members' Frobenius norms as torch's norms do (a
    half-precision norm squared in its own dtype overflowed from 256)."""
    from . import reduce as R

    return R.vector_norm(x, 2, None, keepdim, dtype=dtype)


def _torch_norm(x: Any, p: Any = "fro", dim: Any = None, keepdim: bool = False, out: Any = None,
                dtype: Any = None):
    """``torch.norm`` with torch's reading of ``p``: ``'fro'`` over all dims or at most two dims,
    and any number ``p``, are vector norms (:func:`lazymat.reduce.vector_norm`); ``'nuc'`` is a
    matrix norm over a 2-tuple dim (all dims of a 2-D input by default)."""
    from . import linalg as L
    from . import reduce as R

    if out is not None:
        raise NotImplementedError("torch.norm(expr, out=...): lazymat returns a new tensor")
    if dim is None and p in ("fro", 2, 2.0, None):
        return _flat_norm(x, keepdim, dtype)
    if not isinstance(p, str):
        return R.vector_norm(x, 2 if p is None else p, dim, keepdim, dtype=dtype)
    if p == "fro" and (dim is None or isinstance(dim, int) or len(dim) <= 2):
        return R.vector_norm(x, 2, dim, keepdim, dtype=dtype)
    dim = tuple(range(x.ndim)) if dim is None else dim
    if isinstance(dim, int) or len(dim) != 2:
        raise RuntimeError(f"torch.norm(expr, p={p!r}, dim={dim!r}) on shape {tuple(x.shape)}: "
                           f"p={p!r} is a matrix norm and needs a 2-tuple dim")
    return L.matrix_norm(x, ord=p, dim=tuple(dim), keepdim=keepdim, dtype=dtype)


def _torch_svd(x: Any, some: bool = True, compute_uv: bool = True):
    """``torch.svd``: ``(U, S, V)`` with ``V`` (not ``Vh``), reduced to the nonzero triplets, as
    torch's named tuple ``torch.return_types.svd``."""
    from . import linalg as L

    if not some:
        raise NotImplementedError(
            f"torch.svd(expr, some=False) would build {x.shape[-2]}x{x.shape[-2]} and "
            f"{x.shape[-1]}x{x.shape[-1]} bases; use some=True (lazymat returns the nonzero "
            "triplets)")
    if not compute_uv:
        raise NotImplementedError(
            "torch.svd(expr, compute_uv=False) returns zero-filled full-size U and V in torch; "
            "use torch.linalg.svdvals(expr) for the singular values")
    U, S, Vh = L.svd(x)
    return torch.return_types.svd((U, S, Vh.mH))


def _chain_matmul(*matrices: Any, out: Any = None) -> Any:
    """``torch.chain_matmul`` (deprecated by torch for ``torch.linalg.multi_dot``): 2-D matrices
    only, one at least."""
    from . import linalg as L

    if out is not None:
        raise TypeError("torch.chain_matmul(out=...) on lazy expressions: the product is lazy, "
                        "there is no tensor to write")
    for i, m in enumerate(matrices):
        if m.ndim != 2:
            raise RuntimeError(f"torch.chain_matmul takes 2-D matrices (torch's rule); operand {i} "
                               f"has shape {tuple(m.shape)}")
    if len(matrices) == 1:
        return E.as_expr(matrices[0])
    return L.multi_dot(matrices)


def _torch_trace(x: Any) -> torch.Tensor:
    """``torch.trace`` takes a 2-D matrix only (``lazymat.linalg.trace`` is batched)."""
    from . import linalg as L

    if x.ndim != 2:
        raise RuntimeError(f"torch.trace expects a 2-D matrix, got shape {tuple(x.shape)} "
                           "(torch's rule); lazymat.linalg.trace takes a batch")
    return L.trace(x)


def _torch_diagonal(x: Any, offset: int = 0, dim1: int = 0, dim2: int = 1) -> torch.Tensor:
    """``torch.diagonal`` with torch's defaults (dims 0 and 1: on a batched expression that is
    not the matrix diagonal, and is refused by name)."""
    from . import linalg as L

    return L.diagonal(x, offset=offset, dim1=dim1, dim2=dim2)


def _torch_name(func: Callable) -> str:
    """``func``'s name as users write it after ``torch.``: ``linalg.det``, not the binding's
    ``linalg_det`` (also ``special.``, ``fft.``)."""
    name = getattr(func, "__name__", None) or getattr(func, "__qualname__", repr(func))
    for namespace in ("linalg", "special", "fft"):
        if name.startswith(namespace + "_"):
            return f"{namespace}.{name[len(namespace) + 1:]}"
    return name


def _positional(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with the operands passed by torch's keyword names made positional
    (``torch.linalg.det(A=X)``, ``torch.linalg.lstsq(input=X, b=Y)``, ``torch.matmul(input=X,
    other=Y)``): lazymat's functions name their operands otherwise (``x``, ``a``, ``B``)."""
    kwargs = dict(kwargs)
    if not args:
        first = next((name for name in ("A", "input", "self") if name in kwargs), None)
        args = () if first is None else (kwargs.pop(first),)
    second = next((name for name in ("other", "b") if name in kwargs), None)
    if len(args) == 1 and second is not None:
        args = (*args, kwargs.pop(second))
    return args, kwargs


def dispatch(func: Callable, args: tuple, kwargs: dict) -> Any:
    global _TABLE
    if not args or "other" in kwargs or "b" in kwargs:  # operands passed by torch's keyword names
        args, kwargs = _positional(args, kwargs)
    x = args[0] if args else None
    if type(x) is E.MatMul and not x._cache_dict:  # a fresh product: maybe its structure's compiled call
        if len(args) == 1 and not kwargs:  # the expression alone, the commonest call: no types to match
            call = _COMPILED_CALLS.get((func, (), ()))
        else:  # (one option, by position or keyword, the next: its one type matched without a tuple)
            one = len(args) + len(kwargs) == 2
            try:
                items = tuple(kwargs.items()) if kwargs else ()
                call = _COMPILED_CALLS.get((func, args[1:], items))
            except (TypeError, RuntimeError):  # an argument that cannot be hashed or compared: not one
                call = None
            if call is not None and (
                    type(items[0][1] if items else args[1]) is not call[2][0] if one
                    else call[2] != tuple(map(type, (*args[1:], *kwargs.values())))):
                call = None
        if call is not None:  # (every function in the table is routed)
            try:
                # (read here: switched off with linalg's)
                out = _linalg.compiled._compiled(x, call[0], call[1])
            except RuntimeError as e:
                _refused(func, args, e)
                raise
            if out is not None:
                return out
    if _TABLE is None:
        _TABLE = _table()
    impl = _TABLE.get(func)
    if impl is None:
        name = _torch_name(func)
        flat = [b for a in args for b in (a if isinstance(a, (list, tuple)) else (a,))]
        shapes = [tuple(a.shape) for a in flat if isinstance(a, (E.Expr, torch.Tensor))]
        raise TypeError(
            f"torch.{name} is not supported on lazy expressions (operand shapes {shapes}); "
            "use lazymat's own function, or call .to_dense() if materialising is intended"
        )
    if "out" in kwargs and "out" not in inspect.signature(impl).parameters:
        if kwargs.pop("out") is None:  # torch's own default, passed explicitly
            return joined(impl(*args, **kwargs), x)
        name = _torch_name(func)
        raise TypeError(f"torch.{name}(..., out=...) on a lazy expression: lazymat returns a new tensor "
                        f"and does not write into out; drop out= and assign the result")
    try:
        return joined(impl(*args, **kwargs), x)  # (zero gradients for leaves a cat's index drops)
    except RuntimeError as e:  # (free when nothing is raised)
        _refused(func, args, e)
        raise


def _refused(func: Callable, args: tuple, e: RuntimeError) -> None:
    """Raise the error that names a call refused under ``torch.vmap``
    (:func:`lazymat.linalg.calls.vmap_error`),
    if ``e`` is one; else return (the caller raises ``e``)."""
    from . import linalg as L

    refused = L.calls.vmap_error(args, f"torch.{_torch_name(func)}", e)
    if refused is not None:
        raise refused from e
