"""All-pairs K-composition written as flat lists of pairs (session 21):
``W_V[a] @ W_O[a] @ (W_Q[b] @ W_K[b]^T)^T`` with ``a, b`` the flattened meshgrid of every head
pair, against the same pairs written with broadcast dims. A flat list is a gather with repeats,
which no broadcast can stand for; since session 21 the spectral routes factorise an outer tall
factor once per distinct matrix it reads. Deterministic FLOPs and peak bytes from
``lm.explain`` on shape-only symbols (GPT-2 small's and GPT-2 XL's head shapes, every layer's
heads flattened to one dim).

Run: ``PYTHONPATH=$PWD python benchmarks/count_pair_lists21.py``
Output: benchmarks/results/cpu-pair-lists21.txt.
"""

import torch

import lazymat as lm

for name, heads, d_model, d_head in (("gpt2-small", 144, 768, 64), ("gpt2-xl", 1200, 1600, 64)):
    W_V, W_Q, W_K = (lm.symbol(n, (heads, d_model, d_head)) for n in ("W_V", "W_Q", "W_K"))
    W_O = lm.symbol("W_O", (heads, d_head, d_model))
    a, b = (x.flatten() for x in torch.meshgrid(torch.arange(heads), torch.arange(heads), indexing="ij"))
    forms = {"flat pair list": W_V[a] @ W_O[a] @ (W_Q[b] @ W_K[b].mT).mT,
             "broadcast dims": W_V[:, None] @ W_O[:, None] @ (W_Q[None] @ W_K[None].mT).mT}
    for op in ("svdvals", "svd") if heads < 1000 else ("svdvals",):  # XL's U and Vh hold 1.2 TB
        for form, x in forms.items():
            r = lm.explain(x, op, memory_budget="16GB")  # fixed: the default follows free memory
            print(f"{name:10s} {heads}x{heads} pairs, {op:7s} {form:14s}: {r.flops:.3g} FLOPs, "
                  f"peak {r.planned.peak_bytes / 2**20:,.0f} MiB")
