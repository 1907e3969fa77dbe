"""qa28: a wide product with fewer rows than any inner width (``lazy(A 3x64) @ lazy(B 64x100000)``:
a few vectors against a vocabulary-sized matrix) is its own core: ``core.factor`` gives an
identity left side, and the general path decomposes the formed ``3 x 100000`` matrix
(``spectrum._decompose``: "the matrix is its own core"). Its compiled call
(``compiled._compile_factored`` through ``_side_tensors``) counts the identity as the left side's
one factor, so it splits the leaves after the first and runs the factored route instead: a QR
of the ``100000 x 64`` side (8x the general path's time on the 2-core CPU, float32, one
thread, loaded) whose answers are not the general path's bit for bit (docs/linear-algebra.md
promises they are). Both agree with torch on the float64 matrix (asserted); the bit-for-bit
property held once the compiled call left such products to the general path (lead, session 20)."""

import functools
import itertools
from unittest import mock

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.core import factor, is_identity
from lazymat.linalg import costs

from conftest import general_path

CALLS = {"svdvals": torch.linalg.svdvals, "svd": lambda x: tuple(torch.linalg.svd(x, full_matrices=False))}


def wide_product(seed, m, widths, n, scale):
    """Leaves of ``(m x w0) @ (w0 x w1) @ ... @ (wk x n)`` (float64) and their lazy product, times
    ``scale`` where given."""
    gen = torch.Generator().manual_seed(seed)
    dims = [m, *widths, n]
    tensors = [torch.randn(a, b, generator=gen, dtype=torch.float64) for a, b in itertools.pairwise(dims)]
    x = functools.reduce(lambda a, b: a @ b, [lm.lazy(t) for t in tensors])
    return tensors, (x if scale is None else x * scale)


def both_paths(name, x):
    """The first call's answer (a compiled call's where one is taken), then the general path's."""
    first = CALLS[name](x)
    x.clear_cache()
    with general_path():
        second = CALLS[name](x)
    x.clear_cache()
    return first, second


def torch_check(name, out, tensors, scale):
    D = functools.reduce(torch.matmul, tensors) * (1.0 if scale is None else scale)
    top = torch.linalg.matrix_norm(D, 2).item()
    if name == "svd":
        U, S, Vh = out
        assert ((U * S) @ Vh - D).abs().max().item() <= 1e-12 * top
    else:
        assert (out - torch.linalg.svdvals(D)).abs().max().item() <= 1e-12 * top


def equal(a, b):
    if isinstance(a, tuple):
        return all(equal(p, q) for p, q in zip(a, b, strict=True))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_product_that_is_its_own_core_agrees_with_torch(name):
    tensors, x = wide_product(0, 3, [64], 100_000, None)
    assert is_identity(factor(x)[0])
    x.clear_cache()
    first, second = both_paths(name, x)
    torch_check(name, first, tensors, None)
    torch_check(name, second, tensors, None)


def test_a_product_that_is_its_own_core_is_the_general_paths_bit_for_bit():
    """svdvals(lazy(A 3x64) @ lazy(B 64x100000)): ~1e-12 off the general path's (values ~2.5e3)."""
    first, second = both_paths("svdvals", wide_product(0, 3, [64], 100_000, None)[1])
    assert equal(first, second)


@settings(max_examples=20, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 2**16), m=st.integers(1, 4),
       widths=st.lists(st.integers(5, 24), min_size=1, max_size=2), n=st.integers(30, 300),
       name=st.sampled_from(sorted(CALLS)), scale=st.sampled_from([None, 7.5, -0.25]))
def test_products_that_are_their_own_core_are_the_general_paths_bit_for_bit(seed, m, widths, n, name, scale):
    """Every product with fewer rows than its inner widths, past the dense route's size (its
    limit set to 0, as test_compiled19_factored's factored_route): the compiled call's answer is
    torch's (float64 matrix) and the general path's, ``torch.equal``."""
    tensors, x = wide_product(seed, m, widths, n, scale)
    with mock.patch.object(costs, "DENSE_MAX_ELEMENTS", 0):
        first, second = both_paths(name, x)
    torch_check(name, first, tensors, scale)
    assert equal(first, second)
