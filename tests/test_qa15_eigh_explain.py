"""qa15: explain's eigvalsh/eigh steps after the SVD are what runs, on Grams of random
expressions (sums, slices, cats, casts, batches): GEMM FLOPs counted at the ATen level beyond
those of the SVD equal the explained rows beyond the SVD's (fewer where the numerical rank is
below the inner width explain assumes), and the answer is float64 torch's."""

import contextlib

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions
from test_qa_costs import Executed, gemm_flops

import lazymat as lm
from lazymat import linalg as LA
from lazymat.core import factor

from conftest import forced_route

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(expressions(), st.sampled_from(["eigvalsh", "eigh"]), st.booleans(), st.booleans())
def test_what_runs_is_the_route_explained(pair, op, outer, factored):
    Y, D = pair
    X, G = (Y @ Y.mH, D @ D.mH) if outer else (Y.mH @ Y, D.mH @ D)
    with forced_route("factored", X) if factored else contextlib.nullcontext():
        runs = {}
        for name in ("svd", op):  # each from cold caches (none kept on the leaves)
            fresh = Y @ Y.mH if outer else Y.mH @ Y
            fresh.clear_cache()
            report = lm.explain(fresh, name)
            with Executed() as ran:
                out = getattr(LA, name)(fresh)
            runs[name] = (ran.flops, gemm_flops(report))
    w = out[0] if op == "eigh" else out
    # the steps after the SVD (the SVD's own route is test_explain_read_off's): explain costs them
    # k = min(n, r) wide (r the inner width); the numerical rank, known as it runs, is at most k
    after_ran, after_explained = runs[op][0] - runs["svd"][0], runs[op][1] - runs["svd"][1]
    k = min(X.shape[-1], factor(X)[0].shape[-1])
    if w.shape[-1] == k:
        assert after_ran == after_explained, (runs, str(report))
    else:
        assert w.shape[-1] < k and after_ran < after_explained, (runs, str(report))
    expected = torch.linalg.eigvalsh(G)
    scale = 1 + (expected.abs().max().item() if expected.numel() else 0)
    assert torch.allclose(LA.eigvalsh(X, full=True).double(), expected, atol=1e-8 * scale)
    if op == "eigh":  # the pairs rebuild the Gram
        Q = out[1].to(G.dtype)
        assert torch.allclose((Q * w.to(Q.dtype)[..., None, :]) @ Q.mH, G, atol=1e-8 * scale)
