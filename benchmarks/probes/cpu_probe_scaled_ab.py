"""Before/after of where a product's coefficient is applied (scale16, session 16), interleaved in one
process: lazymat at a git revision (``--base``, a ``git archive`` copy imported as ``lazymat_base``,
as ``cpu_probe_fresh_ab.py`` does) against the working tree's, for chains with a scalar written on a
factor (the canonical-form path): ``(c * A) @ B @ C @ D`` of 64x64 float32 factors (a pool of 64,
fresh nodes every call), the multiple ``c * (A @ B @ C @ D)`` (a fresh chain, read from its leaves)
and a QK-shaped ``E @ (c * Q) @ K.T @ E.T`` (E 1024x64, Q and K 64x16),
``to_dense()`` and ``@ v``, for ``c`` in 1 and 1/8 (the common coefficients), beside eager torch.

Deterministic counts first (torch dispatch, one call each): aten ops, elements written by
multiplications, values read back (``_local_scalar_dense``: a host sync on a GPU). Then the median
and least time per call over the rounds and after/before.

Run from the repository root:
``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/probes/cpu_probe_scaled_ab.py --base 548e596``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as after

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from cpu_probe_fresh_ab import base_package  # noqa: E402


class Counts(TorchDispatchMode):
    """aten ops run, elements written by multiplications, values read back."""

    def __init__(self):
        super().__init__()
        self.ops = self.mul = self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.ops += 1
        self.mul += out.numel() if name in ("mul", "mul_") else 0
        self.reads += name == "_local_scalar_dense"
        return out


def chain4(pkg, ts, c):
    return (c * pkg.lazy(ts[0])) @ pkg.lazy(ts[1]) @ pkg.lazy(ts[2]) @ pkg.lazy(ts[3])


def multiple(pkg, ts, c):
    return c * (pkg.lazy(ts[0]) @ pkg.lazy(ts[1]) @ pkg.lazy(ts[2]) @ pkg.lazy(ts[3]))


def qk(pkg, ts, c):
    E, Q, K = ts
    return pkg.lazy(E) @ (c * pkg.lazy(Q)) @ pkg.lazy(K).mT @ pkg.lazy(E).mT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="548e596", help="git revision of the 'before' lazymat")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    pools = {"chain4": [[torch.randn(64, 64, generator=g) for _ in range(4)] for _ in range(64)],
             "qk": [[torch.randn(1024, 64, generator=g), torch.randn(64, 16, generator=g),
                     torch.randn(64, 16, generator=g)] for _ in range(4)]}
    pools["multiple"] = pools["chain4"]
    build = {"chain4": chain4, "multiple": multiple, "qk": qk}
    with tempfile.TemporaryDirectory() as tmp:
        before = base_package(args.base, pathlib.Path(tmp))
        routes = {}
        for kind in ("chain4", "multiple", "qk"):
            pool, n = pools[kind], len(pools[kind])
            v = torch.randn(pool[0][0].shape[0] if kind == "qk" else 64, generator=g)
            for c in (1.0, 0.125):
                for tag, pkg in (("before", before), ("after", after)):
                    routes[(kind, c, "to_dense", tag)] = \
                        lambda i, p=pool, k=kind, c=c, pkg=pkg, n=n: build[k](pkg, p[i % n], c).to_dense()
                    routes[(kind, c, "@ v", tag)] = \
                        lambda i, p=pool, k=kind, c=c, pkg=pkg, n=n, v=v: build[k](pkg, p[i % n], c) @ v
        for fn in routes.values():  # warm (plans cached), then one call counted
            fn(0)
            fn(1)
        print(f"lazymat {args.base} (before) against {after.__file__} (after); counts per call:")
        for key, fn in routes.items():
            with Counts() as n:
                fn(2)
            print(f"  {key[0]} c={key[1]} {key[2]} {key[3]}: {n.ops} aten ops, {n.mul} elements multiplied, "
                  f"{n.reads} values read back")
        samples: dict = {k: [] for k in routes}
        calls = {"chain4": 64, "multiple": 64, "qk": 4}
        for _ in range(args.rounds):
            for key, fn in routes.items():
                t = time.perf_counter()
                for i in range(calls[key[0]]):
                    fn(i)
                samples[key].append((time.perf_counter() - t) / calls[key[0]] * 1e6)
        print(f"{args.rounds} interleaved rounds, us per call (median, least); after/before of the median")
        for key in routes:
            if key[3] == "after":
                b, a = samples[(*key[:3], "before")], samples[key]
                print(f"  {key[0]} c={key[1]} {key[2]}: before {statistics.median(b):.1f} ({min(b):.1f}), "
                      f"after {statistics.median(a):.1f} ({min(a):.1f}), "
                      f"after/before {statistics.median(a) / statistics.median(b):.3f}")


if __name__ == "__main__":
    main()
