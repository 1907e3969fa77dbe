"""Per-call overhead of a lazy 4-factor chain of 64x64 matrices vs eager torch and the lazy peers.

Every call builds its expression from tensors it has not used for 63 calls (a pool of 64
quadruples, shared by all routes), so hash-consing never hands back a live node and each
lazymat call pays for building, the plan lookup and evaluation. Rows:

- ``A @ B @ C @ D``: eager, ``multi_dot``, ``torch.einsum``, ``opt_einsum.contract``, lazymat
  (fresh build, warm plan table), lazymat with the plan tables cleared before each call (cold),
  lazymat evaluating expressions built once (one per quadruple, in turn), TransformerLens's
  ``FactoredMatrix`` chain, linear_operator (when installed);
- ``(A @ B @ C @ D) @ v`` for a vector ``v``: eager right to left, lazymat, the peers;
- the split of lazymat's fresh matrix call: building the nodes (the row drops what it built),
  the rest being the evaluation (a fresh product of leaves is read straight from its leaves by
  its chain's plan, found by shapes: no canonical form is made, see ``lazymat.execute.evaluate``).

Goal (issue 12): lazymat fresh build + warm plan at most 40 us over eager, for the matrix
and the vector; ahead of every lazy peer. Run:
``python benchmarks/bench_overhead.py [--device cuda] [--quick]``.

``--chains``: instead, the same over eager for the 4-chains of ``count_overhead.py``'s
:data:`CHAINS` (batch dims, broadcast batches, unbatched factors mixed in, a fresh chain's
``.mT``, a multiple, its first 5 columns, its cast to float64), matrix and vector, beside
lazymat's general path (the chain marked as read
before its first evaluation, so that it builds its form), interleaved.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import opt_einsum as oe
import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm
from lazymat import plan as lm_plan

GOAL_US = 40.0


def _factored_matrix():
    """TransformerLens's ``FactoredMatrix`` when installed (only its module is loaded), else None."""
    try:
        from suite.peers import transformer_lens  # the benchmark suite's loader
    except ImportError:
        from _harness import load_factored_matrix

        return load_factored_matrix()
    tl = transformer_lens()
    return None if tl is None else tl.FactoredMatrix


def _linear_operator():
    """linear_operator's ``to_linear_operator`` when installed, else None."""
    if importlib.util.find_spec("linear_operator") is None:
        return None
    from linear_operator import to_linear_operator

    return to_linear_operator


def rows_for(pool: list, vectors: list, factored, to_lo) -> tuple[dict, dict, dict, object]:
    """The timed routes (``matrix`` rows give the 64x64 product, ``vector`` rows ``X @ v``),
    the stages of lazymat's fresh call (``split``) and ``seek(i)``, which makes ``pool[i]`` the
    next quadruple drawn."""
    k = [0]

    def nxt():  # the next quadruple of the pool (unused for len(pool) - 1 calls)
        k[0] = (k[0] + 1) % len(pool)
        return pool[k[0]]

    def vec():
        return vectors[k[0]]

    def seek(i: int) -> None:
        k[0] = (i - 1) % len(pool)

    def lazy_chain(A, B, C, D):
        return lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C) @ lm.lazy(D)

    def cold():
        lm_plan.clear_plan_tables()
        return lazy_chain(*nxt()).to_dense()

    # built once, over copies of the pool (a live node over the pool's own tensors would be handed
    # back by hash-consing to the fresh routes); drawn in turn like the others, so that its
    # tensors are as cold in the CPU's caches as theirs
    kept = [lazy_chain(*[t.clone() for t in quadruple]) for quadruple in pool]

    def built_once():
        nxt()
        return kept[k[0]].to_dense()

    split = {"build": lambda: lazy_chain(*nxt())}
    matrix = {
        "eager A @ B @ C @ D": lambda: _eager(*nxt()),
        "torch.linalg.multi_dot": lambda: torch.linalg.multi_dot(nxt()),
        "torch.einsum": lambda: torch.einsum("ab,bc,cd,de->ae", *nxt()),
        "opt_einsum.contract": lambda: oe.contract("ab,bc,cd,de->ae", *nxt(), backend="torch"),
        "lazymat build + to_dense (warm plan)": lambda: lazy_chain(*nxt()).to_dense(),
        "lazymat build + to_dense (cold plan)": cold,
        "lazymat X.to_dense() (built once)": built_once,
    }
    vector = {
        "eager A @ (B @ (C @ (D @ v)))": lambda: _eager_vec(*nxt(), vec()),
        "lazymat build + X @ v (warm plan)": lambda: lazy_chain(*nxt()) @ vec(),
    }
    if factored is not None:
        def tl(A, B, C, D):
            return factored(A, B) @ C @ D

        matrix["TransformerLens FactoredMatrix .AB"] = lambda: tl(*nxt()).AB
        vector["TransformerLens FactoredMatrix @ v"] = lambda: tl(*nxt()) @ vec()
    if to_lo is not None:
        def lo(A, B, C, D):
            return to_lo(A) @ to_lo(B) @ to_lo(C) @ to_lo(D)

        matrix["linear_operator .to_dense()"] = lambda: lo(*nxt()).to_dense()
        vector["linear_operator @ v"] = lambda: lo(*nxt()) @ vec()
    return matrix, vector, split, seek


def _eager(A, B, C, D):
    return A @ B @ C @ D


def _eager_vec(A, B, C, D, v):
    return A @ (B @ (C @ (D @ v)))


def check(matrix: dict, vector: dict, seek, pool: list, vectors: list) -> None:
    """Every route gives the eager result on the quadruple it draws."""
    for name, fn in {**matrix, **vector}.items():
        i = 0 if "built once" in name else 5
        seek(i)
        out = fn()
        want = _eager(*pool[i]) if name in matrix else _eager_vec(*pool[i], vectors[i])
        if out.shape != want.shape or not torch.allclose(out, want, rtol=1e-4, atol=1e-3):
            raise AssertionError(f"{name} does not match eager torch")


def report(title: str, times: dict, eager_name: str) -> float:
    eager = times[eager_name]
    print(title)
    print(f"  {'route':<42} {'time':>10} {'vs eager':>9} {'over eager':>11}")
    for name, t in times.items():
        print(f"  {name:<42} {fmt_time(t):>10} {t / eager:>8.2f}x {fmt_time(t - eager):>11}")
    return eager


def chain_routes(pool: list, vectors: list, what: str) -> dict:
    """Eager, lazymat and lazymat's general path on the chains of ``pool`` (each call the next
    one), finished as ``what`` says (:func:`count_overhead.finish`), matrix and ``@ v``."""
    k = [0]

    def nxt():
        k[0] = (k[0] + 1) % len(pool)
        return pool[k[0]]

    from count_overhead import eager_vector as vector_product
    from count_overhead import finish as finished

    def finish(x):
        return finished(x, what)

    def lazy(general: bool = False):
        ts = nxt()
        x = lm.lazy(ts[0])
        for t in ts[1:]:
            x = x @ lm.lazy(t)
        x = finish(x)
        if general:
            x._cache["read"] = True  # as if evaluated before: its form is built
        return x

    def eager():
        ts = nxt()
        return finish(ts[0] @ ts[1] @ ts[2] @ ts[3])

    def eager_vector():  # right to left: matrix-vector products (v as a column under a batch)
        return vector_product(nxt(), vectors[k[0]], what)

    return {"eager": eager, "to_dense": lambda: lazy().to_dense(), "general": lambda: lazy(True).to_dense(),
            "eager @v": eager_vector, "@ v": lambda: lazy() @ vectors[k[0]],
            "general @v": lambda: lazy(True) @ vectors[k[0]]}


def chains(device: str, n: int, rounds: int, min_time: float, clock) -> None:
    """Fresh build + to_dense (and + ``@ v``) over eager for each of :data:`CHAINS`."""
    from count_overhead import CHAINS, vector_for

    g = torch.Generator().manual_seed(0)
    print(f"4-chains of {n}x{n} float32 factors on {device_name(device)}, torch {torch.__version__}; median "
          f"time per call over eager, fresh tensors every call (a pool of 64), interleaved")
    heads = ("eager", "to_dense", "general", "eager @v", "@ v", "general")
    print(f"{'chain':>19} " + " ".join(f"{h:>9}" for h in heads))
    for label, batches, what in CHAINS:
        pool = [[torch.randn(*b, n, n, generator=g).to(device) for b in batches] for _ in range(64)]
        vectors = [vector_for(torch.randn(n, generator=g).to(device), what) for _ in range(64)]
        t = compare(chain_routes(pool, vectors, what), device, rounds=rounds, min_time=min_time, clock=clock)
        cells = []
        for base, routes in (("eager", ("to_dense", "general")), ("eager @v", ("@ v", "general @v"))):
            cells += [fmt_time(t[base]), *(f"{(t[r] - t[base]) * 1e6:+.1f}us" for r in routes)]
        print(f"{label:>19} " + " ".join(f"{c:>9}" for c in cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="a few seconds, for a smoke run")
    ap.add_argument("--no-peers", action="store_true", help="leave TransformerLens and linear_operator out")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (steadier on a loaded machine; use --threads 1)")
    ap.add_argument("--chains", action="store_true", help="batched, broadcast, transposed and scaled chains")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.chains:
        chains(args.device, args.n, *((9, 0.003) if args.quick else (21, 0.05)), clock)
        return
    g = torch.Generator().manual_seed(0)
    pool = [[torch.randn(args.n, args.n, generator=g).to(args.device) for _ in range(4)] for _ in range(64)]
    vectors = [torch.randn(args.n, generator=g).to(args.device) for _ in range(64)]
    factored = None if args.no_peers else _factored_matrix()
    to_lo = None if args.no_peers else _linear_operator()
    matrix, vector, split, seek = rows_for(pool, vectors, factored, to_lo)
    check(matrix, vector, seek, pool, vectors)
    rounds, min_time = (9, 0.003) if args.quick else (21, 0.05)
    times = compare({**matrix, **vector, **split}, args.device, rounds=rounds, min_time=min_time, clock=clock)
    quick = " (quick run)" if args.quick else ""
    print(f"4 x ({args.n}x{args.n}) float32 chain on {device_name(args.device)}, torch {torch.__version__}; "
          f"median {args.clock} time per call, fresh tensors every call{quick}")
    eager = report("matrix A @ B @ C @ D", {k: times[k] for k in matrix}, next(iter(matrix)))
    eager_v = report("vector (A @ B @ C @ D) @ v", {k: times[k] for k in vector}, next(iter(vector)))
    over = (times["lazymat build + to_dense (warm plan)"] - eager) * 1e6
    over_v = (times["lazymat build + X @ v (warm plan)"] - eager_v) * 1e6
    stages = [times[k] for k in split] + [times["lazymat build + to_dense (warm plan)"] - eager]
    parts = dict(zip(("build", "evaluation"),
                     (stages[0], *(b - a for a, b in zip(stages, stages[1:], strict=False))), strict=True))
    print("split of lazymat's fresh matrix call over eager: "
          + ", ".join(f"{k} {fmt_time(t)}" for k, t in parts.items()))
    print(f"\nlazymat over eager, fresh build + warm plan: {over:.1f} us (matrix), {over_v:.1f} us (vector); "
          f"goal <= {GOAL_US:.0f} us")
    peers = [k for k in matrix if k.startswith(("TransformerLens", "linear_operator"))]
    for k in peers:
        print(f"  {k}: {times[k] / times['lazymat build + to_dense (warm plan)']:.2f}x lazymat's time")


if __name__ == "__main__":
    main()
