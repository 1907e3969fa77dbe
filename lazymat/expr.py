"""Immutable expression nodes: shape, dtype and device inference, never any data.

Nodes are hash-consed: building a node structurally identical to a live one returns that
same object, so ``(A @ B)`` built twice is one node, shared subexpressions are shared by
construction, and caches keyed on a node (plans, decompositions) are found again.

Example::

    >>> import torch, lazymat as lm
    >>> A = lm.symbol("A", (50257, 768)); B = lm.symbol("B", (768, 64))
    >>> (A @ B).T.shape
    torch.Size([64, 50257])

A node is its identity: ``==`` between nodes is ``is``, a shallow copy is the node itself,
and deep copies, pickles and ``torch.save`` rebuild new nodes through the constructors.

Every constructor checks its inputs and raises ``ValueError``/``TypeError`` naming the
shapes, dtypes or devices at fault. Operations that need data (``to_dense``, ``svd``, ...)
are methods here for convenience but live in the layers above; they are imported inside
the method so that this module depends on nothing of lazymat's but its coefficient numbers
(:mod:`lazymat.coefficient`, below it).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
import numbers
import operator
import pickle
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from numbers import Number
from typing import Any, NamedTuple

import torch
from torch.compiler import is_compiling

from .coefficient import Wide, reciprocal, steps

__all__ = [
    "Add", "Cast", "Concat", "Expr", "Index", "Leaf", "LeafChanged", "MatMul", "Scale", "Transpose",
    "UnsupportedTensorMethod", "add", "as_expr", "broadcast_shapes", "cast", "cat", "is_lazy",
    "lazy", "leaves", "matmul", "postorder", "safe_globals", "scale", "symbol", "tensor_state", "term",
    "to_text", "transpose", "with_tensors",
]

_uids = itertools.count()


class _Entry(weakref.ref):
    """A weak reference to an interned node that carries the node's key (so a dead entry is
    found without a second table)."""

    __slots__ = ("key",)


# Hash-consing table: key -> weak reference to the node. A key holds no node and no tensor
# (children by uid, a leaf's tensor by id: the live node keeps it alive, so no other tensor has
# that id meanwhile), and is as cheap to hash as the node type allows: a wrapped tensor's its
# ``id`` (``(id, name)`` when named), any other node's ``(type, params, dtype, *children's uids)``
# (shapes that never compare equal). Products are not entered here but in their left
# factor's own table (:func:`matmul`). A dying node's reference is appended to ``_dead`` (a
# C-level callback, no Python call) and its entry dropped when the next node is built. Entries
# must not outlive their node by long: kept until a periodic sweep, every expression built and
# dropped left a weak reference and a key tuple that survived the cyclic GC's young generations
# and made its full collections (over all of torch's objects) run every few thousand
# expressions, which cost more than the expressions themselves.
_interned: dict[Any, _Entry] = {}
_dead: deque[_Entry] = deque()  # a deque: no reallocation as it fills and empties
_on_death = _dead.append  # one bound method for every reference
_uid_of = operator.attrgetter("uid")
_Size, _Device = torch.Size, torch.device
_weak = weakref.ref


def _drop_dead_entries() -> None:
    """Drop the entries of the nodes that died since the last call (an entry already taken over
    by a new node of the same key stays), each with one hash of its key."""
    try:  # once around the loop (not per entry): this runs for every node built
        while _dead:
            ref = _dead.pop()
            if (entry := _interned.pop(ref.key, ref)) is not ref:  # (ref itself when the key is gone)
                _interned[ref.key] = entry
    except IndexError:  # another thread took the last one between the test and the pop
        pass


def _new_node(cls: type, key: Any, children: tuple, shape: torch.Size, dtype: torch.dtype,
              device: torch.device, params: tuple = ()) -> Expr:
    """A new node of type ``cls`` with ``params``, entered in the hash-consing table under
    ``key`` (the one place nodes are created, but for the two built most, which inline it:
    wrapped tensors in :func:`lazy`, products in :func:`matmul`). The entries of
    the nodes that died since the last call are dropped first. The node is built as its type's
    mutable twin and entered only once complete (immutable, :meth:`Expr.__setattr__`): another
    thread may find it at once."""
    if not is_compiling() and _dead:  # (dynamo replays a trace: no branch on what GC changes)
        _drop_dead_entries()
    node = cls._building()  # no __init__: cheaper than object.__new__(cls), which checks its argument
    node.shape = shape
    node.dtype = dtype
    node.device = device
    node.children = children
    node.uid = next(_uids)
    node._cache_dict = None  # made on first use (Expr._cache): most nodes never cache anything
    node._products = None  # made by its first product (see matmul)
    if params:
        node._set_params(params)
    node.__class__ = cls
    ref = _Entry(node, _on_death)
    ref.key = key
    _interned[key] = ref
    return node


class LeafChanged(ValueError):
    """A wrapped tensor's shape changed in place (``resize_``, ``set_``) after wrapping."""


class UnsupportedTensorMethod(TypeError, AttributeError):
    """A ``torch.Tensor`` method that has no lazy meaning (a ``TypeError``; also an
    ``AttributeError`` so that ``hasattr`` and ``getattr(x, name, default)`` keep working)."""


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """Torch's broadcast of shape tuples, in pure Python (``torch.broadcast_shapes`` imports
    torch's reference implementations on first use, which costs most of a second).
    Raises ``ValueError`` naming the shapes when they do not broadcast."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for s in shapes:
        for i, d in enumerate(s, start=ndim - len(s)):
            d = int(d)
            if d == out[i] or d == 1:
                continue
            if out[i] != 1:
                raise ValueError(f"shapes {[tuple(x) for x in shapes]} do not broadcast")
            out[i] = d
    return tuple(out)


def dim_index(d: int, shape: Sequence[int], what: str) -> int:
    """``d`` as a non-negative dim of a tensor of ``shape``; an ``IndexError`` naming the dim and
    the shape when it is out of ``[-ndim, ndim)``, as torch raises (never taken modulo ndim)."""
    ndim = len(shape)
    if not -ndim <= d < ndim:
        raise IndexError(f"{what}: dim {d} is out of range for an expression of shape {tuple(shape)} "
                         f"(expected a dim in [{-ndim}, {ndim - 1}])")
    return d % ndim


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# The floating and complex dtypes: a set lookup on the hot path of ``lazy`` (anything else
# goes through the full check below, which names the dtype).
_MATRIX_DTYPES = frozenset(d for d in vars(torch).values()
                           if isinstance(d, torch.dtype) and (d.is_floating_point or d.is_complex))


@functools.cache
def _type_names() -> dict[torch.dtype, str]:
    """Every dtype's CPU tensor type name, as ``Tensor.type()`` gives it (``'torch.FloatTensor'``)."""
    with warnings.catch_warnings():  # making a complex32 tensor warns that it is experimental
        warnings.simplefilter("ignore")
        return {d: torch.empty(0, dtype=d).type() for d in vars(torch).values() if isinstance(d, torch.dtype)}


def _check_matrix_dtype(dtype: torch.dtype, what: str) -> None:
    if not (dtype.is_floating_point or dtype.is_complex):
        raise TypeError(
            f"{what} has dtype {_dtype_name(dtype)}; lazymat needs a floating or complex dtype "
            "(cast with .to(torch.float32) first)"
        )


class Expr:
    """A lazy matrix expression of shape ``(..., m, n)``; build with :func:`lazy`/:func:`symbol`.

    Supports ``@``, ``.T``/``.mT``, scalar ``*``/``/``, ``+``/``-``, indexing and ``.to()``.
    Nothing is computed until a result is asked for (``to_dense()``, ``svd()``, ``x @ v``).
    """

    __slots__ = ("shape", "dtype", "device", "children", "uid", "_cache_dict", "_products", "__weakref__")
    op: str = "expr"
    __array_ufunc__ = None  # numpy operators defer to ours instead of converting (densifying)

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    children: tuple[Expr, ...]

    @property
    def _cache(self) -> dict:
        """What the layers above keep on this node (its canonical form, factors, decompositions,
        products of a leaf), valid while the leaves' tensor states say so; made on first use,
        since most nodes (the inner nodes of an expression evaluated once) never keep anything.
        Hot paths that only look read ``_cache_dict`` (None until something is kept) instead."""
        cache = self._cache_dict
        if cache is None:
            cache = {}
            _set_cache_dict(self, cache)
        return cache

    # Nodes are immutable: one node stands for every expression built the same way (interning),
    # so ``X.shape = ...`` would change all of them. Assignment raises; a node is built as an
    # instance of its type's ``_building`` twin (same slots, plain attribute stores: the hot
    # path's cost) and becomes its type once complete (:func:`_new_node`).
    def __setattr__(self, name: str, value: Any, verb: str = "set") -> None:
        raise AttributeError(
            f"cannot {verb} {name!r} of a lazy expression of shape {tuple(self.shape)}: expressions "
            "are immutable (identical expressions are one shared node); build a new expression instead"
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None, "delete")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Python's own messages (a misspelt attribute, an unsupported operand) name the public
        # type, not an internal node class; ``__qualname__`` is kept, so pickles and
        # ``repr(type(x))`` still name the class
        super().__init_subclass__(**kwargs)
        cls.__name__ = "Expr"
        if "_building" not in cls.__dict__:  # a node type: its mutable twin, for construction only
            cls._building = type(cls)(cls.__qualname__, (cls,), {
                "__slots__": (), "__setattr__": object.__setattr__, "__delattr__": object.__delattr__,
                "__module__": cls.__module__, "_building": None})

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def _make(cls, params: tuple, children: tuple[Expr, ...], shape, dtype, device,
              identity: tuple | None = None) -> Expr:
        """The live node ``cls(params, children)`` if there is one, else a new one.
        ``identity`` stands for ``params`` in the key where they hold data compared by
        identity (a leaf's tensor by ``id``: a live node keeps its tensor alive)."""
        key = (cls, params if identity is None else identity, dtype)
        if children:
            key = (*key, *map(_uid_of, children))
        ref = _interned.get(key)
        if ref is not None:
            node = ref()
            if node is not None:
                return node
        return _new_node(cls, key, children, shape if type(shape) is _Size else _Size(shape), dtype,
                         device if type(device) is _Device else _Device(device), params)

    def _set_params(self, params: tuple) -> None:
        pass

    def _args(self) -> tuple:
        """What :meth:`_build` needs besides the children (picklable)."""
        return ()

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        """Build this kind of node over ``children`` through the public constructors."""
        raise NotImplementedError  # pragma: no cover - every node type overrides it

    # ---- identity, copies, pickling ------------------------------------------------------
    # A node is its identity (its ``uid`` keys interning and every traversal), so a copy
    # must never carry the uid over: deepcopy, pickle and torch.save rebuild the DAG through
    # the constructors (flat, children first, so deep chains need no recursion). Leaf tensors
    # are copied by the pickle machinery, so a copy gets new leaves and new uids; a symbol
    # has no data and interns to the same symbol. A shallow copy is the node itself (immutable).
    def __reduce__(self) -> tuple:
        order = postorder(self)
        index = {n.uid: i for i, n in enumerate(order)}
        specs = [(type(n), n._args(), tuple(index[c.uid] for c in n.children)) for n in order]
        return (_from_specs, (specs,))

    def __copy__(self) -> Expr:
        return self

    def __eq__(self, other: object) -> Any:
        """Identity (nodes are hash-consed); comparing with a tensor or array raises: the
        elementwise comparison would need the dense matrix."""
        if isinstance(other, Expr):
            return self is other
        if isinstance(other, torch.Tensor) or hasattr(other, "__array_interface__"):
            raise TypeError(
                f"== between a lazy expression of shape {tuple(self.shape)} and a "
                f"{type(other).__name__} of shape {tuple(other.shape)} would compare every "
                "entry; use X.to_dense() == t if materialising is intended (== between "
                "expressions is node identity)"
            )
        return NotImplemented

    def __ne__(self, other: object) -> Any:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = object.__hash__

    # ---- no silent densifying through the sequence or array protocols ----------------------
    def __iter__(self):
        raise TypeError(
            f"iterating over a lazy expression of shape {tuple(self.shape)} would evaluate it "
            "one row at a time; use X.to_dense() (one planned evaluation) or index rows "
            "lazily with X[i:j]"
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        """``np.asarray(X)``: one planned evaluation (``X.to_dense()``), never row by row."""
        if copy is False:
            raise ValueError(
                f"np.asarray(X, copy=False): a lazy expression of shape {tuple(self.shape)} has "
                "no array to share; evaluating it always makes a new one"
            )
        _check_implicit_size(self, "np.asarray(X)")
        out = self.to_dense().detach().cpu().resolve_conj().resolve_neg().numpy()  # (a leaf view's bits)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """``torch.as_tensor(X)``, ``torch.tensor(X)``, ``torch.asarray(X)``, ``from_dlpack``:
        refused with a clear message (a DLPack capsule would drop autograd, and torch would
        otherwise read ``X`` as a nested sequence and report only "not a sequence")."""
        raise TypeError(_conversion_refused(self, "torch.as_tensor(X) / torch.tensor(X) / DLPack",
                                            "X.to_dense()"))

    __dlpack_device__ = __dlpack__

    def __float__(self) -> float:
        raise TypeError(_conversion_refused(self, "float(X)", "X.to_dense().item()"))

    def __int__(self) -> int:
        raise TypeError(_conversion_refused(self, "int(X)", "X.to_dense().item()"))

    def __complex__(self) -> complex:
        raise TypeError(_conversion_refused(self, "complex(X)", "X.to_dense().item()"))

    def __index__(self) -> int:
        raise TypeError(_conversion_refused(self, "using X as an index", "X.to_dense().item()"))

    def __dir__(self) -> list[str]:
        """The attributes an expression has (not the tensor methods that raise here)."""
        interop = _layer("interop")
        return [n for n in super().__dir__()
                if not isinstance(Expr.__dict__.get(n), _TensorAttribute) or interop.method(n) is not None]

    # ---- torch-like attributes ----------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of dims, like ``Tensor.ndim``."""
        return len(self.shape)

    def dim(self) -> int:
        """Number of dims, like ``Tensor.dim()``."""
        return len(self.shape)

    def size(self, dim: int | None = None) -> Any:
        """``torch.Size`` of the expression, or the size of one dim."""
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        """Number of entries of the (never built) dense tensor."""
        return math.prod(self.shape)

    @property
    def is_cuda(self) -> bool:
        """True when the expression lives on a CUDA device."""
        return self.device.type == "cuda"

    def is_complex(self) -> bool:
        """True for complex dtypes, like ``Tensor.is_complex()``."""
        return self.dtype.is_complex

    def is_floating_point(self) -> bool:
        """True for real floating dtypes, like ``Tensor.is_floating_point()``."""
        return self.dtype.is_floating_point

    @property
    def requires_grad(self) -> bool:
        """True when a leaf tensor or a tensor scalar of the expression requires grad."""
        return any(
            (isinstance(n, Leaf) and n.tensor is not None and n.tensor.requires_grad)
            or (isinstance(n, Scale) and isinstance(n.coef, torch.Tensor) and n.coef.requires_grad)
            for n in postorder(self)
        )

    @property
    def mT(self) -> Expr:
        """Transpose of the last two dims (lazy; ``x.mT.mT is x``)."""
        return transpose(self)

    @property
    def T(self) -> Expr:
        """Same as ``.mT`` (also on batched expressions, like TransformerLens' FactoredMatrix)."""
        return transpose(self)

    @property
    def mH(self) -> Expr:
        """Conjugate transpose of the last two dims (lazy; ``.mT`` for real dtypes)."""
        return transpose(conj(self))

    @property
    def H(self) -> Expr:
        """Conjugate transpose of a 2-D expression, like ``Tensor.H`` (``.mH`` for batches)."""
        return self.t().conj()

    def t(self) -> Expr:
        """Transpose of a 2-D expression, like ``Tensor.t()`` (use ``.mT`` for batches)."""
        if self.ndim != 2:
            raise RuntimeError(
                f"t() and .H expect a 2-D expression, got shape {tuple(self.shape)}; use .mT "
                "or .mH for the last two dims of a batch"
            )
        return transpose(self)

    def transpose(self, dim0: int, dim1: int) -> Expr:
        """Swap ``dim0`` and ``dim1``; lazy when they are the last two dims (in any order)."""
        nd = self.ndim
        dims = sorted(dim_index(d, self.shape, "transpose") for d in (dim0, dim1))
        if dims[0] == dims[1]:
            return self
        if dims != [nd - 2, nd - 1]:
            raise NotImplementedError(
                f"transpose({dim0}, {dim1}) on shape {tuple(self.shape)}: a lazy expression only "
                "transposes its last two dims (batch dims are not matrix dims)"
            )
        return transpose(self)

    def conj(self) -> Expr:
        """Complex conjugate (lazy; the expression itself for real dtypes)."""
        return conj(self)

    def resolve_conj(self) -> Expr:
        """The expression itself (conjugation is already lazy structure here)."""
        return self

    @property
    def real(self) -> Expr:
        """Real part, where it is exact structure (see :func:`complex_part`)."""
        return complex_part(self, "real")

    @property
    def imag(self) -> Expr:
        """Imaginary part, where it is exact structure (see :func:`complex_part`)."""
        return complex_part(self, "imag")

    def detach(self) -> Expr:
        """The same expression over detached leaf tensors and scalars (no copy)."""
        return _map_data(self, lambda t: t.detach())

    def keep(self, key: Any, value: Any) -> None:
        """Keep ``value`` (an application's answer read off this expression) under the hashable
        ``key``, among the node's caches: :meth:`kept` hands it back until :meth:`clear_cache`
        drops it with the engine's own. Whether it is still valid (a leaf written into) is the
        keeper's to check."""
        self._cache[("kept", _hashable_key(key, "keep"))] = value

    def kept(self, key: Any, default: Any = None) -> Any:
        """The value :meth:`keep` kept under ``key``, or ``default``."""
        _hashable_key(key, "kept")
        cache = self._cache_dict
        return default if cache is None else cache.get(("kept", key), default)

    def clear_cache(self) -> None:
        """Drop the cached forms and results of this expression and everything below it.

        Caches notice in-place changes made through torch (the tensors' version counters,
        data pointers, shapes and strides); call this after writing into a leaf's memory
        in a way torch does not see (``t.data``, a shared numpy array, DLPack)."""
        for node in postorder(self):
            if node._cache_dict:
                node._cache_dict.clear()

    def __rmatmul__(self, other: Any) -> Any:
        return matmul(other, self)

    def __mul__(self, other: Any) -> Expr:
        return scale(self, other)

    def __rmul__(self, other: Any) -> Expr:
        return scale(self, other)

    def __truediv__(self, other: Any) -> Expr:
        other = _as_scalar(other, self)
        if not isinstance(other, torch.Tensor) and other == 0:
            raise ZeroDivisionError(f"division of a lazy expression of shape {tuple(self.shape)} by zero")
        return scale(self, 1.0 / other if isinstance(other, torch.Tensor) else reciprocal(other))

    def __neg__(self) -> Expr:
        return scale(self, -1.0)

    def __pos__(self) -> Expr:
        return self

    def __add__(self, other: Any) -> Expr:
        return _plus_zero(self, other) if _is_zero(other) else add(self, other)

    def __radd__(self, other: Any) -> Expr:
        return _plus_zero(self, other) if _is_zero(other) else add(other, self)  # so that sum([X, Y]) works

    def __sub__(self, other: Any) -> Expr:
        return _plus_zero(self, other) if _is_zero(other) else add(self, term(other, -1.0))

    def __rsub__(self, other: Any) -> Expr:
        return _plus_zero(scale(self, -1.0), other) if _is_zero(other) else add(other, scale(self, -1.0))

    def __getitem__(self, key: Any) -> Any:
        return _layer("indexing").getitem(self, key)

    def __len__(self) -> int:
        return self.shape[0]

    def __bool__(self) -> bool:
        raise TypeError(f"the truth value of a lazy expression of shape {tuple(self.shape)} "
                        f"({_dtype_name(self.dtype)}) is ambiguous; ask for what you mean lazily "
                        "(torch.amax(X), lm.linalg.*) or call X.to_dense() if materialising is intended")

    def to(self, *args: Any, **kwargs: Any) -> Expr:
        """Lazy move/cast: ``x.to(device)``, ``x.to(dtype)``, ``x.to(device=..., dtype=...)``.

        A cast that is exact and commutes with products (widening, or a device move) is
        applied to the leaves; a narrowing one to the result, computed in the source dtype,
        as torch would (see :mod:`lazymat.rewrite`)."""
        device, dtype = _parse_to_args(args, kwargs)
        return cast(self, device=device, dtype=dtype)

    def type(self, dtype: Any = None, non_blocking: bool = False) -> Any:
        """``Tensor.type``: without ``dtype`` the name torch gives the dense tensor's type
        (``'torch.FloatTensor'``, ``'torch.cuda.DoubleTensor'``); else a lazy cast, as
        :meth:`to`: to a ``torch.dtype`` on the same device, or to a type name or legacy class
        (``'torch.DoubleTensor'``, ``torch.cuda.HalfTensor``), whose device type it takes as
        torch does (a CPU type name moves a CUDA expression to the CPU)."""
        if dtype is None:
            name, kind = _type_names()[self.dtype], self.device.type
            return name if kind == "cpu" else name.replace("torch.", f"torch.{kind}.", 1)
        if isinstance(dtype, torch.dtype):
            return cast(self, dtype=dtype)
        if isinstance(dtype, type) and dtype.__module__.startswith("torch"):  # torch.DoubleTensor
            dtype = f"{dtype.__module__}.{dtype.__name__}"
        if not isinstance(dtype, str):
            raise TypeError("Expr.type(): dtype must be a type, str, or dtype object, got "
                            f"{type(dtype).__name__}")
        *prefix, name = dtype.split(".")
        found = [d for d, n in _type_names().items() if n == f"torch.{name}"]
        if not found or prefix[:1] != ["torch"] or len(prefix) > 2:
            raise ValueError(f"invalid type: {dtype!r}")
        kind = prefix[1] if len(prefix) == 2 else "cpu"
        return cast(self, device=self.device if kind == self.device.type else kind, dtype=found[0])

    def type_as(self, other: Any) -> Expr:
        """``Tensor.type_as``: the lazy :meth:`type` of ``other``'s type name (a tensor's or an
        expression's), so its dtype and its device type, as torch does."""
        return self.type(other.type())

    def cpu(self) -> Expr:
        """Lazy ``.to("cpu")``."""
        return cast(self, device=torch.device("cpu"))

    def cuda(self, device: Any = None) -> Expr:
        """Lazy ``.to("cuda")``."""
        return cast(self, device=torch.device("cuda" if device is None else device))

    def double(self) -> Expr:
        """Lazy ``.to(torch.float64)``."""
        return cast(self, dtype=torch.float64)

    def float(self) -> Expr:
        """Lazy ``.to(torch.float32)``."""
        return cast(self, dtype=torch.float32)

    def half(self) -> Expr:
        """Lazy ``.to(torch.float16)`` (applied to the result; see :meth:`to`)."""
        return cast(self, dtype=torch.float16)

    def bfloat16(self) -> Expr:
        """Lazy ``.to(torch.bfloat16)`` (applied to the result; see :meth:`to`)."""
        return cast(self, dtype=torch.bfloat16)

    # ---- torch interop ------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _torch_dispatch(func, args, kwargs or {})

    # ---- things computed by the layers above (see _layer) ---------------------------------
    def to_dense(self, memory_budget: int | str | None = None) -> torch.Tensor:
        """Materialise the full ``(..., m, n)`` tensor, contracting in the planned order; when
        the plan's intermediates exceed ``memory_budget`` (bytes or ``"2GiB"``; default
        :func:`lazymat.settings.memory_budget`), the result is filled in blocks of batch
        entries, rows or columns that fit."""
        out = _layer("execute").evaluate(self, memory_budget)
        if out.layout != torch.strided:  # a sparse leaf alone, scaled or summed: torch's to_dense
            out = out.to_dense()
        return _layer("unread").joined(out, self)  # (zero gradients for leaves a cat's index drops)

    def plan(self):
        """The :class:`lazymat.plan.Plan` that ``to_dense()`` runs (order, FLOPs, memory)."""
        return _layer("plan").plan_expr(self)

    def to_networkx(self):
        """The DAG as a ``networkx.DiGraph`` (node attrs: op, shape, dtype; edges child->parent)."""
        return _layer("graph").to_networkx(self)

    def factor(self):
        """Lazy ``(L, R)`` with ``self == L @ R`` and the smallest inner width found."""
        return _layer("core").factor(self)

    def explain(self, op: str = "to_dense", memory_budget: int | str | None = None, **options: Any):
        """Cost report of ``op`` (see :func:`lazymat.explain.explain`; a reduction's ``k=``,
        ``dim=``, ``ord=`` as keywords: ``X.explain("topk", k=10)``)."""
        return _layer("explain").explain(self, op=op, memory_budget=memory_budget, **options)

    def to_dot(self) -> str:
        """Graphviz text of the expression (see :func:`lazymat.explain.to_dot`)."""
        return _layer("explain").to_dot(self)

    # the lazymat.linalg functions as methods
    def svd(self, some: bool = True, compute_uv: bool = True):
        """``torch.Tensor.svd``: ``(U, S, V)`` with ``V``, not ``Vh`` (reduced to the nonzero
        triplets). ``lm.linalg.svd(X)`` / ``torch.linalg.svd(X)`` give torch.linalg's ``Vh``."""
        return torch.svd(self, some=some, compute_uv=compute_uv)

    def svdvals(self):
        """Singular values, descending (:func:`lazymat.linalg.svdvals`)."""
        return _layer("linalg").svdvals(self)

    def eigvals(self):
        """Eigenvalues of a square expression (:func:`lazymat.linalg.eigvals`)."""
        return _layer("linalg").eigvals(self)

    def eig(self):
        """Eigenvalues and eigenvectors of a square expression (:func:`lazymat.linalg.eig`)."""
        return _layer("linalg").eig(self)

    def matrix_norm(self, ord: str | float = "fro"):
        """Matrix norm over the last two dims (:func:`lazymat.linalg.matrix_norm`)."""
        return _layer("linalg").matrix_norm(self, ord=ord)

    def norm(self, p: Any = "fro", dim: Any = None, keepdim: bool = False, dtype: Any = None):
        """``torch.Tensor.norm``: by default one Frobenius norm over all dims (a batch included);
        :meth:`matrix_norm` gives one norm per matrix."""
        return torch.norm(self, p=p, dim=dim, keepdim=keepdim, dtype=dtype)

    def matrix_rank(self, atol=None, rtol=None):
        """Numerical rank with torch's tolerances (:func:`lazymat.linalg.matrix_rank`)."""
        return _layer("linalg").matrix_rank(self, atol=atol, rtol=rtol)

    def pinv(self, atol=None, rtol=None):
        """Pseudo-inverse (:func:`lazymat.linalg.pinv`): lazy in factored form, or a tensor when
        that holds no more numbers than its factors would."""
        return _layer("linalg").pinv(self, atol=atol, rtol=rtol)

    def trace(self):
        """``torch.Tensor.trace``: the trace of a 2-D expression, no SVD (``lm.linalg.trace``
        takes a batch)."""
        return torch.trace(self)

    def diagonal(self, offset: int = 0, dim1: int = 0, dim2: int = 1):
        """``torch.Tensor.diagonal``, with torch's default dims 0 and 1 (on a batched expression,
        pass ``dim1=-2, dim2=-1`` for each matrix's diagonal, or use ``lm.linalg.diagonal``)."""
        return torch.diagonal(self, offset=offset, dim1=dim1, dim2=dim2)

    def truncate(self, k: int) -> Expr:
        """Best rank-``k`` approximation, lazy (:func:`lazymat.linalg.truncate`)."""
        return _layer("linalg").truncate(self, k)

    def make_even(self) -> Expr:
        """The same matrix with balanced factors (:func:`lazymat.linalg.make_even`)."""
        return _layer("linalg").make_even(self)

    def to_factored(self):
        """This expression as a TransformerLens-style ``lazymat.compat.FactoredMatrix``."""
        return _layer("compat").FactoredMatrix.from_expr(self)

    # ---- printing -----------------------------------------------------------------------
    def __repr__(self) -> str:
        text = to_text(self, limit=200)
        return (
            f"lazymat.Expr({text}, shape={tuple(self.shape)}, dtype={_dtype_name(self.dtype)}"
            + (f", device='{self.device}'" if self.device.type != "cpu" else "")
            + ")"
        )

    # ---- reductions along dims, never forming the matrix (lazymat.reduce) --------------------
    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True, *,  # noqa: A002
             memory_budget: int | str | None = None):
        """``torch.topk``, streamed in blocks (:func:`lazymat.reduce.topk`)."""
        return _layer("reduce").topk(self, k, dim, largest, sorted, memory_budget=memory_budget)

    def amax(self, dim: Any = (), keepdim: bool = False, *,
             memory_budget: int | str | None = None) -> torch.Tensor:
        """``torch.amax``, streamed (:func:`lazymat.reduce.amax`)."""
        return _layer("reduce").amax(self, dim, keepdim, memory_budget=memory_budget)

    def amin(self, dim: Any = (), keepdim: bool = False, *,
             memory_budget: int | str | None = None) -> torch.Tensor:
        """``torch.amin``, streamed (:func:`lazymat.reduce.amin`)."""
        return _layer("reduce").amin(self, dim, keepdim, memory_budget=memory_budget)

    def argmax(self, dim: int | None = None, keepdim: bool = False, *,
               memory_budget: int | str | None = None) -> torch.Tensor:
        """``torch.argmax``, streamed (:func:`lazymat.reduce.argmax`)."""
        return _layer("reduce").argmax(self, dim, keepdim, memory_budget=memory_budget)

    def argmin(self, dim: int | None = None, keepdim: bool = False, *,
               memory_budget: int | str | None = None) -> torch.Tensor:
        """``torch.argmin``, streamed (:func:`lazymat.reduce.argmin`)."""
        return _layer("reduce").argmin(self, dim, keepdim, memory_budget=memory_budget)

    def max(self, dim: Any = None, keepdim: bool = False, *, memory_budget: int | str | None = None):
        """``torch.max``: a value, or ``(values, indices)`` along ``dim`` (:func:`lazymat.reduce.max`)."""
        return _layer("reduce").max(self, dim, keepdim, memory_budget=memory_budget)

    def min(self, dim: Any = None, keepdim: bool = False, *, memory_budget: int | str | None = None):
        """``torch.min``: a value, or ``(values, indices)`` along ``dim`` (:func:`lazymat.reduce.min`)."""
        return _layer("reduce").min(self, dim, keepdim, memory_budget=memory_budget)

    def sum(self, dim: Any = None, keepdim: bool = False, *, dtype: Any = None,
            memory_budget: int | str | None = None) -> torch.Tensor:
        """``torch.sum``: a product with ones, no streaming (:func:`lazymat.reduce.sum`)."""
        return _layer("reduce").sum(self, dim, keepdim, dtype=dtype, memory_budget=memory_budget)

    def mean(self, dim: Any = None, keepdim: bool = False, *, dtype: Any = None,
            memory_budget: int | str | None = None) -> torch.Tensor:
        """``torch.mean`` (:func:`lazymat.reduce.mean`)."""
        return _layer("reduce").mean(self, dim, keepdim, dtype=dtype, memory_budget=memory_budget)


_set_cache_dict = Expr.__dict__["_cache_dict"].__set__  # the slots written after construction
_set_products = Expr.__dict__["_products"].__set__


class Leaf(Expr):
    """A wrapped tensor (``lazy``) or a shape-only ``symbol`` (``tensor is None``)."""

    __slots__ = ("tensor", "name")
    op = "leaf"

    def _set_params(self, params: tuple) -> None:
        self.tensor = params[1] if params[0] == "tensor" else None
        self.name = params[-1]

    def _args(self) -> tuple:
        if self.tensor is not None:
            return ("tensor", self.tensor, self.name)
        return ("symbol", tuple(self.shape), self.dtype, str(self.device), self.name)  # symbol()'s params

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        if args[0] == "tensor":
            return lazy(args[1], name=args[2])
        shape, dtype, device, name = args[1:]
        return symbol(name, shape, dtype=dtype, device=device)

    @property
    def is_symbol(self) -> bool:
        """True for a shape-only ``lm.symbol``."""
        return self.tensor is None

    def checked_tensor(self) -> torch.Tensor:
        """The wrapped tensor, after checking that its shape is still the leaf's (a tensor
        resized in place would otherwise be computed with under a wrong shape)."""
        t = self.tensor
        if t.shape != self.shape:
            raise LeafChanged(
                f"the tensor of leaf {self.name or ''!s}{' ' if self.name else ''}was wrapped with "
                f"shape {tuple(self.shape)} but now has shape {tuple(t.shape)} (resized in place); "
                "wrap it again with lm.lazy(t)"
            )
        return t


def tensor_state(t: torch.Tensor) -> tuple:
    """What an in-place change through torch alters, for validating caches of results read
    from ``t``: the version counter (writes), and the memory, offset, shape and strides
    (``set_``, ``resize_``). Writes torch cannot see (through ``t.data``, a shared numpy
    array) leave it unchanged: that is what ``Expr.clear_cache()`` is for."""
    if t.is_inference():  # no version counter: a write cannot be seen, so no state ever matches
        return (object(),)
    if t.layout != torch.strided:  # sparse tensors have no single data pointer
        return (t._version, tuple(t.shape))
    try:
        return (t._version, t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
    except RuntimeError:  # no storage (torch.vmap's batched tensors): no state ever matches either
        return (object(),)


_LeafBuilding = Leaf._building


class Transpose(Expr):
    """``child.mT``: the last two dims swapped."""

    __slots__ = ()
    op = "transpose"

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        return transpose(children[0])


class MatMul(Expr):
    """``left @ right`` with batch dims broadcast."""

    __slots__ = ()
    op = "matmul"

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        return matmul(*children)


_MatMulBuilding = MatMul._building


class Add(Expr):
    """``left + right`` with batch dims broadcast."""

    __slots__ = ()
    op = "add"

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        return add(*children)


class Scale(Expr):
    """``coef * child``; ``coef`` is a Python number or a 0-dim tensor (autograd flows)."""

    __slots__ = ("coef",)
    op = "scale"

    def _set_params(self, params: tuple) -> None:
        self.coef = params[0]

    def _args(self) -> tuple:
        return (self.coef,)

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        return scale(children[0], args[0])


class Index(Expr):
    """``child[key]`` with ``key`` a normalised tuple (see :mod:`lazymat.indexing`)."""

    __slots__ = ("key",)
    op = "index"

    def _set_params(self, params: tuple) -> None:
        self.key = params[0]

    def _args(self) -> tuple:
        return (self.key,)

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        return _layer("indexing").make_index(children[0], *args[0])


class Cast(Expr):
    """``child.to(device, dtype)``."""

    __slots__ = ()
    op = "to"

    def _args(self) -> tuple:
        return (str(self.device), self.dtype)

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        return cast(children[0], device=args[0], dtype=args[1])


class Concat(Expr):
    """Concatenation of expressions along dim -1 or -2 (used for stacked low-rank factors)."""

    __slots__ = ("axis",)
    op = "cat"

    def _set_params(self, params: tuple) -> None:
        self.axis = params[0]

    def _args(self) -> tuple:
        return (self.axis,)

    @classmethod
    def _build(cls, args: tuple, children: list[Expr]) -> Expr:
        return cat(children, dim=args[0])


class _TensorAttribute:
    """``X.<name>`` for a ``torch.Tensor`` attribute that expressions do not define: the lazy
    route where :mod:`lazymat.interop` has one (``X.mm(t)``, ``X.neg()``), else
    :class:`UnsupportedTensorMethod` naming the dense size.

    Installed on :class:`Expr` once per name, rather than answered by ``__getattr__``: CPython
    only specialises attribute loads (``node.shape``, ``node.uid``) on classes without
    ``__getattr__``, and every node access on the hot path would pay the generic lookup."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            raise AttributeError(f"lazymat.Expr has no attribute {self.name!r}")
        routed = _layer("interop").method(self.name)
        if routed is not None:
            return functools.partial(routed, obj)
        numel = math.prod(obj.shape)
        raise UnsupportedTensorMethod(
            f"Tensor.{self.name} is not supported on a lazy expression of shape {tuple(obj.shape)}: "
            f"it would need the dense matrix ({numel:,} entries); call X.to_dense().{self.name}(...) "
            "if materialising is intended"
        )


def _install_tensor_attributes() -> None:
    """A :class:`_TensorAttribute` for every public ``torch.Tensor`` name no node type defines."""
    defined = {n for cls in (Expr, *_node_types()) for n in cls.__dict__}
    for name in dir(torch.Tensor):
        if not name.startswith("_") and name not in defined:
            setattr(Expr, name, _TensorAttribute(name))


def _node_types() -> list[type]:
    """Every node type (not the construction twins, :meth:`Expr.__setattr__`)."""
    out, stack = [], [Expr]
    while stack:
        subs = [c for c in stack.pop().__subclasses__() if c.__dict__.get("_building", True) is not None]
        out += subs
        stack += subs
    return out


_install_tensor_attributes()


def _from_specs(specs: list[tuple]) -> Expr:
    """Rebuild a pickled DAG (see ``Expr.__reduce__``): children first, by constructors."""
    built: list[Expr] = []
    for cls, args, kids in specs:
        if not (isinstance(cls, type) and issubclass(cls, Expr)):  # allow-listed for torch.load: only nodes
            raise pickle.UnpicklingError(f"a lazymat expression's pickle names {cls!r}, not a node type")
        built.append(cls._build(args, [built[i] for i in kids]))
    return built[-1]


def safe_globals() -> list:
    """What ``torch.load(..., weights_only=True)`` must be allowed to rebuild lazymat expressions
    (torch's default since 2.6 refuses every global it does not know): the rebuilding function,
    the node types (it builds nothing else) and ``range`` (in index keys). Allow them where the
    file is trusted, with ``torch.serialization.add_safe_globals(lm.safe_globals())`` or the
    ``torch.serialization.safe_globals(...)`` context manager."""
    return [_from_specs, range, Expr, *_node_types()]


def _map_data(root: Expr, fn, number=None, leaf_fn=None) -> Expr:
    """The same structure with ``fn`` applied to every leaf tensor and tensor scalar (and
    ``number`` to Python-number coefficients, ``leaf_fn`` to whole leaves, when given)."""
    built: dict[int, Expr] = {}
    for n in postorder(root):
        if isinstance(n, Leaf) and leaf_fn is not None:
            built[n.uid] = leaf_fn(n)
            continue
        args = n._args()
        if isinstance(n, Leaf) and n.tensor is not None:
            args = ("tensor", fn(n.tensor), n.name)
        elif isinstance(n, Scale):
            args = (fn(n.coef) if isinstance(n.coef, torch.Tensor) else number(n.coef) if number else n.coef,)
        built[n.uid] = type(n)._build(args, [built[c.uid] for c in n.children])
    return built[root.uid]


def with_tensors(root: Expr, fn: Callable[[torch.Tensor], torch.Tensor]) -> Expr:
    """The same structure over ``fn`` of every leaf tensor and tensor scalar (built through the
    constructors, so shapes are inferred anew: ``fn`` may take a block of a leaf's batch)."""
    return _map_data(root, fn)


_CONJ_SUFFIX = ".conj()"


def _conj_leaf(leaf: Leaf) -> Expr:
    """The conjugate of a complex leaf: torch's free conj view of its tensor, or for a symbol the
    symbol named ``name.conj()`` (and back), a leaf of its own, so that ``X - X.conj()`` or
    ``X.mH @ X`` never reads as ``X - X`` or ``X.T @ X``."""
    if leaf.tensor is not None:
        return lazy(leaf.tensor.conj(), name=leaf.name)
    name = leaf.name
    name = name[: -len(_CONJ_SUFFIX)] if name.endswith(_CONJ_SUFFIX) else name + _CONJ_SUFFIX
    return symbol(name, tuple(leaf.shape), dtype=leaf.dtype, device=leaf.device)


def conj(x: Expr) -> Expr:
    """Lazy complex conjugate: conjugated leaves and scalars under the same structure; the
    expression itself for real dtypes. ``conj(conj(x))`` is ``x`` while ``x`` lives."""
    if not x.dtype.is_complex:
        return x
    hit = x._cache.get("conj")
    out = hit() if hit is not None else None
    if out is None:
        if isinstance(x, Leaf):
            out = _conj_leaf(x)
        else:
            out = _map_data(x, torch.conj, number=lambda c: c.conjugate(), leaf_fn=conj)
        x._cache["conj"] = weakref.ref(out)  # weak: out's caches never keep x alive
        out._cache["conj"] = weakref.ref(x)
    return out


def complex_part(x: Expr, part: str) -> Expr:
    """``x.real`` or ``x.imag`` (``part``) as an expression of exact lazy structure.

    Each node's two parts are built from its children's: leaves, sums, transposes, indexing,
    ``cat`` and casts part by part; a complex scaling mixes them (``Re(c y) = Re c Re y -
    Im c Im y``); a product too (``Re(A B) = Re A Re B - Im A Im B``, ``Im(A B) = Re A Im B +
    Im A Re B``), so the part of a chain of ``n`` complex factors is a sum of ``2^(n-1)``
    products of real leaves. A real-valued node under a complex one (``X.to(complex64)``,
    ``1j * X``) is its own real part and has no imaginary part: those terms are dropped, and
    a part that is zero throughout is a zero leaf (a broadcast 0, no memory)."""
    if not x.dtype.is_complex:
        if part == "real":
            return x
        raise RuntimeError(
            f"imag is not implemented for a lazy expression of real dtype {_dtype_name(x.dtype)}"
        )
    parts: dict[tuple[int, str], Expr | None] = {}  # None: exactly zero

    def get(n: Expr, which: str) -> Expr | None:
        return parts[(n.uid, which)]

    def plus(a: Expr | None, b: Expr | None) -> Expr | None:
        return a if b is None else b if a is None else add(a, b)

    def times(y: Expr | None, c: Any) -> Expr | None:
        if y is None or (isinstance(c, (int, float)) and c == 0):
            return None
        return scale(y, c)

    def product(a: Expr | None, b: Expr | None) -> Expr | None:
        return None if a is None or b is None else matmul(a, b)

    def zero(n: Expr) -> Expr:
        t = torch.zeros((), dtype=_real_dtype(n.dtype), device=n.device)
        return lazy(t.expand(tuple(n.shape)))

    for n in postorder(x):
        if not n.dtype.is_complex:  # taken whole: its own real part, no imaginary part
            parts[(n.uid, "real")], parts[(n.uid, "imag")] = n, None
            continue
        if isinstance(n, MatMul):
            (ar, ai), (br, bi) = ((get(c, "real"), get(c, "imag")) for c in n.children)
            parts[(n.uid, "real")] = plus(product(ar, br), times(product(ai, bi), -1))
            parts[(n.uid, "imag")] = plus(product(ar, bi), product(ai, br))
            continue
        if isinstance(n, Scale):
            c, child = n.coef, n.children[0]
            yr, yi = get(child, "real"), get(child, "imag")
            if not (isinstance(c, complex) or isinstance(c, torch.Tensor) and c.is_complex()):
                parts[(n.uid, "real")], parts[(n.uid, "imag")] = times(yr, c), times(yi, c)
            else:
                re, im = c.real, c.imag
                parts[(n.uid, "real")] = plus(times(yr, re), times(yi, -im))  # Re c Re y - Im c Im y
                parts[(n.uid, "imag")] = plus(times(yi, re), times(yr, im))   # Re c Im y + Im c Re y
            continue
        for which in ("real", "imag"):
            if isinstance(n, Leaf):
                if n.tensor is None:
                    out = symbol(f"{n.name}.{which}", n.shape, _real_dtype(n.dtype), n.device)
                else:
                    out = lazy(getattr(n.tensor, which), name=n.name and f"{n.name}.{which}")
            elif isinstance(n, Add):
                out = plus(*(get(c, which) for c in n.children))
            elif isinstance(n, Concat):
                kids = [get(c, which) for c in n.children]
                out = None if all(k is None for k in kids) else Concat._build(
                    n._args(), [zero(c) if k is None else k for c, k in zip(n.children, kids, strict=True)])
            elif isinstance(n, Transpose):
                child = get(n.children[0], which)
                out = None if child is None else transpose(child)
            elif isinstance(n, Index):
                child = get(n.children[0], which)
                out = None if child is None else Index._make((n.key,), (child,), n.shape, child.dtype,
                                                             child.device)
            elif isinstance(n, Cast):
                child = get(n.children[0], which)
                out = None if child is None else cast(child, device=n.device, dtype=_real_dtype(n.dtype))
            else:
                raise NotImplementedError(
                    f"the {part} part of a {n.op} node ({to_text(x, limit=60)}) is not lazy "
                    "structure lazymat knows; use X.to_dense()." + part
                )
            parts[(n.uid, which)] = out
    out = get(x, part)
    return zero(x) if out is None else out


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real() if dtype.is_complex else dtype


def _conversion_refused(x: Expr, what: str, instead: str) -> str:
    """The message of a Python or torch conversion an expression refuses (no silent densifying)."""
    return (f"{what} is not supported on a lazy expression of shape {tuple(x.shape)} "
            f"({_dtype_name(x.dtype)}): it would need the dense matrix "
            f"({math.prod(x.shape):,} entries); call {instead} if materialising is intended")


def _check_implicit_size(x: Expr, what: str) -> None:
    """Refuse an implicit conversion whose dense result exceeds ``lm.config``'s
    ``implicit_dense_limit`` (an explicit ``x.to_dense()`` is never limited)."""
    limit = _layer("settings").get("implicit_dense_limit")
    nbytes = math.prod(x.shape) * x.dtype.itemsize
    if nbytes > limit:
        raise MemoryError(
            f"{what} would build the dense {tuple(x.shape)} {_dtype_name(x.dtype)} matrix "
            f"({nbytes / 2**30:.3g} GiB), above implicit_dense_limit={limit} bytes; call "
            "X.to_dense() if you mean it, raise the limit with lm.config(implicit_dense_limit=...), "
            "or ask for what you need lazily (X[rows], lm.linalg.*)"
        )


_layers: dict[str, Any] = {}


def _layer(name: str) -> Any:
    """A module of an upper layer, for the convenience methods above (imported on first use
    so that this bottom layer imports nothing of lazymat's)."""
    module = _layers.get(name)
    if module is None:
        module = _layers[name] = importlib.import_module(f"lazymat.{name}")
    return module


def _torch_dispatch(func: Any, args: tuple, kwargs: dict) -> Any:
    """:func:`lazymat.interop.dispatch`, which this first call imports and puts in its own
    place: every later torch call on an expression reaches it without :func:`_layer`'s frame."""
    global _torch_dispatch
    _torch_dispatch = _layer("interop").dispatch
    return _torch_dispatch(func, args, kwargs)


# ---- leaves ---------------------------------------------------------------------------------
def lazy(tensor: torch.Tensor | Expr, name: str | None = None) -> Expr:
    """Wrap a tensor of shape ``(..., m, n)`` (no copy; any device; floating or complex), or a
    factored matrix (an object with ``.A`` and ``.B``) as the lazy ``A @ B``."""
    if not isinstance(tensor, torch.Tensor):
        if isinstance(tensor, Expr):
            return tensor
        if hasattr(tensor, "__lazymat__"):  # lazymat.compat objects
            return tensor.__lazymat__()
        if hasattr(tensor, "A") and hasattr(tensor, "B"):
            return lazy(tensor.A) @ lazy(tensor.B)  # a factored matrix (TransformerLens's), duck-typed
        raise TypeError(f"lazymat.lazy expects a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_nested:  # (its sizes are per component: torch raises an internal error on .shape)
        raise TypeError(f"lazymat.lazy needs a tensor of one shape (..., m, n); got a nested tensor of "
                        f"{tensor.size(0)} components (wrap each: [lm.lazy(t) for t in nt.unbind()])")
    dtype = tensor.dtype
    if dtype not in _MATRIX_DTYPES:
        _check_matrix_dtype(dtype, f"tensor{' ' + name if name else ''}")
    shape = tensor.shape
    if len(shape) < 2:
        raise ValueError(
            f"lazymat.lazy needs a tensor with at least 2 dims (..., m, n); got shape "
            f"{tuple(shape)} (use t[:, None] or t[None, :] for a column or row)"
        )
    if name is not None and not isinstance(name, str):
        raise TypeError(f"lazymat.lazy: name must be a str or None, got {type(name).__name__} {name!r} "
                        f"(tensor of shape {tuple(shape)})")
    key = id(tensor) if name is None else (id(tensor), name)  # a live leaf keeps its tensor (and the id)
    ref = _interned.get(key)
    if ref is not None:
        node = ref()
        # else the tensor's .data was replaced (module.to moves parameters so), or it was resized
        if node is not None and node.dtype is dtype and node.shape == shape and node.device == tensor.device:
            return node
    # _new_node, inlined (the node built most: a call frame is a tenth of its cost), with the
    # tensor and name stored here rather than through ``Leaf._set_params``
    if not is_compiling() and _dead:  # (dynamo replays a trace: no branch on what GC changes)
        _drop_dead_entries()
    node = _LeafBuilding()
    node.shape = shape
    node.dtype = dtype
    node.device = tensor.device
    node.children = ()
    node.uid = next(_uids)
    node._cache_dict = None
    node._products = None
    node.tensor = tensor
    node.name = name
    node.__class__ = Leaf
    ref = _Entry(node, _on_death)
    ref.key = key
    _interned[key] = ref
    return node


def symbol(
    name: str,
    shape: Sequence[int],
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> Expr:
    """A shape-only leaf: plans and costs work, anything needing data raises. ``dtype`` None is
    torch's default dtype (``torch.get_default_dtype()``), as for torch's factory functions."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(name, str):
        raise TypeError(f"symbol name must be a str, got {type(name).__name__} {name!r}")
    try:
        dims = list(shape)
    except TypeError:
        raise TypeError(f"symbol {name!r}: shape must be a sequence of ints, got {shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(
                f"symbol {name!r}: shape {tuple(dims)} holds {d!r} of type {type(d).__name__}; "
                "dims must be ints"
            )
    shape = tuple(int(d) for d in dims)
    if len(shape) < 2:
        raise ValueError(f"symbol {name!r} needs at least 2 dims (..., m, n); got shape {shape}")
    if any(s < 0 for s in shape):
        raise ValueError(f"symbol {name!r} has a negative dimension in shape {shape}")
    _check_matrix_dtype(dtype, f"symbol {name!r}")
    return Leaf._make(("symbol", shape, dtype, str(device), name), (), shape, dtype, device)


def is_lazy(obj: Any) -> bool:
    """True for lazymat expressions."""
    return isinstance(obj, Expr)


def as_expr(obj: Any, like: Expr | None = None) -> Expr:
    """``obj`` as an expression (tensors are wrapped); anything else raises naming it."""
    if isinstance(obj, Expr):
        return obj
    if isinstance(obj, torch.Tensor) or hasattr(obj, "__lazymat__"):
        return lazy(obj)
    raise TypeError(
        f"cannot combine a lazymat expression{_shape_of(like)} with {type(obj).__name__}"
    )


def _shape_of(x: Expr | None) -> str:
    return "" if x is None else f" of shape {tuple(x.shape)}"


# ---- operations -----------------------------------------------------------------------------
def _is_zero(x: Any) -> bool:
    return isinstance(x, Number) and not isinstance(x, bool) and x == 0


def _plus_zero(x: Expr, zero: Any) -> Expr:
    """``x + zero`` for a zero number: ``x``, in the dtype torch gives (``X + 0j`` is complex)."""
    if isinstance(zero, numbers.Real) or x.dtype.is_complex:
        return x
    return cast(x, dtype=torch.result_type(torch.empty((), dtype=x.dtype), 0j))  # float16: complex32


def _check_same(a: Any, b: Any, what: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{what}: dtypes differ, {_dtype_name(a.dtype)} {tuple(a.shape)} vs "
            f"{_dtype_name(b.dtype)} {tuple(b.shape)}; cast one with .to(dtype)"
        )
    if a.device != b.device:
        raise ValueError(
            f"{what}: devices differ, {a.device} {tuple(a.shape)} vs {b.device} "
            f"{tuple(b.shape)}; move one with .to(device)"
        )


def _promoted(a: Expr, b: Expr) -> tuple[Expr, Expr]:
    """``a`` and ``b`` cast lazily to the dtype torch gives their elementwise combination
    (``torch.promote_types``: float32 + float64 is float64, float16 + bfloat16 float32, a real
    and a complex term complex): a widening cast, exact, which goes to the leaves (a low-rank
    term stays low rank). Products do not promote (``torch.matmul`` refuses mixed dtypes)."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return cast(a, dtype=dtype), cast(b, dtype=dtype)


def _broadcast_batch(a: Sequence[int], b: Sequence[int], what: str, sa, sb) -> tuple[int, ...]:
    if tuple(a) == tuple(b) or not b:
        return tuple(a)
    if not a:
        return tuple(b)
    try:
        return broadcast_shapes(a, b)
    except ValueError:
        raise ValueError(
            f"{what}: batch dims {tuple(a)} and {tuple(b)} do not broadcast "
            f"(shapes {tuple(sa)} and {tuple(sb)})"
        ) from None


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` for expressions and tensors. A 1-D tensor operand gives a tensor back
    (computed without forming the matrix); otherwise the result is lazy. An object that wraps
    an expression (``__lazymat__``, a ``lazymat.compat.FactoredMatrix``) beside an expression
    makes the product with its own operator, so it has the type ``tensor @ fm`` has."""
    if not (isinstance(a, Expr) and isinstance(b, Expr)):
        wrapped = _wrapper_product(a, b)
        if wrapped is not NotImplemented:
            return wrapped
        if isinstance(b, torch.Tensor) and not isinstance(a, torch.Tensor) and b.ndim == 1:
            return _times_vector(as_expr(a), b, left=False)
        if isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a.ndim == 1:
            return _times_vector(as_expr(b), a, left=True)
        a = as_expr(a)
        b = as_expr(b, like=a)
    products = a._products  # a's products: None, its one product's weak reference, or a table
    if products is not None:
        node = _product_of(products, b)
        if node is not None:  # (so a and b were checked when it was built)
            return node
    shapes = (a.shape, b.shape)
    shape = _product_shapes.get(shapes)  # found: these shapes were checked before
    if shape is None:
        shape = _product_shape(a, b, shapes)
    elif a.dtype is not b.dtype or a.device != b.device:  # dtypes are singletons
        _check_same(a, b, "matmul")
    # _new_node, inlined (products are built most after leaves; this code object's attribute
    # stores are also specialised to products alone), and entered with a, not in _interned
    node = _MatMulBuilding()
    node.shape = shape
    node.dtype = a.dtype
    node.device = a.device
    node.children = (a, b)
    node.uid = next(_uids)
    node._cache_dict = None
    node._products = None
    node.__class__ = MatMul
    if products is None:
        _set_products(a, _weak(node))
    else:
        _enter_product(a, products, b, node)
    return node


def _wrapper_product(a: Any, b: Any) -> Any:
    """``a @ b`` by the operator of a wrapper (an object with ``__lazymat__`` that is not a
    tensor) when the other operand is an expression, or NotImplemented. The wrapper's class
    decides its products' type on both sides (TransformerLens's ``tensor @ fm`` is a
    ``FactoredMatrix`` by its ``__rmatmul__``); an expression stands for a tensor there."""
    if isinstance(a, Expr):
        if isinstance(b, torch.Tensor) or not hasattr(b, "__lazymat__"):
            return NotImplemented
        method = getattr(type(b), "__rmatmul__", None)
        return NotImplemented if method is None else method(b, a)
    if isinstance(b, Expr) and not isinstance(a, torch.Tensor) and hasattr(a, "__lazymat__"):
        method = getattr(type(a), "__matmul__", None)
        return NotImplemented if method is None else method(a, b)
    return NotImplemented


# Products are hash-consed with their left factor, in its slot ``_products``: the weak reference
# (without a callback) to its one product, made by that product, or once it has two live ones a
# table, right factor's uid -> weak reference; freed with the factor. A fresh left factor, as in
# every ``lazy(A) @ lazy(B) @ lazy(C)``, has none, so the product is built without a lookup, and a
# dying product leaves no entry to drop. A long-lived factor's table is swept of dead references
# as it grows (:func:`_sweep_products`). Two threads building the same new product at once may
# each enter theirs; either is a correct node (the global table races alike).
_SWEPT_FROM = 16  # a table is swept when its size reaches a power of two from here
_NEXT_SWEEP = None  # the table's key of the size of its next sweep (uids are ints)


def _product_of(products: Any, b: Expr) -> Expr | None:
    """The live product with right factor ``b`` in a left factor's ``products`` (see above)."""
    if type(products) is dict:
        ref = products.get(b.uid)
        return None if ref is None else ref()
    node = products()
    return node if node is not None and node.children[1] is b else None


def _enter_product(a: Expr, products: Any, b: Expr, node: Expr) -> None:
    """Enter the new product ``node`` (``a @ b``) with ``a``, whose ``products`` are not None."""
    if type(products) is dict:
        products[b.uid] = _weak(node)
        if not len(products) & (len(products) - 1):  # a power of two
            _sweep_products(a, products)
        return
    other = products()
    if other is None:  # its one product died: node takes its place
        _set_products(a, _weak(node))
    else:
        _set_products(a, {other.children[1].uid: products, b.uid: _weak(node)})


def _sweep_products(a: Expr, products: dict) -> None:
    """Drop the dead references of ``a``'s product table ``products`` (of a power-of-two size)
    once it holds twice what its last sweep kept: each sweep is paid for by the entries added
    since (the references of products that died with their right factor)."""
    if len(products) < max(_SWEPT_FROM, products.get(_NEXT_SWEEP, 0)):
        return
    live = {uid: ref for uid, ref in products.items() if uid is not _NEXT_SWEEP and ref() is not None}
    live[_NEXT_SWEEP] = 2 * len(live) + 1
    _set_products(a, live)


# (a's shape, b's shape) -> the shape of a @ b, for shapes that multiply: a product's shape is
# one lookup (a hash of two short tuples) where checking the inner dims, broadcasting the batch
# dims and making a ``torch.Size`` cost several times that (a batched product's broadcast most)
_product_shapes: dict[tuple, torch.Size] = {}
_PRODUCT_SHAPES_KEPT = 4096


def _product_shape(a: Expr, b: Expr, shapes: tuple) -> torch.Size:
    """The shape of ``a @ b`` (``shapes`` their shapes), after checking that their inner dims
    agree, their dtypes and devices match and their batch dims broadcast (raising naming them,
    in that order); kept in ``_product_shapes`` (emptied when it holds too many)."""
    sa, sb = shapes
    if sa[-1] != sb[-2]:
        raise ValueError(
            f"matmul: inner dimensions differ, {tuple(sa)} @ {tuple(sb)} ({sa[-1]} != {sb[-2]})"
        )
    if a.dtype is not b.dtype or a.device != b.device:
        _check_same(a, b, "matmul")
    if len(sa) == 2 and len(sb) == 2:
        shape = _Size((sa[0], sb[1]))
    else:
        shape = _Size((*_broadcast_batch(sa[:-2], sb[:-2], "matmul", sa, sb), sa[-2], sb[-1]))
    if len(_product_shapes) >= _PRODUCT_SHAPES_KEPT:
        _product_shapes.clear()
    _product_shapes[shapes] = shape
    return shape


def _times_vector(x: Expr, v: torch.Tensor, left: bool) -> torch.Tensor:
    """``x @ v`` (``v @ x`` when ``left``) for a vector ``v``: the tensor of shape ``(..., m)``
    (``(..., n)``), checked here as the product with ``v`` as a column (row) would be, and
    computed by :func:`lazymat.execute.times_vector` without a node for ``v``."""
    dtype = v.dtype
    if dtype not in _MATRIX_DTYPES:
        _check_matrix_dtype(dtype, "tensor")
    n = v.shape[0]
    if x.shape[-2 if left else -1] != n or x.dtype != dtype or x.device != v.device:
        operand = _Operand(dtype, (1, n) if left else (n, 1), v.device)  # v as a matrix, for messages
        a, b = (operand, x) if left else (x, operand)
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"matmul: inner dimensions differ, {tuple(a.shape)} @ {tuple(b.shape)} "
                f"({a.shape[-1]} != {b.shape[-2]})"
            )
        _check_same(a, b, "matmul")
    return _layer("execute").times_vector(x, v, left)


class _Operand(NamedTuple):
    """What the checks of :func:`matmul` read of an operand."""

    dtype: torch.dtype
    shape: tuple
    device: torch.device


Expr.__matmul__ = matmul  # the operator is the function itself (one call less per product)


def transpose(x: Expr) -> Expr:
    """Transpose of the last two dims; transposing twice returns the original node."""
    if isinstance(x, Transpose):
        return x.children[0]
    return Transpose._make((), (x,), (*x.shape[:-2], x.shape[-1], x.shape[-2]), x.dtype, x.device)


def _is_addend(v: Any) -> bool:
    """Whether ``v`` can be a term of a lazy sum: an expression, or what wraps as one (a tensor
    of matrix shape ``(..., m, n)``, a ``lazymat.compat`` object)."""
    return (isinstance(v, Expr) or hasattr(v, "__lazymat__")
            or (isinstance(v, torch.Tensor) and v.ndim >= 2))


def term(v: Any, coef: Any) -> Any:
    """``coef * v`` for a term of a lazy sum (the leaf kept: a scaled view); anything else as
    it is, for :func:`add` to refuse by name (or to drop, a zero)."""
    return scale(as_expr(v), coef) if _is_addend(v) else v


def add(a: Any, b: Any) -> Expr:
    """``a + b`` with torch broadcasting over all dims; a zero number added is dropped (as
    ``X + 0``, so that ``sum([X, Y])`` and ``torch.sub(X, 0)`` work)."""
    for v, x in ((a, b), (b, a)):
        if _is_zero(v) and _is_addend(x):
            return _plus_zero(as_expr(x), v)
        if not _is_addend(v):  # one refusal for a scalar, 0-dim or 1-D tensor, numpy scalar, ...
            what = f"a tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            shape = tuple(x.shape) if _is_addend(x) else None
            m, n = shape[-2:] if shape else ("m", "n")
            raise TypeError(
                f"cannot add {what} to a lazy matrix expression{f' of shape {shape}' if shape else ''}: only "
                f"expressions and tensors of matrix shape (..., {m}, {n}) are added (a number c on "
                f"every entry is the rank-one c * ones({m}, 1) @ ones(1, {n}): add that, lazily)"
            )
    a, b = as_expr(a), as_expr(b)
    if a.dtype is not b.dtype:  # dtypes are singletons
        a, b = _promoted(a, b)
    _check_same(a, b, "add")
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"add: matrix dims differ, {tuple(a.shape)} + {tuple(b.shape)} (the last two dims "
            "must match; leading batch dims broadcast)"
        )
    batch = _broadcast_batch(a.shape[:-2], b.shape[:-2], "add", a.shape, b.shape)
    return Add._make((), (a, b), (*batch, *a.shape[-2:]), a.dtype, a.device)


def _as_scalar(c: Any, x: Expr) -> Any:
    """``c`` as a multiplier: a Python int/float/complex (other numbers, e.g. ``Fraction``
    or numpy scalars and 0-dim arrays, converted; a bool is 0 or 1, as torch's ``t * True``) or
    a 0-dim tensor; anything else raises naming it."""
    if not isinstance(c, (torch.Tensor, Number)) and getattr(c, "ndim", None) == 0 and hasattr(c, "item"):
        c = c.item()  # (a numpy 0-dim array or bool_)
    if isinstance(c, bool):
        return int(c)
    if isinstance(c, torch.Tensor):
        if c.ndim != 0:
            raise TypeError(
                f"multiplier must be a scalar (0-dim tensor), got a tensor of shape {tuple(c.shape)} "
                f"for an expression of shape {tuple(x.shape)}"
            )
        return c
    if isinstance(c, (int, float, complex)) and not isinstance(c, bool):
        return c
    if isinstance(c, Number) and not isinstance(c, bool):
        for kind, convert in ((numbers.Integral, int), (numbers.Real, float), (numbers.Complex, complex)):
            if isinstance(c, kind):
                return convert(c)
    raise TypeError(
        f"can only multiply a lazy expression of shape {tuple(x.shape)} by a number or "
        f"a 0-dim tensor, got {type(c).__name__} (use @ for matrix products)"
    )


def scale(x: Expr, coef: Any) -> Expr:
    """``coef * x`` for a number (``int``, ``float``, ``complex``, ``Fraction``, ...) or a
    0-dim tensor ``coef``; a :class:`~lazymat.coefficient.Wide` one (past the float range, as
    the canonical form folds them) as the multiples by in-range numbers whose product it is."""
    if type(coef) is Wide:
        for k in steps(coef, wide=True):
            x = scale(x, k)
        return x
    x = as_expr(x)
    if isinstance(coef, Expr):
        raise TypeError(
            f"'*' between two lazy expressions {tuple(x.shape)} and {tuple(coef.shape)} "
            "(elementwise product) is not supported; use @ for matrix products"
        )
    coef = _as_scalar(coef, x)
    if isinstance(coef, (int, float)) or isinstance(coef, complex) and x.dtype.is_complex:
        dtype = x.dtype  # a Python number of the same or a lower category never promotes
    else:
        dtype = torch.result_type(torch.empty(1, dtype=x.dtype, device="meta"), coef)
    if isinstance(coef, torch.Tensor):
        if coef.device != x.device and coef.device.type != "cpu":
            raise ValueError(f"scalar on {coef.device} times an expression on {x.device}")
        return Scale._make((coef,), (x,), x.shape, dtype, x.device, identity=(("tensor", id(coef)),))
    if coef == 1 and dtype == x.dtype:
        return x
    return Scale._make((coef,), (x,), x.shape, dtype, x.device)


def cast(x: Expr, device: Any = None, dtype: torch.dtype | None = None) -> Expr:
    """Lazy ``x.to(device, dtype)``; a no-op cast returns ``x`` itself."""
    device = x.device if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    dtype = x.dtype if dtype is None else dtype
    _check_matrix_dtype(dtype, "cast target")
    if device == x.device and dtype == x.dtype:
        return x
    if device != x.device and device not in _reachable:
        _check_reachable(x, device)
    return Cast._make((str(device), dtype), (x,), x.shape, dtype, device)


_reachable: set[torch.device] = {torch.device("cpu"), torch.device("meta")}  # devices a tensor was made on


def _check_reachable(x: Expr, device: torch.device) -> None:
    """Raise, as torch's ``t.to(device)`` does at once, when ``x`` holds tensors and ``device``
    cannot hold one (no CUDA on this machine, an index past the devices): the expression would
    fail only when evaluated. An expression of shape-only symbols may name any device (its plans
    and costs are read without one)."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # torch asserts "Torch not compiled with CUDA enabled"
        data = [n for n in postorder(x) if isinstance(n, Leaf) and n.tensor is not None]
        if data:
            raise RuntimeError(
                f"cannot move the {tuple(x.shape)} {_dtype_name(x.dtype)} lazy expression on {x.device} "
                f"to {device}: torch cannot make a tensor there ({str(e).splitlines()[0]}); shape-only "
                f"symbols (lm.symbol(..., device={str(device)!r})) are costed without the device") from None
    else:
        _reachable.add(device)


def cat(parts: Sequence[Any], dim: int = -1) -> Expr:
    """Lazy concatenation along the columns (``dim=-1``) or rows (``dim=-2``); a non-negative
    ``dim`` counts from the front as in ``torch.cat`` (``dim=1`` of 2-D parts is the columns)."""
    parts = tuple(as_expr(p) for p in parts)
    if not parts:
        raise ValueError("lazymat.cat needs at least one part")
    first = parts[0]
    if dim >= 0 and any(p.ndim != first.ndim for p in parts):
        raise ValueError(f"lazymat.cat: dim={dim} counts from the front, which is ambiguous for parts of "
                         f"shapes {[tuple(p.shape) for p in parts]}; pass dim=-1 or dim=-2")
    dim = dim_index(dim, first.shape, "cat") - first.ndim
    if dim not in (-1, -2):
        raise NotImplementedError(f"lazymat.cat joins along the columns (dim=-1) or rows (dim=-2) of shapes "
                                  f"like {tuple(first.shape)}, got dim={dim + first.ndim}, a batch dim")
    keep = -2 if dim == -1 else -1
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in parts))
    if any(p.dtype is not dtype for p in parts):  # as torch.cat promotes (see _promoted)
        parts = tuple(cast(p, dtype=dtype) for p in parts)
        first = parts[0]
    batch = tuple(first.shape[:-2])
    for p in parts[1:]:
        _check_same(first, p, "cat")
        if p.shape[keep] != first.shape[keep]:
            raise ValueError(
                f"cat along dim {dim}: shapes {tuple(first.shape)} and {tuple(p.shape)} differ "
                f"in dim {keep}"
            )
        batch = _broadcast_batch(batch, p.shape[:-2], "cat", first.shape, p.shape)
    if len(parts) == 1:
        return first
    total = sum(p.shape[dim] for p in parts)
    shape = (*batch, first.shape[-2], total) if dim == -1 else (*batch, total, first.shape[-1])
    return Concat._make((dim,), parts, shape, first.dtype, first.device)


def _parse_to_args(args: tuple, kwargs: dict) -> tuple[Any, torch.dtype | None]:
    """``(device, dtype)`` from ``Tensor.to``'s forms: ``to(dtype)``, ``to(device, dtype)``,
    ``to(other)`` (a tensor or an expression), each optionally followed by ``non_blocking`` and
    ``copy`` (positional bools or keywords). Those two are accepted and have nothing to do: the
    cast happens when the expression is evaluated, into new tensors."""
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    kwargs.pop("copy", None)
    memory_format = kwargs.pop("memory_format", torch.preserve_format)
    if kwargs:
        raise TypeError(f"Expr.to() got unexpected arguments {sorted(kwargs)}")
    if memory_format is not torch.preserve_format:
        raise TypeError(f"Expr.to(memory_format={memory_format}): a lazy expression has no memory layout; "
                        "call X.to_dense().to(memory_format=...)")
    flags = 0
    for a in args:
        if isinstance(a, bool):  # non_blocking, then copy (never a device index)
            flags += 1
            if flags > 2:
                raise TypeError(f"Expr.to() got too many bool arguments in {args!r} (non_blocking, copy)")
        elif flags:
            raise TypeError(f"Expr.to(): {a!r} after the bool arguments in {args!r}")
        elif isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, (str, torch.device, int)):
            device = a
        elif isinstance(a, (torch.Tensor, Expr)):
            device, dtype = a.device, a.dtype
        else:
            raise TypeError(f"Expr.to() cannot interpret argument {a!r}")
    return device, dtype


# ---- traversal ------------------------------------------------------------------------------
def postorder(root: Expr) -> list[Expr]:
    """All distinct nodes below ``root`` (inclusive), children before parents; iterative."""
    order: list[Expr] = []
    seen: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node.uid in seen:
            continue
        seen.add(node.uid)
        stack.append((node, True))
        for child in reversed(node.children):
            if child.uid not in seen:
                stack.append((child, False))
    return order


def leaves(root: Expr) -> list[Leaf]:
    """The distinct leaves below ``root``, children first."""
    return [n for n in postorder(root) if isinstance(n, Leaf)]


def to_text(root: Expr, limit: int | None = None) -> str:
    """Readable infix text of an expression (iterative; elided past ``limit`` characters)."""
    text: dict[int, tuple[str, int]] = {}  # uid -> (text, precedence)
    cap = None if limit is None else limit * 4
    for node in postorder(root):
        kids = [text[c.uid] for c in node.children]
        if isinstance(node, Leaf):
            name = node.name or ("sym" if node.is_symbol else "t") + "x".join(map(str, node.shape))
            t = (name, 9)
        elif isinstance(node, Transpose):
            s, p = kids[0]
            t = ((s if p >= 9 else f"({s})") + ".T", 9)
        elif isinstance(node, MatMul):
            (s1, p1), (s2, p2) = kids
            t = (f"{s1 if p1 >= 5 else f'({s1})'} @ {s2 if p2 > 5 else f'({s2})'}", 5)
        elif isinstance(node, Add):
            t = (f"{kids[0][0]} + {kids[1][0]}", 1)
        elif isinstance(node, Scale):
            s, p = kids[0]
            c = node.coef
            c = c.item() if isinstance(c, torch.Tensor) else c
            cs = f"({c:g})" if isinstance(c, complex) else f"{c:g}"  # "(2+1j) * X", not "2+1j * X"
            t = (f"{cs} * {s if p >= 5 else f'({s})'}", 4)
        elif isinstance(node, Index):
            s, p = kids[0]
            t = ((s if p >= 9 else f"({s})") + f"[{_key_text(node.key, tuple(node.children[0].shape))}]", 9)
        elif isinstance(node, Cast):
            t = (f"{kids[0][0] if kids[0][1] >= 9 else f'({kids[0][0]})'}.to({_dtype_name(node.dtype)})", 9)
        elif isinstance(node, Concat):
            t = (f"cat([{', '.join(k[0] for k in kids)}], dim={node.axis})", 9)
        else:  # pragma: no cover - every node type is listed above
            raise TypeError(f"unknown node {type(node).__name__}")
        if cap is not None and len(t[0]) > cap:
            t = (t[0][: cap // 2] + " ... " + t[0][-cap // 2 :], t[1])
        text[node.uid] = t
    out = text[root.uid][0]
    if limit is not None and len(out) > limit:
        out = out[: limit // 2] + " ... " + out[-limit // 2 :]
    return out


def _key_text(key: tuple, shape: tuple) -> str:
    """Text of a normalised ``(batch, row, col)`` index key on a child of ``shape``;
    trailing whole-dim slices are left out, like a user would write it."""
    batch, row, col = key
    parts = []
    dim = 0
    if not isinstance(batch, tuple):  # a Gather of paired batch members (lazymat.indexing)
        parts, dim, batch = [batch.text()], len(shape) - 2, ()
    for k in (*batch, row, col):
        if k is None:
            parts.append("None")
            continue
        if isinstance(k, range):
            if k == range(shape[dim]):
                parts.append(":")
            else:
                step = "" if k.step == 1 else f":{k.step}"
                parts.append(f"{k.start}:{k.stop}{step}")
        elif isinstance(k, tuple):
            parts.append(f"[{', '.join(map(str, k[:4]))}{', ...' if len(k) > 4 else ''}]")
        else:
            parts.append(str(k))
        dim += 1
    while parts and parts[-1] == ":":
        parts.pop()
    return ", ".join(parts) if parts else ":"


def _hashable_key(key: Any, method: str) -> Any:
    """``key`` when it hashes, else a TypeError naming the method and the key's type."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"Expr.{method}: the key must be hashable (a str, a number, a tuple of "
                        f"them), got {type(key).__name__} {key!r:.80}") from None
    return key
