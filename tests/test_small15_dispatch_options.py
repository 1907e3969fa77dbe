"""``interop.dispatch`` asks a fresh product's compiled call first when the routed function is
called with one option (by position or keyword) whose value and type are a table entry's: its
one type is matched without building a tuple of types. Look-alike values (equal and hashing
alike, of another type: ``2.0`` for ``2``) go to the routed function."""

import sys
from unittest import mock

import torch

import lazymat as lm
from lazymat import interop, linalg


def test_one_option_by_position_or_keyword_is_asked_only_with_its_own_type():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, generator=gen), torch.randn(3, 6, generator=gen)

    def fresh():
        return lm.lazy(a.clone()) @ lm.lazy(b.clone())

    asked = []

    def spy(*args):
        if sys._getframe(1).f_code is interop.dispatch.__code__:
            asked.append(args[1:])

    with mock.patch.object(linalg.compiled, "_compiled", spy):
        torch.linalg.svd(fresh(), full_matrices=False)
        torch.linalg.matrix_norm(fresh(), ord="nuc")
        torch.linalg.matrix_norm(fresh(), "nuc")
        torch.linalg.cond(fresh(), 2)
        torch.linalg.matrix_norm(fresh(), ord=2.0)  # look-alikes: the routed function answers
        torch.linalg.cond(fresh(), p=2.0)
    assert asked == [("svd", ()), ("norm", ("nuc",)), ("norm", ("nuc",)), ("cond", (False,))]
    expected = torch.linalg.matrix_norm((a @ b).double(), ord=2.0)  # answered all the same
    got = torch.linalg.matrix_norm(fresh(), ord=2.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=0)
