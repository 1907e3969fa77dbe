"""Issue 11's acceptance on a GPU: llama-3-8b-like shapes (32 layers x 32 heads, d_model 4096,
d_head 128, vocab 128256; random weights), all-pairs K-composition of the 1024 heads and the
eigenvalue cores of all 1024 full OV circuits under the default memory budget: time and peak.

Run: ``python benchmarks/gpu_llama_budget.py`` on a CUDA machine (needs ~12 GiB for the weights).
"""

from __future__ import annotations

import time

import torch

import lazymat as lm
from lazymat import linalg as LA
from lazymat import settings


def main() -> None:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    layers, heads, d_model, d_head, vocab = 32, 32, 4096, 128, 128256

    def w(*shape, scale):
        return torch.randn(*shape, device=dev, generator=g) * scale

    stack = (layers, heads)
    W_V, W_O = w(*stack, d_model, d_head, scale=d_model**-.5), w(*stack, d_head, d_model, scale=d_head**-.5)
    W_Q, W_K = w(*stack, d_model, d_head, scale=d_model**-.5), w(*stack, d_model, d_head, scale=d_model**-.5)
    W_E, W_U = w(vocab, d_model, scale=0.02), w(d_model, vocab, scale=0.02)
    torch.cuda.synchronize()
    print(f"weights {torch.cuda.memory_allocated() / 2**30:.1f} GiB, "
          f"default budget {settings.memory_budget(dev) / 2**30:.1f} GiB")
    OV = lm.lazy(W_V) @ lm.lazy(W_O)
    QK = lm.lazy(W_Q) @ lm.lazy(W_K).mT
    report = lm.explain(OV[:, :, None, None] @ QK.mT, "matrix_norm")
    print(f"explain: peak {report.planned.peak_bytes / 2**30:.1f} GiB;",
          "; ".join(sl.text(report.memory_budget) for sl in report.slicing))
    cases = [("all-pairs K-composition (1024 x 1024 heads)",
              lambda: LA.matrix_norm(OV[:, :, None, None] @ QK.mT)),
             ("eigvals of 1024 full OV cores",
              lambda: LA.eigvals(lm.lazy(W_E) @ lm.lazy(W_V) @ lm.lazy(W_O) @ lm.lazy(W_U)))]
    for label, fn in cases:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        print(f"{label}: {seconds:.3f} s, peak above the weights {peak:.2f} GiB, result {tuple(out.shape)}")
        del out


if __name__ == "__main__":
    main()
