"""Before/after of a fresh chain's overhead, interleaved in one process: lazymat at a git revision
(``--base``, imported as ``lazymat_base`` from a copy made with ``git archive``) against the
working tree's, on ``bench_overhead.py``'s workload (4 x 64x64 float32 factors, a pool of 64
quadruples, fresh nodes every call) or another chain (``--chain``: ``bench_small_cores.py``'s
batched or unbatched ``64x32 @ 32x32 @ 32x64``), ``to_dense()``, ``@ v`` and the Frobenius norm
(``--fro``), beside eager torch. Prints the median and least time per call over the rounds, each
route's time over eager, and after/before.

Run from the repository root:
``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/probes/cpu_probe_fresh_ab.py --base fc660aa``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import lazymat as after

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # benchmarks/
from count_overhead import chain, eager_chain, eager_times  # noqa: E402


def base_package(rev: str, where: pathlib.Path):
    """lazymat at ``rev``, copied under ``where`` as the package ``lazymat_base``."""
    archive = subprocess.run(["git", "archive", rev, "lazymat"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    (where / "lazymat").rename(where / "lazymat_base")
    expr = where / "lazymat_base" / "expr.py"  # its upper layers are imported by absolute name
    expr.write_text(expr.read_text().replace('f"lazymat.{name}"', 'f"lazymat_base.{name}"'))
    sys.path.insert(0, str(where))
    import lazymat_base

    return lazymat_base


CHAINS = {"4x64": ((64, 64),) * 4, "batched3": ((4, 64, 32), (32, 32), (32, 64)),
          "unbatched3": ((64, 32), (32, 32), (32, 64))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="fc660aa", help="git revision of the 'before' lazymat")
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--chain", choices=CHAINS, default="4x64")
    ap.add_argument("--fro", action="store_true", help="also lm.linalg.matrix_norm(X, 'fro')")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        before = base_package(args.base, pathlib.Path(tmp))
        g = torch.Generator().manual_seed(0)
        shapes = CHAINS[args.chain]
        pool = [[torch.randn(*s, generator=g) for s in shapes] for _ in range(64)]
        vectors = [torch.randn(shapes[-1][-1], generator=g) for _ in range(64)]

        routes = {
            "eager": lambda i: eager_chain(*pool[i]),
            "before to_dense": lambda i: chain(*pool[i], package=before).to_dense(),
            "after to_dense": lambda i: chain(*pool[i], package=after).to_dense(),
            "eager @ v": lambda i: eager_times(pool[i], vectors[i]),
            "before @ v": lambda i: chain(*pool[i], package=before) @ vectors[i],
            "after @ v": lambda i: chain(*pool[i], package=after) @ vectors[i],
        }
        if args.fro:
            routes |= {
                "eager fro": lambda i: torch.linalg.matrix_norm(eager_chain(*pool[i])),
                "before fro": lambda i: before.linalg.matrix_norm(chain(*pool[i], package=before), "fro"),
                "after fro": lambda i: after.linalg.matrix_norm(chain(*pool[i], package=after), "fro"),
            }
        for i in range(64):  # both answer eager's product
            want = routes["eager"](i)
            for name in ("before to_dense", "after to_dense"):
                if not torch.allclose(routes[name](i), want, rtol=1e-4, atol=1e-3):
                    raise AssertionError(f"{name} does not match eager torch")
        samples: dict[str, list[float]] = {k: [] for k in routes}
        calls = 256
        for _ in range(args.rounds):
            for name, fn in routes.items():
                t = time.perf_counter()
                for i in range(calls):
                    fn(i % 64)
                samples[name].append((time.perf_counter() - t) / calls * 1e6)
        print(f"lazymat {args.base} (before) against {after.__file__} (after), chain {args.chain}; {args.rounds} "
              f"interleaved rounds of {calls} calls, us per call")
        ops = ["to_dense", "@ v"] + (["fro"] if args.fro else [])
        for stat, pick in (("median", statistics.median), ("least", min)):
            t = {k: pick(v) for k, v in samples.items()}
            print(f"{stat}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
            base = {"to_dense": "eager", "@ v": "eager @ v", "fro": "eager fro"}
            print("  over eager: " + ", ".join(
                f"{op} {t[f'before {op}'] - t[base[op]]:+.1f} -> {t[f'after {op}'] - t[base[op]]:+.1f}" for op in ops)
                + "; after/before: " + ", ".join(f"{op} {t[f'after {op}'] / t[f'before {op}']:.3f}" for op in ops))


if __name__ == "__main__":
    main()
