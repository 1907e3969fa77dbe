"""Torch conventions at the edges (qa14, session 11).

Found: ``lazy(A32) + lazy(B64)`` raised "dtypes differ" where torch promotes; ``lazy(A).to("cuda")``
on a machine without CUDA built an expression that failed only when evaluated, where torch's
``t.to("cuda")`` raises at once; ``X.type(...)`` raised ``UnsupportedTensorMethod`` where
``Tensor.type`` casts (or names the type)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def _term(gen, kind, batch, m, n, r, dtype):
    """A lazy term and its exact float64 (complex128) matrix: a dense leaf or a low-rank product."""
    if kind == "leaf":
        t = torch.randn(*batch, m, n, generator=gen, dtype=_wide(dtype)).to(dtype)
        return lm.lazy(t), t.to(_wide(dtype))
    a = torch.randn(*batch, m, r, generator=gen, dtype=_wide(dtype)).to(dtype)
    b = torch.randn(r, n, generator=gen, dtype=_wide(dtype)).to(dtype)
    return lm.lazy(a) @ lm.lazy(b), a.to(_wide(dtype)) @ b.to(_wide(dtype))


SUMS = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "torch.add alpha": lambda x, y: torch.add(x, y, alpha=2),
    "torch.sub": torch.sub,
    "sum()": lambda x, y: sum([x, y]),
}
REFERENCE = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "torch.add alpha": lambda x, y: x + 2 * y,
             "torch.sub": lambda x, y: x - y, "sum()": lambda x, y: x + y}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), da=st.sampled_from(DTYPES), db=st.sampled_from(DTYPES),
       ka=st.sampled_from(["leaf", "lowrank"]), kb=st.sampled_from(["leaf", "lowrank"]),
       op=st.sampled_from(sorted(SUMS)), batch=st.sampled_from([(), (2,)]),
       tensor_b=st.booleans(), m=st.integers(1, 6), n=st.integers(1, 6), r=st.integers(1, 2))
def test_sums_of_mixed_dtypes_promote_as_torch(seed, da, db, ka, kb, op, batch, tensor_b, m, n, r):
    """Property: a sum or difference of terms of any two dtypes has torch's promoted dtype
    (``torch.result_type`` of the eager matrices) and its value (against the float64 sum of the
    exact matrices); low-rank terms stay low rank (the inner width is at most the sum of theirs)."""
    gen = torch.Generator().manual_seed(seed)
    x, X = _term(gen, ka, batch, m, n, r, da)
    y, Y = _term(gen, kb, (), m, n, r, db)
    if tensor_b and kb == "leaf":
        y = y.tensor  # a plain tensor added
    z = SUMS[op](x, y)
    want_dtype = torch.result_type(torch.empty(1, dtype=da), torch.empty(1, dtype=db))
    assert z.dtype == want_dtype
    want = REFERENCE[op](X.to(torch.complex128), Y.to(torch.complex128))
    got = z.to_dense()
    assert got.dtype == want_dtype and got.shape == want.shape
    tol = {torch.float16: 4e-3, torch.bfloat16: 3e-2}.get(want_dtype, 1e-5)
    scale = float(X.abs().sum(-1).max() + 2 * Y.abs().sum(-1).max()) if X.numel() else 1.0
    torch.testing.assert_close(got.to(torch.complex128), want, rtol=0, atol=tol * scale)
    if ka == kb == "lowrank" and r * 2 < min(m, n):
        L, _ = z.factor()
        assert L.shape[-1] <= 2 * r


def test_the_sum_is_lazy_and_products_still_refuse():
    """The cast is a node on the narrower term (to its leaves: nothing runs); a product of mixed
    dtypes raises as torch.matmul does, with lazymat's message."""
    a, b = torch.randn(5, 2), torch.randn(2, 5, dtype=torch.float64)
    x = lm.lazy(a) @ lm.lazy(a.mT.contiguous())
    y = lm.lazy(b.mT.contiguous()) @ lm.lazy(b)
    assert "to(float64)" in repr(x + y)
    with pytest.raises(TypeError, match=r"matmul: dtypes differ, float32 \(5, 2\) vs float64 \(2, 5\)"):
        lm.lazy(a) @ lm.lazy(b)


def test_cat_promotes_as_torch_cat():
    a, b = torch.randn(3, 2), torch.randn(3, 4, dtype=torch.complex128)
    got = lm.cat([lm.lazy(a), lm.lazy(b)], dim=-1)
    want = torch.cat([a, b], dim=-1)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.to_dense(), want)


def test_integer_data_is_refused_by_name_in_a_sum():
    """lazymat holds floating and complex data only (docs/expressions.md): an int tensor added
    raises naming its dtype (torch would promote int + float to float)."""
    with pytest.raises(TypeError, match="int64"):
        lm.lazy(torch.randn(3, 3)) + torch.ones(3, 3, dtype=torch.int64)


# ---- moving data to a device torch cannot reach --------------------------------------------
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without CUDA answers")

MOVES = {
    "to('cuda')": lambda x: x.to("cuda"),
    "to(device=)": lambda x: x.to(device=torch.device("cuda", 0)),
    "to(device, dtype)": lambda x: x.to("cuda:1", torch.float64),
    "cuda()": lambda x: x.cuda(),
    "to(expr)": lambda x: x.to(lm.symbol("S", (1, 1), device="cuda")),
    "type(name)": lambda x: x.type("torch.cuda.DoubleTensor"),
}


def _data_expressions():
    a, b = torch.randn(4, 3), torch.randn(3, 4)
    s = lm.symbol("S", (4, 4))
    return {"leaf": lm.lazy(a), "product": lm.lazy(a) @ lm.lazy(b),
            "sum with a symbol": lm.lazy(a) @ lm.lazy(b) + s, "indexed": (lm.lazy(a) @ lm.lazy(b))[1:3],
            "cast": lm.lazy(a).double()}


@no_cuda
@pytest.mark.parametrize("move", sorted(MOVES))
@pytest.mark.parametrize("kind", sorted(_data_expressions()))
def test_moving_data_to_cuda_without_one_raises_at_once(move, kind):
    x = _data_expressions()[kind]
    with pytest.raises(RuntimeError, match=r"cannot move the .* to cuda:\d"):
        MOVES[move](x)


@no_cuda
@pytest.mark.parametrize("move", sorted(MOVES))
def test_symbols_still_move_to_cuda_and_are_costed(move):
    x = lm.symbol("E", (300, 16)) @ lm.symbol("Q", (16, 300))
    y = MOVES[move](x)
    assert y.device.type == "cuda"
    assert lm.explain(y, "svdvals", memory_budget="1GiB").planned.flops > 0


def test_moving_to_reachable_devices_still_works():
    a = torch.randn(4, 3, dtype=torch.float64)
    x = lm.lazy(a).to("meta")
    assert x.device.type == "meta" and x.to_dense().device.type == "meta"
    torch.testing.assert_close(lm.lazy(a).to("cpu", torch.float32).to_dense(), a.float())


# ---- Tensor.type -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_type_names_the_type_as_torch(dtype):
    t = torch.randn(3, 2).to(dtype)
    assert lm.lazy(t).type() == t.type()
    cuda = lm.symbol("A", (3, 2), dtype=dtype, device="cuda")
    assert cuda.type() == t.type().replace("torch.", "torch.cuda.")


@pytest.mark.parametrize("to", [torch.float64, "torch.DoubleTensor", torch.HalfTensor,
                                "torch.ComplexFloatTensor", torch.bfloat16])
def test_type_casts_lazily_as_torch(to):
    a, b = torch.randn(4, 2, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    x = (lm.lazy(a) @ lm.lazy(b)).type(to)
    want = (a @ b).type(to)
    assert lm.is_lazy(x) and x.dtype == want.dtype
    torch.testing.assert_close(x.to_dense(), want)


def test_a_cpu_type_name_moves_a_cuda_symbol_to_the_cpu():
    """As torch: a type name carries a device type (``'torch.DoubleTensor'`` is a CPU one)."""
    x = lm.symbol("A", (3, 3), device="cuda")
    assert x.type("torch.DoubleTensor").device.type == "cpu"
    assert x.type(torch.float64).device.type == "cuda"


@pytest.mark.parametrize("bad,error", [("torch.FooTensor", ValueError), ("DoubleTensor", ValueError),
                                       (3, TypeError), ("torch.LongTensor", TypeError)])
def test_type_refuses_as_torch(bad, error):
    t = torch.randn(3, 3)
    if error is ValueError or bad == 3:
        with pytest.raises(error):
            t.type(bad)  # torch's class for the same argument
    with pytest.raises(error):
        lm.lazy(t).type(bad)
