"""The compiled calls' host-side steps after their per-call trims (over17): ``_host_cut`` told how
many values a matrix has (its whole-prefix answer decided from a bound on the 2-norm, without the
norm) keeps the count of the tolerance rule computed one value at a time; ``_host_order`` (its
near ties found by C loops) orders eigenvalues as torch's stable sort of torch's own moduli does,
or declines (None) only at a near tie that is not a conjugate pair."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_small15_host_cut import rule, spectra

import lazymat as lm
from lazymat import linalg as LA


@settings(max_examples=400, deadline=None)
@given(spectra(), st.sampled_from([1.0, 1e-3, 1e-30, 1e-100, 1e100]))
def test_host_cut_with_a_count_is_the_rule(case, magnitude):
    values, width, least, relative, scale, f32 = case
    if not f32:  # float64 values: magnitudes past float32's (squares still in range: the rule's norm)
        values = [v * magnitude for v in values]
        least = least * magnitude
    kept = LA.compiled._host_cut(width, least, relative, scale, f32, len(values))
    assert kept(values) == rule(values, width, least, relative, scale, f32), case


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10), st.integers(0, 2**16), st.sampled_from([torch.float32, torch.float64]),
       st.sampled_from(["random", "repeated", "symmetric", "rotation"]))
def test_host_order_is_torchs_stable_order_by_modulus(n, seed, dtype, kind):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    if kind == "repeated":  # equal eigenvalues (and equal moduli of different values)
        diagonal = [1.0, -1.0, 2.0, 1.0, -2.0, 0.5, 1.0, 3.0, -3.0, 2.0][:n]
        M = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    elif kind == "symmetric":
        M = M + M.mT
    elif kind == "rotation":  # eigenvalues on the unit circle: every modulus ties
        M = torch.linalg.qr(M).Q
    vals = torch.linalg.eigvals(M.to(dtype))
    values = vals.tolist()
    moduli = list(map(abs, values))
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    got = LA.compiled._host_order(values, moduli, 4 * eps, tiny)
    want = torch.sort(vals.abs(), descending=True, stable=True).indices.tolist()
    if got is not None:
        assert got == want
    else:  # a near tie that is not a conjugate pair (nor +-a)
        m = sorted(moduli, reverse=True)
        assert any(a - b <= 4 * eps * (a + tiny) for a, b in zip(m, m[1:], strict=False))


def test_compiled_spectra_match_the_general_path():
    # the compiled call (fresh product) against the general path (the same product read twice:
    # the second call takes the general path) and eager float64, on a rank-deficient product
    g = torch.Generator().manual_seed(1)
    A, B, C = torch.randn(16, 8, generator=g), torch.randn(8, 8, generator=g), torch.randn(8, 16, generator=g)
    for op in (torch.linalg.svdvals, lambda x: torch.linalg.matrix_norm(x, "nuc"), torch.linalg.matrix_rank):
        x = lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ lm.lazy(C.clone())
        first, second = op(x), op(x)
        assert torch.equal(first, second)
        want = op(A.double() @ B.double() @ C.double())
        if want.dtype.is_floating_point:
            assert torch.allclose(first.double(), want, rtol=1e-4, atol=1e-4 * float(want.max()))
        else:
            assert torch.equal(first, want)
    x = lm.lazy(A[:8].clone()) @ lm.lazy(B.clone()) @ lm.lazy(C[:, :8].clone())
    first = torch.linalg.eigvals(x)
    second = torch.linalg.eigvals(x)
    assert torch.equal(first, second)
    want = torch.linalg.eigvals(A[:8].double() @ B.double() @ C[:, :8].double())
    assert torch.allclose(first.abs().double(), want.abs().sort(descending=True).values, rtol=1e-4)
    assert math.isfinite(float(first.abs().sum()))
