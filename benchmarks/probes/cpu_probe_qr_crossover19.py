"""Householder against CholeskyQR on the CPU over factor sizes (the ``qr="auto"`` rule picks
Householder on every CPU factor): median of 7 calls of ``lazymat.qr.qr`` under each route, mode
``r`` and ``reduced``, 1024-65536 rows x 16-128 columns, float32, torch's threads as set.

Run: ``python benchmarks/probes/cpu_probe_qr_crossover19.py`` (quiet machine).
"""
import statistics
import time

import torch

import lazymat as lm
from lazymat import qr as Q

g=torch.Generator().manual_seed(0)
def t(f, reps=7):
    f(); f()
    ts=[]
    for _ in range(reps):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    return statistics.median(ts)
print("threads", torch.get_num_threads())
for n in (16, 64, 128):
    for m in (1024, 4096, 8192, 16384, 32768, 65536):
        A=torch.randn(m,n,generator=g)
        row=[]
        for mode in ("r","reduced"):
            with lm.config(qr="householder"): h=t(lambda: Q.qr(A,mode))
            with lm.config(qr="cholesky"): c=t(lambda: Q.qr(A,mode))
            row.append(f"{mode:7s} H {h*1e3:7.3f} C {c*1e3:7.3f} ratio {c/h:5.2f}")
        print(f"{m:6d}x{n:<4d} {m*n*4/2**20:6.2f} MiB  " + "   ".join(row))
