"""A demanding user's calls, session 4: each class of wrong answer found, as a property against
eager torch on the dense tensor (float64, complex128), plus the example that exposed it."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

SETTINGS = settings(max_examples=60, deadline=None)


# ---- a non-finite batch member poisons only itself ------------------------------------------
# Found: with an inf or nan in one matrix of a batch, svdvals, svd, the nuclear and spectral
# norms, eigvals and eig answered NaN for EVERY member of the batch (the finiteness check was
# one flag for the whole batch), on the dense route of small matrices and the factored route.
# Each member is now checked on its own: non-finite members are NaN (as torch on CUDA), the
# others are torch's answer.

def _spectra(X):
    """The spectral answers of ``X``, each with the batch leading: name -> tensor ``(b, ...)``."""
    out = {"svdvals": lm.linalg.svdvals(X), "svd S": lm.linalg.svd(X)[1],
           "nuc": lm.linalg.matrix_norm(X, "nuc")[:, None], "2": lm.linalg.matrix_norm(X, 2)[:, None]}
    if X.shape[-1] == X.shape[-2]:
        out["eigvals"] = lm.linalg.eigvals(X).abs()
        out["eig"] = lm.linalg.eig(X)[0].abs()
    return out


def _dense_spectra(D, k):
    out = {"svdvals": torch.linalg.svdvals(D)[..., :k], "svd S": torch.linalg.svdvals(D)[..., :k],
           "nuc": torch.linalg.matrix_norm(D, "nuc")[:, None], "2": torch.linalg.matrix_norm(D, 2)[:, None]}
    if D.shape[-1] == D.shape[-2]:
        ev = torch.linalg.eigvals(D).abs().sort(-1, descending=True).values[..., :k]
        out["eigvals"] = out["eig"] = ev
    return out


@SETTINGS
@given(m=st.sampled_from([3, 6, 40, 300]), n=st.sampled_from([3, 5, 40, 300]), r=st.integers(1, 4),
       batch=st.integers(2, 3), bad_member=st.integers(0, 2), in_left=st.booleans(),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
       dtype=st.sampled_from([torch.float64, torch.complex128]), seed=st.integers(0, 2**16))
def test_a_non_finite_member_leaves_the_others_finite(m, n, r, batch, bad_member, in_left, value, dtype,
                                                      seed):
    g = torch.Generator().manual_seed(seed)
    if m == 300 and n != 300:
        n = m  # a square case on the factored route, for eigvals
    A = torch.randn(batch, m, r, generator=g, dtype=dtype)
    B = torch.randn(batch, r, n, generator=g, dtype=dtype)
    bad_member %= batch
    (A if in_left else B)[bad_member, 0, 0] = value
    got = _spectra(lm.lazy(A) @ lm.lazy(B))
    good = [i for i in range(batch) if i != bad_member]
    want = _dense_spectra((A @ B)[good], min(m, n, r))
    for name, values in got.items():
        assert bool(torch.isnan(values[bad_member]).all()), name
        assert torch.allclose(values[good], want[name], rtol=1e-8, atol=1e-8), name


def test_nan_in_one_matrix_of_a_small_batch():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    B = torch.randn(3, 5, generator=g, dtype=torch.float64)
    A[0, 0, 0] = float("nan")
    S = lm.linalg.svdvals(lm.lazy(A) @ lm.lazy(B))
    assert bool(torch.isnan(S[0]).all())
    assert torch.allclose(S[1], torch.linalg.svdvals(A[1] @ B)[:3])
    nuc = lm.linalg.matrix_norm(lm.lazy(A) @ lm.lazy(B), "nuc")
    assert torch.isnan(nuc[0]) and torch.allclose(nuc[1], torch.linalg.matrix_norm(A[1] @ B, "nuc"))
