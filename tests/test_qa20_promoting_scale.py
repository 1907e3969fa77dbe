"""A real expression scaled by a complex number (``A * 1j``, or a complex 0-dim tensor) is
complex; used as a factor of a product with a complex factor, it was one dtype at build time
and two at run time: the canonical form folded ``1j`` into the coefficient and left ``A``'s
view real, so ``torch.matmul`` refused the real and the complex operands (qa20, session 15;
found through ``lazymat.compat.FactoredMatrix * 1j``). Every view of a promoting scale now reads
its leaf in the wider dtype. Compared with eager torch in complex128."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), dims=st.lists(st.integers(1, 4), min_size=3, max_size=5),
       real=st.lists(st.booleans(), min_size=4, max_size=4), where=st.integers(0, 3),
       as_tensor=st.booleans(), added=st.booleans())
def test_a_complex_scale_of_a_real_factor_times_complex_factors(seed, dims, real, where, as_tensor, added):
    g = torch.Generator().manual_seed(seed)
    n = len(dims) - 1
    real = real[:n]
    real[where % n] = True  # at least one real factor, which the complex scale promotes
    dense = []
    for i in range(n):
        x = torch.randn(dims[i], dims[i + 1], generator=g, dtype=torch.float64)
        if not real[i]:
            x = torch.complex(x, torch.randn(dims[i], dims[i + 1], generator=g, dtype=torch.float64))
        dense.append(x)
    k = complex(0.5, -1.5)
    coef = torch.tensor(k, dtype=torch.complex128) if as_tensor else k
    promoted = [lm.lazy(x) * coef if i == where % n else lm.lazy(x).to(torch.complex128)
                for i, x in enumerate(dense)]  # (a cast of a complex leaf is the leaf itself)
    expr = promoted[0]
    for f in promoted[1:]:
        expr = expr @ f
    want = dense[0].to(torch.complex128) * (k if where % n == 0 else 1)
    for i, x in enumerate(dense[1:], start=1):
        want = want @ (x.to(torch.complex128) * (k if i == where % n else 1))
    if added:  # a sum of the promoted product and a complex one
        other = torch.randn(dims[0], dims[-1], generator=g, dtype=torch.complex128)
        expr, want = expr + lm.lazy(other), want + other
    assert expr.dtype == torch.complex128
    got = expr.to_dense()
    assert got.dtype == torch.complex128
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    ours, theirs = lm.linalg.svdvals(expr), torch.linalg.svdvals(want)  # (ours: the nonzero ones)
    torch.testing.assert_close(ours, theirs[: ours.shape[-1]], rtol=1e-8, atol=1e-8)
    assert float(theirs[ours.shape[-1]:].abs().sum()) < 1e-8
