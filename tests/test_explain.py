"""Cost reports agree with the executed plan; pictures and DOT are valid."""

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, randn


def qk_symbols(dtype=torch.float32):
    E = lm.symbol("W_E", (50257, 768), dtype=dtype)
    Q = lm.symbol("W_Q", (768, 64), dtype=dtype)
    K = lm.symbol("W_K", (768, 64), dtype=dtype)
    return E @ Q @ K.T @ E.T


def test_report_rows_sum_to_the_plan():
    X = qk_symbols()
    r = X.explain()
    p = X.plan()
    assert r.flops == p.flops == sum(row.flops for row in r.rows)
    assert [row.output for row in r.rows] == [s.out_shape for s in p.steps]
    assert r.naive[0].flops == p.naive_flops
    assert r.ratios()["left-to-right products"]["flops"] == pytest.approx(p.naive_flops / p.flops)


def test_to_dense_runs_the_order_explain_shows(gen):
    tensors = [randn(gen, 40, 30), randn(gen, 30, 3), randn(gen, 3, 30), randn(gen, 30, 50)]
    X = lm.lazy(tensors[0])
    for t in tensors[1:]:
        X = X @ t
    report = X.explain()
    with TorchCalls() as rec:
        X.to_dense()
    assert len(rec.matmul_shapes) == len(report.rows)
    for shape, row in zip(rec.matmul_shapes, report.rows, strict=True):  # C, or C^T (lazymat.layout)
        assert shape in (tuple(row.output), tuple(row.output)[::-1])


def test_same_numbers_for_symbols_and_tensors(gen):
    a, b, c = randn(gen, 60, 5), randn(gen, 5, 4), randn(gen, 4, 70)
    T = lm.lazy(a) @ b @ c
    S = lm.symbol("a", (60, 5), dtype=torch.float64) @ lm.symbol("b", (5, 4), dtype=torch.float64) \
        @ lm.symbol("c", (4, 70), dtype=torch.float64)
    for op in ["to_dense", "svd", "matrix_norm", "matvec"]:
        assert T.explain(op).flops == S.explain(op).flops
        assert T.explain(op).planned.peak_bytes == S.explain(op).planned.peak_bytes


def test_dtype_drives_bytes():
    r32, r16 = qk_symbols(torch.float32).explain(), qk_symbols(torch.float16).explain()
    assert r32.planned.peak_bytes == 2 * r16.planned.peak_bytes
    assert r32.flops == r16.flops


@pytest.mark.parametrize("op", ["svd", "svdvals", "eigvals", "eig", "matrix_norm", "trace", "diagonal",
                                "matvec"])
def test_spectral_routes_never_materialise(op):
    X = qk_symbols()
    r = lm.explain(X, op=op)
    dense = 50257 * 50257 * 4
    assert r.planned.peak_bytes < dense / 100
    assert all(math.prod(row.output) < 50257 * 50257 for row in r.rows)
    assert r.naive[0].peak_bytes >= dense
    assert r.ratios()["dense materialisation"]["flops"] > 10
    text = str(r)
    assert "estimate" in text and op in text


def test_frobenius_route_matches_issue_figure():
    # shared halves: L = W_E W_Q formed once, then tr((L^T L)(R R^T))
    r = lm.explain(qk_symbols(), "matrix_norm")
    assert r.flops == pytest.approx(1.07e10, rel=0.01)


def test_json_and_html():
    r = qk_symbols().explain("svd")
    d = json.loads(json.dumps(r.to_dict()))
    assert d["op"] == "svd" and d["rows"] and "multiply-add = 2" in d["flop_unit"]
    assert "<table>" in r._repr_html_()


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        lm.explain(qk_symbols(), "qr")


def test_dot_text(gen):
    X = lm.lazy(randn(gen, 5, 3), name="A") @ lm.lazy(randn(gen, 3, 5), name="B")
    dot = X.to_dot()
    assert dot.startswith("digraph lazymat {") and dot.rstrip().endswith("}")
    assert "A\\n5x3" in dot and "FLOPs" in dot and dot.count("->") == 2


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml"),
                                           (".pdf", b"%PDF")])
def test_draw_writes_valid_pictures(tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"plan{suffix}"
    lm.draw(qk_symbols(), str(path), op="svd")
    data = path.read_bytes()
    assert data.startswith(magic)
    if suffix == ".svg":
        assert b"<svg" in data and b"QR of L" in data  # the steps of the svd route, not the DAG


def test_explain_values_agree_with_execution(gen):
    # the report is about the same route: norm and trace values still match dense
    a, b = randn(gen, 50, 4), randn(gen, 4, 50)
    X = lm.lazy(a) @ b
    X.explain("trace")
    assert_close(lm.linalg.trace(X), torch.trace(a @ b))


@pytest.mark.parametrize("op, diag", [("trace", False), ("diagonal", True)])
def test_network_rows_add_up_to_opt_einsum_cost(op, diag):
    import opt_einsum as oe

    X = qk_symbols()
    r = lm.explain(X, op)
    eq = "ab,bc,dc,ad->" + ("a" if diag else "")  # W_E W_Q W_K^T W_E^T with its ends joined
    _, info = oe.contract_path(eq, (50257, 768), (768, 64), (768, 64), (50257, 768), shapes=True,
                               optimize="optimal")
    assert r.flops == info.opt_cost
    assert len(r.rows) == 3


# ---- the schedule: live memory, peak, names, pictures ------------------------------------------
def ov_symbols():
    E, U = lm.symbol("W_E", (50257, 768)), lm.symbol("W_U", (768, 50257))
    V, O = lm.symbol("W_V", (12, 12, 768, 64)), lm.symbol("W_O", (12, 12, 64, 768))
    return E @ V[3] @ O[3] @ U


def small_sum():
    A, B = lm.symbol("A", (300, 4)), lm.symbol("B", (4, 300))
    C, D = lm.symbol("C", (300, 6)), lm.symbol("D", (6, 300))
    return A @ B + 0.5 * C @ D


EXAMPLES = {"qk": qk_symbols, "ov": ov_symbols, "sum": small_sum,
            "leaf": lambda: lm.symbol("W", (40, 40))}


@pytest.mark.parametrize("ex", sorted(EXAMPLES))
@pytest.mark.parametrize("op", lm.explain.__globals__["OPS"])
def test_peak_is_the_largest_live(ex, op):
    r = lm.explain(EXAMPLES[ex](), op)
    assert r.planned.peak_bytes == max((row.live_bytes for row in r.rows), default=0)
    assert r.flops == sum(row.flops for row in r.rows)
    for k, row in enumerate(r.rows):  # a schedule: steps read only earlier steps
        assert all(p < k for p in row.after)
        assert len(row.operands) == len(row.inputs)
        assert sum(1 for name in row.operands if not name) == len(row.after)
    text = str(r)
    assert "peak memory = the largest live" in text and "live =" in text


def test_live_of_a_chain_matches_the_planner():
    # an independent count: plan_chain's own running total of intermediates
    X = lm.symbol("A", (300, 20)) @ lm.symbol("B", (20, 500)) @ lm.symbol("C", (500, 10)) \
        @ lm.symbol("D", (10, 400))
    r = X.explain()
    steps = X.plan().steps
    assert r.planned.peak_bytes == X.plan().work_bytes  # the result, the caller's, is not counted
    assert [row.live_bytes for row in r.rows] == [s.live_bytes for s in steps[:-1]] + \
        [steps[-1].live_bytes - steps[-1].out_bytes]


def test_live_of_a_sum_holds_the_running_total():
    # the executor adds each term to the running sum: at each addition the old total, the term
    # and the new total are alive; the last new total is the result, not counted (2 n^2 floats).
    # The second term's 0.5 (below 1) scales its smaller factor C before the product: its product
    # runs beside the first term and C's scaled copy (2 n^2 floats + 300 x 6)
    r = small_sum().explain()
    n2 = 300 * 300 * 4
    adds = [row for row in r.rows if "sum" in row.op]
    assert len(adds) == 1 and adds[0].live_bytes == 2 * n2
    assert [row.op for row in r.rows if "scale" in row.op] == ["term 1: scale C"]
    assert r.planned.peak_bytes == 2 * n2 + 300 * 6 * 4 == small_sum().plan().work_bytes


def test_left_to_right_route_runs_the_same_schedule():
    # the naive route has the same extra steps (here a scaling) as lazymat's, planned left to right
    A = lm.symbol("A", (2, 2))
    r = (-A @ A).explain()
    assert r.naive[0].peak_bytes == r.planned.peak_bytes == 2 * 2 * 4  # -A; the product is the result


@pytest.mark.parametrize("op", ["svd", "svdvals", "eigvals", "eig", "matrix_norm"])
def test_a_leaf_costs_the_same_on_both_routes(op):
    # nothing to form: lazymat's route is the dense one, and the report says so (ratios of 1)
    r = lm.symbol("W", (5, 5), dtype=torch.float64).explain(op)
    assert r.ratios()["dense materialisation"] == {"flops": 1.0, "memory": 1.0}


def test_svd_forms_and_factorises_each_half_before_the_next():
    # L = W_E W_Q and R^H = W_E W_K (12.3 MiB each): linalg forms a side, factorises it and drops
    # it before forming the other (lazymat.linalg._common._side_qr), so R^H is never beside L
    r = qk_symbols().explain("svd")
    steps = [row.op.split(" (")[0] for row in r.rows[:4]]
    assert steps == ["L: W_E @ W_Q", "QR of L", "R^H: W_E @ W_K", "QR of R^H"]
    half = 50257 * 64 * 4
    r2, evidence = 64 * 64 * 4, 2 * 64 * 64 * 4 + 8  # CholeskyQR's R_0, second Gram, statuses
    work = 3 * r2 + 8  # its small factors while it runs (its X becomes Q)
    assert r.rows[1].live_bytes == 2 * half + r2 + evidence + work  # L, and Q_L with R_L
    assert r.rows[3].live_bytes == 3 * half + 2 * (r2 + evidence) + work  # Q_L R_L; R^H, Q_R R_R


def test_svd_routine_holds_its_factors_until_it_returns():
    # linalg's svd keeps Q_L, R_L, Q_R, R_R, the core and its SVD as locals, then makes U and Vh
    r = qk_symbols().explain("svd")
    half, r2 = 50257 * 64 * 4, 64 * 64 * 4
    held = 4 * half + 3 * r2 + (64 * 4 + 2 * r2)  # Q_L Q_R U Vh; R_L R_R core; S U_c Vh_c
    held += 2 * 4  # the rounding floor, kept with the spectrum, and its copy sent to the host
    held += 2 * (2 * r2 + 8)  # each side's CholeskyQR evidence, kept until the core is read
    assert r.planned.peak_bytes == r.rows[-1].live_bytes == held


def test_closed_network_rows_name_operands():
    r = qk_symbols().explain("trace")
    ops = [row.op for row in r.rows]
    assert ops == ["W_E @ W_Q", "W_E.T @ (W_E W_Q)", "tr(W_K.T @ (W_E.T W_E W_Q))"]
    assert not any("->" in op for op in ops)
    # the names read as a product: the shapes agree with them
    assert r.rows[1].output == (768, 64)


def test_gram_network_rows_name_operands():
    A, B, C = lm.symbol("A", (1000, 2)), lm.symbol("B", (2, 2)), lm.symbol("C", (2, 1000))  # not small
    assert LA.norms.fro_route(A @ B @ C)[0] == "network"  # an unshared QR costs as much as the Gram
    r = (A @ B @ C).explain("matrix_norm")  # tr(C^T B^T A^T A B C): Gram pairs A^T A, C C^T
    ops = [row.op for row in r.rows]
    assert "A.T @ A" in ops and "C @ C.T" in ops and ops[-1].startswith("tr(")
    assert not any("->" in op for op in ops)


def test_index_views_keep_the_users_names():
    r = ov_symbols().explain("eigvals")
    assert any("W_V[3]" in row.op for row in r.rows) and any("W_O[3]" in row.op for row in r.rows)


def test_batched_shapes_are_printed_whole():
    V = lm.symbol("W_V", (48, 25, 1600, 64))
    O = lm.symbol("W_O", (48, 25, 64, 1600))
    E, U = lm.symbol("W_E", (50257, 1600)), lm.symbol("W_U", (1600, 50257))
    r = (E @ V @ O @ U).explain("eigvals")
    text = str(r)
    for row in r.rows:
        assert row.op in text
        for s in row.inputs:
            assert "(" + ",".join(map(str, s)) + ")" in text
    assert "..." not in text


@pytest.mark.parametrize("op", lm.explain.__globals__["OPS"])
def test_picture_data_is_the_report(op):
    """The picture is drawn from the graph of the report's rows: same steps, same names."""
    for make in (qk_symbols, ov_symbols):
        r = lm.explain(make(), op)
        g = r.graph()
        steps = sorted(n for n in g.nodes if n[0] == "step")
        assert [g.nodes[n]["row"].op for n in steps] == [row.op for row in r.rows]
        for k, row in enumerate(r.rows):
            assert g.nodes[("step", k)]["label"].startswith(f"#{k + 1} {row.op}")
            names = [g.nodes[u]["name"] for u in g.predecessors(("step", k)) if u[0] == "operand"]
            assert sorted(names) == sorted(n for n in row.operands if n)
            assert {u[1] for u in g.predecessors(("step", k)) if u[0] == "step"} == set(row.after)


def _crossings(g, pos) -> int:
    def ccw(a, b, c):
        return (c[1] - a[1]) * (b[0] - a[0]) - (b[1] - a[1]) * (c[0] - a[0])

    edges = list(g.edges)
    count = 0
    for i, (a, b) in enumerate(edges):
        for c, d in edges[i + 1 :]:
            if {a, b} & {c, d}:
                continue
            p, q, r_, s = pos[a], pos[b], pos[c], pos[d]
            if ccw(p, q, r_) * ccw(p, q, s) < 0 and ccw(r_, s, p) * ccw(r_, s, q) < 0:
                count += 1
    return count


@pytest.mark.parametrize("make, op", [(qk_symbols, "svd"), (qk_symbols, "eig"), (ov_symbols, "eigvals"),
                                      (ov_symbols, "svd"), (small_sum, "svdvals"),
                                      (qk_symbols, "matrix_norm"), (qk_symbols, "trace")])
def test_layout_of_usual_circuits_has_no_crossings(make, op):
    from lazymat.explain import _layered_layout

    g = lm.explain(make(), op).graph()
    pos, _, _ = _layered_layout(g)
    assert _crossings(g, pos) == 0
    for a, b in g.edges:  # data flows down the picture
        assert pos[a][1] > pos[b][1]
    xs = {}
    for x, y in pos.values():  # nodes of a layer stay apart
        xs.setdefault(y, []).append(x)
    for row in xs.values():
        row.sort()
        assert all(b - a >= 1 - 1e-9 for a, b in zip(row, row[1:], strict=False))


@pytest.mark.parametrize("op", lm.explain.__globals__["OPS"])
def test_a_picture_for_every_op(tmp_path, op):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"{op}.svg"
    report = lm.draw(ov_symbols(), str(path), op=op)
    data = path.read_bytes()
    assert data.startswith(b"<?xml") and b"<svg" in data
    assert report.op == op and report.rows == lm.explain(ov_symbols(), op).rows


def test_report_dot_is_the_steps():
    r = qk_symbols().explain("svd")
    dot = r.to_dot()
    assert dot.startswith("digraph lazymat {") and dot.rstrip().endswith("}")
    edges = [line for line in dot.splitlines() if re.fullmatch(r"\s*n\d+ -> n\d+;", line)]
    assert len(edges) == r.graph().number_of_edges()
    assert "QR of L" in dot and "dense materialisation" in dot


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 40), min_size=2, max_size=6), batch=st.sampled_from([(), (3,), (2, 1)]),
       op=st.sampled_from(["to_dense", "matvec", "svd", "svdvals", "matrix_norm"]))
def test_schedule_properties(dims, batch, op):
    """Random chains: the peak is the largest live value, live never exceeds what every result
    ever written adds up to, and single chains agree with the planner (whose work excludes the
    result of a product, as explain's last row does)."""
    X = lm.symbol("F0", (*batch, dims[0], dims[1]), dtype=torch.float64)
    for k in range(1, len(dims) - 1):
        X = X @ lm.symbol(f"F{k}", (dims[k], dims[k + 1]), dtype=torch.float64)
    r = lm.explain(X, op)
    assert r.planned.peak_bytes == max((row.live_bytes for row in r.rows), default=0)
    written = 0
    for row in r.rows:
        returned = op in ("to_dense", "matvec") and row is r.rows[-1]
        written += 0 if returned else row.bytes_written
        assert (0 if returned else row.bytes_written) <= row.live_bytes <= written
    if op == "to_dense":
        assert r.planned.peak_bytes == X.plan().work_bytes


def test_empty_slice_report_says_no_work(capsys):
    """Regression: ``explain "W_E[1:0]" --preset gpt2-small`` printed "infx fewer FLOPs"."""
    from lazymat.cli import main as cli

    assert cli(["explain", "W_E[1:0]", "--preset", "gpt2-small"]) == 0
    out = capsys.readouterr().out
    assert "no work on either route" in out and "inf" not in out and "x fewer" not in out


@settings(max_examples=80, deadline=None)
@given(dims=st.lists(st.integers(0, 3), min_size=2, max_size=5),
       op=st.sampled_from(["to_dense", "svd", "matrix_norm", "trace"]))
def test_report_text_never_prints_an_undefined_ratio(dims, op):
    """Property: chains with empty dims (zero-FLOP routes) are reported in words, never as
    ``inf``/``nan`` ratios; a route with work still gets its ratio."""
    x = lm.symbol("A0", (dims[0], dims[1]))
    for i in range(1, len(dims) - 1):
        x = x @ lm.symbol(f"A{i}", (dims[i], dims[i + 1]))
    if op == "trace" and dims[0] != dims[-1]:
        op = "to_dense"
    r = x.explain(op)
    text = str(r)
    assert not re.search(r"\binf|nan", text), text
    for line in (ln for ln in text.splitlines() if "lazymat vs" in ln):
        if r.planned.flops:
            assert re.search(r"x (fewer|more) FLOPs|the same FLOPs|FLOPs \(vs none\)", line), line
