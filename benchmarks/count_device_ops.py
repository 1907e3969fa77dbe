"""Operations a factored ``svd`` runs before its core goes to the host (issue 12 item 5).

On a GPU each operation costs the host a launch (~5-10 us) and each value read back waits for
the queue to drain; the full QK ``svd`` on an H100 was host-bound (benchmarks/results/
h100-svd-probe.txt). This counts, deterministically and on the CPU, the torch operations of one
``svd`` of a QK-shaped product under ``lm.config(qr="cholesky")`` (the GPU's default route),
split at the one copy that brings the core to the host (``linalg._placed_with``): compute
operations and views before it, which run on the device on a GPU, and after it the host's
work with the two products that apply the core's vectors (on the device).
Values read back (``_local_scalar_dense``) are counted in each phase. On a checkout without
that copy every operation is counted in the first phase.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_device_ops.py``
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

VIEWS = {"view", "transpose", "slice", "diagonal", "unsqueeze", "detach", "t", "permute", "expand",
         "alias", "_unsafe_view", "select", "as_strided", "split", "reshape", "real"}


class Counter(TorchDispatchMode):
    """Counts torch operations by phase: compute, views, and values read back."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.phase = "before the copy"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func).split(".")[1]
        kind = "reads" if name == "_local_scalar_dense" else "views" if name in VIEWS else "compute"
        self.counts[(self.phase, kind)] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    g = torch.Generator().manual_seed(0)
    E, Wq, Wk = (torch.randn(*s, generator=g) for s in ((2048, 768), (768, 64), (768, 64)))
    X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT
    counter = Counter()
    place = getattr(LA, "_placed_with", None)
    if place is not None:
        def marked(*a):
            out = place(*a)
            counter.phase = "after it (host)"
            return out
        LA._placed_with = marked
    for op in ("svd", "svdvals"):
        with lm.config(qr="cholesky"):
            X.clear_cache()
            getattr(LA, op)(X)  # warm: plans made
            X.clear_cache()
            counter.counts.clear()
            counter.phase = "before the copy"
            with counter:
                getattr(LA, op)(X)
        for phase in ("before the copy", "after it (host)"):
            row = {k: counter.counts[(phase, k)] for k in ("compute", "views", "reads")}
            print(f"{op:8s} {phase:16s} compute {row['compute']:3d}  views {row['views']:3d}  "
                  f"reads {row['reads']:2d}")


if __name__ == "__main__":
    main()
