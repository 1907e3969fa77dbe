"""Torch's advanced indexing on lazy expressions: several index lists or integer tensors (any
shape, negative entries, broadcast together), k-D boolean masks, ints, slices, new axes and an
ellipsis in one key, on leaves, products, sums and transposes, and keys on keys; values, shapes
and dtypes as torch's on the dense float64 tensor, out-of-range entries refused like torch."""

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close


def _expression(data, gen):
    """A random lazy expression and its dense value: a leaf, a product, a sum, a transpose or a
    cat (an index goes into its parts)."""
    batch = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3), label="batch"))
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    kind = data.draw(st.sampled_from(["leaf", "product", "sum", "transpose", "cat"]), label="kind")
    a = torch.randn(*batch, m, k, generator=gen, dtype=torch.float64)
    b = torch.randn(k, n, generator=gen, dtype=torch.float64)
    c = torch.randn(*batch[1:], m, n, generator=gen, dtype=torch.float64)
    if kind == "leaf":
        return lm.lazy(c.expand(*batch, m, n).clone()), c.expand(*batch, m, n)
    if kind == "product":
        return lm.lazy(a) @ lm.lazy(b), a @ b
    if kind == "sum":
        return lm.lazy(a) @ lm.lazy(b) + lm.lazy(c), a @ b + c
    if kind == "cat":
        dense = torch.cat([a @ b, c.expand(*batch, m, n)], -1)
        return lm.cat([lm.lazy(a) @ lm.lazy(b), lm.lazy(c)], dim=-1), dense
    return (lm.lazy(a) @ lm.lazy(b)).mT, (a @ b).mT


def _array(data, size: int, shape: tuple):
    """An index array for a dim of ``size``: in range (negative entries too), now and then out of
    it; as a list, a nested list or a tensor."""
    lo, hi = (-size, size - 1) if size else (-1, 1)
    if data.draw(st.integers(0, 9)) == 0:
        lo, hi = lo - 2, hi + 2
    values = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=int(np.prod(shape)),
                                         max_size=int(np.prod(shape))))).reshape(shape)
    form = data.draw(st.sampled_from(["list", "tensor"]))
    return values.tolist() if form == "list" and values.ndim else torch.tensor(values, dtype=torch.long)


def _key(data, shape: tuple) -> tuple:
    """A key over ``shape`` with two or three index arrays (broadcastable shapes), a mask now and
    then, and ints, slices, None and an ellipsis elsewhere."""
    nd = len(shape)
    out, dim = [], 0
    arrays = data.draw(st.integers(2, 3), label="arrays")
    pair = tuple(data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=2), label="pair"))
    on_batch = nd - 2 >= 2 and data.draw(st.booleans(), label="batch only")  # a lazy result (a Gather)
    advanced = set(data.draw(st.permutations(range(nd - 2 if on_batch else nd)))[:arrays])
    ellipsis = data.draw(st.booleans())
    while dim < nd:
        if data.draw(st.integers(0, 6)) == 0 and dim < nd - 2:
            out.append(None)
        if dim in advanced:
            if data.draw(st.integers(0, 5)) == 0:  # a mask over this dim
                mask = data.draw(st.lists(st.booleans(), min_size=shape[dim], max_size=shape[dim]))
                out.append(torch.tensor(mask, dtype=torch.bool))
            else:  # an array broadcasting to ``pair``
                own = tuple(1 if data.draw(st.booleans()) else s for s in pair)
                own = own[data.draw(st.integers(0, len(own))):]
                out.append(_array(data, shape[dim], own))
        elif ellipsis and dim > 0 and all(d not in advanced for d in range(dim, nd)):
            out.append(Ellipsis)
            break
        else:
            choice = data.draw(st.sampled_from(["int", "slice", "step"])) if shape[dim] else "slice"
            if choice == "int":
                out.append(data.draw(st.integers(-shape[dim], shape[dim] - 1)))
            elif choice == "slice":
                out.append(slice(data.draw(st.integers(0, shape[dim])), None))
            else:
                out.append(slice(None, None, 2))
        dim += 1
    return tuple(out)


def _same(got, expected, key) -> None:
    if lm.is_lazy(got):
        assert tuple(got.shape) == tuple(expected.shape), key
        got = got.to_dense()
    assert isinstance(got, torch.Tensor)
    assert got.dtype == expected.dtype and got.shape == expected.shape, (key, got.shape, expected.shape)
    assert_close(got, expected)


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_paired_keys_index_like_torch(data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, dense = _expression(data, gen)
    for _ in range(data.draw(st.integers(1, 2), label="keys")):
        key = _key(data, tuple(dense.shape))
        note(f"{tuple(dense.shape)}[{key}]")
        try:
            expected = dense[key]
        except IndexError as e:
            with pytest.raises(IndexError) as ours:
                x[key]
            words = str(e).split()  # "index 5 is out of bounds for dimension 0 with size 3"
            if "out of bounds for dimension" in str(e) and words[1].lstrip("-").isdigit():
                bad, size = words[1], words[-1]  # (torch numbers the dim after new axes and ints)
                assert f"index {bad} is out of range for dim " in str(ours.value)
                assert f" of size {size} (shape {tuple(dense.shape)})" in str(ours.value)
            return
        got = x[key]
        _same(got, expected, key)
        if not lm.is_lazy(got) or expected.ndim < 2:
            return
        x, dense = got, expected  # a key on the key's result


def test_the_briefs_keys():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    X = lm.lazy(x)
    for key in [([0, 1], [1, 2]), (slice(None), [0, 1], [1, 2]), (..., [0, 1], slice(None), [1, 2]),
                ([[0], [1]], [1, 2]), (torch.tensor([[0, 1]]),), ([0, -1], None, [[1], [-2]]),
                (torch.ones(3, 4, dtype=torch.bool), [1]), (0, [0, 1], slice(None), [1, 2])]:
        _same(X[key], x[key], key)
    assert lm.is_lazy(X[[0, 1], [1, 2]]) and lm.is_lazy(X[[[0], [1]], [1, 2]])


def test_new_axis_repeated_is_an_expand():
    """``X[None][[0, 0]]`` is a view of ``X`` (stride 0), not a copy: explain lists no step."""
    t = torch.randn(5, 6, dtype=torch.float64)
    y = lm.lazy(t, name="X")[None][[0, 0]]
    _same(y, t[None][[0, 0]], "[None][[0, 0]]")
    report = lm.explain(y)
    assert report.rows == [] and report.planned.peak_bytes == 0
    assert "copy" not in str(report)
    assert y.to_dense().stride()[0] == 0


def test_a_gather_runs_under_a_budget_through_linalg_and_backward():
    """A lazy paired batch index (a Gather) is sliced to a budget, decomposed and differentiated
    like any other index: values and gradients as torch's on the dense tensors."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 4, 30, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, 20, generator=g, dtype=torch.float64, requires_grad=True)
    key = ([[2, 0], [1, 1]], [[1, 3], [0, 3]])
    x = (lm.lazy(a) @ lm.lazy(b))[key]
    dense = (a @ b)[key]
    assert isinstance(x.key[0], lm.indexing.Gather) and tuple(x.shape) == tuple(dense.shape) == (2, 2, 30, 20)
    budget = lm.explain(x).planned.peak_bytes // 2 + 1
    assert_close(x.to_dense(memory_budget=budget), dense.detach())
    scale = dense.abs().max().item()
    assert_close(lm.linalg.svdvals(x, full=True), torch.linalg.svdvals(dense.detach()), atol=1e-10 * scale)
    w = torch.randn(dense.shape, generator=g, dtype=torch.float64)
    (x.to_dense() * w).sum().backward()
    got = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    (dense * w).sum().backward()
    assert_close(got[0], a.grad)
    assert_close(got[1], b.grad)
