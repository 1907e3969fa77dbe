"""Placement and method for many small non-symmetric eigenvalue problems (issue 12 item 6):
1024 float32 128x128 cores, per-matrix LAPACK times (torch, numpy, scipy's geev and its
Hessenberg step), the batch split across threads (lazymat.cpu_batches) at 8/16/32 threads,
numpy and scipy in a thread pool, float64, the GPU's own ``eigvals``, and the round trip.

Run: ``python benchmarks/probes/gpu_probe_eigvals.py`` on a GPU machine (``NB=64`` for a smoke run on the
CPU; the GPU rows then fail). Output: benchmarks/results/h100-eigvals-placement.txt.
"""

import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lazymat.cpu_batches import one_intra_op_thread, split_batch

print(
    "cpu_count",
    os.cpu_count(),
    "torch threads",
    torch.get_num_threads(),
    "affinity",
    len(os.sched_getaffinity(0)),
)
print(
    subprocess.run(
        "lscpu | egrep 'Model name|Thread|Core|Socket|NUMA node0|L2|L3'",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout
)
print(torch.__config__.parallel_info())
B, n = int(os.environ.get("NB", 1024)), 128
g = torch.Generator().manual_seed(0)
A = torch.randn(B, n, 512, generator=g) / 512**0.5
Bm = torch.randn(B, 512, n, generator=g) / 512**0.5
cores = (A @ Bm).contiguous()  # rank-n products, like R @ L cores
ref = None


def t1(f, n=3):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


small = cores[:64]
print(
    f"per-matrix serial 1thr (64 mats): torch f32 {t1(lambda: [torch.linalg.eigvals(c) for c in small] if torch.set_num_threads(1) is None else 0) / 64 * 1e3:.3f} ms"
)
torch.set_num_threads(os.cpu_count())
nt = torch.get_num_threads()
with one_intra_op_thread():
    print(
        f"  torch f64 per matrix {t1(lambda: [torch.linalg.eigvals(c) for c in small.double()]) / 64 * 1e3:.3f} ms"
    )
    print(
        f"  numpy f32 per matrix {t1(lambda: [np.linalg.eigvals(c) for c in small.numpy()]) / 64 * 1e3:.3f} ms"
    )
    print(
        f"  numpy f64 per matrix {t1(lambda: [np.linalg.eigvals(c) for c in small.double().numpy()]) / 64 * 1e3:.3f} ms"
    )
    try:
        import scipy.linalg as sla
        import scipy.linalg.lapack as sl

        a32 = small.numpy()
        print(
            f"  scipy sgeev per matrix {t1(lambda: [sl.sgeev(c, compute_vl=0, compute_vr=0) for c in a32]) / 64 * 1e3:.3f} ms"
        )
        print(f"  scipy sgehrd per matrix {t1(lambda: [sl.sgehrd(c) for c in a32]) / 64 * 1e3:.3f} ms")
        hs = [np.triu(sl.sgehrd(c)[0], -1) for c in a32]
        print(
            f"  scipy shseqr per matrix {t1(lambda: [sl.shseqr(h, job='E', compz='N') if hasattr(sl, 'shseqr') else 0 for h in hs]) / 64 * 1e3:.3f} ms  has={hasattr(sl, 'shseqr')}"
        )
        print(
            f"  scipy eigvals(hess) per matrix {t1(lambda: [sla.eigvals(h, check_finite=False, overwrite_a=False) for h in hs]) / 64 * 1e3:.3f} ms"
        )
    except Exception as e:
        print("scipy failed", e)

for threads in (8, 16, 32):
    print(
        f"lazymat split_batch threads={threads}: {t1(lambda: split_batch(torch.linalg.eigvals, cores, threads=threads)) * 1e3:.1f} ms"
    )


def split1t(th):
    with one_intra_op_thread():
        return split_batch(torch.linalg.eigvals, cores, threads=th)


print(f"split 1t global 16: {t1(lambda: split1t(16)) * 1e3:.1f} ms")
print(
    f"split f64 16: {t1(lambda: split_batch(torch.linalg.eigvals, cores.double(), threads=16)) * 1e3:.1f} ms"
)
pool = ThreadPoolExecutor(32)
an = cores.numpy()
for th in (16, 32):
    chunks = np.array_split(an, th)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            print(f"numpy threads={th}: {t1(lambda: list(pool.map(np.linalg.eigvals, chunks))) * 1e3:.1f} ms")
    except Exception as e:
        print("numpy threads failed", e)
    try:
        import scipy.linalg.lapack as sl

        def sg(ch):
            return [sl.sgeev(c, compute_vl=0, compute_vr=0)[:2] for c in ch]

        with threadpool_limits(1):
            print(f"scipy sgeev threads={th}: {t1(lambda: list(pool.map(sg, chunks))) * 1e3:.1f} ms")
    except Exception as e:
        print("scipy threads failed", e)

# GPU side
cg = cores.cuda()
torch.cuda.synchronize()
t = time.perf_counter()
torch.linalg.eigvals(cg[:32])
torch.cuda.synchronize()
print(f"gpu eigvals 32 mats: {(time.perf_counter() - t) * 1e3:.1f} ms")


def rt():
    c = cg.cpu()
    e = split_batch(torch.linalg.eigvals, c, threads=16)
    return e.cuda()


print(f"gpu->cpu split->gpu 1024: {t1(rt) * 1e3:.1f} ms")
print(f"d2h 1024x128x128: {t1(lambda: cg.cpu()) * 1e3:.1f} ms")
