"""Both tall sides of a factored spectrum factorised as one stacked batch (issue 12 item 5,
``lm.config(qr_sides="stacked")``): answers against torch on the float64 matrix and against the
sides factorised one after the other, singular values spanning 1e-12..1 (a side CholeskyQR2
cannot certify is redone alone), complex products, fewer torch calls counted, explain's peak
equal to the bytes torch allocates, a budget too small for the stack taking the separate
route, and the same on CUDA when there is one."""

import collections
import contextlib
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_compiled19_factored import circuit, factored_route, qk
from test_compiled_calls import CALLS, answer, equal_answers, outcome
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA
from lazymat.allocated import Allocated
from lazymat.core import outer_reductions
from lazymat.linalg import compiled

from conftest import assert_close, general_path

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ["svdvals", "svdvals full", "svd", "norm 2", "norm -2", "norm nuc", "rank", "cond", "pinv"]
VIEWS = {"view", "transpose", "t", "as_strided", "slice", "select", "permute", "expand", "unsqueeze",
         "squeeze", "alias", "reshape", "diagonal", "detach", "_unsafe_view", "unbind", "_conj", "conj"}
QR_OPS = {"linalg_qr", "linalg_cholesky_ex", "linalg_geqrf"}


class Calls(TorchDispatchMode):
    """Torch calls by kind (a compute call is a kernel launch on a GPU, a view only a dispatch),
    and the shapes of the inputs of the QR routes' calls."""

    def __init__(self):
        super().__init__()
        self.n = collections.Counter()
        self.qr_inputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        self.n["view" if name in VIEWS else "compute"] += 1
        if name in QR_OPS:
            self.qr_inputs.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))

    def stacked(self, members: int = 1) -> bool:
        """Whether a QR route ran on a stack of two sides of ``members`` matrices each (their batch
        flattened: a leading dim of ``2 * members``, which no batch here has; CholeskyQR's calls
        read its Gram matrices)."""
        return any(len(s) == 3 and s[0] == 2 * members for s in self.qr_inputs)


def counted(fn):
    with Calls() as calls:
        out = fn()
    return out, calls


def four_leaves(seed, m, k, r, s, dtype):
    """``A1 @ A2 @ B @ C`` (``m x k``, ``k x r``, ``r x k``, ``k x m``) with exactly the singular
    values ``s`` (``r`` of them, up to rounding): ``L = A1 A2 = Q1 diag(s) M`` and ``R^H = C^H
    B^H = Q2 M^-H``, each side a product of two leaves (``A1 = Q1 T``, ``A2 = T^+ diag(s) M``
    with ``T T^+ = I``), the float64 (complex128) matrix ``Q1 diag(s) Q2^H`` and its exact
    pseudo-inverse ``Q2 diag(1 / s) Q1^H`` (over the nonzero values)."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.complex128 if dtype.is_complex else torch.float64

    def randn(*shape):
        if wide.is_complex:
            return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                                 torch.randn(*shape, generator=g, dtype=torch.float64))
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    Q1, Q2 = torch.linalg.qr(randn(m, r))[0], torch.linalg.qr(randn(m, r))[0]
    M = torch.eye(r, dtype=wide) + 0.1 * randn(r, r)
    T1, T2 = randn(r, k), randn(r, k)
    A1, A2 = Q1 @ T1, torch.linalg.pinv(T1) @ torch.diag(s.to(wide)) @ M
    Rh1, Rh2 = Q2 @ T2, torch.linalg.pinv(T2) @ torch.linalg.inv(M).mH  # R^H = Rh1 @ Rh2
    leaves = [t.to(dtype) for t in (A1, A2, Rh2.mH, Rh1.mH)]
    inverse = torch.where(s > 0, 1 / torch.where(s > 0, s, 1), 0).to(wide)
    return leaves, Q1 @ torch.diag(s.to(wide)) @ Q2.mH, Q2 @ torch.diag(inverse) @ Q1.mH


def product(leaves):
    X = None
    for t in leaves:
        X = lm.lazy(t) if X is None else X @ lm.lazy(t)
    return X


def spectrum_values(r, decades, zeros):
    """``r`` singular values from 1 down to ``10^-decades``, the last ``zeros`` of them exact zeros."""
    s = torch.logspace(0, -decades, r, dtype=torch.float64)
    s[r - zeros:] = 0
    return s


@SETTINGS
@given(seed=st.integers(0, 2**16), m=st.integers(40, 120), k=st.integers(7, 12), r=st.integers(2, 6),
       decades=st.sampled_from([0, 3, 12]), zeros=st.integers(0, 2),
       dtype=st.sampled_from([torch.float64, torch.complex128]), name=st.sampled_from(NAMES),
       route=st.sampled_from(["householder", "cholesky"]))
def test_stacked_answers_are_torchs_and_the_separate_routes(seed, m, k, r, decades, zeros, dtype, name,
                                                            route):
    """Property: a product whose two sides are each formed from two leaves, with singular values
    spanning up to 1e-12..1 (CholeskyQR2 certifies neither an ill-conditioned side nor a rank
    deficient one: that side is redone alone), real or complex, on the factored route by either
    QR route: ``qr_sides="stacked"`` factorises the sides as one batch (counted), and its answers
    are torch's on the float64 matrix and those of the sides factorised one after the other."""
    zeros = min(zeros, r - 1)
    s = spectrum_values(r, decades, zeros)
    leaves, D, P = four_leaves(seed, m, k, r, s, dtype)
    with factored_route(), lm.config(qr=route):
        with lm.config(qr_sides="stacked"):
            got, calls = counted(lambda: answer(name, product(leaves)))
            with general_path():
                general, general_calls = counted(lambda: answer(name, product(leaves)))
        with lm.config(qr_sides="separate"):
            separate, separate_calls = counted(lambda: answer(name, product(leaves)))
    # (only CholeskyQR stacks: a batched Householder QR ran slower than two)
    assert calls.stacked() == general_calls.stacked() == (route == "cholesky")
    assert not separate_calls.stacked()
    top = float(s[0])
    tol = 1e-12 * top * (float(s[0] / s[r - zeros - 1]) ** 2 if name == "pinv" else 1)
    assert_close(got, separate, rtol=1e-9, atol=tol)
    assert_close(general, got, rtol=1e-9, atol=tol)
    rank = r - zeros
    kept = s[:rank]
    if name == "svdvals":
        assert_close(got, kept, rtol=0, atol=1e-13 * top)
    elif name == "svdvals full":
        assert_close(got, torch.cat([kept, kept.new_zeros(m - rank)]), rtol=0, atol=1e-13 * top)
    elif name == "svd":
        assert_close(got, D.to(got.dtype), rtol=0, atol=1e-13 * top)
    elif name == "norm 2":
        assert math.isclose(float(got), top, rel_tol=1e-13)
    elif name == "norm -2":
        assert float(got) == 0.0  # (r < m: the smallest of the m values is an exact zero)
    elif name == "norm nuc":
        assert math.isclose(float(got), float(kept.sum()), rel_tol=1e-13)
    elif name == "rank":
        assert int(got) == int(torch.linalg.matrix_rank(D)) == rank
    elif name == "cond":
        assert math.isinf(float(got))  # (r < m: singular)
    elif name == "pinv":  # (exact to about eps times the kept values' condition number)
        cond = float(kept[0] / kept[-1])
        assert_close(got, P.to(got.dtype), rtol=0, atol=1e-14 * cond * float(P.abs().max()))


@SETTINGS
@given(seed=st.integers(0, 2**16), vocab=st.integers(20, 90), d=st.integers(6, 16), h=st.integers(1, 5),
       rank=st.integers(0, 5), dtype=st.sampled_from([torch.float64, torch.float32]),
       name=st.sampled_from(NAMES), route=st.sampled_from(["householder", "cholesky"]),
       scale=st.sampled_from([None, 0.125, 3.0]), stored_t=st.booleans())
def test_stacked_qk_circuits_compiled_are_the_general_paths(seed, vocab, d, h, rank, dtype, name, route,
                                                            scale, stored_t):
    """Property: a QK circuit ``W_E W_Q W_K^T W_E^T`` (``W_E`` read at both ends, maybe scaled,
    ``W_Q``/``W_K`` maybe stored transposed) under ``qr_sides="stacked"``: the compiled call's
    answers (first call, then the stored closure) are the general path's bit for bit, the sides
    were factorised as one stack (unless ``W_E``'s own QR is cheaper, or the scale multiplies a
    side's value, which the stack would copy), and the answers are the separate route's and
    torch's on the float64 matrix."""
    h, rank = min(h, d), min(rank, min(h, d))
    (E, Q, K), D = qk(seed, vocab, d, h, rank, dtype)
    D = D if scale is None else D * scale
    with factored_route(), lm.config(qr=route):
        with lm.config(qr_sides="stacked"):
            compiled._CALLS.clear()
            first, calls = counted(lambda: outcome(name, circuit(E, Q, K, scale, stored_t)))
            again = outcome(name, circuit(E, Q, K, scale, stored_t))
            with general_path():
                general = outcome(name, circuit(E, Q, K, scale, stored_t))
            got = answer(name, circuit(E, Q, K, scale, stored_t))
            x = circuit(E, Q, K, scale, stored_t)
            direct = outer_reductions(x, name in ("svd", "pinv")) == (None, None)
        with lm.config(qr_sides="separate"):
            separate = answer(name, circuit(E, Q, K, scale, stored_t))
    equal_answers(name, first, general)
    equal_answers(name, again, general)
    if route == "householder":
        assert not calls.stacked()
    elif direct and h < vocab and scale != 3.0:  # (a scale of 3 multiplies the left side's value: apart)
        assert calls.stacked()
    tol = 1e-9 if dtype == torch.float64 else 3e-4
    S = torch.linalg.svdvals(D)
    top = float(S[0]) if len(S) else 1.0
    big = top * (1e5 if name == "pinv" else 1)  # (pinv: values down to 1e-5 of the largest)
    if name in ("svdvals", "svdvals full", "svd", "norm 2", "norm nuc"):
        assert_close(got, separate, rtol=tol, atol=tol * big)
    if name == "svd":
        assert_close(got, D.to(got.dtype), rtol=tol, atol=tol * top)
    elif name == "norm 2":
        assert_close(got, S[0].to(got.dtype) if len(S) else got.new_zeros(()), rtol=tol, atol=tol * top)


@pytest.mark.parametrize("general", [False, True])
@pytest.mark.parametrize("name", ["svdvals", "svd"])
def test_a_side_the_stack_cannot_certify_is_redone_alone(name, general, monkeypatch):
    """Singular values 1..1e-12 (``L`` condition number 1e12, ``R^H`` well conditioned): the
    stack's certificate refuses ``L`` alone, that side is redone pass by pass (the compiled call
    hands it to the general path), and the answers are the exact values and matrix."""
    verdicts = []
    judged = LA.spectrum.certified_members

    def spy(evidence):
        verdicts.append(judged(evidence))
        return verdicts[-1]

    monkeypatch.setattr(LA.spectrum, "certified_members", spy)
    s = torch.logspace(0, -12, 6, dtype=torch.float64)
    leaves, D, _ = four_leaves(3, 200, 9, 6, s, torch.float64)
    with factored_route(), lm.config(qr="cholesky", qr_sides="stacked"):
        compiled._CALLS.clear()
        with general_path() if general else contextlib.nullcontext():
            got = answer(name, product(leaves))
    assert verdicts and verdicts[0] == [False, True], verdicts
    if name == "svd":
        assert_close(got, D, rtol=0, atol=1e-13)
    else:
        assert_close(got, s, rtol=0, atol=1e-13)


@SETTINGS
@given(seed=st.integers(0, 2**16), heads=st.sampled_from([1, 3]), vocab=st.integers(30, 90),
       d=st.integers(8, 16), h=st.integers(1, 6),
       name=st.sampled_from(["svdvals", "svd", "norm nuc", "rank"]))
def test_stacked_batches_of_heads(seed, heads, vocab, d, h, name):
    """Property: a batch of QK heads sharing ``W_E`` (the general path; ``W_E``'s QR shared by the
    batch where cheaper, then the reduced sides stacked): under CholeskyQR the sides of every
    head are factorised as one stack, and the answers are the separate route's and torch's on
    the float64 matrices."""
    h = min(h, d - 1)
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    Q, K = (torch.randn(heads, d, h, generator=g, dtype=torch.float64) for _ in range(2))
    D = E @ Q @ K.mT @ E.mT

    def heads_circuit():
        e = lm.lazy(E.clone())
        return e @ lm.lazy(Q) @ lm.lazy(K).mT @ e.mT

    def call():
        out = CALLS[name](heads_circuit())
        return (out[0] * out[1].unsqueeze(-2)) @ out[2] if name == "svd" else out

    with factored_route(), lm.config(qr="cholesky"):
        with lm.config(qr_sides="stacked"):
            got, calls = counted(call)
        with lm.config(qr_sides="separate"):
            separate, separate_calls = counted(call)
    assert calls.stacked(heads) and not separate_calls.stacked(heads)
    S = torch.linalg.svdvals(D)
    top = float(S.max())
    if name == "rank":
        assert torch.equal(got, separate) and torch.equal(got, torch.linalg.matrix_rank(D).reshape(got.shape))
        return
    assert_close(got, separate, rtol=1e-9, atol=1e-12 * top)
    if name == "svdvals":
        assert_close(got, S[..., :h], rtol=0, atol=1e-12 * top)
    elif name == "svd":
        assert_close(got, D, rtol=0, atol=1e-12 * top)
    else:
        assert_close(got, S.sum(-1), rtol=1e-12)


@pytest.mark.parametrize("general", [False, True])
@pytest.mark.parametrize("name", ["svdvals", "svd"])
def test_stacked_sides_take_fewer_torch_calls(name, general):
    """The count the stack exists for (deterministic, where each call costs a GPU host tens of
    µs): one circuit's ``svd`` and ``svdvals`` under CholeskyQR, compiled or general, take six
    compute calls fewer stacked than separate (each pass's Gram matrix, Cholesky and solve run
    once for both sides; one ``empty`` for the buffer), and no more view dispatches."""
    (E, Q, K), D = qk(1, 600, 24, 8, 8, torch.float64)
    counts = {}
    with factored_route(), lm.config(qr="cholesky"):
        for mode in ("separate", "stacked"):
            with lm.config(qr_sides=mode):
                compiled._CALLS.clear()
                if general:
                    with general_path():
                        _, calls = counted(lambda: outcome(name, circuit(E.clone(), Q, K)))
                else:
                    _, calls = counted(lambda: outcome(name, circuit(E.clone(), Q, K)))
            counts[mode] = calls
    assert counts["stacked"].stacked() and not counts["separate"].stacked()
    assert counts["stacked"].n["compute"] == counts["separate"].n["compute"] - 6, (counts["stacked"].n,
                                                                                 counts["separate"].n)
    assert counts["stacked"].n["view"] <= counts["separate"].n["view"]


@pytest.mark.parametrize("general", [False, True])
@pytest.mark.parametrize("name", ["svdvals", "svd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_explain_reports_the_stacked_peak_that_runs(name, general, dtype):
    """explain's peak of the stacked route is what torch allocates (counted by
    :class:`lazymat.allocated.Allocated`): the values exactly (the buffer of both sides,
    CholeskyQR2's ``X`` of both, its small factors and evidence), the vectors within the one
    ``r x r`` factor explain counts before it is made; and the stacked row is named in the
    report, which the separate route's and Householder's (never stacked) lack."""
    (E, Q, K), _ = qk(2, 700, 24, 8, 8, dtype)
    op = "svd" if name == "svd" else "svdvals"
    r, members = 8, 2
    with factored_route(), lm.config(qr="cholesky", qr_sides="stacked"):
        compiled._CALLS.clear()
        report = lm.explain(circuit(E.clone(), Q, K), op)
        x = circuit(E.clone(), Q, K)
        if general:
            with general_path(), Allocated() as a:
                outcome(name, x)
        else:
            with Allocated() as a:
                outcome(name, x)
    assert any("stacked as one batch" in row.op for row in report.rows), str(report)
    planned = report.planned.peak_bytes
    slack = 0 if name == "svdvals" else members * r * r * dtype.itemsize
    assert 0 <= planned - a.peak <= slack, (a.peak, planned)
    for config in ({"qr_sides": "separate"}, {"qr_sides": "stacked", "qr": "householder"}):
        with factored_route(), lm.config(**config):
            assert not any("stacked" in row.op for row in lm.explain(circuit(E, Q, K), op).rows)


@SETTINGS
@given(seed=st.integers(0, 2**16), heads=st.sampled_from([1, 3]), vocab=st.integers(60, 400),
       d=st.integers(8, 48), h=st.integers(1, 7), dtype=st.sampled_from([torch.float64, torch.float32]),
       vectors=st.booleans(), general=st.booleans())
def test_explain_peak_is_the_stacked_allocation(seed, heads, vocab, d, h, dtype, vectors, general):
    """Property: over shapes, dtypes and batches, explain's peak of the stacked route is at least
    what torch allocates, and for the vectors above it by at most the ``r x r`` factor of each
    side explain counts before it is made and four numbers a member (none for the values). (A
    batch here has its own ``W_E`` per member, and a single matrix whose route takes ``W_E``'s
    own QR first is left out: that QR's row, outside the stack, does not count CholeskyQR's
    work, see the report.)"""
    h = min(h, d - 1)
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(*((heads,) if heads > 1 else ()), vocab, d, generator=g, dtype=dtype)
    shape = (heads, d, h) if heads > 1 else (d, h)
    Q, K = (torch.randn(*shape, generator=g, dtype=dtype) for _ in range(2))
    op = "svd" if vectors else "svdvals"

    def heads_circuit():
        e = lm.lazy(E.clone())
        return e @ lm.lazy(Q) @ lm.lazy(K).mT @ e.mT

    with factored_route(), lm.config(qr="cholesky", qr_sides="stacked"):
        assume(outer_reductions(heads_circuit(), vectors) == (None, None))
        compiled._CALLS.clear()
        report = lm.explain(heads_circuit(), op)
        x = heads_circuit()
        with (general_path() if general else contextlib.nullcontext()), Allocated() as a:
            (LA.svd if vectors else LA.svdvals)(x)
    assert any("stacked as one batch" in row.op for row in report.rows), str(report)
    slack = heads * (2 * h * h + 4) * dtype.itemsize if vectors else 0
    assert 0 <= report.planned.peak_bytes - a.peak <= slack, (a.peak, report.planned.peak_bytes, str(report))


@pytest.mark.parametrize("name", ["svdvals", "svd"])
def test_a_budget_too_small_for_the_stack_runs_the_sides_apart(name):
    """A memory budget that the separate route's peak fits and the stack does not (four sides at
    once for the values, six and its small factors with the vectors): the sides are factorised
    one after the other, the call does not fail, explain reports that route, and the answer is
    the stacked route's."""
    (E, Q, K), D = qk(4, 600, 24, 8, 8, torch.float64)
    op = "svd" if name == "svd" else "svdvals"
    with factored_route(), lm.config(qr="cholesky"):
        with lm.config(qr_sides="separate"):
            budget = lm.explain(circuit(E.clone(), Q, K), op).planned.peak_bytes
        assert budget < LA.spectrum.stacked_sides_bytes((600, 8), 8, name == "svd")
        with lm.config(qr_sides="stacked"):
            compiled._CALLS.clear()
            wide, wide_calls = counted(lambda: answer(name, circuit(E.clone(), Q, K)))
            with lm.config(memory_budget=budget):
                report = lm.explain(circuit(E.clone(), Q, K), op)
                got, calls = counted(lambda: answer(name, circuit(E.clone(), Q, K)))
    assert wide_calls.stacked() and not calls.stacked()
    assert not any("stacked" in row.op for row in report.rows)
    assert report.planned.peak_bytes == budget
    assert_close(got, wide, rtol=1e-10, atol=1e-10 * float(torch.linalg.matrix_norm(D, 2)))


def test_the_setting_names_its_values():
    allowed = r"\('auto', 'separate', 'stacked'\)"
    with pytest.raises(ValueError, match=rf"qr_sides must be one of {allowed}, got 'both'"):
        lm.config(qr_sides="both")
    with lm.config(qr_sides="stacked"):
        assert lm.settings.get("qr_sides") == "stacked"
    assert lm.settings.get("qr_sides") == "auto"


def test_auto_keeps_the_sides_apart():
    """``"auto"`` (the default) factorises the sides one after the other on every device until a
    GPU session measures the stack."""
    (E, Q, K), _ = qk(5, 600, 24, 8, 8, torch.float64)
    with factored_route(), lm.config(qr="cholesky"):
        compiled._CALLS.clear()
        _, calls = counted(lambda: LA.svd(circuit(E.clone(), Q, K)))
    assert calls.qr_inputs and not calls.stacked()


def test_gradients_through_a_stacked_route():
    """Recorded gradients: the spectrum is found without autograd (stacked), then differentiated
    on its projected core: svdvals' gradient is torch's on the dense matrix."""
    (E, Q, K), _ = qk(6, 300, 16, 4, 4, torch.float64)
    Qg = Q.clone().requires_grad_()
    with factored_route(), lm.config(qr="cholesky", qr_sides="stacked"):
        S = LA.svdvals(circuit(E, Qg, K))
        (g,) = torch.autograd.grad(S.sum(), Qg)
    Qd = Q.clone().requires_grad_()
    want = torch.linalg.svdvals(E @ Qd @ K.mT @ E.mT)[:4]
    (gd,) = torch.autograd.grad(want.sum(), Qd)
    assert_close(S.detach(), want.detach(), rtol=1e-10)
    assert_close(g, gd, rtol=1e-7, atol=1e-9 * float(gd.abs().max()))


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_stacked_on_cuda(name):
    """On a GPU (CholeskyQR2 by default there): the stack runs, compiled and general answers agree
    bit for bit, on the device, and match torch's on the float64 matrix."""
    (E, Q, K), D = qk(11, 400, 24, 6, 6, torch.float32)
    E, Q, K = (t.cuda() for t in (E, Q, K))
    with factored_route(), lm.config(qr_sides="stacked"):
        compiled._CALLS.clear()
        got, calls = counted(lambda: outcome(name, circuit(E, Q, K, 0.125)))
        with general_path():
            general = outcome(name, circuit(E, Q, K, 0.125))
        value = answer(name, circuit(E, Q, K, 0.125))
    assert calls.stacked()
    equal_answers(name, got, general)
    assert all(t.device.type == "cuda" for t in (got if isinstance(got, tuple) else (got,)))
    D = D * 0.125
    if name == "svdvals":
        assert_close(value.cpu(), torch.linalg.svdvals(D)[:6].float(), rtol=2e-4)
    elif name == "norm 2":
        assert_close(value.cpu(), torch.linalg.matrix_norm(D, 2).float(), rtol=2e-4)
