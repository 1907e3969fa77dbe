"""Both tall sides of a QK circuit's factored spectrum factorised one after the other or as one
stacked batch (``lm.config(qr_sides="separate" | "stacked")``, issue 12 item 5): lazymat's
``svd`` and ``svdvals`` of one head's full QK circuit ``W_E W_Q W_K^T W_E^T`` (a fresh
expression per call: the compiled call) and of a batch of heads sharing ``W_E`` (the general
path), timed round-robin in one process so that drift hits both routes alike; ratio = stacked /
separate (below 1: the stack is faster), with each route's torch calls (compute / view
dispatches) counted once. Under the default ``qr="auto"`` (CholeskyQR on CUDA; on the CPU by
factor size) and, with ``--qr``, a route forced. The GPU session runs this to pick
``qr_sides="auto"``'s default per device.

Run: ``python benchmarks/bench_stacked_sides_gpu33.py [--device cuda|cpu] [--vocab 50257 ...]
[--heads 12] [--qr auto|cholesky|householder] [--threads N] [--quick]``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import compare  # noqa: E402

VIEWS = {"view", "transpose", "t", "as_strided", "slice", "select", "permute", "expand", "unsqueeze",
         "squeeze", "alias", "reshape", "diagonal", "detach", "_unsafe_view", "unbind"}


class Calls(TorchDispatchMode):
    """Torch calls by kind: a compute call is a kernel launch on a GPU, a view only a dispatch."""

    def __init__(self):
        super().__init__()
        self.n = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n["view" if func.__name__.split(".")[0] in VIEWS else "compute"] += 1
        return func(*args, **(kwargs or {}))


def weights(vocab: int, heads: int, dev: str):
    """GPT-2-shaped ``W_E (vocab x 768)`` and ``W_Q``, ``W_K`` (``heads x 768 x 64``), seed 0."""
    g = torch.Generator().manual_seed(0)
    E = (torch.randn(vocab, 768, generator=g) * 0.1).to(dev)
    Wq = (torch.randn(heads, 768, 64, generator=g) * 768**-0.5).to(dev)
    Wk = (torch.randn(heads, 768, 64, generator=g) * 768**-0.5).to(dev)
    return E, Wq, Wk


def call(E, Wq, Wk, op, mode):
    """``op`` of the circuit under ``qr_sides=mode``, from a fresh expression (new leaves)."""

    def run():
        with lm.config(qr_sides=mode):
            e = lm.lazy(E)
            X = e @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ e.mT
            return LA.svd(X) if op == "svd" else LA.svdvals(X)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab", type=int, nargs="*", default=None)
    p.add_argument("--heads", type=int, default=12, help="the batch of heads (1: one head only)")
    p.add_argument("--qr", default="auto", choices=["auto", "cholesky", "householder"])
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    p.add_argument("--threads", type=int, default=None,
                   help="torch's CPU threads; with 1 on the CPU, the process's CPU time is measured")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cpu_time = a.device == "cpu" and torch.get_num_threads() == 1
    vocabs = a.vocab or ([4096] if a.quick else [4096, 50257])
    rounds = 3 if a.quick else 9
    dev = a.device
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"QK circuit sides, separate vs stacked QR (lazymat qr={a.qr!r}), on {dev} ({name}); "
          f"ratio = stacked / separate" + ("; process CPU time" if cpu_time else ""))
    with lm.config(qr=a.qr):
        for vocab in vocabs:
            E, Wq, Wk = weights(vocab, a.heads, dev)
            cases = [("1 head", Wq[0], Wk[0])]
            if a.heads > 1 and not a.quick:
                cases.append((f"{a.heads} heads", Wq, Wk))
            for what, q, k in cases:
                for op in ("svd", "svdvals"):
                    fns = {mode: call(E, q, k, op, mode) for mode in ("separate", "stacked")}
                    counts = {}
                    for mode, fn in fns.items():
                        fn()  # (compiles the structure's call)
                        with Calls() as c:
                            fn()
                        counts[mode] = f"{c.n['compute']}+{c.n['view']}v"
                    t = compare(fns, dev, rounds=rounds, min_time=0.05,
                                clock=time.process_time if cpu_time else time.perf_counter)
                    print(f"  vocab {vocab:6d} {what:9s} {op:8s} separate {t['separate'] * 1e3:8.3f} ms "
                          f"({counts['separate']:>8s} calls)  stacked {t['stacked'] * 1e3:8.3f} ms "
                          f"({counts['stacked']:>8s} calls)  ratio {t['stacked'] / t['separate']:.3f}")


if __name__ == "__main__":
    main()
