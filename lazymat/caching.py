"""When an answer may be read from, or kept in, lazymat's caches (decompositions on a node,
leaf QRs, products kept on the leaves): never for a call whose gradient is taken.

A recorded call's answers carry its graph, and a cache keyed by tensor versions cannot see a
write through ``.data`` (``torch.autograd.gradcheck`` perturbs its inputs that way): so neither
a call that autograd records, nor one under forward-mode AD, nor the unrecorded forward of a
call recorded as a whole (a budgeted call's recompute, :mod:`lazymat.linalg.gradients`, opens
:func:`uncached`) reads or keeps a cached answer. One predicate for every cache."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator

import torch
from torch.autograd import forward_ad

_UNCACHED: contextvars.ContextVar[bool] = contextvars.ContextVar("lazymat_uncached", default=False)


@contextlib.contextmanager
def uncached() -> Iterator[None]:
    """Inside, no cached answer is read or kept (:func:`caches`), as in a recorded call."""
    token = _UNCACHED.set(True)
    try:
        yield
    finally:
        _UNCACHED.reset(token)


def caches(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether a call reading ``tensors`` may read and keep cached answers: not inside
    :func:`uncached`, under forward-mode AD, or while autograd records a call on a tensor that
    requires grad."""
    if _UNCACHED.get() or forward_ad._current_level >= 0:
        return False
    return not (torch.is_grad_enabled() and any([t.requires_grad for t in tensors]))
