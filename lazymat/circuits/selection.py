"""Layer and head arguments: one int, several, a slice or ``None`` (all), checked against the
model's sizes where they enter, so that a wrong one is named rather than failing deep inside
the engine's indexing.

Ints may be Python, numpy or 0-dim integer tensors; negative ones count from the end (as in
torch) and come back non-negative, so results are named ``L5H0`` rather than ``L-1H0``.
``bool``, ``float`` and ``str`` are rejected: ``True`` is an int to Python but never a layer.
Slices take the same ints as bounds and a positive step (torch indexes no other).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..indexing import integer_scalar

Index = int | Sequence[int] | slice | None


def one(i: Any, size: int, what: str) -> int:
    """``i`` as one index in ``range(size)`` (``-size <= i < size`` accepted)."""
    value = _as_int(i)
    if value is None:
        raise TypeError(f"{what} {i!r}: expected an int, got {type(i).__name__}")
    if not -size <= value < size:
        raise IndexError(f"{what} {value} out of range for {size} {what}s")
    return value % size


def key(i: Any, size: int, what: str) -> int | list[int] | slice:
    """``i`` (an :data:`Index`) as a torch index over ``size`` entries: an int, a list of ints
    or a slice (``None`` is ``slice(None)``, all of them)."""
    if i is None:
        return slice(None)
    if isinstance(i, slice):
        return _slice(i, what)
    if _as_int(i) is not None:
        return one(i, size, what)
    if isinstance(i, (str, bytes)) or not isinstance(i, Iterable) or (
        isinstance(i, torch.Tensor) and i.ndim != 1
    ):
        raise TypeError(f"{what} {i!r}: expected an int, a sequence of ints, a slice or None, got "
                        f"{type(i).__name__}")
    items = i.tolist() if isinstance(i, torch.Tensor) else list(i)
    return [one(item, size, what) for item in items]


def _slice(i: slice, what: str) -> slice:
    """``i`` with Python-int bounds, checked here (the engine's own error would name a weight's
    shape): bounds ints or None, bools refused; a step above 0, as torch's indexing needs."""
    given = (i.start, i.stop, i.step)
    parts = [None if part is None else _as_int(part) for part in given]
    if any(new is None and old is not None for new, old in zip(parts, given, strict=True)):
        raise TypeError(f"{what} {i!r}: slice bounds and step must be ints or None")
    if parts[2] is not None and parts[2] <= 0:
        raise ValueError(f"{what} {i!r}: the slice step must be positive (as in torch), got {parts[2]}")
    return slice(*parts)


def _as_int(i: Any) -> int | None:
    """An integer scalar (:func:`lazymat.indexing.integer_scalar`), bools refused."""
    return None if isinstance(i, bool) else integer_scalar(i)
