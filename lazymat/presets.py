"""Weight names and shapes of real models, for costing circuits on symbols.

Names follow TransformerLens: ``W_E (d_vocab, d_model)``, ``W_U (d_model, d_vocab)``,
``W_pos (n_ctx, d_model)`` where the model has learned positions, and per layer and head
``W_Q``, ``W_K``, ``W_V (n_layers, n_heads, d_model, d_head)``, ``W_O (n_layers, n_heads,
d_head, d_model)``, ``W_in (n_layers, d_model, d_mlp)``, ``W_out (n_layers, d_mlp, d_model)``
(and ``W_gate`` for gated MLPs). With grouped key/value heads, ``W_K``/``W_V`` are given per
query head (as TransformerLens exposes them, each KV head repeated) so circuits broadcast;
``W_K_kv``/``W_V_kv`` hold the ``n_kv_heads`` actual ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .expr import Expr, symbol

__all__ = ["PRESETS", "ModelShape", "preset_symbols"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes that fix every weight shape of a transformer (see :meth:`shapes`)."""

    d_vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int | None = None  # learned positional embedding size (None: rotary)
    n_kv_heads: int | None = None
    gated_mlp: bool = False

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Weight name -> shape, with TransformerLens' names and layout."""
        L, H, D, Dh = self.n_layers, self.n_heads, self.d_model, self.d_head
        out = {
            "W_E": (self.d_vocab, D),
            "W_U": (D, self.d_vocab),
            "W_Q": (L, H, D, Dh),
            "W_K": (L, H, D, Dh),
            "W_V": (L, H, D, Dh),
            "W_O": (L, H, Dh, D),
            "W_in": (L, D, self.d_mlp),
            "W_out": (L, self.d_mlp, D),
        }
        if self.n_ctx is not None:
            out["W_pos"] = (self.n_ctx, D)
        if self.gated_mlp:
            out["W_gate"] = (L, D, self.d_mlp)
        if self.n_kv_heads is not None:
            out["W_K_kv"] = (L, self.n_kv_heads, D, Dh)
            out["W_V_kv"] = (L, self.n_kv_heads, D, Dh)
        return out


PRESETS: dict[str, ModelShape] = {
    "gpt2-small": ModelShape(50257, 768, 12, 12, 64, 3072, n_ctx=1024),
    "gpt2-medium": ModelShape(50257, 1024, 24, 16, 64, 4096, n_ctx=1024),
    "gpt2-xl": ModelShape(50257, 1600, 48, 25, 64, 6400, n_ctx=1024),
    "pythia-6.9b": ModelShape(50432, 4096, 32, 32, 128, 16384),
    "llama-3-8b-like": ModelShape(128256, 4096, 32, 32, 128, 14336, n_kv_heads=8, gated_mlp=True),
}


def preset_symbols(name: str, dtype: torch.dtype = torch.float32) -> dict[str, Expr]:
    """Shape-only symbols for every weight of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {k: symbol(k, s, dtype=dtype) for k, s in PRESETS[name].shapes().items()}
