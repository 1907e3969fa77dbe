"""Loaders: every layout reads back the canonical weights, layer norms folded as documented;
bad state dicts fail with the key and shapes named. Dense float64 formulas are the reference."""

import pickle
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits, LayoutError, layouts

from circuit_models import as_hf_bert, as_hf_gpt2, as_hf_llama, as_transformer_lens, canonical, folded


def dense(c, name):
    return c.weight(name).to_dense()


def check_weights(c, want, names):
    for k in names:
        torch.testing.assert_close(dense(c, k), want[k], msg=k)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_gpt2_reads_fused_qkv_and_folds_layernorm(tied):
    w = canonical()
    c = Circuits.from_state_dict(as_hf_gpt2(w, tied=tied), n_heads=4)
    want = folded(w, tied_unembed=tied)
    check_weights(c, want, ["W_E", "W_pos", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"])
    assert "transformer.h.0.attn.bias" in c.ignored_keys


def test_transformer_lens_layout_without_prefix_and_unfolded():
    w = canonical()
    c = Circuits.from_state_dict(as_transformer_lens(w), fold_ln=False)
    check_weights(c, w, ["W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_pos"])
    c2 = Circuits.from_state_dict(as_transformer_lens(w))
    check_weights(c2, folded(w), ["W_Q", "W_U", "W_E", "W_O"])


def test_hf_bert_post_ln_folds_the_norm_before_each_reader_and_ties_unembedding():
    w = canonical()
    c = Circuits.from_state_dict(as_hf_bert(w), n_heads=4)
    want = folded(w, tied_unembed=True)
    check_weights(c, want, ["W_E", "W_pos", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"])
    assert "bert.pooler.dense.weight" in c.ignored_keys


def test_hf_llama_gqa_rmsnorm_shares_kv_heads_by_indexing():
    w = canonical(H=6, Hkv=2, n_ctx=None, gated=True)
    c = Circuits.from_state_dict(as_hf_llama(w), n_heads=6)
    assert (c.n_heads, c.n_kv_heads) == (6, 2)
    want = folded(w, layernorm=False)
    check_weights(c, want, ["W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out"])
    # each query head reads its group's key head: dense reference by repeating (fine at this size)
    K = want["W_K"].repeat_interleave(3, dim=1)
    torch.testing.assert_close(c.QK().to_dense(), want["W_Q"] @ K.mT)
    assert c.W_K().shape == (3, 6, 12, 3)
    torch.testing.assert_close(c.OV(2, [1, 5]).to_dense(),
                               want["W_V"][2][[0, 1]] @ want["W_O"][2][[1, 5]])


def test_transformer_lens_gqa_keys():
    w = canonical(H=4, Hkv=2)
    c = Circuits.from_state_dict(as_transformer_lens(w), fold_ln=False)
    assert c.n_kv_heads == 2
    torch.testing.assert_close(c.W_K(1, 3).to_dense(), w["W_K"][1, 1])


@settings(max_examples=30, deadline=None)
@given(L=st.integers(1, 3), H=st.integers(1, 4), group=st.integers(1, 3), Dh=st.integers(1, 4),
       layout=st.sampled_from(["tl", "gpt2", "bert", "llama"]), seed=st.integers(0, 100))
def test_any_layout_and_dims_round_trip(L, H, group, Dh, layout, seed):
    """Property: for any small dims, a state dict written in a layout reads back the canonical
    circuits (QK and full OV against dense float64 products of the folded weights)."""
    Hq = H * (group if layout in ("tl", "llama") else 1)
    D = Hq * Dh if layout in ("gpt2",) else 5
    w = canonical(V=7, D=D, L=L, H=Hq, Hkv=H if layout in ("tl", "llama") else None, Dh=Dh, d_mlp=6,
                  n_ctx=None if layout == "llama" else 4, seed=seed, gated=layout == "llama")
    sd = {"tl": as_transformer_lens, "gpt2": as_hf_gpt2, "bert": as_hf_bert, "llama": as_hf_llama}[layout](w)
    c = Circuits.from_state_dict(sd, n_heads=None if layout == "tl" else Hq)
    f = folded(w, layernorm=layout != "llama", tied_unembed=layout == "bert")
    K = f["W_K"].repeat_interleave(Hq // f["W_K"].shape[1], dim=1)
    Vw = f["W_V"].repeat_interleave(Hq // f["W_V"].shape[1], dim=1)
    torch.testing.assert_close(c.QK().to_dense(), f["W_Q"] @ K.mT)
    torch.testing.assert_close(c.full_OV().to_dense(), f["W_E"] @ Vw @ f["W_O"] @ f["W_U"])


# ---- errors ---------------------------------------------------------------------------------
def test_missing_key_is_named_with_its_shape():
    sd = as_hf_gpt2(canonical())
    del sd["transformer.h.1.mlp.c_fc.weight"]
    msg = r"missing key 'transformer.h.1.mlp.c_fc.weight' \(expected shape \(12, 20\)\)"
    with pytest.raises(LayoutError, match=msg):
        Circuits.from_state_dict(sd, n_heads=4)


def test_inconsistent_layer_shape_is_named():
    sd = as_hf_gpt2(canonical())
    sd["transformer.h.2.attn.c_proj.weight"] = torch.zeros(12, 11)
    msg = r"'transformer.h.2.attn.c_proj.weight' has shape \(12, 11\), expected \(12, 12\)"
    with pytest.raises(LayoutError, match=msg):
        Circuits.from_state_dict(sd, n_heads=4)


def test_unknown_key_is_not_skipped():
    sd = as_transformer_lens(canonical())
    sd["blocks.0.attn.W_mystery"] = torch.zeros(3)
    with pytest.raises(LayoutError, match="does not know key.*blocks.0.attn.W_mystery"):
        Circuits.from_state_dict(sd)


def test_unknown_or_unguessable_layout():
    with pytest.raises(LayoutError, match="unknown layout 'gpt3'"):
        Circuits.from_state_dict(as_transformer_lens(canonical()), layout="gpt3")
    with pytest.raises(LayoutError, match="cannot tell the layout"):
        Circuits.from_state_dict({"foo.weight": torch.zeros(2, 2)})


def test_fused_heads_need_n_heads_and_must_divide():
    sd = as_hf_gpt2(canonical())
    with pytest.raises(LayoutError, match="pass n_heads="):
        Circuits.from_state_dict(sd)
    with pytest.raises(LayoutError, match="not divisible into n_heads=5"):
        Circuits.from_state_dict(sd, n_heads=5)


def test_load_safetensors_is_lazy_and_pt_files_load(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    w = canonical()
    sd = {k: v.contiguous() for k, v in as_hf_gpt2(w).items()}
    safetensors.save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"n_head": 4}')
    (tmp_path / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(40)))
    c = Circuits.load(tmp_path)
    assert c.vocab[3] == "tok3"
    assert c.copying_scores().scores.shape == (3, 4)
    assert "W_Q" not in c._weights._made and "W_in" not in c._weights._made  # read only what was used
    torch.save(sd, tmp_path / "model.pt")
    c2 = Circuits.load(tmp_path / "model.pt", n_heads=4)
    torch.testing.assert_close(c2.full_OV().to_dense(), c.full_OV().to_dense())


def test_from_model_duck_typed():
    w = canonical()

    class Model:
        pass

    m = Model()
    for k in ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_pos"):
        setattr(m, k, w[k])
    c = Circuits.from_model(m)
    want = w["W_pos"] @ w["W_Q"][1, 2] @ w["W_K"][1, 2].mT @ w["W_pos"].mT
    torch.testing.assert_close(c.pos_QK(1, 2).to_dense(), want)
    del m.W_O
    with pytest.raises(TypeError, match="no attribute.*W_O"):
        Circuits.from_model(m)


def test_kv_heads_must_divide_query_heads():
    w = canonical(H=4, Hkv=3)
    with pytest.raises(ValueError, match="its 3 key/value heads do not divide the 4 query heads"):
        Circuits({k: w[k] for k in ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O")})


def tl_two_layers(**kw):
    return as_transformer_lens(canonical(V=10, D=6, L=2, H=3, Dh=2, d_mlp=8, **kw))


def test_wrong_ndim_query_weight_is_named():
    """Regression: a 2-D ``W_Q`` used to fail with "not enough values to unpack"."""
    sd = tl_two_layers()
    sd["blocks.0.attn.W_Q"] = torch.zeros(6, 2, dtype=torch.float64)
    with pytest.raises(LayoutError, match=r"'blocks.0.attn.W_Q' has shape \(6, 2\), expected 3 dims "
                                          r"\(n_heads, d_model, d_head\)"):
        Circuits.from_state_dict(sd)


def test_kv_heads_not_dividing_name_the_kv_key():
    """Regression: 2 grouped K/V heads for 3 query heads used to blame W_U (with equal shapes)."""
    sd = tl_two_layers()
    for layer in range(2):
        p = f"blocks.{layer}.attn."
        sd[p + "_W_K"], sd[p + "_W_V"] = sd.pop(p + "W_K")[:2], sd.pop(p + "W_V")[:2]
    with pytest.raises(LayoutError, match=r"'blocks.0.attn._W_K' has 2 key/value heads.*n_heads=3 "
                                          r"\(from 'blocks.0.attn.W_Q'\)"):
        Circuits.from_state_dict(sd)


_WRITERS = {
    "tl": (lambda w: as_transformer_lens(w), "transformer_lens", None),
    "tl_gqa": (lambda w: as_transformer_lens(w), "transformer_lens", None),
    "gpt2": (lambda w: as_hf_gpt2(w), "hf_gpt2", 4),
    "gpt2_tied": (lambda w: as_hf_gpt2(w, tied=True), "hf_gpt2", 4),
    "bert": (lambda w: as_hf_bert(w), "hf_bert", 4),
    "llama": (lambda w: as_hf_llama(w), "hf_llama", 4),
}


def _corruptible(sd, layout, n_heads):
    """Keys the layout reads, with the ones whose removal or first-dim change leaves a valid model:
    a lone optional weight (positions, an untied unembedding, TL's final norm) may be absent, and
    the number of positions (and the vocabulary, when the unembedding is tied) is free."""
    reading = layouts.check({k: tuple(v.shape) for k, v in sd.items()}, layout, n_heads)
    used, optional, free_first_dim = [], set(), set()
    for role, keys in reading.keys.items():
        spec = reading.layout.roles[role]
        used += keys
        if spec.optional and "{l}" not in spec.key:
            optional.update(keys)
        if role == "W_pos" or (role == "W_E" and "W_U" not in reading.keys):
            free_first_dim.update(keys)
    return sorted(used), optional, free_first_dim


@settings(max_examples=120, deadline=None)
@given(which=st.sampled_from(sorted(_WRITERS)), corruption=st.sampled_from(["drop", "dim", "ndim"]),
       data=st.data())
def test_any_corruption_gives_a_layout_error_naming_the_key(which, corruption, data):
    """Property: dropping a key, changing one dim by one, or adding/removing a dim of any weight
    a layout reads gives a LayoutError whose message names that key (the dims a shape is checked
    against name the keys they were read from, so a corrupted source key is named too)."""
    write, layout, n_heads = _WRITERS[which]
    w = canonical(V=10, D=12, L=2, H=4, Hkv=2 if which in ("tl_gqa", "llama") else None, Dh=3, d_mlp=8,
                  n_ctx=None if which == "llama" else 5, gated=which == "llama")
    sd = write(w)
    used, optional, free_first_dim = _corruptible(sd, layout, n_heads)
    if corruption == "drop":
        key = data.draw(st.sampled_from([k for k in used if k not in optional]))
        del sd[key]
    else:
        key = data.draw(st.sampled_from(used))
        t = sd[key]
        if corruption == "ndim":
            sd[key] = t[None] if data.draw(st.booleans()) or t.ndim == 1 else t[..., 0]
        else:
            axes = [a for a in range(t.ndim) if not (a == 0 and key in free_first_dim)]
            if not axes:
                return
            axis = data.draw(st.sampled_from(axes))
            shape = list(t.shape)
            shape[axis] += 1
            sd[key] = torch.zeros(shape, dtype=t.dtype)
    with pytest.raises(LayoutError) as info:
        Circuits.from_state_dict(sd, layout=layout, n_heads=n_heads)
    assert repr(key) in str(info.value), (key, str(info.value))


def without_norms(sd):
    return {k: v for k, v in sd.items() if not re.fullmatch(r"(blocks\.\d+\.ln[12]|ln_final)\.[wb]", k)}


def test_state_dict_without_norms_is_not_centred():
    """Regression: weights of a norm-free model used to be centred while the notes said nothing
    was done; the direct path then differed from W_E @ W_U."""
    w = canonical(L=1)
    c = Circuits.from_state_dict(without_norms(as_transformer_lens(w)))
    assert "nothing folded or centred" in c.notes
    torch.testing.assert_close(c.direct_path().to_dense(), w["W_E"] @ w["W_U"])
    torch.testing.assert_close(c.OV(0, 1).to_dense(), w["W_V"][0, 1] @ w["W_O"][0, 1])


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 3), H=st.integers(1, 4), Dh=st.integers(1, 4), pos=st.booleans(),
       seed=st.integers(0, 100))
def test_without_norm_weights_every_weight_is_read_raw(L, H, Dh, pos, seed):
    """Property: with no norm weights in the state dict, every canonical weight is the stored one
    (as TransformerLens: only models with LayerNorm are centred); with them, it is folded."""
    w = canonical(V=7, D=5, L=L, H=H, Dh=Dh, d_mlp=6, n_ctx=4 if pos else None, seed=seed)
    names = ["W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"] + (["W_pos"] if pos else [])
    check_weights(Circuits.from_state_dict(without_norms(as_transformer_lens(w))), w, names)
    check_weights(Circuits.from_state_dict(as_transformer_lens(w)), folded(w), names)


def _same_analyses(a, b):
    assert (a.notes, a.ignored_keys, a.shapes) == (b.notes, b.ignored_keys, b.shapes)
    torch.testing.assert_close(a.composition_scores("K").scores, b.composition_scores("K").scores)
    torch.testing.assert_close(a.copying_scores().scores, b.copying_scores().scores)
    torch.testing.assert_close(a.full_OV(1, 2).to_dense(), b.full_OV(1, 2).to_dense())


@pytest.mark.parametrize("which", sorted(_WRITERS))
def test_circuits_pickle_round_trip(which):
    """Regression: pickling a Circuits read from a state dict failed on a lambda of its layout."""
    write, layout, n_heads = _WRITERS[which]
    w = canonical(L=2, H=4, Hkv=2 if which in ("tl_gqa", "llama") else None, gated=which == "llama",
                  n_ctx=None if which == "llama" else 9)
    c = Circuits.from_state_dict(write(w), n_heads=n_heads)
    fresh = pickle.loads(pickle.dumps(c))
    c.copying_scores()  # leaves and engine caches in use
    _same_analyses(pickle.loads(pickle.dumps(c)), c)
    _same_analyses(fresh, c)


def test_lazily_loaded_safetensors_circuits_pickle(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = {k: v.contiguous() for k, v in as_hf_gpt2(canonical()).items()}
    safetensors.save_file(sd, tmp_path / "model.safetensors")
    c = Circuits.load(tmp_path / "model.safetensors", n_heads=4)
    _same_analyses(pickle.loads(pickle.dumps(c)), Circuits.from_state_dict(sd, n_heads=4))
