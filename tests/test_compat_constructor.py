"""lazymat.compat.FactoredMatrix: construction, attributes, errors, and the lazymat hooks.

Each check runs against dense torch; with transformer-lens installed, also against its own
FactoredMatrix (see tl_reference.py)."""

import pytest
import torch
from tl_reference import tl

import lazymat as lm
from lazymat.compat import FactoredMatrix

from conftest import assert_close, randn

# (A shape, B shape): mdim narrow, mdim wide, leading dims on one side, broadcast on both
CASES = [((5, 3), (3, 4)), ((4, 6), (6, 5)), ((2, 5, 3), (3, 5)), ((3, 1, 4, 2), (5, 2, 4)),
         ((2, 3, 3), (2, 3, 6))]


@pytest.mark.parametrize("a_shape,b_shape", CASES)
def test_attributes_match_dense_torch(gen, a_shape, b_shape):
    A, B = randn(gen, *a_shape), randn(gen, *b_shape)
    fm = FactoredMatrix(A, B)
    dense = torch.matmul(A, B)
    assert fm.shape == dense.shape and fm.ndim == dense.ndim
    assert (fm.ldim, fm.mdim, fm.rdim) == (A.shape[-2], A.shape[-1], B.shape[-1])
    assert fm.has_leading_dims == (dense.ndim > 2)
    assert fm.A.shape == (*dense.shape[:-2], *A.shape[-2:])
    assert fm.B.shape == (*dense.shape[:-2], *B.shape[-2:])
    assert_close(fm.AB, dense)
    assert_close(fm.pair[0], A.broadcast_to(fm.A.shape))
    assert_close(fm.pair[1], B.broadcast_to(fm.B.shape))
    assert_close(fm.expr.to_dense(), dense)


@pytest.mark.parametrize("a_shape,b_shape", CASES)
def test_attributes_and_repr_match_transformer_lens(gen, a_shape, b_shape):
    TL = tl()
    A, B = randn(gen, *a_shape), randn(gen, *b_shape)
    ours, theirs = FactoredMatrix(A, B), TL.FactoredMatrix(A, B)
    for name in ("shape", "ndim", "ldim", "mdim", "rdim", "has_leading_dims"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert repr(ours) == repr(theirs)
    assert_close(ours.A, theirs.A)
    assert_close(ours.B, theirs.B)
    assert_close(ours.AB, theirs.AB)


def test_inner_dim_mismatch_names_shapes_and_is_an_assertion_error_too(gen):
    A, B = randn(gen, 5, 3), randn(gen, 4, 6)
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 6\)"):
        FactoredMatrix(A, B)
    with pytest.raises(AssertionError):  # what TransformerLens raised: except clauses keep working
        FactoredMatrix(A, B)


def test_leading_dims_that_do_not_broadcast_raise_value_and_runtime_error(gen):
    A, B = randn(gen, 2, 5, 3), randn(gen, 4, 3, 6)
    with pytest.raises(ValueError, match=r"\(2, 5, 3\).*\(4, 3, 6\)"):
        FactoredMatrix(A, B)
    with pytest.raises(RuntimeError):
        FactoredMatrix(A, B)


def test_errors_are_the_kinds_transformer_lens_raises(gen):
    TL = tl()
    bad_inner = (randn(gen, 5, 3), randn(gen, 4, 6))
    bad_batch = (randn(gen, 2, 5, 3), randn(gen, 4, 3, 6))
    for args, kind in ((bad_inner, AssertionError), (bad_batch, RuntimeError)):
        with pytest.raises(kind):
            TL.FactoredMatrix(*args)
        with pytest.raises(kind):
            FactoredMatrix(*args)


def test_vectors_and_non_tensors_are_rejected_by_name(gen):
    with pytest.raises(ValueError, match=r"factor A .*shape \(5,\)"):
        FactoredMatrix(randn(gen, 5), randn(gen, 5, 3))
    with pytest.raises(TypeError, match="factor B must be a torch.Tensor, got list"):
        FactoredMatrix(randn(gen, 5, 3), [[1.0] * 3] * 3)
    with pytest.raises(TypeError, match="dtype"):
        FactoredMatrix(randn(gen, 5, 3), randn(gen, 3, 4, dtype=torch.float32))


def test_lazy_accepts_a_transformer_lens_factored_matrix(gen):
    TL = tl()
    A, B = randn(gen, 2, 6, 3), randn(gen, 3, 5)
    expr = lm.lazy(TL.FactoredMatrix(A, B))
    assert lm.is_lazy(expr)
    assert_close(expr.to_dense(), A @ B)


def test_lazy_accepts_any_object_with_factors_A_and_B(gen):
    class Pair:  # duck-typed: lazymat never imports TransformerLens
        def __init__(self, A, B):
            self.A, self.B = A, B

    A, B = randn(gen, 6, 3), randn(gen, 3, 5)
    assert_close(lm.lazy(Pair(A, B)).to_dense(), A @ B)
    fm = FactoredMatrix(A, B)
    assert_close(lm.lazy(fm).to_dense(), A @ B)
    assert_close(lm.linalg.svdvals(fm.expr), torch.linalg.svdvals(A @ B)[:3])


def test_to_factored_splits_an_expression_at_its_narrowest_dim(gen):
    W_E, W_Q, W_K = randn(gen, 20, 8), randn(gen, 8, 2), randn(gen, 8, 2)
    expr = lm.lazy(W_E) @ lm.lazy(W_Q) @ lm.lazy(W_K).mT @ lm.lazy(W_E).mT
    fm = expr.to_factored()
    assert isinstance(fm, FactoredMatrix)
    assert fm.shape == (20, 20) and fm.mdim == 2
    assert_close(fm.AB, W_E @ W_Q @ W_K.T @ W_E.T)


def test_building_from_symbols_touches_no_data():
    A, B = lm.symbol("A", (12, 768, 64)), lm.symbol("B", (12, 64, 768))
    fm = FactoredMatrix(A, B)
    assert fm.shape == (12, 768, 768) and fm.mdim == 64
    assert fm[3, :10].shape == (10, 768)
    assert lm.is_lazy(fm.AB) and fm.AB.shape == fm.shape  # nothing to form: the lazy product
    with pytest.raises(lm.SymbolHasNoData, match="symbol 'A'.*no data"):
        fm.AB.to_dense()


def test_gradients_flow_to_the_factors(gen):
    A = randn(gen, 2, 6, 3).requires_grad_()
    B = randn(gen, 3, 5).requires_grad_()
    fm = FactoredMatrix(A, B)
    assert fm.A.requires_grad and fm.AB.requires_grad
    fm.norm().sum().backward()
    A2, B2 = A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
    torch.linalg.matrix_norm(A2 @ B2).sum().backward()
    assert_close(A.grad, A2.grad, rtol=1e-8)
    assert_close(B.grad, B2.grad, rtol=1e-8)
