"""Plans found again by shapes: a new expression of the same structure reuses the plan of an
earlier one (no search), but only where every cost the plan states is the same."""

import torch

import lazymat as lm
from lazymat import plan as lm_plan


def _chain(gen, coef=None, n=(5, 3, 7, 2)):
    A, B, C = (torch.randn(n[i], n[i + 1], generator=gen) for i in range(3))
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
    return X if coef is None else coef * X


def test_a_rebuilt_structure_finds_its_plan_and_a_cleared_table_plans_again(gen):
    first = _chain(gen).plan()
    again = _chain(gen)  # new tensors, new nodes, same shapes
    assert again.plan() is first
    lm_plan.clear_plan_tables()
    cold = _chain(gen).plan()
    assert cold is not first
    assert (cold.flops, cold.path, cold.peak_bytes) == (first.flops, first.path, first.peak_bytes)


def test_plans_found_by_shapes_keep_what_differs(gen):
    plain = _chain(gen).plan()
    scaled = _chain(gen, coef=2.0).plan()
    assert scaled is not plain and scaled.scale_flops == 5 * 2 and plain.scale_flops == 0
    wide = _chain(gen, n=(5, 3, 7, 4)).plan()
    assert wide.shape == (5, 4) and plain.shape == (5, 2)
    with lm.config(optimize="left-to-right"):
        naive = _chain(gen, n=(10, 1, 10, 1)).plan()
    best = _chain(gen, n=(10, 1, 10, 1)).plan()
    assert naive.flops > best.flops  # the optimizer setting is part of the key
    doubled = lm.lazy(torch.randn(5, 3, generator=gen).double()) @ lm.lazy(torch.randn(3, 2).double())
    assert doubled.plan().itemsize == 8 and plain.itemsize == 4
