"""A narrowing cast inside a product: ``matrix_norm(X.half() @ W)`` with ``X = A @ B`` an
``n x n`` float32 product of rank 8 and ``W`` an ``n x 16`` float16 matrix, side by side in one
run (round-robin medians):

- ``lazymat``: the cast floats outward (``((A @ B) @ W.float()).half()``): nothing ``n x n``;
- ``eager torch``: ``(A @ B).half() @ W`` formed as torch does, then its norm.

Also reported, per route: the most elements of any one tensor an operator returned (a
``TorchDispatchMode``: deterministic, unlike timings on a loaded machine), and the largest
relative difference of the two norms. Run:
``PYTHONPATH=$PWD python benchmarks/bench_cast_products.py [--quick] [--n N] [--device cuda]``;
``--quick`` takes ``n = 2000`` (seconds).
"""

from __future__ import annotations

import argparse

import torch
from _harness import compare, device_name, fmt_time
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm

RANK, WIDTH = 8, 16


class Largest(TorchDispatchMode):
    """The most elements of any tensor an operator returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="n = 2000, 3 rounds")
    ap.add_argument("--n", type=int, default=None, help="matrix size (default 20000)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n, dev = args.n or (2000 if args.quick else 20000), args.device
    rounds = 3 if args.quick else args.rounds
    g = torch.Generator().manual_seed(0)
    A = (torch.randn(n, RANK, generator=g) / RANK**0.5).to(dev)
    B = (torch.randn(RANK, n, generator=g) / n**0.5).to(dev)
    W = (torch.randn(n, WIDTH, generator=g) / n**0.5).half().to(dev)
    routes = {
        "lazymat": lambda: lm.linalg.matrix_norm((lm.lazy(A) @ lm.lazy(B)).half() @ lm.lazy(W)),
        "eager torch": lambda: torch.linalg.matrix_norm((A @ B).half() @ W),
    }
    print(f"matrix_norm(X.half() @ W), X = A @ B {n}x{n} rank {RANK} float32, W {n}x{WIDTH} float16, on "
          f"{device_name(dev)}; torch {torch.__version__}; median of {rounds} rounds, round-robin")
    norms, largest = {}, {}
    for name, fn in routes.items():
        with Largest() as seen:
            norms[name] = float(fn())
        largest[name] = seen.largest
    times = compare(routes, dev, rounds=rounds, min_time=0)
    base = times["eager torch"]
    for name, s in times.items():
        print(f"  {name:<12} {fmt_time(s):>10}  ({s / base:.3g} of eager)  largest tensor "
              f"{largest[name]:,} elements  norm {norms[name]:.6g}")
    diff = abs(norms["lazymat"] - norms["eager torch"]) / abs(norms["eager torch"])
    eps = torch.finfo(torch.float16).eps
    print(f"  relative difference of the norms: {diff:.2g} (float16's eps: {eps:.2g})")


if __name__ == "__main__":
    main()
