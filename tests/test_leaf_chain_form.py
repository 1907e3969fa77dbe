"""linalg reads the form of a run of ``@`` over data leaves straight from its leaves
(``linalg._common._read_form``), so a first call on a fresh product builds no canonical form and its
``to_dense`` takes the fresh path (``execute._fresh_chain``). The form read so must be the
one the general rewrite pass builds, and the answers eager torch's."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat.rewrite import canonical

from conftest import assert_close


@st.composite
def leaf_chains(draw):
    """2-4 leaves with random matrix dims, an optional broadcast batch, maybe a repeated leaf."""
    n = draw(st.integers(2, 4))
    dims = draw(st.lists(st.integers(1, 5), min_size=n + 1, max_size=n + 1))
    batches = draw(st.lists(st.sampled_from([(), (1,), (3,), (2, 1)]), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(*b, dims[i], dims[i + 1], generator=gen, dtype=torch.float64)
               for i, b in enumerate(batches)]
    leaves = [lm.lazy(t) for t in tensors]
    if draw(st.booleans()) and n >= 3 and dims[0] == dims[2] and dims[1] == dims[3] \
            and batches[0] == batches[2]:
        tensors[2], leaves[2] = tensors[0], leaves[0]  # the same leaf twice
    return leaves, tensors


@settings(max_examples=80, deadline=None)
@given(leaf_chains())
def test_the_form_read_from_the_leaves_is_the_rewrite_passes(chain):
    leaves, tensors = chain
    X = leaves[0]
    for leaf in leaves[1:]:
        X = X @ leaf
    fast = LA._common._read_form(X)
    top = canonical(X)  # the general pass, cached on X after the fast read
    (term,) = top.terms
    dims = tuple(term.dims)
    assert fast.key == (tuple(X.shape), X.dtype, X.device, dims, tuple(f.shape[:-2] for f in term.factors))
    assert (fast.factors, fast.terms, fast.width, fast.dim, fast.nested) == \
        (len(term.factors), 1, min(dims), max(dims), False)
    assert {id(t) for t in fast.data} == {id(f.base.tensor) for f in term.factors}
    assert len(fast.data) == len({id(t) for t in tensors})


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**16))
def test_a_first_spectral_call_on_a_fresh_product_builds_no_form(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    A, B = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in [(m, k), (k, n)])
    X = lm.lazy(A) @ lm.lazy(B)
    got = LA.svdvals(X, full=True)
    assert "canon" not in X._cache  # read from the leaves, evaluated by the fresh path
    assert_close(got, torch.linalg.svdvals(A @ B), atol=1e-12, rtol=1e-10)
    assert_close(LA.matrix_rank(X), torch.linalg.matrix_rank(A @ B))
