"""Where the host's time goes in a compiled factored ``svd`` on a GPU machine, phase by phase
(issue 12 item 5): each phase of ``linalg.compiled._compile_factored``'s run timed on the host
(wrapped functions, the device synchronised before and after each call), for a small vocabulary
(the GPU idle: host time only), against the hand-written route's same phases.

Run: ``python benchmarks/probes/gpu_probe_phases19.py [vocab]``.
"""

import collections
import sys
import time

import torch
from _qk19 import qk_weights

import lazymat as lm
from lazymat import linalg as LA
from lazymat.linalg import _common, compiled, spectrum

vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
dev = "cuda"
spent = collections.defaultdict(float)


def timed(name, fn):
    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        spent[name] += time.perf_counter() - t
        return out
    return wrapper


_common.tall_qr = timed("tall_qr (x2)", _common.tall_qr)
spectrum.placed_core = timed("placed_core (read)", spectrum.placed_core)
spectrum.host_decomposition = timed("host svd", spectrum.host_decomposition)
compiled._to_device = timed("to device", compiled._to_device)
E, Wq, Wk = qk_weights(vocab, dev)
X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT
for op in (LA.svd, LA.svdvals):
    compiled._CALLS.clear()
    for _ in range(10):
        X.clear_cache()
        op(X)
    spent.clear()
    n = 50
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        X.clear_cache()
        op(X)
    torch.cuda.synchronize()
    total = (time.perf_counter() - t) / n
    print(f"{op.__name__}: {total * 1e3:.3f} ms per call (synchronised phases; vocab {vocab})")
    for k, v in spent.items():
        print(f"  {k:22} {v / n * 1e3:.3f} ms")
    print(f"  {'rest':22} {(total - sum(spent.values()) / n) * 1e3:.3f} ms")
A = torch.randn(64, 64)
for name, f in (("cpu svd 64 (16 thr)", lambda: torch.linalg.svd(A, full_matrices=False)),
                ("cpu svdvals 64", lambda: torch.linalg.svdvals(A))):
    for threads in (16, 1):
        torch.set_num_threads(threads)
        for _ in range(10):
            f()
        t = time.perf_counter()
        for _ in range(100):
            f()
        print(f"  {name} threads {threads}: {(time.perf_counter() - t) / 100 * 1e3:.3f} ms")
torch.set_num_threads(16)
x = torch.randn(64, 64, device=dev)
for name, f in (("tiny launch (add)", lambda: x.add(1)), ("d2h 16 KB", lambda: x.cpu()),
                ("cholesky_ex 64", lambda: torch.linalg.cholesky_ex(x @ x.mT, upper=True)),
                ("cat 10 parts", lambda: torch.cat([x.reshape(-1)] * 10))):
    for _ in range(10):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200):
        f()
    torch.cuda.synchronize()
    print(f"  {name}: {(time.perf_counter() - t) / 200 * 1e6:.1f} us")
