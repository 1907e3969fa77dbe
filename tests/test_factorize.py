"""lazymat.factorize: data-aware low-rank factorization, checked against independent formulas
(Eckart-Young, least squares, the convolution itself) and, where installed, Composer."""

import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from lazymat import linalg as LA
from lazymat.factorize import (
    LowRankSolution,
    _lstsq,
    _orthonormal_complement,
    factorize_conv2d,
    factorize_conv2d_module,
    factorize_linear,
    factorize_matrix,
)

from conftest import assert_close, randn


def _true_nmse(Y, Y_hat):
    return float(((Y - Y_hat) ** 2).mean() / Y.var())


def _apply(solution, X):
    out = X @ solution.Wa if solution.Wb is None else X @ solution.Wa @ solution.Wb
    return out if solution.bias is None else out + solution.bias


def _correlated_inputs(gen, n, d):
    """Inputs with very unequal variances along random directions (where ALS beats SVD)."""
    mix = randn(gen, d, d) * torch.logspace(0, -2, d, dtype=torch.float64)[:, None]
    return randn(gen, n, d) @ mix


def _reduced_rank_optimum_nmse(X, Y, k):
    """The least nmse of any rank-``k`` ``W`` with any bias (reduced-rank regression), apart
    from lazymat's ALS: the bias removes the means; with the centred ``X = Q R`` (full column
    rank), the best ``Xc W`` is ``Q`` times the truncated SVD of ``Q^T Yc`` (Eckart-Young)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Q = torch.linalg.qr(Xc)[0]
    U, S, Vh = torch.linalg.svd(Q.mT @ Yc, full_matrices=False)
    return _true_nmse(Y, Y.mean(0) + Q @ (U[:, :k] * S[:k]) @ Vh[:k])


# ---- matrices -------------------------------------------------------------------------------
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("prefactored", [False, True])
def test_returned_nmse_is_the_error_of_the_returned_tensors(gen, with_bias, prefactored):
    X = _correlated_inputs(gen, 400, 24)
    Wa, Wb = (randn(gen, 24, 10), randn(gen, 10, 18)) if prefactored else (randn(gen, 24, 18), None)
    W = Wa if Wb is None else Wa @ Wb
    bias = randn(gen, 18) if with_bias else None
    Y = X @ W + (0 if bias is None else bias) + 0.1 * randn(gen, 400, 18)
    sol = factorize_matrix(X, Y, Wa, Wb, bias=bias, rank=5)
    assert sol.rank == 5 and sol.Wa.shape == (24, 5) and sol.Wb.shape == (5, 18)
    assert sol.bias.shape == (18,)
    assert sol.nmse == pytest.approx(_true_nmse(Y, _apply(sol, X)), rel=1e-12)
    assert_close(sol.expr.to_dense(), sol.Wa @ sol.Wb)


def test_nmse_with_a_bias_is_measured_against_the_original_outputs(gen):
    """Composer compares its biased prediction with the bias-removed target; we do not."""
    X, W, bias = randn(gen, 300, 16), randn(gen, 16, 12), 3 + randn(gen, 12)
    Y = X @ W + bias
    sol = factorize_matrix(X, Y, W, bias=bias, rank=4)
    wrong_target = _true_nmse(Y - bias, _apply(sol, X))
    assert sol.nmse == pytest.approx(_true_nmse(Y, _apply(sol, X)), rel=1e-12)
    assert sol.nmse < wrong_target


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 60), d=st.integers(3, 12), m=st.integers(3, 12), k=st.integers(1, 11),
       n_iters=st.integers(0, 4), seed=st.integers(0, 2**16), with_bias=st.booleans(),
       dead=st.integers(0, 2))
def test_als_error_never_exceeds_the_svd_initialisation(n, d, m, k, n_iters, seed, with_bias, dead):
    """Also for inputs of deficient rank: fewer samples than features, dead features."""
    gen = torch.Generator().manual_seed(seed)
    X, W = _correlated_inputs(gen, n, d), randn(gen, d, m)
    X[:, :dead] = 0
    bias = randn(gen, m) if with_bias else None
    Y = X @ W + (0 if bias is None else bias) + 0.1 * randn(gen, n, m)
    sol = factorize_matrix(X, Y, W, bias=bias, rank=k, n_iters=n_iters)
    if k >= min(d, m):
        assert sol.rank == -1 and sol.Wb is None
        return
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # data-free best rank k (Eckart-Young)
    init = X @ (U[:, :k] * S[:k]) @ Vh[:k] + (0 if bias is None else bias)
    assert sol.nmse <= _true_nmse(Y, init) + 1e-12
    assert sol.nmse == pytest.approx(_true_nmse(Y, _apply(sol, X)), rel=1e-9, abs=1e-14)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(4, 60), d=st.integers(3, 10), m=st.integers(3, 10), k=st.integers(1, 9),
       w_rank=st.integers(0, 10), n_iters=st.integers(0, 5), seed=st.integers(0, 2**16),
       with_bias=st.booleans(), dead=st.integers(0, 2))
def test_more_als_iterations_never_increase_the_error(n, d, m, k, w_rank, n_iters, seed,
                                                     with_bias, dead):
    """Each half-step minimises the error itself (bias included) given the other factor, so one
    more round cannot raise it; weights of any rank (zero included) give ``k`` columns."""
    if k >= min(d, m):
        k = min(d, m) - 1
    gen = torch.Generator().manual_seed(seed)
    X = _correlated_inputs(gen, n, d)
    X[:, :dead] = 0
    W = randn(gen, d, min(w_rank, d, m)) @ randn(gen, min(w_rank, d, m), m)
    bias = randn(gen, m) if with_bias else None
    Y = X @ randn(gen, d, m) + 3 + 0.1 * randn(gen, n, m)
    fewer = factorize_matrix(X, Y, W, bias=bias, rank=k, n_iters=n_iters)
    more = factorize_matrix(X, Y, W, bias=bias, rank=k, n_iters=n_iters + 1)
    for sol in (fewer, more):
        assert sol.rank == k and sol.Wa.shape == (d, k) and sol.Wb.shape == (k, m)
    assert _true_nmse(Y, _apply(more, X)) <= _true_nmse(Y, _apply(fewer, X)) * (1 + 1e-12) + 1e-20


def test_als_error_falls_to_the_reduced_rank_optimum():
    """Regression: the error grew from n_iters=3 on (ALS solved a bias-free problem, the bias
    was fitted afterwards), settling above the rank-k optimum."""
    gen = torch.Generator().manual_seed(11)  # the reported case
    X = randn(gen, 200, 12) @ (randn(gen, 12, 12) * torch.logspace(0, -2, 12, dtype=torch.float64))
    W = randn(gen, 12, 10)
    Y = X @ W + 0.1 * randn(gen, 200, 10)
    errors = [_true_nmse(Y, _apply(factorize_matrix(X, Y, W, rank=3, n_iters=n), X))
              for n in range(11)]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:], strict=False)), errors
    optimum = _reduced_rank_optimum_nmse(X, Y, 3)
    assert errors[0] > 2 * optimum
    assert errors[-1] == pytest.approx(optimum, rel=1e-6)


@pytest.mark.parametrize("prefactored", [False, True])
@pytest.mark.parametrize("weight_rank", [0, 1])
def test_a_weight_of_rank_below_k_gets_k_columns_and_the_optimum(gen, weight_rank, prefactored):
    """Regression: a zero or rank-1 weight gave factors of its own rank (while ``.rank`` said
    ``k``) and ALS could not add directions; the initialisation is now padded to ``k``."""
    X = randn(gen, 100, 8)
    Y = X @ randn(gen, 8, 6) + 2 + 0.1 * randn(gen, 100, 6)
    low = randn(gen, 8, weight_rank)
    # a layer (8, 6), or a factored one (8, 5) @ (5, 6) whose small core is singular
    weights = (low @ randn(gen, weight_rank, 5), randn(gen, 5, 6)) if prefactored else \
        (low @ randn(gen, weight_rank, 6),)
    optimum = _reduced_rank_optimum_nmse(X, Y, 2)
    sol = factorize_matrix(X, Y, *weights, rank=2)
    assert sol.rank == 2 and sol.Wa.shape == (8, 2) and sol.Wb.shape == (2, 6)
    assert sol.nmse == pytest.approx(_true_nmse(Y, _apply(sol, X)), rel=1e-12)
    assert sol.nmse <= 1.05 * optimum
    converged = factorize_matrix(X, Y, *weights, rank=2, n_iters=60)  # ALS converges linearly
    assert converged.nmse == pytest.approx(optimum, rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(d=st.integers(1, 12), r=st.integers(0, 12), width=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_orthonormal_complement_is_orthonormal_and_orthogonal_to_the_columns(d, r, width, seed):
    r = min(r, d)
    width = min(width, d - r)
    U = torch.linalg.qr(randn(torch.Generator().manual_seed(seed), d, r))[0]
    C = _orthonormal_complement(U, width)
    assert C.shape == (d, width)
    assert_close(C.mT @ C, torch.eye(width, dtype=C.dtype), atol=1e-13)
    assert_close(U.mT @ C, torch.zeros(r, width, dtype=C.dtype), atol=1e-13)


def test_factorize_modules_of_zero_initialised_layers(gen):
    """Regression: copying the (8, 0) factor into a width-2 layer raised a RuntimeError."""
    layer = torch.nn.Linear(8, 6).double()
    torch.nn.init.zeros_(layer.weight)
    X = randn(gen, 100, 8)
    seq = factorize_linear(layer, X, rank=2)
    assert seq[0].weight.shape == (2, 8) and seq[1].weight.shape == (6, 2)
    with torch.no_grad():
        assert_close(seq(X), layer(X), rtol=1e-12)  # zero weight: the layer is its bias
    conv = torch.nn.Conv2d(4, 8, 3, padding=1).double()
    torch.nn.init.zeros_(conv.weight)
    images = randn(gen, 2, 4, 6, 6)
    seq = factorize_conv2d_module(conv, images, rank=2)
    assert seq[0].weight.shape == (2, 4, 3, 3) and seq[1].weight.shape == (8, 2, 1, 1)
    with torch.no_grad():
        assert_close(seq(images), conv(images), rtol=1e-12)


def test_orthonormal_inputs_give_the_truncated_svd(gen):
    """For X with orthonormal columns of mean zero, ``||X (W' - W) + b||^2 = ||W' - W||^2 +
    N ||b||^2``: the best bias is zero and Eckart-Young is optimal."""
    inputs = randn(gen, 200, 20)
    X = torch.linalg.qr(inputs - inputs.mean(dim=0))[0]  # columns in the span of centred ones
    W = randn(gen, 20, 15)
    Y = X @ W
    sol = factorize_matrix(X, Y, W, rank=6)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    assert_close(sol.Wa @ sol.Wb, (U[:, :6] * S[:6]) @ Vh[:6], rtol=1e-9)
    error = ((X @ sol.Wa @ sol.Wb - Y) ** 2).sum()
    assert error.item() == pytest.approx((S[6:] ** 2).sum().item(), rel=1e-9)


@pytest.mark.parametrize("given", [True, False])
def test_a_rank_reaching_a_dimension_returns_the_least_squares_matrix(gen, given):
    """The least-squares matrix and bias jointly (``[X, 1]`` regressed on ``Y``), whether or not a
    bias was given: Composer keeps the given bias there, or fits none, which a lower rank beat."""
    X, W, bias = randn(gen, 100, 8), randn(gen, 8, 12), randn(gen, 12)
    Y = X @ W + bias + 0.1 * randn(gen, 100, 12)
    sol = factorize_matrix(X, Y, W, bias=bias if given else None, rank=8)
    assert sol.rank == -1 and sol.Wb is None
    joint = torch.linalg.lstsq(torch.cat([X, X.new_ones(100, 1)], 1), Y, driver="gelsd").solution
    assert_close(sol.Wa, joint[:8], rtol=1e-9)
    assert_close(sol.bias, joint[8], rtol=1e-9)
    assert sol.nmse == pytest.approx(_true_nmse(Y, X @ joint[:8] + joint[8]), rel=1e-9)


@pytest.mark.parametrize("rank", [4, 2])
def test_a_dead_input_feature_still_gets_the_least_squares_optimum(gen, rank):
    """Regression: torch's default lstsq driver (gelsy) misses the optimum when a column of X
    that is not the last is exactly zero (a dead ReLU feature)."""
    X, W, bias = randn(gen, 50, 4), randn(gen, 4, 6), randn(gen, 6)
    X[:, 1] = 0
    Y = X @ W + bias + 0.2 * randn(gen, 50, 6)
    sol = factorize_matrix(X, Y, W, bias=bias, rank=rank)
    if rank >= 4:
        X1 = torch.cat([X, X.new_ones(50, 1)], 1)
        optimum = X1 @ torch.linalg.pinv(X1) @ Y  # projection onto X's columns and the ones
        assert sol.nmse == pytest.approx(_true_nmse(Y, optimum), rel=1e-9)
    else:
        U, S, Vh = torch.linalg.svd(W)
        assert sol.nmse <= _true_nmse(Y, X @ (U[:, :rank] * S[:rank]) @ Vh[:rank] + bias)


def test_a_rank_above_the_current_rank_returns_the_input(gen):
    X, Wa, Wb = randn(gen, 100, 16), randn(gen, 16, 4), randn(gen, 4, 12)
    Y = X @ Wa @ Wb
    for rank in (4, 6, 0.5):  # 0.5 * 16 = 8, above the current rank 4
        sol = factorize_matrix(X, Y, Wa, Wb, rank=rank)
        assert sol.rank == -1
        assert torch.equal(sol.Wa, Wa) and torch.equal(sol.Wb, Wb)
        assert sol.nmse == pytest.approx(0, abs=1e-20)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sixteen_bit_layers_are_solved_in_float32_and_returned_in_their_dtype(gen, dtype):
    X, W, bias = randn(gen, 200, 16).to(dtype), randn(gen, 16, 12).to(dtype), randn(gen, 12).to(dtype)
    Y = (X.float() @ W.float() + bias.float()).to(dtype)
    sol = factorize_matrix(X, Y, W, bias=bias, rank=4)
    assert sol.Wa.dtype == sol.Wb.dtype == sol.bias.dtype == dtype
    recomputed = _true_nmse(Y.float(), _apply(LowRankSolution(
        sol.Wa.float(), sol.Wb.float(), sol.bias.float()), X.float()))
    assert sol.nmse == pytest.approx(recomputed, rel=1e-5)
    exact = factorize_matrix(X.double(), Y.double(), W.double(), bias=bias.double(), rank=4)
    assert sol.nmse == pytest.approx(exact.nmse, rel=0.05, abs=1e-3)


def test_a_fractional_rank_is_a_share_of_the_input_width(gen):
    X, W = randn(gen, 100, 32), randn(gen, 32, 40)
    assert factorize_matrix(X, X @ W, W, rank=0.25).rank == 8
    assert factorize_matrix(X, X @ W, W, rank=0.1).rank == 3


class _MatmulOperands(TorchFunctionMode):
    """Records the operand shapes of every matmul run inside it."""

    def __init__(self):
        super().__init__()
        self.pairs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm):
            self.pairs.append((tuple(args[0].shape), tuple(args[1].shape)))
        return func(*args, **(kwargs or {}))


def test_prefactored_initialisation_never_forms_the_full_matrix(gen, monkeypatch):
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)  # the factored route, however small
    X, Wa, Wb = randn(gen, 35, 40), randn(gen, 40, 6), randn(gen, 6, 30)  # N < D: X is kept
    with _MatmulOperands() as products:
        sol = factorize_matrix(X, X @ Wa @ Wb, Wa, Wb, rank=3)
    assert ((40, 6), (6, 30)) not in products.pairs  # Wa @ Wb (40 x 30) is never formed
    U, S, Vh = torch.linalg.svd(Wa @ Wb)
    ideal = X @ (U[:, :3] * S[:3]) @ Vh[:3]
    assert sol.nmse <= _true_nmse(X @ Wa @ Wb, ideal) + 1e-12


def test_matrix_shape_errors_name_the_shapes(gen):
    X, Y, W = randn(gen, 10, 4), randn(gen, 10, 5), randn(gen, 4, 5)
    with pytest.raises(ValueError, match=r"X \(10, 4\), Y \(9, 5\)"):
        factorize_matrix(X, Y[:9], W)
    with pytest.raises(ValueError, match=r"Wa must be \(4, 5\).*\(4, 6\)"):
        factorize_matrix(X, Y, randn(gen, 4, 6))
    with pytest.raises(ValueError, match=r"Wb must be \(2, 5\).*\(3, 5\)"):
        factorize_matrix(X, Y, randn(gen, 4, 2), randn(gen, 3, 5))
    with pytest.raises(ValueError, match=r"bias must be \(5,\).*\(4,\)"):
        factorize_matrix(X, Y, W, bias=randn(gen, 4))
    with pytest.raises(ValueError, match="rank must be a positive"):
        factorize_matrix(X, Y, W, rank=0)


@pytest.mark.parametrize("dependent", [False, True])
def test_least_squares_routes_give_the_minimum_norm_solution(gen, dependent):
    """The QR route (full rank) and the fallback (dependent columns) against torch's SVD-based
    solver; the CUDA fallback (pinv) is the same formula."""
    A, B = randn(gen, 60, 8), randn(gen, 60, 5)
    if dependent:
        A[:, 3] = 2 * A[:, 1] - A[:, 0]  # a dead direction, as dead ReLU channels make
    expected = torch.linalg.lstsq(A, B, driver="gelsd").solution
    assert_close(_lstsq(A, B), expected, rtol=1e-8)
    R = torch.linalg.qr(A)[1]
    assert_close(A @ _lstsq(R, torch.linalg.qr(A)[0].mT @ B, triangular=True), A @ expected, rtol=1e-8)


# ---- convolutions -----------------------------------------------------------------------------
PADDINGS = [dict(padding=0), dict(padding=1), dict(padding=(2, 1), padding_mode="reflect"),
            dict(padding="same", padding_mode="circular"), dict(padding=1, padding_mode="replicate")]


def _module_conv(X, weight, bias, padding=0, padding_mode="zeros"):
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), padding=padding,
                           padding_mode=padding_mode, bias=bias is not None).double()
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv(X)


@pytest.mark.parametrize("kwargs", PADDINGS, ids=str)
def test_full_rank_conv_reproduces_the_convolution(gen, kwargs):
    X, W, b = randn(gen, 3, 4, 9, 8), randn(gen, 6, 4, 3, 3), randn(gen, 6)
    sol = factorize_conv2d(X, W, rank=6, biasA=b, **kwargs)  # 6 >= out channels: one conv
    assert sol.rank == -1 and sol.Wb is None and sol.Wa.shape == W.shape
    expected = _module_conv(X, W, b, **kwargs)
    assert_close(_module_conv(X, sol.Wa, sol.bias, **kwargs), expected, rtol=1e-9)
    assert sol.nmse == pytest.approx(0, abs=1e-18)


@pytest.mark.parametrize("kwargs", PADDINGS, ids=str)
def test_an_exactly_low_rank_conv_is_reproduced_by_two_convs(gen, kwargs):
    X = randn(gen, 3, 5, 8, 8)
    mix = randn(gen, 8, 3) @ randn(gen, 3, 7)  # 8 output channels, rank 3
    Wa, Wb = randn(gen, 7, 5, 3, 3), mix[:, :, None, None]
    biasA, biasB = randn(gen, 7), randn(gen, 8)
    sol = factorize_conv2d(X, Wa, Wb, rank=3, biasA=biasA, biasB=biasB, **kwargs)
    assert sol.rank == 3 and sol.Wa.shape == (3, 5, 3, 3) and sol.Wb.shape == (8, 3, 1, 1)
    original = _module_conv(_module_conv(X, Wa, biasA, **kwargs), Wb, biasB)
    factored = _module_conv(_module_conv(X, sol.Wa, None, **kwargs), sol.Wb, sol.bias)
    assert_close(factored, original, rtol=1e-8)
    assert sol.nmse < 1e-16


def test_conv_nmse_falls_as_rank_grows_and_is_the_true_error(gen):
    X, W, b = randn(gen, 4, 6, 8, 8), randn(gen, 12, 6, 3, 3), randn(gen, 12)
    Y = _module_conv(X, W, b, padding=1)
    errors = []
    for rank in (1, 2, 4, 8, 11):
        sol = factorize_conv2d(X, W, rank=rank, biasA=b, padding=1)
        Y_hat = _module_conv(_module_conv(X, sol.Wa, None, padding=1), sol.Wb, sol.bias)
        assert sol.nmse == pytest.approx(_true_nmse(Y, Y_hat), rel=1e-9)
        errors.append(sol.nmse)
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def test_conv_arguments_are_checked_before_any_work(gen):
    X, W = randn(gen, 2, 4, 6, 6), randn(gen, 6, 4, 3, 3)
    for name, value in (("stride", 2), ("dilation", (1, 2)), ("groups", 2)):
        with pytest.raises(NotImplementedError, match=f"{name}="):
            factorize_conv2d(X, W, **{name: value})
    with pytest.raises(ValueError, match=r"biasB \(6,\) was given without Wb"):
        factorize_conv2d(torch.empty(0), W, biasB=randn(gen, 6))  # X is not even looked at
    with pytest.raises(TypeError, match="bias_mode"):
        factorize_conv2d(X, W, bias_mode=1)
    with pytest.raises(ValueError, match=r"X \(2, 5, 6, 6\), Wa \(6, 4, 3, 3\)"):
        factorize_conv2d(randn(gen, 2, 5, 6, 6), W)
    with pytest.raises(ValueError, match=r"Wb must be \(C_out, 6, 1, 1\).*\(8, 5, 1, 1\)"):
        factorize_conv2d(X, W, randn(gen, 8, 5, 1, 1))


# ---- modules ------------------------------------------------------------------------------------
def test_factorize_linear_returns_a_drop_in_pair_of_layers(gen):
    layer = torch.nn.Linear(32, 24).double()
    X = _correlated_inputs(gen, 500, 32).reshape(10, 50, 32)
    seq = factorize_linear(layer, X, rank=0.25)
    assert isinstance(seq, torch.nn.Sequential) and len(seq) == 2
    assert seq[0].weight.shape == (8, 32) and seq[0].bias is None and seq[1].weight.shape == (24, 8)
    with torch.no_grad():
        expected = layer(X)
        got = seq(X)
    sol = factorize_matrix(X.reshape(-1, 32), expected.reshape(-1, 24), layer.weight.detach().T,
                           bias=layer.bias.detach(), rank=8)
    assert_close(got.reshape(-1, 24), _apply(sol, X.reshape(-1, 32)))
    assert _true_nmse(expected, got) == pytest.approx(sol.nmse, rel=1e-9)
    with pytest.raises(ValueError, match="would not shrink"):
        factorize_linear(layer, X, rank=24)
    with pytest.raises(ValueError, match=r"\(\.\.\., 32\).*\(5, 31\)"):
        factorize_linear(layer, randn(gen, 5, 31), rank=4)


@pytest.mark.parametrize("padding,padding_mode", [(1, "zeros"), ("same", "reflect"), (0, "zeros")])
def test_factorize_conv2d_module_returns_a_drop_in_pair_of_convs(gen, padding, padding_mode):
    conv = torch.nn.Conv2d(6, 16, 3, padding=padding, padding_mode=padding_mode).double()
    X = randn(gen, 4, 6, 10, 10)
    seq = factorize_conv2d_module(conv, X, rank=5)
    assert [m.kernel_size for m in seq] == [(3, 3), (1, 1)] and seq[0].out_channels == 5
    sol = factorize_conv2d(X, conv.weight, rank=5, biasA=conv.bias, padding=padding,
                           padding_mode=padding_mode)
    with torch.no_grad():
        expected, got = conv(X), seq(X)
    assert got.shape == expected.shape
    assert_close(seq[0].weight.detach(), sol.Wa)
    assert _true_nmse(expected, got) == pytest.approx(sol.nmse, rel=1e-9)
    with pytest.raises(NotImplementedError, match="stride="):
        factorize_conv2d_module(torch.nn.Conv2d(6, 16, 3, stride=2), X.float())


def test_low_rank_solution_expr_unfolds_conv_weights(gen):
    Wa, Wb = randn(gen, 3, 4, 3, 3), randn(gen, 8, 3, 1, 1)
    expr = LowRankSolution(Wa, Wb, None, 3).expr
    assert expr.shape == (36, 8)
    assert_close(expr.to_dense(), Wa.reshape(3, 36).T @ Wb.reshape(8, 3).T)


# ---- side by side with Composer (optional) ------------------------------------------------------
def _composer_core():
    spec = importlib.util.find_spec("composer")
    if spec is None:
        pytest.skip("mosaicml (Composer) not installed")
    root = next(iter(spec.submodule_search_locations))
    path = f"{root}/algorithms/factorize/factorize_core.py"
    module_spec = importlib.util.spec_from_file_location("composer_factorize_core", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # needs only numpy and torch
    return module


def test_same_factors_as_composer_on_centred_inputs_and_its_misreported_nmse(gen):
    """On inputs of mean zero, fitting without a bias and adding the mean residual afterwards
    (Composer) is the same optimisation as ours, step by step."""
    core = _composer_core()
    X, W, bias = _correlated_inputs(gen, 400, 24), randn(gen, 24, 20), 2 + randn(gen, 20)
    X = X - X.mean(dim=0)
    Y = X @ W + bias + 0.3 * randn(gen, 400, 20)
    ours = factorize_matrix(X, Y, W, bias=bias, rank=6)
    theirs = core.factorize_matrix(X, Y, W, bias=bias, rank=6)
    assert_close(ours.Wa @ ours.Wb, theirs.Wa @ theirs.Wb, rtol=1e-8)
    assert_close(ours.bias, theirs.bias, rtol=1e-8)
    true = _true_nmse(Y, _apply(theirs, X))
    assert ours.nmse == pytest.approx(true, rel=1e-9)
    assert theirs.nmse != pytest.approx(true, rel=1e-3)  # measured against Y - bias


def test_a_better_fit_than_composer_on_inputs_with_a_mean(gen):
    """On ReLU activations (positive means) Composer's bias-free ALS settles well above the
    rank-k optimum; ours, which fits the bias in every step, reaches it."""
    core = _composer_core()
    X, W, bias = _correlated_inputs(gen, 400, 24).relu(), randn(gen, 24, 20), 2 + randn(gen, 20)
    Y = X @ W + bias + 0.3 * randn(gen, 400, 20)
    optimum = _reduced_rank_optimum_nmse(X, Y, 6)
    for n_iters in (3, 100):
        ours = factorize_matrix(X, Y, W, bias=bias, rank=6, n_iters=n_iters)
        theirs = core.factorize_matrix(X, Y, W, bias=bias, rank=6, n_iters=n_iters)
        assert ours.nmse < _true_nmse(Y, _apply(theirs, X)) / 1.1
    assert ours.nmse == pytest.approx(optimum, rel=1e-6)
