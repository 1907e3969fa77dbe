"""lazymat.compat.FactoredMatrix as a TransformerLens user porting code meets it (qa26,
session 19): side by side with TransformerLens 4.3's and with eager torch.

Found and fixed: ``fm * c`` with a one-element tensor or array that has dims (``torch.tensor([2.],
dtype=torch.float64)`` of a float32 ``fm``) kept ``fm``'s dtype, where ``AB * c`` is promoted (a
tensor with dims has its full say in torch's promotion; only a 0-dim one has none). Factors or
operands on two devices raised lazymat's ``ValueError`` "matmul: devices differ" (from the
constructor too, naming no factor), which an ``except RuntimeError`` (torch's error inside
TransformerLens) missed. A duck-typed tensor (TransformerLens 4.3 multiplies by any object with
``shape``, ``ndim``, ``size``, ``unsqueeze`` and ``@``) was refused as a "factor right operand",
with no word of what to pass instead. ``unsqueeze(1.0)`` or ``unsqueeze(None)`` raised Python's
"can't multiply sequence by non-int" or "'<=' not supported" from inside the adapter.
``fm.S`` formed ``U`` and ``V`` (an SVD) to read the singular values, and every later read of
``S``, ``U`` or ``V`` copied all three (the engine's cache hands out copies): on an H100,
``(W_E @ OV @ W_U).S`` for GPT-2-small's 12 x 12 heads allocated 7,368 MiB, and each later read
3,534 MiB, where the values alone take 159 MiB."""

import gc
import weakref

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.compat import FactoredDeviceError, FactoredMatrix

FM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
SCALAR_DTYPES = (torch.bool, torch.int64, torch.float16, torch.float32, torch.float64, torch.complex64,
                 torch.complex128)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(FM_DTYPES),
       scalar_dtype=st.sampled_from(SCALAR_DTYPES), scalar_ndim=st.integers(0, 4), as_array=st.booleans(),
       left=st.booleans(),
       batch=st.lists(st.integers(1, 3), max_size=2))
def test_scaling_by_a_one_element_tensor_is_AB_times_it_in_dtype_and_shape(seed, dtype, scalar_dtype,
                                                                          scalar_ndim, as_array, left, batch):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, 4, 2, generator=gen, dtype=torch.float64).to(dtype)
    B = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(dtype)
    c = (torch.rand((1,) * scalar_ndim, generator=gen, dtype=torch.float64) + 0.5).to(scalar_dtype)
    scalar = c.numpy() if as_array and scalar_dtype != torch.bfloat16 else c
    assume(torch.result_type(A, c) != torch.complex32)  # (torch has no complex-half matmul on the CPU)
    fm = FactoredMatrix(A, B)
    got = (scalar * fm if left else fm * scalar).AB
    want = (A @ B) * c  # eager torch: the dtype and shape the user's AB * c has
    assert (got.dtype, got.shape) == (want.dtype, want.shape), (dtype, c)
    exact = (A.to(torch.complex128) @ B.to(torch.complex128)) * c.to(torch.complex128)
    tols = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.complex64: 1e-5}
    tol = tols.get(got.dtype, 1e-12)
    torch.testing.assert_close(got.to(torch.complex128), exact, rtol=tol, atol=tol)


# Two devices without a GPU: "meta" tensors (shapes only) beside CPU ones. TransformerLens raises
# torch's RuntimeError for two real devices (cuda and cpu), at AB or @.
DEVICE_MEETINGS = {
    "FactoredMatrix(A, B)": lambda x, y: FactoredMatrix(x(4, 2), y(2, 3)),
    "fm @ W": lambda x, y: FactoredMatrix(x(4, 2), x(2, 3)) @ y(3, 5),
    "W @ fm": lambda x, y: y(5, 4) @ FactoredMatrix(x(4, 2), x(2, 3)),
    "fm @ v": lambda x, y: FactoredMatrix(x(4, 2), x(2, 3)) @ y(3),
    "v @ fm": lambda x, y: y(4) @ FactoredMatrix(x(4, 2), x(2, 3)),
    "fm @ fm": lambda x, y: FactoredMatrix(x(4, 2), x(2, 3)) @ FactoredMatrix(y(3, 1), y(1, 2)),
}


@settings(max_examples=30, deadline=None)
@given(how=st.sampled_from(sorted(DEVICE_MEETINGS)), meta_first=st.booleans(),
       batch=st.lists(st.integers(1, 3), max_size=2))
def test_two_devices_are_refused_where_they_meet_as_a_runtime_error_naming_both(how, meta_first, batch):
    def on(device):
        return lambda *shape: torch.zeros(*(batch if len(shape) == 2 else ()), *shape, device=device)
    first, second = (on("meta"), on("cpu")) if meta_first else (on("cpu"), on("meta"))
    with pytest.raises(RuntimeError, match="devices differ") as refused:
        DEVICE_MEETINGS[how](first, second)
    assert isinstance(refused.value, (FactoredDeviceError, ValueError))
    assert "meta" in str(refused.value) and "cpu" in str(refused.value)
    assert ("A (" in str(refused.value)) == (how == "FactoredMatrix(A, B)")  # the factors are named


class _DuckTensor:
    """A tensor look-alike of the kind TransformerLens 4.3 takes (its test suite's ``TensorLike``)."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.shape, self.ndim = tensor.shape, tensor.ndim

    def size(self, dim=None):
        return self.tensor.size() if dim is None else self.tensor.size(dim)

    def unsqueeze(self, dim):
        return _DuckTensor(self.tensor.unsqueeze(dim))

    def __matmul__(self, other):
        return NotImplemented if isinstance(other, FactoredMatrix) else _DuckTensor(self.tensor @ other)


PLACES = {
    "factor A": lambda x, fm: FactoredMatrix(x(4, 2), fm.B),
    "factor B": lambda x, fm: FactoredMatrix(fm.A, x(2, 3)),
    "right operand of @": lambda x, fm: fm @ x(3, 5),
    "left operand of @": lambda x, fm: x(5, 4) @ fm,
    "right operand of @ ": lambda x, fm: fm @ x(3),  # a vector
}
WRAPPERS = {"duck": _DuckTensor, "numpy": lambda t: t.numpy(), "list": lambda t: t.tolist()}


@settings(max_examples=30, deadline=None)
@given(place=st.sampled_from(sorted(PLACES)), wrapper=st.sampled_from(sorted(WRAPPERS)))
def test_an_operand_that_is_not_a_tensor_is_named_by_its_place_type_and_cure(place, wrapper):
    fm = FactoredMatrix(torch.randn(4, 2), torch.randn(2, 3))

    def wrapped(*shape):
        return WRAPPERS[wrapper](torch.randn(*shape))
    with pytest.raises(TypeError) as refused:
        PLACES[place](wrapped, fm)
    message = str(refused.value)
    assert f"FactoredMatrix {place.strip()} must be a torch.Tensor, got " in message
    cure = {"duck": "the torch.Tensor it wraps", "numpy": "torch.as_tensor", "list": ""}[wrapper]
    assert cure in message


NOT_INTS = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.none(), st.booleans(),
                     st.text(max_size=2), st.builds(torch.tensor, st.floats(-3, 3, width=32)),
                     st.builds(lambda i: torch.tensor([i]), st.integers(-3, 3)))


@settings(max_examples=40, deadline=None)
@given(k=NOT_INTS, batch=st.lists(st.integers(1, 3), max_size=2))
def test_unsqueeze_by_anything_but_an_int_is_a_type_error_naming_k_and_the_shape(k, batch):
    fm = FactoredMatrix(torch.randn(*batch, 4, 2), torch.randn(2, 3))
    with pytest.raises(TypeError) as torch_refused:
        torch.zeros(*batch, 4, 3).unsqueeze(k)  # torch's kind for the same k
    named = r"unsqueeze\(k\) of a FactoredMatrix \(.*\): k must be an int"
    with pytest.raises(type(torch_refused.value), match=named):
        fm.unsqueeze(k)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from((torch.float32, torch.float64, torch.complex128)),
       dims=st.tuples(*[st.integers(1, 5)] * 3), rank=st.integers(0, 5),
       batch=st.lists(st.integers(1, 3), max_size=2),
       written=st.sampled_from(["U", "S", "V", "A", "A.data", None]))
def test_singular_values_alone_form_no_vectors_and_the_svd_is_kept_until_written(
        seed, dtype, dims, rank, batch, written):
    gen = torch.Generator().manual_seed(seed)
    l, m, r = dims
    A = torch.randn(*batch, l, m, generator=gen, dtype=torch.float64).to(dtype)
    A[..., rank:] = 0  # rank-deficient when rank < m
    B = torch.randn(m, r, generator=gen, dtype=torch.float64).to(dtype)
    fm = FactoredMatrix(A, B)
    width = min(l, m, r)

    def dense_values():
        return torch.linalg.svdvals((A @ B).to(torch.complex128))[..., :width]
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    svds = []
    svd = lm.linalg.svd
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm.linalg, "svd", lambda *args, **kwargs: svds.append(1) or svd(*args, **kwargs))
        torch.testing.assert_close(fm.S.to(torch.float64), dense_values(), rtol=tol, atol=tol)
        assert not svds  # the values alone: no U and V formed
        first = fm.svd()
        assert [a is b for a, b in zip(first, fm.svd(), strict=True)] == [True] * 3  # kept, no copy
        assert fm.U is first[0] and fm.S is first[1] and fm.V is first[2]
        assert len(svds) == 1
    if written is not None:  # a write into an answer or a factor: the next call computes again
        {"U": first[0], "S": first[1], "V": first[2], "A": A, "A.data": A.data}[written].mul_(2)
    if written == "A.data":  # a write torch does not see: clear_cache() drops the kept SVD too
        fm.expr.clear_cache()
    U, S, V = fm.svd()
    torch.testing.assert_close(U @ torch.diag_embed(S.to(dtype)) @ V.mH, A @ B, rtol=tol, atol=tol)
    torch.testing.assert_close(S.to(torch.float64), dense_values(), rtol=tol, atol=tol)
    if written is None:  # (a full collection is slow: once in a few examples)
        alive = weakref.ref(fm)
        del fm
        gc.collect()
        assert alive() is None  # the kept SVD holds no reference to the matrix
