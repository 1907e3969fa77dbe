"""GEMM layouts (lazymat.layout): every product reads its operands as stored where a choice of
result layout allows it, with the same values as torch; checked on the strides that reach
torch, never by timing."""

import dataclasses
import itertools
import math

import opt_einsum as oe
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

import lazymat as lm
from lazymat import layout, network
from lazymat import linalg as LA
from lazymat.plan import clear_plan_tables
from lazymat.rewrite import canonical

from conftest import assert_close, randn


class Products(TorchFunctionMode):
    """Records the operands and result (``Q`` of a QR) of every matmul, einsum, mm, bmm and QR
    that reaches torch (a network's pairwise steps run as mm and bmm)."""

    def __init__(self):
        super().__init__()
        self.calls = []  # (name, equation or None, operands, result)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in ("matmul", "__matmul__"):
            self.calls.append(("matmul", None, args[:2], out))
        elif name in ("mm", "bmm"):
            self.calls.append((name, None, args[:2], out))
        elif name == "linalg_qr":
            self.calls.append(("qr", None, args[:1], out[0]))
        elif name == "einsum":
            ops = args[1:] if len(args) > 2 else tuple(args[1])
            self.calls.append(("einsum", args[0], ops, out))
        return out


def setup_module():
    """The tests below check the layout rule on small shapes: apply it at any size (products
    under ``MIN_LAYOUT_MACS`` are otherwise written as asked; see the last test). Plans kept by
    shapes carry the threshold they were made under (a step's ``plain`` flag): an earlier
    module's plan of the same shapes would skip the rule, so they are forgotten here and after."""
    global _min_macs
    _min_macs, layout.MIN_LAYOUT_MACS = layout.MIN_LAYOUT_MACS, 0
    clear_plan_tables()


def teardown_module():
    layout.MIN_LAYOUT_MACS = _min_macs
    clear_plan_tables()


def stored(gen, shape, transposed, dtype=torch.float64):
    """A tensor of ``shape`` stored row-major, or (``transposed``) as the ``.mT`` of a row-major one."""
    if transposed:
        return randn(gen, *shape[:-2], shape[-1], shape[-2], dtype=dtype).mT
    return randn(gen, *shape, dtype=dtype)


# ---- layout.matmul ----------------------------------------------------------------------------
@settings(max_examples=120, deadline=None)
@given(m=st.integers(1, 7), k=st.integers(1, 7), n=st.integers(1, 7),
       batch_a=st.sampled_from([(), (3,), (1,), (2, 3)]), batch_b=st.sampled_from([(), (3,), (2, 1)]),
       ta=st.booleans(), tb=st.booleans(), complex_=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_matches_torch_and_writes_long_dim_as_rows(m, k, n, batch_a, batch_b, ta, tb, complex_, seed):
    """The GEMM that reaches torch writes a result at least as tall as wide, and a square one
    from operands not both transposed; the values are torch's. Batches that broadcast against
    each other (``(2, 3)`` against ``(2, 1)``) go to einsum, which copies no broadcast."""
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    a = stored(gen, (*batch_a, m, k), ta, dtype)
    b = stored(gen, (*batch_b, k, n), tb, dtype)
    with Products() as seen:
        out = layout.matmul(a, b)
    assert_close(out, torch.matmul(a, b))
    (name, _, (x, y), res), = seen.calls
    broadcast = batch_a != batch_b and math.prod(batch_a) > 1 and math.prod(batch_b) > 1 and k > 1
    assert name == ("einsum" if broadcast else "matmul")
    if broadcast:
        return
    assert res.shape[-2] >= res.shape[-1]
    if res.shape[-2] == res.shape[-1]:
        assert not (layout.is_transposed(x) and layout.is_transposed(y))


@pytest.mark.parametrize("rows, cols, ta, tb, expected", [
    (50, 4, False, False, False), (50, 4, True, True, False), (4, 50, False, False, True),
    (4, 50, True, False, True), (6, 6, True, True, True), (6, 6, True, False, False)])
def test_writes_transposed(rows, cols, ta, tb, expected):
    assert layout.writes_transposed(rows, cols, ta, tb) is expected


def test_matmul_of_a_wide_product_writes_its_transpose(gen):
    """``W_K^T @ W_E^T`` runs as ``(W_E @ W_K)^T``: both read as stored, the vocabulary dim as
    rows, the result a free view."""
    E, K = randn(gen, 50, 12), randn(gen, 12, 4)
    with Products() as seen:
        out = layout.matmul(K.mT, E.mT)
    (_, _, (x, y), res), = seen.calls
    assert x.data_ptr() == E.data_ptr() and x.is_contiguous() and y.is_contiguous()
    assert layout.is_transposed(out) and out.data_ptr() == res.data_ptr()
    assert_close(out, K.mT @ E.mT)


def test_to_dense_is_row_major_like_torch(gen):
    """Only intermediates change layout: ``to_dense`` writes its result as torch.matmul does."""
    A, B, C = randn(gen, 3, 40), randn(gen, 40, 5), randn(gen, 5, 60)
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
    out = X.to_dense()
    assert out.is_contiguous()
    assert_close(out, A @ B @ C)
    assert (lm.lazy(C).mT @ lm.lazy(B).mT).to_dense().is_contiguous()


@pytest.mark.parametrize("op", ["svd", "svdvals", "eigvals"])
def test_inner_products_write_the_long_dim_as_rows(gen, op, monkeypatch, factored_route):
    """Inside the routes, every product written as a matrix has its long dim as rows."""
    E, Q, K = randn(gen, 200, 30), randn(gen, 30, 5), randn(gen, 30, 5)
    X = lm.lazy(E) @ lm.lazy(Q) @ lm.lazy(K).T @ lm.lazy(E).T
    with Products() as seen:
        getattr(LA, op)(X)
    written = [res for name, _, _, res in seen.calls if name == "matmul"]
    assert written and all(r.shape[-2] >= r.shape[-1] for r in written), [tuple(r.shape) for r in written]
    factored_route.assert_forced(X)


# ---- contraction_output ----------------------------------------------------------------------
SIZES = {"a": 50, "b": 6, "c": 700, "h": 3}


@pytest.mark.parametrize("first, second, kept, expected", [
    ("ab", "ca", "bc", "cb"),    # W_Q^T W_E^T (c the vocabulary): written as W_E W_Q
    ("ca", "ab", "bc", "cb"),    # the same whichever operand comes first
    ("ab", "bc", "ac", "ca"),    # (50 x 6) (6 x 700): the 700 as rows
    ("ca", "ab", "cb", "cb"),    # already tall: the same order
    ("cb", "ca", "ba", "ab"),    # contracting the vocabulary: the larger free dim (50) as rows
    ("hab", "hcb", "hac", "hca"),  # batch labels first, then the long free dim
])
def test_contraction_output(first, second, kept, expected):
    assert layout.contraction_output(first, second, kept, SIZES) == expected


@pytest.mark.parametrize("first, second, kept, expected", [
    ("ab", "ac", "bc", None),    # both free dims the same size, operands read alike either way
    ("ba", "ac", "bc", "bc"),    # NN as it stands
    ("ab", "ca", "bc", "cb"),    # TT as it stands: written transposed
])
def test_contraction_output_square(first, second, kept, expected):
    assert layout.contraction_output(first, second, kept, {"a": 9, "b": 4, "c": 4}) == expected


def _storage_orders(net):
    """Per step of ``net``'s program: the storage label orders of its two operands (the inputs
    as the program reads them, each result in its einsum's output order)."""
    live = list(net.labels)
    orders = []
    for inds, order, run, _, _ in net.program:
        ins = [live.pop(i) for i in inds]
        ins = [ins[i] for i in order]
        terms, out = run.split("->")
        local = dict(zip("".join(terms.split(",")), "".join(ins), strict=True))
        orders.append(tuple(ins))
        live.append("".join(local[c] for c in out))
    return orders


def _misaligned(first, second):
    return [c for c in first if c in second] != [c for c in second if c in first]


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 40), min_size=2, max_size=5), batch=st.sampled_from([(), (3,), (2, 3)]),
       flips=st.lists(st.booleans(), min_size=6, max_size=6), kind=st.sampled_from(["trace", "diag", "fro"]),
       seed=st.integers(0, 2**16))
def test_networks_match_dense_and_add_no_misaligned_step(dims, batch, flips, kind, seed):
    """Closed networks of random chains (transposed views, batches) give the dense float64 answer,
    and reordering results for the GEMM layout never leaves a step whose operands store their
    shared labels in different orders (torch would copy one) where the sorted program has none."""
    gen = torch.Generator().manual_seed(seed)
    dims = [*dims, dims[0]] if kind != "fro" else dims
    shapes = list(itertools.pairwise(dims))
    X = D = None
    for (m, n), flip in zip(shapes, flips, strict=False):
        t = stored(gen, (*batch, m, n), flip)
        leaf = lm.lazy(t.mT).mT if flip else lm.lazy(t)
        X, D = (leaf, t) if X is None else (X @ leaf, D @ t)
    if kind == "trace":
        assert_close(LA.trace(X), torch.diagonal(D, dim1=-2, dim2=-1).sum(-1))
    elif kind == "diag":
        assert_close(LA.diagonal(X), torch.diagonal(D, dim1=-2, dim2=-1))
    else:
        assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D))
    factors = list(canonical(X).terms[0].factors)
    net = (network.gram_trace(factors, 8, False) if kind == "fro"
           else network.closed_chain(factors, kind == "diag", 8))
    terms = net.eq.split("->")[0].split(",")
    sizes = dict(net.sizes)
    _, info = oe.contract_path(net.eq, *[tuple(sizes[c] for c in t) for t in terms], shapes=True,
                               optimize=list(net.path))
    operands = [(-1 - c, network._base_order(t, tr)) for t, (c, tr) in zip(terms, net.ids, strict=True)]
    every_step = set(range(len(net.program)))
    sorted_program, _, _ = network._program_pass(info, list(operands), every_step)
    sorted_net = dataclasses.replace(net, program=sorted_program)
    baseline = sum(_misaligned(*o) for o in _storage_orders(sorted_net) if len(o) == 2)
    chosen = sum(_misaligned(*o) for o in _storage_orders(net) if len(o) == 2)
    assert chosen <= baseline


# ---- the gpt2-small-like QK circuit --------------------------------------------------------------
@pytest.mark.parametrize("op", ["svd", "svdvals", "matrix_norm", "trace", "eigvals"])
def test_qk_products_write_the_vocabulary_dim_outermost(gen, op):
    """Every product that reads ``W_E`` and writes a vocabulary-long dim writes it outermost: the
    layout ``W_E @ W`` with both operands as stored, not ``W^T @ W_E^T`` (80 against 115 GFLOP/s
    on the issue's CPU). Answers match dense float64."""
    vocab, d_model, d_head = 300, 40, 6
    Ed, Qd, Kd = randn(gen, vocab, d_model), randn(gen, d_model, d_head), randn(gen, d_model, d_head)
    X = lm.lazy(Ed) @ lm.lazy(Qd) @ lm.lazy(Kd).T @ lm.lazy(Ed).T
    with Products() as seen:
        out = getattr(LA, op)(X)
    embedding = Ed.untyped_storage().data_ptr()
    reads_embedding = [c for c in seen.calls
                       if any(t.untyped_storage().data_ptr() == embedding for t in c[2])]
    writes_vocab = [res for *_, res in reads_embedding if vocab in res.shape]
    assert writes_vocab  # the circuit's tall factors were formed here
    for res in writes_vocab:
        dim = res.shape.index(vocab)
        assert res.stride(dim) == max(res.stride()), (res.shape, res.stride())
    D = Ed @ Qd @ Kd.T @ Ed.T
    if op == "svd":
        U, S, Vh = out
        assert_close(U @ torch.diag(S) @ Vh, D)
    elif op == "svdvals":
        assert_close(out, torch.linalg.svdvals(D)[:d_head])
    elif op == "matrix_norm":
        assert_close(out, torch.linalg.matrix_norm(D))
    elif op == "trace":
        assert_close(out, torch.trace(D))
    else:
        dense = torch.linalg.eigvals(D)
        top = dense[torch.argsort(dense.abs(), descending=True)][:d_head]
        assert (out[:, None] - top[None, :]).abs().min(-1).values.max() < 1e-9 * top.abs().max()


@pytest.mark.parametrize("op", ["svd", "svdvals"])
def test_each_tall_side_is_factorised_before_the_next_is_formed(gen, op, monkeypatch, factored_route):
    """The SVD routes form one tall side, QR it and drop it before forming the other (as the
    hand-written route does), so two vocabulary-long sides are never held at once."""
    vocab, d_model, d_head = 300, 40, 6
    Ed, Qd, Kd = randn(gen, vocab, d_model), randn(gen, d_model, d_head), randn(gen, d_model, d_head)
    X = lm.lazy(Ed) @ lm.lazy(Qd) @ lm.lazy(Kd).T @ lm.lazy(Ed).T
    with Products() as seen:
        out = getattr(LA, op)(X)
    big = [name for name, _, _, res in seen.calls if name == "qr" or vocab in res.shape]
    assert big[:4] == ["matmul", "qr", "matmul", "qr"], big
    S = out[1] if op == "svd" else out
    assert_close(S, torch.linalg.svdvals(Ed @ Qd @ Kd.T @ Ed.T)[:d_head])
    factored_route.assert_forced(X)


def test_small_products_are_written_as_asked(gen, monkeypatch):
    """Under MIN_LAYOUT_MACS multiply-adds a product is written row-major as asked, however wide
    (the transposed form leaves BLAS's small-matrix kernels: 3-11x slower at these sizes); at
    the threshold the rule applies."""
    monkeypatch.setattr(layout, "MIN_LAYOUT_MACS", 8 * 512 * 16)
    a, b = randn(gen, 8, 512), randn(gen, 512, 16)
    small = layout.matmul(a[:, :511], b[:511])
    assert small.is_contiguous() and not layout.is_transposed(small)
    assert_close(small, a[:, :511] @ b[:511])
    big = layout.matmul(a, b)
    assert layout.is_transposed(big)
    assert_close(big, a @ b)
