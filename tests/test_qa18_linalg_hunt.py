"""det, slogdet, logdet, inv, solve and lstsq of random expressions against float64 eager torch,
every field (qa18, session 13): products, sums, cats, indexed, transposed, scaled and batched
(broadcast) expressions made square by a Gram product, a corner cut or a square leaf, and
non-square ones for lstsq. What this hunt found is fixed with its own tests
(test_qa18_solve_edges, test_qa18_return_types); these keep the rest so."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions
from test_qa18_solve_edges import squares

import lazymat as lm

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    finite = b[b.isfinite()].abs()  # (logdet of a negative det is NaN)
    scale = max(finite.max().item() if finite.numel() else 0.0, 1.0)
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)


def _conditioned(D: torch.Tensor, limit: float = 1e6) -> bool:
    """Whether every member of ``D`` is invertible with a condition number below ``limit``
    (else two correct routes may differ by more than the comparison allows)."""
    if not D.numel():
        return True
    cond = torch.linalg.cond(D)
    return not bool((cond.isnan() | (cond > limit)).any())


@SETTINGS
@given(pair=squares(), seed=st.integers(0, 999),
       op=st.sampled_from(["det", "slogdet", "logdet", "inv", "solve", "solve_right", "vector"]))
def test_determinants_inverses_and_solves_match_torch(pair, op, seed):
    """Property: each answer has torch's shape, dtype and values on the dense matrix (a det
    exactly 0 by structure against torch's rounding noise, and ill-conditioned solves, left out)."""
    X, D = pair
    D = D.detach()
    g = torch.Generator().manual_seed(seed)
    if op in ("det", "slogdet", "logdet"):
        if not _conditioned(D) or lm.linalg.structural_rank(X) < D.shape[-1]:
            return  # near singular: two correct routes' dets differ by ~cond * eps relatively (a
            # Gram matrix of entries ~3e3 and rank 4 of 5: 1.6e-6 against torch's 3.6e-6, hypothesis
            # seed 12); singular by structure: lazymat answers exactly 0 where torch rounds
        ours = getattr(lm.linalg, op)(X)
        expected = {"det": torch.linalg.det, "slogdet": torch.linalg.slogdet, "logdet": torch.logdet}[op](D)
        answers = [(o,) if isinstance(o, torch.Tensor) else tuple(o) for o in (ours, expected)]
        for a, b in zip(*answers, strict=True):
            _close(a, b, 1e-7)
        return
    if not _conditioned(D):
        return
    if op == "inv":
        ours = lm.linalg.inv(X)
        _close(ours.to_dense() if isinstance(ours, lm.Expr) else ours, torch.linalg.inv(D), 1e-6)
        return
    n = D.shape[-1]
    B = {"solve": (*D.shape[:-1], 2), "solve_right": (*D.shape[:-2], 2, n), "vector": (n,)}[op]
    B = torch.randn(*B, generator=g, dtype=torch.float64)
    left = op != "solve_right"
    _close(lm.linalg.solve(X, B, left=left), torch.linalg.solve(D, B, left=left), 1e-6)


@SETTINGS
@given(pair=expressions(), driver=st.sampled_from(["gels", "gelsy", "gelsd", "gelss"]), k=st.integers(1, 3),
       seed=st.integers(0, 999))
def test_lstsq_fields_match_torch(pair, driver, k, seed):
    """Property: every field of ``lstsq`` has the shape and dtype of torch's for the same driver;
    the solution, ``rank`` (gelsd, gelss), ``singular_values`` and ``residuals`` its values where
    torch's driver answers the minimum-norm problem (full column rank for gels and gelsy)."""
    X, D = pair
    D = D.detach()
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(*D.shape[:-1], k, generator=g, dtype=torch.float64)
    S = torch.linalg.svdvals(D) if D.numel() else None
    full_rank = S is not None and D.shape[-1] <= D.shape[-2] and bool((S[..., -1] > 1e-6 * S[..., 0]).all())
    if driver == "gels" and not full_rank:
        return  # torch's gels assumes full rank (its answer is arbitrary)
    ours, theirs = lm.linalg.lstsq(X, B, driver=driver), torch.linalg.lstsq(D, B, driver=driver)
    assert type(ours) is type(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    if S is None or not full_rank and driver == "gelsy" or float((S[..., 0] / S[..., -1]).max()) > 1e6:
        return  # gelsy's rank is a QR estimate; ill-conditioned: the drivers' cut-offs differ
    _close(ours.solution, theirs.solution, 1e-6)
    if driver in ("gelsd", "gelss"):
        _close(ours.singular_values, theirs.singular_values, 1e-9)
        assert torch.equal(ours.rank, theirs.rank)
    if ours.residuals.numel():
        _close(ours.residuals, theirs.residuals, 1e-6)
