"""Larger models: all-pairs K-composition and all-head copying scores of gpt2-xl and
llama-3-8b-like. On CUDA they run (TransformerLens where its estimated memory fits the budget,
an out-of-memory error recorded as a result); on the CPU they are costed on shape-only symbols
with ``lazymat.explain`` (FLOPs, peak memory) and nothing runs."""

from __future__ import annotations

import torch

import lazymat as lm
from lazymat.circuits import Circuits
from lazymat.presets import PRESETS, preset_symbols

from .. import peers
from ..case import Case, Context
from ..floor import Floor
from .circuits import composition_floor, composition_pairs, tl_composition, tl_copying

LARGE = ("gpt2-xl", "llama-3-8b-like")


def _symbols(name: str) -> dict[str, lm.Expr]:
    """Shape-only weights in Circuits' layout (grouped key/value heads as stored)."""
    s = preset_symbols(name)
    if "W_K_kv" in s:
        s["W_K"], s["W_V"] = s.pop("W_K_kv"), s.pop("W_V_kv")
    return {k: v for k, v in s.items() if k in ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O")}


def _tl_bytes(name: str, analysis: str) -> int:
    """TransformerLens's largest allocation, float32: for K-composition its broadcast
    ``(L, H, L, H, d_head, d_model)`` operands, for copying the per-head ``W_E W_V``, ``W_O W_U``."""
    s = PRESETS[name]
    heads = s.n_layers * s.n_heads
    if analysis == "K-composition":
        return heads * heads * s.d_head * s.d_model * 4 * 2
    return heads * s.d_vocab * s.d_head * 4 * 2


def _explained(c: Circuits, analysis: str, timed: bool) -> tuple[Floor, int]:
    """Floor and lazymat's planned peak memory of an analysis, on symbols (``timed``: its
    decompositions are timed alone on random data; else counted by FLOPs at GEMM speed)."""
    if analysis == "copying":
        x, op = c.full_OV(), "eigvals"
        return Floor.of(x, op, timed), lm.explain(x, op).planned.peak_bytes
    return composition_floor(c, timed), lm.explain(composition_pairs(c)[2], "matrix_norm").planned.peak_bytes


def large_shapes(ctx: Context) -> list[Case]:
    cuda = torch.device(ctx.device).type == "cuda"
    tl = peers.transformer_lens() if cuda else None
    cases = []
    for name in LARGE:
        symbolic = Circuits(_symbols(name))
        for analysis in ("K-composition", "copying"):
            floor, peak = _explained(symbolic, analysis, timed=cuda)
            case = Case("large-shapes", f"{name} {analysis}", {}, floor=floor)
            tl_need = _tl_bytes(name, analysis)
            tl_note = (f"out of memory: needs ~{tl_need / 2**30:.0f} GiB, budget "
                       f"{ctx.memory_budget / 2**30:.0f} GiB (estimated, not run)")
            if not cuda:
                case.estimates["lazymat"] = {"flops": floor.flops, "peak_bytes": peak, "note": (
                    "explain on symbols, not run on the CPU; floor: all FLOPs at GEMM speed")}
                case.estimates["TransformerLens"] = {"peak_bytes": tl_need, "note": tl_note}
            else:
                case.prepare = lambda name=name: ctx.weights(PRESETS[name], alone=True)
                case.impls["lazymat"] = _runner(ctx, name, analysis, None)
                if tl is None:
                    case.skipped["TransformerLens"] = peers.why_missing.get("TransformerLens", "")
                elif tl_need > ctx.memory_budget:
                    case.skipped["TransformerLens"] = tl_note
                else:
                    case.impls["TransformerLens"] = _runner(ctx, name, analysis, tl)
            if cuda:  # on the CPU the planned peak is the lazymat row's figure
                case.notes.append(f"lazymat's planned peak memory (explain): {peak / 2**30:.2f} GiB")
            cases.append(case)
    return cases


def _runner(ctx: Context, name: str, analysis: str, tl):
    def run():
        W = ctx.weights(PRESETS[name])  # drawn by the case's prepare, outside the timing
        if tl is None:
            c = Circuits(W)
            return c.copying_scores().scores if analysis == "copying" else c.composition_scores("K").scores
        if analysis == "copying":
            return tl_copying(tl, W)
        return tl_composition(tl, W, "K")
    return run
