"""A product with a scalar written on a factor (``(c * A) @ B``, ``E @ (c * Q) @ K.mT @ E.mT``) is
read from its leaves by the fresh path (``execute._fresh_chain``, through
``rewrite.scaled_leaf_chain``): no canonical form is built on its first evaluation, and its value
is bit-identical to the canonical path's (the coefficient folded in the form's order and applied
where the form applies it: a factor for one below 1, the answer for one of 1 or more, by
rescaling for one far from 1), and within rounding of eager float64 by an independent bound."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.rewrite import canonical, chain_views

DTYPES = (torch.float64, torch.float32, torch.float16)
# common coefficients, ints, negatives, 0-dim tensors ("t": drawn below) and far ones
COEFS = (0.125, 1 / math.sqrt(48), 3.0, -0.5, 2, 7.0, 1e-3, 2.0**-12, 2.0**20, 2.0**-40, 2.0**45, 1e-300)


@st.composite
def cases(draw):
    """Factor shapes, which are stored transposed, the scales on each operand (from the leaf
    outward, each a number, a 0-dim tensor "t", or "mT" for a transpose between scales), an
    optional batch of 3 on some factors, and the scales and transposes above the chain."""
    n = draw(st.integers(2, 5))
    dims = draw(st.lists(st.integers(1, 6), min_size=n + 1, max_size=n + 1))
    dtype = draw(st.sampled_from(DTYPES))
    coef = st.one_of(st.sampled_from(COEFS), st.just("t"))
    # the last operand maybe the first's leaf again: read transposed (E @ Q @ K.mT @ E.mT) or alike
    repeat = draw(st.sampled_from([None, None, "mirror", "same"]))
    if repeat is not None:
        dims[n - 1], dims[n] = (dims[1], dims[0]) if repeat == "mirror" else (dims[0], dims[1])
    operands = []
    for i in range(n):
        stored_mT = draw(st.booleans())
        wraps = draw(st.lists(st.one_of(coef, st.just("mT")), max_size=3))
        batched = draw(st.integers(0, 3)) == 0
        source = None
        if repeat is not None and i == n - 1:
            first = operands[0]
            stored_mT, batched, source = first[2] != (repeat == "mirror"), first[4], 0
        operands.append((dims[i], dims[i + 1], stored_mT, wraps, batched, source))
    above = draw(st.lists(st.one_of(coef, st.just("mT")), max_size=2))
    seed = draw(st.integers(0, 2**16))
    # the parenthesisation: which neighbours are joined, in turn (all zeros: left to right)
    joins = draw(st.one_of(st.just([0] * (n - 1)),
                           st.lists(st.integers(0, 4), min_size=n - 1, max_size=n - 1)))
    return dtype, operands, above, seed, joins


def _scalar(k, dtype, g):
    return torch.tensor(float(torch.empty(()).uniform_(0.5, 2, generator=g)), dtype=dtype) if k == "t" else k


def build(case, tensors, leaf=lambda t: lm.lazy(t.clone()), magnitudes=False):
    """The expression of ``case`` over ``tensors``, each made an operand by ``leaf`` (by default
    a lazy leaf over a clone: fresh leaves, fresh nodes; ``torch.Tensor.double``: eager float64);
    ``magnitudes``: every entry and coefficient by its magnitude (the 0-dim tensors drawn alike)."""
    dtype, operands, above, seed, joins = case
    g = torch.Generator().manual_seed(seed + 1)

    def coef(w):
        k = _scalar(w, torch.float64 if magnitudes else dtype, g)
        return abs(k) if magnitudes else k

    nodes, made = [], {}
    for i, (t, (_, _, stored_mT, wraps, _, source)) in enumerate(zip(tensors, operands, strict=True)):
        x = made.setdefault(i if source is None else source, leaf(t.abs() if magnitudes else t))
        if stored_mT:
            x = x.mT
        for w in wraps:
            x = x.mT if w == "mT" else coef(w) * x
        if wraps.count("mT") % 2:
            x = x.mT
        nodes.append(x)
    for j in joins:  # neighbours joined in the drawn order
        i = j % (len(nodes) - 1)
        nodes[i:i + 2] = [nodes[i] @ nodes[i + 1]]
    out = nodes[0]
    for w in above:
        out = out.mT if w == "mT" else coef(w) * out
    return out


def tensors_of(case):
    dtype, operands, _, seed, _ = case
    g = torch.Generator().manual_seed(seed)
    out = []
    for m, k, stored_mT, _, batched, source in operands:
        if source is not None:
            out.append(out[source])
            continue
        shape = (k, m) if stored_mT else (m, k)
        t = torch.randn(*((3,) if batched else ()), *shape, generator=g, dtype=torch.float64)
        out.append(t.to(dtype))
    return out


def canonical_value(case, tensors, call):
    x = build(case, tensors)
    canonical(x)  # the form built first: every evaluation reads it
    return call(x)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaN where NaN."""
    def finite(t):
        return torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=-1.0)

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(finite(a), finite(b)) and \
        torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isposinf(), b.isposinf())


def eager_bound(case, tensors, v=None):
    """Eager float64 ``c * A1 @ ... @ An`` (then ``@ v``) and the entrywise error bound of that
    product in ``case``'s dtype: ``eps * (terms) * |c| |A1| ... |An|`` (eager float64 too), plus
    the dtype's smallest normal (products rounded to 0) in the same units."""
    dtype, operands, *_ = case
    value = build(case, tensors, leaf=torch.Tensor.double)
    size = build(case, tensors, leaf=torch.Tensor.double, magnitudes=True)
    if v is not None:
        value, size = value @ v.double(), size @ v.double().abs()
    inner = sum(o[1] for o in operands) + len(operands) + 4
    fi = torch.finfo(dtype)
    return value, 4 * fi.eps * inner * size + 8 * inner * fi.tiny * (1 + size)


def in_range(value: torch.Tensor, dtype) -> bool:
    """Whether every entry of the float64 answer is within ``dtype``'s range with room (the
    comparison with eager is then meaningful)."""
    return bool(value.abs().max() < torch.finfo(dtype).max / 4)


def cancels_far(case) -> bool:
    """Whether two or more numbers on the operands of a chain of three or more (each operand's
    product, 1s left out) have a run of consecutive ones whose product is past the dtype's far
    exponent (an independent reading of coefficient.chain_fold's reach; the run may be all)."""
    dtype, operands = case[0], case[1]
    if len(operands) < 3:
        return False
    logs = []
    for op in operands:
        numbers = [c for c in op[3] if c not in ("t", "mT")]
        log = sum(math.log2(abs(c)) for c in numbers)  # (their product may underflow)
        if log != 0 or sum(c < 0 for c in numbers) % 2:  # (-1 is kept, as the form keeps it)
            logs.append(log)
    if len(logs) < 2:
        return False
    limit = {torch.float64: 64, torch.float32: 32, torch.float16: 8}[dtype]
    spans = [abs(sum(logs[i:j])) for i in range(len(logs)) for j in range(i + 1, len(logs) + 1)]
    return max(spans) > limit


@settings(max_examples=250, deadline=None)
@given(cases())
def test_a_scaled_factor_chain_is_read_fresh_and_matches_the_form(case):
    tensors = tensors_of(case)
    x = build(case, tensors)
    # read from its leaves, but where scales on operands cancel around a sub-product far for the
    # dtype (then the form rescales: chain_fold)
    assert (chain_views(x) is not None) != cancels_far(case)
    fresh = x.to_dense()
    want = canonical_value(case, tensors, lambda y: y.to_dense())
    assert same(fresh, want), (fresh, want)
    ref, bound = eager_bound(case, tensors)
    if in_range(ref, case[0]) and bool(torch.isfinite(fresh).all()):
        assert bool(((fresh.double() - ref).abs() <= bound).all()), (fresh.double() - ref).abs().max()


@settings(max_examples=150, deadline=None)
@given(cases())
def test_a_scaled_factor_chain_times_a_vector_matches_the_form(case):
    tensors = tensors_of(case)
    x = build(case, tensors)
    g = torch.Generator().manual_seed(case[3])
    v = torch.randn(x.shape[-1], generator=g, dtype=torch.float64).to(case[0])
    fresh = x @ v
    want = canonical_value(case, tensors, lambda y: y @ v)
    assert same(fresh, want), (fresh, want)
    ref, bound = eager_bound(case, tensors, v)
    if in_range(ref, case[0]) and bool(torch.isfinite(fresh).all()):
        assert bool(((fresh.double() - ref).abs() <= bound).all()), (fresh.double() - ref).abs().max()


def test_a_scaled_factor_builds_no_form_on_its_first_evaluation():
    # the common coefficients: applied on the fast path (a far one goes through the form, which
    # counts the rescaled copies)
    g = torch.Generator().manual_seed(0)
    E, Q, K = torch.randn(32, 8, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    for c in (0.125, 1 / math.sqrt(4), 3.0):
        x = lm.lazy(E) @ (c * lm.lazy(Q)) @ lm.lazy(K).mT @ lm.lazy(E).mT
        got = x.to_dense()
        assert "canon" not in x._cache
        assert torch.allclose(got, E @ (c * Q) @ K.mT @ E.mT, rtol=1e-5, atol=1e-5)
        y = (c * lm.lazy(Q.mT)) @ lm.lazy(E.mT) @ lm.lazy(E)
        got = y @ Q[:, 0]
        assert "canon" not in y._cache
        assert torch.allclose(got, c * Q.mT @ E.mT @ E @ Q[:, 0], rtol=1e-5, atol=1e-4)
