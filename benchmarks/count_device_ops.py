"""Operations a call runs on the device, counted deterministically on the CPU (issue 12 items 2, 5).

On a GPU each operation costs the host a launch (~5-10 us; a view launches nothing but costs
the host a dispatch) and each value read back waits for the queue to drain; on an H100 the
gpt2-small QK circuit's ``svd`` was host-bound (benchmarks/results/h100-svd-probe.txt) and
its Frobenius norm and trace ran 1.2-3x slower than hand-written routes with the same FLOPs
(benchmarks/results/h100-layout.txt). This counts, on the CPU, the torch operations of one call
on a QK-shaped product ``E @ Q @ K^T @ E^T`` (``E`` vocab x 768, ``Q``, ``K`` 768 x 64), split
into compute operations (each a kernel launch on a GPU), views and values read back
(``_local_scalar_dense``), next to the hand-written routes of ``benchmarks/bench_layout.py``,
with the Python lines run in lazymat's modules (the host's work before and between launches).

- ``--op svd svdvals`` (the default): one call under ``lm.config(qr="cholesky")`` (the GPU's
  default route), split at the one copy that brings the core to the host
  (``linalg._common._placed_with``): operations before it run on the device on a GPU, after it the
  host's work with the two products that apply the core's vectors (on the device).
- ``--op fro trace``: ``matrix_norm`` and ``trace`` with the expression's and leaves' caches
  cleared (plans warm), as ``bench_layout.py`` times them, beside the hand-written route
  (``--heads 12``: of 12 heads' circuits, one per head, no hand-written route).

``--list`` prints every operation with its operands' shapes.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_device_ops.py [--op fro trace]``
"""

from __future__ import annotations

import argparse
import collections

import torch
from _harness import lines_of
from bench_layout import hand_routes
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

VIEWS = {"view", "transpose", "slice", "diagonal", "unsqueeze", "detach", "t", "permute", "expand",
         "alias", "_unsafe_view", "select", "as_strided", "split", "reshape", "real", "squeeze",
         "view_as_real", "_reshape_alias"}


def kind_of(func) -> str:
    name = str(func).split(".")[1]
    return "reads" if name == "_local_scalar_dense" else "views" if name in VIEWS else "compute"


class Counter(TorchDispatchMode):
    """Counts torch operations by phase and kind (compute, views, values read back)."""

    def __init__(self, listing: bool = False):
        super().__init__()
        self.counts = collections.Counter()
        self.phase = "before the copy"
        self.listing = listing

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = kind_of(func)
        self.counts[(self.phase, kind)] += 1
        if self.listing:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            print(f"    {kind:8s} {func}  {shapes}")
        return func(*args, **(kwargs or {}))


def spectral(E, Wq, Wk, ops: list[str], listing: bool) -> None:
    X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT
    counter = Counter(listing)
    place = getattr(LA._common, "_placed_with", None)
    if place is not None:
        def marked(*a):
            out = place(*a)
            counter.phase = "after it (host)"
            return out
        LA._common._placed_with = marked
    for op in ops:
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


def reductions(E, Wq, Wk, ops: list[str], listing: bool) -> None:
    X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT
    hand = hand_routes(E, Wq, Wk)
    routes = {"fro": (LA.matrix_norm, hand["matrix_norm (fro)"]), "trace": (LA.trace, hand["trace"])}
    for op in ops:
        lazy, written = routes[op]

        def call(lazy=lazy):
            X.clear_cache()  # the expression's and its leaves' caches, as bench_layout.py times it
            return lazy(X)

        for name, fn in (("lazymat", call), ("hand", written))[: 1 if Wq.ndim > 2 else 2]:
            fn()  # warm: plans made
            counter = Counter(listing)
            if listing:
                print(f"  {op} {name}:")
            with counter:
                fn()
            row = {k: counter.counts[("before the copy", k)] for k in ("compute", "views", "reads")}
            lines = lines_of(fn) if name == "lazymat" else 0
            print(f"{op:6s} {name:8s} compute {row['compute']:3d}  views {row['views']:3d}  "
                  f"reads {row['reads']:2d}  all {sum(row.values()):3d}  lazymat lines {lines:5d}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", nargs="*", default=["svd", "svdvals"], choices=["svd", "svdvals", "fro", "trace"])
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=0, help="Q, K of this many heads (no hand route)")
    ap.add_argument("--list", action="store_true", help="print every operation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    heads = (args.heads,) if args.heads else ()
    shapes = ((args.vocab, 768), (*heads, 768, 64), (*heads, 768, 64))
    E, Wq, Wk = (torch.randn(*s, generator=g) for s in shapes)
    spectral(E, Wq, Wk, [op for op in args.op if op in ("svd", "svdvals")], args.list)
    reductions(E, Wq, Wk, [op for op in args.op if op in ("fro", "trace")], args.list)


if __name__ == "__main__":
    main()
