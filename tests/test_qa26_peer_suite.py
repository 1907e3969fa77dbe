"""TransformerLens's own FactoredMatrix unit tests (tests/unit/factored_matrix/ of its repository:
constructor, indexing, products with matrices, vectors, scalars and factored matrices, the
properties), restated as hypothesis properties that run both libraries on the same random
factors and compare them, and both with eager float64 torch (qa26, session 19).

What TransformerLens's tests pin and lazymat answers differently on purpose is read the way
docs/migrating-from-transformer-lens.md states it: signs of singular-vector pairs (compared
through ``U S V^H``), eigenvalue order (compared as a sorted modulus), an SVD computed again
after a write into one of its answers. Where TransformerLens raises, lazymat raises a subclass
of its exception."""

import gc
import warnings
import weakref

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.compat import FactoredMatrix

DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
BATCHES = st.lists(st.integers(1, 3), max_size=2)


def _wide(x):
    """``x`` in float64 or complex128, for the eager torch reference."""
    return x.to(torch.complex128 if x.is_complex() else torch.float64)


def _outcome(f):
    try:
        return f(), None
    except Exception as e:  # noqa: BLE001 (compared with TransformerLens's class)
        return None, e


def _agree(ours, theirs, what):
    """Both raised, ours a subclass of TransformerLens's exception; or neither did."""
    (got, error), (want, want_error) = _outcome(ours), _outcome(theirs)
    if want_error is not None:
        assert isinstance(error, type(want_error)), (what, error, want_error)
        return None, None
    assert error is None, (what, error)
    return got, want


def _close(got, want, what, dtype):
    tol = 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-10
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    torch.testing.assert_close(got.to(want.dtype), want, rtol=tol, atol=tol * scale, msg=what)


def _draw(gen, dtype, *shape):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if dtype.is_complex:
        x = torch.complex(x, torch.randn(*shape, generator=gen, dtype=torch.float64))
    return x.to(dtype)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES), a_batch=BATCHES, b_batch=BATCHES,
       dims=st.tuples(*[st.integers(1, 5)] * 3), inner_off=st.sampled_from([0, 0, 0, 1]))
def test_constructor_fields_and_errors_agree(seed, dtype, a_batch, b_batch, dims, inner_off):
    """test_constructor: shapes, broadcast factors, has_leading_dims; mismatched leading dims
    (RuntimeError) or inner dims (AssertionError)."""
    TL = tl().FactoredMatrix
    gen = torch.Generator().manual_seed(seed)
    l, m, r = dims
    A, B = _draw(gen, dtype, *a_batch, l, m), _draw(gen, dtype, *b_batch, m + inner_off, r)
    ours, theirs = _agree(lambda: FactoredMatrix(A, B), lambda: TL(A, B), "constructor")
    if theirs is None:
        return
    assert (ours.ldim, ours.mdim, ours.rdim, ours.shape, ours.ndim, ours.has_leading_dims) == (
        theirs.ldim, theirs.mdim, theirs.rdim, theirs.shape, theirs.ndim, theirs.has_leading_dims)
    assert torch.equal(ours.A, theirs.A) and torch.equal(ours.B, theirs.B)
    _close(ours.AB, torch.matmul(_wide(A), _wide(B)), "AB against torch", dtype)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES), fm_batch=BATCHES, other_batch=BATCHES,
       dims=st.tuples(*[st.integers(1, 5)] * 5), kind=st.sampled_from(["fm @ W", "W @ fm", "fm @ fm"]),
       inner_off=st.sampled_from([0, 0, 0, 1]))
def test_products_agree_in_value_split_and_leading_dims(seed, dtype, fm_batch, other_batch, dims, kind,
                                                        inner_off):
    """test_multiply_by_matrix / _by_factored_matrix: the product's AB, ldim/rdim, the mdim rule
    (the narrowest of the joined dims), the factors' leading dims; leading-dim mismatches
    (RuntimeError) and inner-dim mismatches (AssertionError)."""
    TL = tl().FactoredMatrix
    gen = torch.Generator().manual_seed(seed)
    l, m, r, n, k = dims
    A, B = _draw(gen, dtype, *fm_batch, l, m), _draw(gen, dtype, *fm_batch, m, r)
    if kind == "fm @ W":
        W = _draw(gen, dtype, *other_batch, r + inner_off, n)
        ours, theirs = _agree(lambda: FactoredMatrix(A, B) @ W, lambda: TL(A, B) @ W, kind)
        dense = lambda: torch.matmul(_wide(A) @ _wide(B), _wide(W))  # noqa: E731
        mdim = min(m, r)
    elif kind == "W @ fm":
        W = _draw(gen, dtype, *other_batch, n, l + inner_off)
        ours, theirs = _agree(lambda: W @ FactoredMatrix(A, B), lambda: W @ TL(A, B), kind)
        dense = lambda: torch.matmul(_wide(W), _wide(A) @ _wide(B))  # noqa: E731
        mdim = min(m, l)
    else:
        C, D = _draw(gen, dtype, *other_batch, r + inner_off, n), _draw(gen, dtype, *other_batch, n, k)
        ours, theirs = _agree(lambda: FactoredMatrix(A, B) @ FactoredMatrix(C, D),
                              lambda: TL(A, B) @ TL(C, D), kind)
        dense = lambda: torch.matmul(_wide(A) @ _wide(B), _wide(C) @ _wide(D))  # noqa: E731
        mdim = min(m, r, n)
    if theirs is None:
        return
    assert (ours.shape, ours.ldim, ours.mdim, ours.rdim) == (
        theirs.shape, theirs.ldim, theirs.mdim, theirs.rdim)
    assert ours.mdim == mdim
    assert ours.A.shape == theirs.A.shape and ours.B.shape == theirs.B.shape
    _close(ours.AB, theirs.AB, kind, dtype)
    _close(ours.AB, dense(), kind + " against torch", dtype)


SCALARS = {"int": 3, "float": -0.75, "0-dim tensor": torch.tensor(1.5),
           "one-element tensor": torch.tensor([2.0]), "vector": torch.ones(2), "matrix": torch.ones(2, 2)}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES), batch=BATCHES,
       dims=st.tuples(*[st.integers(1, 5)] * 3), scalar=st.sampled_from(sorted(SCALARS)), left=st.booleans())
def test_scalars_and_vectors_agree(seed, dtype, batch, dims, scalar, left):
    """test_multiply_by_scalar / _by_vector: ``c * fm`` and ``fm * c`` scale ``A``; a tensor of
    more than one element is an AssertionError; ``fm @ v`` and ``v @ fm`` are tensors."""
    TL = tl().FactoredMatrix
    gen = torch.Generator().manual_seed(seed)
    l, m, r = dims
    A, B = _draw(gen, dtype, *batch, l, m), _draw(gen, dtype, *batch, m, r)
    c = SCALARS[scalar].to(dtype) if isinstance(SCALARS[scalar], torch.Tensor) else SCALARS[scalar]

    def scaled(F):
        return c * F(A, B) if left else F(A, B) * c
    ours, theirs = _agree(lambda: scaled(FactoredMatrix), lambda: scaled(TL), scalar)
    if theirs is not None:
        _close(ours.AB, theirs.AB, "scaled AB", dtype)
        _close(ours.A, theirs.A, "scaled A", dtype)  # (TransformerLens's test: the scale lands on A)
    v, w = _draw(gen, dtype, r), _draw(gen, dtype, l)
    _close(FactoredMatrix(A, B) @ v, TL(A, B) @ v, "fm @ v", dtype)
    _close(w @ FactoredMatrix(A, B), w @ TL(A, B), "v @ fm", dtype)
    _close(FactoredMatrix(A, B) @ v, (_wide(A) @ _wide(B)) @ _wide(v), "fm @ v against torch", dtype)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES + (torch.bfloat16,)),
       batch=st.sampled_from([(), (1,), (2,)]), dims=st.tuples(*[st.integers(1, 6)] * 3),
       square=st.booleans(), k=st.integers(1, 4))
def test_properties_agree(seed, dtype, batch, dims, square, k):
    """test_properties: AB, BA (AssertionError unless square), T, svd (U S V^H is the matrix,
    U and V orthonormal; TransformerLens's V^T is V^H for real factors only), Vh a deprecated
    alias of V, eigenvalues (as BA's, by modulus; complex64 for bfloat16), ndim, pair, norm,
    get_corner, collapse_l/r; the svd is cached and does not keep the matrix alive."""
    TL = tl().FactoredMatrix
    gen = torch.Generator().manual_seed(seed)
    l, m, r = dims
    r = l if square else r
    A, B = _draw(gen, dtype, *batch, l, m), _draw(gen, dtype, *batch, m, r)
    ours, theirs = FactoredMatrix(A, B), TL(A, B)
    work = torch.float32 if dtype == torch.bfloat16 else dtype
    _close(ours.AB, theirs.AB, "AB", work)
    got, want = _agree(lambda f=ours: f.BA, lambda: theirs.BA, "BA")
    if want is not None:
        _close(got, want, "BA", work)
    names = ["T.A", "T.B", "A", "B"]
    for mine, peer, what in zip(ours.T.pair + ours.pair, theirs.T.pair + theirs.pair, names, strict=True):
        _close(mine, peer, what, work)
    assert ours.ndim == theirs.ndim
    if dtype == torch.bfloat16:  # (16-bit: decompositions in float32, as TransformerLens)
        ours, theirs = FactoredMatrix(A.float(), B.float()), TL(A.float(), B.float())
    U, S, V = ours.svd()
    assert all(a is b for a, b in zip((U, S, V), ours.svd(), strict=True))  # kept, as TransformerLens
    tU, tS, tV = theirs.svd()
    assert (U.shape, S.shape, V.shape) == (tU.shape, tS.shape, tV.shape)
    _close(S, tS, "S", work)
    _close(U @ torch.diag_embed(S.to(U.dtype)) @ V.mH, theirs.AB, "U S V^H", work)
    eye = torch.eye(S.shape[-1], dtype=U.dtype).expand(*S.shape[:-1], -1, -1)
    _close(U.mH @ U, eye, "U orthonormal", work)
    _close(V.mH @ V, eye, "V orthonormal", work)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Vh = ours.Vh
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert torch.equal(Vh, ours.V)
    _close(ours.norm(), theirs.norm(), "norm", work)
    _close(ours.get_corner(k), theirs.get_corner(k), f"get_corner({k})", work)
    _close(ours.U @ ours.collapse_l(), theirs.AB, "U @ collapse_l", work)
    _close(ours.collapse_r() @ ours.V.mH, theirs.AB, "collapse_r @ V^H", work)
    got, want = _agree(lambda f=ours: f.eigenvalues, lambda: theirs.eigenvalues, "eigenvalues")
    if want is not None:
        assert got.dtype == want.dtype and got.shape == want.shape
        _close(got.abs().sort(-1).values, want.abs().sort(-1).values, "|eigenvalues|", work)
    U.zero_()  # a write into an answer: the svd is computed again
    _close(ours.U @ torch.diag_embed(ours.S.to(U.dtype)) @ ours.V.mH, theirs.AB, "svd after a write", work)
    alive = weakref.ref(ours)
    del ours, U, S, V, Vh, got
    gc.collect()
    assert alive() is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), key=st.lists(
    st.one_of(st.integers(-3, 2), st.sampled_from([slice(None), slice(1, None), [0, 1], [1], None, ...]),
              st.just(torch.tensor([1, 0]))), min_size=1, max_size=6))
def test_indexing_agrees(seed, key):
    """test_get_item: ints, tuples, slices, a line and an element of the matrix (negative
    indices too), index lists and tensors for rows and columns, too long an index."""
    TL = tl().FactoredMatrix
    gen = torch.Generator().manual_seed(seed)
    A, B = torch.rand(2, 2, 2, 2, 2, generator=gen), torch.rand(2, 2, 2, 2, 2, generator=gen)
    key = tuple(key) if len(key) > 1 else key[0]
    ours, theirs = _agree(lambda: FactoredMatrix(A, B)[key], lambda: TL(A, B)[key], f"[{key}]")
    if theirs is None:
        return
    assert ours.shape == theirs.shape and ours.A.shape == theirs.A.shape and ours.B.shape == theirs.B.shape
    _close(ours.AB, theirs.AB, f"[{key}]", torch.float32)
