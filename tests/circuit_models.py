"""Tiny float64 transformers in canonical (TransformerLens) form, and the same weights written in
each checkpoint layout by hand (independently of lazymat.circuits' loaders)."""

from __future__ import annotations

import torch


def canonical(V=40, D=12, L=3, H=4, Hkv=None, Dh=3, d_mlp=20, n_ctx=9, seed=0, gated=False):
    g = torch.Generator().manual_seed(seed)
    Hkv = Hkv or H

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    w = {"W_E": r(V, D), "W_U": r(D, V), "W_Q": r(L, H, D, Dh), "W_K": r(L, Hkv, D, Dh),
         "W_V": r(L, Hkv, D, Dh), "W_O": r(L, H, Dh, D), "W_in": r(L, D, d_mlp), "W_out": r(L, d_mlp, D),
         "ln_attn": 1 + 0.3 * r(L, D), "ln_mlp": 1 + 0.3 * r(L, D), "ln_final": 1 + 0.3 * r(D)}
    if n_ctx:
        w["W_pos"] = r(n_ctx, D)
    if gated:
        w["W_gate"] = r(L, D, d_mlp)
    return w


def fused_in(W):
    """(n, d_model, d_head) -> (d_model, n * d_head), heads side by side."""
    n, D, Dh = W.shape
    return W.permute(1, 0, 2).reshape(D, n * Dh)


def as_transformer_lens(w):
    L = w["W_Q"].shape[0]
    sd = {"embed.W_E": w["W_E"], "unembed.W_U": w["W_U"], "ln_final.w": w["ln_final"],
          "ln_final.b": torch.zeros_like(w["ln_final"]), "unembed.b_U": torch.zeros(w["W_U"].shape[1])}
    if "W_pos" in w:
        sd["pos_embed.W_pos"] = w["W_pos"]
    gqa = w["W_K"].shape[1] != w["W_Q"].shape[1]
    for i in range(L):
        b = f"blocks.{i}."
        sd |= {b + "attn.W_Q": w["W_Q"][i], b + ("attn._W_K" if gqa else "attn.W_K"): w["W_K"][i],
               b + ("attn._W_V" if gqa else "attn.W_V"): w["W_V"][i], b + "attn.W_O": w["W_O"][i],
               b + "mlp.W_in": w["W_in"][i], b + "mlp.W_out": w["W_out"][i], b + "ln1.w": w["ln_attn"][i],
               b + "ln2.w": w["ln_mlp"][i], b + "ln1.b": torch.zeros_like(w["ln_attn"][i]),
               b + "attn.b_Q": torch.zeros(w["W_Q"].shape[1], w["W_Q"].shape[3])}
    return sd


def as_hf_gpt2(w, prefix="transformer.", tied=False):
    L = w["W_Q"].shape[0]
    sd = {"wte.weight": w["W_E"], "wpe.weight": w["W_pos"], "ln_f.weight": w["ln_final"],
          "ln_f.bias": torch.zeros_like(w["ln_final"])}
    for i in range(L):
        h = f"h.{i}."
        sd |= {h + "attn.c_attn.weight": torch.cat([fused_in(w[k][i]) for k in ("W_Q", "W_K", "W_V")], 1),
               h + "attn.c_proj.weight": w["W_O"][i].reshape(-1, w["W_O"].shape[-1]),
               h + "mlp.c_fc.weight": w["W_in"][i], h + "mlp.c_proj.weight": w["W_out"][i],
               h + "ln_1.weight": w["ln_attn"][i], h + "ln_2.weight": w["ln_mlp"][i],
               h + "attn.bias": torch.ones(1, 1, 4, 4),
               h + "attn.c_attn.bias": torch.zeros(3 * w["W_E"].shape[1])}
    sd = {prefix + k: v for k, v in sd.items()}
    if not tied:
        sd["lm_head.weight"] = w["W_U"].mT
    return sd


def as_hf_bert(w, prefix="bert."):
    """Post-LN: ``ln_attn[0]`` is the embedding norm, ``ln_attn[l]`` (l > 0) the output norm of
    layer l - 1; ``ln_mlp[l]`` the attention output norm; ``ln_final`` the last output norm."""
    L = w["W_Q"].shape[0]
    sd = {"embeddings.word_embeddings.weight": w["W_E"], "embeddings.position_embeddings.weight": w["W_pos"],
          "embeddings.token_type_embeddings.weight": torch.zeros(2, w["W_E"].shape[1]),
          "embeddings.LayerNorm.weight": w["ln_attn"][0],
          "embeddings.LayerNorm.bias": torch.zeros_like(w["ln_final"]),
          "pooler.dense.weight": torch.zeros(w["W_E"].shape[1], w["W_E"].shape[1])}
    for i in range(L):
        e = f"encoder.layer.{i}."
        out_ln = w["ln_attn"][i + 1] if i + 1 < L else w["ln_final"]
        sd |= {e + "attention.self.query.weight": fused_in(w["W_Q"][i]).mT,
               e + "attention.self.key.weight": fused_in(w["W_K"][i]).mT,
               e + "attention.self.value.weight": fused_in(w["W_V"][i]).mT,
               e + "attention.self.query.bias": torch.zeros(w["W_E"].shape[1]),
               e + "attention.output.dense.weight": w["W_O"][i].reshape(-1, w["W_O"].shape[-1]).mT,
               e + "attention.output.LayerNorm.weight": w["ln_mlp"][i],
               e + "intermediate.dense.weight": w["W_in"][i].mT, e + "output.dense.weight": w["W_out"][i].mT,
               e + "output.LayerNorm.weight": out_ln}
    return {prefix + k: v for k, v in sd.items()}


def as_hf_llama(w):
    L = w["W_Q"].shape[0]
    sd = {"model.embed_tokens.weight": w["W_E"], "lm_head.weight": w["W_U"].mT,
          "model.norm.weight": w["ln_final"]}
    for i in range(L):
        p = f"model.layers.{i}."
        sd |= {p + "self_attn.q_proj.weight": fused_in(w["W_Q"][i]).mT,
               p + "self_attn.k_proj.weight": fused_in(w["W_K"][i]).mT,
               p + "self_attn.v_proj.weight": fused_in(w["W_V"][i]).mT,
               p + "self_attn.o_proj.weight": w["W_O"][i].reshape(-1, w["W_O"].shape[-1]).mT,
               p + "mlp.up_proj.weight": w["W_in"][i].mT, p + "mlp.gate_proj.weight": w["W_gate"][i].mT,
               p + "mlp.down_proj.weight": w["W_out"][i].mT, p + "input_layernorm.weight": w["ln_attn"][i],
               p + "post_attention_layernorm.weight": w["ln_mlp"][i],
               p + "self_attn.rotary_emb.inv_freq": torch.ones(2)}
    return sd


def folded(w, layernorm=True, tied_unembed=False):
    """The canonical weights with norms folded, written as matrix products:
    ``C diag(gamma) W`` for reading weights (C = I - 11^T/d the centring matrix, LayerNorm
    only), ``W C`` for writing weights, ``W_U C_vocab`` for the unembedding."""
    D, V = w["W_E"].shape[1], w["W_E"].shape[0]
    C = torch.eye(D, dtype=torch.float64) - (1.0 / D if layernorm else 0.0)
    Cv = torch.eye(V, dtype=torch.float64) - 1.0 / V
    out = {}
    for k in ("W_Q", "W_K", "W_V"):
        out[k] = C @ torch.diag_embed(w["ln_attn"])[:, None] @ w[k]
    for k in ("W_in", "W_gate"):
        if k in w:
            out[k] = C @ torch.diag_embed(w["ln_mlp"]) @ w[k]
    U = w["W_E"].mT if tied_unembed else w["W_U"]
    out["W_U"] = C @ torch.diag(w["ln_final"]) @ U @ Cv
    for k in ("W_E", "W_pos", "W_O", "W_out"):
        if k in w:
            out[k] = w[k] @ C if layernorm else w[k]
    return out
