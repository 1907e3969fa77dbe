"""``Circuits`` built from canonical weights of a wrong shape (qa20, session 15): every
corruption (a dim dropped or added, a size changed) of any weight is a ``ValueError`` naming
a weight and its shape. A 3-d ``W_E`` used to fail with Python's "too many values to unpack"
and a 3-d ``W_K`` with "its -1 key/value heads do not divide ...": the dims of each weight
are now checked before any size is read from its shape."""

import re

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits, LayoutError, synthetic
from lazymat.presets import ModelShape

from circuit_models import as_transformer_lens, canonical

WEIGHTS = ("W_E", "W_pos", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")


def _weights(Hkv=None):
    return {k: v for k, v in canonical(V=9, D=5, L=2, H=4, Hkv=Hkv, Dh=2, d_mlp=6, n_ctx=3).items()
            if not k.startswith("ln_")}


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(WEIGHTS), how=st.sampled_from(["drop", "add", "resize"]), data=st.data(),
       gqa=st.booleans())
def test_any_corrupted_weight_shape_is_a_value_error_naming_a_weight_and_its_shape(name, how, data, gqa):
    w = _weights(Hkv=2 if gqa else None)
    shape = list(w[name].shape)
    at = data.draw(st.integers(0, len(shape) - (how != "add")))
    if how == "drop":
        del shape[at]
    elif how == "add":
        shape.insert(at, data.draw(st.integers(1, 3)))
    else:
        assume((name, at) != ("W_pos", 0))  # n_ctx is any size
        shape[at] += data.draw(st.sampled_from([-1, 1, 2]))
    w[name] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError) as raised:
        Circuits(w)
    message = str(raised.value)
    named = [k for k in WEIGHTS if re.search(rf"\b{k} (has shape )?\(", message)]
    assert named, message
    if how != "resize":  # a wrong number of dims is named on the weight itself, with its layout
        assert f"{name} has shape {tuple(shape)}, expected (" in message, message


def test_the_dims_of_a_weight_are_named_in_its_layout():
    w = _weights()
    w["W_E"] = w["W_E"][None]
    with pytest.raises(ValueError, match=r"W_E has shape \(1, 9, 5\), expected \(d_vocab, d_model\)"):
        Circuits(w)
    w = _weights()
    w["W_K"] = w["W_K"][0]
    with pytest.raises(ValueError, match=r"W_K has shape \(4, 5, 2\), expected \(n_layers, n_kv_heads, "):
        Circuits(w)


@settings(max_examples=30, deadline=None)
@given(n_heads=st.integers(1, 9), gqa=st.booleans())
def test_n_heads_given_for_a_layout_with_separate_heads_is_checked_not_ignored(n_heads, gqa):
    """TransformerLens's layout keeps each head apart, so it needs no ``n_heads``; one given
    that disagrees with the weights was silently ignored (a wrong model config went unseen)."""
    w = canonical(V=9, D=5, L=2, H=4, Hkv=2 if gqa else None, Dh=2, d_mlp=6, n_ctx=3)
    sd = as_transformer_lens(w)
    if n_heads == 4:
        c = Circuits.from_state_dict(sd, n_heads=n_heads)
        torch.testing.assert_close(c.QK(1, 3).to_dense(), Circuits.from_state_dict(sd).QK(1, 3).to_dense())
        return
    with pytest.raises(LayoutError, match=rf"n_heads={n_heads} was given, but 'blocks.0.attn.W_Q' "
                                          r"\(4, 5, 2\) holds 4 heads"):
        Circuits.from_state_dict(sd, n_heads=n_heads)


def test_a_config_json_that_is_not_json_is_named(tmp_path):
    sd = as_transformer_lens(canonical(V=9, D=5, L=2, H=4, Dh=2, d_mlp=6, n_ctx=3))
    torch.save(sd, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON .*pass n_heads="):
        Circuits.load(tmp_path)
    assert Circuits.load(tmp_path, n_heads=4).n_heads == 4


TINY = ModelShape(d_vocab=20, d_model=8, n_layers=2, n_heads=4, d_head=4, d_mlp=8, n_ctx=6)


@settings(max_examples=30, deadline=None)
@given(seed=st.one_of(st.integers(-2**70, 2**70), st.integers(-5, 5)))
@example(seed=10**22)  # lazymat demo --seed 99999999999999999999999
def test_any_int_seed_draws_a_synthetic_model(seed):
    """A seed past 64 bits (``lazymat demo --seed 99999999999999999999999``) failed with
    torch's "Overflow when unpacking long long" and a traceback; any int now draws, the same
    weights for the same seed."""
    a, b = synthetic(TINY, seed=seed), synthetic(TINY, seed=seed)
    W = a.weight("W_E").to_dense()
    assert torch.isfinite(W).all() and torch.equal(W, b.weight("W_E").to_dense())
    assert not torch.equal(W, synthetic(TINY, seed=seed + 1).weight("W_E").to_dense())


@pytest.mark.parametrize("seed", [1.5, "3", True, None])
def test_a_seed_that_is_not_an_int_is_named(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        synthetic(TINY, seed=seed)



@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(WEIGHTS), value=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
       data=st.data())
def test_a_non_finite_weight_is_named_on_first_use(name, value, data):
    """A NaN or inf in a weight made every circuit through it NaN; the analyses then ranked the
    other heads as if nothing were wrong (``Scores.top`` skips a NaN score) and the demo printed
    them. It is now a NonFiniteError naming the weight, its shape and the entry's index."""
    import lazymat as lm

    w = _weights()
    index = tuple(data.draw(st.integers(0, n - 1)) for n in w[name].shape)
    w[name][index] = value
    c = Circuits(w)
    with pytest.raises(lm.linalg.NonFiniteError,
                       match=rf"{name} {re.escape(str(tuple(w[name].shape)))} holds (nan|-?inf) at index "
                             rf"{re.escape(str(index))}"):
        circuit = {"W_pos": c.pos_QK, "W_in": c.w_in, "W_out": c.w_out, "W_Q": c.full_QK, "W_K": c.full_QK}
        circuit.get(name, c.full_OV)().to_dense()


def test_the_demo_names_a_non_finite_weight_in_one_line(tmp_path, capsys):
    from lazymat.cli import main

    w = canonical(V=30, D=8, L=2, H=4, Dh=2, d_mlp=6, n_ctx=5)
    sd = as_transformer_lens(w)
    sd["blocks.1.attn.W_O"][2, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    assert main(["demo", "--weights", str(tmp_path / "nan.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "W_O (2, 4, 2, 8) holds nan at index (1, 2, 0, 0)" in err


def test_finite_weights_whose_sum_overflows_are_accepted():
    """The check sums a weight first (one pass); a sum overflowing to inf from finite entries is
    no non-finite entry."""
    w = {k: v.float() for k, v in _weights().items()}
    w["W_E"] = torch.full_like(w["W_E"], 3e38)
    assert torch.isinf(w["W_E"].sum())
    assert Circuits(w).W_E.to_dense().isfinite().all()
