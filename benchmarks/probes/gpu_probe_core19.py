"""Where a small core's SVD should run when the expression lives on a GPU (issue 12 item 5):
each route's wall time and accuracy for 64 x 64 and 128 x 128 cores (graded singular values
1..1e-12 and Gaussian), float32 and float64: cuSOLVER's drivers (default, gesvd, gesvdj,
gesvda), the host round trip (torch, numpy, scipy; 1 thread and all), and the whole QK ``svd``
and ``svdvals`` under ``lm.config(small_cores=...)``; also the host's own speed (a QK circuit
with a small vocabulary, where the GPU has almost nothing to do).

Run: ``python benchmarks/probes/gpu_probe_core19.py`` on a GPU machine.
"""

import os

import numpy as np
import scipy.linalg as sl
import torch
from _qk19 import median_time

import lazymat as lm
from lazymat import linalg as LA

dev = os.environ.get("DEV", "cuda")



def timeit(f):
    return median_time(f, dev, repeat=21, warmup=3) * 1e3


def graded(n, lo, seed):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.logspace(0, lo, n, dtype=torch.float64)
    return (U * s) @ V.mT


def host(fn):
    def f(A):
        out = fn(A.cpu())
        return tuple(o.to(dev) for o in out)
    return f


def np_svd(A):
    u, s, vh = np.linalg.svd(A.numpy(), full_matrices=False)
    return torch.from_numpy(u), torch.from_numpy(s), torch.from_numpy(vh)


def sp_svd(driver):
    def f(A):
        u, s, vh = sl.svd(A.numpy(), full_matrices=False, check_finite=False, lapack_driver=driver)
        return torch.from_numpy(u), torch.from_numpy(s), torch.from_numpy(vh)
    return f


def jw_eigh(A):
    n = A.shape[-1]
    Z = torch.zeros(2 * n, 2 * n, dtype=A.dtype, device=A.device)
    Z[:n, n:] = A
    Z[n:, :n] = A.mH
    w, V = torch.linalg.eigh(Z)
    w, V = w.flip(-1)[:n], V.flip(-1)[:, :n]
    return V[:n] * 2**0.5, w, (V[n:] * 2**0.5).mH


def gram64(A):
    # float64 Gram of the core, eigh there: values only meaningful for a float32 core
    G = A.double().mH @ A.double()
    w, V = torch.linalg.eigh(G)
    s = w.flip(-1).clamp_min(0).sqrt()
    V = V.flip(-1)
    return None, s.to(A.dtype), V.mH.to(A.dtype)


print(torch.__version__, torch.cuda.get_device_name() if dev == "cuda" else "cpu", "host threads", torch.get_num_threads())
print(torch.__config__.show().splitlines()[3:6])
variants = {
    "gpu svd default": lambda A: torch.linalg.svd(A, full_matrices=False),
    "gpu svd gesvd": lambda A: torch.linalg.svd(A, full_matrices=False, driver="gesvd"),
    "gpu svd gesvdj": lambda A: torch.linalg.svd(A, full_matrices=False, driver="gesvdj"),
    "gpu svd gesvda": lambda A: torch.linalg.svd(A, full_matrices=False, driver="gesvda"),
    "gpu svdvals default": lambda A: (None, torch.linalg.svdvals(A), None),
    "gpu svdvals gesvdj": lambda A: (None, torch.linalg.svdvals(A, driver="gesvdj"), None),
    "gpu JW eigh": jw_eigh,
    "gpu eigvalsh JW": lambda A: (None, torch.linalg.eigvalsh(torch.cat([torch.cat([torch.zeros_like(A), A], 1), torch.cat([A.mH, torch.zeros_like(A)], 1)], 0)).flip(-1)[:A.shape[-1]], None),
    "gpu gram f64 eigh": gram64,
    "host torch svd": host(lambda A: torch.linalg.svd(A, full_matrices=False)),
    "host torch svdvals": host(lambda A: (torch.linalg.svdvals(A),)),
    "host numpy svd": host(np_svd),
    "host scipy gesdd": host(sp_svd("gesdd")),
    "host scipy gesvd": host(sp_svd("gesvd")),
}
for r in (64, 128):
    for dt in (torch.float32, torch.float64):
        for kind in ("graded", "gauss"):
            A64 = graded(r, -12, r) if kind == "graded" else torch.randn(r, r, generator=torch.Generator().manual_seed(r), dtype=torch.float64)
            A = A64.to(dt).to(dev)
            ref = torch.linalg.svdvals(A.cpu().double())
            print(f"== core {r}x{r} {dt} {kind}  (err: max |S - S_ref| / S_ref[0]; orth: ||U^H U - I||, rec: ||U S Vh - A|| / ||A||)")
            for name, fn in variants.items():
                for threads in ((1, 16) if name.startswith("host torch") else (None,)):
                    if threads:
                        torch.set_num_threads(threads)
                    try:
                        out = fn(A)
                        ms = timeit(lambda: fn(A))
                    except Exception as e:  # noqa: BLE001
                        print(f"  {name:22} failed: {type(e).__name__}: {str(e)[:80]}")
                        continue
                    S = out[1] if len(out) > 1 else out[0]
                    err = float((S.double().cpu() - ref).abs().max() / ref[0])
                    extra = ""
                    if len(out) == 3 and out[0] is not None:
                        U, Vh = out[0].double().cpu(), out[2].double().cpu()
                        orth = float(torch.linalg.matrix_norm(U.mH @ U - torch.eye(r, dtype=torch.float64)))
                        rec = float(torch.linalg.matrix_norm((U * S.double().cpu()) @ Vh - A.cpu().double()) / torch.linalg.matrix_norm(A.cpu().double()))
                        extra = f"  orth {orth:.1e}  rec {rec:.1e}"
                    tag = f"{name} ({threads} thr)" if threads else name
                    print(f"  {tag:26} {ms:7.3f} ms  err {err:.1e}{extra}")
            torch.set_num_threads(16)

# whole QK circuit
g = torch.Generator().manual_seed(0)
for vocab in (50257, 1024):
    E = (torch.randn(vocab, 768, generator=g) * 0.1).to(dev)
    Wq = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
    Wk = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
    X = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT

    def call(op, X=X):
        def f():
            X.clear_cache()
            return op(X)
        return f
    print(f"== QK circuit vocab {vocab}")
    for placement in ("auto", "device", "cpu"):
        with lm.config(small_cores=placement):
            for name, op in (("svd", LA.svd), ("svdvals", LA.svdvals)):
                print(f"  small_cores={placement:7} {name:8} {timeit(call(op)):7.3f} ms")
    hand = {"E@Wq": lambda: E @ Wq, "qr r (householder)": lambda: torch.linalg.qr(E @ Wq, mode="r")}
    for k, f in hand.items():
        print(f"  {k:28} {timeit(f):7.3f} ms")
