"""A cat of batched and unbatched parts keeps its batch when an index leaves only unbatched parts
(``cat([A (3, m, 1), b (m, 1)])[..., [1]]`` is ``b`` broadcast to ``(3, m, 1)``, as torch's value
is): the expression rebuilt from the canonical form (``rewrite.to_expr``, which the budget's
shared work and the narrowing casts read) has that shape and value, and evaluation under any
budget gives torch's answer (``to_dense(memory_budget=31)`` raised IndexError)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.rewrite import canonical, to_expr


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.sampled_from([(1,), (3,), (2, 1), (1, 2)]), m=st.integers(1, 3),
       widths=st.lists(st.integers(1, 2), min_size=2, max_size=3), data=st.data())
def test_an_index_that_leaves_only_unbatched_parts_keeps_the_batch(batch, m, widths, data):
    g = torch.Generator().manual_seed(sum(widths) + m)
    batched = [data.draw(st.booleans()) for _ in widths]
    batched[0] = True  # one batched part at least
    parts = [torch.randn(*(batch if b else ()), m, w, generator=g, dtype=torch.float64)
             for b, w in zip(batched, widths, strict=True)]
    X = lm.cat([lm.lazy(p) for p in parts], dim=-1)
    D = torch.cat([p.expand(*batch, m, p.shape[-1]) for p in parts], -1)
    columns = data.draw(st.lists(st.integers(0, D.shape[-1] - 1), min_size=1, max_size=3))
    X, D = X[..., columns], D[..., columns]
    rebuilt = to_expr(canonical(X))
    assert tuple(rebuilt.shape) == tuple(D.shape)
    assert torch.equal(rebuilt.to_dense(), D)
    budget = data.draw(st.integers(8, 8 * D.numel() + 64))
    try:
        out = X.to_dense(memory_budget=budget)
    except lm.BudgetTooSmall:
        return
    assert torch.equal(out, D)


def test_the_reported_case():
    a, b = torch.randn(1, 1, 1, dtype=torch.float64), torch.randn(1, 1, dtype=torch.float64)
    X = lm.cat([lm.lazy(a), lm.lazy(b)], dim=-1)[:, :, [1, 1]]
    assert torch.equal(X.to_dense(memory_budget=31), torch.cat([a, b[None]], -1)[:, :, [1, 1]])
