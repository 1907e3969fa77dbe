"""The random baseline of composition scores (qa22, session 17). Found and fixed:
``composition_scores(baseline=True, samples=0)`` subtracted the mean of no samples, NaN,
so every score became NaN and ``top`` silently listed nothing; a negative, float or bool
``samples`` or a non-int ``seed`` failed inside ``torch.randn``/``manual_seed`` naming
neither. The property compares every accepted call with a float64 baseline written here from
the definition (dense ``||A B|| / (||A|| ||B||)`` of the seeded Gaussian draws)."""

import importlib.util
import json
import pathlib
import tempfile

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


# ---- weights on the meta device, and a device that cannot hold them ---------------------------
# Found and fixed: with shape-only (meta) weights the analyses that can give shapes did, but
# printing their Scores, .top, .to_dataframe, .plot, singular_directions and diagonal_rank failed
# inside torch ("Cannot copy out of meta tensor", "Tensor.item() cannot be called on meta
# tensors"); device="cuda" on a machine without CUDA passed, then failed at a weight's first use
# with torch's bare "AssertionError: Torch not compiled with CUDA enabled".

_ANALYSES = {
    "copying": lambda c: c.copying_scores(),
    "composition": lambda c: c.composition_scores("Q", baseline=True),
    "directions": lambda c: c.singular_directions("OV", 1, 0, k=2, top=3),
    "diagonal_rank": lambda c: c.diagonal_rank(c.full_OV(0, [0, 1]), rows=[2, 0, 5]),
}
_READS = {"repr": repr, "top": lambda s: s.top(2), "to_dataframe": lambda s: s.to_dataframe(),
          "plot": lambda s: s.plot()}


@settings(max_examples=20, deadline=None)
@given(analysis=st.sampled_from(sorted(_ANALYSES)), read=st.sampled_from(sorted(_READS)),
       how=st.sampled_from(["device", "tensors"]), seed=st.integers(0, 99))
def test_meta_weights_give_shapes_or_a_refusal_naming_the_meta_device(analysis, read, how, seed):
    sd = as_transformer_lens(canonical(V=7, D=4, L=2, H=2, Dh=2, d_mlp=3, n_ctx=None, seed=seed))
    real = _ANALYSES[analysis](Circuits.from_state_dict(sd))
    meta = (Circuits.from_state_dict(sd, device="meta") if how == "device" else
            Circuits.from_state_dict({k: v.to("meta") for k, v in sd.items()}))
    try:
        got = _ANALYSES[analysis](meta)
    except ValueError as e:
        assert analysis == "directions" and "meta device" in str(e), e  # tokens need values
        return
    values = got if isinstance(got, torch.Tensor) else got.scores
    want = real if isinstance(real, torch.Tensor) else real.scores
    assert values.device.type == "meta" and values.shape == want.shape and values.dtype == want.dtype
    if isinstance(got, torch.Tensor):
        return
    if read == "repr":
        assert "on the meta device" in repr(got)
        return
    if importlib.util.find_spec("pandas" if read == "to_dataframe" else "matplotlib") is None:
        return  # (its ImportError comes first)
    with pytest.raises(ValueError, match=rf"{read}: the scores .* are on the meta device"):
        _READS[read](got)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_without_support_is_named_when_the_model_is_made():
    sd = as_transformer_lens(canonical(V=7, D=4, L=2, H=2, Dh=2, d_mlp=3, n_ctx=None))
    with pytest.raises(ValueError, match="device 'cuda' cannot hold the weights"):
        Circuits.from_state_dict(sd, device="cuda")


# ---- a vocab.txt shorter than the embedding ---------------------------------------------------
# Found and fixed: Circuits.load refused a model whose embedding has more rows than its vocab.txt
# has tokens (rows padded to a round size, as some BERT variants have: 30528 rows, 30522 tokens)
# with "vocabulary has 30522 tokens, W_E has d_vocab=30528", naming neither the file nor a cure,
# although nothing had asked for tokens. Now the file's tokens name their ids, the padded rows go
# by their id; a file with more tokens than rows is refused naming it.

@settings(max_examples=15, deadline=None)
@given(V=st.integers(3, 9), n=st.integers(0, 12), seed=st.integers(0, 99))
def test_load_fits_a_vocab_file_to_the_embedding_or_names_it(V, n, seed):
    w = canonical(V=V, D=4, L=2, H=2, Dh=2, d_mlp=3, n_ctx=5, seed=seed)
    tokens = [f"tok{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        torch.save(as_hf_bert(w), folder / "pytorch_model.bin")
        (folder / "config.json").write_text(json.dumps({"num_attention_heads": 2}))
        (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens))
        if n > V:
            with pytest.raises(ValueError, match=rf"vocab\.txt has {n} tokens, more than the {V} rows"):
                Circuits.load(folder)
            return
        c = Circuits.load(folder)
    assert [c.token(i) for i in range(V)] == tokens + [str(i) for i in range(n, V)]
    assert (f"names {n} of the {V} tokens" in c.notes) == (n < V)
    d = c.singular_directions("OV", 1, 1, k=1, top=V)
    assert d.top_tokens[0] == [c.token(i) for i in d.top_ids[0].tolist()]
