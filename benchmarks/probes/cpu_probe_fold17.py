"""fold17's probes (session 17), deterministic counts.

``counts``: aten ops and elements multiplied (torch dispatch) by one ``to_dense()`` of
``(a A) @ B @ (c C)`` (64x64, float64 and float32), on the fresh path and on the canonical path
(form built first), for scales that cancel within and past the dtype's far exponent::

    PYTHONPATH=$PWD python benchmarks/probes/cpu_probe_fold17.py counts

``fresh``, ``hash leaf|plain`` and ``tf current|extra``: loops for callgrind, counted inside
``functools.reduce``: ``((A / 8) @ B @ (C / 64)).to_dense()`` of fresh nodes over 16x16 float32
leaves (200 calls; the fresh path, two scales on a chain of three); ``set()`` of 3 lazymat leaves against 3 plain objects (``Expr.__hash__ =
object.__hash__``); ``torch.linalg.svdvals`` of a fresh 16x8 @ 8x16 float32 product (200 calls)
with ``Expr.__torch_function__`` as it is, or with one more Python frame before
``interop.dispatch`` (the difference is what routing torch's call straight to it would save)::

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 PYTHONPATH=$PWD valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect=functools_reduce --callgrind-out-file=/tmp/cg.out \\
        "$(python -c 'import sys; print(sys.executable)')" benchmarks/probes/cpu_probe_fold17.py tf current
"""

from __future__ import annotations

import functools
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import expr as E
from lazymat.rewrite import canonical


class Counts(TorchDispatchMode):
    """aten ops run and elements written by multiplications."""

    def __init__(self):
        super().__init__()
        self.ops = self.mul = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.mul += out.numel() if func.overloadpacket.__name__ in ("mul", "mul_") else 0
        return out


def counts() -> None:
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        for ea, ec in ((9, -9), (-3, -6), (30, -30), (40, -40), (70, -70)):
            ts = [torch.randn(64, 64, generator=g, dtype=dtype) for _ in range(3)]
            for path in ("fresh", "canonical"):
                x = (2.0**ea * lm.lazy(ts[0])) @ lm.lazy(ts[1]) @ (2.0**ec * lm.lazy(ts[2]))
                if path == "canonical":
                    canonical(x)
                with Counts() as n:
                    x.to_dense()
                print(f"{str(dtype):14} 2**{ea:+d} A @ B @ 2**{ec:+d} C  {path:9} aten ops {n.ops:3d}  "
                      f"elements multiplied {n.mul}")


class Plain:
    pass


def main() -> None:
    what = sys.argv[1]
    if what == "counts":
        return counts()
    if what == "fresh":
        g = torch.Generator().manual_seed(0)
        a, b, c = (torch.randn(16, 16, generator=g) for _ in range(3))

        def call(acc, _):
            return ((lm.lazy(a) / 8) @ lm.lazy(b) @ (lm.lazy(c) / 64)).to_dense()

        call(None, 0)
        functools.reduce(call, range(200), None)
        return None
    mode = sys.argv[2]
    if what == "hash":
        xs = [lm.lazy(torch.zeros(2, 2)) for _ in range(3)] if mode == "leaf" else [Plain() for _ in range(3)]
        functools.reduce(lambda acc, _: set(xs), range(1000), None)
        return None
    if mode == "extra":
        first = E.Expr.__torch_function__.__func__

        def hop(cls, func, types, args=(), kwargs=None):
            return first(cls, func, types, args, kwargs)

        E.Expr.__torch_function__ = classmethod(hop)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 8, generator=g), torch.randn(8, 16, generator=g)
    torch.linalg.svdvals(lm.lazy(a) @ lm.lazy(b))
    functools.reduce(lambda acc, _: torch.linalg.svdvals(lm.lazy(a) @ lm.lazy(b)), range(200), None)
    return None


if __name__ == "__main__":
    main()
