"""The copies that views make are in the plan's memory, so ``explain`` reports what runs: a
narrowing cast floated outward widens the other leaves (``(A @ B).half() @ W`` runs as
``((A @ B) @ W.float()).half()``), a cast leaf or an index list copies its factor. The executor
forms every factor before the term's first product and frees each once read
(:func:`lazymat.plan.copied_factors`); they were counted as free views (0 B for
``A.double() @ B.double()``, which allocates both copies). Random products with casts: the
plan's peak equals the bytes torch allocates, counted storage by storage, and the value equals
dense torch."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated
from test_properties import chains

import lazymat as lm

from conftest import assert_close

NARROW = {torch.float64: [torch.float32], torch.float32: [torch.float16, torch.bfloat16]}


@st.composite
def cast_products(draw):
    """(lazy, dense): ``P.to(narrow) @ Q`` or ``Q @ P.to(narrow)``, maybe scaled, maybe with a
    list index or a cast leaf, ``P`` a random wide chain, ``Q`` a narrow one."""
    wide = draw(st.sampled_from([torch.float64, torch.float32]))
    narrow = draw(st.sampled_from(NARROW[wide]))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    m, k, n = (draw(st.integers(1, 6)) for _ in range(3))
    P, DP = draw(chains(m, k, batch, wide))
    Q, DQ = draw(chains(k, n, batch, narrow))
    X, D = P.to(narrow) @ Q, DP.to(narrow).to(wide) @ DQ.to(wide)
    if draw(st.booleans()):
        X, D = X.mT, D.mT
    if draw(st.booleans()):
        rows = draw(st.lists(st.integers(0, X.shape[-2] - 1), min_size=1, max_size=4))
        X, D = X[..., rows, :], D[..., rows, :]
    if draw(st.booleans()):
        X, D = 2.0 * X, 2.0 * D
    if draw(st.booleans()):  # a wide leaf cast to the narrow dtype: its copy
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))  # (reproducible draws)
        Y = torch.randn(X.shape[-1], 3, dtype=wide, generator=g)
        X, D = X @ lm.lazy(Y).to(narrow), D @ Y.to(narrow).to(wide)
    return X, D.to(narrow), narrow


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(cast_products())
def test_the_planned_peak_of_products_with_casts_is_what_torch_allocates(case):
    X, D, narrow = case
    X.clear_cache()
    planned = X.plan().peak_bytes
    with Allocated() as counter:
        out = X.to_dense()
    assert counter.peak == planned, (counter.peak, planned)
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[narrow]
    assert_close(out.double(), D.double(), rtol=tol, atol=tol * (1 + D.double().abs().max().item()))
