"""The factored spectral route's transfers between the device and the host (issue 12 item 5):
the core comes to the host with its rounding floor in one copy, LAPACK's factors go back in
one copy with their layouts, and a QK-like svd reads the device a fixed, small number of times.
Checked on the CPU (the transfer code runs by forcing the host placement); CUDA tests below."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import ValueReads, assert_close, randn

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128, torch.float16, torch.int8]


def _tensor(draw, dtype, shape, column_major):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.randn(shape, generator=g, dtype=torch.float64) * 50
    if dtype.is_complex:
        t = t + 1j * torch.randn(shape, generator=g, dtype=torch.float64)
    t = t.to(dtype)
    if column_major and len(shape) >= 2:
        t = t.mT.contiguous().mT  # LAPACK's layout
    return t


@st.composite
def factor_tuples(draw):
    n = draw(st.integers(1, 4))
    out = []
    for _ in range(n):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
        out.append(_tensor(draw, dtype, shape, draw(st.booleans())))
    return tuple(out)


@settings(max_examples=150, deadline=None)
@given(parts=factor_tuples())
def test_packed_factors_come_back_equal_with_their_layouts(parts):
    """Any mix of dtypes (odd sizes, so alignment matters), shapes (empty, scalars, batches) and
    layouts survives the one-buffer round trip exactly, strides included."""
    buffer, layout = LA._common._packed(parts)
    one_size = len({p.element_size() for p in parts}) == 1  # (then in the first part's dtype)
    assert buffer.dtype == (parts[0].dtype if one_size else torch.uint8) and buffer.ndim == 1
    back = LA._common._unpacked(buffer.clone(), layout)
    assert len(back) == len(parts)
    for a, b in zip(parts, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
        if a.ndim >= 2 and a.numel() > 1 and not a.is_contiguous():
            assert b.stride() == a.stride()


def _qk(gen, vocab=600, d=48, h=8, dtype=torch.float64):
    E, Wq, Wk = (randn(gen, *s).to(dtype) for s in ((vocab, d), (d, h), (d, h)))
    return lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT, E @ Wq @ Wk.mT @ E.mT


@pytest.mark.parametrize("op", ["svd", "svdvals"])
def test_factored_spectrum_reads_no_value_before_the_core(gen, op, monkeypatch):
    """The QK-like svd through CholeskyQR2 reads no value of the device before the core goes
    to the host (on CUDA each read waits for the stream to drain): the QRs' certificates, the
    core and its floor come over in one copy and are judged and thresholded there. Main read
    13 values of the device (every check of each QR pass, each factor's norm, the floor)."""
    X, D = _qk(gen)
    reads, moved = ValueReads(), []
    place = LA._common._placed_with
    monkeypatch.setattr(LA._common, "_placed_with", lambda *a: moved.append(reads.count) or place(*a))
    with lm.config(qr="cholesky"), reads:
        got = getattr(LA, op)(X)
    assert moved == [0]  # one transfer, before which nothing was read
    S = got if op == "svdvals" else got[1]
    assert_close(S[:8], torch.linalg.svdvals(D)[:8], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("side", ["left", "right", "both"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64])
def test_a_factor_cholesky_qr2_cannot_certify_is_redone(gen, side, dtype, monkeypatch, factored_route):
    """A side whose CholeskyQR2 certificate fails (condition number past u^-1/2 / 8), read with
    the core, is factorised again by the pass-by-pass route: singular values and vectors match
    float64 torch as the Householder route's do."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    cond = 1e6 if dtype != torch.float64 else 1e12
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), 8, dtype=torch.float64)

    def factor(rows):
        Q = torch.linalg.qr(randn(gen, rows, 8).to(wide))[0]
        W = torch.linalg.qr(randn(gen, 8, 8).to(wide))[0]
        return (Q * s.to(wide)) @ W

    def good(rows):
        spread = torch.diag(1 + torch.rand(8, generator=gen, dtype=torch.float64)).to(wide)
        return torch.linalg.qr(randn(gen, rows, 8).to(wide))[0] @ spread

    A = factor(400) if side in ("left", "both") else good(400)
    B = (factor(300) if side in ("right", "both") else good(300)).mH
    X = lm.lazy(A.to(dtype)) @ lm.lazy(B.to(dtype))
    ref = torch.linalg.svdvals(A.to(dtype).to(wide) @ B.to(dtype).to(wide))[:8]
    calls = []
    redo = LA._common._side_qr
    monkeypatch.setattr(LA._common, "_side_qr",
                        lambda *a, **k: calls.append(k.get("unchecked", False)) or redo(*a, **k))
    with lm.config(qr="cholesky"):
        U, S, Vh = LA.svd(X)
    assert calls.count(False) == (2 if side == "both" else 1)
    eps, k = torch.finfo(S.real.dtype).eps, S.shape[-1]  # values under the rounding floor are cut
    assert k >= 3 and (ref[k:].real <= 1e4 * eps * ref[0].real).all()
    assert (S.double() - ref[:k].real).abs().max() <= 50 * eps * ref[0].real
    eye = torch.eye(k, dtype=wide)
    assert (U.to(wide).mH @ U.to(wide) - eye).abs().max() <= 50 * eps * 20
    assert (Vh.to(wide) @ Vh.to(wide).mH - eye).abs().max() <= 50 * eps * 20
    factored_route.assert_forced(X)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_core_brought_to_the_host_answers_as_on_the_device(gen, dtype, monkeypatch):
    """Forcing the host placement on the CPU runs the one-copy transfer (core and floor in one
    buffer): svd, svdvals, rank, pinv and norms equal the answers of the core decomposed where
    it is, and match float64 torch."""
    X, D = _qk(gen, dtype=dtype)
    ops = {"svdvals": LA.svdvals, "rank": LA.matrix_rank, "nuc": lambda X: LA.matrix_norm(X, "nuc"),
           "svd": lambda X: LA.svd(X)}
    here = {k: f(X) for k, f in ops.items()}
    X.clear_cache()
    monkeypatch.setattr(LA._common, "_core_device", lambda t, op: torch.device("cpu", 0))
    moved = {k: f(X) for k, f in ops.items()}
    for k in ops:
        a, b = here[k], moved[k]
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v), k
    tol = 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-10
    wide = torch.complex128 if dtype.is_complex else torch.float64
    assert_close(moved["svdvals"][:8].double(), torch.linalg.svdvals(D.to(wide))[:8],
                 rtol=tol, atol=tol * moved["svdvals"][0].item())


def test_a_non_finite_factor_is_still_answered_nan_per_member(gen, monkeypatch):
    """The floor read with the core flags a non-finite member before LAPACK sees it: that
    member is NaN, the others are torch's (with the transfer forced on the CPU)."""
    monkeypatch.setattr(LA._common, "_core_device", lambda t, op: torch.device("cpu", 0))
    A, B = randn(gen, 3, 300, 6), randn(gen, 3, 6, 200)
    A[1, 5, 2] = float("inf")
    S = LA.svdvals(lm.lazy(A) @ lm.lazy(B))
    assert torch.isnan(S[1]).all() and torch.isfinite(S[[0, 2]]).all()
    ref = torch.linalg.svdvals(A[[0, 2]] @ B[[0, 2]])[..., :6]
    assert_close(S[[0, 2]], ref, rtol=1e-9, atol=1e-9)


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["svd", "svdvals", "matrix_rank"])
def test_cuda_factored_spectrum_matches_the_cpu(gen, op):
    """On CUDA the core goes to the host in one copy and the factors come back in one: the
    answers match the CPU route's."""
    E, Wq, Wk = (t.cuda() for t in (randn(gen, 3000, 96).double(), randn(gen, 96, 16).double(),
                                    randn(gen, 96, 16).double()))
    Y = lm.lazy(E) @ lm.lazy(Wq) @ lm.lazy(Wk).mT @ lm.lazy(E).mT
    ref = torch.linalg.svdvals((E @ Wq @ Wk.mT @ E.mT).cpu())
    got = getattr(LA, op)(Y)
    if op == "matrix_rank":
        assert int(got) == 16
    else:
        S = got if op == "svdvals" else got[1]
        assert S.device.type == "cuda"
        assert_close(S.cpu()[:16], ref[:16], rtol=1e-9, atol=1e-9)
        if op == "svd":
            U, S, Vh = got
            assert U.device.type == "cuda" and Vh.device.type == "cuda"
            assert_close((U * S[..., None, :]) @ Vh, E @ Wq @ Wk.mT @ E.mT, rtol=1e-9, atol=1e-9)
