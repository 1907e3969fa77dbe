"""Random chains of 6-10 matrices with irregular sizes: lazymat ``to_dense()`` against
``torch.linalg.multi_dot``, left-to-right ``@`` and ``opt_einsum.contract``, side by side.

Goal (issue 2): within 1.1x of multi_dot and faster than left-to-right.
Run: ``python benchmarks/bench_chains.py [--device cuda] [--chains 12]``.
"""

from __future__ import annotations

import argparse
import math
import random

import opt_einsum as oe
import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chains", type=int, default=12)
    ap.add_argument("--max-dim", type=int, default=700)
    args = ap.parse_args()
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    print(f"random chains on {device_name(args.device)}, float32; median per call; "
          "ratios are time / lazymat time")
    print(f"{'n':>3} {'dims':<48} {'lazymat':>10} {'multi_dot':>10} {'left-right':>10} {'opt_einsum':>10}")
    ratios = {"multi_dot": [], "left-right": [], "opt_einsum": []}
    for _ in range(args.chains):
        n = rng.randint(6, 10)
        dims = [rng.choice([8, 16, 32, 64, 128, 256, 512, args.max_dim]) for _ in range(n + 1)]
        mats = [torch.randn(dims[i], dims[i + 1], generator=g).to(args.device) for i in range(n)]
        X = lm.lazy(mats[0])
        for m in mats[1:]:
            X = X @ m
        eq = ",".join(oe.get_symbol(i) + oe.get_symbol(i + 1) for i in range(n)) + "->" + \
            oe.get_symbol(0) + oe.get_symbol(n)
        expr = oe.contract_expression(eq, *[m.shape for m in mats])

        def l2r(mats=mats):
            out = mats[0]
            for m in mats[1:]:
                out = out @ m
            return out

        t = compare({
            "lazymat": X.to_dense,
            "multi_dot": lambda mats=mats: torch.linalg.multi_dot(mats),
            "left-right": l2r,
            "opt_einsum": lambda mats=mats, expr=expr: expr(*mats, backend="torch"),
        }, args.device)
        for k in ratios:
            ratios[k].append(t[k] / t["lazymat"])
        d = "x".join(map(str, dims))
        print(f"{n:>3} {d[:48]:<48} {fmt_time(t['lazymat']):>10} {t['multi_dot'] / t['lazymat']:>9.2f}x "
              f"{t['left-right'] / t['lazymat']:>9.2f}x {t['opt_einsum'] / t['lazymat']:>9.2f}x")
    print("\ngeometric mean of (peer time / lazymat time):")
    for k, v in ratios.items():
        gm = math.exp(sum(math.log(r) for r in v) / len(v))
        print(f"  {k:<11} {gm:.3f}x   (min {min(v):.3f}x, max {max(v):.3f}x)")
    print("goal: multi_dot >= 1/1.1 = 0.909x (lazymat within 1.1x of it); left-right > 1x")


if __name__ == "__main__":
    main()
