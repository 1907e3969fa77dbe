"""The nested blocks a trace or diagonal of a sum reads are formed before its first network and
held to the end, beside the products their parts keep on the leaves: explain's peak (the figure
the executor checks) counts both, and a run allocates no more.

A part's product kept on the leaves was held beside the networks uncounted (264 B named, 280 B
allocated), and a block read only by a later term was formed beside what the earlier networks
left (their result and their steps kept on the leaves: 136 B named, 144 B allocated).
"""

import pytest
import torch
from test_budget_peak import _check_peak

import lazymat as lm

from conftest import assert_close


@pytest.fixture
def sliced_runs(block_counts):
    return block_counts


def _diag(D, op):
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    return diag if op == "diagonal" else diag.sum(-1)


@pytest.mark.parametrize("op", ["trace", "diagonal"])
def test_a_parts_products_kept_on_the_leaves_are_held_beside_the_networks(sliced_runs, gen, op):
    """``t3x1 @ t1x2 @ t2x2x4 @ cat([t2x3 - t2x2x3 @ t3x3 @ t3x3, t1x3, t1x3])``: the part's
    ``t3x3 @ t3x3`` is kept on the leaves (the part has a batch) while the networks run."""
    shapes = [(3, 1), (1, 2), (2, 2, 4), (2, 3), (2, 2, 3), (3, 3), (3, 3), (1, 3), (1, 3)]
    t = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]
    a = [lm.lazy(x) for x in t]
    X = a[0] @ a[1] @ a[2] @ lm.cat([a[3] - a[4] @ a[5] @ a[6], a[7], a[8]], dim=-2)
    D = t[0] @ t[1] @ t[2] @ torch.cat([(t[3] - t[4] @ t[5] @ t[6]), *(x.expand(2, 1, 3) for x in t[7:])],
                                       dim=-2)
    X, D = X[..., :3, :3], D[..., :3, :3]
    assert_close(_check_peak(X, op, sliced_runs), _diag(D, op))


@pytest.mark.parametrize("op", ["trace", "diagonal"])
def test_a_block_read_by_a_later_term_is_formed_before_the_first_network(sliced_runs, gen, op):
    """``cat([t4x1 @ t2x1x1 @ t1x1 @ t1x2, t4x1 - t2x4x1], dim=-1) @ t3x4``: the sum block is
    read by the second diagonal block's network only."""
    shapes = [(4, 1), (2, 1, 1), (1, 1), (1, 2), (4, 1), (2, 4, 1), (3, 4)]
    t = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]
    a = [lm.lazy(x) for x in t]
    X = lm.cat([a[0] @ a[1] @ a[2] @ a[3], a[4] + -1 * a[5]], dim=-1) @ a[6]
    D = torch.cat([t[0] @ t[1] @ t[2] @ t[3], t[4] - t[5]], dim=-1) @ t[6]
    X, D = X[..., :3, :3], D[..., :3, :3]
    assert_close(_check_peak(X, op, sliced_runs), _diag(D, op))
