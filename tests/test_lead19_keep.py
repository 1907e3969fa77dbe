"""``Expr.keep``/``Expr.kept``: an application's answers kept with an expression's caches (what
``lazymat.compat`` keeps its ``svd()`` in, instead of the engine's private cache), dropped by
``clear_cache`` on that node or on any expression above it."""

import pytest
import torch

import lazymat as lm


def test_kept_until_cleared():
    A, B = torch.randn(5, 3), torch.randn(3, 4)
    X = lm.lazy(A) @ lm.lazy(B)
    assert X.kept("answer") is None and X.kept("answer", 7) == 7
    X.keep("answer", (1, 2))
    assert X.kept("answer") == (1, 2)
    assert lm.lazy(A).kept("answer") is None  # on that node only
    lm.linalg.svdvals(X)  # the engine's own caches beside it
    assert X.kept("answer") == (1, 2)
    (X.mT @ X).clear_cache()  # an expression above it clears the nodes below
    assert X.kept("answer") is None


@pytest.mark.parametrize("key", [["a"], {"a": 1}, ("a", [1])])
def test_an_unhashable_key_is_refused_with_its_type(key):
    x = lm.lazy(torch.randn(2, 2))
    for call in (lambda: x.keep(key, 1), lambda: x.kept(key)):
        with pytest.raises(TypeError, match=f"must be hashable.*{type(key).__name__}"):
            call()
