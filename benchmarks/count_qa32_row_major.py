"""What a row-major ``to_dense`` of a product over broadcast batches costs (qa32, session 21).

``(a, 1, m, k) @ (b, k, n)`` runs as one ``torch.einsum`` GEMM, whose result comes in its own dim
order; handed back row-major (as ``torch.matmul``'s), the plan takes whichever is smaller:
``torch.matmul``'s broadcast copies of the operands, or one copy of the result. Deterministic
peak bytes from the plan on shape-only symbols, then wall times of ``to_dense`` against eager
``torch.matmul`` (the peer that writes row-major) and against the einsum alone (what the result
cost before, non-contiguous) on this machine, best of 7.

Run: ``python benchmarks/count_qa32_row_major.py``. Output: benchmarks/results/cpu-qa32-row-major.txt.
"""

import time

import torch

import lazymat as lm

SHAPES = [((12, 1, 768, 64), (12, 64, 768)), ((12, 1, 64, 768), (12, 768, 64)),
          ((144, 1, 50, 64), (1, 12, 64, 50)), ((8, 1, 512, 64), (8, 64, 512)),
          ((64, 1, 50, 64), (1, 12, 64, 50))]


def best(f, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
        del out
    return min(times)


def main() -> None:
    print("float32; peak = planned bytes of to_dense; last step's copies: the relayout or matmul's broadcast")
    for sa, sb in SHAPES:
        X = lm.symbol("A", sa) @ lm.symbol("B", sb)
        plan = X.plan()
        step, kind = plan.terms[0].steps[-1], "torch.matmul" if plan.terms[0].plain[-1] else "einsum + copy"
        result = step.out_bytes
        print(f"{sa} @ {sb}: result {result / 2**20:.1f} MiB, last step {kind}, copies "
              f"{step.copy_bytes / 2**20:.1f} MiB, peak {plan.peak_bytes / 2**20:.1f} MiB")
    print("\nwall time, best of 7 (ratio to eager torch.matmul; einsum alone: the old, non-row-major result)")
    for sa, sb in SHAPES[3:]:
        A, B = torch.randn(sa), torch.randn(sb)
        ours = best(lambda: (lm.lazy(A) @ lm.lazy(B)).to_dense())  # noqa: B023 (called at once)
        eager = best(lambda: A @ B)  # noqa: B023
        einsum = best(lambda: torch.einsum("...ij,...jk->...ik", A, B))  # noqa: B023
        print(f"{sa} @ {sb}: lazymat {ours * 1e3:.1f} ms ({ours / eager:.2f}x matmul), "
              f"torch.matmul {eager * 1e3:.1f} ms, einsum alone {einsum * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
