"""0-dim tensor multipliers and folded number scales, in any order the user writes them
(lazymat/coefficient.py's ``times``).

Found (prop14, session 14): the canonical form keeps a term's 0-dim tensor multipliers apart
from its folded number, and applied the tensors first: ``lazy(X) * 1e-300 * t`` with
``t = 1e300`` and entries ``1e10`` overflowed to inf (``X * 1e300`` first) where torch's order,
and the answer ``1e10``, are finite. Now each tensor is split on the device into a mantissa
and a power of two, and the summed power is applied in in-range steps: finite wherever the
answer is, in either order, with torch's dtype and the tensors' gradients."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import coefficient

EXPONENT = {torch.float64: 1000, torch.float32: 120}


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float64, torch.float32]),
       scales=st.lists(st.tuples(st.booleans(), st.integers(-1000, 1000)), min_size=1, max_size=4),
       data_exponent=st.integers(-1000, 1000), complex_=st.booleans())
@example(seed=0, dtype=torch.float64, scales=[(False, -996), (True, 996)], data_exponent=33, complex_=False)
@example(seed=1, dtype=torch.float32, scales=[(False, 100), (True, -110)], data_exponent=-20, complex_=False)
def test_scalars_in_any_order_are_finite_where_the_answer_is(seed, dtype, scales, data_exponent, complex_):
    """Property: ``lazy(X)`` times number and 0-dim tensor scales (``(is_tensor, exponent)``:
    ``+-1.5 * 2**exponent``, clamped to the dtype's range) in the drawn order is the exact
    product (computed in float64 from the exponents) wherever that is in the dtype's range,
    in torch's dtype."""
    limit = EXPONENT[dtype]
    gen = torch.Generator().manual_seed(seed)
    d = max(-limit, min(limit, data_exponent))
    base = torch.randn(3, 2, generator=gen, dtype=torch.float64).to(dtype).double()
    if complex_:
        base = base * (1 + 1j)
    X = lm.lazy((base * 2.0**d).to(dtype if not complex_ else torch.complex128 if dtype == torch.float64
                                       else torch.complex64))
    mantissa, exponent, eager_dtype = 1.0, d, X.dtype
    for i, (is_tensor, e) in enumerate(scales):
        e = max(-limit, min(limit, e))
        m = 1.5 if i % 2 else -1.5
        mantissa, exponent = mantissa * m, exponent + e
        s = m * 2.0**e
        X = X * (torch.tensor(s, dtype=torch.float64) if is_tensor else s)
    want_dtype = eager_dtype
    got = X.to_dense()
    assert got.dtype == want_dtype
    answer = base * mantissa
    top = answer.abs().max().item()
    biggest = math.log2(top) + exponent if top else -math.inf
    finfo = torch.finfo(dtype)
    if not (math.log2(finfo.tiny) + 2 < biggest < math.log2(finfo.max) - 1):
        return  # the answer itself is past the range (or near its edge)
    want = answer * 2.0 ** (exponent // 2) * 2.0 ** (exponent - exponent // 2)
    assert torch.isfinite(got).all(), (got, want)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.to(want.dtype), want, rtol=tol, atol=tol * want.abs().max().item())


def test_tensor_scalars_keep_their_gradients_and_torchs_dtype():
    """The tensors' gradients are torch's eager ones (float64), and the result dtype is torch's
    for number, real-tensor and complex-tensor multipliers in either order."""
    A = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    u = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad((lm.lazy(A) * 1e30 * t * u * 1e-30).to_dense().sum(), (t, u))
    want = torch.autograd.grad((A * 1e30 * t * u * 1e-30).sum(), (t, u))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=0)
    A32 = torch.randn(4, 3)
    for s, n in [(torch.tensor(2.0, dtype=torch.float64), 1j), (torch.tensor(2 + 1j), 1.5),
                 (torch.tensor(2), 1.5), (torch.tensor(0.5, dtype=torch.float64), 3.0)]:
        assert (lm.lazy(A32) * n * s).to_dense().dtype == (A32 * n * s).dtype
        assert (lm.lazy(A32) * s * n).to_dense().dtype == (A32 * s * n).dtype
        torch.testing.assert_close((lm.lazy(A32) * s * n).to_dense(), A32 * s * n, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_device_route_answers_as_the_cpu_route(dtype):
    """The exponents found on the device (the route for tensors off the CPU, run here on CPU
    tensors) give the CPU route's answer: the same exact product, the same dtype."""
    limit = EXPONENT[dtype]
    x = torch.randn(3, 4, dtype=dtype) * 2.0**-limit
    cases = [(coefficient.fold(2.0**limit, 2.0**30), [2.0**-30, 3.0]), (0.75, [2.0**limit, -(2.0**-limit)]),
             (1, [2.0**limit, 2.0**limit]), (2.0**-limit, [math.inf]), (1e-300, [0.0, 5.0])]
    for k, values in cases:
        tensors = tuple(torch.tensor(v, dtype=torch.float64) for v in values)
        got = coefficient._device_exponents(x, k, tensors)
        want = coefficient._times_tensors(x, k, tensors)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0, equal_nan=True)


def test_tensor_scalars_under_torch_func_transforms():
    """``torch.func.grad``, ``vmap`` over a tensor scalar and forward mode see the tensors'
    derivatives (no value is read back under a transform: vmap cannot batch one)."""
    A = torch.randn(3, 2, dtype=torch.float64)

    def f(t):
        return (lm.lazy(A) * 2.0 * t).to_dense().sum()

    ts = torch.tensor([1.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(torch.func.grad(f)(ts[0]), 2 * A.sum())
    torch.testing.assert_close(torch.func.vmap(f)(ts), 2 * A.sum() * ts)
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(f))(ts), 2 * A.sum().expand(2))
    _, tangent = torch.func.jvp(f, (ts[0],), (torch.ones((), dtype=torch.float64),))
    torch.testing.assert_close(tangent, 2 * A.sum())
