"""Circuit analyses on tiny models of odd shapes (qa21, session 16): one layer, one head, a
d_head of 1, a vocabulary of one token, grouped key/value heads. Found and fixed: the repr of
scores with no valid entry (a one-layer model's composition: no earlier-to-later pair)
ended in an empty "strongest:" list; a layer or head slice with a step of 0 or below, or
bounds that are not ints, failed in the engine's indexing naming a weight's shape."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits, synthetic
from lazymat.presets import ModelShape

from circuit_models import as_transformer_lens, canonical


@st.composite
def _tiny_models(draw):
    H = draw(st.integers(1, 3))
    Hkv = draw(st.sampled_from([h for h in range(1, H + 1) if H % h == 0]))
    dims = {name: draw(st.integers(1, 4)) for name in ("V", "D", "d_mlp")}
    return canonical(L=draw(st.integers(1, 3)), H=H, Hkv=Hkv, Dh=draw(st.integers(1, 2)), n_ctx=None,
                     seed=draw(st.integers(0, 99)), **dims)


@settings(max_examples=30, deadline=None)
@given(w=_tiny_models(), kind=st.sampled_from("QKV"))
def test_scores_of_any_tiny_model_read_cleanly_and_copying_is_the_dense_eigenvalue_ratio(w, kind):
    c = Circuits.from_state_dict(as_transformer_lens(w), fold_ln=False)
    for scores in (c.composition_scores(kind), c.copying_scores()):
        text = repr(scores)
        lines = scores.top(5)
        if lines:
            assert text.endswith("strongest:\n  " + "\n  ".join(lines) + ")"), text
        else:
            assert "strongest" not in text and "no valid entry has a score" in text, text
    if w["W_Q"].shape[0] == 1:  # one layer: no pair composes
        assert not c.composition_scores(kind).top(5)
    group = w["W_Q"].shape[1] // w["W_V"].shape[1]
    OV = w["W_E"] @ w["W_V"].repeat_interleave(group, 1) @ w["W_O"] @ w["W_U"]
    eig = torch.linalg.eigvals(OV)
    expected = (eig.sum(-1) / eig.abs().sum(-1)).real
    torch.testing.assert_close(c.copying_scores().scores.to(expected.dtype), expected, rtol=1e-9, atol=1e-9)


_BOUND = st.none() | st.integers(-5, 5)


@settings(max_examples=60, deadline=None)
@given(start=_BOUND, stop=_BOUND, step=st.none() | st.integers(-2, 3),
       which=st.sampled_from(["layer", "head"]))
def test_any_layer_or_head_slice_selects_what_python_selects_or_is_named(start, stop, step, which):
    """A slice's step must be positive (torch's indexing takes no other): refused naming the
    argument and the slice (it named a weight's shape, deep in the engine's indexing)."""
    w = canonical(V=6, D=4, L=3, H=4, Dh=2, d_mlp=3, n_ctx=None)
    c = Circuits.from_state_dict(as_transformer_lens(w), fold_ln=False)
    s = slice(start, stop, step)
    args = (s, None) if which == "layer" else (None, s)
    if step is not None and step <= 0:
        with pytest.raises(ValueError, match=rf"^{which} slice\(.*\): the slice step must be positive"):
            c.OV(*args)
        return
    OV = w["W_V"] @ w["W_O"]
    expected = OV[s] if which == "layer" else OV[:, s]
    torch.testing.assert_close(c.OV(*args).to_dense(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [slice(0.5, 2), slice("a", None), slice(None, None, True)])
def test_a_slice_of_other_than_ints_is_named(bad):
    c = Circuits.from_state_dict(as_transformer_lens(canonical(L=2, H=2, n_ctx=None)), fold_ln=False)
    with pytest.raises(TypeError, match=r"^head slice\(.*\): slice bounds and step must be ints or None"):
        c.QK(None, bad)


_SIZE = st.integers(-1, 6) | st.sampled_from([2.0, True, None])


@settings(max_examples=60, deadline=None)
@given(d_vocab=_SIZE, d_model=_SIZE, n_layers=st.integers(1, 3), n_heads=st.integers(2, 4), d_head=_SIZE,
       d_mlp=_SIZE, n_ctx=_SIZE, n_kv_heads=_SIZE)
def test_a_synthetic_model_of_any_sizes_is_made_or_refused_naming_the_size(
        d_vocab, d_model, n_layers, n_heads, d_head, d_mlp, n_ctx, n_kv_heads):
    """Bad sizes are refused where the model is made, naming the field (a d_model or d_head of
    0 raised ZeroDivisionError, a negative size torch's "negative dimension", a float
    torch's "argument 'size' failed to unpack", a d_model below d_head an "expanded size" error,
    all on first use of a weight)."""
    sizes = {"d_vocab": d_vocab, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads,
             "d_head": d_head, "d_mlp": d_mlp, "n_ctx": n_ctx, "n_kv_heads": n_kv_heads}
    try:
        c = synthetic(ModelShape(**sizes))
    except (TypeError, ValueError) as e:
        assert any(name in str(e) for name in (*sizes, "layers")), e
        return
    L, H = n_layers, n_heads
    assert c.copying_scores().scores.shape == (L, H)
    assert c.composition_scores("K").scores.shape == (L, H, L, H)
    W_E, W_V, W_O, W_U = (c.weight(n).to_dense().double() for n in ("W_E", "W_V", "W_O", "W_U"))
    group = H // W_V.shape[1]
    full = W_E @ W_V.repeat_interleave(group, 1) @ W_O @ W_U
    torch.testing.assert_close(c.full_OV().to_dense().double(), full, rtol=1e-4, atol=1e-5)
