"""GEMM FLOPs of the differentiable spectrum route (qa23): ``svdvals`` and ``svd`` of a rank-64
product with gradients recorded, forward and forward + backward, counted by torch's
``FlopCounterMode`` (deterministic; QR and SVD calls are not GEMMs and are not counted).

    PYTHONPATH=. python benchmarks/count_qa23_grad_flops.py
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

import lazymat as lm
from lazymat import linalg as LA


def main() -> None:
    g = torch.Generator().manual_seed(0)
    m, r, n = 4000, 64, 3000
    A = torch.randn(m, r, dtype=torch.float64, generator=g, requires_grad=True)
    B = torch.randn(r, n, dtype=torch.float64, generator=g, requires_grad=True)
    calls = {
        "svdvals": lambda X: LA.svdvals(X).sum(),
        "svd": lambda X: sum(t.sum() for t in LA.svd(X)),
    }
    for name, f in calls.items():
        with FlopCounterMode(display=False) as counter:
            out = f(lm.lazy(A) @ lm.lazy(B))
            forward = counter.get_total_flops()
            torch.autograd.grad(out, (A, B))
        total = counter.get_total_flops()
        print(f"{name:8s} forward {forward / 1e9:.3f} GFLOP  forward+backward {total / 1e9:.3f} GFLOP")


if __name__ == "__main__":
    main()
