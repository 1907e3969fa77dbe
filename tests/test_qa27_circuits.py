"""qa27: circuit results and analyses checked against plain Python and float64 formulas."""

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits.results import Scores, head_name

# scores that tie, or differ past float32's digits (0.5 and 0.5 + 1e-9 are one float32)
NEAR = st.sampled_from([0.5, 0.5 + 1e-9, 0.5 + 2e-9, 0.5 - 1e-12, 0.25, -0.5, math.nan])


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 3), H=st.integers(1, 4), pairwise=st.booleans(), largest=st.booleans(),
       data=st.data())
def test_top_ranks_as_a_float64_sort_with_ties_in_head_order(L, H, pairwise, largest, data):
    shape = (L, H, L, H) if pairwise else (L, H)
    values = data.draw(st.lists(NEAR, min_size=math.prod(shape), max_size=math.prod(shape)))
    scores = torch.tensor(values, dtype=torch.float64).reshape(shape)
    valid = None
    if pairwise:
        layers = torch.arange(L)
        valid = (layers[:, None, None, None] < layers[None, None, :, None]).expand(shape)
    n = data.draw(st.integers(0, len(values) + 2))
    kind = data.draw(st.sampled_from([int, np.int64, torch.tensor]))
    got = Scores(scores, "s", valid=valid).top(kind(n), largest=largest)
    entries = [(v, i) for i, v in enumerate(values) if not math.isnan(v)
               and (valid is None or bool(valid.flatten()[i]))]
    entries.sort(key=lambda e: (-e[0] if largest else e[0], e[1]))  # ties: the earlier index first

    def name(i):
        c = np.unravel_index(i, shape)
        return (f"{head_name(c[0], c[1])} -> {head_name(c[2], c[3])}" if pairwise
                else head_name(c[0], c[1]))

    assert [line.split(":")[0] for line in got] == [name(i) for _, i in entries[:n]]
    printed = [float(line.split(": ")[1]) for line in got]
    assert printed == pytest.approx([v for v, _ in entries[:n]], abs=1e-4)


@pytest.mark.parametrize("n", [-1, 2.0, True, "3", np.float64(2.0)])
def test_top_names_a_count_that_is_not_a_non_negative_int(n):
    with pytest.raises(ValueError, match="top: n must be a non-negative int, got"):
        Scores(torch.zeros(2, 3), "s").top(n)


# (d_vocab, d_model, n_layers, (n_heads, n_kv_heads), d_head): vocabularies below d_model,
# d_head 1, one layer, one head, grouped-query heads
HEADS = st.sampled_from([(1, 1), (2, 1), (2, 2), (4, 2), (3, 3)])
SHAPES = st.tuples(st.integers(2, 12), st.integers(2, 8), st.integers(1, 3), HEADS, st.integers(1, 4))


@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, kind=st.sampled_from(["OV", "QK", "w_in", "w_out"]), k=st.integers(0, 6),
       top=st.integers(0, 14), as_=st.sampled_from([int, np.int64, torch.tensor]), seed=st.integers(0, 2**16))
def test_singular_directions_are_the_float64_svd_read_in_the_vocabulary(shape, kind, k, top, as_, seed):
    from lazymat.circuits import Circuits

    V, D, L, (H, Hkv), Dh = shape
    g = torch.Generator().manual_seed(seed)
    w = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in {
        "W_E": (V, D), "W_U": (D, V), "W_Q": (L, H, D, Dh), "W_K": (L, Hkv, D, Dh), "W_V": (L, Hkv, D, Dh),
        "W_O": (L, H, Dh, D), "W_in": (L, D, 5), "W_out": (L, 5, D)}.items()}
    layer, head = L - 1, H - 1
    kv = head // (H // Hkv)
    M, reader = {"OV": (w["W_V"][layer, kv] @ w["W_O"][layer, head], w["W_U"]),
                 "QK": (w["W_Q"][layer, head] @ w["W_K"][layer, kv].mT, w["W_E"].mT),
                 "w_in": (w["W_in"][layer].mT, w["W_U"]), "w_out": (w["W_out"][layer], w["W_U"])}[kind]
    per_head = head if kind in ("OV", "QK") else None
    d = Circuits(w).singular_directions(kind, layer, per_head, k=as_(k), top=as_(top))
    S = torch.linalg.svdvals(M)
    rank = int((S[0] * max(M.shape) * torch.finfo(M.dtype).eps < S).sum())
    n = min(k, rank)
    torch.testing.assert_close(d.values, S[:n])
    assert d.vocab_scores.shape == (n, V) and d.top_ids.shape == (n, min(top, V)) and len(d.top_tokens) == n
    Vh = torch.linalg.svd(M).Vh[:n]
    for i in range(n):  # a direction is defined up to sign where its singular value is apart
        gaps = (S[:rank] - S[i]).abs()
        gaps[i] = math.inf
        if gaps.min() < 1e-3 * S[0]:
            continue
        want = Vh[i] @ reader
        want = want * (1 if want[want.abs().argmax()] > 0 else -1)
        torch.testing.assert_close(d.vocab_scores[i], want, rtol=1e-6, atol=1e-8 * S[0])
    for i in range(n):  # the top tokens are the highest scores, in order
        ranked = d.vocab_scores[i][d.top_ids[i]]
        assert bool((ranked[:-1] >= ranked[1:]).all())
        assert top == 0 or ranked[-1] >= d.vocab_scores[i].sort(descending=True).values[min(top, V) - 1]
        assert d.top_tokens[i] == [str(t) for t in d.top_ids[i].tolist()]


@settings(max_examples=40, deadline=None)
@given(heads=HEADS, L=st.integers(1, 4), data=st.data())
def test_a_path_is_the_float64_product_when_its_layers_increase_or_is_refused_naming_the_step(heads, L, data):
    from lazymat.circuits import Circuits

    H, Hkv = heads
    V, D, Dh = 7, 5, 2
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    w = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in {
        "W_E": (V, D), "W_U": (D, V), "W_Q": (L, H, D, Dh), "W_K": (L, Hkv, D, Dh), "W_V": (L, Hkv, D, Dh),
        "W_O": (L, H, Dh, D)}.items()}
    step = st.tuples(st.integers(-L, L - 1), st.integers(0, H - 1), st.just("OV"))
    steps = data.draw(st.lists(step, min_size=1, max_size=3))
    if data.draw(st.booleans()):
        steps[-1] = steps[-1][:2] + ("QK",)
    kv = H // Hkv
    want = w["W_E"]
    layers = [layer % L for layer, _, _ in steps]
    for (_, head, kind), layer in zip(steps, layers, strict=True):
        want = want @ (w["W_V"][layer, head // kv] @ w["W_O"][layer, head] if kind == "OV"
                       else w["W_Q"][layer, head] @ w["W_K"][layer, head // kv].mT)
    want = want @ (w["W_E"].mT if steps[-1][2] == "QK" else w["W_U"])
    c = Circuits(w)
    if all(a < b for a, b in zip(layers, layers[1:], strict=False)):
        torch.testing.assert_close(c.path(steps).to_dense(), want)
    else:
        with pytest.raises(ValueError, match=r"path step .* is in layer \d+, not after the layer \d+"):
            c.path(steps)


@pytest.mark.parametrize("step", [5, "OV", None, (0, 0)])
def test_a_path_step_that_is_no_triple_is_named(step):
    from lazymat.circuits import Circuits

    with pytest.raises(ValueError, match=re.escape(f"path step {step!r}: expected")):
        Circuits.synthetic("gpt2-small").path([step])


@settings(max_examples=20, deadline=None)
@given(layout=st.sampled_from(["hf_gpt2", "hf_bert", "hf_llama"]), given_heads=st.integers(1, 12),
       key=st.sampled_from(["num_attention_heads", "n_head"]))
def test_load_refuses_an_n_heads_that_disagrees_with_config_json(tmp_path_factory, layout, given_heads, key):
    """Fused heads cut at another width than the config's are other circuits: an ``n_heads``
    given against ``config.json`` was used without a word (12 heads of 32 read as 24 of 16)."""
    import json

    from lazymat.circuits import Circuits, LayoutError

    from circuit_models import as_hf_bert, as_hf_gpt2, as_hf_llama, canonical

    H = 4
    llama = layout == "hf_llama"
    w = canonical(V=9, D=12, L=2, H=H, Hkv=2 if llama else None, Dh=3, d_mlp=6, n_ctx=5, gated=llama)
    sd = {"hf_gpt2": as_hf_gpt2, "hf_bert": as_hf_bert, "hf_llama": as_hf_llama}[layout](w)
    folder = tmp_path_factory.mktemp("model")
    torch.save(sd, folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({key: H}))
    if given_heads == H:
        c = Circuits.load(folder, n_heads=given_heads)
        torch.testing.assert_close(c.OV(1, 3).to_dense(), Circuits.load(folder).OV(1, 3).to_dense())
        return
    with pytest.raises(LayoutError, match=rf"n_heads={given_heads} was given, but .*json says {H} heads"):
        Circuits.load(folder, n_heads=given_heads)


def _dense_scores(w, kind):
    """Copying and ``kind``-composition scores from float64 weights, by their definitions."""
    L, H = w["W_Q"].shape[:2]
    group = H // w["W_K"].shape[1]
    OV = torch.stack([torch.stack([w["W_V"][i, h // group] @ w["W_O"][i, h] for h in range(H)])
                      for i in range(L)])
    QK = torch.stack([torch.stack([w["W_Q"][i, h] @ w["W_K"][i, h // group].mT for h in range(H)])
                      for i in range(L)])
    right = {"Q": QK, "K": QK.mT, "V": OV}[kind]
    ev = torch.linalg.eigvals(w["W_E"] @ OV @ w["W_U"])
    copying = ev.sum(-1).real / ev.abs().sum(-1)
    comp = torch.zeros(L, H, L, H, dtype=torch.float64)
    for a in range(L):
        for b in range(a + 1, L):
            for i in range(H):
                for j in range(H):
                    A, B = OV[a, i], right[b, j]
                    comp[a, i, b, j] = (torch.linalg.matrix_norm(A @ B)
                                        / (torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(B)))
    return copying, comp, OV


@settings(max_examples=15, deadline=None)
@given(dtype=st.sampled_from([torch.float16, torch.bfloat16]), heads=HEADS,
       scale=st.sampled_from([0.1, 1.0, 3.0]), kind=st.sampled_from("QKV"), seed=st.integers(0, 2**16))
def test_16_bit_weights_score_as_their_float64_values(dtype, heads, scale, kind, seed):
    """float16 weights whose circuits pass 65504 (float16's largest value) gave a K-composition
    score of 0 for 0.088 and copying scores of NaN: the norms were multiplied in float16."""
    from lazymat.circuits import Circuits, diagonal_rank

    H, Hkv = heads
    V, D, L, Dh = 40, 64, 2, 16
    g = torch.Generator().manual_seed(seed)
    w = {n: (torch.randn(s, generator=g) * scale).to(dtype) for n, s in {
        "W_E": (V, D), "W_U": (D, V), "W_Q": (L, H, D, Dh), "W_K": (L, Hkv, D, Dh), "W_V": (L, Hkv, D, Dh),
        "W_O": (L, H, Dh, D)}.items()}
    exact = {n: t.double() for n, t in w.items()}  # the values the 16-bit weights hold
    copying, comp, OV = _dense_scores(exact, kind)
    c = Circuits(w)
    got = c.copying_scores().scores
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), copying, rtol=0, atol=1e-4)
    got = c.composition_scores(kind).scores
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), comp, rtol=0, atol=1e-5)
    d = c.singular_directions("OV", 1, 0, k=3)
    S = torch.linalg.svdvals(OV[1, 0])[:3]
    torch.testing.assert_close(d.values.double(), S, rtol=1e-5, atol=0)
    full = exact["W_E"] @ OV[0, H - 1] @ exact["W_U"]
    want = (full > full.diagonal()[:, None]).sum(-1)
    near = ((full - full.diagonal()[:, None]).abs() < 1e-5 * full.abs().max()).sum(-1)  # float32 ties
    assert bool(((diagonal_rank(c.full_OV(0, H - 1)) - want).abs() <= near).all())


@settings(max_examples=25, deadline=None)
@given(layout=st.sampled_from(["transformer_lens", "hf_gpt2", "hf_bert", "hf_llama"]), data=st.data())
def test_a_complex_weight_is_named_not_cast_to_real(layout, data):
    """A complex state-dict tensor was cast to float32 with only torch's warning (its imaginary
    part dropped, every circuit through it wrong); complex canonical weights failed in
    singular_directions with torch's '"lt_cpu" not implemented for ComplexFloat'."""
    import warnings

    from lazymat.circuits import Circuits

    from circuit_models import as_hf_bert, as_hf_gpt2, as_hf_llama, as_transformer_lens, canonical

    llama = layout == "hf_llama"
    w = canonical(V=9, D=12, L=2, H=4, Hkv=2 if llama else None, Dh=3, d_mlp=6, n_ctx=None if llama else 5,
                  gated=llama)
    write = {"transformer_lens": as_transformer_lens, "hf_gpt2": as_hf_gpt2, "hf_bert": as_hf_bert,
             "hf_llama": as_hf_llama}[layout]
    sd = write(w)
    c = Circuits.from_state_dict(sd, n_heads=None if layout == "transformer_lens" else 4)
    read = sorted(set(sd) - set(c.ignored_keys))
    key = data.draw(st.sampled_from(read))
    sd[key] = sd[key] * (1 + 0.5j)
    c = Circuits.from_state_dict(sd, n_heads=None if layout == "transformer_lens" else 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "Casting complex values to real" cast)
        with pytest.raises(TypeError, match=re.escape(f"{key!r} {tuple(sd[key].shape)} is torch.complex128")):
            for name in c.shapes:
                c.weight(name)
    name = data.draw(st.sampled_from(sorted(k for k in w if k.startswith("W_"))))
    canon = {k: v for k, v in w.items() if k.startswith("W_")}
    canon[name] = canon[name].to(torch.complex128)
    with pytest.raises(TypeError, match=rf"model's {name} \(.*\) is torch.complex128: circuit weights"):
        for weight in canon:
            Circuits(canon).weight(weight)
