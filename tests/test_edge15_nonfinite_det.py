"""det, slogdet and logdet of an expression with an inf or NaN entry are torch's on the matrix
formed as written (edge15, session 15; docs/linear-algebra.md).

Found by tests/test_edge13_nonfinite_det.py exploring: (a) a complex chain of two segments with
an inf entry answered logabsdet NaN (the segments' rule) where torch's on the formed matrix is
inf; (b) a chain of three small leaves, formed whole in the plan's order ``A @ (B @ C)``, answered
inf where torch's det of ``(A @ B) @ C`` (the order written) is NaN: an inf entry turns into a
NaN or an inf by the order of the products. The oracle here is torch's det of the matrix formed
eagerly as the expression is written, row-major, exactly (no layout tolerance)."""

import math
from unittest import mock

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal where ``want`` is not finite (NaN where NaN, the same inf), close elsewhere."""
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-7, atol=1e-9)


@st.composite
def _written(draw):
    """``(expression, eager tensor)``: a random parenthesisation of a chain of ``k`` factors
    (square, or a wide/tall pair whose inner dim exceeds ``n``: a segment formed as a product),
    maybe a scalar (a number or a 0-dim tensor) written on a factor or on the whole, maybe a second
    term; one entry of one leaf (or the tensor scalar) set to inf, -inf or NaN."""
    n, k = draw(st.sampled_from([2, 2, 3, 4])), draw(st.integers(1, 4))  # n = 2 most: inf dets
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    batch = draw(st.sampled_from([(), (3,)]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    dims = [n] + [draw(st.sampled_from([n, n + 2])) for _ in range(k - 1)] + [n]
    leaves = [torch.randn(*(batch if i == 0 else ()), dims[i], dims[i + 1], generator=gen, dtype=dtype)
              for i in range(k)]
    scalar = draw(st.sampled_from([None, 2.5, -1e-3, math.inf, "tensor"]))
    c = torch.tensor(-1.5, dtype=torch.float64) if scalar == "tensor" else scalar
    value = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    target = draw(st.integers(0, k if scalar == "tensor" else k - 1))
    if target == k:
        c = torch.tensor(value, dtype=torch.float64)
    else:
        leaf = leaves[target]
        leaf[..., draw(st.integers(0, leaf.shape[-2] - 1)), draw(st.integers(0, leaf.shape[-1] - 1))] = value
    pairs = [(lm.lazy(t), t) for t in leaves]
    where = draw(st.integers(-1, k - 1))  # the scalar on the whole (-1) or on factor `where`
    if c is not None and where >= 0:
        x, d = pairs[where]
        pairs[where] = (c * x, c * d)
    while len(pairs) > 1:  # a random parenthesisation: join two neighbours at a time
        i = draw(st.integers(0, len(pairs) - 2))
        (a, da), (b, db) = pairs[i], pairs[i + 1]
        pairs[i : i + 2] = [(a @ b, da @ db)]
    x, d = pairs[0]
    if c is not None and where < 0:
        x, d = c * x, c * d
    if draw(st.booleans()):  # a second term: a sum is formed whole
        extra = torch.randn(n, n, generator=gen, dtype=dtype)
        x, d = x + lm.lazy(extra), d + extra
    return x, d


@settings(max_examples=300, deadline=None)
@given(case=_written(), factored=st.booleans())
def test_det_of_a_non_finite_expression_is_torchs_on_the_matrix_as_written(case, factored):
    x, dense = case
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0 if factored else LA.costs.DENSE_MAX_ELEMENTS):
        det, (sign, logabs), logdet = lm.linalg.det(x), lm.linalg.slogdet(x), lm.linalg.logdet(x)
    want_sign, want_logabs = torch.linalg.slogdet(dense)
    _same(det, torch.linalg.det(dense))
    _same(sign, want_sign)
    _same(logabs, want_logabs)
    _same(logdet, torch.logdet(dense))


def test_three_leaves_formed_whole_take_the_order_written():
    """Case (b): a batch of ``A`` with inf at (1, 0); ``(A @ B) @ C``'s second rows meet
    ``inf - inf`` (NaN) where the plan's ``A @ (B @ C)`` (the unbatched pair first) keeps them
    ``+-inf``, whose det is -inf."""
    A = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A[:, 1, 0] = math.inf
    B = torch.tensor([[1.0, -1.0], [2.0, 3.0]], dtype=torch.float64)
    C = torch.tensor([[1.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    x = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
    dense = (A @ B) @ C
    assert dense[:, 1].isnan().all() and not (A @ (B @ C)).isnan().any()
    _same(lm.linalg.det(x), torch.linalg.det(dense))
    _same(lm.linalg.slogdet(x).logabsdet, torch.linalg.slogdet(dense).logabsdet)


def test_finite_input_keeps_the_segments_route():
    """No inf or NaN: the answer is the segments' (one LU per 8 x 8 leaf, nothing formed)."""
    gen = torch.Generator().manual_seed(1)
    A, B = (torch.randn(8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    with mock.patch.object(LA.systems, "evaluate_as_written",
                           side_effect=AssertionError("formed as written")), \
            mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        got = lm.linalg.det(2.0 * lm.lazy(A) @ lm.lazy(B))
    _same(got, torch.linalg.det(2.0 * A @ B))


def test_complex_segments_with_an_inf_entry_answer_torchs_logabsdet():
    """Case (a): ``A @ B`` (complex 2 x 2, two segments) with ``B[0, 1]`` inf: torch's
    logabsdet of the formed matrix is inf; the segments' rule answered NaN."""
    gen = torch.Generator().manual_seed(2)
    A, B = (torch.randn(2, 2, generator=gen, dtype=torch.complex128) for _ in range(2))
    B[0, 1] = math.inf
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        sign, logabs = lm.linalg.slogdet(lm.lazy(A) @ lm.lazy(B))
    want = torch.linalg.slogdet(A @ B)
    assert want.logabsdet == math.inf
    _same(logabs, want.logabsdet)
    _same(sign, want.sign)


def test_under_vmap_the_check_reads_nothing_back():
    """Under ``torch.vmap`` (no value can be read back) the matrix as written is computed beside
    the segments' answer and selected where that is NaN or inf: torch's answers member by member,
    for a batch with an inf entry in one member (edge13's route needed no read either)."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64)
    A[1, 1, 0] = math.inf
    B = torch.tensor([[1.0, -1.0], [2.0, 3.0]], dtype=torch.float64)
    C = torch.tensor([[1.0, 2.0], [3.0, 1.0]], dtype=torch.float64)
    for factored in (True, False):
        limit = 0 if factored else LA.costs.DENSE_MAX_ELEMENTS
        with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", limit):
            det = torch.vmap(lambda a: lm.linalg.det(lm.lazy(a) @ lm.lazy(B) @ lm.lazy(C)))(A)
            logabs = torch.vmap(lambda a: lm.linalg.slogdet(lm.lazy(a) @ lm.lazy(B) @ lm.lazy(C))[1])(A)
        _same(det, torch.linalg.det((A @ B) @ C))
        _same(logabs, torch.linalg.slogdet((A @ B) @ C).logabsdet)
        assert det[1].isnan() and det[0].isfinite()


def test_finite_dets_past_the_range_are_not_formed_again():
    """Two segments of det ``1e200`` each: the product ``1e400`` is inf, as torch's det of the
    formed ``diag(1e200, 1e200)``, read off the segments (their dets are finite: no inf entry)."""
    A = torch.diag(torch.tensor([1e100, 1e100], dtype=torch.float64))
    B = A.clone()
    with mock.patch.object(LA.systems, "evaluate_as_written",
                           side_effect=AssertionError("formed as written")), \
            mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        got = lm.linalg.det(lm.lazy(A) @ lm.lazy(B))
    assert got == math.inf == torch.linalg.det(A @ B)
