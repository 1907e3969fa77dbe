"""Runs one case: every implementation round-robin, medians, ratios to lazymat, % of floor, the
agreement of each result with lazymat's, and a quality measure where the case has one.

An implementation that fails (out of memory included) is recorded with its error, as a result:
the suite goes on."""

from __future__ import annotations

from typing import Any

import torch

from .case import Case, Context
from .floor import floor_seconds
from .timing import median, round_robin


def _first_tensor(x: Any) -> torch.Tensor | None:
    """The tensor to compare: the result itself, the singular values of an (U, S, Vh) triple,
    the ``values`` of a top-k, or a result's ``scores``."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, tuple) and len(x) == 3 and all(isinstance(t, torch.Tensor) for t in x):
        return x[1]
    if isinstance(getattr(x, "values", None), torch.Tensor):  # torch.topk-like results
        return x.values
    return getattr(x, "scores", None) if isinstance(getattr(x, "scores", None), torch.Tensor) else None


def relative_difference(x: Any, ref: Any) -> float | None:
    """``max |x - ref| / max |ref|`` when both are tensors of one shape; None when not comparable.

    Eigenvalues are compared as sorted moduli (their order is arbitrary). Spectra of different
    lengths (a dense route returns all ``n`` singular values or eigenvalues, a low-rank one
    only ``r``) are compared sorted by modulus, the shorter padded with zeros (the values a
    rank-``r`` matrix leaves out are zero)."""
    a, b = _first_tensor(x), _first_tensor(ref)
    if a is None or b is None or a.ndim != b.ndim or a.shape[:-1] != b.shape[:-1] or b.numel() == 0:
        return None
    dtype = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    a, b = a.detach().to("cpu", dtype), b.detach().to("cpu", dtype)
    if a.is_complex() or a.shape != b.shape:
        a, b = (t.abs().sort(-1, descending=True).values for t in (a, b))
        n = max(a.shape[-1], b.shape[-1])
        a, b = (torch.nn.functional.pad(t, (0, n - t.shape[-1])) for t in (a, b))
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


def run_case(case: Case, ctx: Context, repeats: int, budget_s: float, memo: dict) -> dict:
    """The JSON-ready record of one case."""
    record: dict = {"workload": case.workload, "case": case.name, "notes": list(case.notes),
                    "skipped": dict(case.skipped), "estimates": case.estimates, "impls": {},
                    "quality_name": case.quality_name or None, "floor_s": None}
    if case.floor is not None:
        contraction_s, decomposition_s = floor_seconds(case.floor, ctx.gemm_flops, ctx.device, memo,
                                                       repeats=1 if ctx.quick else 3)
        record["floor_s"] = contraction_s + decomposition_s
        record["floor_decomposition_s"] = decomposition_s  # the small cores, timed separately
        record["floor_flops"] = case.floor.flops
        record["floor_decompositions"] = [[k, list(s)] for k, s in case.floor.decompositions]
    if case.prepare is not None:
        case.prepare()
    samples, results, failed = round_robin(case.impls, ctx.device, repeats, budget_s)
    errors = {name: _short_error(e) for name, e in failed.items()}
    ref = results.get("lazymat")
    base = median(samples["lazymat"]) if samples.get("lazymat") else None
    for name in case.impls:
        if name in errors:
            record["impls"][name] = {"error": errors[name]}
            continue
        m = median(samples[name])
        entry = {"samples": samples[name], "median": m,
                 "ratio": m / base if base else None,
                 "pct_of_floor": 100 * record["floor_s"] / m if record["floor_s"] is not None else None,
                 "max_rel_diff": relative_difference(results[name], ref) if name != "lazymat" else None}
        if case.quality is not None:
            entry["quality"] = case.quality(results[name])
        record["impls"][name] = entry
    return record


def _short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return f"out of memory ({text[:120]})"
    return f"{type(e).__name__}: {text[:160]}"
