"""explain's FLOPs are the FLOPs that run.

Every GEMM that torch executes (``mm``, ``bmm``, ``addmm``, ``baddbmm``, ``mv``, ``dot`` and
the ``bmm`` that ``einsum`` lowers to) is counted at the ATen level, ``2 * m * k * n`` per
product, independently of lazymat, and compared with the sum of the rows of ``explain`` that
are products (a product, a network's pairwise contraction, a core, a Gram matrix, ``U = Q_L
U_core``). Decompositions, which no counter sees, are compared by route: the QRs, SVDs and
eigensolves that ran are the ones explain lists (same matrix shapes), and their FLOPs are
the documented formulas of those shapes (:func:`lazymat.linalg.costs.svd_flops`,
:func:`lazymat.core.qr_flops`). Spectral ops run on both routes (dense, and factored forced by
``DENSE_MAX_ELEMENTS = 0``). The same report comes out of shape-only symbols.
"""

import contextlib
import math
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_properties import expressions
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA
from lazymat.core import qr_flops

from conftest import forced_route

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECTRAL = ("svd", "svdvals", "eigvals", "eig", "matrix_norm")
OPS = ("to_dense", "matvec", "trace", "diagonal", *SPECTRAL)

DECOMPOSITIONS = {"linalg_qr": "QR", "linalg_svd": "SVD", "linalg_svdvals": "SVD", "_linalg_svd": "SVD",
                  "linalg_eig": "eig", "linalg_eigvals": "eig"}


def einsum_flops(eq: str, shapes: list[tuple]) -> int:
    """Textbook FLOPs of ``torch.einsum(eq, ...)`` on operands of ``shapes``: two operands with a
    summed label multiply and add once per combination of all labels (2 each); otherwise one
    multiply per combination (a Hadamard or outer product; one operand: a sum, counted 0)."""
    ins, out = eq.replace(" ", "").split("->")
    terms = ins.split(",")
    if len(terms) != 2:
        return 0
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        named = term.replace("...", "")
        batch = shape[: len(shape) - len(named)] if "..." in term else ()
        for k, size in enumerate(reversed(batch)):  # ellipsis dims broadcast from the right
            sizes[f"...{k}"] = max(sizes.get(f"...{k}", 1), size)
        for label, size in zip(named, shape[len(batch):], strict=True):
            sizes[label] = size
    summed = set("".join(terms).replace(".", "")) - set(out)
    return (2 if summed else 1) * math.prod(sizes.values())


class Executed(TorchDispatchMode):
    """The GEMM FLOPs torch runs (a multiply-add counts 2), counted from the ATen calls
    (``mm``, ``bmm``, ``addmm``, ``baddbmm``, ``mv``, ``dot``) or, for ``torch.einsum`` (which
    lowers a contraction over size-1 labels to ``mul``), from its equation; and the
    decompositions it calls with their matrix shapes."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.decompositions: list[tuple[str, tuple, bool]] = []  # (kind, matrix shape, vectors formed)
        self.in_einsum = 0
        outer = self

        class Einsums(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", "")
                if name in DECOMPOSITIONS:  # with what it forms: Q (QR's mode), U and Vh
                    formed = (kwargs.get("mode", args[1] if len(args) > 1 else "reduced") != "r"
                              if name == "linalg_qr" else name in ("linalg_svd", "linalg_eig"))
                    outer.decompositions.append((DECOMPOSITIONS[name], tuple(args[0].shape), formed))
                if func is not torch.einsum or outer.in_einsum:
                    return func(*args, **kwargs)
                ops = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
                outer.flops += einsum_flops(args[0], [tuple(t.shape) for t in ops])
                outer.in_einsum += 1
                try:
                    return func(*args, **kwargs)
                finally:
                    outer.in_einsum -= 1

        self.einsums = Einsums()

    def __enter__(self):
        self.einsums.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.einsums.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        if name in ("addmm", "baddbmm", "addmv"):
            shapes = shapes[1:]  # the added term is no product
        if self.in_einsum:
            pass
        elif name in ("mm", "bmm", "addmm", "baddbmm"):
            self.flops += 2 * math.prod(shapes[0]) * shapes[1][-1]
        elif name in ("mv", "addmv", "dot", "vdot"):
            self.flops += 2 * math.prod(shapes[0])
        return out


def gemm_flops(report, rank: int | None = None) -> int:
    """The FLOPs of the rows that multiply two matrices: the Gram matrices and every row of two
    inputs but the additions (of a sum's terms, ``sum + term k``, and of a concatenation's
    diagonal parts, ``sum + part k``: the trace of ``cat([t, t], dim=-1)`` was counted 1 FLOP
    that no GEMM runs) (one input: a decomposition, a scaling, a sum of
    squares, the trace of one matrix; more: a concatenation). The eigenvalue core of an SVD is
    as wide as the numerical rank, which explain bounds by the inner width ``r``: given the
    ``rank`` found, those rows (``2 k^2 n`` FLOPs) are scaled from ``r`` to it."""
    total = 0
    for row in report.rows:
        addition = "sum + term" in row.op or "sum + part" in row.op
        if len(row.inputs) == 2 and not addition or "Gram " in row.op:
            r = min(row.output[-2:]) if "numerical rank" in row.op or "U @ W" in row.op else None
            total += row.flops if r is None or rank is None else row.flops * rank**2 // r**2
    return total


def run(X, op: str):
    if op == "to_dense":
        return X.to_dense()
    if op == "matvec":
        return X @ torch.ones(X.shape[-1], dtype=X.dtype)
    fn = {"svd": LA.svd, "svdvals": LA.svdvals, "eigvals": LA.eigvals, "eig": LA.eig,
          "matrix_norm": LA.matrix_norm, "trace": LA.trace, "diagonal": LA.diagonal}[op]
    return fn(X)


def _route_shows(op: str) -> bool:
    """Whether shapes tell the factored route of ``op`` from the dense one: a spectral op (not
    ``to_dense``, nor a network, whose steps may have the matrix's shape)."""
    return op in ("svd", "svdvals", "eigvals", "eig")


def explained_and_executed(X, op: str, factored: bool):
    checked = X if _route_shows(op) else None
    with forced_route("factored", checked) if factored else contextlib.nullcontext():
        report = X.explain(op)
        with Executed() as ran:
            out = run(X, op)
    ran.rank = out[0].shape[-1] if op == "eig" else out.shape[-1] if op == "eigvals" else None
    return report, ran


@SETTINGS
@given(expressions(), st.sampled_from(OPS), st.booleans())
@example(pair=(lm.cat([lm.lazy(torch.ones(2, 1, dtype=torch.float64))] * 2, dim=-1), None), op="trace",
         factored=False)
def test_explained_gemm_flops_are_the_executed_ones(pair, op, factored):
    X, D = pair
    if op in ("eigvals", "eig") and X.shape[-1] != X.shape[-2]:
        X = X[..., : min(X.shape[-2:]), : min(X.shape[-2:])]
    report, ran = explained_and_executed(X, op, factored)
    assert ran.flops == gemm_flops(report, ran.rank), str(report)


def explained_decompositions(report) -> list[tuple[str, tuple, int]]:
    """``(kind, matrix shape, FLOPs)`` of the decompositions explain lists (not the cached)."""
    out = []
    for row in report.rows:
        kind = next((k for k, prefix in (("QR", "QR of"), ("SVD", "SVD of"), ("eig", "eigendecomposition"))
                     if row.op.split(": ")[-1].startswith(prefix)), None)
        if kind and not row.op.endswith(": cached"):
            out.append((kind, row.inputs[0], row.flops))
    return sorted(out)


def formula_flops(kind: str, shape: tuple, formed: bool) -> int:
    """The documented FLOPs of a decomposition that ran, from its shape and what it formed."""
    batch, (m, n) = math.prod(shape[:-2]), shape[-2:]
    if kind == "QR":
        return int(batch * qr_flops(m, n, formed))
    if kind == "SVD":
        return int(batch * LA.costs.svd_flops(m, n, formed))
    return batch * (25 if formed else 10) * n**3


def executed_decompositions(ran: Executed) -> list[tuple[str, tuple, int]]:
    """``(kind, matrix shape, FLOPs by the documented formula)`` of the decompositions that ran."""
    return sorted((kind, shape, formula_flops(kind, shape, formed))
                  for kind, shape, formed in ran.decompositions)


@SETTINGS
@given(expressions(), st.sampled_from(SPECTRAL), st.booleans())
def test_decompositions_that_run_are_the_explained_ones(pair, op, factored):
    """The QRs, SVDs and eigensolves torch runs are those explain lists, same matrix shapes and
    the documented formula's FLOPs of that shape; the eigenvalue core of an SVD is as wide as
    the numerical rank found, which explain bounds by the inner width."""
    X, _ = pair
    if op in ("eigvals", "eig") and X.shape[-1] != X.shape[-2]:
        X = X[..., : min(X.shape[-2:]), : min(X.shape[-2:])]
    report, ran = explained_and_executed(X, op, factored)
    listed, done = explained_decompositions(report), executed_decompositions(ran)
    svd_core = ran.rank is not None and any(kind == "SVD" for kind, *_ in listed)
    if svd_core and ran.rank < min(listed[-1][1][-2:]):  # listed[-1]: the eigensolve ("eig" sorts last)
        k = ran.rank
        listed[-1] = ("eig", (*listed[-1][1][:-2], k, k), formula_flops("eig", (*listed[-1][1][:-2], k, k),
                                                                        op == "eig"))
    assert done == listed, str(report)


# ---- examples -------------------------------------------------------------------------------
def data_leaves():
    """A leaf maker: seeded float64 tensors."""
    g = torch.Generator().manual_seed(0)
    return lambda *shape, name=None: lm.lazy(torch.randn(*shape, generator=g, dtype=torch.float64), name=name)


def symbol_leaves():
    """A leaf maker: shape-only symbols of the same shapes and dtype."""
    count = iter(range(100))
    return lambda *shape, name=None: lm.symbol(name or f"t{next(count)}", shape, dtype=torch.float64)


def _chain(t):
    return t(40, 8, name="A") @ t(8, 6, name="B") @ t(6, 9) @ t(9, 30)


def _kept_span(t):
    A, B = t(30, 5), t(5, 6)
    return A @ B @ t(3, 6, 30) + A @ B @ t(6, 30)


EXAMPLES = {
    "chain": _chain,
    "square chain": lambda t: _chain(t)[:30],
    "sum": lambda t: _chain(t) + t(40, 3) @ t(3, 30),
    "square sum": lambda t: (_chain(t) + t(40, 3) @ t(3, 30))[:30],
    "broadcast batch": lambda t: t(3, 1, 40, 8) @ t(4, 8, 6) @ t(6, 30),
    "shared tall leaf": lambda t: t(60, 8, name="W_E") @ t(5, 8, 4) @ t(4, 50),
    "two tall leaves": lambda t: t(60, 8) @ t(4, 8, 3) @ t(3, 8) @ t(50, 8).mT,
    "nested sum": lambda t: t(30, 5) @ (t(5, 30) + t(5, 4) @ t(4, 30)),
    "span kept by an earlier term": _kept_span,
}


@pytest.mark.parametrize("factored", [False, True], ids=["dense", "factored"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_examples_run_what_explain_counts(name, op, factored):
    """Examples of each shape of route, each op, both routes of the spectral ops: the GEMM FLOPs,
    the decompositions and their FLOPs are explain's. Found wrong: eig, and eigvals of a sum, ran
    an SVD that explain did not list; a sum decomposed whole formed its terms again for its
    rounding floor; a closed network's nested block and two tall leaves' second QR were left out;
    a Gram matrix of a side the batch shares was counted per batch entry; a product kept on the
    leaves by an earlier term was counted again."""
    X = EXAMPLES[name](data_leaves())
    if op in ("eigvals", "eig") and X.shape[-1] != X.shape[-2]:
        return
    report, ran = explained_and_executed(X, op, factored)
    assert ran.flops == gemm_flops(report, ran.rank), str(report)
    assert executed_decompositions(ran) == explained_decompositions(report), str(report)


@pytest.mark.parametrize("factored", [False, True], ids=["dense", "factored"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_symbols_give_the_figures_of_data(name, op, factored):
    """explain on shape-only symbols of the same shapes lists the same steps, FLOPs and peak
    (where no product is kept on the leaves: see the next test)."""
    X, S = EXAMPLES[name](data_leaves()), EXAMPLES[name](symbol_leaves())
    if op in ("eigvals", "eig") and X.shape[-1] != X.shape[-2]:
        return
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0 if factored else LA.costs.DENSE_MAX_ELEMENTS):
        a, b = X.explain(op), S.explain(op)
    assert [(r.output, r.flops) for r in a.rows] == [(r.output, r.flops) for r in b.rows]
    assert a.flops == b.flops
    if name != "two tall leaves":
        assert [r.live_bytes for r in a.rows] == [r.live_bytes for r in b.rows]
        assert a.planned.peak_bytes == b.planned.peak_bytes


def test_symbols_give_the_live_memory_of_data_where_a_product_is_kept():
    X, S = EXAMPLES["two tall leaves"](data_leaves()), EXAMPLES["two tall leaves"](symbol_leaves())
    a, b = X.explain("svdvals"), S.explain("svdvals")
    assert [r.live_bytes for r in a.rows] == [r.live_bytes for r in b.rows]
