"""Top-k (k=10) of every row of GPT-2 small's full QK circuit ``W_E W_Q W_K^T W_E^T``
(50257 x 50257, 10 GB in float32) under a memory budget, never forming the matrix.

Reported, in one run:
- the streamed ``torch.topk(X, 10, dim=-1)`` time (median of ``--repeat`` runs);
- the time the GEMMs alone would take: the ``V x 64 x V`` FLOPs at this machine's GEMM
  throughput, measured in the same run on the streamed blocks' own shape (``(rows, 64) @ (64, V)``);
- their ratio (the issue's target: within 2x);
- peak RSS growth (CPU) or peak allocated memory (CUDA) of the call, in a fresh child process,
  against the budget (target: at most the budget);
- a check of a few rows against eager torch;
- the acceptance verdict of issue 11 (memory within the budget, time within 2x of the GEMMs);
  a full run that misses it exits with status 1.

Weights are random (``W_E`` 50257 x 768, ``W_Q``/``W_K`` 768 x 64, float32). Run:
``python benchmarks/bench_topk.py [--quick] [--vocab V] [--budget 1GiB] [--device cuda]``;
``--quick`` uses a 5000-token vocabulary and a 64 MiB budget (seconds).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import torch
from _harness import device_name, fmt_time, median_time, peak_rss_bytes, rss_bytes, sync

import lazymat as lm
from lazymat import settings

D_MODEL, D_HEAD, K = 768, 64, 10


def weights(vocab: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"W_E": (torch.randn(vocab, D_MODEL, generator=g) * D_MODEL**-0.5).to(device),
            "W_Q": (torch.randn(D_MODEL, D_HEAD, generator=g) * D_MODEL**-0.5).to(device),
            "W_K": (torch.randn(D_MODEL, D_HEAD, generator=g) * D_MODEL**-0.5).to(device)}


def full_qk(W: dict[str, torch.Tensor]) -> lm.Expr:
    E = lm.lazy(W["W_E"], "W_E")
    return E @ lm.lazy(W["W_Q"], "W_Q") @ lm.lazy(W["W_K"], "W_K").mT @ E.mT


def streamed_topk(W: dict[str, torch.Tensor], budget: int):
    with lm.config(memory_budget=budget):
        return torch.topk(full_qk(W), K, dim=-1)


def gemm_throughput(vocab: int, rows: int, device: str) -> float:
    """FLOP/s of ``(rows, 64) @ (64, vocab)``, the product every streamed block runs."""
    a = torch.randn(rows, D_HEAD, device=device)
    b = torch.randn(D_HEAD, vocab, device=device)
    out = torch.empty(rows, vocab, device=device)
    seconds = median_time(lambda: torch.mm(a, b, out=out), device, repeat=5, warmup=1)
    return 2 * rows * D_HEAD * vocab / seconds


# ---- memory, in a fresh child process --------------------------------------------------------------
def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_since_reset() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def child(vocab: int, budget: int, device: str) -> None:
    W = weights(vocab, device)
    full_qk(W).plan()  # imports and first-use costs outside the measurement
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        streamed_topk(W, budget)
        torch.cuda.synchronize()
        grow = torch.cuda.max_memory_allocated() - before
    else:
        reset_peak_rss()
        base = rss_bytes()
        streamed_topk(W, budget)
        grow = max(peak_rss_since_reset() - base, 0)
    print(json.dumps({"peak_bytes": grow}))


def peak_memory(vocab: int, budget: int, device: str) -> int | None:
    out = subprocess.run([sys.executable, __file__, "--child", "--vocab", str(vocab), "--budget", str(budget),
                          "--device", device], capture_output=True, text=True)
    if out.returncode:
        print(f"  (memory child failed: {out.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="5000-token vocabulary, 64 MiB budget")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--budget", default=None, help="bytes or a size such as '1GiB' (default 1GiB)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    vocab = args.vocab or (5000 if args.quick else 50257)
    budget = settings.parse_bytes(args.budget or ("64MiB" if args.quick else "1GiB"), "budget")
    dev = args.device
    if args.child:
        child(vocab, budget, dev)
        return

    W = weights(vocab, dev)
    print(f"top-{K} of every row of a {vocab} x {vocab} full QK circuit (d_model {D_MODEL}, d_head "
          f"{D_HEAD}, float32) under a {budget / 2**20:.0f} MiB budget, on {device_name(dev)}; "
          f"torch {torch.__version__}; dense matrix would be {vocab**2 * 4 / 2**30:.2f} GiB")

    blocks: list[int] = []
    from lazymat import progress
    original = progress.blocks

    def counting(items, total=None, *a, **kw):
        blocks.append(total)
        return original(items, total, *a, **kw)

    progress.blocks = counting
    t0 = time.perf_counter()
    result = streamed_topk(W, budget)
    sync(dev)
    first = time.perf_counter() - t0
    progress.blocks = original
    rows = -(-vocab // blocks[-1])

    seconds = median_time(lambda: streamed_topk(W, budget), dev, repeat=args.repeat, warmup=0)
    throughput = gemm_throughput(vocab, rows, dev)
    gemm_seconds = 2 * vocab * D_HEAD * vocab / throughput

    check = torch.randperm(vocab, generator=torch.Generator().manual_seed(1))[:8].to(dev)
    want = torch.topk(W["W_E"][check] @ W["W_Q"] @ W["W_K"].T @ W["W_E"].T, K, dim=-1)
    agree = torch.equal(result.indices[check], want.indices)
    err = (result.values[check] - want.values).abs().max().item()

    mem = peak_memory(vocab, budget, dev)
    print(f"  blocks: {blocks[-1]} of {rows} rows (first call {fmt_time(first)})")
    print(f"  streamed top-k:       {fmt_time(seconds):>10}")
    print(f"  GEMMs alone:          {fmt_time(gemm_seconds):>10}  ({vocab} x {D_HEAD} x {vocab} at "
          f"{throughput / 1e9:.1f} GFLOP/s measured on ({rows}, {D_HEAD}) @ ({D_HEAD}, {vocab}))")
    print(f"  ratio:                {seconds / gemm_seconds:>10.2f}x  (target <= 2x)")
    if mem is not None:
        print(f"  peak memory growth:   {mem / 2**20:>8.0f} MiB  (budget {budget / 2**20:.0f} MiB; "
              f"{'within' if mem <= budget else 'OVER'})")
    print(f"  8 rows vs eager torch: indices {'equal' if agree else 'DIFFER'}, max |value diff| {err:.2e}")
    checks = [(f"time {seconds / gemm_seconds:.2f}x the GEMMs' <= 2x", seconds <= 2 * gemm_seconds),
              ("memory within the budget", mem is not None and mem <= budget), ("rows agree", agree)]
    print("  acceptance: " + "; ".join(f"{text}: {'PASS' if ok else 'FAIL'}" for text, ok in checks))
    if not args.quick and not all(ok for _, ok in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
