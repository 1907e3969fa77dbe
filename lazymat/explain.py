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
- LU of ``n x n``: ``2/3 n^3``; with the inverse ``2 n^3``; each solve with it ``2 n^2 k``

FLOPs count a multiply-add as 2 everywhere, like opt_einsum. Works the same on symbols.

The rows form a schedule, in the order the executor runs them: each names the user's
operands it reads and the earlier rows whose results it reads. A row's live memory is what
that schedule holds while it runs, and the peak memory is the largest of them. The picture
(:meth:`Report.draw`) and DOT text (:meth:`Report.to_dot`) are drawn from the same rows.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
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
from .execute import device_budget
from .expr import Expr, Leaf, MatMul, Scale, Transpose, as_expr, broadcast_shapes, postorder, symbol, to_text
from .indexing import Gather, batch_shape_after, member_counts
from .linalg._common import _work_dtype, eig_core
from .linalg.blocks import batch_blocks
from .linalg.calls import _rounded_source
from .linalg.norms import closed_kept_bytes, fro_route, gram_trace_flops
from .linalg.small import dense_is_cheaper, dense_norm_route, small_reduction
from .linalg.spectrum import stacks_sides
from .linalg.systems import (
    _formed_route,
    answer_checked,
    lu_batch_blocks,
    lu_route,
    scaled_segment,
    square_segments,
    structural_rank,
)
from .network import (
    Shared,
    closed_chain,
    kept_steps,
    leaf_steps,
    plan_networks,
    schedule_cost,
    terms_reserve,
)
from .plan import (
    FLOP_UNIT,
    ChainPlan,
    Plan,
    blocks_bytes,
    cached_steps,
    coefficient_bytes,
    copied_factors,
    plan_canon,
    plan_expr,
    plan_sharing,
    rescales,
    scaled_operand,
    slice_plan,
)
from .product_cache import is_cached, leaf_products, slots_below
from .qr import takes_cholesky
from .rewrite import Canon, View, broadcast_batch, canonical, diagonal_pieces, term_expr, view_expr
from .settings import BudgetTooSmall, blas_workspace, format_bytes, scoped

__all__ = ["OPS", "REDUCTIONS", "Report", "Route", "Row", "Slicing", "draw", "explain", "to_dot"]

REDUCTIONS = ("topk", "amax", "amin", "argmax", "argmin", "max", "min", "sum", "mean", "vector_norm")
OPS = ("to_dense", "matvec", "svd", "svdvals", "eigvals", "eig", "eigvalsh", "eigh", "matrix_norm",
       "matrix_rank", "cond", "trace", "diagonal", "det", "slogdet", "inv", "solve", "lstsq")
# the keyword arguments each reduction takes in explain, as lm.topk / torch take them
_REDUCTION_ARGS = {"topk": ("k", "dim", "largest"), "vector_norm": ("ord", "dim")}
# ... and each other op (as lm.linalg takes them)
# k: columns of B (default 1); B: its shape (a tuple, a tensor or an expression), batch dims included
_OP_ARGS = {"matrix_norm": ("ord",), "solve": ("k", "B"), "lstsq": ("k", "B", "driver")}


@dataclass
class Row:
    """One step of the route, in the order it runs.

    ``operands[j]`` is the user's name for ``inputs[j]``, or "" where that input is an earlier
    step's result; ``after`` lists those steps (0-based rows), in the order they are read.
    ``live_bytes`` is what is held while it runs: its output, every earlier result that it or
    a later step still reads, and what a linear-algebra routine keeps until it returns (its
    dense factors and decompositions); leaf tensors are not counted."""

    op: str
    inputs: list[tuple]
    output: tuple
    flops: int
    bytes_read: int
    bytes_written: int
    live_bytes: int = 0
    estimate: bool = False
    operands: list[str] = field(default_factory=list)
    after: list[int] = field(default_factory=list)


@dataclass
class Route:
    name: str
    flops: int
    peak_bytes: int
    note: str = ""


LIVE_NOTE = ("live = results held while a step runs: its output, earlier results still to be read, "
             "and what a routine keeps until it returns (leaf tensors, and the result of to_dense "
             "or a product, not counted: the memory budget bounds the rest)")
PEAK_NOTE = "lazymat's peak memory = the largest live value of the steps above"
SLICED_PEAK_NOTE = "lazymat's peak memory = the sliced run's (below); the steps above run unsliced"


@dataclass
class Slicing:
    """How one part of the route runs under the memory budget: ``slices`` blocks over ``dims``
    (each ``"kind size/block"``: a batch dim, rows, columns, or a contracted index whose blocks
    are summed), the FLOPs that slicing adds, the predicted live peak of the sliced run, and
    whether the work the blocks share is formed once or by every block (``note``)."""

    part: str
    slices: int
    dims: list[str]
    added_flops: int
    peak_bytes: int
    note: str = ""

    def text(self, budget: int) -> str:
        """One line for the report: the blocks, the FLOPs they add and the predicted peak."""
        if not self.dims:
            return f"{self.part}: fits the memory budget of {format_bytes(budget)} unsliced"
        return (f"{self.part}: {self.slices} slice{'s' * (self.slices > 1)} over {', '.join(self.dims)} "
                f"to fit the memory budget of {format_bytes(budget)}; adds {_num(self.added_flops)} FLOPs, "
                f"predicted peak {format_bytes(self.peak_bytes)}" + (f"; {self.note}" if self.note else ""))


@dataclass
class Report:
    """Steps of lazymat's route and the naive routes' totals (print it, ``to_dict()``,
    ``to_dot()``, ``draw(path)``). ``planned.peak_bytes`` is the largest ``live_bytes``."""

    expr: str
    op: str
    shape: tuple
    dtype: str
    rows: list[Row]
    planned: Route
    naive: list[Route] = field(default_factory=list)
    memory_budget: int | None = None  # bytes the evaluation's intermediates may use
    slicing: list[Slicing] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return self.planned.flops

    @property
    def result_bytes(self) -> int | None:
        """Bytes of the tensor ``to_dense`` (or ``@ v``) returns, which the peak leaves out: the
        caller holds it (None for the other operations, whose returns the schedule counts)."""
        if self.op not in ("to_dense", "matvec"):
            return None
        shape = self.shape if self.op == "to_dense" else self.shape[:-1]
        return math.prod(shape) * getattr(torch, self.dtype).itemsize

    def ratios(self) -> dict[str, dict[str, float]]:
        """Per naive route, how many times lazymat's FLOPs and peak memory it takes."""
        out = {}
        for r in self.naive:
            out[r.name] = {"flops": _ratio(r.flops, self.planned.flops),
                           "memory": _ratio(r.peak_bytes, self.planned.peak_bytes)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (rows, routes, the FLOP convention and the ratios)."""
        d = asdict(self)
        d["flop_unit"] = FLOP_UNIT
        d["ratios"] = self.ratios()
        d["result_bytes"] = self.result_bytes
        return json.loads(json.dumps(d, default=list))

    def _cells(self) -> list[list[str]]:
        return [[str(i), r.op, " ".join(_shape_text(s) for s in r.inputs), _shape_text(r.output),
                 _num(r.flops) + ("*" if r.estimate else " "), format_bytes(r.bytes_read),
                 format_bytes(r.bytes_written), format_bytes(r.live_bytes)]
                for i, r in enumerate(self.rows, 1)]

    def __str__(self) -> str:
        head = ["#", "step", "inputs", "output", "FLOPs", "read", "written", "live"]
        cells = self._cells()
        widths = [max(len(row[k]) for row in [head, *cells]) for k in range(len(head))]
        left = {1, 2, 3}  # text columns; numbers align right

        def line(row: list[str]) -> str:
            return "  " + "  ".join(c.ljust(w) if k in left else c.rjust(w)
                                    for k, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

        lines = [f"lazymat explain  op={self.op}  shape={self.shape}  dtype={self.dtype}",
                 f"  {self.expr}", f"  {FLOP_UNIT}; * = estimate from a standard formula",
                 f"  {LIVE_NOTE}", "", line(head), *(line(c) for c in cells)]
        if not self.rows:
            lines.append("  (no steps: the result is a leaf tensor or a view of one)")
        name_w = max(len(r.name) for r in [self.planned, *self.naive]) + 2
        lines += ["", f"  {'route':<{name_w}} {'FLOPs':>12} {'peak memory':>14}"]
        for r in [self.planned, *self.naive]:
            note = f"  ({r.note})" if r.note else ""
            lines.append(f"  {r.name:<{name_w}} {_num(r.flops):>12} {format_bytes(r.peak_bytes):>14}{note}")
        lines += [f"  {line}" for line in self._comparisons()]
        sliced = any(sl.slices > 1 for sl in self.slicing) and not self.op.startswith(REDUCTIONS)
        lines.append(f"  {SLICED_PEAK_NOTE if sliced else PEAK_NOTE}")
        if self.result_bytes is not None and self.rows:  # (no steps: a view of a leaf, no new memory)
            shape = self.shape if self.op == "to_dense" else self.shape[:-1]
            lines.append(f"  the result, {_shape_text(shape)} {self.dtype}, takes "
                         f"{format_bytes(self.result_bytes)} beside it: the caller's, which no budget bounds")
        if self.memory_budget is not None:
            lines += [f"  {sl.text(self.memory_budget)}" for sl in self.slicing]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html  # only notebooks need it (html.entities costs ~10 ms at import)

        head = "".join(f"<th>{h}</th>" for h in ("#", "step", "inputs", "output", "FLOPs", "read",
                                                  "written", "live"))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self._cells())
        routes = "".join(f"<tr><td>{html.escape(r.name)}</td><td>{_num(r.flops)}</td>"
                         f"<td>{format_bytes(r.peak_bytes)}</td></tr>" for r in [self.planned, *self.naive])
        return (f"<p><b>{html.escape(self.op)}</b> of <code>{html.escape(self.expr)}</code> "
                f"{self.shape} {self.dtype}</p><p>{html.escape(LIVE_NOTE)}</p>"
                f"<table><tr>{head}</tr>{body}</table>"
                f"<table><tr><th>route</th><th>FLOPs</th><th>peak</th></tr>{routes}</table>"
                f"<p>{html.escape(PEAK_NOTE)}</p>")

    def __repr__(self) -> str:
        return str(self)

    def graph(self):
        """The steps as a ``networkx.DiGraph``: one node per step (``("step", k)``, attribute
        ``row``) and one per operand read (``("operand", k, j)``, attribute ``name``), edges in
        the direction data flows. The picture and the DOT text are drawn from it."""
        import networkx as nx

        g = nx.DiGraph(title=self.expr, op=self.op)
        for k, row in enumerate(self.rows):
            g.add_node(("step", k), row=row, label=_step_label(k, row))
            results = iter(row.after)
            for j, name in enumerate(row.operands):
                if name:
                    g.add_node(("operand", k, j), name=name, label=f"{name}\n{_shape_text(row.inputs[j])}")
                    g.add_edge(("operand", k, j), ("step", k), slot=j, slots=len(row.inputs))
                else:
                    g.add_edge(("step", next(results)), ("step", k), slot=j, slots=len(row.inputs))
        return g

    def to_dot(self) -> str:
        """Graphviz DOT text of the steps (see :meth:`graph`)."""
        g = self.graph()
        ids = {node: f"n{i}" for i, node in enumerate(g.nodes)}
        lines = ["digraph lazymat {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];',
                 f'  label="{_dot_escape(self._totals())}";']
        for node, data in g.nodes(data=True):
            style = ", style=dashed" if node[0] == "operand" else ""
            lines.append(f'  {ids[node]} [label="{_dot_escape(data["label"])}"{style}];')
        lines += [f"  {ids[a]} -> {ids[b]};" for a, b in g.edges]
        lines.append("}")
        return "\n".join(lines)

    def _comparisons(self) -> list[str]:
        """One line per naive route: lazymat's FLOPs and memory against its (:func:`_fewer`)."""
        p, lines = self.planned, []
        for r in self.naive:
            if not (r.flops or r.peak_bytes or p.flops or p.peak_bytes):
                lines.append(f"lazymat vs {r.name}: no work on either route")
                continue
            lines.append(f"lazymat vs {r.name}: {_fewer(r.flops, p.flops, 'FLOPs', _num)}, "
                         f"{_fewer(r.peak_bytes, p.peak_bytes, 'memory', format_bytes)}")
        return lines

    def _totals(self) -> str:
        lines = [f"{r.name}: {_num(r.flops)} FLOPs, peak {format_bytes(r.peak_bytes)}"
                 + (f" ({r.note})" if r.note else "") for r in [self.planned, *self.naive]]
        lines += self._comparisons()
        return "\n".join(lines)

    def draw(self, path: str) -> None:
        """Save a picture of the steps (top to bottom, in layers) to ``path`` (.png, .svg or
        .pdf) with matplotlib (``pip install 'lazymat[draw]'``; no system Graphviz needed)."""
        try:
            import matplotlib
        except ImportError:
            raise ImportError("drawing needs matplotlib: pip install 'lazymat[draw]'") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        g = self.graph()
        pos, n_layers, width = _layered_layout(g)
        fig, ax = plt.subplots(figsize=(max(7.0, 2.6 * width), 1.1 * n_layers + 1.6))
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(-n_layers + 0.4, 0.6)
        ax.axis("off")
        for a, b in g.edges:
            ax.annotate("", xy=pos[b], xytext=pos[a], arrowprops={
                "arrowstyle": "->", "color": "#555555", "shrinkA": 14, "shrinkB": 20})
        for node, data in g.nodes(data=True):
            step = node[0] == "step"
            box = {"boxstyle": "round", "fc": "#eef3fb" if step else "white",
                   "ec": "#4a6fa5" if step else "#888888", "ls": "-" if step else "--"}
            ax.text(*pos[node], data["label"], ha="center", va="center", fontsize=7,
                    family="monospace", bbox=box)
        ax.set_title(f"{self.op} of {_clip(self.expr, 90)}  {self.shape} {self.dtype}", fontsize=9)
        fig.text(0.01, 0.01, self._totals() + f"\n{FLOP_UNIT}; * = estimate", fontsize=7,
                 family="monospace", va="bottom")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)


def _fewer(naive: float, planned: float, unit: str, fmt) -> str:
    """lazymat's ``unit`` against a naive route's, as a factor above 1 in the right word:
    ``"3.2x fewer FLOPs"``, ``"2x more memory"`` (never ``"0.5x fewer"``), ``"the same FLOPs"``
    where the factor prints as 1; a route that does no work is said so (``"no FLOPs (vs 12)"``,
    ``"8 B memory (vs none)"``), never as ``infx`` or ``0x``."""
    if not planned:
        return f"no {unit} (vs {fmt(naive)})" if naive else f"no {unit} on either route"
    if not naive:
        return f"{fmt(planned)} {unit} (vs none)"
    factor = naive / planned if naive >= planned else planned / naive
    if f"{factor:.3g}" == "1":
        return f"the same {unit}"
    fewer = "fewer" if unit == "FLOPs" else "less"
    return f"{factor:.3g}x {fewer if naive > planned else 'more'} {unit}"


def _ratio(naive: float, planned: float) -> float:
    if planned:
        return naive / planned
    return 1.0 if naive == 0 else math.inf


def _step_label(k: int, row: Row) -> str:
    return (f"#{k + 1} {row.op}\n-> {_shape_text(row.output)}  {_num(row.flops)}"
            f"{'*' if row.estimate else ''} FLOPs\nlive {format_bytes(row.live_bytes)}")


def _dot_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _layered_layout(g) -> tuple[dict, int, float]:
    """Positions ``(x, -layer)``: a step one layer below the latest step it reads (then moved
    down to just above its first reader), an operand just above the step that reads it.
    Within a layer, each node goes where its neighbours want it (a step's inputs spread left
    to right in the order they are read), nodes kept one apart; sweeps up and down the layers
    settle chains and trees without crossings."""
    import networkx as nx

    layer: dict = {}
    order = list(nx.topological_sort(g))
    for node in order:
        if node[0] == "step":
            preds = [layer[p] for p in g.predecessors(node) if p[0] == "step"]
            layer[node] = 1 + max(preds, default=0)
    for node in reversed(order):  # then as late as its readers allow: no long edges down
        if node[0] == "step" and g.out_degree(node):
            layer[node] = min(layer[v] for v in g.successors(node)) - 1
    for node in g.nodes:
        if node[0] == "operand":
            layer[node] = layer[next(iter(g.successors(node)))] - 1
    layers: dict[int, list] = {}
    for node in g.nodes:
        layers.setdefault(layer[node], []).append(node)
    keys = sorted(layers)
    x = {node: i - (len(nodes) - 1) / 2 for nodes in layers.values() for i, node in enumerate(nodes)}

    def offset(u, v) -> float:  # where input u of step v sits relative to v
        slot, slots = g.edges[u, v]["slot"], g.edges[u, v]["slots"]
        return slot - (slots - 1) / 2

    for sweep in range(6):
        up = sweep % 2 == 0
        for lay in reversed(keys) if up else keys:
            want = {}
            for node in layers[lay]:
                near = ([x[v] + offset(node, v) for v in g.successors(node)] if up else
                        [x[u] - offset(u, node) for u in g.predecessors(node)])
                want[node] = sum(near) / len(near) if near else x[node]
            nodes = sorted(layers[lay], key=lambda v: want[v])
            placed = [want[nodes[0]]]
            for node in nodes[1:]:
                placed.append(max(want[node], placed[-1] + 1))
            shift = (sum(want.values()) - sum(placed)) / len(placed)
            for node, px in zip(nodes, placed, strict=True):
                x[node] = px + shift
            layers[lay] = nodes
    left = min(x.values(), default=0)
    width = max(x.values(), default=0) - left + 1
    top = min(keys, default=0)
    pos = {node: (x[node] - left, -(layer[node] - top)) for node in g.nodes}
    return pos, max(keys, default=0) - top + 1, width


def _num(x: float) -> str:
    return f"{x:.3g}" if x >= 1000 else str(int(x))


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _shape_text(s: tuple) -> str:
    return "(" + ",".join(map(str, s)) + ")"


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _batch(x: Expr) -> int:
    return math.prod(x.shape[:-2])


def _svd_flops(m: int, n: int, vectors: bool) -> float:
    """Golub-Reinsch SVD of an ``m x n`` matrix (reduced factors when ``vectors``)."""
    big, k = max(m, n), min(m, n)
    return 14 * big * k * k + 8 * k**3 if vectors else 4 * big * k * k - 4 / 3 * k**3


# ---- the schedule -------------------------------------------------------------------------
Value = tuple[tuple, "int | str"]  # (shape, the row that made it or the user's name for it)


class _Schedule:
    """Rows in the order they run; each reads values (results of earlier rows, or operands
    named by the user). A result is freed after its last reader, unless it is held: the
    linear-algebra routines keep their dense factors and decompositions until they return.
    ``finish`` fills in the live memory of every row."""

    def __init__(self, item: int):
        self.item = item
        self.rows: list[Row] = []
        self.held: set[int] = set()
        self.fixed: dict[int, int] = {}  # row -> live bytes given by the executor's own schedule
        self.extra: dict[int, int] = {}  # row -> bytes held beside the rows (a network's kept steps)
        self.stored: set[tuple] = set()  # products rows keep on the leaves (product_cache keys)
        self.once: set[View] = set()  # repeating views whose work runs once per distinct member

    def hold(self, value: Value | None) -> Value | None:
        """Keep ``value`` (if an earlier row made it) alive to the end of the route."""
        if value is not None and not isinstance(value[1], str):
            self.held.add(value[1])
        return value

    def add(self, op: str, reads: list[Value], output: tuple, flops: float, estimate: bool = False,
            written: int | None = None, hold: bool = False) -> Value:
        inputs = [tuple(shape) for shape, _ in reads]
        self.rows.append(Row(
            op, inputs, tuple(output), int(flops), sum(math.prod(s) for s in inputs) * self.item,
            math.prod(output) * self.item if written is None else written, estimate=estimate,
            operands=[src if isinstance(src, str) else "" for _, src in reads],
            after=[src for _, src in reads if not isinstance(src, str)]))
        if hold:
            self.held.add(len(self.rows) - 1)
        return tuple(output), len(self.rows) - 1

    def finish(self, returned: Value | None = None) -> tuple[list[Row], int]:
        """Rows with ``live_bytes`` set, and the peak (the largest of them). Results that no
        row reads are the route's outputs: they stay alive to the end. The ``returned`` value
        (the result of ``to_dense`` or a product, which the caller asked for) is not counted,
        as the memory budget does not count it."""
        last_read = {}
        for k, row in enumerate(self.rows):
            for p in row.after:
                if p not in self.held:
                    last_read[p] = k
        skip = returned[1] if returned is not None and not isinstance(returned[1], str) else None
        live = peak = 0
        for k, row in enumerate(self.rows):
            live += 0 if k == skip else row.bytes_written
            row.live_bytes = self.fixed.get(k, live + self.extra.get(k, 0))
            peak = max(peak, row.live_bytes)
            live -= sum(self.rows[p].bytes_written for p in set(row.after)
                        if last_read.get(p) == k and p != skip)
        return self.rows, peak


def _view_name(v: View) -> str:
    """The user's name for a factor with its views: ``W_V[3]``, ``W_E.T``, ``W_E[:1000]``."""
    base = v.base
    name = (base.name or "t") if isinstance(base, Leaf) else f"<{base.kind}>"
    shape = tuple(base.shape)
    for op in v.ops:
        if op[0] == "mT":
            name = name[:-2] if name.endswith(".T") else name + ".T"
            shape = (*shape[:-2], shape[-1], shape[-2])
        elif op[0] == "index":
            key, row, col = op[1], op[2], op[3]
            dims = iter(shape[:-2])
            parts = [key.text()] if isinstance(key, Gather) else \
                [_index_text(e, None if e is None else next(dims, None)) for e in key]
            parts += [_index_text(row, shape[-2]), _index_text(col, shape[-1])]
            while parts and parts[-1] == ":":
                parts.pop()
            name += f"[{', '.join(parts)}]" if parts else ""
            shape = tuple(v.shape) if op is v.ops[-1] else \
                (*batch_shape_after(shape, key), len(row), len(col))
        else:
            name += f".to({str(op[2]).replace('torch.', '')})"
    return name


def _index_text(e: Any, size: int | None) -> str:
    """One entry of an index as the user would type it (``..`` where it has no short form)."""
    if e is None:
        return "None"
    if isinstance(e, int):
        return str(e)
    if isinstance(e, range):
        if e.step == 1 and e.start == 0 and len(e) == size:
            return ":"
        stop = "" if size is not None and e.stop >= size else str(e.stop)
        text = f"{e.start or ''}:{stop}"
        return text if e.step == 1 else f"{text}:{e.step}"
    return ".."


def _span(names: list[str], lo: int, hi: int) -> str:
    if lo == hi:
        return names[lo]
    inner = " ".join(names[lo : hi + 1]) if hi - lo < 4 else f"{names[lo]} .. {names[hi]}"
    return f"({inner})"


def _block_steps(s: _Schedule, terms, prefix: str, memo: tuple | None = None) -> dict[int, Value]:
    """Form the nested blocks (a sum or a concatenation inside a product) that ``terms`` read,
    each once in the evaluation, as the executor's memo does (a block two parts of a cat read
    is formed for the first); their values by ``id`` of the block. ``memo`` None: the memo of a
    network's operands (:func:`lazymat.execute.contract_sum`), which keeps no product for another."""
    memo = (False, frozenset(), {}, {}) if memo is None else memo
    blocks: dict[int, Value] = memo[3]
    for t in terms:
        for v in t.factors:
            blk = v.base
            if isinstance(blk, Leaf) or id(blk) in blocks:
                continue
            parts = [_canon_steps(s, part, plan_canon(part), f"{prefix}{blk.kind}[{k}] ", memo)
                     for k, part in enumerate(blk.parts)]
            blocks[id(blk)] = s.hold(parts[0] if blk.kind == "sum" else
                                     s.add(f"{prefix}cat of {len(parts)} parts", parts, blk.shape, 0))
    return blocks


def _operand(v: View, name: str, blocks: dict[int, Value]) -> Value:
    """A factor as a step reads it: the user's tensor by name, or the row forming its block."""
    return tuple(v.shape), name if isinstance(v.base, Leaf) else blocks[id(v.base)][1]


def _canon_steps(s: _Schedule, c: Canon, plan: Plan, prefix: str = "", memo: tuple | None = None) -> Value:
    """Schedule the evaluation of ``c`` as the executor runs it: nested blocks first, then each
    term's planned products, its scaling, and its addition to the running sum. ``memo``: the
    evaluation's ``(share, keep, rows, blocks)``, the products its memo keeps for another product
    (:func:`lazymat.plan.plan_sharing`, held to the end), the rows that made them, and the
    nested blocks formed so far."""
    if memo is None:
        memo = (*plan_sharing(c, plan.terms), {}, {})
    share, keep, memo_rows, _ = memo
    lengths = frozenset(map(len, keep))  # a span of another length is no key of keep: not sliced
    blocks = _block_steps(s, c.terms, prefix, memo)
    total: Value | None = None
    for k, (t, tp) in enumerate(zip(c.terms, plan.terms, strict=True)):
        names = [_view_name(v) for v in t.factors]
        tag = f"{prefix}term {k}: " if len(c.terms) > 1 else prefix
        spans: dict[tuple[int, int], Value] = {(i, i): _operand(v, names[i], blocks)
                                               for i, v in enumerate(t.factors)}
        for i, (held, forming) in copied_factors(t).items():  # formed before the first product,
            spans[(i, i)] = s.add(f"{tag}copy of {names[i]}", [spans[(i, i)]], t.factors[i].shape, 0,
                                  written=held)  # held until its product reads it (as evaluation_bytes)
            s.extra[len(s.rows) - 1] = forming - held
        resc = t.has_coefficient and rescales(t)  # a coefficient far from 1: every factor rescaled
        first = scaled_operand(t, tp, lengths if share else frozenset()) \
            if t.has_coefficient and not resc else None
        if first is not None:  # a coefficient below 1 scales a factor before the products
            spans[(first, first)] = s.add(f"{tag}scale {names[first]}", [spans[(first, first)]],
                                          t.factors[first].shape, math.prod(t.factors[first].shape))
        for i in range(len(t.factors)) if resc else ():  # by the power of two centring it on 1
            spans[(i, i)] = s.add(f"{tag}rescale {names[i]}", [spans[(i, i)]], t.factors[i].shape,
                                  math.prod(t.factors[i].shape))
        if resc:  # nothing cached on the leaves read or kept, nothing looked up in the memo
            found, skip, kept = {}, frozenset(), frozenset()
        else:
            found, skip, _ = leaf_products(t, tp)
            found, skip = _kept_earlier(s, t, tp, found, skip)
            kept = cached_steps(t, tp)
        n = len(t.factors)
        for step, st in enumerate(tp.steps):
            if n + step in skip:  # only feeds a product cached on the leaves
                continue
            text = f"{tag}{_span(names, *st.left)} @ {_span(names, *st.right)}"
            lo, hi = st.left[0], st.right[1]
            key = t.factors[lo : hi + 1] if share and not resc and hi - lo + 1 in lengths else None
            if key in memo_rows:  # formed by an earlier product, and held since
                spans[(st.left[0], st.right[1])] = s.add(f"{text}: shared", [], st.out_shape, 0, written=0)
                continue
            if step in found:
                spans[(st.left[0], st.right[1])] = s.add(
                    f"{text}: cached", [], st.out_shape, 0, written=0)
                continue
            reads = [(st.left_shape, spans[st.left][1]), (st.right_shape, spans[st.right][1])]
            spans[(st.left[0], st.right[1])] = s.add(text, reads, st.out_shape, st.flops,
                                                     hold=step in kept or key in keep)
            if key in keep:
                memo_rows[key] = spans[(st.left[0], st.right[1])]
            if st.copy_bytes:  # torch.matmul's copies of broadcast inputs, freed after the product
                s.extra[len(s.rows) - 1] = st.copy_bytes
        value = spans[(0, len(t.factors) - 1)]
        if t.has_coefficient and first is None:
            value = s.add(f"{tag}scale", [value], t.shape, math.prod(t.shape))
            s.extra[value[1]] = coefficient_bytes(t)
        if total is None:
            total = value
        else:
            total = s.add(f"{prefix}sum + term {k}", [total, value], c.shape, math.prod(c.shape))
    return total


def _leaf_spans(t, tp: ChainPlan) -> dict[int, tuple[View, ...]]:
    """Steps of ``tp`` over only unbatched leaf views (symbols too), as large as such spans get:
    the products :mod:`lazymat.product_cache` keeps (a term with a batch) and looks up."""
    n = len(t.factors)
    pure = [isinstance(v.base, Leaf) and math.prod(v.shape[:-2]) == 1 for v in t.factors]
    consumer: dict[int, int] = {}
    for j, (a, b) in enumerate(tp.program):
        pure.append(pure[a] and pure[b])
        consumer[a] = consumer[b] = n + j
    return {j: t.factors[st.left[0] : st.right[1] + 1] for j, st in enumerate(tp.steps)
            if pure[n + j] and not (n + j in consumer and pure[consumer[n + j]])}


def _kept_earlier(s: _Schedule, t, tp: ChainPlan, found, skip) -> tuple:
    """``found`` and ``skip`` (:func:`lazymat.product_cache.leaf_products`) with the products
    that an earlier row of this schedule keeps on the leaves, as the executor will find them
    there (a term of a sum reading a span an earlier term kept; a sum's floor evaluating its
    terms again); records the products this term keeps: those the executor stores
    (:func:`lazymat.plan.cached_steps`: a batched term's leaf spans worth keeping), no larger than
    the largest leaf they read (:func:`lazymat.product_cache.store`). A span too cheap to keep
    is formed again by the next reader, and listed so (a matrix_rank floor read ``t1x1 @ t1x1``
    as cached where it ran again: 10 FLOPs explained, 12 run)."""
    spans = _leaf_spans(t, tp)
    if not spans:
        return found, skip
    n, found, skip = len(t.factors), dict(found), set(skip)
    keys = {j: tuple((v.base.uid, v.ops) for v in views) for j, views in spans.items()}
    for j in spans:
        if j not in found and keys[j] in s.stored:
            found[j] = None
            skip |= slots_below(tp.program, n, j)
    for j in cached_steps(t, tp):
        if math.prod(tp.steps[j].out_shape) <= max(math.prod(v.base.shape) for v in spans[j]):
            s.stored.add(keys[j])
    return found, skip


def _expr_steps(s: _Schedule, x: Expr, prefix: str) -> Value:
    c = canonical(x)
    return _canon_steps(s, c, plan_canon(c), prefix)


def _net_steps(s: _Schedule, net, fn: str, prefix: str, operands: list[Value], cycle: list[int],
               names: list[str], seen: set, cached: set, keep: frozenset, base: int = 0) -> Value:
    """One row per pairwise contraction of a closed network, named like a product: each
    result is the product of the operands it covers, read around the network's cycle
    (``(W_E.T) @ (W_E W_Q)``); the last row is ``fn(...)`` of the whole cycle. A step already
    computed (in this network, or kept by an earlier network of the call: ``seen``) is listed as
    reused, at no cost, as :mod:`lazymat.network` runs it; so is a step in ``cached`` (kept
    on its leaves by an earlier call, :func:`_leaf_cached`). A row's live memory is the executor's
    own schedule (:func:`lazymat.network.schedule_cost`, keeping the steps later networks read:
    ``keep``) beside ``base`` bytes that the call holds (:func:`lazymat.network.plan_networks`)."""
    place = {op: i for i, op in enumerate(cycle)}

    def ring(cover: frozenset) -> list[int]:
        """The operands of ``cover`` in cycle order, starting after the gap of a cyclic run."""
        out = sorted(cover, key=place.get)
        idx = [place[o] for o in out]
        gaps = [j for j in range(len(idx)) if idx[j] - idx[j - 1] not in (1, 1 - len(cycle))]
        start = gaps[0] if len(gaps) == 1 else 0
        return out[start:] + out[:start]

    def text(ops: list[int]) -> str:
        return _span([names[o] for o in ops], 0, len(ops) - 1)

    step_live = schedule_cost(net, None, keep).step_live
    live = [(value, frozenset([i])) for i, value in enumerate(operands)]
    last = len(net.path) - 1
    value = operands[0]
    for k, (pair, (_, _, out, flops), prog) in enumerate(zip(net.path, net.steps, net.program, strict=True)):
        reused = prog[3] in seen
        seen.add(prog[3])
        tag, flops, written = (" (reused)", 0, 0) if reused else (": cached", 0, 0) if k in cached \
            else ("", flops, None)
        taken = [live[i] for i in pair]
        for i in sorted(pair, reverse=True):
            del live[i]
        cover = frozenset().union(*(c for _, c in taken))
        whole = ring(cover)
        taken.sort(key=lambda vc: whole.index(ring(vc[1])[0]))
        label = " @ ".join(text(ring(c)) for _, c in taken)
        if k == last:
            value = s.add(f"{prefix}{fn}({label}){tag}", [v for v, _ in taken], out, flops, written=written)
        else:
            shapes = [operands[o][0] for o in whole]
            shape = (*broadcast_batch(shapes), shapes[0][-2], shapes[-1][-1])
            value = s.add(f"{prefix}{label}{tag}", [v for v, _ in taken], shape, flops, written=written)
        s.fixed[value[1]] = base + step_live[k]
        live.append((value, cover))
    return value


def _leaf_cached(net, views: list, conj: list[bool], dtype: torch.dtype) -> set:
    """Steps of ``net`` whose result an earlier call kept on the leaves it reads."""
    return {k for k, (read, key) in leaf_steps(net, views, conj, dtype).items() if is_cached(read, key)}


def _adjoint(name: str, complex_: bool) -> str:
    if complex_:
        return name[:-2] if name.endswith(".H") else name + ".H"
    return name[:-2] if name.endswith(".T") else name + ".T"


# ---- per operation ------------------------------------------------------------------------
def _dense_route(x: Expr, extra_flops: float, note: str, out_elements: int, work_bytes: int = 0) -> Route:
    """Materialise ``x``, then run the dense operation: the matrix is held while its
    ``out_elements`` results are written, beside the routine's ``work_bytes`` (an LU's or an
    SVD's copy of the matrix, where the report counts it)."""
    p = plan_expr(x)
    item = _itemsize(x.dtype)
    full = math.prod(x.shape) * item if p.flops else 0  # a leaf (or a view of one) is not formed
    return Route("dense materialisation", int(p.flops + extra_flops),
                 max(p.peak_bytes, full + work_bytes) + out_elements * item, note)


def _sides(s: _Schedule, x: Expr) -> tuple[Expr, Expr, Value | None, Value | None]:
    """``x = L @ R`` with the steps forming each dense side (None for an identity side): ``R``
    as ``R^H`` (the tall form its QR and Gram matrix read, :func:`lazymat.core.dense_side`)
    beside a left side, else as it is; the routine holds both until it returns."""
    L, R = factor(x)
    left = None if is_identity(L) else s.hold(_expr_steps(s, L, "L: "))
    right = None if is_identity(R) else s.hold(_expr_steps(s, R, "R: ") if left is None
                                               else _expr_steps(s, R.mH, "R^H: "))
    return L, R, left, right


def _qr_work(count: int, rows: int, k: int, values_only: bool, item: int) -> int:
    """Bytes a QR of ``count`` tall ``rows x k`` matrices holds while it runs beside what it
    returns: a working copy of each (LAPACK factorises a copy in place; CholeskyQR forms
    ``X = A R_0^{-1}``) and its small factors, unless the copy becomes the returned ``Q``
    (Householder with ``Q``: charged as its output)."""
    return count * (((rows * k if values_only else 0) + 3 * k * k) * item + 8)  # (+ CholeskyQR's statuses)


def _side_name(side: Value, default: str) -> str:
    """The user's name for a factor side that is one of their tensors, else ``L``/``R``."""
    return side[1] if isinstance(side[1], str) else default


def _reduced_sides(s: _Schedule, x: Expr, vectors: bool, formed: Callable[[str, Value], None] | None = None):
    """:func:`_sides`, except that a side whose outer tall leaf the whole batch shares is
    reduced through that leaf's one QR (:func:`lazymat.core.outer_reductions`): a row for the
    QR (free when cached on the leaf, or already done for the other end), then the steps of
    ``R_V @ rest``; ``formed(name, value)`` adds the rows that read a side right after it is
    formed (its QR: then the side is dropped, as linalg drops it). Returns ``L, R``, the two
    side values and the shared leaves by side."""
    L, R = factor(x)
    if is_identity(L) or is_identity(R):
        return (*_sides(s, x), {})
    short: dict = {}
    values, made = {}, {}  # made: the row of each QR, by its leaf and cache key on the leaf
    for (name, side, label), red in zip((("L", L, "L: "), ("R^H", R.mH, "R^H: ")),
                                        outer_reductions(x, vectors), strict=True):
        if red is None:
            values[name] = _expr_steps(s, side, label)
            if formed is not None:
                formed(name, values[name])
            continue
        key, kk = (red.view.base.uid, qr_key(red)), (*red.batch, red.k, red.k)  # one QR per leaf and view
        if key in made:  # the other end's QR: read from there, nothing runs
            qr = (kk, made[key])
        elif qr_is_cached(red, vectors):  # held by the leaf from an earlier call
            qr = s.add(f"QR of {red.name}: cached", [], kk, 0, True, written=0, hold=True)
        else:
            written = red.count * (red.k * red.k + (red.rows * red.k if vectors else 0)) * s.item
            shared = "once for the batch" if red.count == 1 else \
                f"one per {red.name} entry, shared by the batch"
            qr = s.add(f"QR of {red.name}, {shared}", [((*red.batch, red.rows, red.k), red.name)], kk,
                       red.count * qr_flops(red.rows, red.k, vectors), True, written=written, hold=True)
            s.extra[qr[1]] = _qr_work(red.count, red.rows, red.k, not vectors, s.item)
        made.setdefault(key, qr[1])
        first = len(s.rows)
        side = reduced_side(red) if name == "L" else reduced_side(red).mH  # R^H' as it is formed
        values[name] = _expr_steps(s, side, f"{name[0]}': R_{red.name} with ")
        if red.spread is not None:
            s.once.add(red.view)
        stand_in = re.compile(re.escape(f"R_{red.name}") + r"(\.[TH]|\[\.\.\])*")  # read back, adjoint
        for row in s.rows[first:]:  # the stand-in for R_V is the QR's result: read it from there
            for i, operand in enumerate(row.operands):
                if stand_in.fullmatch(operand):
                    row.operands[i] = ""
                    row.after.append(qr[1])
        short[name] = red
        if formed is not None:
            formed(name, values[name])
    return L, R, values["L"], values["R^H"], short


def _svd_steps(s: _Schedule, x: Expr, values_only: bool, core_only: bool = False) -> None:
    """The steps of ``svd`` (``values_only``: ``svdvals``); ``core_only`` stops at the core.
    Each side is formed and factorised before the next (linalg drops a side once factorised),
    or both formed, then factorised as one stacked batch."""
    item, batch = s.item, tuple(x.shape[:-2])
    m, n, b = x.shape[-2], x.shape[-1], _batch(x)
    L, R = factor(x)
    r = L.shape[-1]
    reds = {} if is_identity(L) or is_identity(R) else \
        {k: red for k, red in zip(("L", "R^H"), outer_reductions(x, not values_only), strict=True) if red}
    sides = [reduced_side(reds[k]) if k in reds else side for k, side in (("L", L), ("R^H", R))]
    stacked = not (is_identity(L) or is_identity(R)) and stacks_sides(x, *sides, not values_only)
    qr: dict = {}

    def factorise(name: str, side: Value) -> None:  # the QR of one side, as soon as it is formed
        tall = reds[name].k if name in reds else (m if name == "L" else n)  # the reduced side is k x r
        out = (*batch, r, r) if values_only else (*batch, tall, r)
        text = _side_name(side, name) + ("'" if name in reds else "")
        shape = side[0]  # L and R^H, as their QRs see them
        if tall <= r:  # not tall: the side is its own factor, Q = I (core.side_qr_flops), kept as R is
            qr[name] = s.hold((shape, side[1]))
            return
        own = math.prod(shape[:-2])  # one QR per entry of the side's own batch (the rest broadcast)
        out = (*shape[:-2], *out[-2:])
        # CholeskyQR's evidence (R_0, the second Gram matrix, two statuses) is kept until the core is read
        mode = "r" if values_only else "reduced"
        cholesky = takes_cholesky((tall, r), _work_dtype(x.dtype), x.device, mode)
        evidence = 2 * r * r * item + 8 if cholesky else 0
        kept = own * ((r * r + (0 if values_only else tall * r)) * item + evidence)
        qr[name] = s.add(f"QR of {text}" + ("" if values_only else " (keep Q)"), [(shape, side[1])], out,
                         own * (1 if values_only else 2) * 2 * r * r * (tall - r / 3), estimate=True,
                         written=kept, hold=True)
        s.extra[qr[name][1]] = _qr_work(own, tall, r, values_only, item)

    L, R, left, right, short = _reduced_sides(s, x, not values_only, None if stacked else factorise)
    if left is None or right is None:
        _floor_steps(s, x)
        k = min(m, n)
        written = b * (k + _floor_numbers(x) + (0 if values_only else m * k + k * n)) * item
        s.add("SVD of the dense side", [right if left is None else left], (*batch, k),
              b * _svd_flops(m, n, not values_only), estimate=True, written=written, hold=True)
        return
    if stacked:  # both sides formed and factorised as one batch
        shape = left[0]
        own, tall = math.prod(shape[:-2]), shape[-2]
        out = (2, *shape[:-2], *((r, r) if values_only else (tall, r)))
        names = " and ".join(_side_name(v, k) + ("'" if k in short else "")
                             for k, v in (("L", left), ("R^H", right)))
        # what CholeskyQR2 of the stack keeps (R, and Q when asked; its evidence, R_0 and the second
        # Gram matrix and two int32 statuses a member, until the core is read) and holds while it
        # runs (its X and second factor)
        kept = 3 * r * r + (0 if values_only else tall * r)
        stack = s.add(f"QR of {names}, stacked as one batch" + ("" if values_only else " (keep Q)"),
                      [left, right], out, 2 * own * (1 if values_only else 2) * 2 * r * r * (tall - r / 3),
                      estimate=True, written=2 * own * (kept * item + 8), hold=True)
        s.extra[stack[1]] = 2 * own * (tall * r + r * r) * item
        qr = {"L": stack, "R^H": stack}
    rr = (*batch, r, r)
    core = s.add("core R_L @ R_R^H", [(rr, qr["L"][1]), (rr, qr["R^H"][1])], rr, b * 2 * r**3, True,
                 hold=True)
    if core_only:
        return
    # the core's rounding floor (linalg.spectrum._rounding_floor): one number a member, from three
    # r-long vectors a member alive at once (the column norms and their product)
    floor = s.add("rounding floor of the core", [core], (*batch, 1), b * 6 * r * r, True)
    s.extra[floor[1]] = 3 * b * r * item
    # the floor (kept with the spectrum) goes to the host in one copy with the QRs' evidence
    # (linalg._common._placed_with)
    svd = s.add("SVD of the core", [core], (*batch, r), b * _svd_flops(r, r, not values_only), True,
                written=b * (r + 1 + (0 if values_only else 2 * r * r)) * item, hold=True)
    if values_only:
        return
    for name, dim, text, shape in (("L", m, "U = Q_L @ U_core", (*batch, m, r)),
                                   ("R^H", n, "Vh = Vh_core @ Q_R^H", (*batch, r, n))):
        reads = [qr[name], (rr, svd[1])]
        if name not in short:
            if dim > r:  # else Q = I: the core's vectors are the answer
                s.add(text, reads, shape, b * 2 * dim * r * r, True)
            continue
        k, v = short[name].k, short[name].name
        if k <= r:
            s.add(f"{text.split(' = ')[0]} = Q_{v} @ {'U' if name == 'L' else 'Vh'}_core", reads, shape,
                  b * 2 * dim * k * r, True)
            continue
        q = "Q_L = Q_{v} Q_L'" if name == "L" else "Q_R = Q_{v} Q_R'"
        s.add(f"{text} with {q.format(v=v)}", reads, shape, b * (2 * k * r * r + 2 * dim * k * r), True)


def _spectral_steps(s: _Schedule, x: Expr, op: str) -> None:
    """The route linalg runs for ``op`` (``"svd"``, ``"svdvals"``): factored, or for a small
    matrix the dense one (the same :func:`lazymat.linalg.small.dense_is_cheaper`)."""
    if dense_is_cheaper(x, op):
        _dense_steps(s, x, op)
    else:
        _svd_steps(s, x, values_only=op == "svdvals")


def _dense_steps(s: _Schedule, x: Expr, op: str) -> None:
    """The dense route of a small matrix: ``x`` formed as planned, then torch's SVD (or the
    sum of squares for the Frobenius norm, ``op="matrix_norm"``) of the whole matrix; or the
    reduced matrix's (:func:`lazymat.linalg.small.small_reduction`)."""
    side = small_reduction(x, op)
    if side is not None:
        _reduced_steps(s, x, op == "svd", side)
        return
    value = s.hold(_expr_steps(s, x, ""))
    if isinstance(value[1], str):  # a leaf (or a view of one): nothing is formed
        value = (tuple(x.shape), value[1])
    m, n, b, batch = x.shape[-2], x.shape[-1], _batch(x), tuple(x.shape[:-2])
    if op == "matrix_norm":
        s.add("Frobenius norm of the dense matrix", [value], batch, 2 * b * m * n, True)
        return
    _floor_steps(s, x)
    k = min(m, n)
    written = b * (k + _floor_numbers(x) + (0 if op == "svdvals" else m * k + k * n)) * s.item
    s.add("SVD of the dense matrix", [value], (*batch, k), b * _svd_flops(m, n, op == "svd"),
          estimate=True, written=written, hold=True)


def _reduced_steps(s: _Schedule, x: Expr, vectors: bool, side: str) -> None:
    """The small route through a reduced matrix (:func:`lazymat.linalg.spectrum.reduce_small`): both
    sides formed as planned, the QR of one (``side``), the reduced matrix, its SVD, and for the
    vectors their rotation back by the QR's ``Q``."""
    L, R = factor(x)
    m, n, b, batch, item = x.shape[-2], x.shape[-1], _batch(x), tuple(x.shape[:-2]), s.item
    r = L.shape[-1]
    left = s.hold(_side_value(s, L, "L: "))
    right = s.hold(_side_value(s, R.mH, "R^H: "))
    name, rows, kept = ("R^H", n, m) if side == "right" else ("L", m, n)
    tall = right if side == "right" else left
    own = math.prod(tall[0][:-2])  # one QR per entry of the side's own batch (the rest broadcast)
    qr = s.add(f"QR of {name}" + (" (keep Q)" if vectors else ""), [tall], (*tall[0][:-2], r, r),
               own * qr_flops(rows, r, vectors), estimate=True,
               written=own * (r * r + (rows * r if vectors else 0)) * item, hold=True)
    shape = (*batch, m, r) if side == "right" else (*batch, r, n)
    text = "L @ T_R^H" if side == "right" else "T_L @ R"
    reduced = s.add(f"reduced matrix {text}", [left if side == "right" else right, qr], shape,
                    b * 2 * kept * r * r, True, hold=True)
    written = b * (r if not vectors else kept * r + r + r * r) * item
    svd = s.add("SVD of the reduced matrix", [reduced], (*batch, r), b * _svd_flops(kept, r, vectors),
                estimate=True, written=written, hold=True)
    if vectors:
        text = "Vh = Vh_M @ Q_R^H" if side == "right" else "U = Q_L @ U_M"
        shape = (*batch, r, n) if side == "right" else (*batch, m, r)
        s.add(text, [qr, svd], shape, b * 2 * rows * r * r, True)


def _side_value(s: _Schedule, side: Expr, prefix: str) -> Value:
    """One side of ``L @ R`` as formed (a leaf, or a view of one, is read as it is)."""
    value = _expr_steps(s, side, prefix)
    return (tuple(side.shape), value[1]) if isinstance(value[1], str) else value


def _floor_numbers(x: Expr) -> int:
    """Numbers a member that the dense SVD of a batch holds beside its values
    (:func:`lazymat.linalg.spectrum._dense_spectrum`): the values' norms (the floor is made from them in
    place), and a sum's floor; none for one matrix (read back)."""
    return 0 if x.ndim == 2 else 1 + (len(canonical(x).terms) > 1)


def _norm_steps(s: _Schedule, x: Expr) -> None:
    """The steps of ``matrix_norm(x)`` (Frobenius): the dense route of a small matrix, or
    :func:`lazymat.linalg.norms.fro_route`'s."""
    if dense_norm_route(x):
        _dense_steps(s, x, "matrix_norm")
    else:
        _fro_steps(s, x)


def _floor_steps(s: _Schedule, x: Expr) -> None:
    """The rounding floor of a sum decomposed whole (:func:`lazymat.linalg.spectrum._sum_floor`): the
    Frobenius norm of each term, each formed again by its own route. Nothing for one term."""
    terms = canonical(x).terms
    if len(terms) == 1:
        return
    for k, t in enumerate(terms):
        first = len(s.rows)
        _norm_steps(s, term_expr(t))
        for row in s.rows[first:]:
            row.op = f"floor: |term {k}|_F: {row.op}"


def _eig_steps(s: _Schedule, x: Expr, vectors: bool) -> None:
    """The route of :func:`lazymat.linalg.eigen._eigen`: the eigenvalues of one product from its core
    ``R @ L``; a sum's, or any eigenvectors (unless ``X`` is its own core), from the core
    ``S Vh @ U`` of its SVD, ``k`` wide (at most the inner width ``r``: the numerical rank),
    the eigenvectors ``U @ W``."""
    L, R = factor(x)
    single = len(canonical(x).terms) == 1
    if not single or vectors and not (is_identity(L) or is_identity(R)):
        _spectral_steps(s, x, "svd")
        svd = len(s.rows) - 1
        n, batch, b = x.shape[-1], tuple(x.shape[:-2]), _batch(x)
        k = min(n, L.shape[-1])
        core = s.add("core S Vh @ U (k <= r: the numerical rank)",
                     [((*batch, k, n), svd), ((*batch, n, k), svd)], (*batch, k, k), b * 2 * k * k * n, True,
                     hold=True)
        item = s.item if x.dtype.is_complex else 2 * s.item  # eigenvalues are complex
        eig = s.add("eigendecomposition of the core", [core], (*batch, k), b * (25 if vectors else 10) * k**3,
                    True, written=b * (k + (k * k if vectors else 0)) * item, hold=True)
        if vectors:
            s.add("eigenvectors U @ W", [((*batch, n, k), svd), ((*batch, k, k), eig[1])], (*batch, n, k),
                  b * 2 * n * k * k, True)
        return
    core = eig_core(x)
    value = s.hold(_expr_steps(s, core, "core R @ L: " if core is not R and core is not L else "core: "))
    r, batch, b = core.shape[-1], tuple(core.shape[:-2]), _batch(core)
    item = s.item if x.dtype.is_complex else 2 * s.item  # eigenvalues are complex
    eig = s.add("eigendecomposition of the core", [value], (*batch, r), b * (25 if vectors else 10) * r**3,
                True, written=b * (r + (r * r if vectors else 0)) * item, hold=True)
    if vectors and not (is_identity(L) or is_identity(R)):
        left = _expr_steps(s, L, "L: ")
        s.add("eigenvectors L @ W", [left, ((*batch, r, r), eig[1])], L.shape,
              _batch(L) * 2 * L.shape[-2] * r * r, True)


def _eigh_steps(s: _Schedule, x: Expr, vectors: bool) -> None:
    """The route of :func:`lazymat.linalg.hermitian._hermitian_eigen`: the SVD's nonzero triplets, the
    core ``S Vh @ U`` (``k`` wide, at most the inner width ``r``), the Hermitian check's
    ``(V - U (Vh U)^H) S`` (reading the core's product; in blocks of the batch under a
    budget), the Hermitian eigendecomposition of the core (Golub & Van Loan's symmetric QR:
    4/3 k^3 for values, 9 k^3 with vectors) and the eigenvectors ``U @ W``."""
    _spectral_steps(s, x, "svd")
    svd = len(s.rows) - 1
    L, _ = factor(x)
    n, batch, b = x.shape[-1], tuple(x.shape[:-2]), _batch(x)
    k = min(n, L.shape[-1])
    U, Vh = ((*batch, n, k), svd), ((*batch, k, n), svd)
    core = s.add("core S Vh @ U (k <= r: the numerical rank)", [Vh, U], (*batch, k, k), b * 2 * k * k * n,
                 True, hold=True)
    s.add("Hermitian check (V - U (Vh U)^H) S, k <= r wide (the numerical rank)", [U, core], (*batch, n, k),
          b * 2 * n * k * k, True)
    real = s.item // 2 if x.dtype.is_complex else s.item
    eig = s.add("Hermitian eigendecomposition of the core", [core], (*batch, k),
                b * (9 * k**3 if vectors else 4 * k**3 // 3), True,
                written=b * (k * real + (k * k * s.item if vectors else 0)), hold=True)
    if vectors:
        s.add("eigenvectors U @ W (the numerical rank wide)", [U, ((*batch, k, k), eig[1])], (*batch, n, k),
              b * 2 * n * k * k, True)


def _fro_steps(s: _Schedule, x: Expr) -> None:
    route = fro_route(x)
    if route[0] == "network":  # tr(X^H X): the conjugate chain reversed, then the chain
        term = canonical(x).terms[0]
        factors = term.factors
        n = len(factors)
        names = [_view_name(f) for f in factors]
        adjoints = [_adjoint(name, x.dtype.is_complex) for name in names]
        blocks = _block_steps(s, [term], "")  # a nested block is formed first, as the executor does
        values = [_operand(f, names[i], blocks) for i, f in enumerate(factors)]
        operands = [((*f.shape[:-2], f.shape[-1], f.shape[-2]), adjoints[i] if isinstance(src, str) else src)
                    for i, (f, (_, src)) in enumerate(zip(factors, values, strict=True))]
        operands += values
        conj = [x.dtype.is_complex] * n + [False] * n
        cached = _leaf_cached(route[1], list(factors) * 2, conj, _work_dtype(x.dtype))
        _net_steps(s, route[1], "tr", "", operands, [*range(n - 1, -1, -1), *range(n, 2 * n)],
                   adjoints + names, set(), cached, frozenset())
        return
    if route[0] == "core":  # a sum: the core's singular values, which can tell zero
        _spectral_steps(s, x, "svdvals")
        values = (s.rows[-1].output, len(s.rows) - 1)
        s.add("sum of squared singular values", [values], tuple(x.shape[:-2]),
              2 * _batch(x) * values[0][-1], True)
        return
    if route[0] == "core squares":
        _core_squares_steps(s, x)
        return
    L, R, left, right = _sides(s, x)
    batch = tuple(x.shape[:-2])
    m, r, n, b = x.shape[-2], L.shape[-1], x.shape[-1], _batch(x)
    if left is None or right is None:
        s.add("sum of squares", [right if left is None else left], batch, 2 * math.prod(x.shape), True)
        return
    lname, rname = _side_name(left, "L"), _side_name(right, "")  # right: R^H as formed
    # each Gram matrix is multiplied and held over its side's own batch (a side the batch shares,
    # once), as linalg.norms._split_gram_peak counts it
    gl = s.add(f"Gram {lname}^H {lname}", [left], (*L.shape[:-2], r, r), _batch(L) * 2 * m * r * r, True)
    gr = s.add(f"Gram {rname}^H {rname}" if rname else "Gram R R^H", [right], (*R.shape[:-2], r, r),
               _batch(R) * 2 * n * r * r, True)
    s.add("tr(G_L G_R)", [gl, gr], batch, gram_trace_flops(b, r, x.dtype), True)


def _core_squares_steps(s: _Schedule, x: Expr) -> None:
    """A shared tall leaf: the core ``svdvals`` forms, then its sum of squares."""
    _svd_steps(s, x, values_only=True, core_only=True)
    core = (s.rows[-1].output, len(s.rows) - 1)
    s.add("sum of squares of the core", [core], tuple(x.shape[:-2]), 2 * math.prod(core[0]), True)


def core_squares_costs(x: Expr) -> tuple[int, int]:
    """``(peak bytes, FLOPs)`` of the core-squares Frobenius route (no budget slicing), as
    ``explain(x, "matrix_norm")`` shows it when that route is taken: what
    :func:`lazymat.linalg.norms.fro_route` weighs it by."""
    s = _Schedule(_itemsize(x.dtype))
    _core_squares_steps(s, x)
    rows, peak = s.finish()
    return peak, sum(r.flops for r in rows)


def _closed_steps(s: _Schedule, x: Expr, diag: bool, prefix: str = "") -> Value:
    """The trace or diagonal of a square ``x`` as :func:`lazymat.linalg.trace` runs it: where a
    term is a cat, each diagonal block (:func:`lazymat.rewrite.diagonal_pieces`)
    on its own, the earlier blocks' results held meanwhile, then joined."""
    pieces = diagonal_pieces(x)
    if pieces is None:
        return _network_steps(s, x, diag, prefix)
    batch = tuple(x.shape[:-2])
    values, total, held, kept_all = [], None, 0, 0
    for k, (_, p) in enumerate(pieces):
        first = len(s.rows)
        value = _closed_steps(s, p, diag, f"{prefix}part {k}: ")
        for row in range(first, len(s.rows)):  # a network's own live figures miss what is held
            if row in s.fixed:
                s.fixed[row] += held
        kept_all += closed_kept_bytes(p, diag)
        if diag:  # the blocks' diagonals are joined at the end
            values.append(value)
            held = sum(s.rows[v[1]].bytes_written for v in values) + kept_all
        else:  # the traces are added as they come
            total = value if total is None else \
                s.add(f"{prefix}sum + part {k}", [total, value], batch, math.prod(batch))
            held = s.rows[total[1]].bytes_written + kept_all
    if not diag:
        return total
    n = x.shape[-1]
    tiled = [start for start, _ in pieces] == list(itertools.accumulate(
        [0] + [p.shape[-1] for _, p in pieces[:-1]])) and sum(p.shape[-1] for _, p in pieces) == n
    added = 0 if tiled else math.prod(batch) * sum(p.shape[-1] for _, p in pieces)
    join = "cat" if tiled else "sum"
    return s.add(f"{prefix}{join} of the blocks' diagonals", values, (*batch, n), added)


def _network_steps(s: _Schedule, x: Expr, diag: bool, prefix: str = "") -> Value:
    c = canonical(x)
    out = (*x.shape[:-1],) if diag else tuple(x.shape[:-2])
    total: Value | None = None
    shared = Shared()  # as the executor runs them: a step an earlier term's network kept is reused
    nets = [closed_chain(t.factors, diag, s.item, shared) for t in c.terms]
    reserve = terms_reserve(c.terms, out, s.item)  # the terms' running sum, as the executor counts it
    blocks = _block_steps(s, c.terms, "")  # formed as the networks' operands are read
    for k, (t, run) in enumerate(zip(c.terms, plan_networks(nets, None, reserve), strict=True)):
        net = run.network
        names = [_view_name(f) for f in t.factors]
        name = f"{prefix}term {k}: " if len(c.terms) > 1 else prefix
        operands = [_operand(f, names[i], blocks) for i, f in enumerate(t.factors)]
        # a coefficient far from 1: every operand rescaled first, nothing kept or cached read
        # (lazymat.execute.contract_sum runs lazymat.execute.rescaled)
        resc = t.has_coefficient and rescales(t)
        for i in range(len(operands)) if resc else ():
            operands[i] = s.add(f"{name}rescale {names[i]}", [operands[i]], t.factors[i].shape,
                                math.prod(t.factors[i].shape))
        cached = set() if resc else _leaf_cached(net, list(t.factors), [False] * len(names), x.dtype)
        value = _net_steps(s, net, "diag" if diag else "tr", name, operands, list(range(len(names))),
                           names, set() if resc else set(run.kept), cached, run.keep, run.held)
        if t.has_coefficient:  # the network's value times the coefficient (with the rescaling powers)
            value = s.add(f"{name}scale", [value], value[0], math.prod(value[0]))
            s.extra[value[1]] = coefficient_bytes(t)
        # a result the network keeps for later ones is counted in ``held_after`` already
        kept = s.rows[value[1]].bytes_written if len(net.program) - 1 in kept_steps(net, run.keep) else 0
        if total is None:
            total, total_kept = value, kept
            continue
        total = s.add(f"{prefix}sum + term {k}", [total, value], out, math.prod(out))
        s.extra[total[1]] = run.held_after - kept - total_kept
        total_kept = 0
    return total


def explain(x: Expr | torch.Tensor | Any, op: str = "to_dense", memory_budget: int | str | None = None,
            **options: Any) -> Report:
    """Cost report of ``op`` on ``x`` (see module docstring); no data is touched. Under
    ``memory_budget`` (default :func:`lazymat.settings.memory_budget` of ``x``'s device) the
    report lists how each planned evaluation or closed network is sliced to fit
    (:attr:`Report.slicing`), and the lazymat route's FLOPs and peak are those of the sliced run;
    where the budget cuts the batch of ``svd``, ``svdvals`` (and what is read off them) or the
    Frobenius norm's Gram routes into blocks, those of the blocked run (its last line). The
    eigenvalue routes' blocks are not shown, nor a backward pass under a budget: autograd's
    footprint has no plan, and the backward sizes its blocks by measuring them as it runs.

    The lazymat route's peak is the figure the executor checks against the budget, from the same
    functions (:attr:`lazymat.plan.Plan.work_bytes`, :func:`lazymat.network.plan_networks`): a budget
    equal to it runs unsliced, one byte less is sliced or refused.

    The reductions of :mod:`lazymat.reduce` (``"topk"``, ``"amax"``, ``"argmax"``, ``"sum"``,
    ``"vector_norm"``, ...) take their arguments as keywords (``k=``, ``dim=``, ``ord=``,
    ``largest=``) and show the route they take: the stream's blocks and lines, whether the far
    factor of a narrow core is formed once, or the closed route (a product with ones, a
    diagonal network) of sums and 2-norms."""
    x = as_expr(x)  # a tensor or a factored matrix, as lazymat.linalg takes
    if op not in OPS and op not in REDUCTIONS:
        raise ValueError(f"explain: unknown op {op!r}; choose one of {', '.join(OPS + REDUCTIONS)}")
    allowed = _REDUCTION_ARGS.get(op, ("dim",)) if op in REDUCTIONS else _OP_ARGS.get(op, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"takes {', '.join(f'{a}=' for a in allowed)}" if allowed else "takes no options"
        raise TypeError(f"explain: op {op!r} {takes}; got {', '.join(f'{a}=' for a in unknown)}")
    if op in OPS and op not in ("to_dense", "matvec", "solve", "lstsq"):
        src = _rounded_source(x)  # what linalg decomposes for a narrowing cast (reads_through_casts)
        x = x if src is None else src
    if op in ("trace", "diagonal") and x.shape[-2] != x.shape[-1]:
        k = min(x.shape[-2:])  # the main diagonal lies in the leading square block, as linalg reads it
        x = x[..., :k, :k]
    if op in ("matrix_rank", "cond") or op == "matrix_norm" and options.get("ord", "fro") != "fro":
        return _read_off_report(x, op, memory_budget, options.get("ord"))
    with scoped(memory_budget=memory_budget):  # the budget can change the route (fro_route)
        if op in REDUCTIONS:
            return _reduction_report(x, op, memory_budget is not None, options)
        k, rhs = _rhs(x, op, options) if op in ("solve", "lstsq") else (1, ())
        return _explain(x, op, memory_budget is not None, k, rhs, options.get("driver"))


def _rhs(x: Expr, op: str, options: dict) -> tuple[int, tuple]:
    """``(k, B's batch dims)`` of ``solve``'s or ``lstsq``'s right-hand side from explain's
    ``k=`` and ``B=`` (a shape, or a tensor or expression of that shape; a batch of vectors by
    the call's rule: for ``solve`` 1-D or ``X.shape[:-1]``, for ``lstsq`` one dim fewer than
    ``X``). Without ``B``, ``B`` is ``(..., m, k)`` with ``X``'s batch dims."""
    k, B = options.get("k"), options.get("B")
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0):
        raise ValueError(f"explain: {op}'s k is the number of columns of B, an int >= 0; got {k!r}")
    if B is None:
        return (1 if k is None else k), ()
    shape = tuple(B.shape) if isinstance(B, (torch.Tensor, Expr)) else tuple(B)
    vector = (len(shape) == 1 or shape == tuple(x.shape[:-1])) if op == "solve" else len(shape) == x.ndim - 1
    rows, cols, batch = (shape[-1], 1, shape[:-1]) if vector else (*shape[-2:], shape[:-2])
    if rows != x.shape[-2] or k is not None and k != cols:
        raise ValueError(f"explain: {op} of X {tuple(x.shape)} takes a B of {x.shape[-2]} rows"
                         f"{'' if k is None else f' and k={k} columns'}, got B {shape}")
    return cols, tuple(batch)


_WHOLE_BATCH = contextvars.ContextVar("lazymat_explain_whole_batch", default=False)


def whole_batch(x: Expr, op: str, memory_budget: int | str | None = None, **options: Any) -> Report:
    """:func:`explain`'s report of ``op`` on ``x`` with the spectral and LU routes run on the whole
    batch, never cut into blocks: the peak :mod:`lazymat.linalg` checks a block against."""
    token = _WHOLE_BATCH.set(True)
    try:
        return explain(x, op, memory_budget, **options)
    finally:
        _WHOLE_BATCH.reset(token)


def _in_blocks(x: Expr, op: str, report: Report, k: int | None = None) -> Report:
    """``report`` with the run :mod:`lazymat.linalg` makes where the budget cuts ``op``'s batch
    into blocks (:func:`lazymat.linalg.blocks.batch_blocks`; the LU routes', ``k`` right-hand sides for
    solve: :func:`lazymat.linalg.systems.lu_batch_blocks`): its peak and FLOPs, and a slicing line."""
    blocked = None if _WHOLE_BATCH.get() else batch_blocks(x, op) if k is None else lu_batch_blocks(x, op, k)
    if blocked is None:
        return report
    keys, peak, flops = blocked
    budget = device_budget(x.device)
    batch = x.shape[:-2]
    dims = [f"batch dim {d} {size}/{keys[0][d].stop - keys[0][d].start}"
            for d, size in enumerate(batch) if keys[0][d].stop - keys[0][d].start < size]
    sliced = Slicing(f"{op} in blocks of the batch", len(keys), dims, flops - report.planned.flops, peak,
                     "each block's answer written into the batch's as it comes")
    note = f"in {len(keys)} blocks of the batch to fit {format_bytes(budget)}"
    planned = Route("lazymat", flops, peak, note)
    return Report(report.expr, report.op, report.shape, report.dtype, report.rows, planned, report.naive,
                  budget, [*report.slicing, sliced])


def _read_off_report(x: Expr, op: str, memory_budget: int | str | None, ord: Any) -> Report:
    """The report of a linalg call read off another op's route, as :mod:`lazymat.linalg` runs
    it: ``matrix_rank``, ``cond`` and the norms ``'nuc'``, ``2``, ``-2`` off the singular values
    (``svdvals``); the norms ``1``, ``-1``, ``inf``, ``-inf`` off the 1-norms of the columns or
    rows, streamed (``vector_norm``). What follows (a count, a ratio, an extreme of ``k`` values)
    is no step worth a row."""
    if op != "matrix_norm":
        inner, read = explain(x, "svdvals", memory_budget), {
            "matrix_rank": "the singular values above the tolerance, counted",
            "cond": "the ratio of the extreme singular values"}[op]
        label = op
    else:
        label = f"matrix_norm(ord={ord!r})"
        number = type(ord) is not bool and isinstance(ord, (int, float))
        if number and ord in (2, -2) or ord == "nuc":
            inner = explain(x, "svdvals", memory_budget)
            read = "the sum of the singular values" if ord == "nuc" else \
                f"the {'largest' if ord > 0 else 'smallest'} singular value"
        elif number and ord in (1, -1, math.inf, -math.inf):
            lines = "columns" if ord in (1, -1) else "rows"
            inner = explain(x, "vector_norm", memory_budget, ord=1, dim=-2 if lines == "columns" else -1)
            read = f"the {'largest' if ord > 0 else 'smallest'} 1-norm of the {lines}"
        else:
            raise ValueError(f"explain: matrix_norm of unsupported ord {ord!r} (use 'fro', 'nuc', 2, -2, "
                             "1, -1, inf, -inf)")
    note = f"read off {inner.op}: {read}" + (f"; {inner.planned.note}" if inner.planned.note else "")
    planned = Route("lazymat", inner.planned.flops, inner.planned.peak_bytes, note)
    return Report(inner.expr, label, inner.shape, inner.dtype, inner.rows, planned, inner.naive,
                  inner.memory_budget, inner.slicing)


def _written_spans(x: Expr) -> tuple[int, set] | None:
    """``(factors, spans)`` of a product written of leaves (plain or transposed) and number scales:
    how many factors, and the ``(first, last)`` factors of each ``@`` as the parentheses give
    it; None for any other expression (a sum, an index, a transposed product). Iterative (a
    matrix power's chain is as deep as it is long)."""
    spans: set = set()
    count = 0
    todo: list = [x]  # nodes to read left to right; an int: where the @ whose right child ends here began
    while todo:
        node = todo.pop()
        if type(node) is int:
            spans.add((node, count - 1))
            continue
        while type(node) is Scale and not isinstance(node.coef, torch.Tensor):
            node = node.children[0]
        if type(node) is Leaf or type(node) is Transpose and type(node.children[0]) is Leaf:
            count += 1
        elif type(node) is MatMul:
            todo += [count, node.children[1], node.children[0]]
        else:
            return None
    return count, spans


# what explain says where the planner forms a product the parentheses do not (docs/expressions.md)
ORDER_NOTE = ("products in another order than written: a sub-product may over- or underflow where the "
              "written ones do not; lazymat.execute.evaluate_as_written runs the written order")


def _order_note(x: Expr) -> str:
    """:data:`ORDER_NOTE` where ``x``, a product written of leaves and number scales, is planned
    to form a sub-product its parentheses do not (its magnitudes are then not eager's: no
    product in the written order tells whether it stays in the float range); else ''."""
    written = _written_spans(x)
    c = canonical(x)
    if written is None or written[0] < 3 or len(c.terms) != 1 or len(c.terms[0].factors) != written[0]:
        return ""
    steps = plan_canon(c).terms[0].steps
    return "" if all((st.left[0], st.right[1]) in written[1] for st in steps) else ORDER_NOTE


def _repeated_members(x: Expr, once: set) -> str:
    """What the report says where a factor's batch index reads a member more than once (a list
    with repeats, an expand no other factor spans): the steps over it run once per copy. The
    factor reading the fewest distinct members is named, except the views in ``once`` (their
    work runs once per distinct member); '' where none repeats."""
    worst = None
    for t in canonical(x).terms:
        for f in t.factors:
            keys = [op[1] for op in f.ops if op[0] == "index"]
            if len(keys) != 1 or f in once:
                continue
            distinct, total = member_counts(keys[0])
            if distinct < total and (worst is None or distinct / total < worst[1] / worst[2]):
                worst = (f, distinct, total)
    if worst is None:
        return ""
    f, distinct, total = worst
    return (f"{to_text(view_expr(f), limit=40)} reads {distinct} distinct of {total} batch members: "
            "products over it run once per member, repeats included")


def _explain(x: Expr, op: str, budget_given: bool, k: int = 1, rhs: tuple = (),
             driver: str | None = None) -> Report:
    """The report of ``op`` on ``x``; ``k`` columns of ``B`` with batch dims ``rhs`` (solve, lstsq),
    lstsq's ``driver`` (None: the device's default, as the call)."""
    m, n, b = x.shape[-2], x.shape[-1], _batch(x)
    answers = tuple(broadcast_shapes(x.shape[:-2], rhs))  # the answer's batch (B may add dims)
    ab = math.prod(answers)
    s = _Schedule(_itemsize(x.dtype))
    naive: list[Route] = []
    returned = None
    note = ""
    if op in ("to_dense", "matvec"):
        target = x if op == "to_dense" else x @ symbol("v", (n, 1), dtype=x.dtype, device=x.device)
        returned = _expr_steps(s, target, "")
        note = _order_note(x) if op == "to_dense" else ""
        naive.append(_left_to_right_route(x) if op == "to_dense" else
                     _dense_route(x, 2 * b * m * n, "then a dense matrix-vector product", b * m))
    elif op in ("svd", "svdvals"):
        k = min(m, n)
        outs = b * (m * k + k + k * n) if op == "svd" else b * k
        naive.append(_dense_route(x, b * _svd_flops(m, n, op == "svd"), "then a dense SVD (estimate)", outs))
        if dense_is_cheaper(x, op):
            note = "small matrices: " + ("materialised" if small_reduction(x, op) is None else
                                         "reduced by one QR") + ", then a dense SVD"
        _spectral_steps(s, x, op)
    elif op in ("eigvals", "eig"):
        _require_square(x, op)
        _eig_steps(s, x, vectors=op == "eig")
        f = b * (25 if op == "eig" else 10) * n**3
        outs = (1 if x.dtype.is_complex else 2) * b * (n + (n * n if op == "eig" else 0))  # complex results
        naive.append(_dense_route(x, f, "then a dense eigensolve (estimate)", outs))
    elif op in ("eigvalsh", "eigh"):
        _require_square(x, op)
        _eigh_steps(s, x, vectors=op == "eigh")
        note = "X must be Hermitian: checked as it runs"
        f = b * (9 * n**3 if op == "eigh" else 4 * n**3 // 3)
        naive.append(_dense_route(x, f, "then a dense Hermitian eigensolve (estimate)",
                                  b * (n + (n * n if op == "eigh" else 0))))
    elif op == "matrix_norm":
        naive.append(_dense_route(x, 2 * b * m * n, "then a dense Frobenius norm", b))
        if dense_norm_route(x):
            note = "small matrices: materialised, then a dense norm"
            _dense_steps(s, x, "matrix_norm")
        else:
            _fro_steps(s, x)
            if fro_route(x)[0] == "core":  # svdvals checks its own peak: the sum is the result
                returned = (s.rows[-1].output, len(s.rows) - 1)
    elif op in ("det", "slogdet", "inv", "solve"):
        _require_square(x, op)
        note = _solve_steps(s, x, op, k, answers)
        outs = b * (n * n if op == "inv" else 1 if op == "det" else 2) if op != "solve" else ab * n * k
        # torch's LU copy of the matrix, its pivots and status (int32): as lazymat's LU steps
        solves = b * 4 * n**3 / 3 if op == "inv" else ab * 2 * n * n * k if op == "solve" else 0
        naive.append(_dense_route(x, b * 2 * n**3 / 3 + solves,
                                  "then a dense LU (estimate)", outs, b * n * n * s.item + b * (n + 1) * 4))
    elif op == "lstsq":
        note = _lstsq_steps(s, x, k, answers, driver)
        # LAPACK's copies of X and of B (max(m, n) x k: the solution is a view of it), the
        # singular values (torch broadcasts X to the answer's batch)
        real = _itemsize(x.dtype.to_real())
        naive.append(_dense_route(x, ab * (_svd_flops(m, n, True) + 2 * (m + n) * min(m, n) * k),
                                  "then a dense SVD least-squares solve (estimate)", 0,
                                  ab * ((m * n + max(m, n) * k) * s.item + min(m, n) * real)))
    else:
        _closed_steps(s, x, diag=op == "diagonal")
        naive.append(_dense_route(x, b * n, f"then the dense {op}", b * (n if op == "diagonal" else 1)))
    repeats = _repeated_members(x, s.once)
    note = f"{note}; {repeats}" if note and repeats else note or repeats
    rows, peak = s.finish(returned)
    budget = device_budget(x.device)
    slicing, checked = _slicing(x, op, budget)
    planned = Route("lazymat", sum(r.flops for r in rows), peak if checked is None else checked, note)
    sliced = [sl for sl in slicing if sl.dims]  # one block can fit where none did: shared work first
    if sliced:
        planned = Route("lazymat", planned.flops + sum(sl.added_flops for sl in sliced), planned.peak_bytes,
                        f"sliced to fit {format_bytes(budget)}")
    shown = budget_given or bool(sliced)
    report = Report(to_text(x, limit=160), op, tuple(x.shape), str(x.dtype).replace("torch.", ""), rows,
                    planned, naive, budget if shown else None, slicing if shown else [])
    if op in ("svd", "svdvals") and not dense_is_cheaper(x, op) or op == "matrix_norm" and not (
            dense_norm_route(x) or fro_route(x)[0] in ("core", "network")):
        return _in_blocks(x, op, report)  # (as linalg runs them: _spectrum, _fro_squared)
    if op in ("det", "slogdet", "inv", "solve") and not _WHOLE_BATCH.get():
        whole = answers == tuple(x.shape[:-2])  # (B adds batch dims: no blocks)
        lu_route(x, op, k, whole, None if whole else (*answers, n, k))  # refuses where the call does
        if whole:
            return _in_blocks(x, op, report, k)  # (as linalg runs them: _lu_in_blocks)
    return report


def _solve_steps(s: _Schedule, x: Expr, op: str, k: int, answers: tuple) -> str:
    """The route of :func:`lazymat.linalg.det` (``slogdet``, ``inv``, ``solve`` with ``k``
    right-hand sides): nothing but ``1^T X 1`` (the inf/NaN rule) for a structurally singular
    ``det``; else each square segment formed (a leaf view is read as it is) and factorised by
    LU (``2/3 n^3``, the LU's copy held while it runs), its det, inverse (``2 n^3`` with the
    LU) or solve (``2 n^2 k`` more), one segment after the other; or, where that is cheaper
    (:func:`lazymat.linalg.square_segments` of ``op``: small matrices), ``X`` formed whole and
    one LU. ``answers``: the answer's batch dims (``B``'s broadcast with ``X``'s, for solve).
    Returns the report's note."""
    n, batch, b, item = x.shape[-1], tuple(x.shape[:-2]), _batch(x), s.item
    ab = math.prod(answers)
    rank = structural_rank(x)
    if rank < n:
        if op in ("inv", "solve"):
            return f"structural rank {rank} < {n}: singular for any leaf values, the call raises LinAlgError"
        row = symbol("ones^T", (1, x.shape[-2]), dtype=x.dtype, device=x.device)
        column = symbol("ones", (n, 1), dtype=x.dtype, device=x.device)
        first = len(s.rows)
        total = _expr_steps(s, row @ x @ column, "1^T X 1 (inf/NaN check): ")
        for i in range(first, len(s.rows)):  # linalg makes the two ones vectors: held throughout
            s.extra[i] = s.extra.get(i, 0) + (x.shape[-2] + n) * _work_dtype(x.dtype).itemsize
        zeros = s.add("times 0: the det's zeros (NaN where an entry is inf or NaN)", [total], batch, b)
        if op == "slogdet":
            s.add("sign 0, logabsdet -inf", [zeros], batch, b, written=2 * b * item)
        return f"structural rank {rank} < {n}: det 0 read off the structure, nothing n x n formed"
    rhs = (*answers, n, k) if op == "solve" and answers != batch else None  # (B adds batch dims)
    c, segments = square_segments(x, op, k if op == "solve" else 0, rhs=rhs)
    checked = op in ("det", "slogdet") and answer_checked(x, c, len(segments))  # (before c is 1)
    previous: list[Value] = [((*answers, n, k), "B")] if op == "solve" else []
    for i, seg in enumerate(segments):
        value = _expr_steps(s, seg, f"segment {i}: ")
        value = (tuple(seg.shape), value[1]) if isinstance(value[1], str) else value
        sb, shape = _batch(seg), tuple(seg.shape)
        if op in ("det", "slogdet") and scaled_segment(c, len(segments), x.dtype):
            value = s.add("c * segment (torch's formed matrix: a complex inf entry's NaN part)", [value],
                          shape, sb * n * n)
            c = 1
        lu = sb * 2 * n**3 / 3
        if op == "solve":
            row = s.add(f"solve with segment {i} (LU)", [value, previous[-1]], (*answers, n, k),
                        lu + ab * 2 * n * n * k, estimate=True)
            previous = [row]
        elif op == "inv":
            row = s.add(f"inverse of segment {i} (LU)", [value], shape, lu + sb * 4 * n**3 / 3, estimate=True,
                        hold=True)
        else:
            row = s.add(f"{op} of segment {i} (LU)", [value], shape[:-2], lu, estimate=True,
                        written=sb * (1 if op == "det" else 2) * item)
            previous.append(row)
        # the LU's copy of the segment, its pivots and status (int32), and the coefficient's
        # 0-dim powers beside a det (c, |c|, its sign and c^n)
        s.extra[row[1]] = sb * n * n * item + sb * (n + 1) * 4 + (4 * item if op in ("det", "slogdet") else 0)
        if checked and op == "det":  # the inf/NaN check: 0 times the det, and its running sum
            s.extra[row[1]] += 2 * b * item
    if op in ("det", "slogdet"):
        what = "dets" if op == "det" else "signs, sum of their logs"
        flops = b * (len(segments) + 1)
        last = s.add(f"c^n times the product of the segments' {what}", previous, batch, flops)
        if checked:  # the check read back: its running sum (det) and the members' sum (0-dim)
            s.extra[last[1]] = s.extra.get(last[1], 0) + (b * item if op == "det" else 0) + item
    elif op == "solve" and not (type(c) in (int, float) and c == 1):
        s.add("Y / c", previous, (*answers, n, k), ab * n * k)
    count = f"{len(segments)} square segment{'s' if len(segments) > 1 else ''}"
    if len(segments) > 1 or len(canonical(x).terms) > 1:
        return count if len(segments) > 1 else "a sum: formed whole"
    cut = len(square_segments(x)[1])
    return count if cut == 1 else f"small: formed whole, one LU (cheaper than {cut} square segments' LUs)"


def _lstsq_steps(s: _Schedule, x: Expr, k: int, answers: tuple, driver: str | None = None) -> str:
    """The route of :func:`lazymat.linalg.lstsq` for ``k`` right-hand sides (the answer's batch
    dims ``answers``) under ``driver`` (None: ``gelsy`` on the CPU, ``gels`` elsewhere, as the
    call; at its default ``rcond``): ``svd``'s (at most ``r`` triplets, the inner width), then
    ``U^H @ B`` and ``V @ (S^-1 U^H B)``. gelsy runs LAPACK's gelsy on a core ``C`` with
    ``X = U C`` (:func:`lazymat.linalg.systems._pivoted_qr_solution`): ``R`` of the formed
    ``X``'s QR where the SVD route would form ``X``, else ``S Vh``; its pivoting (host steps
    up to the rank, skipped where a full rank is certified: estimates) and the truncated
    solution. The residuals (``m > n``, some drivers) add ``X @ Y``, planned as a product with
    a tensor."""
    driver = ("gelsy" if x.device.type == "cpu" else "gels") if driver is None else driver
    if driver not in ("gels", "gelsy", "gelsd", "gelss"):
        raise ValueError(f"explain: lstsq's driver is one of gels, gelsy, gelsd, gelss (as torch), "
                         f"got {driver!r}")
    m, n, batch, b = x.shape[-2], x.shape[-1], answers, math.prod(answers)
    own = tuple(x.shape[:-2])
    ob = math.prod(own)
    if driver == "gelsy" and _formed_route(x):
        value = s.hold(_expr_steps(s, x, ""))
        if isinstance(value[1], str):  # a leaf (or a view of one): nothing is formed
            value = (tuple(x.shape), value[1])
        w = min(m, n)
        # Householder QR with Q formed (LAPACK's copy of X beside Q and R), then R^-1 by a
        # triangular solve against the identity (m >= n: the bounds that may certify rank n)
        qr_flops = 2 * (2 * m * n * w - (m + n) * w * w + 2 * w**3 / 3)
        inverse = n**3 + 2 * n * n if m >= n else 0
        core = s.add("QR of the formed X (C = R), R^-1 (its full-rank bounds)", [value], (*own, w, n),
                     ob * (qr_flops + inverse), estimate=True,
                     written=ob * (2 * m * w + w * n + (2 * n * n if m >= n else 0)) * s.item, hold=True)
        # (?ormqr writes Q^H B at B's height; its first w rows, a view, are read on)
        uhb = s.add("Q^H @ B", [((*own, m, w), core[1]), ((*batch, m, k), "B")], (*batch, w, k),
                    b * 2 * m * w * k, written=b * max(m, w) * k * s.item)
        return _gelsy_steps(s, core, uhb, x, batch, w, k,
                            "gelsy: LAPACK's pivoted-QR rank and truncated answer off R of the formed X's QR")
    _spectral_steps(s, x, "svd")
    svd = len(s.rows) - 1
    r = structural_rank(x)
    uhb = s.add("U^H @ B", [((*own, m, r), svd), ((*batch, m, k), "B")], (*batch, r, k), b * 2 * m * r * k)
    if driver != "gelsy":
        y = s.add("solution V @ (U^H B / S)", [((*own, r, n), svd), uhb], (*batch, n, k),
                  b * (2 * n * r * k + r * k))
        if m > n:  # the residuals (gels; gelsd and gelss at rank n, counted whatever the rank)
            fit = plan_expr(x @ symbol("Y", (*batch, n, k), x.dtype, x.device))
            xy = s.add("X @ Y (the residuals' fit)", [((*own, m, n), "X"), y], (*batch, m, k), fit.flops,
                       written=max(fit.peak_bytes, b * m * k * s.item))
            s.add("residuals: ||X Y - B||^2 per column", [xy, ((*batch, m, k), "B")], (*batch, k),
                  b * 3 * m * k, written=b * (m * k + 2 * k) * s.item)
        return "minimum-norm solution off the nonzero triplets (the m x n matrix never formed)"
    c = s.add("C = S Vh", [((*own, r, n), svd)], (*own, r, n), ob * r * n)
    return _gelsy_steps(s, c, uhb, x, batch, r, k,
                        "gelsy: LAPACK's pivoted-QR rank and truncated answer off C = S Vh (the m x n matrix "
                        "never formed)")


def _gelsy_steps(s: _Schedule, core: Value, uhb: Value, x: Expr, batch: tuple, r: int, k: int,
                 note: str) -> str:
    """gelsy's steps on its core ``C (..., r, n)`` of ``x`` and ``U^H B (batch, r, k)``: the
    pivoting on a float64 host copy (Householder steps up to the rank, at most ``min(r, n)``),
    then ``C`` in pivot order and the truncated solution (at most rank ``r``: estimates)."""
    own, n = tuple(x.shape[:-2]), x.shape[-1]
    ob, b, w = math.prod(own), math.prod(batch), min(r, n)
    host = 16 if x.dtype.is_complex else 8  # (a float64 or complex128 copy)
    # per step: the reflector applied to the trailing block, the partial norms downdated
    ordered = s.add("C in LAPACK's column-pivot order (Householder steps on the host, to the rank)", [core],
                    (*own, r, n), ob * (4 * r * n * w - 2 * (r + n) * w * w + 4 * w**3 / 3),
                    estimate=True, written=ob * (r * n * (host + s.item) + 4 * n * 8))
    # Q_k (k <= r), Q_k^H C and Q_k^H U^H B, a QR of the n x k (Q_k^H C)^H (LAPACK's copy and
    # its Q held beside Q_k^H C) and its triangular solve, the answer's columns put back
    flops = b * (2 * r**3 + 4 * r * r * n + 3 * r * r * k + 2 * n * r * k + n * k)
    s.add("truncated solution: minimum-norm y of Q_k^H C y = Q_k^H U^H B, columns put back",
          [ordered, uhb], (*batch, n, k), flops, estimate=True,
          written=b * (3 * r * n + r * r + 2 * n * k) * s.item)
    return note


def _reduction_report(x: Expr, op: str, budget_given: bool, options: dict) -> Report:
    """The route of a :mod:`lazymat.reduce` reduction: closed (a product with ones for sums
    over a matrix dim, the diagonal network of ``X X^H`` for row or column 2-norms, the
    Frobenius norm) or streamed in blocks of whole lines (:func:`lazymat.reduce.stream_plan`)."""
    from . import reduce as RD  # reduce runs linalg's routes; explain is imported before it

    label = op + "(" + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")"
    rows_dim, cols_dim = x.ndim - 2, x.ndim - 1
    if op == "topk":
        if "k" not in options:
            raise TypeError("explain: op 'topk' needs k= (the number of values per line)")
        dims = (RD.topk_count(x, options["k"], options.get("dim", -1))[0],)
    elif op in ("argmax", "argmin") and options.get("dim") is None:
        dims = (cols_dim,)  # the flattened tensor: each row's best, streamed over rows
    elif op in ("max", "min") and options.get("dim") is None:
        dims = tuple(range(x.ndim))  # every dim: amax (amin) of the blocks' extremes
    elif op in ("argmax", "argmin", "max", "min"):
        dims = (RD._dim(x, options["dim"], op),)
    else:
        dims = RD._dims(x, options.get("dim", () if op in ("amax", "amin") else None), op)
    if not math.prod(x.shape):  # nothing to stream: torch's own answer, or its error, for that shape
        torch_op = torch.linalg.vector_norm if op == "vector_norm" else getattr(torch, op)
        torch_op(torch.empty(x.shape, dtype=x.dtype), **{k: v for k, v in options.items() if v is not None})
    matrix = rows_dim in dims or cols_dim in dims
    ord_ = RD.vector_order(options.get("ord", 2))
    if op in ("sum", "mean") and matrix:  # X @ 1 and / or 1^T @ X, as reduce.sum runs them
        y = RD._widened(x)
        if cols_dim in dims:
            y = y @ symbol("ones", (x.shape[-1], 1), dtype=y.dtype, device=x.device)
        if rows_dim in dims:
            y = symbol("ones^T", (1, x.shape[-2]), dtype=y.dtype, device=x.device) @ y
        inner = _explain(y, "to_dense", budget_given)
        beside = RD.ones_beside(x, dims)  # the ones vectors, a product summed further
        inner = replace(inner, planned=replace(
            inner.planned, peak_bytes=inner.planned.peak_bytes + beside))
        return _closed_report(x, label, inner, "a product with ones")
    if op == "vector_norm" and ord_ == 2 and matrix and math.prod(x.shape):
        if rows_dim in dims and cols_dim in dims:
            return _closed_report(x, label, _explain(x, "matrix_norm", budget_given), "the Frobenius norm")
        y = RD._widened(x)
        gram = y.mH @ y if rows_dim in dims else y @ y.mH
        side = "X^H X" if rows_dim in dims else "X X^H"
        return _closed_report(x, label, _explain(gram, "diagonal", budget_given), f"the diagonal of {side}")
    s_dim = RD._stream_dim(x, dims)
    flattened = op in ("argmax", "argmin") and options.get("dim") is None
    stream = RD.stream_plan(x, s_dim, device_budget(x.device), op,
                            RD.kept_bytes(x, dims, s_dim, flattened))
    return _streamed_report(x, op, label, stream, dims, options.get("k", 1))


def _closed_report(x: Expr, label: str, inner: Report, route: str) -> Report:
    """``inner`` (the report of the closed route) retitled as the reduction of ``x``."""
    note = f"closed route: {route}, no streaming" + (f"; {inner.planned.note}" if inner.planned.note else "")
    planned = Route("lazymat", inner.planned.flops, inner.planned.peak_bytes, note)
    naive = [_dense_route(x, math.prod(x.shape), "then the dense reduction", 0)]
    return Report(to_text(x, limit=160), label, tuple(x.shape), str(x.dtype).replace("torch.", ""),
                  inner.rows, planned, naive, inner.memory_budget, inner.slicing)


def _streamed_report(x: Expr, op: str, label: str, stream, dims: tuple, k: int) -> Report:
    """Rows of a streamed reduction: the far factor formed once (on the factored route), the
    blocks (one row for all of them) and the reduction of each block."""
    s = _Schedule(_itemsize(x.dtype))
    line = "row" if stream.dim == x.ndim - 2 else "column"
    size = x.shape[stream.dim]
    reads = []
    far_flops = 0
    if stream.far is not None:
        far = s.hold(_expr_steps(s, stream.far, "far factor, formed once: "))
        if isinstance(far[1], str):
            far = (tuple(stream.far.shape), far[1])
        reads = [far]
        far_flops = plan_expr(stream.far).flops
    shape = list(x.shape)
    shape[stream.dim] = stream.lines
    what = ("near factor @ far factor" if stream.far is not None else "evaluate X")
    block = s.add(f"{stream.blocks} blocks of {stream.lines} {line}s: {what}", reads, tuple(shape),
                  stream.flops - far_flops)
    s.fixed[block[1]] = stream.peak_bytes
    result = list(shape)
    for d in dims:  # a block's partial result: k (top-k) or 1 along each reduced dim
        result[d] = k if op == "topk" else 1
    done = s.add(f"{op} of each block", [block], tuple(result), math.prod(x.shape), written=0)
    s.fixed[done[1]] = stream.peak_bytes
    rows, peak = s.finish()
    note = f"streamed: {stream.blocks} block{'' if stream.blocks == 1 else 's'} of {stream.lines} {line}s"
    if stream.far is not None:
        width = stream.far.shape[-2] if line == "row" else stream.far.shape[-1]
        note += f"; narrow core {width}: far factor formed once"
    planned = Route("lazymat", stream.flops + math.prod(x.shape), peak, note)
    naive = [_dense_route(x, math.prod(x.shape), f"then torch.{op}", 0)]
    budget = device_budget(x.device)
    slicing = [Slicing(f"{op} streamed over {line}s", stream.blocks, [f"{line}s {size}/{stream.lines}"],
                       stream.flops - plan_expr(x).flops, stream.peak_bytes)]
    return Report(to_text(x, limit=160), label, tuple(x.shape), str(x.dtype).replace("torch.", ""), rows,
                  planned, naive, budget, slicing)


def dense_route_peak(x: Expr, op: str) -> int:
    """Peak bytes of the dense route of ``op`` (``"svdvals"``, ``"svd"``, ``"matrix_norm"``) on
    the whole batch of ``x``: the matrix formed as planned, then torch's routine."""
    s = _Schedule(_itemsize(x.dtype))
    _dense_steps(s, x, op)
    return s.finish()[1]


def _slicing(x: Expr, op: str, budget: int) -> tuple[list[Slicing], int | None]:
    """How the executor slices the evaluations and networks of ``op`` under ``budget``, and the
    peak it checks against the budget (None where :mod:`lazymat.linalg` checks explain's own
    schedule: the spectral routes, the split Gram and core routes of the Frobenius norm)."""
    if op in ("to_dense", "matvec"):
        target = x if op == "to_dense" else x @ symbol("v", (x.shape[-1], 1), dtype=x.dtype, device=x.device)
        sp = slice_plan(target, budget)
        dims = [f"{kind} dim {d} {size}/{blk}" if kind == "batch" else f"{kind}s {size}/{blk}"
                for d, size, blk, kind in sp.dims]
        return [Slicing(op, sp.slices, dims, sp.added_flops, sp.peak_bytes, sp.note)], sp.peak_bytes
    nets = []
    if op == "matrix_norm":
        if dense_norm_route(x):
            return [], None
        route = fro_route(x)
        if route[0] != "network":
            return [], None
        nets.append(("tr(X^H X)", route[1]))
        reserve, what = 0, None  # run alone
    elif op in ("trace", "diagonal"):  # each diagonal block of a cat planned alone, as it runs
        out: list[Slicing] = []
        peak = 0
        for y, prefix, held in _diagonal_blocks(x, op):
            try:
                rows, piece_peak = _closed_slicing(y, op, max(budget - held, 0), prefix)
            except BudgetTooSmall:
                raise pieces_too_small(x, op, budget) from None
            out.extend(rows)
            peak = max(peak, held + piece_peak)
        return out, peak
    else:
        return [], None
    return _run_slicing(nets, reserve, what, x, budget)


def _diagonal_blocks(x: Expr, op: str) -> list[tuple[Expr, str, int]]:
    """``(block, its rows' prefix, bytes held beside it)`` for the trace or diagonal of ``x`` run
    in diagonal blocks (:func:`lazymat.rewrite.diagonal_pieces`, nested), in the order they run:
    each beside the earlier blocks' diagonals (the traces' running sum) and what their networks
    keep; ``[(x, "", 0)]`` when it has none. The held bytes do not depend on the budget."""
    out, todo = [], [(x, "", 0)]
    while todo:
        y, prefix, held = todo.pop(0)
        pieces = diagonal_pieces(y)
        if pieces is None:
            out.append((y, prefix, held))
            continue
        diag, item = op == "diagonal", _itemsize(y.dtype)
        sizes = [math.prod(p.shape[:-1]) * item if diag else (k > 0) * item * math.prod(
            torch.broadcast_shapes(*(q.shape[:-2] for _, q in pieces[:k])))
            for k, (_, p) in enumerate(pieces)]
        kept = [closed_kept_bytes(p, diag) for _, p in pieces]
        todo[:0] = [(p, f"{prefix}part {k}: ", held + (sum(sizes[:k]) if diag else sizes[k]) + sum(kept[:k]))
                    for k, (_, p) in enumerate(pieces)]
    return out


def pieces_too_small(x: Expr, op: str, budget: int) -> BudgetTooSmall:
    """The error for the trace or diagonal of ``x`` run in diagonal blocks, one of which does not
    fit ``budget`` less what is held beside it: the least budget is the largest, over the
    blocks, of a block's own least plus the bytes held beside it (the refusing block's own
    least alone, named before, was refused again: the held bytes come off the budget)."""
    reserve = blas_workspace(x.device)
    least = 0
    for y, _, held in _diagonal_blocks(x, op):
        try:
            _closed_slicing(y, op, 0, "")
            own = 0
        except BudgetTooSmall as err:
            own = err.minimum - reserve
        least = max(least, held + own)
    dtype = str(x.dtype).replace("torch.", "")
    return BudgetTooSmall(f"{op} of a {tuple(x.shape)} {dtype} expression",
                          "its diagonal blocks, each beside what the blocks before it hold", budget, least,
                          x.device)


def _closed_slicing(x: Expr, op: str, budget: int, prefix: str) -> tuple[list[Slicing], int]:
    """:func:`_slicing` of the closed networks of a trace or diagonal of ``x``, one per term."""
    nets = []
    shared = Shared()
    c = canonical(x)
    for k, t in enumerate(c.terms):
        net = closed_chain(t.factors, op == "diagonal", _itemsize(x.dtype), shared)
        nets.append((f"{prefix}{op} of term {k}" if len(c.terms) > 1 else f"{prefix}{op}", net))
    shape = (*x.shape[:-2], *((x.shape[-1],) if op == "diagonal" else ()))
    reserve = terms_reserve(c.terms, shape, _itemsize(x.dtype))  # the terms' running sum
    dtype = str(x.dtype).replace("torch.", "")
    what = f"{op} of a {tuple(x.shape)} {dtype} expression ({len(nets)} closed networks)"
    forming = blocks_bytes(c.terms)[0]  # the nested blocks, formed before the networks run
    out, peak = _run_slicing(nets, reserve, what, x, budget, forming)
    return out, max(peak, forming)


def _run_slicing(nets: list, reserve: int, what: str | None, x: Expr,
                 budget: int, forming: int = 0) -> tuple[list[Slicing], int]:
    """The :class:`Slicing` rows of ``nets`` (name, network) planned as the executor plans them
    (``forming``: the nested blocks formed before them, :func:`lazymat.network.plan_networks`)."""
    out = []
    runs = plan_networks([net for _, net in nets], None, reserve)  # as the executor: whole when it fits
    if max(forming, *(run.peak_bytes for run in runs)) > budget:
        runs = plan_networks([net for _, net in nets], budget, reserve, x.device, what, forming)
    for (part, net), run in zip(nets, runs, strict=True):
        cost = run.cost
        if cost is None:
            out.append(Slicing(part, 1, [], 0, run.peak_bytes))
        else:
            dims = [f"{kind} {'index ' if kind == 'contracted' else 'dim '}{size}/{dict(cost.blocks)[c]}"
                    for c, size, kind in cost.dims]
            out.append(Slicing(part, cost.slices, dims, cost.flops - net.flops, run.peak_bytes))
    return out, max(run.peak_bytes for run in runs)


def _left_to_right_route(x: Expr) -> Route:
    """The same schedule with every product multiplied left to right."""
    s = _Schedule(_itemsize(x.dtype))
    with scoped(optimize="left-to-right"):
        value = _expr_steps(s, x, "")
    rows, peak = s.finish(value)
    return Route("left-to-right products", sum(r.flops for r in rows), peak)


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
    """Graphviz DOT text of the expression DAG as typed; nodes show op, shape and the FLOPs to
    materialise them on their own (omitted past 500 nodes). For the steps that run, see
    :meth:`Report.to_dot`."""
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


def draw(x: Expr, path: str, op: str = "to_dense") -> Report:
    """Save a picture of the steps that ``op`` on ``x`` runs (the rows :func:`explain` prints,
    with the user's names, FLOPs and live memory per step, and the dense route's totals) to
    ``path`` (.png, .svg or .pdf); returns the report it was drawn from."""
    report = explain(x, op)
    report.draw(path)
    return report
