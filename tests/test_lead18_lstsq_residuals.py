"""lstsq's residuals (``m > n``: gels, and gelsd/gelss at rank n) are in explain's route and its
peak: explain showed 48 KB for a 200x5 X with 400 columns of B where the call allocated 1.95 MB
(qa24). The residuals now take two ``m x k`` arrays (the fit and its difference with B), not
three, and explain adds the fit and the residuals' rows."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(1, 8), st.integers(1, 6), st.integers(1, 60),
       st.sampled_from([(), (2,)]), st.sampled_from(["gels", "gelsd", "gelss"]), st.integers(0, 99))
def test_residuals_are_torchs_and_within_explains_peak(m_extra, n, r, k, batch, driver, seed):
    g = torch.Generator().manual_seed(seed)
    m = n + m_extra
    r = min(r, n)
    A = torch.randn(*batch, m, r, generator=g, dtype=torch.float64)
    C = torch.randn(r, n, generator=g, dtype=torch.float64)
    B = torch.randn(*batch, m, k, generator=g, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(C)
    with Allocated() as held:
        out = lm.linalg.lstsq(X, B, driver=driver)
    answer = sum(t.numel() * t.element_size() for t in out if isinstance(t, torch.Tensor))
    assert held.peak - answer <= lm.explain(X, "lstsq", B=B, driver=driver).planned.peak_bytes
    if r == n:  # full rank: torch's gels residuals on the dense X
        expected = torch.linalg.lstsq(A @ C, B, driver="gels").residuals
        torch.testing.assert_close(out.residuals, expected, rtol=1e-8, atol=1e-8 * float(B.abs().max()) ** 2)
