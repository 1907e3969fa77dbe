"""What lazymat plans for concatenations of low-rank parts (qa12, session 9; cat2, session 10):
deterministic FLOPs and peak bytes from ``lm.explain`` on shape-only symbols, so no data and no
timing. Session 10 adds cats inside sums and at the ends of products (trace, diagonal) and
indices along a cat's joined axis.

Run: ``python benchmarks/count_cat_routes.py`` (seconds). Output: benchmarks/results/cpu-cat-routes.txt.
"""

import lazymat as lm


def cases():
    A, B = lm.symbol("A", (50000, 64)), lm.symbol("B", (64, 40000))
    C, D = lm.symbol("C", (50000, 64)), lm.symbol("D", (64, 10000))
    v, E, B2 = lm.symbol("v", (50000, 2)), lm.symbol("E", (50000, 8)), lm.symbol("B2", (64, 50000))
    P, Q = lm.symbol("P", (50000, 64)), lm.symbol("Q", (64, 50000))
    w, u = lm.symbol("w", (10, 2)), lm.symbol("u", (30000, 2))
    both = lm.cat([A @ B, C @ D], -1)
    return [("svdvals", "cat([A @ B, C @ D], -1)", both),
            ("svdvals", "cat([A @ B2, E], -1)", lm.cat([A @ B2, E], -1)),
            ("matrix_norm", "cat([A @ B, C @ D], -1)", both),
            ("to_dense", "cat([A @ B, C @ D], -1) @ v", both @ v),
            ("sum", "cat([A @ B, C @ D], -1)", both),
            # session 10 (cat2): cats in sums and at the ends of products; indices along the joined axis
            ("trace", "cat([A @ B, C @ D], -1) + P @ Q", both + P @ Q),
            ("diagonal", "cat([A @ B, C @ D], -1) + P @ Q", both + P @ Q),
            ("trace", "P @ Q @ cat([A @ B, C @ D], -1)", P @ Q @ both),
            ("diagonal", "P @ Q @ cat([A @ B, C @ D], -1)", P @ Q @ both),
            ("trace", "cat(..).T @ P @ Q", both.mT @ P @ Q),
            ("trace", "cat(..) - cat(..).T", both - both.mT),
            ("to_dense", "cat([A @ B, C @ D], -1)[:, :10]", both[:, :10]),
            ("to_dense", "cat(..)[:, :10] @ w", both[:, :10] @ w),
            ("to_dense", "cat(..)[:, 20000:] @ u", both[:, 20000:] @ u),
            ("svdvals", "cat(..)[:, 20000:]", both[:, 20000:]),
            ("trace", "cat(..)[:, :10]", both[:, :10]),
            # found by the hunt (tests/test_cat_hunt.py): cats at an outer end, scaled, transposed, in a sum
            ("svdvals", "P @ Q @ cat([A @ B, C @ D], -1)", P @ Q @ both),
            ("svdvals", "cat(..).T @ P", both.mT @ P),
            ("svdvals", "cat(..).T", both.mT),
            ("svdvals", "2 * cat(..)", 2 * both),
            ("matrix_norm", "cat(..) - 2 * P @ Q", both - 2 * (P @ Q)),
            ("to_dense", "(cat(..) - 2 * P @ Q) @ v", (both - 2 * (P @ Q)) @ v)]


def main() -> None:
    for op, text, x in cases():
        try:
            r = lm.explain(x, op).planned
            print(f"{op:12s} {text:34s} FLOPs {r.flops:9.3g}  peak {r.peak_bytes / 2**20:10.4g} MiB")
        except lm.BudgetTooSmall as e:
            print(f"{op:12s} {text:34s} BudgetTooSmall: needs {e.minimum / 2**30:.3g} GiB")


if __name__ == "__main__":
    main()
