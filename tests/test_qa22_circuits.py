"""The random baseline of composition scores (qa22, session 17). Found and fixed:
``composition_scores(baseline=True, samples=0)`` subtracted the mean of no samples, NaN,
so every score became NaN and ``top`` silently listed nothing; a negative, float or bool
``samples`` or a non-int ``seed`` failed inside ``torch.randn``/``manual_seed`` naming
neither. The property compares every accepted call with a float64 baseline written here from
the definition (dense ``||A B|| / (||A|| ||B||)`` of the seeded Gaussian draws)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits import Circuits
from lazymat.presets import ModelShape

from circuit_models import as_hf_bert, as_hf_gpt2, as_hf_llama, as_transformer_lens, canonical, folded

SHAPE = ModelShape(d_vocab=11, d_model=6, n_layers=2, n_heads=3, d_head=2, d_mlp=4)


def _dense_baseline(kind: str, samples: int, seed: int, D: int, Dh: int) -> float:
    g = torch.Generator().manual_seed(seed)
    draws = [torch.randn(samples, *shape, generator=g, dtype=torch.float64)
             for shape in ((D, Dh), (Dh, D), (D, Dh), (Dh, D))]
    left, right = draws[0] @ draws[1], draws[2] @ draws[3]
    right = right.mT if kind == "K" else right
    fro = torch.linalg.matrix_norm
    return (fro(left @ right) / (fro(left) * fro(right))).mean().item()


@pytest.fixture(scope="module")
def model():
    return Circuits.synthetic(SHAPE, seed=3)


_SAMPLES = st.one_of(st.integers(-3, 5), st.sampled_from([2.5, 1.0, True, False, "4", None]),
                     st.integers(1, 4).map(np.int64), st.integers(0, 3).map(torch.tensor))
_SEEDS = st.one_of(st.integers(-5, 2**31), st.sampled_from([1.5, True, "0", None]),
                   st.integers(0, 9).map(np.int32))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from("QKV"), samples=_SAMPLES, seed=_SEEDS)
def test_the_corrected_scores_are_the_raw_ones_minus_the_dense_baseline_or_the_argument_is_named(
        model, kind, samples, seed):
    raw = model.composition_scores(kind)
    good_samples = not isinstance(samples, (bool, float, str, type(None))) and int(samples) >= 1
    good_seed = not isinstance(seed, (bool, float, str, type(None)))
    if not good_samples or not good_seed:
        name = "samples" if not good_samples else "seed"
        with pytest.raises((TypeError, ValueError), match=rf"random baseline: {name} must be"):
            model.composition_scores(kind, baseline=True, samples=samples, seed=seed)
        return
    got = model.composition_scores(kind, baseline=True, samples=samples, seed=seed)
    base = _dense_baseline(kind, int(samples), int(seed), SHAPE.d_model, SHAPE.d_head)
    assert 0 < base < 1
    want = torch.where(raw.valid, raw.scores.double() - base, 0.0)
    torch.testing.assert_close(got.scores.double(), want, rtol=0, atol=1e-6)
    assert got.top(1) and not got.scores.isnan().any()
    assert f"{base:.4f}" in got.notes[-1]


# ---- norms stored in another dtype than the weights ------------------------------------------
# Found and fixed: a bfloat16 checkpoint whose norm scales are float32 (as mixed-precision
# checkpoints keep them) was refused by every analysis: folding promoted the reading weights to
# float32, and the dtype check then named "W_Q is torch.float32, W_E torch.bfloat16" although
# the file's W_Q was bfloat16. The scale is now folded in the promoted dtype and the result
# rounded once to the weight's own dtype.

_LAYOUTS = {"transformer_lens": (as_transformer_lens, True, False), "hf_gpt2": (as_hf_gpt2, True, False),
            "hf_bert": (as_hf_bert, True, True), "hf_llama": (as_hf_llama, False, False)}
_LOW = (torch.bfloat16, torch.float16, torch.float32)


def _is_norm(key: str, t: torch.Tensor) -> bool:
    return t.ndim == 1 and any(part in key for part in ("ln", "LayerNorm", "norm"))


@settings(max_examples=40, deadline=None)
@given(layout=st.sampled_from(sorted(_LAYOUTS)), weights=st.sampled_from(_LOW),
       norms=st.sampled_from((torch.float32, torch.float64, torch.bfloat16)), seed=st.integers(0, 99))
def test_weights_keep_their_dtype_whatever_the_norms_and_fold_to_the_float64_formula(layout, weights, norms,
                                                                                    seed):
    write, layernorm, tied = _LAYOUTS[layout]
    w = canonical(V=9, D=4, L=2, H=2, Hkv=1 if layout == "hf_llama" else None, Dh=2, d_mlp=5,
                  n_ctx=None if layout == "hf_llama" else 4, seed=seed, gated=layout == "hf_llama")
    stored = {k: v.to(norms if k.startswith("ln_") else weights) for k, v in w.items()}
    sd = {k: v.to(norms) if _is_norm(k, v) else v.to(weights) for k, v in write(stored).items()}
    c = Circuits.from_state_dict(sd, n_heads=2)
    assert f"layout {layout}" in c.notes
    want = folded({k: v.double() for k, v in stored.items()}, layernorm=layernorm, tied_unembed=tied)
    eps = torch.finfo(weights).eps
    for name, ref in want.items():
        got = c.weight(name).to_dense()
        assert got.dtype == weights, (name, got.dtype)
        torch.testing.assert_close(got.double(), ref, rtol=2 * eps, atol=2 * eps * ref.abs().max().item())
    assert c.copying_scores().scores.isfinite().all()
    assert c.composition_scores("K").scores.isfinite().all()
