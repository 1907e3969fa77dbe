"""The circuits of a Hugging Face model reproduce that model's own forward pass (qa22, session 17).

An independent check of the layouts (``hf_gpt2``, ``hf_llama``, ``hf_bert``) and of layer-norm
folding: random small models in float64, biases and norm shifts zeroed (circuits are products of
weights), norm scales random. Hooks read what the model itself computes; the circuits must give

- the attention pattern of every head: ``softmax(x QK x^T / sqrt(d_head))`` with ``x`` the
  normalised stream (without the norm's scale, which the readers hold), causal where the model is;
- the attention block's output ``sum_h A_h x OV_h``, the MLP's pre-activations ``x w_in^T``
  (and ``W_gate``), the MLP's output ``hidden @ w_out``, and the logits ``x W_U``; each centred
  over ``d_model`` (or the vocabulary) where the docs say the circuits are centred.

Llama positions are all 0, so rotary embeddings are the identity; its RMSNorm computes in float32
(Hugging Face casts), hence the looser tolerance."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits

transformers = pytest.importorskip("transformers")

IDS = [3, 7, 1, 12, 5, 9]


def _normalised(x: torch.Tensor, eps: float, centre: bool) -> torch.Tensor:
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _build(family: str, L: int, H: int, Hkv: int, Dh: int, seed: int, extra: int = 0):
    """``extra``: a Llama residual wider than its heads (``head_dim`` given, as Gemma and Qwen3 do)."""
    torch.manual_seed(seed)
    D = H * (Dh + (extra if family == "llama" else 0))  # (HF needs d_model to be a multiple of H)
    common = {"attn_implementation": "eager", "initializer_range": 0.6}
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=D, n_layer=L, n_head=H, **common)
        model, prefix = transformers.GPT2LMHeadModel(cfg), ""
    elif family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=13, hidden_size=D, intermediate_size=5, num_hidden_layers=L,
                                       num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh,
                                       max_position_embeddings=8, tie_word_embeddings=False, **common)
        model, prefix = transformers.LlamaForCausalLM(cfg), ""
    else:
        cfg = transformers.BertConfig(vocab_size=13, hidden_size=D, num_hidden_layers=L,
                                      num_attention_heads=H, intermediate_size=5,
                                      max_position_embeddings=8, type_vocab_size=1, **common)
        model, prefix = transformers.BertModel(cfg, add_pooling_layer=False), "bert."
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "token_type" in name:
                p.zero_()
            elif p.ndim == 1:  # a norm's scale
                p.copy_(torch.rand_like(p) + 0.5)
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    return model, Circuits.from_state_dict(sd, n_heads=H)


def _hooks(model, family: str, L: int):
    """name -> module, and whether to record its input (True) or output (False)."""
    if family == "gpt2":
        h, final = model.transformer.h, model.transformer.ln_f
        per = {"read_attn": ("ln_1", True), "attn": ("attn", False), "read_mlp": ("ln_2", True),
               "pre": ("mlp.c_fc", False), "hidden": ("mlp.c_proj", True),
               "mlp": ("mlp.c_proj", False)}
    elif family == "llama":
        h, final = model.model.layers, model.model.norm
        per = {"read_attn": ("input_layernorm", True), "attn": ("self_attn", False),
               "read_mlp": ("post_attention_layernorm", True), "pre": ("mlp.up_proj", False),
               "gate": ("mlp.gate_proj", False), "hidden": ("mlp.down_proj", True),
               "mlp": ("mlp.down_proj", False)}
    else:
        h = model.encoder.layer
        final = h[L - 1].output.LayerNorm
        per = {"attn": ("attention.output.dense", False),
               "read_mlp": ("attention.output.LayerNorm", True), "pre": ("intermediate.dense", False),
               "hidden": ("output.dense", True), "mlp": ("output.dense", False)}
    modules = {(name, layer): (h[layer].get_submodule(path), inp) for layer in range(L)
               for name, (path, inp) in per.items()}
    modules[("final", None)] = (final, True)
    if family == "bert":  # layer l reads the norm before it: the embeddings' for layer 0
        modules[("read_attn", 0)] = (model.embeddings.LayerNorm, True)
        for layer in range(1, L):
            modules[("read_attn", layer)] = (h[layer - 1].output.LayerNorm, True)
    return modules


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@settings(max_examples=5, deadline=None)
@given(L=st.integers(1, 2), H=st.integers(1, 4), kv=st.integers(1, 4), Dh=st.sampled_from([2, 4]),
       seed=st.integers(0, 99), extra=st.sampled_from([0, 1]))
def test_circuits_reproduce_the_models_own_forward_pass(family, L, H, kv, Dh, seed, extra):
    Hkv = max(g for g in range(1, kv + 1) if H % g == 0) if family == "llama" else H
    model, c = _build(family, L, H, Hkv, Dh, seed, extra)
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_head) == (L, H, Hkv, Dh)
    seen = {}

    def record(key, inp):
        def hook(module, args, output):
            value = args[0] if inp else output[0] if isinstance(output, tuple) else output
            seen[key] = value[0]  # the one sequence of the batch
        return hook

    handles = [module.register_forward_hook(record(key, inp))
               for key, (module, inp) in _hooks(model, family, L).items()]
    ids = torch.tensor([IDS])
    kw = {"position_ids": torch.zeros_like(ids)} if family == "llama" else {}
    with torch.no_grad():
        out = model(ids, output_attentions=True, **kw)
    for handle in handles:
        handle.remove()
    config = model.config
    eps = {"gpt2": "layer_norm_epsilon", "llama": "rms_norm_eps", "bert": "layer_norm_eps"}[family]
    eps = getattr(config, eps)
    centre = family != "llama"  # LayerNorm centres (and its circuits are centred); RMSNorm does not
    tol = {"rtol": 1e-5, "atol": 1e-6} if family == "llama" else {"rtol": 1e-9, "atol": 1e-11}
    maybe_centred = _centred if centre else (lambda x: x)
    T = len(IDS)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1) & (family != "bert")
    for layer in range(L):
        x = _normalised(seen[("read_attn", layer)], eps, centre)
        scores = torch.stack([x @ c.QK(layer, h).to_dense() @ x.T / Dh**0.5 for h in range(H)])
        patterns = scores.masked_fill(causal, -torch.inf).softmax(-1)
        torch.testing.assert_close(patterns, out.attentions[layer][0], **tol)
        A = out.attentions[layer][0]
        written = sum(A[h] @ x @ c.OV(layer, h).to_dense() for h in range(H))
        torch.testing.assert_close(written, maybe_centred(seen[("attn", layer)]), **tol)
        x = _normalised(seen[("read_mlp", layer)], eps, centre)
        torch.testing.assert_close(x @ c.w_in(layer).to_dense().mT, seen[("pre", layer)], **tol)
        if family == "llama":
            gate = c.weight("W_gate")[layer].to_dense()
            torch.testing.assert_close(x @ gate, seen[("gate", layer)], **tol)
        torch.testing.assert_close(seen[("hidden", layer)] @ c.w_out(layer).to_dense(),
                                   maybe_centred(seen[("mlp", layer)]), **tol)
    x = _normalised(seen[("final", None)], eps, centre)
    if family == "bert":  # W_U is the word embeddings read through the last norm (the docs' convention)
        scale = model.encoder.layer[L - 1].output.LayerNorm.weight
        logits = (x * scale) @ model.embeddings.word_embeddings.weight.T
    else:
        logits = out.logits[0]
    # W_U is centred over the vocabulary (softmax ignores a constant shift of the logits)
    torch.testing.assert_close(x @ c.W_U.to_dense(), _centred(logits), **tol)
    if family == "gpt2":
        embedded = c.W_E[IDS].to_dense() + c.W_pos[:T].to_dense()
        stream = model.transformer.wte.weight[IDS] + model.transformer.wpe.weight[:T]
        torch.testing.assert_close(embedded, _centred(stream), **tol)
