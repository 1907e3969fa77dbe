"""The compiled call of one matrix in one frame (``linalg.compiled._single_run``) and the dispatch that asks
it first (``interop.dispatch``): ``torch.linalg.<op>(lazy(A) @ lazy(B) @ ...)`` on fresh leaves,
every spectral op the compiled calls answer, against the general path on the same data (the
compiled call makes its decisions, so the answers are equal) and against torch in float64.

Random small shapes (dense, reduced and factored routes), operands read transposed, real and
complex dtypes, leaves that require grad read under ``torch.no_grad`` (read detached at the
front), inf and NaN entries (the general path answers), a leaf edited in place between two
calls, and the widths LAPACK runs with one intra-op thread."""

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compiled_calls import general_path

import lazymat as lm
from lazymat import linalg as LA
from lazymat import mkl_quiet

from conftest import assert_close

SETTINGS = settings(max_examples=40, deadline=None)

# name: the call torch users write (routed by interop.dispatch to the compiled call)
OPS = {
    "svdvals": torch.linalg.svdvals,
    "svd": lambda x: torch.linalg.svd(x, full_matrices=False),
    "matrix_rank": torch.linalg.matrix_rank,
    "norm 2": lambda x: torch.linalg.matrix_norm(x, 2),
    "norm -2": lambda x: torch.linalg.matrix_norm(x, -2),
    "norm nuc": lambda x: torch.linalg.matrix_norm(x, "nuc"),
    "cond": torch.linalg.cond,
    "pinv": torch.linalg.pinv,
    "lm svdvals": LA.svdvals,
}


def fresh(tensors, flips):
    """A new product of new leaves over ``tensors``, the ``i``-th read as ``lazy(T.mT).mT``
    where ``flips[i]`` (``T`` stored transposed)."""
    operands = [lm.lazy(t.mT.contiguous()).mT if flip else lm.lazy(t)
                for t, flip in zip(tensors, flips, strict=True)]
    return functools.reduce(lambda a, b: a @ b, operands)


def parts(answer):
    """The answer's tensors (a lazy answer, pinv's of a product, formed)."""
    out = tuple(answer) if isinstance(answer, tuple) else (answer,)
    return tuple(p.to_dense() if isinstance(p, lm.Expr) else p for p in out)


def equal(a, b, name):
    """Equal answers, NaN where the other has NaN, the same dtype and shape. The vectors (svd's,
    and pinv's answer made of them) may come from a matrix the general path formed in another
    order (rounded otherwise: so already before the single-matrix run): equal to rounding."""
    for x, y in zip(parts(a), parts(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(x.isnan(), y.isnan()), (x, y)
        if name in ("svd", "pinv"):
            tol = 1e-4 if x.dtype in (torch.float32, torch.complex64) else 1e-10
            scale = 1 + float(y.nan_to_num().abs().max()) if y.numel() else 1.0
            assert_close(x.nan_to_num(), y.nan_to_num(), rtol=tol, atol=tol * scale)
        else:
            assert torch.equal(x.nan_to_num(), y.nan_to_num()), (x, y)


@st.composite
def chains(draw):
    """Two or three factors ``m x r``, (``r x r``), ``r x n`` of random data, each maybe read
    transposed, in a float or complex dtype."""
    m, n = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    r = draw(st.integers(1, 12))
    three = draw(st.booleans())
    shapes = [(m, r), (r, r), (r, n)] if three else [(m, r), (r, n)]
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.complex64, torch.complex128]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    tensors = [torch.randn(*s, generator=gen, dtype=dtype) for s in shapes]
    flips = tuple(draw(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes))))
    return tensors, flips


@SETTINGS
@given(chains(), st.sampled_from(sorted(OPS)))
def test_single_matrix_calls_answer_as_the_general_path_and_torch(case, name):
    tensors, flips = case
    op = OPS[name]
    op(fresh(tensors, flips))  # compiles the structure's call
    got = op(fresh(tensors, flips))
    with general_path():
        want = op(fresh(tensors, flips))
    equal(got, want, name)
    assert not mkl_quiet.quiet.blocks()  # every block opened was closed
    if name in ("svdvals", "norm 2", "norm nuc"):  # against torch on the float64 product
        wide = torch.complex128 if tensors[0].dtype.is_complex else torch.float64
        dense = functools.reduce(torch.matmul, [t.to(wide) for t in tensors])
        expected = op(dense)
        tol = 1e-4 if tensors[0].dtype in (torch.float32, torch.complex64) else 1e-9
        scale = 1 + float(expected.abs().max()) if expected.numel() else 1.0
        assert_close(got.to(expected.dtype), expected, rtol=tol, atol=tol * scale * max(dense.shape))


@SETTINGS
@given(chains(), st.sampled_from(sorted(OPS)))
def test_leaves_that_require_grad_are_read_detached_without_recording(case, name):
    """Under ``torch.no_grad`` a leaf that requires grad is read detached: the compiled call
    answers as the general path, and nothing in the answer records a gradient."""
    tensors, flips = case
    tensors = [t.requires_grad_() for t in tensors]
    op = OPS[name]
    with torch.no_grad():
        op(fresh(tensors, flips))
        got = op(fresh(tensors, flips))
        with general_path():
            want = op(fresh(tensors, flips))
    equal(got, want, name)
    assert not any(p.requires_grad for p in parts(got))


@SETTINGS
@given(chains(), st.sampled_from(sorted(OPS)), st.sampled_from([float("inf"), float("-inf"), float("nan")]),
       st.integers(0, 2), st.integers(0, 10**6))
def test_non_finite_entries_answer_as_the_general_path(case, name, value, which, where):
    tensors, flips = case
    op = OPS[name]
    op(fresh(tensors, flips))  # compiled on finite data
    t = tensors[which % len(tensors)]
    t.view(-1)[where % t.numel()] = value
    try:
        got = op(fresh(tensors, flips))
    except LA.NonFiniteError as e:  # (matrix_rank: no rank, as torch raises for NaN)
        with general_path(), pytest.raises(type(e), match=str(e).split(":")[0]):
            op(fresh(tensors, flips))
        return
    with general_path():
        want = op(fresh(tensors, flips))
    equal(got, want, name)
    assert not mkl_quiet.quiet.blocks()


@SETTINGS
@given(chains(), st.sampled_from(sorted(OPS)))
def test_a_leaf_edited_in_place_between_calls_gives_the_new_answer(case, name):
    tensors, flips = case
    op = OPS[name]
    op(fresh(tensors, flips))
    tensors[0].mul_(-3)
    tensors[0][..., 0] = 0
    got = op(fresh(tensors, flips))
    with general_path():
        want = op(fresh(tensors, flips))
    equal(got, want, name)


def test_widths_decomposed_with_one_thread_answer_as_the_general_path():
    """A 40 x 40 product (a width ``for_shape`` decomposes with one intra-op thread) with two
    threads set: the thread count is restored, and the answers are the general path's."""
    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(40, 36, generator=gen, dtype=torch.float64),
               torch.randn(36, 40, generator=gen, dtype=torch.float64)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name, op in OPS.items():
            op(fresh(tensors, (False, False)))
            got = op(fresh(tensors, (False, True)))
            assert torch.get_num_threads() == 2
            with general_path():
                want = op(fresh(tensors, (False, True)))
            equal(got, want, name)
    finally:
        torch.set_num_threads(threads)
