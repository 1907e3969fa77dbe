"""det/slogdet/logdet of a lone complex square segment scaled by a coefficient, with inf or NaN
entries, against torch's on the formed matrix (qa19, session 14). ``c * (inf + 0j)`` has a NaN
part (``inf * 0``), so torch's LU of the formed ``c S`` answers NaN where ``c^n det S`` gave a
number, inf or a finite ``logabsdet``: lazymat now scales the segment before its LU."""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENTRIES = [complex(math.inf, 0), complex(0, math.inf), complex(-math.inf, math.inf), complex(math.nan, 0),
           complex(1, math.nan)]
COEFFICIENTS = [1.0, 2.0, -1.0, 0.0, 2j, 0.5 + 0.5j, -3 - 1j]


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal NaN pattern (in each part) and close elsewhere."""
    parts = (a.real, a.imag, b.real, b.imag) if a.is_complex() else (a, a, b, b)
    nan = [p.isnan() for p in parts]
    assert torch.equal(nan[0], nan[2]) and torch.equal(nan[1], nan[3]), (a, b)
    torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(n=st.integers(2, 5), batch=st.sampled_from([(), (2,)]),
       bad=st.lists(st.sampled_from(ENTRIES), min_size=1, max_size=2), c=st.sampled_from(COEFFICIENTS),
       tensor_c=st.booleans(), real=st.sampled_from([False, False, True]), seed=st.integers(0, 999))
def test_scaled_lone_segment_det_matches_torch_on_the_formed_matrix(n, batch, bad, c, tensor_c, real, seed):
    """Property: ``det``, ``slogdet`` and ``logdet`` of ``c * A`` (one square segment, a leaf) are
    torch's on the matrix lazymat forms for ``c * A``, NaN parts included, for complex and real
    ``A`` with inf/NaN entries (real ones take the real part of the entries and of ``c``)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if real else torch.complex128
    A = torch.randn(*batch, n, n, generator=g, dtype=dtype)
    for v in bad:
        i = int(torch.randint(0, A.numel(), (1,), generator=g))
        A.view(-1)[i] = v.real if real else v
    c = c.real if real and isinstance(c, complex) else c
    scale = torch.tensor(c, dtype=dtype) if tensor_c else c
    X = scale * lm.lazy(A)
    D = X.to_dense()
    _same(lm.linalg.det(X), torch.linalg.det(D))
    for ours, theirs in zip(lm.linalg.slogdet(X), torch.linalg.slogdet(D), strict=True):
        _same(ours, theirs)
    _same(lm.linalg.logdet(X), torch.logdet(D))


def test_explain_counts_the_scaled_copy():
    """``explain`` shows the scaling step, and the bytes torch allocates for the det (the scaled
    copy, the LU's copy, pivots and info, the answer) stay within the reported peak; a real
    segment, whose ``c^n det S`` is torch's, is not scaled."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 16, 16, generator=g, dtype=torch.complex128)
    X = (0.5 + 0.5j) * lm.lazy(A)
    report = lm.explain(X, "det")
    assert any(row.op.startswith("c * segment") for row in report.rows)
    with Allocated() as counted:
        lm.linalg.det(X)
    peak = report.planned.peak_bytes
    assert 3 * 16 * 16 * 16 <= counted.peak <= peak, (counted.peak, peak)  # at least the scaled copy
    real = lm.explain(2.0 * lm.lazy(A.real.contiguous()), "det")
    assert not any(row.op.startswith("c * segment") for row in real.rows)
