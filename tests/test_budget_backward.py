"""The backward pass under a memory budget: a batched call whose leaves require grad recomputes
itself with autograd one block of its batch at a time, so the backward holds one block's
footprint beside the gradients it returns, within the budget wherever one member's fits it.

Before, the backward recomputed the whole batch at once: 64 QK circuits of a 1000-token
vocabulary (``benchmarks/count_budget_backward.py``) held 20.6 MB in the backward of ``svdvals``
under a 2.1 MB budget. Gradients equal the unbudgeted call's and eager float64 torch's (on the
dense matrix, or on the small core for eigenvalues, whose zero eigenvalues have no gradient);
memory is counted allocation by allocation (no timing); a refused budget names the user's call.
"""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_budget_minimum_exact import named_minimum
from test_budget_peak import Allocated
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


def _sorted_desc(v):
    return torch.sort(v, dim=-1, descending=True).values


# op: (lazymat call, eager reference on (D, L, R): the dense matrix and its two factors, square?)
OPS = {
    "svdvals": (lambda X, **k: LA.svdvals(X, **k), lambda D, L, R: torch.linalg.svdvals(D), False),
    "nuc": (lambda X, **k: LA.matrix_norm(X, "nuc", **k), lambda D, L, R: torch.linalg.matrix_norm(D, "nuc"),
            False),
    "2": (lambda X, **k: LA.matrix_norm(X, 2, **k), lambda D, L, R: torch.linalg.matrix_norm(D, 2), False),
    "fro": (lambda X, **k: LA.matrix_norm(X, **k), lambda D, L, R: torch.linalg.matrix_norm(D), False),
    "trace": (lambda X, **k: LA.trace(X, **k), lambda D, L, R: D.diagonal(dim1=-2, dim2=-1).sum(-1), True),
    "diagonal": (lambda X, **k: LA.diagonal(X, **k), lambda D, L, R: D.diagonal(dim1=-2, dim2=-1), True),
    # |eigenvalues| of L R: those of the small core R L (the others are zero), eager on the core
    "eigvals": (lambda X, **k: LA.eigvals(X, **k).abs(),
                lambda D, L, R: _sorted_desc(torch.linalg.eigvals(R @ L).abs()), True),
    # L R is made Hermitian below (R = L^T): its nonzero eigenvalues are those of L^T L
    "eigvalsh": (lambda X, **k: _sorted_desc(LA.eigvalsh(X, **k)),
                 lambda D, L, R: _sorted_desc(torch.linalg.eigvalsh(L.mT @ L)), True),
}


# the calls themselves, for counting their backward (an answer's own backward, a sort's or an
# abs's, runs before the call's and is no part of it)
RAW = {**{op: fn for op, (fn, _, _) in OPS.items()}, "eigvals": lambda X, **k: LA.eigvals(X, **k),
       "eigvalsh": lambda X, **k: LA.eigvalsh(X, **k)}


@st.composite
def batched_products(draw):
    """``(op, leaves, lazy X, dense D, L, R)``: ``X = L @ R`` for ``L`` a product of one or two
    leaves ``(m, r)``, ``R`` one leaf ``(r, n)`` (``L^T`` for eigvalsh), a batch of 2-4 members
    (one or two dims) on some of the leaves; float64 leaves requiring grad, r < min(m, n)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    op = draw(st.sampled_from(sorted(OPS)))
    square = OPS[op][2]
    batch = draw(st.sampled_from([(2,), (3,), (4,), (2, 2)]))
    m = draw(st.integers(3, 6))
    n = m if square else draw(st.integers(3, 6))
    r = draw(st.integers(1, 2))
    widths = [m, *([draw(st.integers(2, 4))] if draw(st.booleans()) else []), r]
    on_batch = [draw(st.booleans()) for _ in widths[1:]]
    on_batch[-1] = True  # (at least one leaf carries the batch)

    def leaf(rows, cols, batched):
        return torch.randn(*(batch if batched else ()), rows, cols, generator=g, dtype=torch.float64,
                           requires_grad=True)

    ts = [leaf(a, b, on) for a, b, on in zip(widths[:-1], widths[1:], on_batch, strict=True)]
    L_lazy, L = lm.lazy(ts[0]), ts[0]
    for t in ts[1:]:
        L_lazy, L = L_lazy @ lm.lazy(t), L @ t
    if op == "eigvalsh":
        X, R = L_lazy @ L_lazy.mT, L.mT
    else:
        ts.append(leaf(r, n, draw(st.booleans())))
        X, R = L_lazy @ lm.lazy(ts[-1]), ts[-1]
    return op, ts, X, L @ R, L, R


def _well_separated(values) -> bool:
    """Values apart (and from zero) enough for their gradients to be well defined."""
    v = values.detach().reshape(-1, values.shape[-1])
    if v.shape[-1] > 1 and (v[:, :-1] - v[:, 1:]).abs().min() < 1e-3:
        return False
    return bool(v.abs().min() > 1e-3)


@SETTINGS
@given(batched_products(), st.sampled_from([1, 2, 8, 64]))
def test_gradients_under_a_budget_equal_unbudgeted_and_eager(case, times):
    op, ts, X, D, L, R = case
    fn, eager, _ = OPS[op]
    budget = times * named_minimum(X, fn)
    X.clear_cache()
    out = fn(X, memory_budget=budget)
    expected = eager(D, L, R)[..., :out.shape[-1]]
    assert_close(out, expected, rtol=1e-8)
    if op in ("svdvals", "nuc", "2", "eigvals", "eigvalsh"):
        assume(_well_separated(eager(D, L, R)[..., :min(L.shape[-1], out.shape[-1])]))
        assume(op not in ("svdvals", "eigvals", "eigvalsh") or out.shape[-1] == L.shape[-1])
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * w).sum(), ts, allow_unused=True)
    X.clear_cache()
    plain = torch.autograd.grad((fn(X) * w).sum(), ts, allow_unused=True)
    want = torch.autograd.grad((expected * w).sum(), ts, allow_unused=True)
    for a, b, c in zip(got, plain, want, strict=True):
        zero = torch.zeros_like(c)
        assert_close(a if a is not None else zero, b if b is not None else zero, rtol=1e-8)
        assert_close(a if a is not None else zero, c, rtol=1e-7)


def _backward_bytes(fn, X, ts, budget) -> tuple[int, int]:
    """Bytes allocated during the backward beside the gradients it returns."""
    X.clear_cache()
    out = fn(X, memory_budget=budget)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    with Allocated() as counted:  # (the answer's gradient w is the backward's operand: made before)
        grads = torch.autograd.grad(out, ts, w, allow_unused=True)
    return counted.peak - sum(g.untyped_storage().nbytes() for g in grads if g is not None)


def _one_member_bytes(fn, X, ts, budget, members: int = 1) -> int:
    """Bytes the call on the first member alone (or the first two of the last batch dim longer
    than one) allocates in its backward, its gradients included: the footprint of one block."""
    wide = max(d for d, size in enumerate(X.shape[:-2]) if size > 1)
    one = X[tuple(slice(0, members if d == wide else 1) for d in range(X.ndim - 2))]
    one.clear_cache()
    out = fn(one, memory_budget=budget)
    w = torch.ones_like(out)
    with Allocated() as counted:
        torch.autograd.grad(out, ts, w, allow_unused=True)
    return counted.peak


@SETTINGS
@given(batched_products(), st.sampled_from([2, 3, 8]))
def test_the_backward_holds_one_block_beside_its_gradients(case, times):
    """Under a budget of a few members' backward footprints, the backward pass allocates at most
    the budget beside the gradients it returns (the whole batch's recompute, as before, did not),
    or the footprint of two members where twice one member's fits it but two members' is more
    (a batch's layout copies what one member reads as views): the blocks are sized by
    measuring them."""
    op, ts, X, D, L, R = case
    fn = RAW[op]
    budget = max(times * _one_member_bytes(fn, X, ts, 2**40), named_minimum(X, fn))
    bound = max(budget, _one_member_bytes(fn, X, ts, budget, members=2))
    assert _backward_bytes(fn, X, ts, budget) <= bound


HEADS, VOCAB, WIDTH, HEAD = 16, 300, 32, 4


def _circuits(hermitian: bool = False):
    g = torch.Generator().manual_seed(0)
    E = torch.randn(VOCAB, WIDTH, generator=g, dtype=torch.float64)
    Q, K = (torch.randn(HEADS, WIDTH, HEAD, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    e, q, k = lm.lazy(E), lm.lazy(Q), lm.lazy(K)
    return (e @ q @ q.mT @ e.mT if hermitian else e @ q @ k.mT @ e.mT), [Q, K]


@pytest.mark.parametrize("op", ["svdvals", "nuc", "2", "eigvalsh", "fro"])
def test_qk_circuits_backward_within_the_budget(op):
    """16 QK circuits of a 300-token vocabulary: under a budget of four heads' backward, the
    backward stays within it, while the whole batch's backward (unbudgeted) needs more. (Not
    eigvals, nor trace: their backward is below one head's gradients to the leaves.)"""
    fn = RAW[op]
    X, ts = _circuits(op == "eigvalsh")
    budget = max(4 * _one_member_bytes(fn, X, ts, 2**40), named_minimum(X, fn))
    X, ts = _circuits(op == "eigvalsh")
    whole = _backward_bytes(fn, X, ts, 2**40)  # a budget that fits the batch: one block
    assert whole > budget
    X, ts = _circuits(op == "eigvalsh")
    assert _backward_bytes(fn, X, ts, budget) <= budget


def test_a_member_over_the_budget_runs_alone():
    """A budget below one member's backward: one member a block, the least the backward holds
    (the gradients are still right)."""
    X, ts = _circuits()
    least = named_minimum(X, LA.svdvals)
    X, ts = _circuits()
    one = _one_member_bytes(LA.svdvals, X, ts, least)
    X, ts = _circuits()
    assert _backward_bytes(LA.svdvals, X, ts, least) <= one
    X, ts = _circuits()
    got = torch.autograd.grad(LA.svdvals(X, memory_budget=least).sum(), ts)
    X, ts2 = _circuits()
    want = torch.autograd.grad(torch.linalg.svdvals(X.to_dense())[..., :HEAD].sum(), ts2)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-7)


@pytest.mark.parametrize("op", ["eigvals", "eigvalsh", "svdvals", "eig", "eigh", "svd"])
def test_a_refused_budget_names_the_users_call_and_shape(op):
    X, _ = _circuits(hermitian=op in ("eigvalsh", "eigh"))
    with pytest.raises(lm.BudgetTooSmall) as info:
        getattr(LA, op)(X, memory_budget=1)
    message = str(info.value)
    assert message.startswith(f"{op} of a ({HEADS}, {VOCAB}, {VOCAB}) float64 expression"), message
    X.clear_cache()
    getattr(LA, op)(X, memory_budget=info.value.minimum)  # the minimum it names runs


@SETTINGS
@given(st.integers(2, 12), st.integers(1, 6), st.sampled_from(["svdvals", "svd", "nuc", "matrix_rank"]))
def test_explain_under_a_budget_reports_the_blocked_run(heads, cut, op):
    """Under a budget that cuts the batch, ``explain`` names the blocked run's peak (within the
    budget; once the whole batch's, above it), and the call allocates at most that."""
    g = torch.Generator().manual_seed(heads)
    E = lm.lazy(torch.randn(60, 16, generator=g, dtype=torch.float64))
    Q, K = (lm.lazy(torch.randn(heads, 16, 3, generator=g, dtype=torch.float64)) for _ in range(2))
    X = E @ Q @ K.mT @ E.mT
    explained = "svdvals" if op in ("nuc", "matrix_rank") else op
    whole = lm.explain(X, explained, memory_budget=2**40).planned.peak_bytes
    least = named_minimum(X, {"svdvals": LA.svdvals, "svd": LA.svd, "nuc": OPS["nuc"][0],
                       "matrix_rank": LA.matrix_rank}[op])
    budget = least + (whole - least) * cut // 8  # from the least up to the whole batch's peak
    assume(budget < whole)
    report = lm.explain(X, op if op != "nuc" else "matrix_norm", memory_budget=budget,
                        **({"ord": "nuc"} if op == "nuc" else {}))
    assert report.planned.peak_bytes <= budget < whole  # (blocks, or a cheaper route that fits)
    X.clear_cache()
    with Allocated() as counted:
        out = {"svdvals": LA.svdvals, "svd": LA.svd, "nuc": OPS["nuc"][0],
               "matrix_rank": LA.matrix_rank}[op](X, memory_budget=budget)
    answer = sum(t.untyped_storage().nbytes() for t in (out if isinstance(out, tuple) else (out,)))
    assert counted.peak - answer <= report.planned.peak_bytes


@pytest.mark.parametrize("complex_", [False, True])
def test_the_hermitian_check_runs_in_blocks_of_the_batch(monkeypatch, complex_):
    """eigvalsh's Hermitian check runs through the one blocking mechanism (``_in_blocks``): under
    a budget that holds the triplets but not every member's ``(n, k)`` temporary, in blocks of
    the batch, with torch's answer, and a member that is not Hermitian is still named."""
    from lazymat import progress

    seen = []
    blocks = progress.blocks

    def recording(items, total=None, desc="", **kw):
        seen.append((desc, total))
        return blocks(items, total=total, desc=desc, **kw)

    monkeypatch.setattr(progress, "blocks", recording)
    dtype = torch.complex128 if complex_ else torch.float64
    g = torch.Generator().manual_seed(3)
    A = torch.randn(12, 200, 3, generator=g, dtype=dtype)
    X = lm.lazy(A) @ lm.lazy(A).mH
    least = named_minimum(X, lambda X, **k: LA.eigvalsh(X, full=True, **k))
    X.clear_cache()
    w = LA.eigvalsh(X, full=True, memory_budget=least)
    checks = [total for desc, total in seen if desc == "lazymat hermitian check"]
    assert checks and checks[0] > 1
    assert_close(w, torch.linalg.eigvalsh(A @ A.mH), rtol=1e-9)
    B = A.clone()
    B[7, 0, 0] += 1  # member 7: A B^H is not Hermitian
    Y = lm.lazy(A) @ lm.lazy(B).mH
    with pytest.raises(ValueError, match=r"batch member \(7,\)"):
        LA.eigvalsh(Y, memory_budget=least)


@pytest.mark.parametrize("op", ["svd", "eigh", "eig"])
def test_vectors_differentiate_in_blocks(op):
    """svd's, eigh's and eig's vectors under a budget of two members' backward (blocks of a batch
    of 8; a block's route, dense for a small block, gives its vectors other signs than the
    forward's: they are turned to the forward's), gradients as eager float64 torch's through a
    loss that no sign changes."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(8, 30, 3, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 30 if op == "eig" else 20, generator=g, dtype=torch.float64, requires_grad=True)

    def product():
        return A @ (A.mT if op == "eigh" else B)

    def projector(V):  # sign- (phase-) free
        return (V @ V.mH).diagonal(dim1=-2, dim2=-1).abs().pow(3).sum()

    X = lm.lazy(A) @ (lm.lazy(A).mT if op == "eigh" else lm.lazy(B))
    if op == "svd":
        call = LA.svd
        def loss(out):
            return (out[1] * torch.arange(1.0, 4.0, dtype=torch.float64)).sum() + projector(out[0])
        eager = (lambda U, S, Vh: (U[..., :3], S[..., :3], Vh[..., :3, :]))(
            *torch.linalg.svd(product(), full_matrices=False))
    elif op == "eigh":
        call = LA.eigh
        def loss(out):
            return out[0].pow(2).sum() + projector(out[1])
        w, Q = torch.linalg.eigh(product())
        eager = (w[..., -3:], Q[..., -3:])
    else:  # eig: the nonzero eigenpairs of A B, by descending modulus; eager on the 3 x 3 core B A
        call = LA.eig
        def loss(out):
            return out[0].abs().pow(2).sum() + projector(out[1] / torch.linalg.vector_norm(out[1], dim=-2,
                                                                                          keepdim=True))
        vals, W = torch.linalg.eig(B @ A)
        order = torch.argsort(vals.abs(), dim=-1, descending=True)
        vals, W = vals.gather(-1, order), W.gather(-1, order[..., None, :].expand_as(W))
        eager = (vals, A.to(W.dtype) @ W)
    one = _one_member_bytes(lambda X, **k: call(X, **k)[0], X, [A, B], 2**40)
    budget = max(2 * one, named_minimum(X, call))
    X.clear_cache()
    got = torch.autograd.grad(loss(call(X, memory_budget=budget)), [A, B], allow_unused=True)
    want = torch.autograd.grad(loss(eager), [A, B], allow_unused=True)
    for a, b in zip(got, want, strict=True):
        if a is None and b is None:
            continue
        assert_close(a if a is not None else torch.zeros_like(b), b if b is not None else torch.zeros_like(a),
                     rtol=1e-7)


@SETTINGS
@given(batched_products(), st.sampled_from([1, 2, 8, 64]))
def test_singular_vectors_under_a_budget_differentiate_as_eager(case, times):
    """Gradients through svd's vectors (a loss no sign changes: the projector ``U U^T``) under a
    budget equal eager float64 torch's, whatever route the forward, the recompute and each block
    take."""
    _, ts, X, D, L, R = case
    budget = times * named_minimum(X, LA.svd)
    X.clear_cache()
    U, S, Vh = LA.svd(X, memory_budget=budget)
    k = S.shape[-1]
    # eager, differentiable and free of D's repeated zero values: the SVD of the small core
    # R_L R_R^T of the QRs L = Q_L R_L, R^T = Q_R R_R (X = Q_L (R_L R_R^T) Q_R^T)
    QL, RL = torch.linalg.qr(L)
    QR, RR = torch.linalg.qr(R.mT)
    Uc, Se, Vhc = torch.linalg.svd(RL @ RR.mT)
    Ue, Vhe = QL @ Uc, Vhc @ QR.mT
    assume(k == L.shape[-1] and _well_separated(Se))
    w = torch.randn(U.shape[:-1], dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def loss(U, Vh):
        return ((U @ U.mT).diagonal(dim1=-2, dim2=-1) * w).sum() + (Vh.mT @ Vh).diagonal(
            dim1=-2, dim2=-1).pow(2).sum()

    got = torch.autograd.grad(loss(U, Vh), ts, allow_unused=True)
    want = torch.autograd.grad(loss(Ue, Vhe), ts, allow_unused=True)
    for a, b in zip(got, want, strict=True):  # (a gradient that is zero is rounding noise: atol)
        assert_close(a if a is not None else torch.zeros_like(b), b, rtol=1e-6, atol=1e-9)


class _LeafShaped(TorchDispatchMode):
    """Counts the new tensors (not views of an op's inputs) torch ops make of ``shape``."""

    def __init__(self, shape: tuple) -> None:
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = tree_flatten((args, kwargs))[0]
        inputs = {id(t.untyped_storage()) for t in flat if isinstance(t, torch.Tensor)}
        self.count += sum(tuple(t.shape) == self.shape and id(t.untyped_storage()) not in inputs
                          for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


@pytest.mark.parametrize("op", ["svdvals", "eigvalsh"])
def test_a_blocks_gradient_is_the_blocks_size(op):
    """Under the least budget (blocks of one head), the backward makes each batched leaf's
    gradient once, the sum it returns: a block is read off blocks of the leaves, so its gradient
    is the block's size (differentiated through ``X[key]``, each block's was a whole leaf of
    zeros but for its block: 17 leaf-sized tensors for svdvals' 16 heads). The gradients are
    eager float64 torch's."""
    fn = RAW[op]
    X, ts = _circuits(op == "eigvalsh")
    least = named_minimum(X, fn)
    X, ts = _circuits(op == "eigvalsh")
    out = fn(X, memory_budget=least).sum()
    with _LeafShaped(tuple(ts[0].shape)) as made:
        got = torch.autograd.grad(out, ts, allow_unused=True)
    assert made.count <= len(ts), made.count
    X, ts2 = _circuits(op == "eigvalsh")
    want = torch.autograd.grad(fn(X).sum(), ts2, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, rtol=1e-7)
