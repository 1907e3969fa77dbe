"""Torch indexing semantics on a lazy ``(..., m, n)`` expression.

A key is normalised dim by dim (ints, slices, index lists, ``...`` and ``None`` as in
torch) into ``(batch_key, row, col)``: slices become ``range`` objects and index lists
tuples of non-negative ints (a range when evenly increasing, :func:`as_range`: a view, not a
copy), so keys are hashable and cheap to compare. Slices and lists
keep the result lazy; an integer on the row or column dim gives a tensor computed through
a one-row (or one-column) product, never the full matrix.

Torch's integer-array indexing pairs several index arrays (lists, integer tensors of any
shape, masks) elementwise (:func:`_layout`). Paired on the batch dims only, they are one
:class:`Gather` batch key (lazy: each factor gathers its own members); paired with the row or
column dim, the result is a matrix stack where the pairs stand for the rows (or columns) and
each member's sit side by side (:func:`_member_lines`: lazy), else a tensor, the entries
:mod:`lazymat.linalg.entries` reads (the distinct entries, member by member where that reads
fewer, and the product terms' row-column pairs as a diagonal, never the square of the pairs).
A new axis anywhere keeps the result lazy where its last two dims are still a matrix of the
expression's (:func:`_matrix_layout`).
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from .expr import Expr, Index, _check_implicit_size, _layer, cat

__all__ = ["Gather", "IndexOutOfRange", "apply_key", "as_range", "batch_shape_after", "compose", "copies",
           "gather_for_factor", "getitem",
           "integer_scalar", "is_whole", "make_index", "normalise", "torch_key"]


class IndexOutOfRange(IndexError, ValueError):
    """An index outside its dimension (an ``IndexError`` and a ``ValueError``)."""


Entry = Any  # int | range | tuple[int, ...] | None


def integer_scalar(value: Any) -> int | None:
    """The Python int of an integer scalar (a Python or numpy int, bools included, or a 0-d
    integer tensor or NumPy array, as torch reads one); None for anything else."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        return int(value)
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not (
        value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool
    ):
        return int(value.item())
    return None


class _Mask(NamedTuple):
    """A 1-D boolean mask: the indices it selects and its length (checked against the dim)."""

    indices: tuple
    length: int


class _Array(NamedTuple):
    """An index list or integer tensor of any shape (torch's advanced index), or one dim of a
    boolean mask (``mask``: the mask's shape and which of its dims this is, checked against the
    indexed dim); ``values`` is an int64 numpy array."""

    values: np.ndarray
    mask: tuple | None = None


def _mask_arrays(mask: np.ndarray) -> list[_Array]:
    """A k-D boolean mask as torch reads it: k index arrays, its ``nonzero()`` columns."""
    if mask.ndim == 0:
        raise TypeError(f"a boolean scalar index ({bool(mask)}) is not supported on a lazy expression")
    found = np.nonzero(mask)
    return [_Array(found[j].astype(np.int64), (tuple(mask.shape), j)) for j in range(mask.ndim)]


def _as_entries(k: Any, shape: tuple) -> list:
    """One item of a key as entries: None, Ellipsis, a slice, an int, or index arrays (a
    k-D boolean mask gives k of them)."""
    if k is None or k is Ellipsis or isinstance(k, slice):
        return [k]
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"boolean scalar index {k!r} is not supported on a lazy expression of shape {shape}")
    if isinstance(k, int):
        return [k]
    if isinstance(k, np.ndarray):  # like torch: numpy index arrays act as index tensors
        if k.dtype.kind not in "biu":
            raise TypeError(f"index arrays must be integer or bool, got numpy {k.dtype} (shape {shape})")
        if k.ndim == 0 and k.dtype.kind in "iu":  # an int, as torch reads it (ascontiguousarray
            return [int(k)]  # would make it 1-D: a list of one, which keeps its dim)
        wide = k.dtype.kind in "iu" and k.dtype != np.uint8  # (torch converts these to long; uint8 is a mask)
        k = torch.from_numpy(np.ascontiguousarray(k).astype(np.int64) if wide else np.ascontiguousarray(k))
    if isinstance(k, torch.Tensor):
        if k.dtype == torch.bool:
            return _mask_arrays(k.cpu().numpy())
        if k.dtype.is_floating_point or k.dtype.is_complex:
            raise TypeError(f"index tensors must be integer or bool, got {k.dtype}")
        if k.dtype not in (torch.int64, torch.int32, torch.uint8):  # (as torch's own check)
            raise IndexError(f"tensors used as indices must be long, int, byte or bool tensors, got a "
                             f"{k.dtype} tensor of shape {tuple(k.shape)} (on an expression of shape "
                             f"{shape})")
        if k.dtype == torch.uint8:  # torch reads it as a mask (deprecated), not as indices
            raise TypeError(
                f"a uint8 index tensor {tuple(k.shape)} on a lazy expression of shape {shape} is "
                "ambiguous: torch reads it as a (deprecated) mask; pass k.bool() for a mask or "
                "k.long() for indices"
            )
        if k.ndim == 0:
            return [int(k)]
        return [_Array(k.cpu().numpy().astype(np.int64))]
    if isinstance(k, (list, tuple, range)):
        return _sequence_entries(k, shape)
    try:
        return [int(k.__index__())]
    except AttributeError:
        raise TypeError(f"unsupported index {k!r} of type {type(k).__name__}") from None


def _sequence_entries(k: Any, shape: tuple) -> list:
    """A (nested) Python sequence as index arrays: ints, or bools (a mask), as torch reads them."""
    items = list(k)
    if items and all(isinstance(i, (bool, np.bool_)) for i in items):
        return _mask_arrays(np.asarray(items, dtype=bool))
    try:
        values = np.asarray(items) if items else np.zeros(0, dtype=np.int64)
    except ValueError:
        values = None
    if values is not None and values.size == 0 and values.dtype.kind == "f":  # [[]]: no entry, no dtype
        values = values.astype(np.int64)
    if values is None or values.dtype.kind not in "biu" or values.dtype.kind == "b" and values.ndim < 2:
        raise TypeError(f"index lists must hold ints, got {k!r}")
    if values.dtype.kind == "b":
        return _mask_arrays(values)
    return [_Array(values.astype(np.int64))]


def _resolve(k: Any, size: int, dim: int, shape: tuple) -> Any:
    """Bound-check one entry against ``size`` and make it non-negative."""
    if isinstance(k, int):
        if not -size <= k < size:
            raise IndexOutOfRange(f"index {k} is out of range for dim {dim} of size {size} (shape {shape})")
        return k % size
    if isinstance(k, _Mask):
        if k.length != size:
            raise IndexError(
                f"the shape of the mask [{k.length}] at index 0 does not match the shape "
                f"of the indexed expression {list(shape)} at index {dim}"
            )
        return k.indices
    if isinstance(k, slice):
        if k.step is not None and k.step <= 0:
            raise ValueError(f"slice step must be positive, got {k.step} (dim {dim} of shape {shape})")
        return range(*k.indices(size))
    bad = [i for i in k if not -size <= i < size]
    if bad:  # checked once the result's shape is known (see _check_lists)
        return _Unchecked(tuple(k), bad[0], size, dim)
    return tuple(i % size for i in k)


class _Unchecked(NamedTuple):
    """An index list with an entry outside its dim, checked once the result's shape is known:
    torch reads (and checks) no entry of an empty result."""

    items: tuple
    bad: int
    size: int
    dim: int


def _length(e: Entry) -> int | None:
    """The length an entry gives its dim of the result (None: the dim is dropped)."""
    if isinstance(e, int):
        return None
    if e is None:
        return 1
    return len(e.items) if isinstance(e, _Unchecked) else len(e)


def _check_lists(entries: list, shape: tuple) -> list:
    """Bound-check an index list as torch does: it is read (and checked) unless the result is
    empty, and on a dim of size 0 unless the list itself is empty. An unread list becomes a valid
    key of the same length: no entry is read."""
    lengths = [_length(e) for e in entries]
    for e, n in zip(entries, lengths, strict=True):
        if isinstance(e, _Unchecked) and (e.size == 0 and n or 0 not in lengths):
            raise IndexOutOfRange(f"index {e.bad} is out of range for dim {e.dim} of size {e.size} "
                                  f"(shape {shape})")
    return [(0,) * len(e.items) if isinstance(e, _Unchecked) else e for e in entries]


def _expanded(shape: tuple, key: Any) -> list:
    """The key's entries with the ellipsis spelt out as whole-dim slices (and slices added for
    the dims it leaves out); masks split into one index array per dim."""
    key = key if isinstance(key, tuple) else (key,)
    entries = [e for k in key for e in _as_entries(k, shape)]
    if sum(e is Ellipsis for e in entries) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    consumed = sum(e is not None and e is not Ellipsis for e in entries)
    if consumed > len(shape):
        raise IndexOutOfRange(f"too many indices ({consumed}) for an expression of shape {shape}")
    if Ellipsis in entries:
        i = entries.index(Ellipsis)
        entries[i : i + 1] = [slice(None)] * (len(shape) - consumed)
    else:
        entries += [slice(None)] * (len(shape) - consumed)
    return entries


class _Layout(NamedTuple):
    """A key with paired index arrays, as torch lays out its result: ``shape``, and for each
    dim of the indexed expression the index it reads at each result position, as an array
    with one dim per result dim (size 1 where it does not vary; an int drops its dim)."""

    shape: tuple
    arrays: list


def _layout(entries: list, shape: tuple, empty: bool = False, named: tuple | None = None) -> _Layout:
    """Torch's advanced indexing: the index arrays are broadcast together (to ``S``) and
    paired elementwise; ints drop their dims first; ``S`` takes the place of the arrays when
    they sit side by side (ints aside), else goes first. Bound-checked as torch: an entry is
    read unless the result is empty (and on a dim of size 0 unless the arrays are); ``empty``
    says the result is empty for dims past ``shape``, and errors name the shape ``named``
    (``shape`` and the dims past it)."""
    full, shape = shape if named is None else named, tuple(shape)
    arrays = [e for e in entries if isinstance(e, _Array)]
    try:
        pair = tuple(np.broadcast_shapes(*(a.values.shape for a in arrays)))
    except ValueError:
        shapes = ", ".join(str(list(a.values.shape)) for a in arrays)
        raise IndexError(f"shape mismatch: indexing lists or tensors of shapes {shapes} cannot be broadcast "
                         f"together (on an expression of shape {full})") from None
    resolved, dim = [], 0
    for e in entries:
        if e is not None and not isinstance(e, _Array):
            e = _resolve(e, shape[dim], dim, full)
        resolved.append(e)
        dim += e is not None
    kept = [e for e in resolved if not isinstance(e, int)]  # torch selects the ints first
    at = [i for i, e in enumerate(kept) if isinstance(e, _Array)]
    first = at[0] if at == list(range(at[0], at[-1] + 1)) else 0
    dims: list = []  # per result dim: the entry that makes it ("pair": the paired block)
    for i, e in enumerate(kept):
        if i == first:
            dims.append("pair")
        if not isinstance(e, _Array):
            dims.append(e)
    block = dims.index("pair")
    rank = len(dims) - 1 + len(pair)
    where = {}  # a range's position in ``resolved`` -> its result dim
    out_shape: list = []
    ranges = iter(i for i, e in enumerate(resolved) if isinstance(e, range))
    for e in dims:
        if isinstance(e, range):
            where[next(ranges)] = len(out_shape)
        out_shape.extend(pair if isinstance(e, str) else [1] if e is None else [len(e)])
    empty = empty or 0 in out_shape
    out: list = []
    dim = 0
    for i, e in enumerate(resolved):
        if e is None:
            continue
        size = shape[dim]
        if isinstance(e, int):
            out.append(np.full((1,) * rank, e, dtype=np.int64))
        elif isinstance(e, range):
            out.append(np.arange(e.start, e.stop, e.step, dtype=np.int64).reshape(
                [len(e) if d == where[i] else 1 for d in range(rank)]))
        else:
            v = e.values
            if e.mask is not None and e.mask[0][e.mask[1]] != size:
                raise IndexError(f"the shape of the mask {list(e.mask[0])} at index {e.mask[1]} does not "
                                 f"match the shape of the indexed expression {list(full)} at index {dim}")
            bad = v[(v < -size) | (v >= size)]
            if bad.size and (not empty or size == 0 and math.prod(pair)):
                raise IndexOutOfRange(f"index {int(bad.flat[0])} is out of range for dim {dim} of size "
                                      f"{size} (shape {full})")
            v = np.zeros_like(v) if bad.size else v % max(size, 1)
            v = v.reshape((1,) * (len(pair) - v.ndim) + v.shape)
            out.append(v.reshape((1,) * block + v.shape + (1,) * (rank - block - len(pair))))
        dim += 1
    return _Layout(tuple(out_shape), out)


def _outer(entries: list, shape: tuple) -> tuple[tuple, Entry, Entry]:
    """``(batch, row, col)`` of a key whose lists each index their own dim (at most one list, or
    none) and whose new axes all precede the row dim: every entry resolved and bound-checked."""
    resolved: list = []
    dim = 0
    for e in entries:
        if e is None:
            resolved.append(None)
            continue
        resolved.append(_resolve(e, shape[dim], dim, shape))
        dim += 1
    resolved = _check_lists(resolved, shape)
    col = resolved.pop()
    row = resolved.pop()
    return tuple(resolved), row, col


def _split_tail(entries: list) -> tuple[list, list, tuple]:
    """``entries`` as ``(head, matrix, tail)``: ``matrix`` the row and column entries, ``head``
    what comes before the new axes just before the row entry (the batch key), and ``tail`` the
    result dims the rest makes, in torch's order: ``"new"`` (a new axis), ``"row"``, ``"col"``
    (an int makes none)."""
    at = [i for i, e in enumerate(entries) if e is not None][-2]
    start = at
    while start and entries[start - 1] is None:
        start -= 1
    tail, matrix = [], []
    for e in entries[start:]:
        if e is not None:
            matrix.append(e)
        if e is None or not isinstance(e, int):
            tail.append("new" if e is None else ("row", "col")[len(matrix) - 1])
    return entries[:start], matrix, tuple(tail)


def _lone_list(entries: list) -> list:
    """``entries`` with a lone 1-D index array (the one torch reads as an outer index, in its
    place) as a tuple (a 1-D mask as a :class:`_Mask`); other keys as they are."""
    arrays = [e for e in entries if isinstance(e, _Array)]
    if len(arrays) != 1 or arrays[0].values.ndim != 1 or arrays[0].mask and len(arrays[0].mask[0]) != 1:
        return entries
    a = arrays[0]
    items = tuple(a.values.tolist())
    lone = _Mask(items, a.mask[0][0]) if a.mask else items
    return [lone if e is a else e for e in entries]


def _analyse(shape: tuple, key: Any) -> tuple:
    """``("lazy", batch, row, col, tail)`` for a key whose rows and columns are slices, ints or
    lists of their own (index arrays paired on the batch dims only are a :class:`Gather`), with
    ``tail`` the result dims from the row dim on (:func:`_split_tail`); or ``("paired",
    entries)`` when an index array on the row or column dim is paired with another (or is not
    1-D): a tensor."""
    entries = _lone_list(_expanded(shape, key))
    head, matrix, tail = _split_tail(entries)
    if not any(isinstance(e, _Array) for e in entries):
        return ("lazy", *_outer([*head, *matrix], shape), tail)
    if any(isinstance(e, _Array) for e in matrix):
        return ("paired", entries)
    # index arrays on batch dims only: the rows and columns stay slices (or ints)
    row, col = (_resolve(e, shape[d], d, shape) for d, e in enumerate(matrix, len(shape) - 2))
    lay = _layout(head, shape[:-2], any(not isinstance(e, int) and len(e) == 0 for e in (row, col)), shape)
    return ("lazy", _simplified(_gather(lay.shape, lay.arrays)), row, col, tail)


def normalise(shape: tuple, key: Any) -> tuple[tuple | Gather, Entry, Entry]:
    """Split ``key`` into ``(batch, row, col)`` with every entry resolved: a :class:`Gather` for
    the batch when index arrays are paired on the batch dims. A key that pairs an index on the
    row or column dim with another has no lazy result: a TypeError here (``getitem`` answers it
    with a tensor)."""
    found = _analyse(shape, key)
    if found[0] == "paired":
        raise TypeError(f"the key {key!r} pairs an index list on the row or column dim of shape {shape} "
                        "with another: its result is a tensor, not a lazy matrix")
    _, batch, row, col, tail = found
    news = next((i for i, t in enumerate(tail) if t != "new"), len(tail))  # those before the row entry
    if "new" in tail[news:]:
        raise NotImplementedError(
            f"the key {key!r} puts a new axis (None) after the row index of shape {shape}: its result "
            "is no (batch, row, column) key of the expression")
    return _with_new_axes(batch, news), row, col


def _with_new_axes(batch: tuple | Gather, count: int) -> tuple | Gather:
    """The batch key ``batch`` with ``count`` new axes after its dims."""
    if not count:
        return batch
    if isinstance(batch, Gather):
        ones = (1,) * count
        return Gather((*batch.shape, *ones), tuple(((*dims, *ones), flat) for dims, flat in batch.arrays))
    return (*batch, *(None,) * count)


def _matrix_layout(tail: tuple, row: Entry, col: Entry) -> tuple[int, bool] | None:
    """Where the result dims ``tail`` (:func:`_split_tail`) are a matrix of ``x[..., row, col]``
    (an int's dim of size 1 standing for a new axis): ``(new batch axes, transposed)``; None
    where they are not (a matrix dim left among the others, or fewer than two dims)."""
    if len(tail) < 2 or any(t != "new" for t in tail[:-2]):
        return None
    last = list(tail[-2:])
    for name, entry in (("row", row), ("col", col)):
        if isinstance(entry, int) and name not in last:
            last[last.index("new")] = name  # (a new axis of size 1 takes the int's dim)
    if sorted(last) != ["col", "row"]:
        return None
    return len(tail) - 2, last == ["col", "row"]


@dataclass(frozen=True)
class Gather:
    """A batch key that pairs index arrays (torch's advanced indexing on the batch dims): the
    result's batch member ``b`` (of ``shape``) is the input's member ``(a_0[b], ..., a_k[b])``,
    one array per input batch dim with one dim per result batch dim (size 1 where it does not
    vary), broadcast to ``shape`` (a result dim no array varies along is an expand: a view).
    Stored as ``(array shape, entries)`` pairs so that keys hash; not a tuple, so that no code
    reading a key entry by entry can take it for one."""

    shape: tuple
    arrays: tuple

    def array(self, k: int) -> np.ndarray:
        dims, flat = self.arrays[k]
        return np.asarray(flat, dtype=np.int64).reshape(dims)

    @property
    def expands(self) -> bool:
        """Whether every array is one entry: one member of each dim, broadcast (a view)."""
        return all(math.prod(dims) == 1 for dims, _ in self.arrays)

    def text(self) -> str:
        """The key as a user could type it: each dim's index array (entries of the paired
        members), ``...`` past four."""
        parts = []
        for k in range(len(self.arrays)):
            a = np.broadcast_to(self.array(k), self.shape).reshape(-1)
            parts.append(f"[{', '.join(map(str, a[:4].tolist()))}{', ...' if a.size > 4 else ''}]")
        return ", ".join(parts) if parts else f"<expand to {list(self.shape)}>"


def _squeezed(a: np.ndarray) -> np.ndarray:
    """``a`` with each dim it does not vary along cut to size 1."""
    for j in range(a.ndim):
        if a.shape[j] > 1 and (a == a.take([0], axis=j)).all():
            a = a.take([0], axis=j)
    return a


def _gather(shape: tuple, arrays: list) -> Gather:
    kept = [_squeezed(np.asarray(a, dtype=np.int64)) for a in arrays]
    return Gather(tuple(shape), tuple((tuple(a.shape), tuple(a.reshape(-1).tolist())) for a in kept))


def _simplified(g: Gather) -> tuple | Gather:
    """``g`` as an outer key (ints, slices, lists, new axes) where one says the same, as
    :func:`as_range` makes a list a range: each array varying along at most one result dim, a
    different one each and in order, and no result dim larger than 1 left to an expand."""
    owner: dict[int, int] = {}
    for k, (dims, _) in enumerate(g.arrays):
        varying = [j for j, n in enumerate(dims) if n != 1]
        if len(varying) > 1 or varying and varying[0] in owner:
            return g
        if varying:
            owner[varying[0]] = k
    order = [owner[j] for j in sorted(owner)]
    if order != sorted(order) or any(
            n != 1 and j not in owner for j, n in enumerate(g.shape)):
        return g
    out: list = []
    k = 0
    for j in range(len(g.shape)):
        if j not in owner:
            out.append(None)
            continue
        out.extend(int(g.array(i).reshape(-1)[0]) for i in range(k, owner[j]))
        out.append(as_range(tuple(g.array(owner[j]).reshape(-1).tolist())))
        k = owner[j] + 1
    out.extend(int(g.array(i).reshape(-1)[0]) for i in range(k, len(g.arrays)))
    return tuple(out)


def gather_for_factor(key: Gather, fbatch: tuple, full: tuple) -> tuple | Gather:
    """``key`` (over the batch ``full``) as it applies to a factor of batch ``fbatch``, the
    trailing dims of ``full``: the arrays of the dims it has (0 on a dim it broadcasts along),
    its result as wide as they vary and as the key's expands (the product broadcasts it to the
    rest); a factor that lacks leading dims of ``full`` lacks the leading dims of one too."""
    first = len(full) - len(fbatch)
    zero = np.zeros((1,) * len(key.shape), dtype=np.int64)
    arrays = [key.array(k) if fbatch[k - first] == full[k] else zero for k in range(first, len(full))]
    varies = [any(dims[j] != 1 for dims, _ in key.arrays) for j in range(len(key.shape))]
    wide = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else (1,) * len(key.shape)
    shape = [w if v else n for n, v, w in zip(key.shape, varies, wide, strict=True)]
    lead = next((j for j, n in enumerate(shape) if n != 1), len(shape)) if first else 0
    return _simplified(_gather(tuple(shape[lead:]), [a.reshape(a.shape[lead:]) for a in arrays]))


def _as_arrays(batch: tuple | Gather) -> tuple[tuple, list]:
    """A batch key's result shape and, per input batch dim, the member each result position
    reads (an array with one dim per result dim, as :class:`Gather` keeps them)."""
    if isinstance(batch, Gather):
        return batch.shape, [batch.array(k) for k in range(len(batch.arrays))]
    shape = tuple(1 if e is None else len(e) for e in batch if not isinstance(e, int))
    out, j = [], 0
    for e in batch:
        if isinstance(e, int):
            out.append(np.full((1,) * len(shape), e, dtype=np.int64))
            continue
        if e is not None:
            along = [-1 if d == j else 1 for d in range(len(shape))]
            out.append(np.asarray(list(e), dtype=np.int64).reshape(along))
        j += 1
    return shape, out


def _composed_batch(b1: tuple | Gather, b2: tuple | Gather) -> tuple | Gather:
    """The batch key doing what ``b1`` then ``b2`` do, as a :class:`Gather` (simplified)."""
    s1, a1 = _as_arrays(b1)
    s2, a2 = _as_arrays(b2)
    picks = tuple(a2)
    out = [np.broadcast_to(a, s1)[picks] if picks else a.reshape((1,) * len(s2)) for a in a1]
    return _simplified(_gather(s2, out))


def batch_shape_after(batch_shape: tuple, batch_key: tuple | Gather) -> tuple:
    if isinstance(batch_key, Gather):
        return batch_key.shape
    out: list[int] = []
    for e in batch_key:
        if e is None:
            out.append(1)
        elif isinstance(e, (range, tuple)):
            out.append(len(e))
    return tuple(out)


def getitem(x: Expr, key: Any) -> Any:
    """``x[key]``: lazy where the result is a stack of matrices of ``x``'s (slices, lists, and a
    new axis standing for a dim an int drops: ``x[0, None]`` is ``x[0:1]``, ``x[..., 2, :, None]``
    is ``x[..., 2:3, :].mT``); else a tensor, as small as torch's result: an int on the row or
    column dim (one row or column computed), a new axis among the matrix dims (the slice
    computed, within ``implicit_dense_limit``), or an index list on the row or column dim
    paired with another (:func:`_paired`)."""
    shape = tuple(x.shape)
    found = _analyse(shape, key)
    if found[0] == "paired":
        return _paired(x, found[1])
    _, batch, row, col, tail = found
    one = {name: range(e, e + 1) if isinstance(e, int) else e for name, e in (("row", row), ("col", col))}
    placed = _matrix_layout(tail, row, col)
    if placed is not None:
        node = make_index(x, _with_new_axes(batch, placed[0]), one["row"], one["col"])
        return node.mT if placed[1] else node
    node = make_index(x, batch, one["row"], one["col"])
    if "new" in tail and "row" in tail and "col" in tail:  # the rows (or columns) a batch dim
        _check_implicit_size(node, f"the key {key!r} on a lazy expression of shape {shape}, whose new axis "
                             f"at result dim {len(node.shape) - 2 + tail.index('new')} leaves the "
                             "matrix dims,")
    value = node.to_dense()
    sizes = {"new": 1, "row": value.shape[-2], "col": value.shape[-1]}
    return value.reshape((*value.shape[:-2], *(sizes[t] for t in tail)))


def _paired(x: Expr, entries: list) -> Any:
    """``x[key]`` for a key that pairs an index array on the row or column dim with others (or
    gives it more than one dim): lazy where the result is a matrix stack whose rows (or columns)
    each read one batch member (:func:`_member_lines`), else a tensor, the entries
    :func:`lazymat.linalg.entries.picked` reads (linalg's layer: imported on use, as ``Expr``'s
    methods import theirs)."""
    lay = _layout(entries, tuple(x.shape))
    if 0 in lay.shape:
        return torch.zeros(lay.shape, dtype=x.dtype, device=x.device)
    lines = _outer_lines(x, entries, lay)
    if lines is None:
        lines = _member_lines(x, entries, lay)
    if lines is not None:
        return lines
    value = _layer("linalg.entries").picked(x, lay.arrays)
    return value if tuple(value.shape) == lay.shape else value.expand(lay.shape).clone()


def _outer_lines(x: Expr, entries: list, lay: _Layout) -> Expr | None:
    """``x[key]`` as one lazy index where the key's row list varies along the result's row dim
    alone and its batch lists along the batch dims alone (``x[[[0], [1]], [1, 2, 3]]``: members
    0 and 1, each rows 1, 2, 3): the batch a :class:`Gather`, the rows a list, the columns the
    slice. The same for a column list (``x[[[0], [1]], :, [1, 2, 3]]``, the pairs first: the
    transpose of the index) when every batch dim is paired or an int. None for other keys."""
    rank = len(lay.shape)
    kinds = ["int" if isinstance(e, int) else "array" if isinstance(e, _Array) else "slice"
             for e in entries if e is not None]
    if None in entries or rank < 2 or len(kinds) < 2:
        return None
    kept = [k for k in kinds if k != "int"]
    if kinds[-2:] == ["array", "slice"] and "slice" not in kept[kept.index("array"):-1]:
        line, other = len(kinds) - 2, len(kinds) - 1
    elif kinds[-2:] == ["slice", "array"] and "slice" not in kinds[:-2]:
        line, other = len(kinds) - 1, len(kinds) - 2
    else:
        return None
    along = lay.arrays[line]
    if any(n != 1 for j, n in enumerate(along.shape) if j != rank - 2) or any(
            a.shape[-2:] != (1, 1) for a in lay.arrays[:-2]):
        return None  # (the lines vary along another dim, or a batch list along theirs)
    batch = _simplified(_gather(lay.shape[:-2], [a.reshape(a.shape[:-2]) for a in lay.arrays[:-2]]))
    own = tuple(np.broadcast_to(along.reshape(-1), lay.shape[-2]).tolist())
    span = tuple(lay.arrays[other].reshape(-1).tolist())
    if line == len(kinds) - 2:
        return make_index(x, batch, own, span)
    return make_index(x, batch, span, own).mT


def _member_lines(x: Expr, entries: list, lay: _Layout) -> Any:
    """``x[key]`` where the key pairs batch indices with the rows, its 1-D pairs in the rows'
    place and a slice on the columns (``x[b, rows]``, ``x[:, b, rows, 2:5]``, a mask over a
    batch dim and the rows): a matrix stack whose row ``p`` is row ``rows[p]`` of member
    ``b[p]``. Where each member's pairs sit side by side (a mask's, sorted members), lazy: a
    ``cat`` of one part per member, ``x[b, its rows]`` (only its own rows computed). Else a
    tensor: each member's distinct rows formed once (one part each, joined) and put in the key's
    order. The same for the columns (``x[b, :, cols]``, the pairs first: the transpose of the
    joined columns) when every batch dim is paired or an int. None for other keys."""
    nd, rank = x.ndim, len(lay.shape)
    kinds = ["int" if isinstance(e, int) else "array" if isinstance(e, _Array) else "slice"
             for e in entries if e is not None]
    if None in entries or rank != kinds[:-2].count("slice") + 2 or "array" not in kinds[:-2]:
        return None  # (the pairs are 1-D, or the result is no matrix stack)
    kept = [k for k in kinds if k != "int"]  # (torch places the pairs where the arrays are side by side)
    if kinds[-2:] == ["array", "slice"] and "slice" not in kept[kept.index("array"):-1]:
        axis, other = -2, nd - 1
    elif kinds[-2:] == ["slice", "array"] and rank == 2:
        axis, other = -1, nd - 2
    else:
        return None
    pairs_at = rank - 2 if axis == -2 else 0  # the result dim of the pairs
    for d, kind in enumerate(kinds):
        varying = {j for j, n in enumerate(lay.arrays[d].shape) if n > 1}
        if kind == "array" and not varying <= {pairs_at}:
            return None
    count = lay.shape[pairs_at]
    picks = np.stack([np.broadcast_to(lay.arrays[d].reshape(-1), count)
                      for d, k in enumerate(kinds) if k == "array"])  # members, then the line
    span = as_range(tuple(lay.arrays[other].reshape(-1).tolist()))

    def part(members: list, own: np.ndarray) -> Expr:
        given = iter(members)
        batch = tuple(next(given) if k == "array" else int(lay.arrays[d].flat[0]) if k == "int" else
                      as_range(tuple(lay.arrays[d].reshape(-1).tolist())) for d, k in enumerate(kinds[:-2]))
        own = tuple(own.tolist())
        return make_index(x, batch, *((own, span) if axis == -2 else (span, own)))

    starts = np.flatnonzero(np.r_[True, (picks[:-1, 1:] != picks[:-1, :-1]).any(0)])
    if len(starts) == len(np.unique(picks[:-1], axis=1).T):  # each member's lines side by side
        ends = [*starts[1:].tolist(), count]
        parts = [part(picks[:-1, i].tolist(), picks[-1, i:j])
                 for i, j in zip(starts.tolist(), ends, strict=True)]
        joined = parts[0] if len(parts) == 1 else cat(parts, dim=axis)
        return joined if axis == -2 else joined.mT
    # an index list across the parts of a cat would be pushed into them, a part per run of one
    # member: the members' distinct lines are formed (one part each) and put in order here
    found, at = np.unique(picks, axis=1, return_inverse=True)
    parts = [part(members, found[-1][(found[:-1] == np.array(members)[:, None]).all(0)])
             for members in np.unique(found[:-1], axis=1).T.tolist()]
    value = (parts[0] if len(parts) == 1 else cat(parts, dim=axis)).to_dense()
    value = value.index_select(axis, torch.from_numpy(at.reshape(-1)).to(value.device))
    return value if axis == -2 else value.mT


def as_range(entry: Entry) -> Entry:
    """``entry`` as a range when it is a list of evenly increasing indices (one index, or none,
    included): ``[3]`` is ``3:4``, ``[2, 4, 6]`` is ``2:7:2``. Within one normalised key every
    list indexes its own dim (an outer index, :func:`torch_key`), so the two read the same values
    into the same shape, but a range is a view of the tensor where a list is a copy. Other
    entries (ints, ranges, None, lists that repeat or go back) are returned as they are."""
    if not isinstance(entry, tuple):
        return entry
    if not entry:
        return range(0)
    step = entry[1] - entry[0] if len(entry) > 1 else 1
    if step > 0 and all(b - a == step for a, b in itertools.pairwise(entry)):
        return range(entry[0], entry[-1] + 1, step)
    return entry


def _pick(e: Entry, e2: Entry) -> Entry:
    """The entry ``e2`` picks out of the dim the (range or list) entry ``e`` made: an int an
    element, a range of a range a range, anything else a list (a range when evenly increasing)."""
    picked = [e2] if isinstance(e2, int) else e2 if isinstance(e2, tuple) else ()
    bad = [i for i in picked if not -len(e) <= i < len(e)]
    if bad:  # (reached on an empty first result, whose own entries torch does not bound-check)
        raise IndexOutOfRange(f"index {bad[0]} is out of range for a dim of size {len(e)} "
                              "(an index of an index)")
    if isinstance(e2, int):
        return e[e2]
    if isinstance(e, range) and isinstance(e2, range):
        return e[e2.start : e2.stop : e2.step]
    return as_range(tuple(e[i] for i in e2))


def compose(first: tuple, second: tuple) -> tuple:
    """One normalised key ``(batch, row, col)`` doing what ``first`` then ``second`` do: an
    outer key where one can, else a :class:`Gather` of the batch (``second`` repeats a new axis
    of ``first``, or either pairs index arrays).

    Indexing twice gathers the whole first result (``x[:, [0] * 32][31, 31]`` copies every head
    where ``x[31, 0]`` reads one): composed, only what the second key keeps is read."""
    (b1, r1, c1), (b2, r2, c2) = first, second
    row, col = _pick(r1, r2), _pick(c1, c2)
    batch = None if isinstance(b1, Gather) or isinstance(b2, Gather) else _composed_outer(b1, b2)
    return (_composed_batch(b1, b2) if batch is None else batch), row, col


def _composed_outer(b1: tuple, b2: tuple) -> tuple | None:
    """The outer batch key doing what ``b1`` then ``b2`` do; None where ``b2`` repeats or
    empties a new axis of ``b1``."""
    out: list = []
    rest = iter(b2)
    for e in b1:
        if isinstance(e, int):  # a dropped dim: the second key never sees it
            out.append(e)
            continue
        e2 = next(rest, range(0, 1) if e is None else range(len(e)))
        while e2 is None:  # the second key's new axes come before the dim they precede
            out.append(None)
            e2 = next(rest, range(0, 1) if e is None else range(len(e)))
        if e is None:  # a new axis of size 1: an int drops it, a one-entry range or list keeps it
            if isinstance(e2, int):
                continue
            if len(e2) != 1:
                return None
            out.append(None)
            continue
        out.append(_pick(e, e2))
    out.extend(as_range(e) for e in rest)  # the first key's trailing full dims: the second key's entries
    return tuple(out)


def make_index(x: Expr, batch: tuple | Gather, row: Entry, col: Entry) -> Expr:
    """``x[batch, row, col]`` as a node; an index of an index is one node (:func:`compose`), and
    a list that a range can stand for is that range (:func:`as_range`: a view, not a copy)."""
    if not isinstance(batch, Gather):
        batch = tuple(as_range(e) for e in batch)
    row, col = as_range(row), as_range(col)
    if x.op == "index":
        return make_index(x.children[0], *compose(x.key, (batch, row, col)))
    if is_whole(batch, tuple(x.shape[:-2])) and (row, col) == (range(x.shape[-2]), range(x.shape[-1])):
        return x
    shape = (*batch_shape_after(tuple(x.shape[:-2]), batch), len(row), len(col))
    return Index._make(((batch, row, col),), (x,), shape, x.dtype, x.device)


def is_whole(batch: tuple | Gather, batch_shape: tuple) -> bool:
    """Whether the batch key keeps every member in place (no dim dropped, added or reordered)."""
    return not isinstance(batch, Gather) and len(batch) == len(batch_shape) and all(
        isinstance(e, range) and len(e) == n for e, n in zip(batch, batch_shape, strict=True))


def copies(batch: tuple | Gather, row: Entry, col: Entry) -> bool:
    """Whether applying the key copies (an index list, or a gather that is not an expand)
    rather than making a view."""
    if isinstance(batch, Gather):
        return not batch.expands or isinstance(row, tuple) or isinstance(col, tuple)
    return any(isinstance(e, tuple) for e in (*batch, row, col))


def apply_key(t: torch.Tensor, batch: tuple | Gather, row: Entry, col: Entry) -> torch.Tensor:
    """``t`` indexed by a normalised key: a view where the key makes one (slices, ints, a
    gather that only expands), else one gather of torch's."""
    if t.layout != torch.strided:  # (torch's sparse layouts have no strided views: as_strided fails deep)
        raise NotImplementedError(
            f"an index of a {str(t.layout).replace('torch.', '')} leaf of shape {tuple(t.shape)}: lazymat "
            "indexes strided tensors only; index the tensor before wrapping it, or wrap its .to_dense()")
    if isinstance(batch, Gather) and batch.expands:
        one = t[tuple(int(batch.array(k).reshape(-1)[0]) for k in range(len(batch.arrays)))]
        one = one.reshape((1,) * len(batch.shape) + tuple(one.shape)).expand(*batch.shape, -1, -1)
        return one[torch_key(tuple(range(n) for n in batch.shape), row, col, t.device)]
    return t[torch_key(batch, row, col, t.device)]


def torch_key(batch: tuple | Gather, row: Entry, col: Entry, device: torch.device) -> tuple:
    """The key to apply a normalised index to a tensor. Each list indexes its own dim (an
    outer, not a paired, index): with two or more lists (a composed key, :func:`compose`), or a
    :class:`Gather`, every entry becomes an index tensor shaped to broadcast along its result
    dim (one torch gather; new axes as dims no tensor varies along)."""
    if isinstance(batch, Gather) or sum(isinstance(e, tuple) for e in (*batch, row, col)) > 1:
        shape, arrays = _as_arrays(batch)
        if isinstance(batch, Gather) and arrays:  # the expand of dims no array varies along
            arrays[0] = np.broadcast_to(arrays[0], shape)
        rank = len(shape)
        lists = [a.reshape(a.shape + (1, 1)) for a in arrays]
        lists.append(np.asarray(list(row), dtype=np.int64).reshape((1,) * rank + (-1, 1)))
        lists.append(np.asarray(list(col), dtype=np.int64).reshape((1,) * rank + (1, -1)))
        return tuple(torch.as_tensor(np.array(a), dtype=torch.long, device=device) for a in lists)

    def conv(e: Entry) -> Any:
        if isinstance(e, range):
            return slice(e.start, e.stop, e.step)
        if isinstance(e, tuple):  # (through numpy: 4x faster than torch.tensor of a tuple)
            return torch.from_numpy(np.fromiter(e, np.int64, len(e))).to(device)
        return e

    return (*(conv(e) for e in batch), conv(row), conv(col))


def expanded_dims(g: Gather) -> list[int]:
    """The result dims of ``g`` wider than 1 that no array varies along: there its members are
    one member expanded (a view in torch, but every product over it runs once per member)."""
    return [j for j, n in enumerate(g.shape) if n != 1 and all(dims[j] == 1 for dims, _ in g.arrays)]


def narrowed(g: Gather, dims: set[int]) -> tuple | Gather:
    """``g`` with its expand along ``dims`` (some of :func:`expanded_dims`) cut to size 1: the
    key a product's factor takes when another factor carries those dims, which broadcasting
    then expands (each distinct member gathered and multiplied once)."""
    shape = tuple(1 if j in dims else n for j, n in enumerate(g.shape))
    return _simplified(_gather(shape, [g.array(k) for k in range(len(g.arrays))]))


def _members_read(batch: tuple | Gather) -> tuple[tuple, np.ndarray]:
    """The key's result batch shape, and the input member each result position reads: one
    row per position, one column per input batch dim."""
    shape, arrays = _as_arrays(batch)
    columns = [np.broadcast_to(a, shape).reshape(-1) for a in arrays]
    return shape, np.stack(columns, axis=1) if columns else np.zeros((math.prod(shape), 0), np.int64)


def member_counts(batch: tuple | Gather) -> tuple[int, int]:
    """``(distinct, total)``: how many batch members the key reads, and how many positions."""
    _, read = _members_read(batch)
    return len(np.unique(read, axis=0)), len(read)


def distinct_members(batch: tuple | Gather) -> tuple[tuple | Gather, tuple | Gather] | None:
    """``(members, spread)`` when the batch key reads some member more than once (a list of
    pairs, an expand): ``members`` reads each distinct member once, along one batch dim, and
    ``spread`` reads the key's batch back from those (``x[key] == x[members][spread]``), so
    work per member (a QR) runs once per distinct member. None when every member is distinct."""
    shape, read = _members_read(batch)
    if read.shape[1] == 0:
        return None
    unique, inverse = np.unique(read, axis=0, return_inverse=True)
    if len(unique) == len(read):
        return None
    members = _simplified(_gather((len(unique),), [unique[:, k] for k in range(unique.shape[1])]))
    return members, _simplified(_gather(shape, [inverse.reshape(shape)]))


def composed_keys(keys: list) -> tuple | Gather:
    """The batch key doing what ``keys`` do in turn (the batch keys of a view's index ops)."""
    out = keys[0]
    for key in keys[1:]:
        out = _composed_batch(out, key)
    return out


def member_numbers(batch_shape: tuple, keys: list) -> np.ndarray:
    """The row-major number (in ``batch_shape``) of the member each position of the batch
    that ``keys`` (batch keys applied in turn) select reads, in order; every member in order
    where there is no key."""
    if not keys:
        return np.arange(math.prod(batch_shape))
    _, read = _members_read(composed_keys(keys))
    if read.shape[1] == 0:
        return np.zeros(len(read), dtype=np.int64)
    return np.ravel_multi_index(tuple(read.T), batch_shape)
