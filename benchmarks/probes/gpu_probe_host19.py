"""Where the host's time goes in a QK ``svd`` on a GPU machine (issue 12 item 5): with a small
vocabulary the GPU has almost nothing to do, so the wall time is the host's. Compares lazymat's
``svd``/``svdvals`` with a straight-line hand-written copy of the same route (two products, two
queued CholeskyQR2, the core, one copy to the host, the host SVD, one copy back, two GEMMs), then
profiles lazymat's call (cProfile by own time; torch.profiler by CPU self time).

Run: ``python benchmarks/probes/gpu_probe_host19.py [vocab]``.
"""

import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import torch

import lazymat as lm
from lazymat import linalg as LA

dev = os.environ.get("DEV", "cuda")
vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 1024


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timeit(f, n=31, warm=5):
    for _ in range(warm):
        f()
    sync()
    ts = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        f()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


g = torch.Generator().manual_seed(0)
E = (torch.randn(vocab, 768, generator=g) * 0.1).to(dev)
Wq = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
Wk = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT


def cholqr2(A, with_q):
    R0, i0 = torch.linalg.cholesky_ex(A.mT @ A, upper=True)
    X1 = torch.linalg.solve_triangular(R0, A, upper=True, left=False)
    R1, i1 = torch.linalg.cholesky_ex(X1.mT @ X1, upper=True)
    Q = torch.linalg.solve_triangular(R1, X1, upper=True, left=False) if with_q else None
    return Q, R1 @ R0


def hand(vectors):
    def f():
        Q1, R1 = cholqr2(E @ Wq, vectors)
        Q2, R2 = cholqr2(E @ Wk, vectors)
        core = (R1 @ R2.mT).cpu()
        if not vectors:
            return torch.linalg.svdvals(core).to(dev)
        U, S, Vh = torch.linalg.svd(core, full_matrices=False)
        U, S, Vh = U.to(dev), S.to(dev), Vh.to(dev)
        return Q1 @ U, S, Vh @ Q2.mT
    return f


def lz(op):
    def f():
        X.clear_cache()
        return op(X)
    return f


print(f"vocab {vocab} on {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}, torch {torch.__version__}")
fns = {"lazymat svd": lz(LA.svd), "hand svd": hand(True), "lazymat svdvals": lz(LA.svdvals),
       "hand svdvals": hand(False), "lazymat fro": lz(LA.matrix_norm), "lazymat trace": lz(LA.trace),
       "host svd 64": lambda: torch.linalg.svd(torch.randn(64, 64), full_matrices=False),
       "host svdvals 64": lambda: torch.linalg.svdvals(torch.randn(64, 64))}
for k, f in fns.items():
    print(f"  {k:18} {timeit(f):7.3f} ms")
for name in ("lazymat svd", "lazymat svdvals"):
    f = fns[name]
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(50):
        f()
    sync()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(35)
    print(f"== cProfile {name} (50 calls)\n" + s.getvalue()[-9000:])
if dev == "cuda":
    from torch.profiler import ProfilerActivity, profile
    f = fns["lazymat svd"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            f()
        sync()
    print("== torch.profiler lazymat svd (10 calls), CPU self time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=50))
