"""Index lists out of range where the result is empty: lazymat answers (or refuses) as torch.

torch reads no entry of an empty result, so it bound-checks no index list there (``D[4:, [7]]``
on a 4 x 6 matrix is a 0 x 1 result), but it always refuses a non-empty list on a dim of size 0.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm


def _torch_answer(dense, key):
    try:
        return dense[key], None
    except IndexError as e:
        return None, e


@st.composite
def _cases(draw):
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=2, max_size=3)))
    key = []
    lists = 0
    for dim, size in enumerate(shape):
        if draw(st.booleans()) and (lists == 0 or dim == len(shape) - 1 and isinstance(key[-1], list)):
            key.append(draw(st.lists(st.integers(-size - 3, size + 3), max_size=3)))
            lists += 1
        else:
            start = draw(st.integers(0, size + 1))
            key.append(slice(start, draw(st.one_of(st.none(), st.integers(start, size + 1)))))
    inner = draw(st.integers(1, 3))
    return shape, inner, tuple(key)


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_out_of_range_lists_match_torch(case):
    shape, inner, key = case
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(*shape[:-1], inner, generator=gen, dtype=torch.float64)
    b = torch.randn(inner, shape[-1], generator=gen, dtype=torch.float64)
    expected, error = _torch_answer(a @ b, key)
    if error is not None:
        try:
            got = (lm.lazy(a) @ lm.lazy(b))[key]
        except IndexError:
            return
        raise AssertionError(f"torch refused {key} on {shape} ({error}); lazymat gave {got!r}")
    got = (lm.lazy(a) @ lm.lazy(b))[key]
    got = got if isinstance(got, torch.Tensor) else got.to_dense()
    assert got.shape == expected.shape, (shape, key, got.shape, expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_emptied_rows_with_an_out_of_range_column_list():
    a, b = torch.randn(4, 2, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    got = (lm.lazy(a) @ lm.lazy(b))[3:, [5]]
    assert got.to_dense().shape == (1, 1)
    got = (lm.lazy(a) @ lm.lazy(b))[4:, [7, -9]]
    assert got.shape == (0, 2) and got.to_dense().shape == (a @ b)[4:, [7, -9]].shape


def test_out_of_range_list_on_a_non_empty_result_still_names_the_dim():
    x = lm.lazy(torch.zeros(4, 6))
    with pytest.raises(lm.IndexOutOfRange, match=r"index 7 .*dim 1 of size 6"):
        x[:, [7]]
    with pytest.raises(lm.IndexOutOfRange, match=r"index 2 .*dim 0 of size 0"):
        lm.lazy(torch.zeros(0, 3, 4))[[2], 3:3]
