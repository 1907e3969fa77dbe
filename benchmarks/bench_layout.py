"""One gpt2-small QK head, ``W_E @ W_Q @ W_K.T @ W_E.T``: lazymat's svd, svdvals, Frobenius
norm, trace and eigvals against hand-written routes with the same FLOPs whose GEMMs all run in
the fast layout (``W_E @ W`` with both operands as stored), interleaved in one run. Ratio =
lazymat / hand-written (goal: <= 1.05). Caches of the expression and of its leaves are cleared
before every lazymat call.

Run: ``python benchmarks/bench_layout.py [--device cuda] [--quick] [--threads 1] [--small]
[--trace-steps]`` (``--small``: only the table of small GEMMs behind
``lazymat.layout.MIN_LAYOUT_MACS``; ``--trace-steps``: only the trace's two routes); on a shared
machine ``--threads 1`` times each route by this process's CPU time, which other processes
disturb far less than wall time (torch's threads waiting on a busy core cost whole time slices).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm
from lazymat import layout
from lazymat import linalg as LA


def hand_routes(E: torch.Tensor, Q: torch.Tensor, K: torch.Tensor) -> dict:
    def svd():
        Q1, R1 = torch.linalg.qr(E @ Q)
        Q2, R2 = torch.linalg.qr(E @ K)
        Uc, S, Vhc = torch.linalg.svd(R1 @ R2.mT)
        return Q1 @ Uc, S, Vhc @ Q2.mT

    def svdvals():
        R1 = torch.linalg.qr(E @ Q, mode="r")[1]
        R2 = torch.linalg.qr(E @ K, mode="r")[1]
        return torch.linalg.svdvals(R1 @ R2.mT)

    def fro():
        L, RH = E @ Q, E @ K
        return ((L.mT @ L) * (RH.mT @ RH)).sum().sqrt()

    def trace():
        return ((E @ Q) * (E @ K)).sum()

    def eigvals():
        return torch.linalg.eigvals((E @ K).mT @ (E @ Q))

    return {"svd": svd, "svdvals": svdvals, "matrix_norm (fro)": fro, "trace": trace, "eigvals": eigvals}


def stored(m: int, n: int, transposed: bool, g: torch.Generator) -> torch.Tensor:
    """An ``m x n`` matrix stored row-major, or as the transposed view of a row-major one."""
    return torch.randn(n, m, generator=g).mT if transposed else torch.randn(m, n, generator=g)


def gemm_layouts(vocab: int, dev: str, rounds: int, clock) -> None:
    """The table behind :mod:`lazymat.layout`'s rule: ``A (vocab x K) @ B (K x 64)`` with each
    operand stored as is (N) or as a transposed view (T), the result written with the vocabulary
    dim as rows (``A @ B``) or as columns (``(B^T @ A^T)`` row-major), all in one interleaved run."""
    g = torch.Generator().manual_seed(1)
    print(f"GEMM layouts, A ({vocab} x K) @ B (K x 64); time per product (rows: the dim written as rows)")
    for k in (768, 64):
        fns = {}
        for ta, tb in itertools.product((False, True), repeat=2):
            A = stored(vocab, k, ta, g).to(dev)
            B = stored(k, 64, tb, g).to(dev)
            tag = f"A {'T' if ta else 'N'} B {'T' if tb else 'N'}"
            fns[(tag, "vocab")] = lambda A=A, B=B: torch.matmul(A, B)
            fns[(tag, "64")] = lambda A=A, B=B: torch.matmul(B.mT, A.mT)
        t = compare(fns, dev, rounds=rounds, clock=clock)
        tags = list(dict.fromkeys(tag for tag, _ in fns))
        print(f"  K = {k:<4} {'':14}" + "".join(f"{tag:>11}" for tag in tags))
        for rows in ("vocab", "64"):
            print(f"  K = {k:<4} rows {rows:<9}" + "".join(f"{fmt_time(t[(tag, rows)]):>11}" for tag in tags))


def trace_steps(vocab: int, dev: str, rounds: int, clock) -> None:
    """The trace's two routes of equal FLOPs (issue 12 item 2), step by step, interleaved: the
    planner's ``W_E^T (W_E W_K)``, a 768 x 64 result summed over the vocabulary, then one dot
    product with ``W_Q``; and the hand-written route's ``W_E W_Q``, summed over 768, then one dot
    product of two vocabulary x 64 matrices (``tr(A B^T) = sum(A * B)``). On this project's CPU
    the long reduction ran as fast as ``W_E @ W``; on a GPU a 768 x 64 result is few tiles for
    many SMs: this table says whether the planner should prefer the second form there."""
    g = torch.Generator().manual_seed(3)
    E = torch.randn(vocab, 768, generator=g).to(dev)
    Q, K = (torch.randn(768, 64, generator=g).to(dev) for _ in range(2))
    EK = E @ K
    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.dot(a.reshape(-1), b.reshape(-1))

    fns = {"W_E^T @ (W_E W_K)  (sum over vocab)": lambda: torch.mm(E.mT, EK),
           "W_E @ W_Q          (sum over 768)": lambda: torch.mm(E, Q),
           "route: W_E W_K, W_E^T (.), dot W_Q": lambda: dot(Q, torch.mm(E.mT, E @ K)),
           "route: W_E W_Q, W_E W_K, dot": lambda: dot(E @ Q, E @ K)}
    t = compare(fns, dev, rounds=rounds, clock=clock)
    print(f"trace of the QK head, its GEMMs and routes (vocab {vocab})")
    for name, value in t.items():
        print(f"  {name:<38} {fmt_time(value):>9}")


SMALL_SHAPES = [(8, 512, 16), (8, 16, 128), (16, 128, 64), (64, 64, 256), (128, 256, 512),
                (256, 256, 1024), (256, 768, 2048), (64, 768, 4096), (64, 64, 50257), (64, 768, 50257)]


def small_gemms(dev: str, rounds: int, clock) -> None:
    """The table behind :data:`lazymat.layout.MIN_LAYOUT_MACS`: a product wider than tall written
    as asked (``A @ B``) or transposed (``(B^T @ A^T)^T``, the layout rule's form), from a few
    thousand to a few hundred million multiply-adds, interleaved."""
    g = torch.Generator().manual_seed(2)
    print(f"small GEMMs, A (m x k) @ B (k x n), n > m: written as asked vs transposed "
          f"(lazymat.layout.MIN_LAYOUT_MACS = {layout.MIN_LAYOUT_MACS:.3g})")
    for m, k, n in SMALL_SHAPES:
        A = torch.randn(m, k, generator=g).to(dev)
        B = torch.randn(k, n, generator=g).to(dev)
        reps = max(1, min(2000, int(2e7 / (m * k * n))))

        def repeat(f, reps=reps):
            return lambda: [f() for _ in range(reps)]

        t = compare({"asked": repeat(lambda A=A, B=B: torch.matmul(A, B)),
                     "transposed": repeat(lambda A=A, B=B: torch.matmul(B.mT, A.mT).mT)},
                    dev, rounds=rounds, clock=clock)
        print(f"  {m:>4} x {k:>4} x {n:>5} ({m * k * n:9.3g} MACs)  "
              f"as asked {fmt_time(t['asked'] / reps):>9}  "
              f"transposed {fmt_time(t['transposed'] / reps):>9}  ratio {t['transposed'] / t['asked']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="a 4096-token vocabulary, 3 rounds (seconds)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-gemms", action="store_true", help="skip the table of GEMM layouts")
    ap.add_argument("--small", action="store_true", help="only the small-GEMM table (MIN_LAYOUT_MACS)")
    ap.add_argument("--trace-steps", action="store_true", help="only the table of the trace's two routes")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads; 1 also switches the clock to this process's CPU time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_clock = args.device == "cpu" and torch.get_num_threads() == 1
    clock = time.process_time if cpu_clock else time.perf_counter
    dev, rounds = args.device, (3 if args.quick else args.rounds)
    if args.small:
        small_gemms(dev, rounds, clock)
        return
    vocab = 4096 if args.quick else 50257
    if args.trace_steps:
        trace_steps(vocab, dev, rounds, clock)
        return
    g = torch.Generator().manual_seed(0)
    Ed = (torch.randn(vocab, 768, generator=g) * 0.1).to(dev)
    Qd = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
    Kd = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
    leaves = [lm.lazy(Ed, name="W_E"), lm.lazy(Qd, name="W_Q"), lm.lazy(Kd, name="W_K")]
    E, Q, K = leaves
    qk = E @ Q @ K.T @ E.T
    ops = {"svd": LA.svd, "svdvals": LA.svdvals, "matrix_norm (fro)": LA.matrix_norm, "trace": LA.trace,
           "eigvals": LA.eigvals}
    timing = "CPU" if cpu_clock else "wall"
    print(f"gpt2-small QK head ({vocab} x {vocab}, rank 64) on {device_name(dev)}; torch "
          f"{torch.__version__}; median of {rounds} rounds, interleaved, {timing} time; "
          "ratio = lazymat / hand-written")
    for name, hand in hand_routes(Ed, Qd, Kd).items():
        def lazy_call(op=ops[name]):
            qk.clear_cache()  # the expression's and its leaves' caches
            return op(qk)
        t = compare({"lazymat": lazy_call, "hand": hand}, dev, rounds=rounds, clock=clock)
        print(f"  {name:<18} lazymat {fmt_time(t['lazymat']):>9}  hand-written {fmt_time(t['hand']):>9}  "
              f"ratio {t['lazymat'] / t['hand']:.2f}")
    if not args.no_gemms:
        gemm_layouts(vocab, dev, rounds, clock)
        trace_steps(vocab, dev, rounds, clock)


if __name__ == "__main__":
    main()
