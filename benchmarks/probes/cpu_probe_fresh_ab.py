"""Before/after of a fresh chain's overhead, interleaved in one process: lazymat at a git revision
(``--base``, imported as ``lazymat_base`` from a copy made with ``git archive``) against the
working tree's, on ``bench_overhead.py``'s workload (4 x 64x64 float32 factors, a pool of 64
quadruples, fresh nodes every call), ``to_dense()`` and ``@ v``, beside eager torch. Prints the
median and least time per call over the rounds, each route's time over eager, and after/before.

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="fc660aa", help="git revision of the 'before' lazymat")
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        before = base_package(args.base, pathlib.Path(tmp))
        g = torch.Generator().manual_seed(0)
        pool = [[torch.randn(64, 64, generator=g) for _ in range(4)] for _ in range(64)]
        vectors = [torch.randn(64, generator=g) for _ in range(64)]

        def chain(lm, q):
            return lm.lazy(q[0]) @ lm.lazy(q[1]) @ lm.lazy(q[2]) @ lm.lazy(q[3])

        routes = {
            "eager": lambda i: pool[i][0] @ pool[i][1] @ pool[i][2] @ pool[i][3],
            "before to_dense": lambda i: chain(before, pool[i]).to_dense(),
            "after to_dense": lambda i: chain(after, pool[i]).to_dense(),
            "eager @ v": lambda i: pool[i][0] @ (pool[i][1] @ (pool[i][2] @ (pool[i][3] @ vectors[i]))),
            "before @ v": lambda i: chain(before, pool[i]) @ vectors[i],
            "after @ v": lambda i: chain(after, pool[i]) @ vectors[i],
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
        print(f"lazymat {args.base} (before) against {after.__file__} (after); {args.rounds} interleaved rounds "
              f"of {calls} calls, us per call")
        for stat, pick in (("median", statistics.median), ("least", min)):
            t = {k: pick(v) for k, v in samples.items()}
            print(f"{stat}: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
            print(f"  over eager: to_dense {t['before to_dense'] - t['eager']:+.1f} -> "
                  f"{t['after to_dense'] - t['eager']:+.1f}, @ v {t['before @ v'] - t['eager @ v']:+.1f} -> "
                  f"{t['after @ v'] - t['eager @ v']:+.1f}; after/before: to_dense "
                  f"{t['after to_dense'] / t['before to_dense']:.3f}, @ v {t['after @ v'] / t['before @ v']:.3f}")


if __name__ == "__main__":
    main()
