"""What an operation on an expression will cost, before anything runs.

``explain(X, op)`` lists the steps of the route lazymat takes (one row per step: operands,
output, FLOPs, bytes read and written, live intermediate memory) and compares it with the
naive routes: left-to-right products and dense materialisation. Products are costed by
the planner's own numbers (opt_einsum); decompositions by standard formulas (Golub & Van
Loan, *Matrix Computations*, 4th ed., Fig. 8.6.1 and Sec. 5.2/7.5), marked as estimates:

- Householder QR of ``m x r`` (``m >= r``): ``2 r^2 (m - r/3)``, the same again to form Q
- SVD of ``m x n`` (``m >= n``, Golub-Reinsch): ``4 m n^2 - 4/3 n^3`` for values only,
  ``14 m n^2 + 8 n^3`` for the reduced ``U``, ``S``, ``V``
- general eigenproblem ``r x r``: ``10 r^3`` values only, ``25 r^3`` with vectors

FLOPs count a multiply-add as 2 everywhere, like opt_einsum. Works the same on symbols.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .core import (
    factor,
    is_identity,
    outer_reductions,
    qr_flops,
    qr_is_cached,
    qr_key,
    reduced_side,
)
from .expr import Expr, Leaf, postorder, symbol, to_text
from .linalg import eig_core, fro_route
from .network import Shared, closed_chain
from .plan import FLOP_UNIT, Plan, _fmt_bytes, plan_canon, plan_chain, plan_expr
from .rewrite import Canon, View, canonical

OPS = ("to_dense", "matvec", "svd", "svdvals", "eigvals", "eig", "matrix_norm", "trace", "diagonal")


@dataclass
class Row:
    op: str
    inputs: list[tuple]
    output: tuple
    flops: int
    bytes_read: int
    bytes_written: int
    live_bytes: int
    estimate: bool = False


@dataclass
class Route:
    name: str
    flops: int
    peak_bytes: int
    note: str = ""


@dataclass
class Report:
    """Steps of lazymat's route and the naive routes' totals (print it, or ``to_dict()``)."""

    expr: str
    op: str
    shape: tuple
    dtype: str
    rows: list[Row]
    planned: Route
    naive: list[Route] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return self.planned.flops

    def ratios(self) -> dict[str, dict[str, float]]:
        out = {}
        for r in self.naive:
            out[r.name] = {
                "flops": r.flops / self.planned.flops if self.planned.flops else math.inf,
                "memory": r.peak_bytes / self.planned.peak_bytes if self.planned.peak_bytes else math.inf,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flop_unit"] = FLOP_UNIT
        d["ratios"] = self.ratios()
        return json.loads(json.dumps(d, default=list))

    def __str__(self) -> str:
        lines = [
            f"lazymat explain  op={self.op}  shape={self.shape}  dtype={self.dtype}",
            f"  {self.expr}",
            f"  {FLOP_UNIT}; * = estimate from a standard formula",
            "",
            f"  {'#':>3}  {'step':<38} {'inputs':<30} {'output':<18} {'FLOPs':>10} "
            f"{'read':>10} {'written':>10} {'live':>10}",
        ]
        for i, r in enumerate(self.rows, 1):
            ins = " ".join(_shape_text(s) for s in r.inputs)
            lines.append(
                f"  {i:>3}  {_clip(r.op, 38):<38} {_clip(ins, 30):<30} {_shape_text(r.output):<18} "
                f"{_num(r.flops) + ('*' if r.estimate else ' '):>10} {_fmt_bytes(r.bytes_read):>10} "
                f"{_fmt_bytes(r.bytes_written):>10} {_fmt_bytes(r.live_bytes):>10}"
            )
        lines += ["", f"  {'route':<34} {'FLOPs':>12} {'peak memory':>14}"]
        for r in [self.planned, *self.naive]:
            note = f"  ({r.note})" if r.note else ""
            lines.append(f"  {r.name:<34} {_num(r.flops):>12} {_fmt_bytes(r.peak_bytes):>14}{note}")
        for name, ratio in self.ratios().items():
            lines.append(f"  lazymat vs {name}: {ratio['flops']:.3g}x fewer FLOPs, "
                         f"{ratio['memory']:.3g}x less memory")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("#", "step", "inputs", "output", "FLOPs", "read",
                                                  "written", "live"))
        body = "".join(
            f"<tr><td>{i}</td><td>{html.escape(r.op)}</td>"
            f"<td>{html.escape(' '.join(_shape_text(s) for s in r.inputs))}</td>"
            f"<td>{_shape_text(r.output)}</td><td>{_num(r.flops)}{'*' if r.estimate else ''}</td>"
            f"<td>{_fmt_bytes(r.bytes_read)}</td><td>{_fmt_bytes(r.bytes_written)}</td>"
            f"<td>{_fmt_bytes(r.live_bytes)}</td></tr>"
            for i, r in enumerate(self.rows, 1)
        )
        routes = "".join(f"<tr><td>{html.escape(r.name)}</td><td>{_num(r.flops)}</td>"
                         f"<td>{_fmt_bytes(r.peak_bytes)}</td></tr>" for r in [self.planned, *self.naive])
        return (f"<p><b>{html.escape(self.op)}</b> of <code>{html.escape(self.expr)}</code> "
                f"{self.shape} {self.dtype}</p><table><tr>{head}</tr>{body}</table>"
                f"<table><tr><th>route</th><th>FLOPs</th><th>peak</th></tr>{routes}</table>")

    def __repr__(self) -> str:
        return str(self)


def _num(x: float) -> str:
    return f"{x:.3g}" if x >= 1000 else str(int(x))


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _shape_text(s: tuple) -> str:
    return "(" + ",".join(map(str, s)) + ")"


# ---- rows from plans ----------------------------------------------------------------------
def _view_name(v: View) -> str:
    base = v.base
    name = (base.name or "t") if isinstance(base, Leaf) else f"<{base.kind}>"
    for op in v.ops:
        if op[0] == "mT":
            name += ".T"
        elif op[0] == "index":
            name += "[..]"
        else:
            name += f".to({str(op[2]).replace('torch.', '')})"
    return name


def _span(names: list[str], lo: int, hi: int) -> str:
    if lo == hi:
        return names[lo]
    inner = " ".join(names[lo : hi + 1]) if hi - lo < 4 else f"{names[lo]} .. {names[hi]}"
    return f"({inner})"


def _plan_rows(c: Canon, plan: Plan, prefix: str = "") -> list[Row]:
    rows: list[Row] = []
    blocks = {}
    for t in c.terms:
        for v in t.factors:
            if not isinstance(v.base, Leaf):
                blocks.setdefault(id(v.base), v.base)
    for blk in blocks.values():
        for k, part in enumerate(blk.parts):
            rows += _plan_rows(part, plan_canon(part), prefix=f"{prefix}{blk.kind}[{k}] ")
    item = plan.itemsize
    for k, (t, tp) in enumerate(zip(c.terms, plan.terms, strict=True)):
        names = [_view_name(v) for v in t.factors]
        tag = f"{prefix}term {k}: " if len(c.terms) > 1 else prefix
        for s in tp.steps:
            label = f"{tag}{_span(names, *s.left)} @ {_span(names, *s.right)}"
            read = (math.prod(s.left_shape) + math.prod(s.right_shape)) * item
            rows.append(Row(label, [s.left_shape, s.right_shape], s.out_shape, s.flops, read,
                            s.out_bytes, s.live_bytes))
        if t.has_coefficient:
            n = math.prod(t.shape)
            rows.append(Row(f"{tag}scale", [t.shape], t.shape, n, n * item, n * item, 2 * n * item))
    if len(c.terms) > 1:
        n = math.prod(c.shape)
        rows.append(Row(f"{prefix}sum of {len(c.terms)} terms", [c.shape] * len(c.terms), c.shape,
                        plan.add_flops, n * item * len(c.terms), n * item, 2 * n * item))
    return rows


def _expr_rows(x: Expr, prefix: str) -> tuple[list[Row], Plan]:
    c = canonical(x)
    plan = plan_canon(c)
    return _plan_rows(c, plan, prefix), plan


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def _est(op: str, inputs: list[tuple], output: tuple, flops: float, item: int) -> Row:
    read = sum(math.prod(s) for s in inputs) * item
    wrote = math.prod(output) * item
    return Row(op, inputs, output, int(flops), read, wrote, read + wrote, estimate=True)


def _batch(x: Expr) -> int:
    return math.prod(x.shape[:-2])


def _svd_flops(m: int, n: int, vectors: bool) -> float:
    """Golub-Reinsch SVD of an ``m x n`` matrix (reduced factors when ``vectors``)."""
    big, k = max(m, n), min(m, n)
    return 14 * big * k * k + 8 * k**3 if vectors else 4 * big * k * k - 4 / 3 * k**3


# ---- per operation ------------------------------------------------------------------------
def _dense_route(x: Expr, extra_flops: float, note: str) -> Route:
    p = plan_expr(x)
    full = math.prod(x.shape) * _itemsize(x.dtype)
    return Route("dense materialisation", int(p.flops + extra_flops), max(p.peak_bytes, full), note)


def _factor_rows(x: Expr, skip: tuple = ()) -> tuple[list[Row], Expr, Expr, int]:
    L, R = factor(x)
    rows: list[Row] = []
    peak = 0
    for side, name in ((L, "L"), (R, "R")):
        if is_identity(side) or name in skip:
            continue
        r, p = _expr_rows(side, f"{name}: ")
        rows += r
        peak = max(peak, p.peak_bytes)
    return rows, L, R, peak


def _shared_qr_rows(x: Expr, vectors: bool) -> tuple[list[Row], dict, int]:
    """Rows of the shared-outer-factor route (:func:`lazymat.core.outer_reductions`): the
    one QR of each shared leaf (free when cached on it) and the reduced side ``R_V @ rest``;
    returns the rows, the reduced sides' short dims by side name, and their peak."""
    rows, short, peak = [], {}, 0
    item = _itemsize(x.dtype)
    for s, name in zip(outer_reductions(x, vectors), ("L", "R^H"), strict=True):
        if s is None:
            continue
        again = any(qr_key(s) == qr_key(o) for o in short.values())
        cached = again or qr_is_cached(s, vectors)
        note = ": as for L" if again else ": cached" if cached else ", once for the batch"
        rows.append(_est(f"QR of {s.name}{note}",
                         [(s.rows, s.k)], (s.k, s.k), 0 if cached else qr_flops(s.rows, s.k, vectors), item))
        peak = max(peak, 0 if cached else rows[-1].live_bytes)
        r, p = _expr_rows(reduced_side(s), f"{name}': R_{s.name} with ")
        rows += r
        short[name] = s
        peak = max(peak, p.peak_bytes)
    return rows, short, peak


def _svd_rows(x: Expr, values_only: bool) -> tuple[list[Row], int]:
    shared_rows, short, shared_peak = _shared_qr_rows(x, not values_only)
    rows, L, R, peak = _factor_rows(x, skip=tuple(n[0] for n in short))
    rows, peak = shared_rows + rows, max(peak, shared_peak)
    item = _itemsize(x.dtype)
    m, r, n, b = x.shape[-2], L.shape[-1], x.shape[-1], _batch(x)
    qr = 1 if values_only else 2
    if is_identity(L) or is_identity(R):
        rows.append(_est("SVD of the dense side", [x.shape], (*x.shape[:-2], min(m, n)),
                         b * _svd_flops(m, n, not values_only), item))
        return rows, max(peak, math.prod(x.shape) * item)
    for dim, name in ((m, "L"), (n, "R^H")):
        dim = short[name].k if name in short else dim
        rows.append(_est(f"QR of {name}" + ("'" if name in short else ""), [(*x.shape[:-2], dim, r)],
                         (*x.shape[:-2], r, r), b * qr * 2 * r * r * (dim - r / 3), item))
    rows.append(_est("core R_L @ R_R^H", [(r, r), (r, r)], (*x.shape[:-2], r, r), b * 2 * r**3, item))
    rows.append(_est("SVD of the core", [(*x.shape[:-2], r, r)], (*x.shape[:-2], r),
                     b * _svd_flops(r, r, not values_only), item))
    if not values_only:
        batch = tuple(x.shape[:-2])
        for dim, name, u in ((m, "L", "U = Q_L @ U_core"), (n, "R^H", "Vh = Vh_core @ Q_R^H")):
            shape = (*batch, m, r) if name == "L" else (*batch, r, n)
            if name not in short:
                rows.append(_est(u, [(dim, r), (r, r)], shape, b * 2 * dim * r * r, item))
                continue
            k, v = short[name].k, short[name].name
            rows.append(_est(f"{u} with Q_L = Q_{v} Q_L'" if name == "L" else f"{u} with Q_R = Q_{v} Q_R'",
                             [(dim, k), (k, r), (r, r)], shape, b * (2 * k * r * r + 2 * dim * k * r), item))
    tall = [short[name].k if name in short and values_only else dim for dim, name in ((m, "L"), (n, "R^H"))]
    thin = b * sum(tall) * r * item * (1 if values_only else 2)
    return rows, max(peak, thin)


def _eig_rows(x: Expr, vectors: bool) -> tuple[list[Row], int]:
    L, R = factor(x)
    item = _itemsize(x.dtype)
    core = eig_core(x)
    rows, p = _expr_rows(core, "core R @ L: " if core is not R and core is not L else "core: ")
    r = core.shape[-1]
    rows.append(_est("eigendecomposition of the core", [core.shape], (*core.shape[:-1],),
                     _batch(core) * (25 if vectors else 10) * r**3, item))
    peak = max(p.peak_bytes, math.prod(core.shape) * item)
    if vectors and not (is_identity(L) or is_identity(R)):
        lr, lp = _expr_rows(L, "L: ")
        rows += lr
        rows.append(_est("eigenvectors L @ W", [L.shape, core.shape], L.shape,
                         _batch(L) * 2 * L.shape[-2] * r * r, item))
        peak = max(peak, lp.peak_bytes, 2 * math.prod(L.shape) * item)
    return rows, peak


def _net_rows(net, label: str, item: int, seen: set | None = None) -> list[Row]:
    """One row per pairwise contraction of a closed network; a step computed earlier (in
    this network, or in one sharing ``seen``) is listed as reused, at no cost."""
    rows, live = [], 0
    seen = set() if seen is None else seen
    for (einsum, shapes, out, flops), prog in zip(net.steps, net.program, strict=True):
        wrote = math.prod(out) * item
        live = max(live, wrote)
        if prog[3] in seen:
            rows.append(Row(f"{label}: {einsum} (reused)", list(shapes), out, 0, 0, 0, live))
            continue
        seen.add(prog[3])
        rows.append(Row(f"{label}: {einsum}", list(shapes), out, flops,
                        sum(math.prod(s) for s in shapes) * item, wrote, live))
    return rows


def _network_rows(x: Expr, diag: bool) -> tuple[list[Row], int]:
    c = canonical(x)
    item = _itemsize(x.dtype)
    rows, peak = [], 0
    shared = Shared()  # as linalg runs them: a step repeated across terms is computed once
    for k, t in enumerate(c.terms):
        net = closed_chain(t.factors, diag, item, shared)
        label = ("diag" if diag else "tr") + (f" term {k}" if len(c.terms) > 1 else "")
        rows += _net_rows(net, label, item, shared.seen)
        peak = max(peak, net.largest_bytes)
    return rows, peak


def _fro_rows(x: Expr) -> tuple[list[Row], int]:
    item = _itemsize(x.dtype)
    route = fro_route(x)
    if route[0] == "network":
        return _net_rows(route[1], "tr(X^H X)", item), route[1].largest_bytes
    rows, L, R, peak = _factor_rows(x)
    m, r, n, b = x.shape[-2], L.shape[-1], x.shape[-1], _batch(x)
    if is_identity(L) or is_identity(R):
        rows.append(_est("sum of squares", [x.shape], x.shape[:-2], 2 * math.prod(x.shape), item))
        return rows, peak
    rows.append(_est("Gram L^H L", [L.shape], (*x.shape[:-2], r, r), b * 2 * m * r * r, item))
    rows.append(_est("Gram R R^H", [R.shape], (*x.shape[:-2], r, r), b * 2 * n * r * r, item))
    rows.append(_est("tr(G_L G_R)", [(r, r), (r, r)], x.shape[:-2], b * 2 * r * r, item))
    return rows, max(peak, b * (m + n) * r * item)


def explain(x: Expr, op: str = "to_dense") -> Report:
    """Cost report of ``op`` on ``x`` (see module docstring); no data is touched."""
    if op not in OPS:
        raise ValueError(f"explain: unknown op {op!r}; choose one of {', '.join(OPS)}")
    m, n, b = x.shape[-2], x.shape[-1], _batch(x)
    text = to_text(x, limit=160)
    naive: list[Route] = []
    if op == "to_dense":
        rows, plan = _expr_rows(x, "")
        peak = plan.peak_bytes
        ltr = _left_to_right_peak(x)
        naive.append(Route("left-to-right products", plan.naive_flops, ltr))
    elif op == "matvec":
        v = symbol("v", (n, 1), dtype=x.dtype, device=x.device)
        rows, plan = _expr_rows(x @ v, "")
        peak = plan.peak_bytes
        naive.append(_dense_route(x, 2 * b * m * n, "then a dense matrix-vector product"))
    elif op in ("svd", "svdvals"):
        rows, peak = _svd_rows(x, values_only=op == "svdvals")
        naive.append(_dense_route(x, b * _svd_flops(m, n, op == "svd"), "then a dense SVD (estimate)"))
    elif op in ("eigvals", "eig"):
        _require_square(x, op)
        rows, peak = _eig_rows(x, vectors=op == "eig")
        f = b * (25 if op == "eig" else 10) * n**3
        naive.append(_dense_route(x, f, "then a dense eigensolve (estimate)"))
    elif op == "matrix_norm":
        rows, peak = _fro_rows(x)
        naive.append(_dense_route(x, 2 * b * m * n, "then a dense Frobenius norm"))
    else:
        _require_square(x, op)
        rows, peak = _network_rows(x, diag=op == "diagonal")
        naive.append(_dense_route(x, b * n, f"then the dense {op}"))
    planned = Route("lazymat", sum(r.flops for r in rows), peak)
    return Report(text, op, tuple(x.shape), str(x.dtype).replace("torch.", ""), rows, planned, naive)


def _left_to_right_peak(x: Expr) -> int:
    """Peak live bytes of multiplying every term left to right."""
    c = canonical(x)
    item = _itemsize(x.dtype)
    return max(plan_chain(tuple(f.shape for f in t.factors), item, "left-to-right").peak_bytes
               for t in c.terms)


def _require_square(x: Expr, op: str) -> None:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{op} needs a square matrix, got shape {tuple(x.shape)}")


# ---- pictures -----------------------------------------------------------------------------
def _node_label(node: Expr, with_cost: bool) -> str:
    head = (node.name or "tensor") if isinstance(node, Leaf) else node.op
    label = f"{head}\\n{'x'.join(map(str, node.shape))}"
    if with_cost and not isinstance(node, Leaf):
        label += f"\\n{plan_expr(node).flops:.3g} FLOPs"
    return label


def to_dot(x: Expr, costs: bool = True) -> str:
    """Graphviz DOT text of the DAG; nodes show op, shape and the FLOPs to materialise them
    on their own (costs of subexpressions are omitted past 500 nodes)."""
    nodes = postorder(x)
    with_cost = costs and len(nodes) <= 500
    lines = ["digraph lazymat {", "  rankdir=BT;", '  node [shape=box, fontname="monospace"];']
    for node in nodes:
        style = ', style=dashed' if isinstance(node, Leaf) and node.is_symbol else ""
        lines.append(f'  n{node.uid} [label="{_node_label(node, with_cost)}"{style}];')
        for ch in node.children:
            lines.append(f"  n{ch.uid} -> n{node.uid};")
    lines.append("}")
    return "\n".join(lines)


def draw(x: Expr, path: str, costs: bool = True) -> None:
    """Save a picture of the DAG annotated with costs to ``path`` (.png, .svg or .pdf)
    with matplotlib (no system Graphviz needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    g = x.to_networkx()
    depth: dict[int, int] = {}
    for node in nx.topological_sort(g):
        preds = list(g.predecessors(node))
        depth[node] = 1 + max((depth[p] for p in preds), default=-1)
    for node, d in depth.items():
        g.nodes[node]["layer"] = d
    pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal")
    nodes = {n.uid: n for n in postorder(x)}
    with_cost = costs and len(nodes) <= 200
    labels = {u: _node_label(nodes[u], with_cost).replace("\\n", "\n") for u in g.nodes}
    width = max(6, 1.6 * max(sum(1 for d in depth.values() if d == k) for k in set(depth.values())))
    fig, ax = plt.subplots(figsize=(width, 1.4 * (max(depth.values()) + 1) + 1))
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, node_size=2500)
    nx.draw_networkx_labels(g, pos, labels=labels, ax=ax, font_size=8, font_family="monospace",
                            bbox={"boxstyle": "round", "fc": "#eef3fb", "ec": "#4a6fa5"})
    p = plan_expr(x)
    ax.set_title(f"{to_text(x, limit=80)}\n{p.flops:.3g} FLOPs planned, {p.naive_flops:.3g} left-to-right",
                 fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
