"""Operands as the user laid them out: leaves with permuted batch dims, strided batches, transposed
matrices. ``torch.matmul`` reshapes a batched operand to one batch dim and copies one whose batch
dims do not merge as a view; the plan counts that copy in the step that reads it, so explain's
peak bounds what a run allocates, a budget of it runs unsliced, and a sliced run stays within
its budget (measured as in :mod:`test_budget_peak`: every storage torch allocates).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated, _check_peak
from test_budget_slices import _check_sliced_to_dense_fits
from test_properties import assert_close

import lazymat as lm
from lazymat import plan
from lazymat.rewrite import canonical

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))

BATCHES = [(3,), (2, 3), (3, 2), (2, 2, 3), (2, 3, 2)]


@st.composite
def laid_out(draw, shape: tuple, g: torch.Generator) -> torch.Tensor:
    """A float64 tensor of ``shape`` stored as a user may have it: row-major, with its batch dims
    permuted (made in another order and permuted back), every other entry of a longer batch, or
    its matrix transposed."""
    how = draw(st.sampled_from(["row-major", "permuted", "strided", "transposed"]))
    batch, nb = shape[:-2], len(shape) - 2
    if how == "permuted" and nb >= 2:
        order = draw(st.permutations(range(nb)))
        t = torch.randn(*(batch[k] for k in order), *shape[-2:], generator=g, dtype=torch.float64)
        back = [order.index(k) for k in range(nb)]
        return t.permute(*back, nb, nb + 1)
    if how == "strided" and nb >= 1:
        d = draw(st.integers(0, nb - 1))
        longer = list(shape)
        longer[d] = 2 * shape[d]
        t = torch.randn(*longer, generator=g, dtype=torch.float64)
        return t[(slice(None),) * d + (slice(None, None, 2),)]
    if how == "transposed":
        return torch.randn(*batch, shape[-1], shape[-2], generator=g, dtype=torch.float64).mT
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@st.composite
def laid_out_product(draw, dims: list[int]):
    """(lazy, dense) product of ``dims[i] x dims[i + 1]`` factors laid out by :func:`laid_out`,
    each factor's batch a trailing part of one batch with some dims 1 (they broadcast)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    full = draw(st.sampled_from(BATCHES))
    lazy = dense = None
    for i in range(len(dims) - 1):
        own = full[draw(st.integers(0, len(full))):]
        own = tuple(1 if draw(st.integers(0, 3)) == 0 else size for size in own)
        t = draw(laid_out((*own, dims[i], dims[i + 1]), g))
        lazy = lm.lazy(t) if lazy is None else lazy @ lm.lazy(t)
        dense = t if dense is None else dense @ t
    return lazy, dense


@st.composite
def user_laid_chains(draw):
    """(lazy, dense) products of 2-4 factors laid out by :func:`laid_out`, with batch dims of
    2-3 entries (each factor's a trailing part of one batch, some dims 1: they broadcast against
    each other or not), scaled or not."""
    n = draw(st.integers(2, 4))
    dims = [draw(st.integers(1, 3)) for _ in range(n + 1)]
    lazy, dense = draw(laid_out_product(dims))
    if draw(st.booleans()):
        lazy, dense = 2.0 * lazy, 2.0 * dense
    return lazy, dense


@SETTINGS
@given(user_laid_chains())
def test_explained_peak_counts_the_copies_of_user_laid_leaves(sliced_runs, pair):
    X, D = pair
    out = _check_peak(X, "to_dense", sliced_runs)
    assert_close(out, D)


@SETTINGS
@given(user_laid_chains(), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
def test_a_sliced_run_of_user_laid_leaves_allocates_within_its_budget(pair, frac):
    X, D = pair
    _check_sliced_to_dense_fits(X, D, frac)


def test_a_permuted_leaf_is_copied_in_the_step_that_reads_it(sliced_runs, gen):
    """``A @ B @ C`` with ``A`` a ``(3, 2, 4, 5)`` tensor seen as ``(2, 3, 4, 5)``: ``torch.matmul``
    copies ``A`` (960 B) to one batch dim while ``B @ C`` (480 B) is alive. explain said 480 B;
    the run allocated 1440 B beside its result, and a budget of 480 B ran unsliced."""
    A = torch.randn(3, 2, 4, 5, generator=gen, dtype=torch.float64).transpose(0, 1)
    B = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    C = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
    assert plan.relaid_factors(canonical(X).terms[0]) == {0}
    assert lm.explain(X, memory_budget=2**50).planned.peak_bytes == 480 + 960
    out = _check_peak(X, "to_dense", sliced_runs)
    assert_close(out, A @ B @ C)
    with Allocated() as counted:
        out = X.to_dense(memory_budget=480)
    assert counted.peak - out.untyped_storage().nbytes() <= 480
    assert_close(out, A @ B @ C)


@SETTINGS
@given(st.data())
def test_view_strides_are_torchs(data):
    """The strides the plan works out for a view (of a user-laid leaf) are those of the tensor
    torch makes of it."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    shape = (*data.draw(st.sampled_from(BATCHES)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    t = data.draw(laid_out(shape, g))
    key = tuple(data.draw(st.sampled_from([slice(None), slice(1, None), slice(None, None, 2), None]))
                for _ in range(len(shape) - 2))
    x, expected = lm.lazy(t)[key], t[key]
    if data.draw(st.booleans()):
        x, expected = x.mT, expected.mT
    (v,) = canonical(x).terms[0].factors
    strides = plan.view_strides(v)
    assert v.shape == expected.shape
    assert [s for s, n in zip(strides, v.shape, strict=True) if n > 1] == \
        [s for s, n in zip(expected.stride(), v.shape, strict=True) if n > 1]  # size-1 dims: any stride


@pytest.fixture
def sliced_runs(block_counts):
    return block_counts


def test_einsum_copies_both_operands_when_a_shared_batch_dim_comes_last(sliced_runs, gen):
    """Row-major ``t2x3x2x2 @ t1x1x2x2 @ t2x1x3x2x2``: the second product (batches ``(2, 3)`` and
    ``(2, 1, 3)``) goes through torch.einsum, which brings the shared dim of 3 outermost by
    copying both operands (192 B each); explain counted the larger only (384 B, the run took 576 B)."""
    A, B, C = (torch.randn(*s, generator=gen, dtype=torch.float64)
               for s in [(2, 3, 2, 2), (1, 1, 2, 2), (2, 1, 3, 2, 2)])
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
    assert lm.explain(X, memory_budget=2**50).planned.peak_bytes == 192 + 2 * 192
    out = _check_peak(X, "to_dense", sliced_runs)
    assert_close(out, A @ B @ C)


@pytest.mark.parametrize("left", [False, True])
def test_a_vector_product_counts_the_copy_of_a_permuted_leaf(gen, left):
    """``X @ v`` (``v @ X``) with a factor of ``X`` a permuted ``(2, 3)`` batch: torch.matmul copies
    it, 960 B; the vector's chain was planned without that copy, so under a budget of 500 B it
    ran whole and took 1200 B."""
    A = torch.randn(3, 2, 4, 5, generator=gen, dtype=torch.float64).transpose(0, 1)
    B = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    if left:  # v @ (B A): the permuted leaf is the last factor
        B = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
        X, dense, v = lm.lazy(B) @ lm.lazy(A), B @ A, torch.randn(4, generator=gen, dtype=torch.float64)
    else:
        X, dense, v = lm.lazy(A) @ lm.lazy(B), A @ B, torch.randn(4, generator=gen, dtype=torch.float64)
    with lm.config(memory_budget=500), Allocated() as counted:
        out = v @ X if left else X @ v
    assert counted.peak - out.untyped_storage().nbytes() <= 500
    assert_close(out, v @ dense if left else dense @ v)
