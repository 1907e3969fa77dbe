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
