"""Circuits from weights of mixed dtypes or types (qa16, session 12).

Found: ``Circuits({...})`` or ``Circuits.from_state_dict(sd)`` with one weight in another dtype
(a float64 ``W_E`` beside float32 heads, a bfloat16 ``W_Q``) built, then every analysis failed
deep in a product ("matmul: dtypes differ, float64 (20, 8) vs float32 (8, 8)") naming no
weight; a numpy weight failed as "lazymat.lazy expects a torch.Tensor". Now the first use of
such a weight raises a ``TypeError`` naming it, its dtype and the other's, and the remedy
(``dtype=``), which gives the float64 answers. Also: an unknown key's message read
"weights ; unknown W_X", and a model without notes printed "d_head=4; )"."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits

L, H, D, DH, V = 2, 2, 6, 3, 9
SHAPES = {"W_E": (V, D), "W_U": (D, V), "W_Q": (L, H, D, DH), "W_K": (L, H, D, DH), "W_V": (L, H, D, DH),
          "W_O": (L, H, DH, D)}


def _weights(seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}


def _state_dict(w):
    sd = {"embed.W_E": w["W_E"], "unembed.W_U": w["W_U"]}
    for layer in range(L):
        sd.update({f"blocks.{layer}.attn.{k}": w[k][layer] for k in ("W_Q", "W_K", "W_V", "W_O")})
    return sd


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), cast=st.dictionaries(st.sampled_from(sorted(SHAPES)),
                                                        st.sampled_from([torch.float32, torch.bfloat16]),
                                                        max_size=3),
       how=st.sampled_from(["mapping", "state dict"]))
def test_mixed_dtypes_are_named_where_first_used_and_dtype_cures_them(seed, cast, how):
    w = _weights(seed)
    mixed = {k: v.to(cast.get(k, torch.float64)) for k, v in w.items()}
    c = Circuits(mixed) if how == "mapping" else Circuits.from_state_dict(_state_dict(mixed))
    def both(c):  # full_OV and full_QK read every weight
        return c.full_OV(1, 0).to_dense(), c.full_QK(1, 0).to_dense()

    if len({t.dtype for t in mixed.values()}) > 1:
        with pytest.raises(TypeError, match=r"differ in dtype: W_\w+ is torch\.\w+, W_\w+ torch\.\w+"):
            both(c)
        if how == "mapping":
            return
        c = Circuits.from_state_dict(_state_dict(mixed), dtype=torch.float64)
        w = {k: v.double() for k, v in mixed.items()}
    E, U, Q, K, Vw, O = (w[k] for k in ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O"))
    ov, qk = both(c)
    torch.testing.assert_close(ov, E @ Vw[1, 0] @ O[1, 0] @ U)
    torch.testing.assert_close(qk, E @ Q[1, 0] @ K[1, 0].mT @ E.mT)


def test_a_weight_that_is_no_tensor_is_named():
    w = _weights(0)
    c = Circuits({**w, "W_E": w["W_E"].numpy()})
    with pytest.raises(TypeError, match="W_E is a ndarray, not a torch.Tensor"):
        c.full_OV(0, 0)


def test_messages_read_cleanly():
    w = _weights(0)
    with pytest.raises(ValueError, match=r"^weights unknown W_X; expected W_E"):
        Circuits({**w, "W_X": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"^weights missing W_U; unknown W_X; expected"):
        Circuits({**{k: v for k, v in w.items() if k != "W_U"}, "W_X": torch.zeros(2)})
    assert repr(Circuits(w)).endswith("d_head=3)")
