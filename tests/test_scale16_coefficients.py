"""A coefficient pulled out of a product must not over- or underflow where the expression as
written does not (docs/expressions.md "Where a coefficient is applied").

Found (scale16, session 16): the canonical form folds every scalar of a product into one
coefficient, applied to the product's value at the end, so the products before it had the
unscaled magnitudes: ``(1e-300 * A) @ B`` with ``1e200`` entries was inf (eager ``4e100``), its
norms inf and singular values NaN; in float16, ``(A / 8) @ B`` was inf wherever ``A @ B`` passed
65504. Now a coefficient below 1 in magnitude scales the smaller operand of the first product
(every later product scaled down as it is formed) and one far from 1 for the dtype has every
factor rescaled by a power of two first (:func:`lazymat.execute.rescaled`)."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA
from lazymat.coefficient import Wide, far, far_exponent, power_of_two, shrinks
from lazymat.execute import evaluate_as_written

RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2}
# exponent range for leaves and scalars: leaves 2**(+-half), scalars 2**(+-range)
RANGE = {torch.float64: 1000, torch.float32: 120, torch.float16: 14}


def _chain(seed, dtype, dims, leaf_exps, scal_exps, outer):
    """``outer * (s0 * L0) @ (s1 * L1) @ ...`` with ``Li = Mi * 2**ai`` (``Mi`` in [0.5, 1.5),
    exact in ``dtype``) and scalars ``2**e`` (None: none): the lazy expression and the exact
    answer in float64 as ``(M0 @ M1 @ ..., total exponent)``."""
    gen = torch.Generator().manual_seed(seed)
    x, product, total = None, None, 0
    for i, (a, e) in enumerate(zip(leaf_exps, scal_exps, strict=True)):
        m = (torch.rand(dims[i], dims[i + 1], generator=gen, dtype=torch.float64) + 0.5).to(dtype).double()
        leaf = lm.lazy(torch.ldexp(m, torch.tensor(float(a), dtype=torch.float64)).to(dtype))
        total += a
        if e is not None:
            leaf, total = 2.0**e * leaf, total + e
        x = leaf if x is None else x @ leaf
        product = m if product is None else product @ m
    if outer is not None:
        x, total = 2.0**outer * x, total + outer
    return x, product, total


def _exact(product, total):
    return torch.ldexp(product, torch.tensor(float(total), dtype=torch.float64))


@st.composite
def chains(draw, dtype):
    n = draw(st.integers(2, 4))
    half, full = RANGE[dtype] // 2, RANGE[dtype]
    dims = [draw(st.integers(1, 4)) for _ in range(n + 1)]
    leaf_exps = [draw(st.integers(-half, half)) for _ in range(n)]
    scal = st.none() | st.integers(-full, full)
    return draw(st.integers(0, 2**16)), dims, leaf_exps, [draw(scal) for _ in range(n)], draw(scal)


def _check(dtype, case):
    seed, dims, leaf_exps, scal_exps, outer = case
    x, product, total = _chain(seed, dtype, dims, leaf_exps, scal_exps, outer)
    info = torch.finfo(dtype)
    lo, hi = math.log2(info.tiny), math.log2(info.max)
    big = total + math.log2(product.abs().max())
    small = total + math.log2(product.abs().min())
    if not (small > lo + 4 and big < hi - 4):
        return  # the answer itself leaves the normal range
    coef = sum(e for e in (*scal_exps, outer) if e is not None)
    if abs(coef) <= far_exponent(dtype):
        # the guarantee for a coefficient near 1 (it moves a product by at most 2**coef): every
        # product of the leaves alone, in any order, within that of the edges, with room for the
        # sums (entries in [0.5, 1.5), inner dims <= 4)
        margin = far_exponent(dtype) + 12
        spans = [sum(leaf_exps[i:j]) for i in range(len(leaf_exps)) for j in range(i + 1, len(leaf_exps) + 1)]
        if not all(lo + margin < a < hi - margin for a in spans):
            return
    eager = evaluate_as_written(x).double()
    want = _exact(product, total)
    rtol = RTOL[dtype]
    if not torch.allclose(eager, want, rtol=rtol, atol=0):
        return  # the expression as written loses the answer itself (an inf or a 0 on its way)
    torch.testing.assert_close(x.to_dense().double(), want, rtol=rtol, atol=0)
    v = torch.ones(x.shape[-1], dtype=dtype)
    torch.testing.assert_close((x @ v).double(), want @ v.double(), rtol=rtol, atol=0)
    if dtype is not torch.float16:  # (the routes below compute in the dtype's own precision)
        s = LA.svdvals(x)
        top = torch.linalg.svdvals(want)[:1]
        torch.testing.assert_close(s[:1].double(), top, rtol=max(rtol, 1e-6), atol=0)
        if x.shape[-1] == x.shape[-2]:
            torch.testing.assert_close(LA.trace(x).double(), want.trace(), rtol=max(rtol, 1e-6), atol=0)


@settings(max_examples=80, deadline=None)
@given(case=chains(torch.float64))
@example(case=(0, [4, 4, 4], [665, 665], [-997, None], None))  # (1e-300 * A) @ B, 1e200 entries
@example(case=(1, [5, 3, 2, 3], [-429, -361, -415], [267, None, None], None))  # underflowed at the end
@example(case=(2, [2, 4, 2], [-442, -282], [None, 553], 600))  # a Wide coefficient, past float64
def test_float64_chains_keep_the_answer_eager_keeps(case):
    _check(torch.float64, case)


@settings(max_examples=60, deadline=None)
@given(case=chains(torch.float16))
@example(case=(0, [4, 8, 4], [7, 7], [-3, None], None))  # (A / 8) @ B: A @ B passes 65504
def test_float16_chains_keep_the_answer_eager_keeps(case):
    _check(torch.float16, case)


@settings(max_examples=40, deadline=None)
@given(case=chains(torch.float32))
def test_float32_chains_keep_the_answer_eager_keeps(case):
    _check(torch.float32, case)


def test_the_report_example_is_finite_on_every_route():
    A = B = torch.full((4, 4), 1e200, dtype=torch.float64)
    x = (1e-300 * lm.lazy(A)) @ lm.lazy(B)
    D = (1e-300 * A) @ B  # 4e100 everywhere
    assert_close = torch.testing.assert_close
    assert_close(x.to_dense(), D, rtol=1e-12, atol=0)
    assert_close(x @ torch.ones(4, dtype=torch.float64), D.sum(-1), rtol=1e-12, atol=0)
    assert_close(LA.matrix_norm(x), torch.tensor(1.6e101, dtype=torch.float64), rtol=1e-12, atol=0)
    assert_close(LA.matrix_norm(x, 2), torch.tensor(1.6e101, dtype=torch.float64), rtol=1e-12, atol=0)
    assert_close(LA.matrix_norm(x, "nuc"), torch.tensor(1.6e101, dtype=torch.float64), rtol=1e-12, atol=0)
    assert_close(LA.svdvals(x)[0], torch.tensor(1.6e101, dtype=torch.float64), rtol=1e-12, atol=0)
    assert_close(LA.trace(x), torch.tensor(1.6e101, dtype=torch.float64), rtol=1e-12, atol=0)


def test_float16_scale_by_an_eighth_stays_finite_as_eager():
    # a QK-like product whose unscaled entries pass float16's 65504; the 1/8 brings them back
    gen = torch.Generator().manual_seed(0)
    q = (torch.rand(64, 32, generator=gen) * 20 + 40).half()
    k = (torch.rand(32, 64, generator=gen) * 20 + 40).half()
    x = (lm.lazy(q) / 8) @ lm.lazy(k)
    eager = (q / 8) @ k
    assert not torch.isfinite(q @ k).all() and torch.isfinite(eager).all()
    got = x.to_dense()
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), eager.float(), rtol=2e-3, atol=0)
    v = torch.full((64,), 1 / 64, dtype=torch.float16)  # (a sum of a row would pass 65504)
    torch.testing.assert_close((x @ v).float(), (eager @ v).float(), rtol=1e-2, atol=0)


def test_bfloat16_far_coefficient_is_rescaled():
    # bfloat16 has float32's range: 2**-100 is far from 1 there; the unscaled product passes it
    A = torch.full((3, 3), 2.0**70, dtype=torch.bfloat16)
    x = (2.0**-100 * lm.lazy(A)) @ lm.lazy(A)
    assert torch.equal(x.to_dense(), torch.full((3, 3), 3 * 2.0**40, dtype=torch.bfloat16))


class _Ops(TorchDispatchMode):
    """The aten ops run, by name, and the elements each elementwise multiplication writes."""

    def __init__(self):
        super().__init__()
        self.names, self.mul_elements = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.names.append(name)
        if name in ("mul", "mul_"):
            self.mul_elements += out.numel()
        return out


@pytest.mark.parametrize("coef", [1.0, 0.125])
def test_common_coefficients_add_no_pass_over_the_result_and_no_value_read(coef):
    # a coefficient of 1 is no op; 1/8 scales the smaller operand of the first product (16 x 200
    # elements, not the 200 x 300 result) and reads no value back (no host sync on a GPU)
    gen = torch.Generator().manual_seed(0)
    A, B = torch.randn(200, 16, generator=gen), torch.randn(16, 300, generator=gen)
    x = (coef * lm.lazy(A)) @ lm.lazy(B)
    x.to_dense()  # (plans made and cached)
    with _Ops() as ops:
        out = x.to_dense()
    torch.testing.assert_close(out, (coef * A) @ B)
    assert "_local_scalar_dense" not in ops.names and "amax" not in ops.names
    assert ops.mul_elements == (0 if coef == 1 else 200 * 16)


def test_a_coefficient_of_one_or_more_still_scales_the_answer():
    # scaling up before the products could overflow one the answer would not: applied last
    A = torch.full((2, 3), 2.0**1000, dtype=torch.float64)
    B = torch.full((3, 2), 2.0**-1030, dtype=torch.float64)
    x = (2.0**40 * lm.lazy(A)) @ lm.lazy(B)  # eager: 2**40 A is inf; the answer 3 * 2**10
    want = torch.full((2, 2), 3072.0, dtype=torch.float64)
    torch.testing.assert_close(x.to_dense(), want, rtol=1e-12, atol=0)
    with _Ops() as ops:
        x.to_dense()
    assert ops.mul_elements == 4  # the 2 x 2 answer


def test_explain_shows_where_the_coefficient_is_applied():
    A, B = lm.symbol("A", (200, 16)), lm.symbol("B", (16, 300))
    below = (0.125 * A) @ B
    r = below.explain()
    assert [row.op for row in r.rows] == ["scale A", "A @ B"]
    assert r.rows[0].flops == 200 * 16 and r.planned.peak_bytes == below.plan().work_bytes == 200 * 16 * 4
    assert [row.op for row in (2.0 * A @ B).explain().rows] == ["A @ B", "scale"]
    farther = (1e-10 * A) @ (1e-10 * B)  # 1e-20: far from 1 in float32
    r = farther.explain()
    assert [row.op for row in r.rows] == ["rescale A", "rescale B", "A @ B", "scale"]
    assert r.planned.peak_bytes == farther.plan().work_bytes == (200 * 16 + 16 * 300 + 200 * 300) * 4
    assert r.planned.flops == farther.plan().flops


def test_rescaled_route_uses_the_memory_its_plan_says():
    gen = torch.Generator().manual_seed(0)
    A, B = torch.rand(50, 8, generator=gen) + 0.5, torch.rand(8, 60, generator=gen) + 0.5
    x = (1e-30 * lm.lazy(A * 1e30)) @ (1e-30 * lm.lazy(B * 1e20))
    torch.testing.assert_close(x.to_dense().double(), (A.double() @ B.double()) * 1e-10, rtol=1e-5, atol=0)


def test_coefficient_helpers():
    assert shrinks(0.125) and shrinks(-0.5j) and shrinks(Wide(0.5, -1100))
    assert not any(shrinks(k) for k in (1.0, 2.0, 0.0, math.inf, math.nan, Wide(0.5, 1100)))
    assert not far(0.125, torch.float16) and far(2.0**-9, torch.float16)
    assert not far(2.0**-32, torch.float32) and far(2.0**-33, torch.bfloat16) and far(1e-10, torch.complex64)
    assert not far(1e-19, torch.float64) and far(1e-20, torch.float64)
    assert far(Wide(0.5, -2000), torch.float64)
    assert not far(0.0, torch.float64) and not far(math.inf, torch.float64)
    assert power_of_two(3) == 8.0 and power_of_two(-1074) == Wide(0.5, -1073)


def test_a_fresh_scaled_chain_scales_where_explain_says():
    # a multiple written on a whole fresh product (read straight from its leaves, no form built)
    # places its coefficient as its form's term would, and as explain reports
    gen = torch.Generator().manual_seed(0)
    A, B = torch.randn(200, 16, generator=gen), torch.randn(16, 300, generator=gen)
    x = 0.125 * (lm.lazy(A) @ lm.lazy(B))
    assert [row.op.split()[0] for row in x.explain().rows] == ["scale", "t"]
    with _Ops() as ops:
        out = lm.lazy(A).__matmul__(lm.lazy(B)).__rmul__(0.125).to_dense()
    torch.testing.assert_close(out, 0.125 * (A @ B))
    assert ops.mul_elements == 200 * 16
    with _Ops() as ops:
        got = (0.125 * (lm.lazy(A) @ lm.lazy(B))) @ torch.ones(300)
    torch.testing.assert_close(got, 0.125 * (A @ B).sum(-1), rtol=1e-5, atol=1e-5)
    assert ops.mul_elements == 200  # the answer: fewer elements than v, the first product's smaller operand


def test_a_fresh_chain_far_from_one_is_rescaled():
    A = torch.full((3, 5), 1e200, dtype=torch.float64)
    x = 1e-300 * (lm.lazy(A) @ lm.lazy(A.mT.contiguous()))  # torch's A @ A.T is inf first
    want = torch.full((3, 3), 5e100, dtype=torch.float64)
    torch.testing.assert_close(x.to_dense(), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(x @ torch.ones(3, dtype=torch.float64), want.sum(-1), rtol=1e-12, atol=0)


def test_a_sum_of_scaled_products_and_its_transpose():
    # the second term's product of the leaves alone is 2**1149 (inf); written with 2**-660 on L3
    gen = torch.Generator().manual_seed(624)
    M = [torch.rand(3, 3, generator=gen, dtype=torch.float64) + 0.5 for _ in range(4)]
    exps = (253, 109, 512, 637)
    L = [lm.lazy(torch.ldexp(m, torch.tensor(float(a), dtype=torch.float64)))
         for m, a in zip(M, exps, strict=True)]
    x = (2.0**127 * L[0]) @ L[1] + L[2] @ (2.0**-660 * L[3])
    want = torch.ldexp(M[0] @ M[1] + M[2] @ M[3], torch.tensor(489.0, dtype=torch.float64))
    torch.testing.assert_close(evaluate_as_written(x), want, rtol=1e-12, atol=0)  # eager keeps it
    for y, w in ((x, want), (x.mT, want.mT)):
        torch.testing.assert_close(y.to_dense(), w, rtol=1e-12, atol=0)
        torch.testing.assert_close(y @ torch.ones(3, dtype=torch.float64), w.sum(-1), rtol=1e-12, atol=0)
        torch.testing.assert_close(LA.trace(y), w.trace(), rtol=1e-12, atol=0)
        torch.testing.assert_close(LA.svdvals(y)[0], torch.linalg.svdvals(w)[0], rtol=1e-9, atol=0)


@pytest.mark.parametrize("coef", [0.5, 1e-30])  # applied to a factor first; every factor rescaled
def test_gradients_reach_the_leaves_wherever_the_coefficient_is_applied(coef):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    (lm.lazy(A) @ (coef * lm.lazy(B))).to_dense().sum().backward()
    ones = torch.ones(5, 4, dtype=torch.float64)
    torch.testing.assert_close(A.grad, coef * ones @ B.detach().mT)
    torch.testing.assert_close(B.grad, coef * A.detach().mT @ ones)
