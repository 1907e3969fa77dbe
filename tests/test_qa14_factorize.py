"""lazymat.factorize as a demanding user drives it (qa14, session 11).

Found: a complex batch for a real layer was cast to real with only torch's warning (the fit
silently dropped ``X.imag``, where the layer's forward raises); an integer ``Y`` gave an
integer solution (``factorize_matrix`` casts to ``Y``'s dtype) or torch's "mean(): could not
infer output dtype"; an inf or NaN entry anywhere raised LAPACK's unnamed LinAlgError."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.factorize import factorize_conv2d, factorize_linear, factorize_matrix


def _optimum(X: torch.Tensor, Y: torch.Tensor, k: int) -> float:
    """The rank-k reduced-rank regression optimum's nmse, bias included, in float64: the k
    leading singular values of Q^T Yc, Q an orthonormal basis of the centred inputs."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    U, S, _ = torch.linalg.svd(Xc, full_matrices=False)
    Q = U[:, S.max() * 1e-12 < S]
    s = torch.linalg.svdvals(Q.mT @ Yc)
    return float(((Yc**2).sum() - (s[:k] ** 2).sum()) / Y.numel() / Y.var())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), D=st.integers(2, 12), M=st.integers(2, 12), N=st.integers(2, 50),
       bias=st.booleans(), data=st.data(),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]))
def test_a_factorized_linear_is_between_the_optimum_and_the_truncated_svd(seed, D, M, N, bias, dtype, data):
    """Property: the two layers replace the module in its dtype (trainable), and their error on
    the inputs, measured in float64 from the modules' outputs, is at least the rank-k optimum
    (an independent formula) and at most the data-free truncated SVD's with the layer's bias."""
    k = data.draw(st.integers(1, min(D, M) - 1)) if min(D, M) > 1 else None
    if k is None:
        return
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = torch.nn.Linear(D, M, bias=bias).to(dtype)
    X = (torch.relu(torch.randn(N, D, generator=gen, dtype=torch.float64)) + 0.3).to(dtype)
    small = factorize_linear(layer, X, rank=k)
    assert [p.dtype for p in small.parameters()] == [dtype] * 3
    assert all(p.requires_grad for p in small.parameters())
    assert small[0].out_features == k
    with torch.no_grad():
        Y, Y_hat = layer(X).double(), small(X).double()
    if not Y.var() > 0:
        return
    nmse = float(((Y - Y_hat) ** 2).mean() / Y.var())
    W = layer.weight.detach().double().mT
    truncated = X.double() @ lm.linalg.truncate(lm.lazy(W), k).to_dense()
    if bias:
        truncated = truncated + layer.bias.detach().double()
    data_free = float(((truncated - Y) ** 2).mean() / Y.var())
    slack = {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 5e-2)  # the 16-bit weights' rounding
    assert _optimum(X.double(), Y, k) - slack <= nmse <= data_free + slack


BAD = {"X": 0, "Y": 1, "Wa": 2, "Wb": 3, "bias": 4}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), which=st.sampled_from(sorted(BAD)),
       value=st.sampled_from([math.nan, math.inf]),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.complex64]))
def test_a_non_finite_entry_raises_naming_the_argument(seed, which, value, dtype):
    """Property: an inf or NaN in any argument raises NonFiniteError (a ValueError) naming it,
    before any solver runs."""
    gen = torch.Generator().manual_seed(seed)
    args = [torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype) for s in ((20, 6), (20, 5), (6, 3),
                                                                                  (3, 5), (5,))]
    flat = args[BAD[which]].view(-1)
    flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = value
    with pytest.raises(lm.linalg.NonFiniteError, match=rf"^{which} \(") as info:
        factorize_matrix(*args[:3], Wb=args[3], bias=args[4], rank=2)
    assert isinstance(info.value, ValueError)


def test_a_complex_batch_for_a_real_layer_is_refused():
    layer = torch.nn.Linear(4, 3)
    X = torch.randn(10, 4, dtype=torch.complex64)
    with pytest.raises(RuntimeError):
        layer(X)  # torch's forward refuses it too
    with pytest.raises(TypeError, match=r"X \(10, 4\) is torch.complex64 .* real layer"):
        factorize_linear(layer, X, rank=2)
    conv = torch.nn.Conv2d(2, 4, 3)
    with pytest.raises(TypeError, match="real layer"):
        from lazymat.factorize import factorize_conv2d_module
        factorize_conv2d_module(conv, torch.randn(2, 2, 5, 5, dtype=torch.complex64), rank=2)


def test_integer_outputs_and_weights_are_refused_by_dtype():
    X = torch.randint(0, 3, (20, 6))
    with pytest.raises(TypeError, match=r"Y \(20, 4\) has dtype torch.int64"):
        factorize_matrix(X, torch.randint(0, 3, (20, 4)), torch.randint(0, 3, (6, 4)), rank=2)
    with pytest.raises(TypeError, match=r"Wa \(4, 2, 3, 3\) has dtype torch.int64"):
        factorize_conv2d(torch.randn(2, 2, 5, 5), torch.randint(0, 3, (4, 2, 3, 3)), rank=2)
    # integer inputs for a float layer still convert, as its forward would need
    sol = factorize_matrix(X, torch.randn(20, 4, dtype=torch.float64), torch.randn(6, 4), rank=2)
    assert sol.Wa.dtype == torch.float64 and sol.rank == 2


@pytest.mark.parametrize("frozen", ["none", "all", "bias"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_the_new_layers_are_trainable_as_the_old_one_was(frozen, kind):
    """Found: a frozen layer (requires_grad=False) was replaced by trainable ones."""
    from lazymat.factorize import factorize_conv2d_module

    layer = torch.nn.Linear(8, 6) if kind == "linear" else torch.nn.Conv2d(3, 6, 3)
    if frozen == "all":
        layer.requires_grad_(False)
    elif frozen == "bias":
        layer.bias.requires_grad_(False)
    X = torch.randn(20, 8) if kind == "linear" else torch.randn(2, 3, 6, 6)
    small = (factorize_linear if kind == "linear" else factorize_conv2d_module)(layer, X, rank=2)
    first, second = small
    assert first.weight.requires_grad == second.weight.requires_grad == layer.weight.requires_grad
    assert second.bias.requires_grad == layer.bias.requires_grad
