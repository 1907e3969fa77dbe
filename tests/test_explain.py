"""Cost reports agree with the executed plan; pictures and DOT are valid."""

import json
import math

import pytest
import torch

import lazymat as lm

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
    assert rec.matmul_shapes == [row.output for row in report.rows]


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


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml")])
def test_draw_writes_valid_pictures(tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"plan{suffix}"
    lm.draw(qk_symbols(), str(path))
    data = path.read_bytes()
    assert data.startswith(magic)
    if suffix == ".svg":
        assert b"<svg" in data


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
