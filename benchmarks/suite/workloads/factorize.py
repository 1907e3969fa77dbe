"""Data-aware low-rank factorization of one linear layer at rank 0.25: ``lazymat.factorize``
against Composer's own ``factorize_matrix`` (when installed), time and true nmse side by side.

A ``d x d`` layer with a bias, ``2 d`` correlated inputs (a decaying spectrum, as real
activations have); 4096 (1024 with ``--quick``, 64 on the tiny preset)."""

from __future__ import annotations

import torch

from lazymat.factorize import factorize_matrix

from .. import peers
from ..case import Case, Context


def true_nmse(Y, X, solution) -> float:
    """Mean squared error of the factorized layer on the inputs, over the variance of ``Y``."""
    Y_hat = X @ solution.Wa if solution.Wb is None else (X @ solution.Wa) @ solution.Wb
    if solution.bias is not None:
        Y_hat = Y_hat + solution.bias
    return float(((Y - Y_hat) ** 2).mean() / Y.var())


def factorize(ctx: Context) -> list[Case]:
    d = 64 if ctx.preset == "tiny" else 1024 if ctx.quick else 4096
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[:, None]
    X = (torch.randn(2 * d, d, generator=g) @ mix).to(ctx.device)
    W = (torch.randn(d, d, generator=g) / d**0.5).to(ctx.device)
    bias = torch.randn(d, generator=g).to(ctx.device)
    Y = X @ W + bias
    case = Case("factorize", f"{d}x{d}, rank 0.25", {
        "lazymat": lambda: factorize_matrix(X, Y, W, bias=bias, rank=0.25)},
        quality=lambda sol: true_nmse(Y, X, sol), quality_name="true nmse")
    core = peers.composer_factorize()
    if core is None:
        case.skipped["Composer"] = peers.why_missing["Composer"]
    else:
        case.impls["Composer"] = lambda: core.factorize_matrix(X, Y, W, bias=bias, rank=0.25)
    return [case]
