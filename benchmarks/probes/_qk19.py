"""What the session-19 GPU probes share: the timer of ``benchmarks/_harness.py`` and one QK
head's weights with the hand-written CholeskyQR2 route they are measured against."""

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _harness import median_time, sync  # noqa: E402

__all__ = ["cholqr2", "hand_svd", "median_time", "qk_weights", "sync"]


def qk_weights(vocab: int, dev: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPT-2-shaped ``W_E (vocab x 768)``, ``W_Q``, ``W_K (768 x 64)`` on ``dev``, seed 0."""
    g = torch.Generator().manual_seed(0)
    E = (torch.randn(vocab, 768, generator=g) * 0.1).to(dev)
    Wq = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
    Wk = (torch.randn(768, 64, generator=g) * 768**-0.5).to(dev)
    return E, Wq, Wk


def cholqr2(A: torch.Tensor, with_q: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Two unshifted CholeskyQR passes, straight-line (no certificate)."""
    R0, _ = torch.linalg.cholesky_ex(A.mT @ A, upper=True)
    X1 = torch.linalg.solve_triangular(R0, A, upper=True, left=False)
    R1, _ = torch.linalg.cholesky_ex(X1.mT @ X1, upper=True)
    Q = torch.linalg.solve_triangular(R1, X1, upper=True, left=False) if with_q else None
    return Q, R1 @ R0


def hand_svd(E: torch.Tensor, Wq: torch.Tensor, Wk: torch.Tensor, vectors: bool = True):
    """``W_E W_Q W_K^T W_E^T``'s SVD (or values) by hand: both sides' CholeskyQR2, the core to the
    host, LAPACK there, the factors back, the vectors rotated."""
    Q1, R1 = cholqr2(E @ Wq, vectors)
    Q2, R2 = cholqr2(E @ Wk, vectors)
    core = (R1 @ R2.mT).cpu()
    if not vectors:
        return torch.linalg.svdvals(core).to(E.device)
    U, S, Vh = torch.linalg.svd(core, full_matrices=False)
    U, S, Vh = U.to(E.device), S.to(E.device), Vh.to(E.device)
    return Q1 @ U, S, Vh @ Q2.mT
