"""Tensor-like methods on expressions: what stays lazy (checked against torch), what is
refused with a helpful TypeError, and no silent densifying through Python protocols."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions

import lazymat as lm

from conftest import TorchCalls, assert_close, randn


def _complex(gen, *shape):
    return torch.complex(randn(gen, *shape), randn(gen, *shape))


@pytest.fixture
def product(gen):
    a, b, c = randn(gen, 2, 7, 3), randn(gen, 3, 4), randn(gen, 4, 6)
    return lm.lazy(a) @ lm.lazy(b) @ lm.lazy(c), a @ b @ c


# ---- numpy and the sequence protocol --------------------------------------------------------
@pytest.mark.usefixtures("every_product_kept_here")  # its small product kept
def test_numpy_conversion_is_one_planned_evaluation(product):
    X, D = product
    with TorchCalls() as first:
        X.to_dense()
    assert first.count("matmul") == 2
    for convert in (np.asarray, np.array, lambda x: np.asarray(x, dtype=np.float32)):
        with TorchCalls() as planned:
            X.to_dense()
        with TorchCalls() as calls:
            out = convert(X)
        # b @ c, computed once for the batch, is now cached on the leaves (product_cache)
        assert calls.count("matmul") == planned.count("matmul") == 1
        assert out.shape == tuple(D.shape)
        np.testing.assert_allclose(out, D.numpy(), rtol=1e-6 if out.dtype == np.float32 else 1e-12)
    assert np.asarray(X, dtype=np.float32).dtype == np.float32


def test_numpy_cannot_share_memory_with_an_expression(product):
    X, _ = product
    with pytest.raises(ValueError, match="no array to share"):
        X.__array__(copy=False)


def test_iteration_is_refused_without_computing(product):
    X, _ = product
    with TorchCalls() as calls:
        for it in (list, iter, tuple):
            with pytest.raises(TypeError, match="one row at a time"):
                it(X)
    assert calls.names == []


def test_numpy_operators_defer_to_lazymat(product):
    X, D = product
    with TorchCalls() as calls, pytest.raises(TypeError, match="ndarray"):
        np.ones((6, 2)).T @ X.mT
    assert calls.count("matmul") == 0


# ---- missing tensor methods -----------------------------------------------------------------
@pytest.mark.parametrize("call", [lambda X: X.cumsum(0), lambda X: X.abs(), lambda X: X.sort(),
                                  lambda X: X.exp(), lambda X: X.clamp(0)])
def test_dense_only_methods_raise_a_helpful_type_error(product, call):
    X, _ = product
    with pytest.raises(TypeError, match=r"\(2, 7, 6\).*84 entries.*to_dense\(\)") as info:
        call(X)
    assert "MatMul" not in str(info.value)


def test_attribute_probes_still_work(product):
    X, _ = product
    assert not hasattr(X, "cumsum")
    assert getattr(X, "abs", None) is None
    with pytest.raises(AttributeError) as info:
        X.no_such_thing  # noqa: B018
    assert "MatMul" not in str(info.value)


# ---- lazy tensor methods ----------------------------------------------------------------------
def test_transposes_match_torch(gen):
    a, b = _complex(gen, 5, 3), _complex(gen, 3, 4)
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    assert_close(X.mH.to_dense(), D.mH)
    assert_close(X.H.to_dense(), D.H)
    assert_close(X.conj().to_dense(), D.conj())
    assert_close(X.t().to_dense(), D.t())
    for dims in [(-2, -1), (-1, -2), (0, 1), (1, -2)]:
        assert_close(X.transpose(*dims).to_dense(), D.transpose(*dims))
    r = randn(gen, 5, 3)
    assert lm.lazy(r).conj() is lm.lazy(r) and lm.lazy(r).mH is lm.lazy(r).mT


def test_conj_of_scaled_sums_and_tensor_scalars(gen):
    a, b = _complex(gen, 2, 4, 3), _complex(gen, 3, 4)
    k = torch.tensor(0.5 - 2j, dtype=torch.complex128)
    X = (1 + 2j) * lm.lazy(a) @ lm.lazy(b) + k * lm.lazy(_complex(gen, 4, 4))
    D = X.to_dense()
    assert_close(X.conj().to_dense(), D.conj())
    assert_close(X.mH.to_dense(), D.mH)


def test_transpose_of_batch_dims_and_t_of_batches_are_refused(product):
    X, _ = product
    with pytest.raises(NotImplementedError, match=r"transpose\(0, 1\).*\(2, 7, 6\)"):
        X.transpose(0, 1)
    with pytest.raises(IndexError, match="out of range"):
        X.transpose(0, 3)
    with pytest.raises(RuntimeError, match="2-D"):
        X.t()
    with pytest.raises(RuntimeError, match="2-D"):
        X.H  # noqa: B018


@pytest.mark.parametrize("method, dtype", [("half", torch.float16), ("bfloat16", torch.bfloat16),
                                           ("float", torch.float32), ("double", torch.float64)])
def test_dtype_shortcuts_match_torch(product, method, dtype):
    X, D = product
    Y = getattr(X, method)()
    assert Y.dtype == dtype
    want = getattr(D, method)()
    assert_close(Y.to_dense().double(), want.double(), rtol=torch.finfo(dtype).eps)


def test_numel_requires_grad_and_detach(gen):
    a = randn(gen, 5, 3).requires_grad_()
    b = randn(gen, 3, 4)
    k = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    X = (lm.lazy(a) @ lm.lazy(b)) * k
    assert X.numel() == 20 and X.requires_grad
    assert not (lm.lazy(b) * 2.0).requires_grad
    Y = X.detach()
    assert not Y.requires_grad and not Y.to_dense().requires_grad
    assert_close(Y.to_dense(), (a @ b * k).detach())
    assert lm.expr.leaves(Y)[0].tensor.data_ptr() == a.data_ptr()  # no copy


def test_real_and_imag_where_exact(gen):
    a, b, c = _complex(gen, 2, 4, 4), _complex(gen, 4, 4), _complex(gen, 4, 3)
    k = torch.tensor(1.5 - 0.5j, dtype=torch.complex128)
    X = (0.5 - 2j) * lm.lazy(a)[:, 1:, :].mT + lm.lazy(b)[1:].mT * k
    X = lm.cat([X, lm.lazy(c).to(torch.complex64).to(torch.complex128)[None]], dim=-1)
    D = X.to_dense()
    assert_close(X.real.to_dense(), D.real)
    assert_close(X.imag.to_dense(), D.imag)
    assert X.real.dtype == X.imag.dtype == torch.float64
    r = lm.lazy(randn(gen, 3, 3))
    assert r.real is r
    with pytest.raises(RuntimeError, match="real dtype"):
        r.imag  # noqa: B018


def test_real_part_of_a_product_is_the_sum_of_two_real_products(gen):
    a, b = _complex(gen, 4, 3), _complex(gen, 3, 4)
    X = lm.lazy(a) @ lm.lazy(b)
    assert_close(X.real.to_dense(), a.real @ b.real - a.imag @ b.imag)
    assert_close(X.imag.to_dense(), a.real @ b.imag + a.imag @ b.real)
    assert lm.linalg.matrix_rank(X.real).item() == torch.linalg.matrix_rank((a @ b).real).item()


# ---- equality -----------------------------------------------------------------------------------
def test_equality_is_identity_and_never_a_silent_false_against_tensors(product):
    X, D = product
    assert (X == X) is True and (X != X) is False
    Y = X.mT
    assert (X == Y) is False and X != Y
    assert X in [Y, X] and len({X, X, Y}) == 2
    for other in (D, D.numpy()):
        with pytest.raises(TypeError, match=r"compare every entry"):
            other == X  # noqa: B015
    with pytest.raises(TypeError, match=r"compare every entry"):
        D == X  # noqa: B015
    assert (X == 3) is False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions(), st.complex_numbers(min_magnitude=0.1, max_magnitude=3), st.integers(0, 2**31 - 1))
def test_conjugates_of_random_complex_expressions_match_torch(pair, c, seed):
    X, D = pair
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(D.shape[-1], 3, generator=g, dtype=torch.complex128)
    k = torch.randn((), generator=g, dtype=torch.complex128)
    Y = c * X.to(torch.complex128) @ lm.lazy(z) * k
    E = c * D.to(torch.complex128) @ z * k
    assert_close(Y.conj().to_dense(), E.conj())
    assert_close(Y.mH.to_dense(), E.mH)


def test_implicit_conversion_refuses_a_matrix_above_the_limit():
    """np.asarray (what third-party libraries call) refuses past implicit_dense_limit, naming the
    dense size, without evaluating anything; to_dense() stays explicit and unlimited."""
    import numpy as np

    E = lm.lazy(torch.randn(1, 64).expand(50257, 64))
    X = E @ E.mT  # 50257 x 50257 float32: 9.4 GiB
    with TorchCalls() as calls, pytest.raises(MemoryError, match=r"\(50257, 50257\) float32"):
        np.asarray(X)
    assert calls.count("matmul") == 0
    f64 = torch.float64
    small = lm.lazy(torch.randn(30, 4, dtype=f64)) @ lm.lazy(torch.randn(4, 20, dtype=f64))
    with lm.config(implicit_dense_limit="4KiB"), pytest.raises(MemoryError, match="4096 bytes"):
        np.asarray(small)
    with lm.config(implicit_dense_limit=30 * 20 * 8):
        np.testing.assert_allclose(np.asarray(small), small.to_dense().numpy())


@pytest.mark.parametrize("bad", ["lots", -1, float("nan"), True, [1]])
def test_implicit_dense_limit_rejects_what_is_not_a_size(bad):
    with pytest.raises((TypeError, ValueError), match="implicit_dense_limit"):
        lm.config(implicit_dense_limit=bad)


def test_methods_named_like_tensor_methods_behave_like_them(gen):
    """``X.svd()``, ``X.norm()``, ``X.diagonal()`` mean what ``D.svd()``, ``D.norm()``,
    ``D.diagonal()`` mean on the dense tensor (V not Vh; all dims; dims 0 and 1)."""
    A, B = randn(gen, 2, 4, 3), randn(gen, 3, 5)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    U, S, V = X[0].svd()
    Ud, Sd, Vd = D[0].svd()
    assert_close(U @ torch.diag(S) @ V.mT, D[0])
    assert V.shape == (5, 3) and Vd.shape[-2] == 5
    assert_close(S, Sd[:3])
    assert_close(X.norm(), D.norm())
    assert X.norm().shape == D.norm().shape == ()
    assert_close(X.norm(dim=(-2, -1)), D.norm(dim=(-2, -1)))
    assert_close(X.diagonal(dim1=-2, dim2=-1), D.diagonal(dim1=-2, dim2=-1))
    with pytest.raises((ValueError, NotImplementedError, RuntimeError), match="dim"):
        X.diagonal()  # torch's default dims 0 and 1 on a batch: not a matrix diagonal
    assert_close(X[0].diagonal(), D[0].diagonal())


def test_trace_method_is_two_dimensional_like_torch(gen):
    A, B = randn(gen, 2, 4, 3), randn(gen, 3, 4)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    assert_close(X[1].trace(), D[1].trace())
    with pytest.raises(RuntimeError, match="2-D"):
        X.trace()
