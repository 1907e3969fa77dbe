"""Circuit analyses on tiny models of odd shapes (qa21, session 16): one layer, one head, a
d_head of 1, a vocabulary of one token, grouped key/value heads. Found and fixed: the repr of
scores with no valid entry (a one-layer model's composition: no earlier-to-later pair)
ended in an empty "strongest:" list."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits

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
