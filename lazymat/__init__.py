"""lazymat: lazy symbolic matrix expressions for PyTorch.

Products, transposes, scalings, sums and indexing build an expression DAG that is never
materialised unless asked; opt_einsum's cost model plans every product, and the linear
algebra is read off the smallest core matrix.
"""

from .settings import config
from .execute import SymbolHasNoData
from .expr import Expr, cat, is_lazy, lazy, symbol
from .indexing import IndexOutOfRange
from .plan import FLOP_UNIT, Plan

__all__ = [
    "Expr", "FLOP_UNIT", "IndexOutOfRange", "Plan", "SymbolHasNoData", "cat", "config",
    "is_lazy", "lazy", "symbol",
]
__version__ = "0.1.0"
