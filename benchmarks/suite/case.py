"""A case (one figure) and the context workloads build cases in. Building runs nothing heavy
except drawing the weights, so a memory child can rebuild one case cheaply.

A case holds one callable per implementation (``"lazymat"`` first, the reference of every
ratio), the floor of the cheapest route, the peers that were not run and why, and optionally
a quality measure of a result (e.g. the true nmse of a factorization)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lazymat.presets import PRESETS, ModelShape

from .floor import Floor

# a model small enough for the suite's own test to run every route in a second
TINY = ModelShape(d_vocab=300, d_model=48, n_layers=3, n_heads=2, d_head=8, d_mlp=96, n_ctx=64)
SHAPES: dict[str, ModelShape] = {"tiny": TINY, **PRESETS}


@dataclass
class Case:
    workload: str
    name: str
    impls: dict[str, Callable[[], Any]]
    floor: Floor | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    quality: Callable[[Any], float] | None = None
    quality_name: str = ""
    estimates: dict[str, dict] = field(default_factory=dict)  # shape-only results (no timing)
    prepare: Callable[[], None] | None = None  # run before the case is timed (e.g. draw its weights)


@dataclass
class Context:
    device: str
    preset: str
    quick: bool
    gemm_flops: float
    memory_budget: int
    _weights: dict = field(default_factory=dict)

    @property
    def shape(self) -> ModelShape:
        return SHAPES[self.preset]

    def weights(self, shape: ModelShape | None = None, seed: int = 0, alone: bool = False
                ) -> dict[str, torch.Tensor]:
        """Random weights of ``shape`` (default: the preset's), TransformerLens names, drawn once
        and kept. ``alone``: first drop every other model's weights except the preset's (a large
        model on a GPU leaves no room for another)."""
        s = shape or self.shape
        key = (s, seed)
        if alone and key not in self._weights:
            self._weights = {k: v for k, v in self._weights.items() if k[0] == self.shape}
            if torch.device(self.device).type == "cuda":
                torch.cuda.empty_cache()
        if key not in self._weights:
            self._weights[key] = random_weights(s, self.device, seed)
        return self._weights[key]

    def dense_skip(self, nbytes: float, flops: float, what: str) -> str | None:
        """Why the dense route of ``what`` is not run (None: it fits): its estimated peak memory
        over the memory budget, or its estimated time (GEMM-equivalent ``flops`` at the measured
        GEMM speed) over a minute (10 s with ``--quick``)."""
        if nbytes > self.memory_budget:
            return (f"dense {what} needs ~{nbytes / 2**30:.1f} GiB, over the memory budget "
                    f"{self.memory_budget / 2**30:.1f} GiB")
        seconds = flops / self.gemm_flops
        limit = 10 if self.quick else 60
        if seconds > limit:
            return f"dense {what}: estimated ~{seconds:.0f} s at the measured GEMM speed (limit {limit} s)"
        return None


def random_weights(s: ModelShape, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Attention and embedding weights of ``s`` (fixed seed, scaled like trained ones), drawn on
    ``device`` (so values differ between devices, not between runs)."""
    g = torch.Generator(device).manual_seed(seed)
    L, H, D, Dh, V = s.n_layers, s.n_heads, s.d_model, s.d_head, s.d_vocab
    Hkv = s.n_kv_heads or H

    def w(*shape, scale):
        return torch.randn(*shape, generator=g, device=device) * scale

    return {"W_E": w(V, D, scale=0.1), "W_U": w(D, V, scale=0.1), "W_Q": w(L, H, D, Dh, scale=D**-0.5),
            "W_K": w(L, Hkv, D, Dh, scale=D**-0.5), "W_V": w(L, Hkv, D, Dh, scale=D**-0.5),
            "W_O": w(L, H, Dh, D, scale=Dh**-0.5)}
