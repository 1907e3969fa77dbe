"""Counting the bytes torch allocates: the most held at once in storages that torch ops make while
a counter is on, each from the op that returns it until it is freed (views, outputs written into
an argument and tensors made before are not counted). Deterministic, on every device, and blind
to the caching allocator: what a route allocates, not what the allocator keeps.

:mod:`lazymat.linalg` measures one batch member's differentiable recompute with it, the footprint
no plan predicts (what autograd saves), to size the blocks of a backward pass under a budget."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class Allocated(TorchDispatchMode):
    """A context counting allocations: ``peak`` is the most bytes held at once while it was on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.live = self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = tree_flatten((args, kwargs))[0]
        inputs = {id(t.untyped_storage()) for t in flat if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if id(storage) in inputs or storage in self.seen:
                continue
            self.seen[storage] = storage.nbytes()
            weakref.finalize(storage, self._freed, storage.nbytes())
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        return out
