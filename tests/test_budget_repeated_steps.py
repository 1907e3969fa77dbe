"""A closed network that reads the same factors twice (``Z @ ((X - 2 Y) @ Z)``: the product ``Z``
stands for appears in two places) runs within the peak explain names. The executor held a
reused step's value to the network's end where the model frees it after its last reader:
``t1x2 @ t2x2 @ t2x1 @ ((t1x1 - 2 t1x1) @ (t1x2 @ t2x2 @ t2x1))`` named 32 B, used 40 B."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import _check_peak
from test_properties import assert_close, chains


@pytest.fixture
def sliced_runs(block_counts):
    return block_counts


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_network_reading_a_product_twice_runs_within_its_peak(sliced_runs, data):
    m = data.draw(st.integers(1, 5))
    (X, D), (Y, E), (Z, F) = (data.draw(chains(m, m, (), torch.float64)) for _ in range(3))
    if data.draw(st.booleans()):
        Y, E = X, D
    W, G = Z @ ((X - 2.0 * Y) @ Z), F @ ((D - 2.0 * E) @ F)
    op = data.draw(st.sampled_from(["trace", "diagonal"]))
    out = _check_peak(W, op, sliced_runs)
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    assert_close(out, diag if op == "diagonal" else diag.sum(-1))
