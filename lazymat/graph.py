"""The expression DAG as a networkx graph: a lens for inspection and pictures."""

from __future__ import annotations

import networkx as nx

from .expr import Expr, Leaf, postorder, to_text

__all__ = ["to_networkx"]


def to_networkx(root: Expr) -> nx.DiGraph:
    """``networkx.DiGraph`` with one node per distinct expression node (keyed by uid) and
    edges child -> parent. Node attributes: ``op``, ``shape``, ``dtype``, ``label``."""
    g = nx.DiGraph()
    for node in postorder(root):
        label = (node.name or "leaf") if isinstance(node, Leaf) else node.op
        g.add_node(node.uid, op=node.op, shape=tuple(node.shape), dtype=str(node.dtype),
                   label=label, symbol=isinstance(node, Leaf) and node.is_symbol)
        for child in node.children:
            g.add_edge(child.uid, node.uid)
    g.graph["root"] = root.uid
    g.graph["text"] = to_text(root, limit=400)
    return g
