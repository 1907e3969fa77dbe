"""The planner: opt_einsum costs, chain optimality, batch sharing, caching."""

import itertools
import random

import opt_einsum as oe
import pytest
import torch

import lazymat as lm
from lazymat import plan as plan_mod


def chain_optimum(dims):
    """Classic matrix-chain DP (independent reference): minimal multiply-adds."""
    n = len(dims) - 1
    best = {(i, i): 0 for i in range(n)}
    for length in range(2, n + 1):
        for i in range(n - length + 1):
            j = i + length - 1
            best[(i, j)] = min(best[(i, k)] + best[(k + 1, j)] + dims[i] * dims[k + 1] * dims[j + 1]
                               for k in range(i, j))
    return best[(0, n - 1)]


def left_to_right(dims):
    return sum(dims[0] * dims[k] * dims[k + 1] for k in range(1, len(dims) - 1))


@pytest.mark.parametrize("seed", range(60))
def test_random_chains_match_matrix_chain_optimum(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 12)
    dims = [rng.choice([1, 2, 3, 5, 8, 13, 40, 100, 300, 1000]) for _ in range(n + 1)]
    X = lm.symbol("A0", (dims[0], dims[1]))
    for i in range(1, n):
        X = X @ lm.symbol(f"A{i}", (dims[i], dims[i + 1]))
    p = X.plan()
    assert p.flops == 2 * chain_optimum(dims)
    assert p.flops <= p.naive_flops == 2 * left_to_right(dims)
    assert p.flops == sum(s.flops for s in p.steps)


def test_flops_agree_with_opt_einsum_path_info():
    X = lm.symbol("E", (50257, 768)) @ lm.symbol("Q", (768, 64)) @ lm.symbol("K", (64, 768)) \
        @ lm.symbol("Et", (768, 50257))
    p = X.plan()
    _, info = oe.contract_path("ab,bc,cd,de->ae", (50257, 768), (768, 64), (64, 768), (768, 50257),
                               shapes=True, optimize=list(p.path))
    assert p.flops == info.opt_cost
    assert p.largest_bytes == 50257 * 50257 * 4


def test_broadcast_batch_work_is_shared():
    W_O = lm.symbol("W_O", (12, 12, 64, 768))
    W_U = lm.symbol("W_U", (768, 50257))
    W_E = lm.symbol("W_E", (50257, 768))
    W_V = lm.symbol("W_V", (12, 12, 768, 64))
    p = (W_O @ W_U @ W_E @ W_V).plan()
    shared = [s for s in p.steps if s.out_shape == (768, 768)]
    assert len(shared) == 1  # W_U @ W_E once, not per head
    single = (W_O[0, 0] @ W_U @ W_E @ W_V[0, 0]).plan()
    assert p.flops < 0.1 * 144 * single.flops


def test_common_batch_dims_multiply_cost():
    A = lm.symbol("A", (7, 10, 20))
    B = lm.symbol("B", (7, 20, 30))
    assert (A @ B).plan().flops == 7 * 2 * 10 * 20 * 30


def test_plan_is_cached_on_the_expression_and_by_shape(monkeypatch):
    calls = []
    real = oe.paths.get_path_fn

    def counting(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(oe.paths, "get_path_fn", counting)
    shapes = [(30, 7), (7, 50), (50, 3), (3, 20)]
    X = lm.lazy(torch.randn(*shapes[0]))
    for s in shapes[1:]:
        X = X @ torch.randn(*s)
    X.to_dense()
    first = len(calls)
    X.to_dense()
    X.to_dense()
    assert len(calls) == first
    Y = lm.lazy(torch.randn(*shapes[0]))  # same structure, other tensors
    for s in shapes[1:]:
        Y = Y @ torch.randn(*s)
    Y.to_dense()
    assert len(calls) == first


def test_optimizer_setting():
    X = lm.symbol("A", (100, 10)) @ lm.symbol("B", (10, 100)) @ lm.symbol("C", (100, 5))
    with lm.config(optimize="left-to-right"):
        assert X.plan().flops == X.plan().naive_flops == 300_000
    assert X.plan().flops == 20_000  # B @ C first
    with pytest.raises(ValueError, match="optimize"):
        lm.config(optimize="fastest")


@pytest.mark.parametrize("optimizer", ["greedy", "dp", "optimal"])
def test_every_optimizer_gives_a_valid_chain(optimizer):
    rng = random.Random(1)
    dims = [rng.randint(1, 30) for _ in range(8)]
    X = lm.lazy(torch.randn(dims[0], dims[1], dtype=torch.float64))
    ref = X.to_dense()
    for i in range(1, 7):
        t = torch.randn(dims[i], dims[i + 1], dtype=torch.float64)
        X, ref = X @ t, ref @ t
    with lm.config(optimize=optimizer):
        torch.testing.assert_close(X.to_dense(), ref)


def test_peak_bytes_counts_live_intermediates():
    A, B, C, D = (lm.symbol(n, s, dtype=torch.float64) for n, s in
                  zip("ABCD", [(10, 20), (20, 30), (30, 40), (40, 50)], strict=True))
    p = plan_mod.plan_chain(((10, 20), (20, 30), (30, 40), (40, 50)), 8, "left-to-right")
    sizes = [10 * 30 * 8, 10 * 40 * 8, 10 * 50 * 8]
    # each product's output is live together with the intermediate it consumes
    assert p.peak_bytes == max(sizes[0], sizes[0] + sizes[1], sizes[1] + sizes[2])
    assert p.largest_bytes == max(sizes)
    assert (A @ B @ C @ D).plan().itemsize == 8


def test_non_chain_paths_are_repaired():
    # a path that joins factors 0 and 2 first is not a chain order: the interval DP takes over
    merges = plan_mod._intervals_from_path([(0, 2), (0, 1)], 3)
    assert merges is None
    net = plan_mod._Network(((5, 6), (6, 7), (7, 8)))
    fixed = plan_mod._interval_dp(net, 3)
    assert sorted(m[2] - m[0] for m in fixed) == [1, 2]


def test_all_chain_orders_cost_at_least_the_plan():
    dims = [7, 3, 11, 2, 9]
    X = lm.symbol("A", (7, 3)) @ lm.symbol("B", (3, 11)) @ lm.symbol("C", (11, 2)) @ lm.symbol("D", (2, 9))
    best = min(
        2 * sum(dims[lo] * dims[mid + 1] * dims[hi + 1] for lo, mid, hi in order)
        for order in _all_orders(0, 3)
    )
    assert X.plan().flops == best


def _all_orders(lo, hi):
    if lo == hi:
        yield []
        return
    for mid in range(lo, hi):
        for left, right in itertools.product(_all_orders(lo, mid), _all_orders(mid + 1, hi)):
            yield left + right + [(lo, mid, hi)]
