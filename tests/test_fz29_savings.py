"""fz29: factorization_savings against the split layers themselves: their parameters counted
with numel and their multiply-adds with torch's FlopCounterMode (an independent count), for
every rank of small Linear and Conv2d layers."""

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from lazymat.factorize import factorization_savings


def _flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def _split(module: torch.nn.Module, k: int) -> torch.nn.Sequential:
    """The two layers of a rank-k split, built here from nn (on the meta device: shapes only)."""
    with torch.device("meta"):
        if isinstance(module, torch.nn.Linear):
            return torch.nn.Sequential(torch.nn.Linear(module.in_features, k, bias=False),
                                       torch.nn.Linear(k, module.out_features))
        return torch.nn.Sequential(
            torch.nn.Conv2d(module.in_channels, k, module.kernel_size, padding=module.padding, bias=False),
            torch.nn.Conv2d(k, module.out_channels, 1))


def _sample(module: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """An input and the number of samples it holds (rows; output positions of a convolution)."""
    with torch.device("meta"):
        if isinstance(module, torch.nn.Linear):
            return torch.empty(7, module.in_features), 7
        x = torch.empty(2, module.in_channels, 5, 6)
    kh, kw = module.kernel_size
    ph, pw = module.padding
    return x, 2 * (5 + 2 * ph - kh + 1) * (6 + 2 * pw - kw + 1)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


layers = st.one_of(
    st.builds(lambda d, m, b: torch.nn.Linear(d, m, bias=b, device="meta"),
              st.integers(1, 40), st.integers(1, 40), st.booleans()),
    st.builds(lambda ci, co, kh, kw, b: torch.nn.Conv2d(ci, co, (kh, kw), padding=(kh // 2, kw // 2),
                                                       bias=b, device="meta"),
              st.integers(1, 12), st.integers(1, 12), st.integers(1, 3), st.integers(1, 3), st.booleans()),
)


@settings(max_examples=120, deadline=None)
@given(layer=layers)
def test_savings_match_numel_and_flop_counter_at_every_rank(layer):
    x, samples = _sample(layer)
    # every rank a split can have: below the fan-in (in_channels * kh * kw) and the outputs
    widest = layer.weight[0].numel(), layer.weight.shape[0]
    saving = []
    for k in range(1, min(widest) + 1):
        s = factorization_savings(layer, k)
        split = _split(layer, k)
        assert s.rank == k
        assert (s.params_before, s.params_after) == (_numel(layer), _numel(split))
        assert 2 * s.macs_before * samples == _flops(layer, x)
        assert 2 * s.macs_after * samples == _flops(split, x)
        fewer = _numel(split) < _numel(layer) and _flops(split, x) < _flops(layer, x)
        assert s.saves == fewer
        if fewer:
            saving.append(k)
    # max_rank is the largest saving rank, and every rank below it saves too
    assert s.max_rank == (max(saving) if saving else 0)
    assert saving == list(range(1, s.max_rank + 1))


@settings(max_examples=200, deadline=None)
@given(d=st.integers(1, 5000), m=st.integers(1, 5000), kernel=st.integers(1, 3))
def test_with_a_bias_max_rank_is_composers_multiply_add_criterion(d, m, kernel):
    """k < fan_in * M / (fan_in + M), in exact rationals."""
    with torch.device("meta"):
        layer = torch.nn.Conv2d(d, m, kernel) if kernel > 1 else torch.nn.Linear(d, m)
    fan_in = d * kernel * kernel
    breakeven = Fraction(fan_in * m, fan_in + m)
    k = factorization_savings(layer, 1).max_rank
    assert k < breakeven and (k + 1 >= breakeven)


def test_a_fraction_is_of_the_narrower_width():
    assert factorization_savings(torch.nn.Linear(1536, 384, device="meta"), 0.25).rank == 96
    assert factorization_savings(torch.nn.Conv2d(64, 128, 3, device="meta"), 0.25).rank == 16
    assert factorization_savings(torch.nn.Linear(10, 3, device="meta"), 0.1).rank == 1  # at least 1


def test_grouped_convolutions_and_other_modules_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="groups=2"):
        factorization_savings(torch.nn.Conv2d(4, 4, 3, groups=2), 1)
    with pytest.raises(TypeError, match="Conv1d"):
        factorization_savings(torch.nn.Conv1d(4, 4, 3), 1)
    with pytest.raises(ValueError, match="rank"):
        factorization_savings(torch.nn.Linear(4, 4), 2.5)
