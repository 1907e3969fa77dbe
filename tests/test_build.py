"""Building expressions: shapes, structure, errors; building never touches data."""

import pytest
import torch

import lazymat as lm

from conftest import TorchCalls, assert_close, randn


def test_symbols_build_at_vocabulary_scale():
    E = lm.symbol("W_E", (50257, 768))
    Q = lm.symbol("W_Q", (768, 64))
    K = lm.symbol("W_K", (768, 64))
    X = E @ Q @ K.T @ E.T
    assert X.shape == (50257, 50257) and X.dtype == torch.float32 and X.ndim == 2


def test_building_runs_no_tensor_op(gen):
    a, b, c = randn(gen, 40, 5), randn(gen, 5, 3), randn(gen, 3, 40)
    with TorchCalls() as calls:
        X = (lm.lazy(a) @ b @ c).T * 2.0 + lm.lazy(a) @ b @ c
        X = X[1:5, [0, 3]]
    assert not any("matmul" in n or "mm" in n or "add" in n for n in calls.names), calls.names
    with TorchCalls() as calls:
        X.to_dense()
    assert any("matmul" in n for n in calls.names)


def test_shape_dtype_device_inference(gen):
    A = lm.lazy(randn(gen, 3, 5, 4))
    B = lm.lazy(randn(gen, 4, 6))
    X = A @ B
    assert X.shape == (3, 5, 6) and X.dtype == torch.float64 and X.device.type == "cpu"
    assert X.mT.shape == (3, 6, 5) and X.T.shape == (3, 6, 5)


def test_hash_consing_and_double_transpose(gen):
    a, b = randn(gen, 4, 5), randn(gen, 5, 3)
    A, B = lm.lazy(a), lm.lazy(b)
    assert (A @ B) is (A @ B)
    assert (A @ B).T.T is (A @ B)
    assert lm.lazy(a) is A
    assert lm.is_lazy(A) and not lm.is_lazy(a)


def test_tensor_operands_are_wrapped(gen):
    a, b, c = randn(gen, 4, 5), randn(gen, 5, 3), randn(gen, 3, 2)
    X = a @ lm.lazy(b) @ c
    assert lm.is_lazy(X)
    assert_close(X.to_dense(), a @ b @ c)
    assert_close(torch.matmul(lm.lazy(a), b).to_dense(), a @ b)


@pytest.mark.parametrize(
    "make, err, words",
    [
        (lambda g: lm.lazy(randn(g, 3, 4)) @ lm.lazy(randn(g, 5, 2)), ValueError, ["(3, 4)", "(5, 2)"]),
        (lambda g: lm.lazy(randn(g, 2, 3, 4)) @ lm.lazy(randn(g, 3, 4, 2)), ValueError, ["(2,)", "(3,)"]),
        (lambda g: lm.lazy(torch.ones(3, 4, dtype=torch.int64)), TypeError, ["int64"]),
        (lambda g: lm.lazy(torch.ones(3, 4, dtype=torch.bool)), TypeError, ["bool"]),
        (lambda g: lm.lazy(randn(g, 3)), ValueError, ["(3,)", "2 dims"]),
        (lambda g: lm.lazy(randn(g, 3, 4)) * randn(g, 3), TypeError, ["(3,)"]),
        (lambda g: lm.lazy(randn(g, 3, 4)) * "x", TypeError, ["str"]),
        (lambda g: lm.lazy(randn(g, 3, 4)) @ lm.lazy(randn(g, 4, 2, dtype=torch.float32)), TypeError,
         ["float64", "float32"]),
        (lambda g: lm.lazy(randn(g, 3, 4)) + lm.lazy(randn(g, 4, 3)), ValueError, ["(3, 4)", "(4, 3)"]),
        (lambda g: lm.lazy(randn(g, 3, 4))[5], IndexError, ["5", "size 3"]),
        (lambda g: lm.lazy(randn(g, 3, 4))[:, -5:[1]], TypeError, []),
        (lambda g: lm.symbol("S", (3,)), ValueError, ["(3,)"]),
        (lambda g: lm.symbol("Q", (3.5, 3)), TypeError, ["3.5", "float", "'Q'"]),
        (lambda g: lm.symbol("Q", (True, 3)), TypeError, ["True", "bool"]),
        (lambda g: lm.symbol("Q", 3), TypeError, ["sequence"]),
        (lambda g: lm.lazy(randn(g, 3, 4)) * [2], TypeError, ["list", "(3, 4)"]),
        (lambda g: lm.lazy(randn(g, 3, 4)) / 0, ZeroDivisionError, ["(3, 4)"]),
    ],
)
def test_bad_input_names_the_fault(gen, make, err, words):
    with pytest.raises(err) as info:
        make(gen)
    for w in words:
        assert w in str(info.value)


def test_out_of_range_is_both_index_and_value_error(gen):
    X = lm.lazy(randn(gen, 3, 4))
    with pytest.raises(ValueError):
        X[:, 7]
    with pytest.raises(IndexError):
        X[[0, 9]]


def test_mixed_devices_rejected():
    a = lm.lazy(torch.randn(3, 4))
    b = lm.symbol("B", (4, 2), device="meta")
    with pytest.raises(ValueError, match="devices differ"):
        a @ b


def test_symbol_has_no_data():
    X = lm.symbol("W_E", (10, 4)) @ lm.symbol("W_Q", (4, 3))
    with pytest.raises(lm.SymbolHasNoData, match="W_E"):
        X.to_dense()


def test_deep_chain_builds_plans_and_evaluates(gen):
    mats = [torch.eye(4, dtype=torch.float64) + 0.01 * randn(gen, 4, 4) for _ in range(10_000)]
    X = lm.lazy(mats[0])
    for m in mats[1:]:
        X = X @ m
    assert X.plan().flops == 2 * 4 * 4 * 4 * 9_999
    ref = mats[0]
    for m in mats[1:]:
        ref = ref @ m
    assert_close(X.to_dense(), ref, rtol=1e-8)


def test_wide_sum_builds_plans_and_evaluates(gen):
    mats = [randn(gen, 3, 3) for _ in range(10_000)]
    X = lm.lazy(mats[0])
    for m in mats[1:]:
        X = X + m
    assert_close(X.to_dense(), torch.stack(mats).sum(0), rtol=1e-10)


def test_to_is_lazy_and_casts(gen):
    a, b = randn(gen, 4, 5), randn(gen, 5, 3)
    X = (lm.lazy(a) @ b).to(torch.float32)
    assert X.dtype == torch.float32
    assert_close(X.to_dense().double(), a @ b, rtol=1e-5)
    assert (lm.lazy(a) @ b).to(dtype=torch.float64) is lm.lazy(a) @ b


@pytest.mark.filterwarnings("ignore:Casting complex values")
def test_complex_to_real_cast_is_not_pushed_into_factors(gen):
    a = torch.complex(randn(gen, 3, 3), randn(gen, 3, 3))
    b = torch.complex(randn(gen, 3, 3), randn(gen, 3, 3))
    X = (lm.lazy(a) @ lm.lazy(b)).to(torch.float64)
    assert_close(X.to_dense(), (a @ b).real)


def test_networkx_view(gen):
    A = lm.lazy(randn(gen, 4, 5), name="A")
    B = lm.lazy(randn(gen, 5, 3), name="B")
    X = (A @ B) + (A @ B) * 2
    g = X.to_networkx()
    ops = sorted(d["op"] for _, d in g.nodes(data=True))
    assert ops == ["add", "leaf", "leaf", "matmul", "scale"]
    assert g.nodes[g.graph["root"]]["shape"] == (4, 3)
    assert all(d["dtype"] == "torch.float64" for _, d in g.nodes(data=True))


def test_python_sum_of_expressions(gen):
    mats = [randn(gen, 3, 2) @ randn(gen, 2, 4) for _ in range(3)]
    X = sum(lm.lazy(m) for m in mats)
    assert lm.is_lazy(X)
    assert_close(X.to_dense(), mats[0] + mats[1] + mats[2])
    with pytest.raises(TypeError, match="cannot add int"):
        lm.lazy(mats[0]) + 1


def test_interning_tells_dtypes_apart(gen):
    x = lm.lazy(randn(gen, 3, 3))
    real, cplx = 2 * x, (2 + 0j) * x
    assert real.dtype == torch.float64 and cplx.dtype == torch.complex128 and real is not cplx
    assert cplx.to_dense().dtype == torch.complex128


def test_symbol_accepts_integer_like_dims():
    import numpy as np

    S = lm.symbol("S", (np.int64(3), torch.Size([4])[0]))
    assert S.shape == (3, 4) and isinstance(S.shape[0], int)


def test_numbers_of_any_kind_scale(gen):
    """``Fraction``, ``Decimal``-free numbers.Real and numpy scalars are converted, like torch."""
    from fractions import Fraction

    import numpy as np

    a = randn(gen, 3, 4)
    X = lm.lazy(a)
    for k in (Fraction(1, 3), np.float32(0.25), np.int64(3), np.complex128(1 - 2j)):
        assert_close((X * k).to_dense(), a * complex(k) if isinstance(k, complex) else a * float(k))
        assert_close((k * X).to_dense(), (X * k).to_dense())
    assert_close((X / Fraction(2, 3)).to_dense(), a * 1.5)


def test_broadcast_shapes_matches_torch():
    from lazymat.expr import broadcast_shapes

    cases = [((), ()), ((3,), ()), ((1, 4), (3, 1)), ((2, 1, 5), (4, 1)), ((0,), (1,)), ((7,), (7,), (1,))]
    for shapes in cases:
        assert broadcast_shapes(*shapes) == tuple(torch.broadcast_shapes(*shapes))
    for bad in [((2,), (3,)), ((2, 3), (4, 3)), ((0,), (2,))]:
        with pytest.raises(ValueError, match="do not broadcast"):
            broadcast_shapes(*bad)
        with pytest.raises(RuntimeError):
            torch.broadcast_shapes(*bad)


def test_casting_the_leaves_keeps_the_product_structure(gen):
    """A cast of a lone leaf is the cast of the result: it goes to the leaf (the product of
    cast leaves stays a product of leaves for the planner and the spectral routes)."""
    from lazymat.rewrite import canonical

    a, b = randn(gen, 6, 2), randn(gen, 2, 5)
    X = lm.lazy(a, name="A").half() @ lm.lazy(b, name="B").half()
    (term,) = canonical(X).terms
    assert [f.base.name for f in term.factors] == ["A", "B"]
    assert_close(X.to_dense().double(), (a.half() @ b.half()).double(), rtol=0)
    Y = (2.0 * lm.lazy(a)).half()  # a scaled view is not lone: rounded once, like torch
    torch.testing.assert_close(Y.to_dense(), (2.0 * a).half(), rtol=0, atol=0)
