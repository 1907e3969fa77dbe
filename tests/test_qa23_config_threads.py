"""``with lm.config(...)`` (and a call's own ``memory_budget=``) holds in its own thread only.

The settings were one process-wide dict that a block restored on exit: a thread inside ``with
lm.config(memory_budget="1KiB")`` (or calling ``svdvals(X, memory_budget="1KiB")``) made every
other thread's calls raise ``BudgetTooSmall``, and two blocks ending out of order left the first
one's budget set for good.
"""

import threading

import pytest
import torch

import lazymat as lm
from lazymat import settings


def _product():
    g = torch.Generator().manual_seed(0)
    return lm.lazy(torch.randn(300, 16, generator=g, dtype=torch.float64)) @ lm.lazy(
        torch.randn(16, 300, generator=g, dtype=torch.float64))


def _in_thread(inside, between):
    """Run ``inside(step)`` in a thread, and ``between()`` here while it waits at ``step``."""
    entered, done = threading.Barrier(2), threading.Barrier(2)
    errors = []

    def work():
        try:
            inside(entered, done)
        except Exception as e:  # (reported below, in the test's thread)
            errors.append(e)
            entered.abort()
            done.abort()

    t = threading.Thread(target=work)
    t.start()
    try:
        entered.wait(timeout=30)
        between()
    finally:
        done.wait(timeout=30)
        t.join(timeout=30)
    assert not errors, errors


def test_a_block_in_another_thread_does_not_reach_this_one():
    X = _product()
    seen = {}

    def inside(entered, done):
        with lm.config(memory_budget="1KiB", optimize="left-to-right"):
            with pytest.raises(lm.BudgetTooSmall):
                lm.linalg.svdvals(X)
            entered.wait(timeout=30)
            done.wait(timeout=30)
            seen["inside"] = settings.get("memory_budget")

    def between():
        seen["here"] = (settings.get("memory_budget"), settings.get("optimize"))
        X.clear_cache()
        torch.testing.assert_close(lm.linalg.svdvals(X), torch.linalg.svdvals(X.to_dense())[:16])

    _in_thread(inside, between)
    assert seen == {"inside": 1024, "here": (None, "auto")}


def test_a_calls_own_budget_does_not_reach_another_thread():
    X = _product()

    def inside(entered, done):
        with settings.scoped(memory_budget=1024):  # what svdvals(X, memory_budget=1024) sets
            entered.wait(timeout=30)
            done.wait(timeout=30)

    def between():
        assert settings.get("memory_budget") is None
        X.clear_cache()
        lm.linalg.svdvals(X)

    _in_thread(inside, between)


def test_blocks_ending_out_of_order_leave_nothing_behind():
    a = lm.config(memory_budget="1KiB")  # as `with` does: made, then entered at once
    a.__enter__()

    def inside(entered, done):
        b = lm.config(memory_budget="2KiB")
        b.__enter__()
        entered.wait(timeout=30)
        done.wait(timeout=30)
        b.__exit__(None, None, None)  # the second block ends last

    def between():
        a.__exit__(None, None, None)  # the first block ends first

    _in_thread(inside, between)
    assert settings.get("memory_budget") is None


def test_plain_calls_and_nested_blocks():
    try:
        lm.config(max_slices=9)  # a plain call: process-wide, every thread sees it
        got = []
        t = threading.Thread(target=lambda: got.append(settings.get("max_slices")))
        t.start()
        t.join()
        assert got == [9]
        with lm.config(max_slices=5):
            with lm.config(max_slices=3, optimize="greedy"):
                assert (settings.get("max_slices"), settings.get("optimize")) == (3, "greedy")
            assert (settings.get("max_slices"), settings.get("optimize")) == (5, "auto")
        assert settings.get("max_slices") == 9
    finally:
        lm.config(max_slices=settings.DEFAULT_MAX_SLICES)


def test_a_plain_config_inside_a_block_takes_effect_at_once_and_nested_blocks_restore():
    """A plain ``lm.config(...)`` call inside a block is in force at once (the block's own values
    do not hide it), stays process-wide after the block; nested blocks each restore what held
    before them, the plain call's value included."""
    before = settings.get("optimize")
    try:
        with lm.config(optimize="dp"):
            lm.config(optimize="greedy")
            assert settings.get("optimize") == "greedy"
            with lm.config(optimize="optimal"):
                assert settings.get("optimize") == "optimal"
                with lm.config(optimize="left-to-right"):
                    assert settings.get("optimize") == "left-to-right"
                assert settings.get("optimize") == "optimal"
            assert settings.get("optimize") == "greedy"
        assert settings.get("optimize") == "greedy"  # (a plain call is process-wide)
        with lm.config(optimize="dp"):
            assert settings.get("optimize") == "dp"
        assert settings.get("optimize") == "greedy"
    finally:
        lm.config(optimize=before)
    assert settings.get("optimize") == before


def test_a_process_wide_budget_can_be_set_back_to_the_default():
    """``lm.config(memory_budget="default")`` undoes a process-wide budget (None means
    "unchanged", so nothing could before); as a block, it lifts an outer block's budget."""
    X = _product()
    try:
        lm.config(memory_budget="1KiB")
        with pytest.raises(lm.BudgetTooSmall):
            lm.linalg.svdvals(X)
        lm.config(memory_budget="default")
        assert settings.get("memory_budget") is None
        expected = torch.linalg.svdvals(X.to_dense())[:16]
        torch.testing.assert_close(lm.linalg.svdvals(X), expected)
        with lm.config(memory_budget="1KiB"):
            with lm.config(memory_budget="default"):
                torch.testing.assert_close(lm.linalg.svdvals(X), expected)
            assert settings.get("memory_budget") == 1024
    finally:
        lm.config(memory_budget="default")
    assert settings.get("memory_budget") is None
