"""lazymat.factorize's arguments as a researcher passes them (qa31, session 21).

Found and fixed: inputs ``X`` on the meta device (shapes only) for a real layer crashed in
torch's copy ("Cannot copy out of meta tensor; no data!", naming nothing); ``n_iters``,
``min_features`` and ``min_channels`` refused a numpy or 0-dim tensor int (``np.int64(2)``,
what a sweep over ``np.arange`` hands out) as "not a non-negative int", where ``rank`` takes
them; a ``names`` pattern that is no regular expression raised ``re.error`` naming neither the
argument nor the pattern; a model holding an ``nn.LazyLinear`` not yet run failed on counting
its parameters with torch's message about uninitialized parameters, naming no layer.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.factorize import (
    factorize_conv2d_module,
    factorize_linear,
    factorize_matrix,
    factorize_model,
)

INTS = {
    "python": int,
    "numpy int64": np.int64,
    "numpy int32": np.int32,
    "0-dim tensor": torch.tensor,
    "0-dim array": np.array,
}


@settings(max_examples=30, deadline=None)
@given(conv=st.booleans(), batch=st.integers(1, 4), width=st.integers(2, 6), spatial=st.integers(3, 5))
def test_inputs_on_the_meta_device_are_refused_naming_X_and_its_shape(conv, batch, width, spatial):
    if conv:
        layer = torch.nn.Conv2d(width, width + 1, 3)
        X = torch.empty(batch, width, spatial, spatial, device="meta")
        split = factorize_conv2d_module
    else:
        layer, X = torch.nn.Linear(width, width + 1), torch.empty(batch, width, device="meta")
        split = factorize_linear
    with pytest.raises(ValueError, match="meta device") as refused:
        split(layer, X, 1)
    assert f"X {tuple(X.shape)}" in str(refused.value)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(INTS)), n_iters=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_n_iters_of_any_integer_type_fits_as_the_python_int(kind, n_iters, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64)
    W = torch.randn(6, 5, generator=g, dtype=torch.float64)
    Y = X @ W + 0.1 * torch.randn(30, 5, generator=g, dtype=torch.float64)
    want = factorize_matrix(X, Y, W, rank=2, n_iters=n_iters)
    got = factorize_matrix(X, Y, W, rank=2, n_iters=INTS[kind](n_iters))
    torch.testing.assert_close(got.Wa @ got.Wb, want.Wa @ want.Wb, rtol=0, atol=0)
    assert got.nmse == want.nmse


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(sorted(INTS)), least=st.integers(0, 12))
def test_min_features_and_min_channels_of_any_integer_type_skip_as_the_python_int(kind, least):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10))
    X = torch.randn(40, 8)

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 6, 1))
    images = torch.randn(4, 3, 6, 6)

    def notes(model, X, rank, **kw):
        try:
            report = factorize_model(model, X, rank=rank, inplace=False, **kw)
        except ValueError as error:  # (no layer left: the same refusal either way)
            return str(error)
        return [(row.factorized, row.note) for row in report.layers]

    assert notes(model, X, 2, min_features=INTS[kind](least)) == notes(model, X, 2, min_features=least)
    assert notes(conv, images, 1, min_channels=INTS[kind](least)) == notes(conv, images, 1,
                                                                            min_channels=least)


@pytest.mark.parametrize("value", [True, 1.0, -1, np.float64(2.0), torch.tensor(2.0), "3"])
def test_a_count_that_is_no_non_negative_int_is_refused_naming_it(value):
    X, W = torch.randn(10, 4), torch.randn(4, 3)
    with pytest.raises(ValueError, match="n_iters must be a non-negative int"):
        factorize_matrix(X, X @ W, W, rank=1, n_iters=value)
    with pytest.raises(ValueError, match="min_features must be a non-negative int"):
        factorize_model(torch.nn.Linear(4, 3), X, rank=1, min_features=value)


@settings(max_examples=20, deadline=None)
@given(pattern=st.sampled_from(["(", "[a-", "*", "a)", "(?P<x", "\\"]))
def test_a_names_pattern_that_is_no_regular_expression_is_a_value_error_naming_it(pattern):
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(6, 6))
    with pytest.raises(ValueError, match="names .* is not a regular expression") as refused:
        factorize_model(model, torch.randn(10, 6), rank=1, names=pattern)
    assert repr(pattern) in str(refused.value)


@settings(max_examples=10, deadline=None)
@given(widths=st.lists(st.integers(2, 12), min_size=2, max_size=4), lazy_at=st.integers(0, 3))
def test_a_lazy_module_not_yet_initialized_is_named_then_factorized_once_run(widths, lazy_at):
    lazy_at %= len(widths) - 1 or 1
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        layers.append(torch.nn.LazyLinear(b) if i == lazy_at else torch.nn.Linear(a, b))
    model = torch.nn.Sequential(*layers)
    X = torch.randn(30, widths[0])
    with pytest.raises(ValueError, match=rf"parameter '{lazy_at}.weight' is not initialized"):
        factorize_model(model, X, rank=1)
    with torch.no_grad():
        want = model(X)  # (initializes it)
    report = factorize_model(model, X, rank=1, inplace=False)
    assert report.model_params_before == sum(p.numel() for p in model.parameters())
    assert report.model(X).shape == want.shape
