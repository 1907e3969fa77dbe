"""Drop-in replacements for other libraries' matrix APIs, built on lazymat expressions.

- :class:`FactoredMatrix` and :func:`composition_scores`: TransformerLens 4.x's API.
"""

from .transformer_lens import (
    FactoredBroadcastError,
    FactoredDeviceError,
    FactoredDtypeError,
    FactoredMatrix,
    FactoredShapeError,
    FactoredVectorError,
    composition_scores,
)

__all__ = ["FactoredBroadcastError", "FactoredDeviceError", "FactoredDtypeError", "FactoredMatrix",
           "FactoredShapeError", "FactoredVectorError", "composition_scores"]
