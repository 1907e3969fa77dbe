"""lazymat.compat.FactoredMatrix against TransformerLens 4.3's, field by field, beyond qa14's
float64 real factors: float32, complex64/128, rank-deficient and 1-wide factors (qa20,
session 15). Nothing differed there but what docs/migrating-from-transformer-lens.md lists
(signs of singular-vector pairs, eigenvalue order, complex ``V`` conjugated), which the
comparisons below read sign- and order-free. Found and fixed: ``fm * 1j`` of a real ``fm``
(and any scalar that promotes the dtype) raised a mixed-dtype error naming factors the user
never made, and ``fm * fm`` blamed ``A``'s shape; integer factors were refused without
naming the factor or its shape."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.compat import FactoredMatrix

DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def _close(ours, theirs, what, tol):
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (what, ours.shape, theirs.shape)
    scale = max(1.0, float(theirs.abs().max())) if theirs.numel() else 1.0
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol * scale, msg=what)


def _power_sums(v):  # a multiset of eigenvalues, order-free
    v = v.to(torch.complex128)
    return torch.stack([(v**p).sum(-1) for p in (1, 2, 3)], -1)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES), dims=st.tuples(*[st.integers(1, 5)] * 3),
       rank=st.integers(0, 5), square=st.booleans(), ba=st.lists(st.integers(1, 3), max_size=2),
       b_batched=st.booleans())
def test_every_field_matches_transformer_lens_for_any_dtype_and_rank(seed, dtype, dims, rank, square, ba,
                                                                    b_batched):
    TL = tl().FactoredMatrix
    l, m, r = dims
    r = l if square else r
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*ba, l, m, generator=gen, dtype=torch.float64).to(dtype)
    B = torch.randn(*(ba[-1:] if b_batched else ()), m, r, generator=gen, dtype=torch.float64).to(dtype)
    if dtype.is_complex:
        A = A + 1j * torch.randn(A.shape, generator=gen, dtype=torch.float64).to(dtype)
    A[..., rank:] = 0  # rank-deficient when rank < m
    ours, theirs = FactoredMatrix(A, B), TL(A, B)
    tol = 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-9
    assert (ours.shape, ours.ndim, ours.ldim, ours.mdim, ours.rdim, ours.has_leading_dims) == (
        theirs.shape, theirs.ndim, theirs.ldim, theirs.mdim, theirs.rdim, theirs.has_leading_dims)
    assert repr(ours) == repr(theirs)
    for what, read in (("A", lambda f: f.A), ("B", lambda f: f.B), ("AB", lambda f: f.AB),
                       ("T", lambda f: f.T.AB), ("S", lambda f: f.S), ("norm", lambda f: f.norm()),
                       ("make_even", lambda f: f.make_even().AB), ("corner", lambda f: f.get_corner(2)),
                       ("collapse_l", lambda f: f.collapse_l().mH @ f.collapse_l()),  # sign-free
                       ("collapse_r", lambda f: f.collapse_r() @ f.collapse_r().mH),
                       ("pair", lambda f: torch.cat([f.pair[0].flatten(), f.pair[1].flatten()])),
                       ("unsqueeze", lambda f: f.unsqueeze(0).AB), ("[-1]", lambda f: f[-1].AB),
                       ("[..., -1, :1]", lambda f: f[..., -1, :1].AB)):
        _close(read(ours), read(theirs), what, tol)
    U, S, V = ours.svd()
    tU, tS, tV = theirs.svd()
    assert U.shape == tU.shape and S.shape == tS.shape and V.shape == tV.shape
    # TransformerLens's M == U diag(S) V^T; lazymat's M == U diag(S) V^H (the same for real V)
    _close(U @ torch.diag_embed(S.to(dtype)) @ V.mH, theirs.AB, "svd", tol)
    eye = torch.eye(S.shape[-1], dtype=dtype)
    _close(U.mH @ U, eye.expand(*U.shape[:-2], -1, -1), "U orthonormal", tol)
    _close(V.mH @ V, eye.expand(*V.shape[:-2], -1, -1), "V orthonormal", tol)
    if square:
        assert ours.eigenvalues.shape == theirs.eigenvalues.shape
        assert ours.eigenvalues.dtype == theirs.eigenvalues.dtype
        _close(_power_sums(ours.eigenvalues), _power_sums(theirs.eigenvalues), "eigenvalues", tol)
        _close(ours.BA, theirs.BA, "BA", tol)
    W = torch.randn(r, 2, generator=gen, dtype=torch.float64).to(dtype)
    _close((ours @ W).AB, (theirs @ W).AB, "fm @ W", tol)
    _close(ours @ W[:, 0], theirs @ W[:, 0], "fm @ v", tol)
    W = torch.randn(2, l, generator=gen, dtype=torch.float64).to(dtype)
    _close((W @ ours).AB, (W @ theirs).AB, "W @ fm", tol)
    _close(W[0] @ ours, W[0] @ theirs, "v @ fm", tol)
    _close((ours @ ours.T).AB, (theirs @ theirs.T).AB, "fm @ fm.T", tol)


SCALARS = (2, -0.5, 1j, 2 - 3j, np.float32(1.5), np.int64(3), np.array(2.5), np.array([[0.5j]]),
           torch.tensor(2.0), torch.tensor(1j), torch.tensor([[3.0]], dtype=torch.float64),
           torch.tensor(0.5, dtype=torch.float16))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES), scalar=st.sampled_from(SCALARS),
       left=st.booleans(), batch=st.lists(st.integers(1, 3), max_size=1))
def test_scaling_by_any_scalar_is_the_promoted_product(seed, dtype, scalar, left, batch):
    """``fm * c`` is ``AB * c`` in the dtype torch gives it, whichever scalar promotes it
    (a complex one did raise a mixed-dtype error naming factors the user never made)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, 4, 2, generator=gen, dtype=torch.float64).to(dtype)
    B = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(dtype)
    fm = FactoredMatrix(A, B)
    got = (scalar * fm if left else fm * scalar).AB
    c = torch.as_tensor(scalar).reshape(())
    want = (A.to(torch.complex128) @ B.to(torch.complex128)) * c.to(torch.complex128)
    assert got.dtype == torch.result_type(A, torch.as_tensor(scalar))  # (with its dims, as AB * c: qa26)
    tol = 1e-3 if torch.finfo(got.dtype).bits <= 64 and got.dtype != torch.float64 else 1e-10
    torch.testing.assert_close(got.to(torch.complex128), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("other", ["x", None, [2.0], "fm"])
def test_scaling_by_a_non_scalar_names_the_shape_and_keeps_transformer_lens_kinds(other):
    TL = tl()
    A, B = torch.randn(3, 2), torch.randn(2, 4)
    ours, theirs = FactoredMatrix(A, B), TL.FactoredMatrix(A, B)
    other_ours, other_theirs = (ours, theirs) if other == "fm" else (other, other)
    with pytest.raises(Exception) as want:
        theirs * other_theirs
    with pytest.raises(want.type, match=r"FactoredMatrix \(3, 4\) \* .*only a number") as got:
        ours * other_ours
    assert "(3, 2)" not in str(got.value)  # A's shape was named: the user never made A an operand


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
@pytest.mark.parametrize("which", ["A", "B"])
def test_integer_factors_are_refused_naming_the_factor_shape_and_dtype(dtype, which):
    A, B = torch.ones(3, 2), torch.ones(2, 4)
    bad = {"A": (A.to(dtype), B), "B": (A, B.to(dtype))}[which]
    shape = tuple(bad[0 if which == "A" else 1].shape)
    with pytest.raises(TypeError, match=rf"factor {which} \({shape[0]}, {shape[1]}\) has dtype {dtype}"):
        FactoredMatrix(*bad)


def _outcome(f):
    try:
        return f(), None
    except Exception as e:  # noqa: BLE001 (compared with TransformerLens's class)
        return None, e


@settings(max_examples=40, deadline=None)
@given(ndim=st.integers(2, 4), k=st.integers(-7, 6), seed=st.integers(0, 99))
def test_unsqueeze_of_any_k_matches_transformer_lens(ndim, k, seed):
    """An out-of-range ``k`` raises ``IndexError`` as TransformerLens's (torch's) does; it was
    wrapped round (``k % (ndim + 1)``) and answered with a wrong dim."""
    TL = tl().FactoredMatrix
    gen = torch.Generator().manual_seed(seed)
    batch = (2, 3)[: ndim - 2]
    A = torch.randn(*batch, 4, 2, generator=gen, dtype=torch.float64)
    B = torch.randn(*batch, 2, 3, generator=gen, dtype=torch.float64)
    got, error = _outcome(lambda: FactoredMatrix(A, B).unsqueeze(k).AB)
    want, want_error = _outcome(lambda: TL(A, B).unsqueeze(k).AB)
    if want_error is not None:
        assert isinstance(error, type(want_error)), (k, error, want_error)
        assert str(tuple(A.shape[:-2] + (4, 3))) in str(error) or isinstance(want_error, AssertionError)
    else:
        assert error is None, error
        _close(got, want, f"unsqueeze({k})", 1e-12)


OPERANDS = {
    "fm @ W": lambda fm, o: fm @ o(fm.rdim, 2), "W @ fm": lambda fm, o: o(2, fm.ldim) @ fm,
    "fm @ v": lambda fm, o: fm @ o(fm.rdim), "v @ fm": lambda fm, o: o(fm.ldim) @ fm,
    "fm @ fm": lambda fm, o: fm @ type(fm)(o(fm.rdim, 2), o(2, 3)),
}


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(DTYPES), other=st.sampled_from(DTYPES + (torch.int64,)),
       how=st.sampled_from(sorted(OPERANDS)), batch=st.lists(st.integers(1, 3), max_size=1))
def test_an_operand_of_another_dtype_keeps_transformer_lens_kind_and_names_both(dtype, other, how, batch):
    """TransformerLens's torch matmul raised ``RuntimeError`` for an operand of another dtype;
    lazymat raised a ``TypeError`` that was not one (an ``except RuntimeError`` missed it)."""
    TL = tl().FactoredMatrix
    A, B = torch.randn(*batch, 4, 2).to(dtype), torch.randn(2, 3).to(dtype)

    def operand(*shape):
        return torch.ones(shape).to(other)
    got, error = _outcome(lambda: OPERANDS[how](FactoredMatrix(A, B), operand))
    want, want_error = _outcome(lambda: OPERANDS[how](TL(A, B), operand))
    if other == dtype:
        assert error is None and want_error is None
        return
    assert error is not None and want_error is not None
    assert isinstance(error, type(want_error)), (error, want_error)
    assert str(other) in str(error) or "int64" in str(error)
