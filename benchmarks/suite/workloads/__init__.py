"""The workloads of the suite, in the order it runs them (one module per kind of workload)."""

from __future__ import annotations

from collections.abc import Callable

from ..case import Case, Context
from . import chains, circuits, factorize, large, overhead, topk


def registry() -> dict[str, tuple[str, Callable[[Context], list[Case]]]]:
    """Workload name -> (what it measures, builder), in the order the suite runs them."""
    return {
        "qk-circuit": ("full QK circuit of one head: svd, svdvals, matrix_norm, eigvals, trace, diagonal",
                       circuits.qk_circuit),
        "qk-all-heads": ("full QK circuits of every head (a shared W_E): svdvals, matrix_norm",
                         circuits.qk_all_heads),
        "copying": ("eigenvalue copying scores of every head's full OV circuit", circuits.copying),
        "composition": ("Q-, K-, V-composition scores of every pair of heads", circuits.composition),
        "composition-2-layers": ("Q-, K-, V-composition on the first two layers (TransformerLens runs)",
                                 circuits.composition_two_layers),
        "chains": ("random chains of 6-10 matrices with irregular sizes: to_dense()", chains.chains),
        "overhead": ("build + plan + evaluate of small expressions from fresh tensors, warm and cold plan",
                     overhead.overhead),
        "topk": ("top-k of every row of the full QK circuit under a memory budget (streamed)", topk.topk),
        "large-shapes": ("all-pairs composition and all-head copying scores of gpt2-xl and llama-3-8b-like",
                         large.large_shapes),
        "factorize": ("factorize_matrix of a square layer at rank 0.25, time and true nmse",
                      factorize.factorize),
    }
