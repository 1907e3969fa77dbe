"""The built-in demo: GPT-2-small-shaped random weights, full QK and OV circuits.

Nothing is downloaded: the weights are random with GPT-2 small's shapes (vocab 50257,
d_model 768, 12 layers x 12 heads of 64). Run with ``python -m lazymat``.
"""

from __future__ import annotations

import time

import torch

from . import linalg
from .expr import lazy
from .plan import FLOP_UNIT


def _timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"  {label:<34} {1e3 * (time.perf_counter() - t):8.1f} ms")
    return out


def main(seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    d_vocab, d_model, n_layers, n_heads, d_head = 50257, 768, 12, 12, 64
    print(f"GPT-2 small shapes, random weights (seed {seed}); FLOPs: {FLOP_UNIT}")
    W_E = lazy(torch.randn(d_vocab, d_model, generator=g) / d_model**0.5, name="W_E")
    W_U = lazy(torch.randn(d_model, d_vocab, generator=g) / d_model**0.5, name="W_U")
    W_Q = lazy(torch.randn(d_model, d_head, generator=g) / d_model**0.5, name="W_Q")
    W_K = lazy(torch.randn(d_model, d_head, generator=g) / d_model**0.5, name="W_K")
    W_V = lazy(torch.randn(n_layers, n_heads, d_model, d_head, generator=g) / d_model**0.5, name="W_V")
    W_O = lazy(torch.randn(n_layers, n_heads, d_head, d_model, generator=g) / d_head**0.5, name="W_O")

    qk = W_E @ W_Q @ W_K.T @ W_E.T
    gb = qk.shape[-1] * qk.shape[-2] * 4 / 2**30
    print(f"\nFull QK circuit {qk}: {tuple(qk.shape)} ({gb:.1f} GiB if materialised)")
    p = qk.plan()
    print(f"  to_dense plan: {p.flops:.3g} FLOPs vs {p.naive_flops:.3g} left-to-right "
          f"({p.speedup:.1f}x), path {p.path}")
    S = _timed("svdvals (QR + 64x64 core SVD)", lambda: linalg.svdvals(qk))
    print(f"    top singular values {[round(v, 3) for v in S[:4].tolist()]}, "
          f"{S.shape[-1]} nonzero of {qk.shape[-1]}")
    fro = _timed("matrix_norm('fro') (no SVD)", lambda: linalg.matrix_norm(qk))
    print(f"    ||QK||_F = {fro.item():.4f}; from the singular values {S.square().sum().sqrt().item():.4f}")
    tr = _timed("trace (closed network)", lambda: linalg.trace(qk))
    print(f"    tr(QK) = {tr.item():.4f}")
    row = _timed("one row qk[42] (a 1 x 50257 tensor)", lambda: qk[42])
    print(f"    qk[42, :3] = {row[:3].tolist()}")

    ov = W_E @ W_V @ W_O @ W_U
    print(f"\nAll {n_layers * n_heads} full OV circuits {ov}: shape {tuple(ov.shape)}")
    ev = _timed("eigvals of all 144 (shared W_U @ W_E)", lambda: linalg.eigvals(ov))
    copying = (ev.sum(-1) / ev.abs().sum(-1)).real
    print(f"    copying score (sum eig / sum |eig|), layer 0: "
          f"{[round(v, 3) for v in copying[0, :6].tolist()]} ...")


if __name__ == "__main__":
    main()
