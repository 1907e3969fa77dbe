"""Transformer circuits on real or synthetic weights, as lazy expressions.

Load weights (:meth:`Circuits.load`, :meth:`Circuits.from_state_dict`,
:meth:`Circuits.from_model`, :meth:`Circuits.synthetic`), build circuits (``QK``, ``OV``,
``full_QK``, ``full_OV``, ``pos_QK``, ``direct_path``, ``w_in``, ``w_out``, ``path``) and run
the standard analyses (composition scores, copying scores, singular directions in the
vocabulary, diagonal rank). The engine plans every product; this package only builds
expressions. See ``docs/circuits.md``.

>>> from lazymat.circuits import Circuits
>>> c = Circuits.synthetic("gpt2-small")
>>> c.full_OV(3, 5).shape
torch.Size([50257, 50257])
"""

from .analyses import composition_scores, copying_scores, diagonal_rank, random_baseline, singular_directions
from .layouts import LAYOUTS, LayoutError
from .model import Circuits, circuit_names
from .results import Directions, Scores
from .synthetic import synthetic
from .weights import WeightTypeError

__all__ = [
    "LAYOUTS", "Circuits", "Directions", "LayoutError", "Scores", "WeightTypeError", "circuit_names",
    "composition_scores", "copying_scores", "diagonal_rank", "random_baseline", "singular_directions",
    "synthetic",
]
