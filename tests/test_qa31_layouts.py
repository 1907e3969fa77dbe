"""Loader errors for a GPT-2 checkpoint name the weight that fuses the heads (qa31, session 21).

Found and fixed: with no ``n_heads`` (a ``.pt`` with no ``config.json`` beside it), or one that
does not divide ``d_model``, the error said that ``wte.weight``, the token embedding, "fuses the
heads": the fused weight is ``h.{l}.attn.c_attn.weight`` (Q, K and V side by side, each
``d_model`` wide).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits, LayoutError

from circuit_models import as_hf_gpt2, canonical


@settings(max_examples=20, deadline=None)
@given(heads=st.integers(1, 4), d_head=st.integers(1, 3), prefix=st.sampled_from(["", "transformer."]),
       wrong=st.integers(0, 5))
def test_the_error_names_c_attn_and_its_width_per_q_k_v(heads, d_head, prefix, wrong):
    D = heads * d_head
    sd = as_hf_gpt2(canonical(V=7, D=D, L=2, H=heads, Dh=d_head, d_mlp=4, n_ctx=3), prefix=prefix)
    key = f"{prefix}h.0.attn.c_attn.weight"
    assert sd[key].shape == (D, 3 * D)
    with pytest.raises(LayoutError, match="fuses the heads") as missing:
        Circuits.from_state_dict(sd)
    assert repr(key) in str(missing.value) and f"width {D} for each of Q, K and V" in str(missing.value)
    n_heads = D + 1 + wrong  # (never divides D)
    with pytest.raises(LayoutError, match=f"not divisible into n_heads={n_heads}") as undivided:
        Circuits.from_state_dict(sd, n_heads=n_heads)
    assert repr(key) in str(undivided.value) and "wte" not in str(undivided.value)
    c = Circuits.from_state_dict(sd, n_heads=heads, fold_ln=False)
    assert (c.n_heads, c.d_head) == (heads, d_head)
    torch.testing.assert_close(c.W_O(1, heads - 1).to_dense(),
                               sd[f"{prefix}h.1.attn.c_proj.weight"][(heads - 1) * d_head:], rtol=0, atol=0)
