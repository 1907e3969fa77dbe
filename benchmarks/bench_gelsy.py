"""lstsq's gelsy (the CPU default) against torch's dense gelsy on the formed matrix, in one run.

lazymat runs LAPACK's gelsy itself (torch's reads its pivot array uninitialised,
pytorch/pytorch#187411), so its cost is weighed against the route a user would otherwise write:
``torch.linalg.lstsq(X.to_dense(), B, driver="gelsy")`` (timed on a tensor formed beforehand).
Also shown: LAPACK's own dgelsy with its pivots zeroed (SciPy, where installed: the answer
lazymat reproduces) and lazymat's gelsd. Each case checks lazymat's rank against SciPy's.
Each call builds its expression afresh (an expression keeps its spectrum). Times are medians
of round-robin rounds (:func:`_harness.compare`) with one torch thread (``--threads``; SciPy's
OpenBLAS on one), CPU time of this process (steadier on a shared machine).

Cases: a full-rank dense ``500 x 400``; a low-rank product ``2000 x 50 @ 50 x 400``; a batch of
64 dense ``32 x 32``; a ``300 x 200`` whose values straddle ``rcond=1e-3`` (no certificate: the
pivoting runs to the rank estimate, about half the columns); a wide ``200 x 300`` of full rank (a
wide core has no full-rank certificate: 200 pivoting steps).

Run: ``python benchmarks/bench_gelsy.py [--threads 1] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # SciPy's LAPACK on one thread, as torch's (before import)
import torch  # noqa: E402
from _harness import compare, fmt_time  # noqa: E402

import lazymat as lm  # noqa: E402

try:
    from scipy.linalg import lapack
except ImportError:  # SciPy is a test dependency only
    lapack = None


def scipy_gelsy(X: torch.Tensor, B: torch.Tensor, rcond: float):
    """LAPACK's dgelsy on each member with every column free (pivots zeroed): the ranks (``B``
    padded to ``max(m, n)`` rows, LAPACK's room for the solution)."""
    m, n = X.shape[-2:]
    B = torch.cat([B, B.new_zeros(*B.shape[:-2], max(0, n - m), B.shape[-1])], -2)
    Xs, Bs = X.reshape(-1, m, n).numpy(), B.reshape(-1, *B.shape[-2:]).numpy()
    work = int(lapack.dgelsy_lwork(m, n, Bs.shape[-1], rcond)[0])
    ranks = []
    for Xi, Bi in zip(Xs, Bs, strict=True):
        pivots = torch.zeros(n, 1, dtype=torch.int32).numpy()
        out = lapack.dgelsy(Xi.copy(order="F"), Bi.copy(order="F"), pivots, rcond, work)
        ranks.append(int(out[3]))
    return ranks


def cases(g: torch.Generator):
    """``(name, build the expression, the formed matrix, B, rcond)`` per case."""
    d = torch.float64

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=d)

    X = randn(500, 400)
    yield "full rank 500x400", lambda: lm.lazy(X), X, randn(500, 3), None
    A, F = randn(2000, 50), randn(50, 400)
    yield "product 2000x50 @ 50x400", lambda: lm.lazy(A) @ lm.lazy(F), A @ F, randn(2000, 3), None
    Xb = randn(64, 32, 32)
    yield "batch 64 x 32x32", lambda: lm.lazy(Xb), Xb, randn(64, 32, 3), None
    U, V = torch.linalg.qr(randn(300, 200))[0], torch.linalg.qr(randn(200, 200))[0]
    Xc = (U * torch.logspace(0, -6, 200, dtype=d)) @ V.mT  # values 1 .. 1e-6, the cut at 1e-3
    yield "near the cut 300x200, rcond=1e-3", lambda: lm.lazy(Xc), Xc, randn(300, 3), 1e-3
    W = randn(200, 300)
    yield "wide full rank 200x300 (always pivoted)", lambda: lm.lazy(W), W, randn(200, 3), None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s); process CPU time, median of {args.rounds} "
          "rounds; ratio = lazymat gelsy / torch's dense gelsy on the formed matrix")
    for name, X, D, B, rcond in cases(g):
        routes = {
            "lazymat gelsy": lambda X=X, B=B, r=rcond: lm.linalg.lstsq(X(), B, rcond=r, driver="gelsy"),
            "torch dense gelsy": lambda D=D, B=B, r=rcond: torch.linalg.lstsq(D, B, rcond=r, driver="gelsy"),
            "lazymat gelsd": lambda X=X, B=B, r=rcond: lm.linalg.lstsq(X(), B, rcond=r, driver="gelsd"),
        }
        lapack_rcond = torch.finfo(D.dtype).eps * max(D.shape[-2:]) if rcond is None else rcond
        if lapack is not None:
            routes["scipy dgelsy (pivots zeroed)"] = lambda D=D, B=B, r=lapack_rcond: scipy_gelsy(D, B, r)
        times = compare(routes, rounds=args.rounds, clock=time.process_time)
        ours = lm.linalg.lstsq(X(), B, rcond=rcond, driver="gelsy").rank.reshape(-1).tolist()
        agree = "" if lapack is None else f", rank = LAPACK's: {ours == scipy_gelsy(D, B, lapack_rcond)}"
        print(f"{name} (lazymat rank {sorted(set(ours))}{agree})")
        for route, t in times.items():
            print(f"  {route:30s} {fmt_time(t):>10s}  {t / times['torch dense gelsy']:6.2f}x")


if __name__ == "__main__":
    main()
