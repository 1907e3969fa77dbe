"""Deterministic counts of the aten ops one warm ``det`` / ``slogdet`` call runs on a chain of
square leaves (fresh leaves and expression, the route's decisions cached by the warm-up): the
cost of the inf/NaN check (edge15: the answer read back, one number) beside the route's own ops.

``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_det_ops.py``
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm


class Ops(TorchDispatchMode):
    """The names of the aten ops run inside ``with Ops() as o:``, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def _chain(tensors: list[torch.Tensor]) -> lm.Expr:
    x = lm.lazy(tensors[0])
    for t in tensors[1:]:
        x = x @ lm.lazy(t)
    return x


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    for n, k in ((64, 2), (16, 3), (128, 3)):
        tensors = [torch.randn(n, n, generator=gen, dtype=torch.float64) for _ in range(k)]
        for op in ("det", "slogdet"):
            getattr(lm.linalg, op)(_chain(tensors))  # warm: the route's decisions cached
            x = _chain([t.clone() for t in tensors])
            with Ops() as o:
                getattr(lm.linalg, op)(x)
            print(f"{op} chain of {k} {n}x{n}: {len(o.names)} aten ops {o.names}")


if __name__ == "__main__":
    main()
