"""det, solve and lstsq of lazy expressions against dense torch on the formed matrix, side by
side in one run (round-robin medians; ratio > 1: lazymat faster), with explain's FLOPs of both
routes (deterministic, whatever the load):

- a chain of three square ``n x n`` factors: ``slogdet`` (its det overflows) and ``solve`` by
  one LU per factor, against forming the product (two GEMMs) and one LU;
- a rank-``r`` ``N x N`` product ``L @ R``: ``det`` read off the structure (0, only ``1^T X 1``)
  and ``lstsq`` off the core's triplets, against forming ``X`` and torch's ``det`` / ``gelsd``.

Run: ``python benchmarks/bench_solve.py [--quick]``.

``--part counts``: instead, per call of ``det``, ``slogdet``, ``solve`` (4 columns) and ``inv`` on
fresh chains of square factors, the Python lines run in lazymat, the torch operator calls and
the LU calls among them (deterministic on a loaded machine).

``--part crossover``: instead, ``det``, ``slogdet``, ``solve`` (4 columns) and ``inv`` of
chains of 2 and 3 square ``n x n`` float64 factors (``n`` from 8 to 384) by lazymat as shipped,
by each of its two routes forced (one LU per square segment; the product formed and one LU), and
by eager torch on the formed product, interleaved (the least time per call over the rounds);
then, per op, the threshold on ``(dense - factored FLOPs) / extra LU calls``
(:func:`lazymat.linalg.costs.square_route_flops`) that loses the least time over the shapes, against
the shipped ``lazymat.linalg.costs.FACTORED_OVERHEAD_FLOPS``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch
from _harness import compare, device_name, fmt_time
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

SQUARE_OPS = {  # op: (lazymat call on X and the right-hand sides, eager call on the formed D)
    "det": (lambda X, B: lm.linalg.det(X), lambda D, B: torch.linalg.det(D)),
    "slogdet": (lambda X, B: lm.linalg.slogdet(X).logabsdet, lambda D, B: torch.linalg.slogdet(D).logabsdet),
    "solve": (lambda X, B: lm.linalg.solve(X, B), lambda D, B: torch.linalg.solve(D, B)),
    "inv": (lambda X, B: lm.linalg.inv(X), lambda D, B: torch.linalg.inv(D)),  # factored: a lazy answer
}
CROSSOVER = [(j, n) for j in (2, 3) for n in (8, 16, 32, 48, 64, 96, 128, 192, 256, 384)]


@contextlib.contextmanager
def route(op: str, which: str):
    """``op``'s square-segment route forced (``"factored"``: no per-call cost, so never formed;
    ``"dense"``: an infinite one) or as shipped (``"auto"``)."""
    table = LA.costs.FACTORED_OVERHEAD_FLOPS
    if op not in LA.costs.SQUARE_OPS:  # inv: always by segments
        yield
        return
    kept = table[op]
    table[op] = {"factored": 0.0, "dense": math.inf, "auto": kept}[which]
    try:
        yield
    finally:
        table[op] = kept


def least_per_call(fns: dict, rounds: int, calls: int) -> dict:
    """The least seconds per call of each function over ``rounds`` interleaved rounds."""
    best = dict.fromkeys(fns, math.inf)
    for fn in fns.values():
        fn()
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / calls)
    return best


class _Ops(TorchDispatchMode):
    """Counts torch operator calls, and the LU calls among them."""

    LU = ("_linalg_det", "_linalg_slogdet", "_linalg_solve_ex", "linalg_lu_factor_ex", "linalg_inv_ex")

    def __init__(self) -> None:
        super().__init__()
        self.count = self.lu = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        self.lu += func.__name__.split(".")[0] in self.LU
        return func(*args, **(kwargs or {}))


def counts() -> None:
    """Lines in lazymat, torch operator calls and LU calls per call of each square op."""
    from _harness import lines_of

    g = torch.Generator().manual_seed(0)
    print(f"lazymat from {lm.__file__}; per call on a fresh chain (plans warm): lazymat lines, torch ops, "
          "LU calls")
    print(f"{'op':>8} {'chain':>11} {'lines':>6} {'ops':>4} {'LUs':>4}")
    for j, n in ((3, 16), (3, 64), (2, 64), (3, 128)):
        leaves = [torch.randn(n, n, generator=g, dtype=torch.float64) for _ in range(j)]
        B = torch.randn(n, 4, generator=g, dtype=torch.float64)

        def chain(leaves=leaves):
            X = lm.lazy(leaves[0].clone())
            for t in leaves[1:]:
                X = X @ lm.lazy(t.clone())
            return X

        for op, (ours, _) in SQUARE_OPS.items():
            for _ in range(3):
                ours(chain(), B)
            X = chain()
            lines = lines_of(lambda X=X, ours=ours, B=B: ours(X, B))
            X = chain()
            with _Ops() as ops:
                ours(X, B)
            print(f"{op:>8} {f'{j} x {n}x{n}':>11} {lines:>6} {ops.count:>4} {ops.lu:>4}")


def crossover(rounds: int) -> None:
    """Times of both routes of each square op on chains of square factors, and the fit."""
    g = torch.Generator().manual_seed(0)
    print(f"# {device_name('cpu')}, torch {torch.__version__}; least time per call over {rounds} interleaved "
          "rounds; chains of j square n x n float64 factors, solve with 4 columns")
    print(f"{'op':>8} {'j':>2} {'n':>4} {'shipped':>10} {'factored':>10} {'dense':>10} {'eager':>10} "
          f"{'shipped/eager':>13} {'dFLOPs/call':>12} route")
    points: dict[str, list] = {op: [] for op in LA.costs.SQUARE_OPS}
    for j, n in CROSSOVER:
        leaves = [torch.randn(n, n, generator=g, dtype=torch.float64) for _ in range(j)]
        B = torch.randn(n, 4, generator=g, dtype=torch.float64)

        def chain(leaves=leaves):
            X = lm.lazy(leaves[0])
            for t in leaves[1:]:
                X = X @ lm.lazy(t)
            return X

        for op, (ours, eager) in SQUARE_OPS.items():
            def run(which, op=op, ours=ours, chain=chain, B=B):
                with route(op, which):
                    return ours(chain(), B)

            def formed(eager=eager, leaves=leaves, B=B):
                D = leaves[0]
                for t in leaves[1:]:
                    D = D @ t
                return eager(D, B)

            decided = op in LA.costs.SQUARE_OPS
            routes = ("auto", "factored", "dense") if decided else ("auto",)
            fns = {w: (lambda w=w, run=run: run(w)) for w in routes}
            fns["eager"] = formed
            calls = max(1, int(2e6 / (n**3 + 1e4)))
            t = least_per_call(fns, rounds, calls)
            taken = len(lm.linalg.square_segments(chain(), op, 4 if op == "solve" else 0)[1])
            cells = [fmt_time(t[w]) if w in t else "-" for w in ("auto", "factored", "dense", "eager")]
            per = math.nan
            if decided:
                dense, factored, extra = LA.costs.square_route_flops(chain(), op, 4 if op == "solve" else 0)
                per = (dense - factored) / extra
                points[op].append((per, t["dense"] - t["factored"]))
            print(f"{op:>8} {j:>2} {n:>4} " + " ".join(f"{c:>10}" for c in cells)
                  + f" {t['auto'] / t['eager']:>12.2f}x {per:>12.3g} {'dense' if taken == 1 else 'factored'}",
                  flush=True)
    print("\nfit per op: the threshold on dFLOPs/call (dense takes dFLOPs/call <= it) losing the least time "
          "summed over the shapes (worst single loss)")
    for op, pts in points.items():
        def losses(c, pts=pts):
            return [max(dt, 0) if d <= c else max(-dt, 0) for d, dt in pts]

        cuts = sorted({0.0, *(d for d, _ in pts)})
        least = min(sum(losses(c)) for c in cuts)
        good = [c for c in cuts if sum(losses(c)) <= least]
        higher = [c for c in cuts if c > good[-1]]
        hi = higher[0] if higher else math.inf
        shipped = LA.costs.FACTORED_OVERHEAD_FLOPS[op]
        print(f"{op:>8}: best in [{good[0]:.3g}, {hi:.3g}) (total {least * 1e6:.0f} us, worst "
              f"{max(losses(good[0])) * 1e6:.0f} us); shipped {shipped:.3g} (total "
              f"{sum(losses(shipped)) * 1e6:.0f} us, worst {max(losses(shipped)) * 1e6:.0f} us)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("routes", "counts", "crossover"), default="routes")
    parser.add_argument("--rounds", type=int, default=7, help="--part crossover: interleaved rounds")
    args = parser.parse_args()
    if args.part != "routes":
        torch.set_num_threads(1)
        crossover(args.rounds) if args.part == "crossover" else counts()
        return
    n, N, r, k = (256, 1024, 32, 4) if args.quick else (512, 2048, 64, 4)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    A, B, C = rand(n, n), rand(n, n), rand(n, n)
    rhs, L, R, wide = rand(n, k), rand(N, r), rand(r, N), rand(N, k)
    print(f"# {device_name('cpu')}, torch {torch.__version__}; chain 3 x ({n} x {n}), "
          f"rank-{r} product {N} x {N}, B with {k} columns, float64")

    def chain():  # fresh nodes each call: no cached answer is reused
        return lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)

    def low():
        return lm.lazy(L) @ lm.lazy(R)

    cases = {
        "slogdet (chain)": (lambda: lm.linalg.slogdet(chain()).logabsdet,
                            lambda: torch.linalg.slogdet(A @ B @ C).logabsdet,
                            lm.explain(chain(), "slogdet")),
        "solve (chain)": (lambda: lm.linalg.solve(chain(), rhs), lambda: torch.linalg.solve(A @ B @ C, rhs),
                          lm.explain(chain(), "solve", k=k)),
        "det (rank r)": (lambda: lm.linalg.det(low()), lambda: torch.linalg.det(L @ R),
                         lm.explain(low(), "det")),
        "lstsq (rank r)": (lambda: lm.linalg.lstsq(low(), wide, driver="gelsd").solution,
                           lambda: torch.linalg.lstsq(L @ R, wide, driver="gelsd").solution,
                           lm.explain(low(), "lstsq", k=k)),
    }
    print(f"{'case':<16} {'lazymat':>10} {'dense':>10} {'speedup':>8} {'FLOPs lazymat':>14} "
          f"{'FLOPs dense':>12}")
    for name, (ours, dense, report) in cases.items():
        got, want = ours(), dense()
        scale = want.abs().max().item()
        err = (got - want).abs().max().item() / (scale or 1.0)
        t = compare({"lazymat": ours, "dense": dense}, rounds=5, clock=time.process_time)
        print(f"{name:<16} {fmt_time(t['lazymat']):>10} {fmt_time(t['dense']):>10} "
              f"{t['dense'] / t['lazymat']:>7.1f}x {report.planned.flops:>14.3g} "
              f"{report.naive[0].flops:>12.3g}   (relative difference {err:.1e})")


if __name__ == "__main__":
    main()
