"""Planning a long chain is near-linear (qa16, session 12).

Found: the first evaluation of ``lm.linalg.matrix_power(X, 1000)`` took ~0.3-1 s, its
``explain()`` 1-6 s: ``plan._repeated_spans`` (and the memory walk and ``explain`` after it)
keyed every span of the chain by the tuple of its views, O(n^2) view hashes (1.5M for n = 1000).
Now spans are counted by a hash of their views' ids and only the spans of a kept length are
sliced. The counts here are deterministic (no timing)."""

from unittest import mock

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import plan as P
from lazymat import rewrite


def _count_hashes(call):
    calls = [0]
    original = rewrite.View.__hash__

    def counted(self):
        calls[0] += 1
        return original(self)

    rewrite.View.__hash__ = counted
    try:
        out = call()
    finally:
        rewrite.View.__hash__ = original
    return out, calls[0]


def test_a_long_power_plans_with_view_hashes_linear_in_its_length():
    a = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / 3
    counts = {}
    for n in (100, 1000):
        x = lm.lazy(a.clone())
        got, counts[n] = _count_hashes(lambda x=x, n=n: lm.linalg.matrix_power(x, n).to_dense())
        torch.testing.assert_close(got, torch.linalg.matrix_power(a, n), rtol=1e-10, atol=1e-300)
        _, hashes = _count_hashes(lambda x=x, n=n: lm.linalg.matrix_power(x, n).explain())
        assert hashes < 60 * n, (n, hashes)
    assert counts[1000] < 60 * 1000 and counts[1000] < 15 * counts[100], counts  # was 1.5M (n^2)


def _reference_repeated_spans(c, terms=None):
    """The spans formed more than once, keyed by their views directly (the O(n^2) definition)."""
    count = {}
    stack, seen = [c], set()
    while stack:
        canon = stack.pop()
        plans = terms if canon is c and terms is not None else P.plan_canon(canon).terms
        for t, p in zip(canon.terms, plans, strict=True):
            spans = [(i, i) for i in range(len(t.factors))]
            for a, b in p.program:
                spans.append((spans[a][0], spans[b][1]))
                key = t.factors[spans[-1][0] : spans[-1][1] + 1]
                count[key] = count.get(key, 0) + 1
            for v in t.factors:
                if isinstance(v.base, rewrite.Nested) and id(v.base) not in seen:
                    seen.add(id(v.base))
                    stack.extend(v.base.parts)
    return frozenset(k for k, n in count.items() if n > 1)


@settings(max_examples=60, deadline=None)
@given(terms=st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=7), min_size=1, max_size=3),
       transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_repeated_spans_and_values_match_the_direct_definition(terms, transposed, seed):
    g = torch.Generator().manual_seed(seed)
    dense = [torch.randn(4, 4, generator=g, dtype=torch.float64) / 2 for _ in range(3)]
    leaves = [lm.lazy(d) for d in dense]
    expr, want = None, torch.zeros(4, 4, dtype=torch.float64)
    for k, picks in enumerate(terms):
        prod, dprod = leaves[picks[0]], dense[picks[0]]
        for i in picks[1:]:
            prod, dprod = prod @ (leaves[i].mT if transposed and i == 1 else leaves[i]), \
                dprod @ (dense[i].mT if transposed and i == 1 else dense[i])
        expr = prod if expr is None else expr + (k + 1) * prod
        want = want + (1 if k == 0 else k + 1) * dprod
    c = rewrite.canonical(expr)
    spans = _reference_repeated_spans(c)
    assert P._repeated_spans(c) == spans
    with mock.patch.object(P, "_DIRECT_SPANS", 0):  # the hashed count of long chains, on these short ones
        assert P._repeated_spans(c) == spans
    torch.testing.assert_close(expr.to_dense(), want, rtol=1e-10, atol=1e-12)
