"""All-pairs K-composition norms written with meshgrid index arrays (session 20):
``W_V[a] @ W_O[a] @ (W_Q[b] @ W_K[b]^T)^T`` with ``a, b = torch.meshgrid(heads, heads)``, against
the same pairs written with broadcast dims (``W_V[:, None] ...  W_Q[None] ...``), the form the
planner always read as "each head's products once". Deterministic FLOPs and peak bytes from
``lm.explain`` on shape-only symbols (GPT-2 small's and GPT-2 XL's head shapes, every layer's
heads flattened to one dim). Before session 20 the meshgrid form multiplied each head's factors
once per pair; now a factor whose index only repeats a member along a dim another factor spans
is read as the broadcast form reads it.

Run: ``PYTHONPATH=$PWD python benchmarks/count_meshgrid_pairs20.py``
Output: benchmarks/results/cpu-meshgrid-pairs20.txt.
"""

import torch

import lazymat as lm

for name, heads, d_model, d_head in (("gpt2-small", 144, 768, 64), ("gpt2-xl", 1200, 1600, 64)):
    W_V, W_Q, W_K = (lm.symbol(n, (heads, d_model, d_head)) for n in ("W_V", "W_Q", "W_K"))
    W_O = lm.symbol("W_O", (heads, d_head, d_model))
    a, b = torch.meshgrid(torch.arange(heads), torch.arange(heads), indexing="ij")
    forms = {"meshgrid arrays": W_V[a] @ W_O[a] @ (W_Q[b] @ W_K[b].mT).mT,
             "broadcast dims": W_V[:, None] @ W_O[:, None] @ (W_Q[None] @ W_K[None].mT).mT}
    for form, x in forms.items():
        r = lm.explain(x, "matrix_norm")
        print(f"{name:10s} {heads}x{heads} pairs, {form:15s}: {r.flops:.3g} FLOPs, "
              f"peak {r.planned.peak_bytes / 2**20:,.0f} MiB")
