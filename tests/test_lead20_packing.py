"""The one-copy transfer of small factors (``_common._packed`` / ``_unpacked`` / ``on_host``):
any mix of dtypes and of row- and column-major layouts comes back equal, and the column-major
test read off strides agrees with its definition (``p.mT`` contiguous, ``p`` not)."""

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from lazymat.linalg import _common

DTYPES = [torch.float32, torch.float64, torch.int32, torch.complex64, torch.uint8, torch.float16]


@st.composite
def part(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    t = (torch.arange(max(1, torch.Size(shape).numel()) * 2) % 97).to(dtype)[: torch.Size(shape).numel()]
    t = t.reshape(shape)
    kind = draw(st.sampled_from(["as is", "mT", "mT contiguous", "sliced"]))
    if len(shape) >= 2 and kind == "mT":
        t = t.mT.contiguous().mT  # column-major storage of the same matrix
    elif len(shape) >= 2 and kind == "mT contiguous":
        t = t.mT
    elif len(shape) >= 2 and kind == "sliced" and shape[-1] > 1:
        t = t[..., :-1]
    return t


@given(st.lists(part(), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_pack_round_trip_and_column_major(parts):
    for p in parts:
        expected = p.ndim >= 2 and not p.is_contiguous() and p.mT.is_contiguous()
        assert _common._column_major(p) == expected, (p.shape, p.stride())
    back = _common._unpacked(*_common._packed(tuple(parts)))
    for p, b in zip(parts, back, strict=True):
        assert b.dtype == p.dtype and b.shape == p.shape and torch.equal(b, p)
    if len({p.device for p in parts}) == 1:
        arrays = _common.on_host(parts)
        for p, a in zip(parts, arrays, strict=True):
            assert torch.equal(torch.from_numpy(a.copy()), p)
