"""The 64x64 core's SVD by cuSOLVER driver against the CPU (issue 12 item 5), and llama-3-8b-like
``eigvals`` of all 1024 full OV circuits (issue 12 item 6) end to end, against its parts timed
alone (the GEMMs, the core's copy to the host, the split CPU eigensolves) with profiles.

Run: ``python benchmarks/probes/gpu_probe_cores.py`` on a CUDA machine (~12 GiB of weights).
Output: benchmarks/results/h100-eigvals-placement.txt (second part).
"""

import statistics
import time

import torch

import lazymat as lm
from lazymat import linalg as LA

dev = "cuda"


def timeit(f, n=10, warm=2):
    for _ in range(warm):
        f()
        torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


C = torch.randn(64, 64, device=dev)
for drv in (None, "gesvd", "gesvdj", "gesvda"):
    try:
        print(f"svd 64 driver={drv}: {timeit(lambda: torch.linalg.svd(C, driver=drv)) * 1e3:.3f} ms")
        print(f"svdvals 64 driver={drv}: {timeit(lambda: torch.linalg.svdvals(C, driver=drv)) * 1e3:.3f} ms")
    except Exception as e:
        print(drv, "failed", e)
C2 = torch.randn(2, 64, 64, device=dev)
print(f"svd 2x64 batched default: {timeit(lambda: torch.linalg.svd(C2)) * 1e3:.3f} ms")
c = C.cpu()
print(f"cpu svd 64: {timeit(lambda: torch.linalg.svd(c)) * 1e3:.3f} ms  threads {torch.get_num_threads()}")
torch.set_num_threads(1)
print(
    f"cpu svd 64 1thr: {timeit(lambda: torch.linalg.svd(c)) * 1e3:.3f} ms; svdvals {timeit(lambda: torch.linalg.svdvals(c)) * 1e3:.3f} ms"
)
cd = c.double()
print(f"cpu svd 64 f64 1thr: {timeit(lambda: torch.linalg.svd(cd)) * 1e3:.3f} ms")
import numpy as np

cn = c.numpy()
print(f"numpy svd 64: {timeit(lambda: np.linalg.svd(cn)) * 1e3:.3f} ms")
torch.set_num_threads(16)

g = torch.Generator(device=dev).manual_seed(0)
layers, heads, d_model, d_head, vocab = 32, 32, 4096, 128, 128256


def w(*shape, scale):
    return torch.randn(*shape, device=dev, generator=g) * scale


W_V, W_O = (
    w(layers, heads, d_model, d_head, scale=d_model**-0.5),
    w(layers, heads, d_head, d_model, scale=d_head**-0.5),
)
W_E, W_U = w(vocab, d_model, scale=0.02), w(d_model, vocab, scale=0.02)
f = lambda: LA.eigvals(lm.lazy(W_E) @ lm.lazy(W_V) @ lm.lazy(W_O) @ lm.lazy(W_U))
for i in range(2):
    torch.cuda.synchronize()
    t = time.perf_counter()
    f()
    torch.cuda.synchronize()
    print(f"llama OV eigvals run {i}: {time.perf_counter() - t:.3f} s")


# hand: GEMMs alone
def gemms():
    M = W_U @ W_E
    return (W_O @ M) @ W_V


print(f"GEMMs alone: {timeit(gemms, n=3, warm=1):.3f} s")
core = gemms()
from lazymat.cpu_batches import split_batch

print(f"core d2h: {timeit(lambda: core.cpu(), n=3, warm=1):.3f} s")
cc = core.cpu()
print(f"split eig of 1024 cores: {timeit(lambda: split_batch(torch.linalg.eigvals, cc), n=3, warm=1):.3f} s")
from torch.profiler import ProfilerActivity, profile

with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    f()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=50))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50))
import cProfile
import pstats

pr = cProfile.Profile()
pr.enable()
f()
torch.cuda.synchronize()
pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
