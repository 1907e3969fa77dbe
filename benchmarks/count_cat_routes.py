"""What lazymat plans for concatenations of low-rank parts (qa12, session 9): deterministic
FLOPs and peak bytes from ``lm.explain`` on shape-only symbols, so no data and no timing.

Run: ``python benchmarks/count_cat_routes.py`` (seconds). Output: benchmarks/results/cpu-cat-routes.txt.
"""

import lazymat as lm


def cases():
    A, B = lm.symbol("A", (50000, 64)), lm.symbol("B", (64, 40000))
    C, D = lm.symbol("C", (50000, 64)), lm.symbol("D", (64, 10000))
    v, E, B2 = lm.symbol("v", (50000, 2)), lm.symbol("E", (50000, 8)), lm.symbol("B2", (64, 50000))
    both = lm.cat([A @ B, C @ D], -1)
    return [("svdvals", "cat([A @ B, C @ D], -1)", both),
            ("svdvals", "cat([A @ B2, E], -1)", lm.cat([A @ B2, E], -1)),
            ("matrix_norm", "cat([A @ B, C @ D], -1)", both),
            ("to_dense", "cat([A @ B, C @ D], -1) @ v", both @ v),
            ("sum", "cat([A @ B, C @ D], -1)", both)]


def main() -> None:
    for op, text, x in cases():
        try:
            r = lm.explain(x, op).planned
            print(f"{op:12s} {text:30s} FLOPs {r.flops:9.3g}  peak {r.peak_bytes / 2**20:10.4g} MiB")
        except lm.BudgetTooSmall as e:
            print(f"{op:12s} {text:30s} BudgetTooSmall: needs {e.minimum / 2**30:.3g} GiB")


if __name__ == "__main__":
    main()
