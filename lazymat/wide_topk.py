"""Exact top-k along a long last dim, reading most of each row once.

``torch.topk`` on the CPU partially sorts every row: for the top 10 of 50257 logits it spends
~5 ns per element, twice the time of the GEMM that formed the row (benchmarks/bench_topk.py).
Here each row is cut into chunks of ``w`` elements; the chunk maxima (one vectorised pass)
pick the ``k + 1`` chunks that must hold the ``k + 1`` largest elements, and ``torch.topk`` runs
on those chunks and the row's tail only (``(k + 1) w`` plus fewer than ``w`` elements).

Why the candidates hold the answer: an element outside the chosen chunks is at most the
smallest chosen chunk maximum, and the chosen maxima are ``k + 1`` other elements, so it can
rank among the top ``k + 1`` only by tying the ``(k + 1)``-th value. Rows where the top
``k + 1`` candidates hold a tie (or a NaN) are answered by ``torch.topk`` on the whole row,
so that values, order and indices are exactly torch's wherever torch's answer is unique, and
torch's own where it is not.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEVICES", "MIN_WIDTH", "topk_last"]

MIN_WIDTH = 4096  # shorter rows: torch.topk alone
DEVICES = ("cpu",)  # where the chunked route is measured to win (not yet measured on CUDA)


def topk_last(t: torch.Tensor, k: int, largest: bool, sorted: bool) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: A002
    """``torch.topk(t, k, dim=-1, largest=largest, sorted=sorted)``, by chunk extrema where
    the rows are long (see the module docstring); the same values and indices."""
    n = t.shape[-1]
    if (not sorted or t.device.type not in DEVICES or n < MIN_WIDTH or 16 * (k + 1) > n
            or t.is_complex() or t.numel() == 0):
        return tuple(t.topk(k, dim=-1, largest=largest, sorted=sorted))
    lead = t.shape[:-1]
    flat = t.reshape(-1, n)
    rows = flat.shape[0]
    w = max(2, math.isqrt(n // (k + 1)))  # about sqrt(n (k + 1)) chunks
    chunks = n // w
    body = flat[:, : chunks * w].reshape(rows, chunks, w)
    extreme = body.amax(-1) if largest else body.amin(-1)
    if not largest and bool(torch.isnan(extreme).any()):  # amin's NaN would hide a chunk's minimum
        return tuple(t.topk(k, dim=-1, largest=largest, sorted=sorted))
    chosen = extreme.topk(k + 1, dim=-1, largest=largest, sorted=False).indices
    offsets = torch.arange(w, device=t.device)
    index = (chosen[..., None] * w + offsets).reshape(rows, -1)
    tail = torch.arange(chunks * w, n, device=t.device).expand(rows, -1)
    index = torch.cat([index, tail], dim=-1)
    values, at = flat.gather(1, index).topk(k + 1, dim=-1, largest=largest, sorted=True)
    indices = index.gather(1, at)
    unsure = (values[:, 1:] == values[:, :-1]).any(-1) | torch.isnan(values).any(-1)
    values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
    if bool(unsure.any()):
        redo = unsure.nonzero().squeeze(1)
        v, i = flat[redo].topk(k, dim=-1, largest=largest, sorted=True)
        values[redo], indices[redo] = v, i
    return values.reshape(*lead, k), indices.reshape(*lead, k)
