"""Coefficients and the float range: the cases scale16 left (coef17, session 17).

Scalars written on a product's factors that cancel (``(2**-300 A) @ (2**-300 B) @ (2**600 C)``)
fold to a coefficient near 1, and the leaves were multiplied unscaled: ``A @ B`` of ``2**600``
entries each overflowed where eager, scaling each factor first, is finite and exact. The fold now
measures the products of the scalars over runs of factors (:func:`lazymat.coefficient.chain_fold`)
and a term whose runs reach far is rescaled as one with a far coefficient."""

import math

import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat.coefficient import Wide, chain_fold, far, far_exponent, fold, shrinks
from lazymat.execute import evaluate_as_written

RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2}
RANGE = {torch.float64: 1000, torch.float32: 120, torch.float16: 14}  # leaves 2**(+-half)


def _chain(seed, dtype, dims, leaf_exps, scal_exps):
    """``(2**s0 L0) @ (2**s1 L1) @ ...`` with ``Li = Mi * 2**ai`` (``Mi`` in [0.5, 1.5), exact in
    ``dtype``): the lazy expression and its exact value in float64 (powers of two scale exactly)."""
    gen = torch.Generator().manual_seed(seed)
    x, product, total = None, None, 0
    for i, (a, e) in enumerate(zip(leaf_exps, scal_exps, strict=True)):
        m = (torch.rand(dims[i], dims[i + 1], generator=gen, dtype=torch.float64) + 0.5).to(dtype).double()
        leaf = lm.lazy(torch.ldexp(m, torch.tensor(float(a), dtype=torch.float64)).to(dtype))
        if e:
            leaf = 2.0**e * leaf
        total += a + e
        x = leaf if x is None else x @ leaf
        product = m if product is None else product @ m
    return x, torch.ldexp(product, torch.tensor(float(total), dtype=torch.float64))


@st.composite
def cancelling(draw, dtype):
    """Chains of 3 or 4 factors whose scalars multiply to within 2**4 of 1, each up to the range."""
    n = draw(st.integers(3, 4))
    half, full = RANGE[dtype] // 2, RANGE[dtype]
    dims = [draw(st.integers(1, 4)) for _ in range(n + 1)]
    leaf_exps = [draw(st.integers(-half, half)) for _ in range(n)]
    scal = [draw(st.integers(-full, full)) for _ in range(n - 1)]
    scal.append(draw(st.integers(-4, 4)) - sum(scal))
    assume(abs(scal[-1]) <= full)
    return draw(st.integers(0, 2**16)), dims, leaf_exps, scal


def _check(dtype, case):
    seed, dims, leaf_exps, scal_exps = case
    x, want = _chain(seed, dtype, dims, leaf_exps, scal_exps)
    info = torch.finfo(dtype)
    if not (want.abs().min() > info.tiny * 16 and want.abs().max() < info.max / 16):
        return  # the answer itself leaves the normal range
    prefix = [sum(scal_exps[:i]) for i in range(len(scal_exps) + 1)]
    if max(prefix) - min(prefix) <= far_exponent(dtype):
        # scalars near 1 on every run: they move a product by at most their own factor, so the
        # guarantee holds where every product of the leaves alone is within that of the edges
        lo, hi = math.log2(info.tiny), math.log2(info.max)
        margin = far_exponent(dtype) + 12
        spans = [sum(leaf_exps[i:j]) for i in range(len(leaf_exps)) for j in range(i + 1, len(leaf_exps) + 1)]
        if not all(lo + margin < a < hi - margin for a in spans):
            return
    rtol = RTOL[dtype]
    if not torch.allclose(evaluate_as_written(x).double(), want, rtol=rtol, atol=0):
        return  # the expression as written loses the answer itself
    torch.testing.assert_close(x.to_dense().double(), want, rtol=rtol, atol=0)
    v = torch.ones(x.shape[-1], dtype=dtype)
    torch.testing.assert_close((x @ v).double(), want @ v.double(), rtol=rtol, atol=0)
    if dtype is not torch.float16 and x.shape[-1] == x.shape[-2]:
        torch.testing.assert_close(LA.trace(x).double(), want.trace(), rtol=max(rtol, 1e-6), atol=0)
        torch.testing.assert_close(LA.diagonal(x).double(), want.diagonal(), rtol=max(rtol, 1e-6), atol=0)


@settings(max_examples=80, deadline=None)
@given(case=cancelling(torch.float64))
@example(case=(0, [3, 3, 3, 3], [600, 600, -1000], [-300, -300, 600]))  # A @ B was 2**1200: inf
@example(case=(1, [2, 3, 3, 2], [-600, -600, 1000], [300, 300, -600]))  # A @ B was 2**-1200: 0
def test_float64_cancelling_scalars_keep_the_answer_eager_keeps(case):
    _check(torch.float64, case)


@settings(max_examples=60, deadline=None)
@given(case=cancelling(torch.float32))
@example(case=(0, [3, 3, 3, 3], [66, 66, -110], [-33, -33, 66]))  # A @ B was 2**132: inf
def test_float32_cancelling_scalars_keep_the_answer_eager_keeps(case):
    _check(torch.float32, case)


@settings(max_examples=60, deadline=None)
@given(case=cancelling(torch.float16))
@example(case=(0, [3, 3, 3, 3], [8, 8, -12], [-5, -5, 10]))  # A @ B was past 2**17: inf
def test_float16_cancelling_scalars_keep_the_answer_eager_keeps(case):
    _check(torch.float16, case)


def test_chain_fold_measures_the_runs_not_only_the_product():
    f64, f16 = torch.float64, torch.float16
    k = chain_fold([2.0**900, 2.0**-900], 3, f64)
    assert k == Wide(0.5, 1, reach=900) and far(k, torch.float64) and not shrinks(k)
    assert chain_fold([2.0**900, 2.0**-900], 2, f64) == 1.0  # two factors: no run short of the whole
    assert chain_fold([0.125], 5, f64) == 0.125  # one coefficient: a plain fold
    assert chain_fold([2.0**3, 2.0**-3], 3, f16) == 1.0  # a reach far for no dtype is not kept
    # runs 2**-20 and 2**21: far in float16 (marked), not in float64 (a plain number)
    k = chain_fold([2.0**-20, 2.0**21], 3, f16)
    assert k == Wide(0.5, 2, reach=21) and far(k, f16)
    assert chain_fold([2.0**-20, 2.0**21], 3, f64) == 2.0
    assert chain_fold([2.0**-20, 2.0**21], 3, torch.float32) == 2.0
    # the reach survives a scale of the whole, a fold into an outer product, and is read exactly
    assert fold(k, 3.0).reach == 21 and chain_fold([k, 2.0], 4, f16).reach == 21
    # ...but not a fold into a product of a wider dtype, where it is not far
    assert chain_fold([k, 2.0], 4, f64) == 4.0 and chain_fold([k], 2, torch.float32) == 2.0
    assert chain_fold([2.0**-10, 2.0**9], 3, f16) == Wide(0.5, 0, reach=10)
    assert shrinks(Wide(0.5, 0, reach=10))
    assert chain_fold([2.0**-500, 0.0], 3, f64) == 0.0
    assert math.isnan(chain_fold([2.0**-500, math.nan], 3, f64))


def test_cancelling_scalars_rescale_and_explain_shows_it():
    A = torch.full((3, 3), 2.0**600, dtype=torch.float64)
    C = torch.full((3, 3), 2.0**-1000, dtype=torch.float64)
    x = (2.0**-300 * lm.lazy(A)) @ (2.0**-300 * lm.lazy(A)) @ (2.0**600 * lm.lazy(C))
    want = torch.full((3, 3), 9 * 2.0**200, dtype=torch.float64)
    torch.testing.assert_close(x.to_dense(), want, rtol=1e-12, atol=0)
    steps = [r.op for r in lm.explain(x).rows]
    assert sum(s.startswith("rescale") for s in steps) == 3, steps
    assert far_exponent(torch.float64) == 64
