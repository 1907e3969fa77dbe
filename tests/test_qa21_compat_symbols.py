"""lazymat.compat.FactoredMatrix over shape-only ``lm.symbol`` factors (qa21, session 16).

The same matrix is built twice, over symbols and over float64 tensors of the same shapes, and
put through the same operation. Whatever needs no values must give what the tensor-backed
matrix gives (shapes, ``mdim``, the factors' shapes); whatever needs values must raise
``lm.SymbolHasNoData`` naming the symbol and the operation. Found and fixed: ``A``, ``B``,
``pair``, ``AB``, ``BA`` and indexing or ``unsqueeze`` of factors with fewer or size-1 leading
dims formed the factors (a bare "symbol has no data"); ``svd``, ``norm``, ``get_corner``, ``@``
a vector and ``composition_scores`` failed inside the engine without naming the operation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.compat import FactoredMatrix, composition_scores
from lazymat.compat.transformer_lens import _broadcast_lazily


@st.composite
def _factor_shapes(draw):
    """Shapes of ``A (..., l, m)`` and ``B (..., m, r)`` whose leading dims broadcast, either one
    possibly with fewer dims or size-1 dims."""
    batch = draw(st.lists(st.integers(1, 3), max_size=2))
    l, m, r = (draw(st.integers(1, 4)) for _ in range(3))

    def leading():
        cut = draw(st.integers(0, len(batch)))
        return [1 if draw(st.booleans()) else n for n in batch[cut:]]

    return (*leading(), l, m), (*leading(), m, r)


def _pair(shapes):
    sa, sb = shapes
    symbols = FactoredMatrix(lm.symbol("A", sa, torch.float64), lm.symbol("B", sb, torch.float64))
    gen = torch.Generator().manual_seed(0)
    tensors = FactoredMatrix(torch.randn(sa, generator=gen, dtype=torch.float64),
                             torch.randn(sb, generator=gen, dtype=torch.float64))
    return symbols, tensors


def _outcome(f):
    try:
        return f()
    except Exception as e:  # noqa: BLE001 (the kinds are compared)
        return e


def _same_or_refused(ours, theirs, operation):
    """``ours`` (over symbols) is what ``theirs`` (over tensors) is, shape for shape, or a
    refusal naming the symbol and ``operation``."""
    if isinstance(theirs, Exception):
        assert isinstance(ours, (type(theirs), lm.SymbolHasNoData)), (ours, theirs)
        return
    if isinstance(ours, lm.SymbolHasNoData):
        assert "symbol 'A'" in str(ours) or "symbol 'B'" in str(ours), ours
        assert operation in str(ours), (operation, ours)
        return
    assert not isinstance(ours, Exception), (ours, theirs)
    assert isinstance(ours, FactoredMatrix) and ours.shape == theirs.shape and ours.mdim == theirs.mdim
    for name in ("A", "B", "AB"):  # lazy over symbols, of the tensors' shapes
        lazy, formed = getattr(ours, name), getattr(theirs, name)
        assert lm.is_lazy(lazy) and lazy.shape == formed.shape, (name, lazy.shape, formed.shape)
    assert lm.explain(ours.expr).shape == tuple(theirs.shape)  # costs without data


_ENTRY = st.one_of(
    st.integers(-4, 3),
    st.builds(slice, st.none() | st.integers(-4, 4), st.none() | st.integers(-4, 4),
              st.none() | st.integers(1, 3)),
    st.none(),
    st.just(Ellipsis),
    st.lists(st.integers(-2, 1), min_size=1, max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(shapes=_factor_shapes(), key=st.lists(_ENTRY, max_size=4))
def test_indexing_over_symbols_gives_the_tensor_shapes_or_names_the_refusal(shapes, key):
    symbols, tensors = _pair(shapes)
    key = tuple(key)
    _same_or_refused(_outcome(lambda: symbols[key]), _outcome(lambda: tensors[key]), "indexing")


@settings(max_examples=80, deadline=None)
@given(shapes=_factor_shapes(), k=st.integers(-6, 5))
def test_unsqueeze_over_symbols_gives_the_tensor_shapes_or_names_the_refusal(shapes, k):
    symbols, tensors = _pair(shapes)
    _same_or_refused(_outcome(lambda: symbols.unsqueeze(k)), _outcome(lambda: tensors.unsqueeze(k)),
                     f"unsqueeze({k})")


@settings(max_examples=60, deadline=None)
@given(shapes=_factor_shapes(), n=st.integers(1, 3))
def test_transpose_products_and_factors_need_no_data(shapes, n):
    symbols, tensors = _pair(shapes)
    _same_or_refused(symbols.T, tensors.T, "")
    _same_or_refused(symbols * 2.0, tensors * 2.0, "")
    W = torch.ones(symbols.rdim, n, dtype=torch.float64)
    _same_or_refused(symbols @ W, tensors @ W, "")
    _same_or_refused(symbols @ lm.symbol("W", W.shape, torch.float64), tensors @ W, "")
    _same_or_refused(W.mT @ symbols.T, W.mT @ tensors.T, "")
    _same_or_refused(symbols @ symbols.T, tensors @ tensors.T, "")
    assert [x.shape for x in symbols.pair] == [x.shape for x in tensors.pair]
    if symbols.ldim == symbols.rdim:
        assert lm.is_lazy(symbols.BA) and symbols.BA.shape == tensors.BA.shape


_NEEDS_VALUES = {  # what is asked: (the operation the refusal names, how it is asked)
    "svd": ("svd()", lambda fm: fm.svd()),
    "S": ("svd()", lambda fm: fm.S),
    "norm": ("norm()", lambda fm: fm.norm()),
    "eigenvalues": ("eigenvalues", lambda fm: fm.eigenvalues),
    "make_even": ("make_even()", lambda fm: fm.make_even()),
    "collapse_l": ("collapse_l()", lambda fm: fm.collapse_l()),
    "collapse_r": ("collapse_r()", lambda fm: fm.collapse_r()),
    "get_corner": ("get_corner(2)", lambda fm: fm.get_corner(2)),
    "matvec": ("@ vector", lambda fm: fm @ torch.ones(fm.rdim, dtype=torch.float64)),
    "vecmat": ("vector @", lambda fm: torch.ones(fm.ldim, dtype=torch.float64) @ fm),
    "composition_scores": ("composition_scores", lambda fm: composition_scores(fm, fm.T)),
}


@settings(max_examples=40, deadline=None)
@given(shapes=_factor_shapes(), asked=st.sampled_from(sorted(_NEEDS_VALUES)))
def test_what_needs_values_names_the_symbol_and_the_operation(shapes, asked):
    symbols, tensors = _pair(shapes)
    operation, run = _NEEDS_VALUES[asked]
    expected = _outcome(lambda: run(tensors))
    if isinstance(expected, Exception):  # a shape error (eigenvalues of a non-square matrix) comes first
        with pytest.raises(type(expected)):
            run(symbols)
        return
    with pytest.raises(lm.SymbolHasNoData, match=r"symbol '[AB]' of shape .* has no data") as refused:
        run(symbols)
    assert operation in str(refused.value), (operation, refused.value)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 3), max_size=2), batch=st.lists(st.integers(0, 3), max_size=3))
def test_lazy_broadcast_is_torch_broadcast_to(shape, batch):
    """The lazy broadcast of a factor over symbols, checked on data against torch.broadcast_to."""
    t = torch.randn(*shape, 2, 3, dtype=torch.float64)
    try:
        expected = t.broadcast_to(*batch, 2, 3)
    except RuntimeError:
        return
    got = _broadcast_lazily(lm.lazy(t), tuple(batch))
    assert got.shape == expected.shape
    torch.testing.assert_close(got.to_dense(), expected, rtol=0, atol=0)
