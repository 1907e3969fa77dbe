"""A narrowing cast of a product inside a product (``X.half() @ W`` with ``X = A @ B``) floats
outward: the product is computed in the source dtype and rounded once at the end, so the rounded
``X`` is never formed (a 20000 x 20000 rank-8 ``matrix_norm`` formed 1.5 GB for 4 s).

Each result is compared with eager float64 (complex128) evaluations: the exact value rounded
once to the narrow dtype, and eager torch's own route (round ``X``, then multiply in the narrow
dtype), each within the bound docs/expressions.md states."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from tests.test_cast_reading import _Largest

CASTS = [(torch.float64, torch.float32), (torch.float32, torch.float16), (torch.float32, torch.bfloat16),
         (torch.complex128, torch.complex64)]


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


class _Twin:
    """An expression built over tensors, next to what eager torch makes of the same formula:
    ``exact`` (float64 / complex128 throughout), ``size`` (the formula over the entries'
    magnitudes: what bounds every rounding error) and ``eager`` (torch's route in the dtypes the
    expression states)."""

    def __init__(self, expr, exact, size, eager):
        self.expr, self.exact, self.size, self.eager = expr, exact, size, eager

    @staticmethod
    def leaf(t: torch.Tensor) -> "_Twin":
        return _Twin(lm.lazy(t), _wide(t), _wide(t).abs(), t)

    def __matmul__(self, o: "_Twin") -> "_Twin":
        return _Twin(self.expr @ o.expr, self.exact @ o.exact, self.size @ o.size, self.eager @ o.eager)

    def __add__(self, o: "_Twin") -> "_Twin":
        return _Twin(self.expr + o.expr, self.exact + o.exact, self.size + o.size, self.eager + o.eager)

    def scaled(self, k: float) -> "_Twin":
        return _Twin(k * self.expr, k * self.exact, abs(k) * self.size, k * self.eager)

    def cast(self, dtype: torch.dtype) -> "_Twin":
        return _Twin(self.expr.to(dtype), self.exact, self.size, self.eager.to(dtype))

    def rows(self, start: int) -> "_Twin":
        return _Twin(self.expr[..., start:, :], self.exact[..., start:, :], self.size[..., start:, :],
                     self.eager[..., start:, :])

    def stacked(self, o: "_Twin") -> "_Twin":
        """``cat([self, o], dim=-2)`` (``o`` unbatched, repeated over the batch in the twins)."""
        def cat(a, b):
            return torch.cat([a, b.expand(*a.shape[:-2], *b.shape[-2:])], dim=-2)
        return _Twin(lm.cat([self.expr, o.expr], dim=-2), cat(self.exact, o.exact), cat(self.size, o.size),
                     cat(self.eager, o.eager))

    @property
    def mT(self) -> "_Twin":
        return _Twin(self.expr.mT, self.exact.mT, self.size.mT, self.eager.mT)


def _tensor(g: torch.Generator, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    real = dtype.to_real() if dtype.is_complex else dtype
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        t = torch.complex(t, torch.randn(shape, generator=g, dtype=torch.float64))
    return t.to(dtype if dtype.is_complex else real)


def _rounded_product(seed, src, dst, m, r, q, n, batch, side, outer) -> tuple[_Twin, int]:
    """``X.to(dst)`` (``X = A @ B`` of shape ``(*batch, m, q)``, rank ``r``, in ``src``) inside a
    product with ``dst`` leaves on ``side``, under ``outer`` (a sum, a scale, a transpose, rows, a
    concatenation, the last three inside another product);
    with the length of the longest sum in the formula (what its rounding errors accumulate over)."""
    g = torch.Generator().manual_seed(seed)

    def leaf(shape, dtype):
        return _Twin.leaf(_tensor(g, shape, dtype))

    def rounded():
        return (leaf((*batch, m, r), src) @ leaf((r, q), src)).cast(dst)

    x = rounded()
    if outer == "sum of casts":  # (X1.to(dst) + X2.to(dst)) inside the product
        x = x + rounded()
    if side in ("left", "both"):
        x = x @ leaf((q, n), dst)
    if side in ("right", "both"):
        x = leaf((n, m), dst) @ x
    if outer == "leaf sum":
        x = x + leaf(tuple(x.exact.shape[-2:]), dst)
    elif outer == "scale":
        x = x.scaled(-0.75)
    elif outer == "transpose":
        x = x.mT @ leaf((x.exact.shape[-2], 3), dst)
    elif outer == "index":
        x = x.rows(x.exact.shape[-2] // 2) @ leaf((x.exact.shape[-1], 2), dst)
    elif outer == "cat":
        x = x.stacked(leaf((2, x.exact.shape[-1]), dst)) @ leaf((x.exact.shape[-1], 2), dst)
    return x, r + q + m + n + 3


def _check_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    excess = (_wide(got) - want).abs() - bound
    assert excess.max() <= 0, f"{what}: off by {float(excess.max()):.3g} past the bound"


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(CASTS), st.integers(1, 12), st.integers(1, 4),
       st.integers(1, 12), st.integers(1, 12), st.lists(st.integers(1, 3), max_size=1),
       st.sampled_from(["left", "right", "both"]),
       st.sampled_from(["none", "sum of casts", "leaf sum", "scale", "transpose", "index", "cat"]))
def test_a_cast_inside_a_product_is_rounded_once_at_the_end(seed, cast, m, r, q, n, batch, side, outer):
    src, dst = cast
    x, k = _rounded_product(seed, src, dst, m, r, q, n, tuple(batch), side, outer)
    got = x.expr.to_dense()
    assert got.dtype == dst and got.shape == x.exact.shape
    eps_src, eps_dst = torch.finfo(src).eps, torch.finfo(dst).eps
    tiny = torch.finfo(dst).smallest_normal * eps_dst  # the spacing of dst's subnormals
    # computed in src (each entry within k eps_src of the magnitudes' formula), rounded once
    computed = 2 * k * eps_src * x.size
    _check_within(got, _wide(x.exact.to(dst)), eps_dst * x.exact.abs() + computed + tiny,
                  "against the exact value rounded once")
    # eager torch rounds X to dst and works on in dst: its error is within (k + 2) eps_dst of the
    # magnitudes' formula, ours within what the line above allows
    eager = (k + 2) * eps_dst * x.size * (1 + eps_dst)
    _check_within(got, _wide(x.eager), eager + eps_dst * x.exact.abs() + computed + 2 * tiny,
                  "against eager torch's route")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(CASTS), st.integers(2, 30), st.integers(1, 4),
       st.integers(2, 30), st.sampled_from(["left", "right", "both"]))
def test_linalg_on_a_cast_inside_a_product_reads_the_rounded_matrix(seed, cast, m, r, n, side):
    src, dst = cast
    x, k = _rounded_product(seed, src, dst, m, r, m, n, (), side, "none")
    R = _wide(x.exact.to(dst))  # the matrix rounded once, exactly
    # the answers come from the product in src, rounded to dst: within k eps_src (the product
    # in src) and eps_dst (R's own rounding) of R, in any unitarily invariant norm (Weyl)
    eps_src, eps_dst = torch.finfo(src).eps, torch.finfo(dst).eps
    norm = torch.linalg.matrix_norm
    far = 2 * k * eps_src * float(norm(x.size)) + eps_dst * float(norm(R))
    tol = dict(rtol=2 * eps_dst, atol=far + 1e-30)
    values = LA.svdvals(x.expr, full=True)
    assert values.dtype == dst.to_real()
    torch.testing.assert_close(_wide(values), torch.linalg.svdvals(R).to(torch.float64), **tol)
    torch.testing.assert_close(_wide(LA.matrix_norm(x.expr)), norm(R).to(torch.float64), **tol)
    if x.exact.shape[-1] == x.exact.shape[-2]:
        size = x.exact.shape[-1]
        torch.testing.assert_close(_wide(LA.trace(x.expr)), R.diagonal().sum(), rtol=2 * eps_dst,
                                   atol=size * far)


N, RANK = 4000, 8


def _square(cast: tuple, side: str):
    """A 4000 x 4000 rank-8 ``X.to(dst)`` times a rank-8 4000 x 4000 product of ``dst`` leaves."""
    src, dst = cast
    g = torch.Generator().manual_seed(0)
    A, B = (_tensor(g, s, src) / 4 for s in ((N, RANK), (RANK, N)))
    C, D = (_tensor(g, s, dst) / 4 for s in ((N, RANK), (RANK, N)))
    X, W = lm.lazy(A) @ lm.lazy(B), lm.lazy(C) @ lm.lazy(D)
    return {"left": X.to(dst) @ W, "right": W @ X.to(dst), "sum": (X.to(dst) + W) @ W}[side]


OPS = {"matrix_norm": LA.matrix_norm, "svdvals": LA.svdvals, "eigvals": LA.eigvals, "trace": LA.trace,
       "nuc": lambda x: LA.matrix_norm(x, "nuc"), "matrix_rank": LA.matrix_rank, "diagonal": LA.diagonal}


@pytest.mark.parametrize("side", ["left", "right", "sum"])
@pytest.mark.parametrize("cast", [(torch.float32, torch.float16), (torch.float64, torch.float32)])
@pytest.mark.parametrize("op", list(OPS))
def test_a_rounded_product_inside_a_product_is_never_formed(op, cast, side):
    Y = _square(cast, side)
    with _Largest() as seen:
        OPS[op](Y)
    assert seen.largest < N * N // 10, f"{op} formed a tensor of {seen.largest} elements"


def test_to_dense_of_a_thin_product_forms_nothing_square():
    g = torch.Generator().manual_seed(1)
    X = lm.lazy(_tensor(g, (N, RANK), torch.float32)) @ lm.lazy(_tensor(g, (RANK, N), torch.float32))
    W = _tensor(g, (N, 16), torch.float16)
    with _Largest() as seen:
        Y = (X.half() @ W).to_dense()
    assert seen.largest < N * N // 10 and Y.shape == (N, 16) and Y.dtype == torch.float16


def test_explain_shows_the_route_that_runs():
    n = 50257
    A, B = lm.symbol("A", (n, 64)), lm.symbol("B", (64, n))
    C, D = lm.symbol("C", (n, 64), dtype=torch.float16), lm.symbol("D", (64, n), dtype=torch.float16)
    X, W = A @ B, C @ D
    Y = X.half() @ W
    wide = X @ W.float()  # what Y rounds
    for op in ("svdvals", "trace", "matrix_norm", "eigvals"):
        got, want = lm.explain(Y, op=op), lm.explain(wide, op=op)
        assert got.flops == want.flops < n * n * 64, op
        assert got.planned.peak_bytes == want.planned.peak_bytes < n * n, op
    thin = lm.explain(X.half() @ C, op="to_dense")  # (n, 64): computed in float32, cast once
    assert thin.planned.peak_bytes < n * n and thin.flops < n * n
    assert "float16" in str(thin)


def test_gradients_reach_the_leaves_through_the_floated_cast(gen):
    A = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    B = torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    W = torch.randn(5, 4, generator=gen).requires_grad_()
    (lm.lazy(A) @ lm.lazy(B)).float().__matmul__(lm.lazy(W)).to_dense().square().sum().backward()
    got = [t.grad for t in (A, B, W)]
    for t in (A, B, W):
        t.grad = None
    ((A @ B) @ W.double()).float().square().sum().backward()  # the floated formula, eagerly
    for g, t in zip(got, (A, B, W), strict=True):
        torch.testing.assert_close(g, t.grad)


@pytest.mark.cuda
def test_a_cast_inside_a_product_floats_on_cuda(gen):
    A, B = torch.randn(300, 4, generator=gen), torch.randn(4, 300, generator=gen)
    W = torch.randn(300, 300, generator=gen).half()
    X = lm.lazy(A.cuda()) @ lm.lazy(B.cuda())
    Y = X.half() @ lm.lazy(W.cuda())
    want = ((A.double() @ B.double()) @ W.double()).half()
    got = Y.to_dense()
    assert got.device.type == "cuda" and got.dtype == torch.float16
    torch.testing.assert_close(got.cpu().double(), want.double(), rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(LA.matrix_norm(Y).cpu().double(), torch.linalg.matrix_norm(want.double()),
                               rtol=2e-3, atol=0)


def test_narrowing_casts_in_a_row_round_once_from_the_widest(gen):
    A = torch.randn(40, 3, dtype=torch.float64, generator=gen)
    B = torch.randn(3, 30, dtype=torch.float64, generator=gen)
    W = torch.randn(30, 7, generator=gen).half()
    X = lm.lazy(A) @ lm.lazy(B)
    got = (X.float().half() @ lm.lazy(W)).to_dense()
    exact = A @ B @ W.double()
    torch.testing.assert_close(got, exact.half(), rtol=torch.finfo(torch.float16).eps, atol=0)
    # a widening cast after a narrowing one keeps the rounding: X.half().float() holds float16 values
    kept = X.half().float().to_dense()
    assert kept.dtype == torch.float32 and torch.equal(kept, kept.half().float())
    torch.testing.assert_close(kept, (A @ B).half().float(), rtol=torch.finfo(torch.float16).eps, atol=0)
