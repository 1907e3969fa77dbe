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
import sys

import torch
from _qk19 import hand_svd, median_time, qk_weights, sync

import lazymat as lm
from lazymat import linalg as LA

dev = os.environ.get("DEV", "cuda")
vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 1024




E, Wq, Wk = qk_weights(vocab, dev)
X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT


def hand(vectors):
    return lambda: hand_svd(E, Wq, Wk, vectors)


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
    print(f"  {k:18} {median_time(f, dev, repeat=31, warmup=5) * 1e3:7.3f} ms")
for name in ("lazymat svd", "lazymat svdvals"):
    f = fns[name]
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(50):
        f()
    sync(dev)
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
        sync(dev)
    print("== torch.profiler lazymat svd (10 calls), CPU self time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=50))
