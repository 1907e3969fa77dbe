"""A narrowing cast of a product (``(A @ B).float()``, ``.half()``) is decomposed from the
product itself and the answer rounded to the cast's dtype: the rounded matrix has no factored
form, and every linalg op formed it whole (a 20000 x 20000 rank-8 ``matrix_norm`` took 16 s and
2.5 GB)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

CASTS = [(torch.float64, torch.float32), (torch.float32, torch.float16), (torch.float32, torch.bfloat16),
         (torch.complex128, torch.complex64)]


class _Largest(TorchDispatchMode):
    """The most elements of any tensor an op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _product(seed: int, m: int, r: int, n: int, dtype: torch.dtype, batch: tuple = ()):
    g = torch.Generator().manual_seed(seed)
    real = dtype.to_real() if dtype.is_complex else dtype
    mats = [torch.randn(*batch, a, b, generator=g, dtype=real) for a, b in ((m, r), (r, r), (r, n))]
    if dtype.is_complex:
        mats = [torch.complex(t, torch.randn(t.shape, generator=g, dtype=real)) for t in mats]
    X = lm.lazy(mats[0]) @ lm.lazy(mats[1]) @ lm.lazy(mats[2])
    return X, mats[0] @ mats[1] @ mats[2]


@pytest.mark.parametrize("op", ["svdvals", "fro", "nuc", "2", "rank", "trace", "eigvals", "diagonal"])
def test_a_rounded_product_is_never_formed(op):
    n, r = 3000, 4
    X, _ = _product(0, n, r, n, torch.float64)
    call = {"svdvals": LA.svdvals, "fro": LA.matrix_norm, "nuc": lambda x: LA.matrix_norm(x, "nuc"),
            "2": lambda x: LA.matrix_norm(x, 2), "rank": LA.matrix_rank, "trace": LA.trace,
            "eigvals": LA.eigvals, "diagonal": LA.diagonal}[op]
    with _Largest() as seen:
        call(X.float())
    assert seen.largest < n * n // 10, f"{op} formed a tensor of {seen.largest} elements"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(CASTS), st.integers(2, 40), st.integers(1, 6),
       st.integers(2, 40), st.lists(st.integers(1, 3), max_size=1))
def test_answers_on_a_cast_are_the_rounded_matrixs(seed, cast, m, r, n, batch):
    src, dst = cast
    X, D = _product(seed, m, r, n, src, tuple(batch))
    Y = X.to(dst)
    R = D.to(dst).to(torch.complex128 if dst.is_complex else torch.float64)  # the rounded matrix, exactly
    u = torch.finfo(dst).eps
    scale = float(torch.linalg.matrix_norm(R).max()) + 1e-30
    tol = dict(rtol=0, atol=8 * u * scale * (1 + min(m, n)))
    out = LA.svdvals(Y, full=True)
    assert out.dtype == (dst.to_real() if dst.is_complex else dst)
    torch.testing.assert_close(out.to(torch.float64), torch.linalg.svdvals(R), **tol)
    torch.testing.assert_close(LA.matrix_norm(Y).to(torch.float64), torch.linalg.matrix_norm(R), **tol)
    torch.testing.assert_close(LA.diagonal(Y).to(R.dtype), R.diagonal(dim1=-2, dim2=-1), **tol)
    if m == n:
        torch.testing.assert_close(LA.trace(Y).to(R.dtype), R.diagonal(dim1=-2, dim2=-1).sum(-1),
                                   rtol=0, atol=tol["atol"] * n)
    # the rank of the rounded matrix by torch's rule in the cast's precision: the source's
    # singular values past the rank are exact zeros, the rounding's noise is below the tolerance
    if dst in (torch.float32, torch.complex64):
        assert torch.equal(LA.matrix_rank(Y), torch.linalg.matrix_rank(D.to(dst)))


def test_a_norm_asked_in_another_dtype_rounds_first():
    X, D = _product(1, 30, 3, 20, torch.float64)
    got = LA.matrix_norm(X.float(), dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.linalg.matrix_norm(D.float().double()), rtol=1e-12, atol=0)


def test_explain_shows_the_route_that_runs_on_a_cast():
    A = lm.symbol("A", (50257, 64))
    B = lm.symbol("B", (64, 50257))
    X = A @ B
    for op in ("svdvals", "trace", "matrix_norm"):
        cast, source = lm.explain(X.half(), op=op), lm.explain(X, op=op)
        assert cast.flops == source.flops < 50257 * 50257 * 64, op
