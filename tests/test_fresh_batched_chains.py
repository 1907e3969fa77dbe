"""A fresh product of data-leaf views (``execute._fresh_chain``: leaves with batch dims that may
broadcast, leaves read transposed, the whole chain transposed or scaled) is evaluated straight
from its leaves, without its canonical form. It must give eager torch's values and gradients,
the layout and plan its form's evaluation gives (the same FLOPs ``explain`` reports, the same
copies of factors whose batch dims do not merge), keep on the leaves what the form's
evaluation keeps, respect the memory budget and notice leaves changed in place."""

import functools
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import execute, product_cache
from lazymat.expr import LeafChanged
from lazymat.plan import cached_steps, plan_canon, plan_chain
from lazymat.rewrite import canonical

from conftest import assert_close, randn

# small shapes: every span kept, as a span worth keeping is (product_cache.MIN_KEPT_FLOPS)
pytestmark = pytest.mark.usefixtures("every_product_kept")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOWS = ("plain", "operand_mT", "stored_mT", "permuted")


@st.composite
def fresh_chains(draw):
    """``(specs, finish, dtype)``: per factor, how it is read and its base tensor (maybe requiring
    grad; :func:`_operands` makes the chain's tensors and lazy operands), and what is done to the
    whole chain (:func:`_finished`). Each factor's batch is the chain's, some dims 1 or left out
    (broadcast); a factor is read as stored, as ``lazy(t).mT``, from a transposed tensor, or from
    a tensor whose two batch dims are permuted (they then do not merge as a view)."""
    n = draw(st.integers(2, 4))
    dims = draw(st.lists(st.integers(1, 4), min_size=n + 1, max_size=n + 1))
    full = draw(st.sampled_from([(), (3,), (2, 3), (1, 3), (2, 1, 3)]))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    grad = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    specs = []
    for i in range(n):
        batch = tuple(d if draw(st.booleans()) else 1 for d in full)[draw(st.integers(0, len(full))):]
        how = draw(st.sampled_from(HOWS if len(batch) >= 2 else HOWS[:3]))
        r, c = dims[i], dims[i + 1]
        shape = (*batch, r, c) if how == "plain" else (*batch, c, r) if how != "permuted" else \
            (batch[1], batch[0], *batch[2:], r, c)
        specs.append((how, randn(gen, *shape, dtype=dtype).requires_grad_(grad)))
    finish = draw(st.sampled_from(["", "mT", "scale", "tensor scale", "mT scale"]))
    return specs, finish, dtype


def _operands(specs, bases):
    """The chain's tensors (as eager torch multiplies them) and its lazy operands."""
    tensors, operands = [], []
    for (how, _), b in zip(specs, bases, strict=True):
        if how == "plain":
            tensors.append(b)
            operands.append(lm.lazy(b))
        elif how == "operand_mT":
            tensors.append(b.mT)
            operands.append(lm.lazy(b).mT)
        elif how == "stored_mT":
            tensors.append(b.mT)
            operands.append(lm.lazy(b.mT))
        else:
            tensors.append(b.transpose(0, 1))
            operands.append(lm.lazy(tensors[-1]))
    return tensors, operands


def _finished(x, finish, dtype):
    if "mT" in finish:
        x = x.mT
    if finish.endswith("tensor scale"):
        x = torch.tensor(-1.5, dtype=torch.float64) * x
    elif finish.endswith("scale"):
        x = 2.5 * x
    return x


def _chain(specs, finish, dtype, bases=None):
    """``(X, eager value)`` over ``bases`` (default: the drawn ones)."""
    tensors, operands = _operands(specs, bases or [b for _, b in specs])
    X = functools.reduce(lambda a, b: a @ b, operands)
    return _finished(X, finish, dtype), _finished(functools.reduce(torch.matmul, tensors), finish, dtype)


def _run_plans(call):
    """``call()``'s value and the chain plans ``execute._contract`` ran it by."""
    plans = []
    real = execute._contract

    def record(values, plan, *rest):
        plans.append(plan)
        return real(values, plan, *rest)

    with mock.patch.object(execute, "_contract", record):
        return call(), plans


@SETTINGS
@given(fresh_chains(), st.integers(0, 2**31 - 1))
def test_a_fresh_chain_is_torchs_and_its_forms(chain, seed):
    """Matrix, ``@ v`` and ``v @`` of a fresh chain: eager torch's values, and exactly the values, strides
    and plan of the same expression's evaluation through its form (its second evaluation)."""
    specs, finish, dtype = chain
    for how in ("matrix", "vector", "row"):
        X, D = _chain(specs, finish, dtype)
        X.clear_cache()  # fresh, even where hash-consing handed back the last round's node
        vec = randn(torch.Generator().manual_seed(seed), X.shape[-2 if how == "row" else -1], dtype=dtype)

        def run(X=X, how=how, vec=vec):
            return X.to_dense() if how == "matrix" else X @ vec if how == "vector" else vec @ X

        with torch.no_grad():
            fresh, plans = _run_plans(run)
            assert "canon" not in X._cache  # read from the leaves
            D = D.detach()
            assert_close(fresh, D if how == "matrix" else D @ vec if how == "vector" else vec @ D)
            form = run()  # through the form now
        assert "canon" in X._cache
        assert torch.equal(fresh, form)
        assert fresh.stride() == form.stride()
        if how == "matrix":
            (term,) = canonical(X).terms
            assert plans == [plan_canon(canonical(X)).terms[0]]  # what explain reports is what ran
            assert {k for k, *_ in plans[0].shared_steps} == set(cached_steps(term, plans[0]))


@SETTINGS
@given(fresh_chains())
def test_a_fresh_chains_budget_check_bounds_its_forms(chain):
    """The bytes the fresh path checks against the budget are the form's plan's work, or more
    (never fewer: an evaluation that does not fit goes through the form, which slices)."""
    specs, finish, dtype = chain
    X, _ = _chain(specs, finish, dtype)
    X.clear_cache()
    (term,) = canonical(X).terms
    chain_plan = plan_canon(canonical(X)).terms[0]
    scale = execute._multiplier([term.coef, *term.scalars])
    work = execute._fresh_work(chain_plan, scale)
    assert work >= plan_canon(canonical(X)).work_bytes
    if scale is None and not chain_plan.shared_steps:
        assert work == plan_canon(canonical(X)).work_bytes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fresh_chains(), st.integers(0, 2**31 - 1))
def test_gradients_flow_through_a_fresh_chain(chain, seed):
    specs, finish, dtype = chain
    bases = [b.detach().clone().requires_grad_() for _, b in specs]
    twins = [b.detach().clone().requires_grad_() for _, b in specs]
    X, _ = _chain(specs, finish, dtype, bases)
    X.clear_cache()
    _, D = _chain(specs, finish, dtype, twins)
    w = randn(torch.Generator().manual_seed(seed), *D.shape, dtype=dtype)
    (X.to_dense() * w).real.sum().backward()
    (D * w).real.sum().backward()
    for b, t in zip(bases, twins, strict=True):
        assert_close(b.grad, t.grad)


def test_a_fresh_chain_reads_leaves_whose_batch_dims_do_not_merge_as_copied(gen):
    """A leaf permuted across its batch dims is copied by torch.matmul: the fresh path's plan
    counts the copy, as the form's does (``relaid_factors``)."""
    a = randn(gen, 3, 2, 4, 5).transpose(0, 1)
    b = randn(gen, 2, 3, 5, 4)
    X = lm.lazy(a) @ lm.lazy(b)
    out, plans = _run_plans(X.to_dense)
    assert_close(out, a @ b)
    assert plans[0].steps[0].copy_bytes > 0
    assert plans == [plan_canon(canonical(X)).terms[0]]


def _kept_products(leaves):
    """Per leaf, the products kept on it, each as the positions and view ops of what it reads."""
    where = {x.uid: i for i, x in enumerate(leaves)}
    return [sorted(tuple((where[uid], ops) for uid, ops in key) for key in (product_cache._products(x) or {}))
            for x in leaves]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("batches", [[(4,), (), ()], [(), (), (4,)], [(), (2, 3), (), ()],
                                     [(4,), (), (), (4,), (), ()], [(2, 1), (), (), (1, 3)]])
def test_a_fresh_batched_chain_keeps_what_its_form_keeps(gen, batches, flip):
    """The products of unbatched leaves a batched chain forms once are kept on the leaves by the
    fresh path as by the form's evaluation (a leaf read as ``.mT`` under the same key), and
    found there by the next evaluation."""
    runs = []
    for fresh in (True, False):
        tensors = [randn(gen, *b, 6, 6) for b in batches]
        leaves = [lm.lazy(t) for t in tensors]
        operands = [x.mT if flip and i == 1 else x for i, x in enumerate(leaves)]
        values = [t.mT if flip and i == 1 else t for i, t in enumerate(tensors)]
        X = functools.reduce(lambda a, b: a @ b, operands)
        if not fresh:
            X._cache["read"] = True  # as if evaluated before: through its form
        assert_close(X.to_dense(), functools.reduce(torch.matmul, values))
        assert ("canon" in X._cache) is not fresh
        runs.append(_kept_products(leaves))
        h = randn(gen, *batches[0], 6, 6)
        Y = lm.lazy(h) @ functools.reduce(lambda a, b: a @ b, operands[1:])
        assert_close(Y.to_dense(), h @ functools.reduce(torch.matmul, values[1:]))
    assert runs[0] == runs[1]
    assert any(runs[0])


def test_a_kept_product_of_a_leaf_changed_in_place_is_not_read(gen):
    """A product kept by a fresh batched chain is not found once a leaf it reads changed."""
    h, b, c = randn(gen, 4, 5, 6), randn(gen, 6, 6), randn(gen, 6, 6)
    B, C = lm.lazy(b), lm.lazy(c)
    assert_close((lm.lazy(h) @ B @ C).to_dense(), h @ (b @ c))
    assert product_cache._products(B)  # B @ C kept on B
    c.mul_(-2)
    h2 = randn(gen, 4, 5, 6)
    assert_close((lm.lazy(h2) @ B @ C).to_dense(), h2 @ (b @ c))


def test_a_fresh_chains_leaf_changed_in_place(gen):
    """Written in place between evaluations: the second evaluation reads the new values; resized:
    the fresh path raises LeafChanged naming both shapes."""
    a, b = randn(gen, 3, 4, 5), randn(gen, 5, 4)
    X = lm.lazy(a) @ lm.lazy(b).mT.mT
    assert_close(X.to_dense(), a @ b)
    b.add_(1.0)
    assert_close(X.to_dense(), a @ b)
    c = randn(gen, 3, 5, 4)
    Y = lm.lazy(a) @ lm.lazy(c)
    c.resize_(3, 5, 3)
    with pytest.raises(LeafChanged, match=r"\(3, 5, 4\).*\(3, 5, 3\)"):
        Y.to_dense()


@pytest.mark.parametrize("finish", ["", "mT", "scale"])
def test_a_fresh_chain_over_the_budget_goes_through_the_form(gen, finish):
    """A batched fresh chain whose work exceeds the budget is evaluated in blocks by its form."""
    a, b, c = randn(gen, 4, 32, 32), randn(gen, 32, 32), randn(gen, 4, 32, 32)
    X = _finished(lm.lazy(a) @ lm.lazy(b) @ lm.lazy(c), finish, torch.float64)
    assert execute._fresh_work(plan_chain(tuple(t.shape for t in (a, b, c)), 8), None) > 8192
    assert_close(X.to_dense(memory_budget=8192), _finished(a @ b @ c, finish, torch.float64))
    assert "canon" in X._cache


def test_symbols_in_a_fresh_chain_still_say_they_have_no_data(gen):
    X = lm.lazy(randn(gen, 3, 5, 4)).mT @ lm.symbol("S", (5, 2), dtype=torch.float64)
    with pytest.raises(execute.SymbolHasNoData, match="'S'"):
        X.to_dense()
