"""Closed networks (trace, diagonal, Frobenius norm) over operands as the user laid them out:
``torch.einsum`` reshapes each operand of a pairwise step to its batched GEMM's three dims and
copies one whose dims do not merge as views (a permuted batch, a strided batch, a transposed
matrix, a result an earlier step wrote in another order). The network's schedule counts those
copies in the step that makes them (:func:`lazymat.network.einsum_temporaries`), so explain's
peak bounds what a run allocates, a budget of it runs unsliced, and one byte less slices or
refuses (measured as in :mod:`test_budget_peak`: every storage torch allocates).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_layouts import laid_out_product
from test_budget_peak import Allocated, _check_peak
from test_properties import assert_close

import lazymat as lm
from lazymat.network import einsum_temporaries

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture
def sliced_runs(block_counts):
    return block_counts


@st.composite
def laid_out_square_chains(draw, m: int | None = None, max_factors: int = 4):
    """(lazy, dense) square products of 1-``max_factors`` factors laid out by
    :func:`test_budget_layouts.laid_out_product` (row-major, batch-permuted, batch-strided, transposed),
    each factor's batch a trailing part of one batch with some dims 1 (they broadcast); ``m`` rows
    and columns when given."""
    n = draw(st.integers(1, max_factors))
    dims = [draw(st.integers(1, 4)) if m is None or i else m for i in range(n)]
    dims.append(dims[0])
    return draw(laid_out_product(dims))


def _dense_answer(op: str, D: torch.Tensor) -> torch.Tensor:
    if op == "matrix_norm":
        return torch.linalg.matrix_norm(D)
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    return diag if op == "diagonal" else diag.sum(-1)


@SETTINGS
@given(st.data())
def test_explained_peak_counts_einsums_copies_of_user_laid_operands(sliced_runs, data):
    op = data.draw(st.sampled_from(["trace", "diagonal", "matrix_norm"]))
    X, D = data.draw(laid_out_square_chains())
    if op != "matrix_norm" and data.draw(st.booleans()):  # a sum: one network per term
        Y, E = data.draw(laid_out_square_chains(D.shape[-1]))
        try:
            torch.broadcast_shapes(D.shape, E.shape)
        except RuntimeError:
            Y, E = lm.lazy(E[(0,) * (E.ndim - 2)]), E[(0,) * (E.ndim - 2)]
        X, D = X + Y, D + E
    out = _check_peak(X, op, sliced_runs)
    assert_close(out, _dense_answer(op, D))


def test_a_plain_trace_counts_the_copy_of_its_row_major_operand(sliced_runs, gen):
    """``tr(t3x4 @ t2x3x4x3)``: torch.einsum reads ``t3x4`` as the GEMM's ``(k, m)`` side from
    dims stored ``(m, k)`` and copies it (96 B); explain said 48 B (the result alone)."""
    A = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    B = torch.randn(2, 3, 4, 3, generator=gen, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    assert lm.explain(X, "trace", memory_budget=2**50).planned.peak_bytes == 48 + 96
    out = _check_peak(X, "trace", sliced_runs)
    assert_close(out, _dense_answer("trace", A @ B))


def draw_step(data, labels: str, size_range: tuple[int, int], max_dims: int,
              dtype: torch.dtype = torch.float64):
    """One random pairwise einsum: ``(run, out, operands, strides, sizes)``, two operands of
    random labels and stored dim orders (``strides``: each operand's stride per label) and an
    output of the labels kept (a label of one operand may be summed)."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    sizes = {c: data.draw(st.integers(*size_range)) for c in labels}
    terms = [data.draw(st.lists(st.sampled_from(labels), min_size=1, max_size=max_dims, unique=True))
             for _ in range(2)]
    kept = [c for c in labels if c in terms[0] or c in terms[1]]
    out = [c for c in data.draw(st.permutations(kept)) if data.draw(st.booleans())]
    operands, strides = [], []
    for t in terms:
        order = data.draw(st.permutations(range(len(t))))  # the dims as stored, outermost first
        x = torch.randn(*(sizes[t[k]] for k in order), generator=g, dtype=dtype)
        x = x.permute(*(order.index(k) for k in range(len(t))))
        operands.append(x)
        strides.append(dict(zip(t, x.stride(), strict=True)))
    run = ",".join("".join(t) for t in terms) + "->" + "".join(out)
    return run, out, operands, strides, sizes


def assert_einsum_model(run, out, strides, sizes, result, peak):
    """The bytes torch allocated beside ``result`` (``peak``) and its strides are
    :func:`lazymat.network.einsum_temporaries`'s model (float64)."""
    elements, out_strides = einsum_temporaries(run, strides, sizes)
    assert peak - result.untyped_storage().nbytes() == 8 * elements, (run, peak)
    assert [out_strides[c] for c in out if sizes[c] > 1] == \
        [s for c, s in zip(out, result.stride(), strict=True) if sizes[c] > 1], run


@SETTINGS
@given(st.data())
def test_einsum_temporaries_are_what_torch_allocates(data):
    """For one pairwise einsum over operands of random layouts: the bytes torch allocates beside
    the result are the model's, and the result's strides are the model's."""
    run, out, operands, strides, sizes = draw_step(data, "abcdef", (1, 3), 4)
    with Allocated() as counted:
        result = torch.einsum(run, *operands)
    assert_einsum_model(run, out, strides, sizes, result, counted.peak)
