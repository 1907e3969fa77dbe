"""lazymat: lazy symbolic matrix expressions for PyTorch.

Products, transposes, scalings, sums and indexing build an expression DAG that is never
materialised unless asked; opt_einsum's cost model plans every product, and the linear
algebra is read off the smallest core matrix.
"""

from . import linalg
from .core import factor
from .execute import SymbolHasNoData

# Bound now, not on first use: ``lazymat.explain`` is also the submodule's name, and importing
# the submodule later (``X.explain()`` does) would rebind ``lm.explain`` to the module. It costs
# ~3 ms; its optional weight (matplotlib, networkx, html) is imported only when used.
from .explain import Report, draw, explain
from .expr import Expr, cat, is_lazy, lazy, safe_globals, symbol
from .indexing import IndexOutOfRange
from .plan import FLOP_UNIT, Plan
from .reduce import topk
from .settings import BudgetTooSmall, config

__all__ = [
    "BudgetTooSmall", "FLOP_UNIT", "Expr", "IndexOutOfRange", "Plan", "Report", "SymbolHasNoData",
    "cat", "config", "draw", "explain", "factor", "is_lazy", "lazy", "linalg", "safe_globals", "symbol",
    "topk",
]
__version__ = "0.1.0"
