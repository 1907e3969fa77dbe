"""Torch indexing semantics on a lazy ``(..., m, n)`` expression.

A key is normalised dim by dim (ints, slices, index lists, ``...`` and ``None`` as in
torch) into ``(batch_key, row, col)``: slices become ``range`` objects and index lists
tuples of non-negative ints (a range when evenly increasing, :func:`as_range`: a view, not a
copy), so keys are hashable and cheap to compare. Slices and lists
keep the result lazy; an integer on the row or column dim gives a tensor computed through
a one-row (or one-column) product, never the full matrix.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Any, NamedTuple

import numpy as np
import torch

from .expr import Expr, Index

__all__ = ["IndexOutOfRange", "as_range", "batch_shape_after", "compose", "getitem", "integer_scalar",
           "make_index", "normalise", "torch_key"]


class IndexOutOfRange(IndexError, ValueError):
    """An index outside its dimension (an ``IndexError`` and a ``ValueError``)."""


Entry = Any  # int | range | tuple[int, ...] | None


def integer_scalar(value: Any) -> int | None:
    """The Python int of an integer scalar (a Python or numpy int, bools included, or a 0-d
    integer tensor); None for anything else."""
    if isinstance(value, numbers.Integral):
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


def _as_entry(k: Any, shape: tuple) -> Any:
    if k is None or k is Ellipsis or isinstance(k, slice):
        return k
    if isinstance(k, (bool, np.bool_)):
        raise TypeError(f"boolean scalar index {k!r} is not supported on a lazy expression of shape {shape}")
    if isinstance(k, int):
        return k
    if isinstance(k, np.ndarray):  # like torch: numpy index arrays act as index tensors
        if k.dtype.kind not in "biu":
            raise TypeError(f"index arrays must be integer or bool, got numpy {k.dtype} (shape {shape})")
        k = torch.from_numpy(np.ascontiguousarray(k))
    if isinstance(k, torch.Tensor):
        if k.dtype == torch.bool:
            if k.ndim != 1:
                raise TypeError(f"only 1-D boolean masks are supported, got shape {tuple(k.shape)}")
            return _Mask(tuple(k.nonzero().flatten().tolist()), k.shape[0])
        if k.dtype.is_floating_point or k.dtype.is_complex:
            raise TypeError(f"index tensors must be integer or bool, got {k.dtype}")
        if k.dtype == torch.uint8:  # torch reads it as a mask (deprecated), not as indices
            raise TypeError(
                f"a uint8 index tensor {tuple(k.shape)} on a lazy expression of shape {shape} is "
                "ambiguous: torch reads it as a (deprecated) mask; pass k.bool() for a mask or "
                "k.long() for indices"
            )
        if k.ndim == 0:
            return int(k)
        if k.ndim != 1:
            raise TypeError(f"only 1-D index tensors are supported, got shape {tuple(k.shape)}")
        return tuple(k.tolist())
    if isinstance(k, (list, tuple, range)):
        items = list(k)
        if items and all(isinstance(i, bool) for i in items):
            return _Mask(tuple(i for i, b in enumerate(items) if b), len(items))
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise TypeError(f"index lists must hold ints, got {k!r}")
        return tuple(items)
    try:
        return int(k.__index__())
    except AttributeError:
        raise TypeError(f"unsupported index {k!r} of type {type(k).__name__}") from None


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


def _paired_length(rows: int, cols: int, shape: tuple) -> int:
    """The length of two index lists paired elementwise (their lengths broadcast, as torch)."""
    if rows != cols and 1 not in (rows, cols):
        raise IndexError(f"shape mismatch: the row and column index lists of lengths {rows} and {cols} "
                         f"cannot be paired (broadcast) on an expression of shape {shape}")
    return cols if rows == 1 else rows


def _check_lists(entries: list, shape: tuple) -> list:
    """Bound-check the index lists as torch does: a list is read (and checked) unless the result
    is empty, and a list on a dim of size 0 unless the (paired) index itself is empty. An
    unread list becomes a valid key of the same length: no entry is read."""
    unchecked = [e for e in entries if isinstance(e, _Unchecked)]
    if not unchecked:
        return entries
    lengths = [_length(e) for e in entries]
    paired = all(isinstance(e, (tuple, _Unchecked)) for e in entries[-2:])
    if paired:
        lengths[-2:] = [_paired_length(lengths[-2], lengths[-1], shape)] * 2
    for e, n in zip(entries, lengths, strict=True):
        if isinstance(e, _Unchecked) and (e.size == 0 and n or 0 not in lengths):
            raise IndexOutOfRange(f"index {e.bad} is out of range for dim {e.dim} of size {e.size} "
                                  f"(shape {shape})")
    if paired and lengths[-1] == 0:
        return [*entries[:-2], (), ()]
    return [(0,) * len(e.items) if isinstance(e, _Unchecked) else e for e in entries]


def normalise(shape: tuple, key: Any) -> tuple[tuple, Entry, Entry]:
    """Split ``key`` into ``(batch_key, row, col)`` with every entry resolved."""
    key = key if isinstance(key, tuple) else (key,)
    entries = [_as_entry(k, shape) for k in key]
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
    resolved: list = []
    dim = 0
    for e in entries:
        if e is None:
            if dim > len(shape) - 2:
                raise NotImplementedError(
                    f"None (a new axis) at or after the row dim of a lazy expression of shape "
                    f"{shape} would leave the matrix dims; insert it before the last two dims"
                )
            resolved.append(None)
            continue
        resolved.append(_resolve(e, shape[dim], dim, shape))
        dim += 1
    lists = [i for i, e in enumerate(resolved) if isinstance(e, (tuple, _Unchecked))]
    if len(lists) > 1 and lists != [len(resolved) - 2, len(resolved) - 1]:
        raise NotImplementedError(
            f"more than one index list in one key on shape {shape}; torch would pair them up "
            "elementwise: index the dims one at a time instead"
        )
    if len(lists) == 2:
        _paired_length(_length(resolved[-2]), _length(resolved[-1]), shape)
    resolved = _check_lists(resolved, shape)
    col = resolved.pop()
    row = resolved.pop()
    return tuple(resolved), row, col


def batch_shape_after(batch_shape: tuple, batch_key: tuple) -> tuple:
    out: list[int] = []
    dim = 0
    for e in batch_key:
        if e is None:
            out.append(1)
            continue
        if isinstance(e, (range, tuple)):
            out.append(len(e))
        dim += 1
    return tuple(out)


def getitem(x: Expr, key: Any) -> Any:
    """``x[key]``: lazy for slices and lists, a tensor when the row or column dim gets an int."""
    shape = tuple(x.shape)
    batch, row, col = normalise(shape, key)
    if isinstance(row, tuple) and isinstance(col, tuple):
        return _gather_pairs(x, batch, row, col)
    squeeze = []
    if isinstance(row, int):
        row, squeeze = range(row, row + 1), [*squeeze, -2]
    if isinstance(col, int):
        col, squeeze = range(col, col + 1), [*squeeze, -1]
    node = make_index(x, batch, row, col)
    if not squeeze:
        return node
    return node.to_dense().squeeze(squeeze)


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
    if isinstance(e2, int):
        return e[e2]
    if isinstance(e, range) and isinstance(e2, range):
        return e[e2.start : e2.stop : e2.step]
    return as_range(tuple(e[i] for i in e2))


def compose(first: tuple, second: tuple) -> tuple | None:
    """One normalised key ``(batch, row, col)`` doing what ``first`` then ``second`` do, or None
    where no key can (``second`` repeats or empties a new axis of ``first``, or the result has
    two index lists and a new axis, see :func:`torch_key`).

    Indexing twice gathers the whole first result (``x[:, [0] * 32][31, 31]`` copies every head
    where ``x[31, 0]`` reads one): composed, only what the second key keeps is read."""
    (b1, r1, c1), (b2, r2, c2) = first, second
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
    key = (tuple(out), _pick(r1, r2), _pick(c1, c2))
    lists = sum(isinstance(e, tuple) for e in (*key[0], key[1], key[2]))
    return None if lists > 1 and None in key[0] else key


def make_index(x: Expr, batch: tuple, row: Entry, col: Entry) -> Expr:
    """``x[batch, row, col]`` as a node; an index of an index is one node (:func:`compose`), and
    a list that a range can stand for is that range (:func:`as_range`: a view, not a copy)."""
    batch, row, col = tuple(as_range(e) for e in batch), as_range(row), as_range(col)
    if x.op == "index":
        key = compose(x.key, (batch, row, col))
        if key is not None:
            return make_index(x.children[0], *key)
    full = (range(x.shape[-2]), range(x.shape[-1]))
    if all(isinstance(e, range) and len(e) == n for e, n in zip(batch, x.shape[:-2], strict=False)) \
            and None not in batch and (row, col) == full:
        return x
    shape = (*batch_shape_after(tuple(x.shape[:-2]), batch), len(row), len(col))
    return Index._make(((batch, row, col),), (x,), shape, x.dtype, x.device)


def _gather_pairs(x: Expr, batch: tuple, rows: tuple, cols: tuple) -> torch.Tensor:
    """``x[..., rows, cols]`` with two lists: the selected rows are computed, then paired."""
    r, c = torch.broadcast_tensors(torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))
    picked = make_index(x, batch, tuple(r.tolist()), range(x.shape[-1])).to_dense()
    c = c.to(picked.device)
    return picked.gather(-1, c.expand(*picked.shape[:-2], -1).unsqueeze(-1)).squeeze(-1)


def torch_key(batch: tuple, row: Entry, col: Entry, device: torch.device) -> tuple:
    """The key to apply a normalised index to a tensor. Each list indexes its own dim (an
    outer, not a paired, index): with two or more lists (a composed key, :func:`compose`) every
    entry becomes an index tensor shaped to broadcast along its result dim (no new axes)."""
    entries = (*batch, row, col)
    if sum(isinstance(e, tuple) for e in entries) > 1:
        kept = [e for e in entries if not isinstance(e, int)]
        out, dim = [], 0
        for e in entries:
            t = torch.tensor(e if isinstance(e, int) else list(e), dtype=torch.long, device=device)
            if not isinstance(e, int):
                t = t.view(*[-1 if i == dim else 1 for i in range(len(kept))])
                dim += 1
            out.append(t)
        return tuple(out)

    def conv(e: Entry) -> Any:
        if isinstance(e, range):
            return slice(e.start, e.stop, e.step)
        if isinstance(e, tuple):
            return torch.tensor(e, dtype=torch.long, device=device)
        return e

    return (*(conv(e) for e in batch), conv(row), conv(col))
