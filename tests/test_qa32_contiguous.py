"""Dense results come back in torch's default (row-major) strides, as eager ``A @ B`` does.

A product whose operands' batches broadcast against each other runs as ``torch.einsum``, which
writes its GEMM's layout (the left operand's own batch dims before the rows, the right one's
after) and returns a permuted view: the values were right but ``.view(...)`` on the result failed
where eager's works. Compared with eager torch in float64 on the dense tensors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close

FULL_BATCH = (2, 3, 2)  # every batch drawn broadcasts to it


@st.composite
def batches(draw):
    """A batch shape broadcasting to FULL_BATCH: its last dims, each maybe 1."""
    r = draw(st.integers(0, len(FULL_BATCH)))
    return tuple(draw(st.sampled_from([1, size])) for size in FULL_BATCH[len(FULL_BATCH) - r:])


def _leaf(seed: int, shape: tuple) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


@st.composite
def products(draw, ends=None):
    """A product of 2-4 leaves with random batch shapes and inner sizes (its rows and columns
    ``ends`` when given): (lazy, dense)."""
    n = draw(st.integers(2, 4))
    dims = draw(st.lists(st.integers(1, 5), min_size=n + 1, max_size=n + 1))
    if ends is not None:
        dims[0], dims[-1] = ends
    seed = draw(st.integers(0, 2**16))
    lazies, dense = [], []
    for i in range(n):
        shape = (*draw(batches()), dims[i], dims[i + 1])
        t = _leaf(seed + i, shape)
        lazies.append(lm.lazy(t))
        dense.append(t)
    X, D = lazies[0], dense[0]
    for x, d in zip(lazies[1:], dense[1:], strict=True):
        X, D = X @ x, D @ d
    return X, D


@st.composite
def expressions(draw):
    """A product, maybe scaled (a number or a 0-dim tensor), summed with another product of other
    batch shapes, indexed along its matrix dims, or cast to float32: (lazy, dense float64)."""
    X, D = draw(products())
    kind = draw(st.sampled_from(["plain", "number", "tensor", "sum", "index", "transpose", "cast"]))
    if kind == "number":
        k = draw(st.sampled_from([2.5, -1.0, 0.0]))
        X, D = k * X, k * D
    elif kind == "tensor":
        k = torch.tensor(draw(st.sampled_from([0.5, -3.0])), dtype=torch.float64)
        X, D = X * k, D * k
    elif kind == "sum":
        Y, E = draw(products(ends=D.shape[-2:]))
        X, D = X - Y, D - E
    elif kind == "index":
        rows = slice(None, None, draw(st.sampled_from([1, 2, -1])))
        cols = slice(draw(st.integers(0, 1)), None)
        key = (..., rows, cols) if rows.step > 0 else (..., cols)
        X, D = X[key], D[key]
    elif kind == "transpose":
        X, D = X.mT @ lm.lazy(D.detach().clone()), D.mT @ D
    elif kind == "cast":  # rounded once, as torch's cast of the float64 product (D stays float64)
        X = X.to(torch.float32)
    return X, D


@settings(max_examples=150, deadline=None)
@given(expressions())
def test_to_dense_is_row_major_as_eager_matmul(case):
    X, D = case
    out = X.to_dense()
    assert out.dtype == X.dtype
    assert_close(out, D, rtol=1e-6 if X.dtype == torch.float32 else 1e-10)
    assert out.is_contiguous(), (tuple(out.shape), out.stride())
    out.view(-1)  # what failed on the einsum layout


@settings(max_examples=100, deadline=None)
@given(products(), st.booleans())
def test_a_vector_product_is_row_major(case, left):
    """Fresh (read from the leaves) and again (from the cached form)."""
    X, D = case
    v = _leaf(7, (D.shape[-2] if left else D.shape[-1],))
    want = v @ D if left else D @ v
    for _ in range(2):
        out = v @ X if left else X @ v
        assert_close(out, want)
        assert out.is_contiguous(), (tuple(out.shape), out.stride())


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize(("sa", "sb"), [((3, 1, 4, 5), (1, 2, 5, 6)), ((2, 1, 4, 5), (3, 5, 6)),
                                        ((2, 1, 1, 4, 5), (3, 1, 5, 6))])
def test_a_vector_product_over_broadcast_batches_is_row_major(sa, sb, left):
    A, B = _leaf(1, sa), _leaf(2, sb)
    v = _leaf(3, (sa[-2] if left else sb[-1],))
    X = lm.lazy(A) @ lm.lazy(B)
    want = v @ (A @ B) if left else A @ B @ v
    for _ in range(2):
        out = v @ X if left else X @ v
        assert_close(out, want)
        assert out.is_contiguous() and out.stride() == want.stride(), out.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_pairs_product_is_row_major(dtype):
    """The all-pairs shape of the circuits: ``(a, 1, m, k) @ (b, k, n)``, evaluated twice (the
    second time from its cached form, the first from the leaves)."""
    A, B = _leaf(1, (3, 1, 4, 5)).to(dtype), _leaf(2, (2, 5, 6)).to(dtype)
    X = lm.lazy(A) @ lm.lazy(B)
    for _ in range(2):
        out = X.to_dense()
        assert out.is_contiguous() and out.stride() == (A @ B).stride()
        assert_close(out, (A.double() @ B.double()), rtol=1e-5 if dtype == torch.float32 else 1e-10)


def test_the_relayout_is_in_the_plan():
    """The copy that lays einsum's result out row-major is in the planned peak: for pairs whose
    result is larger than torch.matmul's broadcast copies, those are taken instead (then no
    relayout copy is made at all)."""
    a, b, m, k, n = 6, 5, 40, 3, 40
    X = lm.lazy(_leaf(1, (a, 1, m, k))) @ lm.lazy(_leaf(2, (b, k, n)))
    step = X.plan().terms[0].steps[-1]
    broadcast = a * b * (m * k + k * n) * 8
    assert step.copy_bytes == min(broadcast, a * b * m * n * 8) == broadcast
    assert X.plan().terms[0].plain[-1] is True
    Y = lm.lazy(_leaf(1, (a, 1, 4, 50))) @ lm.lazy(_leaf(2, (b, 50, 4)))
    assert Y.plan().terms[0].steps[-1].copy_bytes == max(math.prod((a, 4, 50)) + math.prod((b, 50, 4)),
                                                         a * b * 16) * 8


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3), st.data())
def test_einsums_layout_is_read_off_the_shapes(nb, data):
    """:func:`lazymat.plan.einsum_writes_row_major` (which prices the relayout copy) against
    torch's own einsum on meta tensors."""
    from lazymat.layout import goes_through_einsum
    from lazymat.plan import einsum_writes_row_major

    full = data.draw(st.lists(st.integers(2, 3), min_size=nb, max_size=nb))

    def operand(rows, cols):
        r = data.draw(st.integers(0, nb))
        return (*(data.draw(st.sampled_from([1, s])) for s in full[nb - r:]), rows, cols)

    m, k, n = (data.draw(st.integers(1, 3)) for _ in range(3))
    left, right = operand(m, k), operand(k, n)
    if goes_through_einsum(left, right):
        a, b = torch.empty(left, device="meta"), torch.empty(right, device="meta")
        want = torch.einsum("...ij,...jk->...ik", a, b).is_contiguous()
        assert einsum_writes_row_major(left, right) == want, (left, right)
