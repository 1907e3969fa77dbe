"""Copies, pickles and torch.save round trips are new nodes: same values, own identity."""

import copy
import io
import pathlib
import pickle

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions

import lazymat as lm
from lazymat.expr import leaves, postorder

from conftest import assert_close, randn


def _torch_round_trip(x):
    buf = io.BytesIO()
    torch.save(x, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


ROUND_TRIPS = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda x: pickle.loads(pickle.dumps(x)),
    "torch.save": _torch_round_trip,
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions(), st.sampled_from(sorted(ROUND_TRIPS)))
def test_round_trips_are_equal_and_independent(pair, how):
    X, D = pair
    Y = ROUND_TRIPS[how](X)
    assert Y.shape == X.shape and Y.dtype == X.dtype
    assert_close(Y.to_dense(), D)
    assert not {n.uid for n in postorder(X)} & {n.uid for n in postorder(Y)}
    with torch.no_grad():  # the copy's data is its own: zeroing it leaves X as it was
        for leaf in leaves(Y):
            leaf.tensor.zero_()
    assert not Y.to_dense().any()
    assert_close(X.to_dense(), D)
    assert_close((X - Y).to_dense(), D)


def test_deepcopy_then_edit_is_not_cancelled(gen):
    """The reported case: after editing the copy, X - copy(X) was all zeros."""
    a, b = randn(gen, 6, 3), randn(gen, 3, 5)
    X = lm.lazy(a) @ lm.lazy(b)
    Y = copy.deepcopy(X)
    leaves(Y)[0].tensor.add_(1.0)
    expected = a @ b - (a + 1.0) @ b
    assert_close((X - Y).to_dense(), expected)
    assert (X - Y).to_dense().abs().max() > 1


def test_shared_subexpressions_stay_shared(gen):
    a, b = randn(gen, 5, 2), randn(gen, 2, 5)
    S = lm.lazy(a) @ lm.lazy(b)
    X = S @ S + S.T
    Y = copy.deepcopy(X)
    assert len(postorder(Y)) == len(postorder(X))
    assert len(leaves(Y)) == 2
    Xs, Ys = pickle.loads(pickle.dumps([X, S]))  # one pickle: S inside X is the same node
    assert Ys in postorder(Xs)
    assert_close(Xs.to_dense(), (a @ b) @ (a @ b) + (a @ b).T)


def test_shallow_copy_is_the_node_and_symbols_intern():
    A = lm.symbol("A", (4, 3))
    X = A @ A.T
    assert copy.copy(X) is X
    assert copy.deepcopy(A) is A  # no data: the same symbol
    assert pickle.loads(pickle.dumps(X)) is X


def test_deep_chain_pickles_without_recursion(gen):
    t = randn(gen, 3, 3) / 3
    X = lm.lazy(t)
    for _ in range(3000):
        X = X @ lm.lazy(t)
    Y = pickle.loads(pickle.dumps(X))
    assert len(leaves(Y)) == 1
    assert_close(Y.to_dense(), X.to_dense(), rtol=1e-9)


def test_tensor_scalars_and_names_survive(gen):
    a = randn(gen, 4, 4)
    k = torch.tensor(0.5, dtype=torch.float64)
    X = (lm.lazy(a, name="W") * k)[1:3].to(torch.complex128)
    Y = _torch_round_trip(X)
    assert leaves(Y)[0].name == "W"
    assert_close(Y.to_dense(), (a * 0.5)[1:3].to(torch.complex128))


def test_an_expression_saved_by_another_process_is_a_new_node(tmp_path):
    """Node numbers restart in every process: an expression loaded in a fresh process whose
    own nodes got the same numbers must still be a node of its own."""
    import subprocess
    import sys

    path = tmp_path / "x.pt"
    make = (
        "import torch, lazymat as lm\n"
        "a = torch.arange(12, dtype=torch.float64).reshape(4, 3)\n"
        "b = torch.arange(15, dtype=torch.float64).reshape(3, 5)\n"
    )
    save = make + f"torch.save(lm.lazy(a) @ lm.lazy(b), {str(path)!r})\n"
    load = make + (  # local nodes first: they get the numbers the saved ones had
        "x = lm.lazy(-a) @ lm.lazy(b)\n"
        f"y = torch.load({str(path)!r}, weights_only=False)\n"
        "assert y is not x\n"
        "torch.testing.assert_close((y - x).to_dense(), 2 * (a @ b), rtol=0, atol=0)\n"
    )
    root = pathlib.Path(lm.__file__).parent.parent
    for script in (save, load):
        subprocess.run([sys.executable, "-c", script], check=True, cwd=root)
