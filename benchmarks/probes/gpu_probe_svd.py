"""Where a full-QK ``svd``/``svdvals`` spends its time on a GPU (issue 12 item 5): the five
single-head operations' wall medians, each stage timed alone (the factors' GEMMs, Householder
and CholeskyQR, the Gram, Cholesky, triangular solve, the 64x64 core's SVD on the GPU or
through the host), the device reads of one call (``torch.cuda.set_sync_debug_mode``), and a
``torch.profiler`` table of five calls. Caches are cleared before every lazymat call.

Run: ``python benchmarks/probes/gpu_probe_svd.py`` (``DEV=cpu VOCAB=2000`` for a smoke run here;
``QUICK=1``: the wall medians only). Output: benchmarks/results/h100-svd-probe.txt.
"""

import statistics
import time
import warnings

import torch

import lazymat as lm


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def setdbg(m):
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(m)


import os

from lazymat import linalg as LA
from lazymat import qr as lqr

dev = os.environ.get("DEV", "cuda")
g = torch.Generator().manual_seed(0)
vocab, d, h = int(os.environ.get("VOCAB", 50257)), 768, 64
E = (torch.randn(vocab, d, generator=g) * 0.1).to(dev)
Wq = (torch.randn(d, h, generator=g) * d**-0.5).to(dev)
Wk = (torch.randn(d, h, generator=g) * d**-0.5).to(dev)
X = lm.lazy(E, name="W_E") @ lm.lazy(Wq, name="W_Q") @ lm.lazy(Wk, name="W_K").mT @ lm.lazy(E, name="W_E").mT


def timeit(f, n=15, warm=3):
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
    return statistics.median(ts)


def lz(op):
    def f():
        X.clear_cache()
        return op(X)

    return f


ops = {
    "svd": lambda X: LA.svd(X),
    "svdvals": lambda X: LA.svdvals(X),
    "fro": lambda X: LA.matrix_norm(X),
    "trace": lambda X: X.trace() if hasattr(X, "trace") else torch.trace(X),
    "eigvals": lambda X: LA.eigvals(X),
}


def hand_svd():
    Q1, R1 = torch.linalg.qr(E @ Wq)
    Q2, R2 = torch.linalg.qr(E @ Wk)
    Uc, S, Vhc = torch.linalg.svd(R1 @ R2.mT)
    return Q1 @ Uc, S, Vhc @ Q2.mT


print("== wall medians (ms)")
for k, op in ops.items():
    try:
        print(f"  {k:8s} {timeit(lz(op)) * 1e3:8.3f}", flush=True)
    except Exception as e:
        print("  ", k, "failed", repr(e)[:200])
print(f"  hand svd (householder, gpu core) {timeit(hand_svd) * 1e3:8.3f}")

if os.environ.get("QUICK"):
    print(lm.__file__)
    raise SystemExit
# stages
L = E @ Wq
RH = E @ Wk
print("== stages (ms)")
print(f"  form E@Wq           {timeit(lambda: E @ Wq) * 1e3:8.3f}")
print(f"  form (E@Wq) via mT  {timeit(lambda: Wq.mT @ E.mT) * 1e3:8.3f}")
print(f"  householder qr red  {timeit(lambda: torch.linalg.qr(L)) * 1e3:8.3f}")
print(f"  householder qr r    {timeit(lambda: torch.linalg.qr(L, mode='r')) * 1e3:8.3f}")
print(f"  lazymat qr red      {timeit(lambda: lqr.qr(L)) * 1e3:8.3f}")
print(f"  lazymat qr r        {timeit(lambda: lqr.qr(L, mode='r')) * 1e3:8.3f}")
print(f"  gram L^T L          {timeit(lambda: L.mT @ L) * 1e3:8.3f}")
G = L.mT @ L
print(f"  cholesky_ex 64      {timeit(lambda: torch.linalg.cholesky_ex(G, upper=True)) * 1e3:8.3f}")
R = torch.linalg.cholesky(G, upper=True)
print(
    f"  cholesky_ex + sync  {timeit(lambda: bool(torch.linalg.cholesky_ex(G, upper=True)[1].any())) * 1e3:8.3f}"
)
print(
    f"  solve_triangular    {timeit(lambda: torch.linalg.solve_triangular(R, L, upper=True, left=False)) * 1e3:8.3f}"
)
Ri = torch.linalg.inv(R)
print(f"  inv(R) 64           {timeit(lambda: torch.linalg.inv(R)) * 1e3:8.3f}")
print(
    f"  solve_tri eye 64    {timeit(lambda: torch.linalg.solve_triangular(R, torch.eye(64, device=dev), upper=True)) * 1e3:8.3f}"
)
print(f"  L @ inv(R)          {timeit(lambda: L @ Ri) * 1e3:8.3f}")
C = torch.randn(64, 64, device=dev)
print(f"  svd 64 gpu          {timeit(lambda: torch.linalg.svd(C)) * 1e3:8.3f}")
print(f"  svdvals 64 gpu      {timeit(lambda: torch.linalg.svdvals(C)) * 1e3:8.3f}")


def rt_svd():
    c = C.cpu()
    u, s, v = torch.linalg.svd(c)
    return u.to(dev), s.to(dev), v.to(dev)


print(f"  svd 64 cpu roundtrip {timeit(rt_svd) * 1e3:8.3f}")


def rt_svd1():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = C.cpu()
        u, s, v = torch.linalg.svd(c)
        return u.to(dev), s.to(dev), v.to(dev)
    finally:
        torch.set_num_threads(n)


print(f"  svd 64 cpu rt 1thr  {timeit(rt_svd1) * 1e3:8.3f}")
print(f"  d2h 64x64           {timeit(lambda: C.cpu()) * 1e3:8.3f}")
print(f"  U = Q@Uc            {timeit(lambda: L @ C) * 1e3:8.3f}")
print(f"  sync alone          {timeit(lambda: sync()) * 1e3:8.3f}")

# syncs per call
for k in ("svd", "svdvals", "eigvals"):
    X.clear_cache()
    setdbg("warn")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ops[k](X)
    setdbg(0)
    print(f"== syncs in one {k}: {len(w)}")
    for x in w[:12]:
        print("    ", str(x.message)[:100], x.filename.split("/")[-1], x.lineno)

from torch.profiler import ProfilerActivity, profile

for k in ("svd", "svdvals"):
    for _ in range(3):
        lz(ops[k])()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            lz(ops[k])()
        sync()
    print(f"== profile {k} (5 calls)")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))
print(lm.explain(X, "svd"))
