"""lazymat.compat.FactoredMatrix against TransformerLens's on random batched heads (qa14,
session 11): broadcasting factors, every property and method, random index keys (ints,
slices, steps, lists, masks, None, ...) and products, in float64. Nothing was found wrong;
this keeps it so. Where TransformerLens raises, lazymat raises a subclass of its class.

Left alone: a key whose index list is out of range in a dim that another part of the key
empties (``fm[3:, [5]]`` on 3 heads) is answered by TransformerLens (torch does not check an
index list into an empty tensor) and refused by lazymat (``IndexError``, as numpy)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.compat import FactoredMatrix


def _outcome(f):
    try:
        return f(), None
    except Exception as e:  # noqa: BLE001 (compared with TransformerLens's class below)
        return None, type(e)


def _same(ours, theirs, what, tol=1e-9):
    assert ours.shape == theirs.shape, what
    scale = max(1.0, float(theirs.abs().max())) if theirs.numel() else 1.0
    torch.testing.assert_close(ours.to(theirs.dtype), theirs, rtol=tol, atol=tol * scale, msg=what)


def _symmetric(v):  # eigenvalues in any order: power sums
    v = v.to(torch.complex128)
    return torch.stack([(v**p).sum(-1) for p in (1, 2, 3)], -1)


@st.composite
def keys(draw, shape):
    key = []
    for size in shape[: draw(st.integers(1, len(shape)))]:
        kind = draw(st.sampled_from(["int", "slice", "step", "list", "mask", "none", "ellipsis"]))
        if kind == "int":
            key.append(draw(st.integers(-size, size - 1)))
        elif kind == "slice":
            lo = draw(st.integers(0, size - 1))
            key.append(slice(lo, draw(st.integers(lo + 1, size))))
        elif kind == "step":
            key.append(slice(None, None, draw(st.integers(1, 2))))
        elif kind == "list":
            key.append(draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3)))
        elif kind == "mask":
            mask = draw(st.lists(st.booleans(), min_size=size, max_size=size))
            key.append(torch.tensor(mask) if any(mask) else slice(None))
        elif kind == "none":
            key.append(None)
        elif Ellipsis not in key:
            key.append(Ellipsis)
    return tuple(key)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), ba=st.lists(st.integers(1, 3), max_size=2),
       keep=st.lists(st.booleans(), min_size=2, max_size=2), dims=st.tuples(*[st.integers(1, 6)] * 3),
       square=st.booleans(), data=st.data())
def test_batched_heads_match_transformer_lens(seed, ba, keep, dims, square, data):
    TL = tl().FactoredMatrix
    l, m, r = dims
    r = l if square else r
    bb = [d if k else 1 for d, k in zip(ba, keep, strict=False)][data.draw(st.integers(0, len(ba))):]
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*ba, l, m, generator=gen, dtype=torch.float64)
    B = torch.randn(*bb, m, r, generator=gen, dtype=torch.float64)
    ours, theirs = FactoredMatrix(A, B), TL(A, B)
    assert ours.shape == theirs.shape and ours.ndim == theirs.ndim
    _same(ours.AB, theirs.AB, "AB")
    _same(ours.T.AB, theirs.T.AB, "T")
    _same(ours.norm(), theirs.norm(), "norm")
    _same(ours.S, theirs.S, "S")
    U, S, V = ours.svd()
    _same(U @ torch.diag_embed(S) @ V.mH, theirs.AB, "svd")
    for name, gram in (("collapse_l", lambda c: c.mH @ c), ("collapse_r", lambda c: c @ c.mH)):
        _same(gram(getattr(ours, name)()), gram(getattr(theirs, name)()), name)
    _same(ours.make_even().AB, theirs.AB, "make_even")
    k = data.draw(st.integers(1, 6))
    _same(ours.get_corner(k), theirs.get_corner(k), "get_corner")
    u = data.draw(st.integers(-ours.ndim - 1, ours.ndim))  # into the matrix dims: a new inner dim
    for name, read in (("BA", lambda fm: fm.BA), ("eigenvalues", lambda fm: _symmetric(fm.eigenvalues)),
                       (f"unsqueeze({u})", lambda fm: fm.unsqueeze(u).AB)):
        got, error = _outcome(lambda read=read: read(ours))
        want, want_error = _outcome(lambda read=read: read(theirs))
        if want_error is not None:
            assert error is not None and issubclass(error, want_error), name
        else:
            _same(got, want, name, tol=1e-7)
    key = data.draw(keys(tuple(ours.shape)))
    got, error = _outcome(lambda: ours[key].AB)
    want, want_error = _outcome(lambda: theirs[key].AB)
    if want_error is not None:
        assert error is not None and issubclass(error, want_error), key
    elif want.numel():  # (an emptied dim: see the module docstring)
        assert error is None, key
        _same(got, want, f"[{key}]")
    n = data.draw(st.integers(1, 4))
    W = torch.randn(*bb, r, n, generator=gen, dtype=torch.float64)
    _same((ours @ W).AB, (theirs @ W).AB, "fm @ W")
    W = torch.randn(n, l, generator=gen, dtype=torch.float64)
    _same((W @ ours).AB, (W @ theirs).AB, "W @ fm")
    v = torch.randn(r, generator=gen, dtype=torch.float64)
    _same(ours @ v, theirs @ v, "fm @ v")
    _same((2.5 * ours).AB, (2.5 * theirs).AB, "scale")
    bad = torch.randn(r + 1, 2, dtype=torch.float64)
    assert issubclass(_outcome(lambda: ours @ bad)[1], _outcome(lambda: theirs @ bad)[1])
