"""lazymat.compat.FactoredMatrix's singular values on GPT-2-small's full OV circuits (12 x 12
heads, W_E @ W_V @ W_O @ W_U, 50257 x 50257 each; random weights, float32): peak memory and
time of ``fm.S`` read first, read again, ``fm.svd()``, and ``fm.S`` after it, beside
TransformerLens 4.3's route (its three SVDs, written out here: the factors it holds after
``W_E @ OV @ W_U`` are ``W_E @ W_V`` and ``W_O @ W_U``). Prints the lazymat
``explain`` figures too (deterministic, no GPU needed for those).

Run: ``python benchmarks/gpu_qa26_compat_singular_values.py`` on a CUDA machine.
"""

from __future__ import annotations

import time

import torch

import lazymat as lm
from lazymat.compat import FactoredMatrix


def _measured(f):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = f()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start, (torch.cuda.max_memory_allocated() - base) / 2**20


def _transformer_lens_svd(A: torch.Tensor, B: torch.Tensor):
    Ua, Sa, Vha = torch.linalg.svd(A, full_matrices=False)
    Ub, Sb, Vhb = torch.linalg.svd(B, full_matrices=False)
    middle = Sa[..., :, None] * Vha @ Ub * Sb[..., None, :]
    Um, Sm, Vhm = torch.linalg.svd(middle, full_matrices=False)
    return Ua @ Um, Sm, Vhb.mT @ Vhm.mT


def main() -> None:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    vocab, d_model, layers, heads, d_head = 50257, 768, 12, 12, 64

    def w(*shape, scale):
        return torch.randn(*shape, device=dev, generator=g) * scale
    W_E, W_U = w(vocab, d_model, scale=d_model**-.5), w(d_model, vocab, scale=d_model**-.5)
    W_V = w(layers, heads, d_model, d_head, scale=d_model**-.5)
    W_O = w(layers, heads, d_head, d_model, scale=d_head**-.5)
    for op in ("svdvals", "svd"):
        report = lm.explain(W_E @ FactoredMatrix(W_V, W_O).expr @ W_U, op)
        print(f"explain {op}: peak {report.planned.peak_bytes / 2**20:,.0f} MiB")
    for run in range(2):  # the first run includes warm-up
        full = W_E @ FactoredMatrix(W_V, W_O) @ W_U
        for what, read in (("fm.S, first read", "S"), ("fm.S, read again", "S"), ("fm.svd()", "svd"),
                           ("fm.S after svd()", "S"), ("fm.U after svd()", "U")):
            out, seconds, mib = _measured(lambda read=read, full=full: getattr(full, read) if read != "svd"
                                          else full.svd())
            print(f"run {run}: {what:18s} {seconds * 1e3:8.1f} ms  peak {mib:8,.0f} MiB")
            del out
        del full
    A, B = W_E @ W_V, W_O @ W_U  # what TransformerLens holds after W_E @ OV @ W_U
    for run in range(2):
        out, seconds, mib = _measured(lambda: _transformer_lens_svd(A, B))
        print(f"run {run}: TransformerLens svd (S)   {seconds * 1e3:8.1f} ms  peak {mib:8,.0f} MiB")
        del out


if __name__ == "__main__":
    main()
