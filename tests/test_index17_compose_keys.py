"""Two normalised keys composed into one (``indexing.compose``) index a tensor exactly as the two
in turn do, shape included, for sequences of keys with new axes, lists, ints, stepped slices and
an ellipsis; where no outer key can say it (a new axis that a later list or slice repeats or
empties) the batch is one ``Gather``."""

import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_index16_compose import _key

from lazymat.indexing import Gather, apply_key, as_range, compose, normalise


def _apply(t: torch.Tensor, key: tuple) -> torch.Tensor:
    return apply_key(t, *key)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_composed_keys_index_as_the_keys_in_turn(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=3, max_size=5)))
    T = torch.arange(float(torch.Size(shape).numel()), dtype=torch.float64).reshape(shape)
    keys, t = [], T
    for _ in range(data.draw(st.integers(2, 3))):
        key = normalise(tuple(t.shape), _key(data, tuple(t.shape)))
        note(f"{tuple(t.shape)}[{key}]")
        keys.append(key)
        t = _apply(t, key)
    composed = keys[0]
    for key in keys[1:]:
        composed = compose(composed, key)
    got = _apply(T, composed)
    assert got.shape == t.shape
    assert torch.equal(got, t)
    # a list left in the composed key is one no range can stand for (it repeats or goes back)
    entries = (*(() if isinstance(composed[0], Gather) else composed[0]), *composed[1:])
    assert not any(isinstance(e, tuple) and isinstance(as_range(e), range) for e in entries)
