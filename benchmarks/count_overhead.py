"""Instruction counts of the per-call routes of ``bench_overhead.py`` (deterministic on a loaded
machine, where timings are not): each route runs ``--calls`` times inside ``functools.reduce``
(a C function callgrind can be told to count in), on the same pool of fresh tensors.

Phases of lazymat's fresh call (``fresh``: build, first evaluation, free), counted apart:
``build`` builds a chain over tensors no live node wraps and keeps it, ``first`` evaluates each
kept chain once (``to_dense``), ``free`` drops them, one per call. The cyclic GC is off while
they run: the chains they keep would make it run (and be counted) where a fresh call, whose
nodes die at once, does not. ``churn`` builds a chain over tensors no live node wraps and drops
it at once: the build and release every fresh call pays (the dead nodes' entries included).
``fresh_scaled`` is ``fresh`` with 1/8 written on the first factor (``eager_scaled`` its eager).

Run under callgrind, which counts only inside ``functools.reduce`` and writes one dump per
route (``callgrind_control`` zeroes and dumps the counters between routes), then print the
instructions per call::

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 PYTHONPATH=$PWD valgrind --tool=callgrind \\
        --instr-atstart=no --collect-atstart=no --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/cg.out "$(python -c 'import sys; print(sys.executable)')" \\
        benchmarks/count_overhead.py --callgrind
    python benchmarks/count_overhead.py --summary /tmp/cg.out

(``python`` itself may be a launcher script: valgrind needs the interpreter's own path.)
Without ``--callgrind`` the routes just run (a smoke run); ``--routes`` picks some of them.

``--lines``: instead, Python lines run in lazymat's files and torch operator calls per fresh
call (``count_small_calls.py``'s counters, deterministic on a loaded machine) of ``to_dense()``
and ``@ v`` on 4-chains of 64x64 factors with batch dims (each factor's own batch named, ``-``
for none), broadcast batches, unbatched factors mixed in, a fresh chain's ``.mT``, a scalar
multiple, its first 5 columns and its cast to float64, next to eager torch's operator calls::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_overhead.py --lines
"""

from __future__ import annotations

import argparse
import functools
import gc
import glob
import os
import re
import subprocess

import torch

import lazymat as lm

# --lines: (label, each factor's batch dims, what is done to the chain: "", "mT", "scale", "index"
# (its first 5 columns), "cast" (to float64) or "factor" (its first factor scaled by 1/8): see finish)
CHAINS = (  # also timed by bench_overhead.py --chains
    ("4 unbatched", ((), (), (), ()), ""),
    ("4 batched (4,)", ((4,), (4,), (4,), (4,)), ""),
    ("4 batched (2,3)", ((2, 3), (2, 3), (2, 3), (2, 3)), ""),
    ("(4,1) (1,3) - -", ((4, 1), (1, 3), (), ()), ""),
    ("(4,) - - -", ((4,), (), (), ()), ""),
    ("(4,) (4,) - (4,)", ((4,), (4,), (), (4,)), ""),
    ("unbatched .mT", ((), (), (), ()), "mT"),
    ("(4,) .mT", ((4,), (4,), (4,), (4,)), "mT"),
    ("2 * unbatched", ((), (), (), ()), "scale"),
    ("unbatched [..., :5]", ((), (), (), ()), "index"),
    ("(4,) [..., :5]", ((4,), (4,), (4,), (4,)), "index"),
    ("unbatched .double()", ((), (), (), ()), "cast"),
    ("(A / 8) @ B @ C @ D", ((), (), (), ()), "factor"),
)

ROUTES = ("eager", "eager_vector", "fresh", "fresh_vector", "kept", "build", "first", "free", "churn",
          "eager_scaled", "fresh_scaled")
# singular values of the chain (asked by name with --routes): plain, 1/8 on its first factor, 1/8 on
# the product, its last factor read .mT, and eager torch's (a linalg call's compiled path,
# linalg.compiled)
SVDVALS_ROUTES = ("eager_svdvals", "svdvals", "eager_svdvals_scaled", "svdvals_factor", "svdvals_product",
                  "svdvals_mT")


# --chain: the factor shapes of the chain the callgrind routes run (bench_small_cores.py's batched
# 3-chain and its 16x8 one beside bench_overhead.py's 4 x 64x64)
SHAPES = {"4x64": ((64, 64),) * 4, "batched3": ((4, 64, 32), (32, 32), (32, 64)),
          "small3": ((16, 8), (8, 8), (8, 16))}


def chain(*tensors, package=lm, first=1):
    """``lazy(A) @ lazy(B) @ ...`` with ``package``'s ``lazy`` (another copy of lazymat: the
    probes' before/after runs) (a loop, not ``functools.reduce``: callgrind toggles on that);
    ``first``: a scalar written on the first factor (``(first * lazy(A)) @ ...``)."""
    out = package.lazy(tensors[0]) if first == 1 else first * package.lazy(tensors[0])
    for t in tensors[1:]:
        out = out @ package.lazy(t)
    return out


def eager_chain(*tensors):
    """``A @ B @ ...`` (a loop, as :func:`chain`)."""
    out = tensors[0]
    for t in tensors[1:]:
        out = out @ t
    return out


def eager_times(tensors, v):
    """``A @ (B @ (... @ v))``, matrix-vector products from the right."""
    for t in reversed(tensors):
        v = t @ v
    return v


def routes(pool: list, vectors: list, calls: int, g: torch.Generator, shapes: tuple) -> dict:
    """Each route takes one tuple of tensors of ``shapes`` and a vector and the call's index."""
    kept = chain(*pool[0])
    # build and free: tensors of their own, one tuple per call, so that no chain they build
    # is live when an identical one is asked for
    own = [[torch.randn(*s, generator=g) for s in shapes] for _ in range(calls)]
    built: list = [None] * calls
    loose = [[torch.randn(*s, generator=g) for s in shapes] for _ in range(64)]  # churn's: never kept

    def build(ts, v, i):
        built[i] = chain(*own[i])

    def first(ts, v, i):
        return built[i].to_dense()

    def free(ts, v, i):
        built[i] = None

    def churn(ts, v, i):
        chain(*loose[i % 64])  # dies at once

    return {
        "eager": lambda ts, v, i: eager_chain(*ts),
        "eager_vector": lambda ts, v, i: eager_times(ts, v),
        "fresh": lambda ts, v, i: chain(*ts).to_dense(),
        "fresh_vector": lambda ts, v, i: chain(*ts) @ v,
        # 1/8 written on the first factor: (A / 8) @ B @ ... (eager: A scaled, then the products)
        "eager_scaled": lambda ts, v, i: eager_chain(ts[0] / 8, *ts[1:]),
        "fresh_scaled": lambda ts, v, i: chain(*ts, first=1 / 8).to_dense(),
        "kept": lambda ts, v, i: kept.to_dense(),
        "eager_svdvals": lambda ts, v, i: torch.linalg.svdvals(eager_chain(*ts)),
        "svdvals": lambda ts, v, i: lm.linalg.svdvals(chain(*ts)),
        "eager_svdvals_scaled": lambda ts, v, i: torch.linalg.svdvals(eager_chain(ts[0] / 8, *ts[1:])),
        "svdvals_factor": lambda ts, v, i: lm.linalg.svdvals(chain(*ts, first=1 / 8)),
        "svdvals_product": lambda ts, v, i: lm.linalg.svdvals(chain(*ts) / 8),
        "svdvals_mT": lambda ts, v, i: lm.linalg.svdvals(chain(*ts[:-1]) @ lm.lazy(ts[-1].mT).mT),
        "build": build,
        "first": first,
        "free": free,
        "churn": churn,
    }


def summary(prefix: str) -> None:
    """Instructions per call of each route dumped under ``prefix``, and over eager."""
    counts = {}
    for path in sorted(glob.glob(prefix + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as f:
            text = f.read()
        name = re.search(r"^desc: Trigger: dump (\S+)", text, re.M)
        total = re.search(r"^totals: (\d+)", text, re.M)
        calls = re.search(r"^cmd: .*--calls (\d+)", text, re.M)
        if name and total:
            counts[name.group(1)] = int(total.group(1)) / (int(calls.group(1)) if calls else 300)
    eager = {"fresh": "eager", "kept": "eager", "first": "eager", "fresh_vector": "eager_vector",
             "fresh_scaled": "eager_scaled", "svdvals": "eager_svdvals",
             "svdvals_factor": "eager_svdvals_scaled", "svdvals_product": "eager_svdvals_scaled",
             "svdvals_mT": "eager_svdvals"}
    for name, n in counts.items():
        base = eager.get(name)
        over = f"  (+{(n - counts[base]) / 1e3:.1f}k over {base})" if base in counts else ""
        print(f"{name:<14} {n / 1e3:8.1f}k instructions per call{over}")
    if {"build", "first", "free", "eager"} <= counts.keys():
        first = counts["first"] - counts["eager"]
        print(f"phases over eager: build {counts['build'] / 1e3:.1f}k, first evaluation {first / 1e3:.1f}k, "
              f"free {counts['free'] / 1e3:.1f}k")


def finish(x, what: str):
    """The chain ``x`` (lazy or a tensor) finished as ``what`` says (see :data:`CHAINS`)."""
    if what == "index":
        return x[..., :5]
    if what == "cast":
        return x.to(torch.float64)
    if what == "factor":  # (the scale is written on the first factor: see chain)
        return x
    return x.mT if what == "mT" else 2 * x if what == "scale" else x


def eager_vector(tensors: list, v: torch.Tensor, what: str) -> torch.Tensor:
    """Eager ``finish(A @ B @ ..., what) @ v`` right to left, by matrix-vector products (``v`` as a
    column under a batch; an index applies to the last factor, a cast to each)."""
    if what == "mT":
        tensors = [t.mT for t in reversed(tensors)]
    elif what == "index":
        tensors = [*tensors[:-1], tensors[-1][..., :5]]
    elif what == "cast":
        tensors = [t.to(torch.float64) for t in tensors]
    elif what == "factor":
        tensors = [tensors[0] / 8, *tensors[1:]]
    out = v[:, None]
    for t in reversed(tensors):
        out = t @ out
    out = out.squeeze(-1)
    return 2 * out if what == "scale" else out


def vector_for(v: torch.Tensor, what: str) -> torch.Tensor:
    """``v`` (one entry per column of a 64-column chain) as the finished chain multiplies it."""
    return v[:5] if what == "index" else v.to(torch.float64) if what == "cast" else v


def _counts(tensors: list, v: torch.Tensor, what: str) -> list[int]:
    """Lines of building the chain of copies of ``tensors``; then, for ``to_dense()`` and ``@ v``,
    lines and torch operator calls of lazymat's evaluation (of a chain built before, untraced)
    and eager torch's operator calls."""
    from _harness import lines_of
    from count_small_calls import traced

    v = vector_for(v, what)

    first = 1 / 8 if what == "factor" else 1

    def fresh():
        return finish(chain(*[t.clone() for t in tensors], first=first), what)

    def eager():
        operands = [tensors[0] * first, *tensors[1:]] if what == "factor" else tensors
        return finish(functools.reduce(torch.matmul, operands), what)

    calls = {"to_dense": (lambda x: x.to_dense(), eager),
             "@ v": (lambda x: x @ v, lambda: eager_vector(tensors, v, what))}
    cells = [lines_of(fresh)]
    for lazy_call, eager_call in calls.values():
        for _ in range(3):  # warm: plans made
            lazy_call(fresh())
        x = fresh()
        cells.append(lines_of(lambda x=x, call=lazy_call: call(x)))
        x = fresh()
        cells += [traced(lambda x=x, call=lazy_call: call(x)).count, traced(eager_call).count]
    return cells


def lines() -> None:
    """Python lines and torch operator calls per fresh call of each of :data:`CHAINS`: building
    the expression, then evaluating it (``to_dense()``, ``@ v``; the evaluation alone)."""
    g = torch.Generator().manual_seed(0)
    print(f"lazymat from {os.path.dirname(lm.__file__)}; per fresh call: Python lines in lazymat "
          "(building; evaluating), torch operator calls (eager's, the product alone)")
    heads = (("chain", 19), ("build", 6), ("to_dense", 8), ("ops", 4), ("eager", 5), ("@ v", 6), ("ops", 4),
             ("eager", 5))
    print(" ".join(f"{h:>{w}}" for h, w in heads))
    for label, batches, what in CHAINS:
        tensors = [torch.randn(*b, 64, 64, generator=g) for b in batches]
        cells = [label, *_counts(tensors, torch.randn(64, generator=g), what)]
        print(" ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, heads, strict=True)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--callgrind", action="store_true", help="zero and dump callgrind's counters per route")
    ap.add_argument("--routes", nargs="+", choices=ROUTES + SVDVALS_ROUTES, default=ROUTES)
    ap.add_argument("--summary", metavar="PREFIX", help="print the counts per call of the dumps PREFIX.*")
    ap.add_argument("--lines", action="store_true", help="Python lines and torch ops per fresh call")
    ap.add_argument("--chain", choices=SHAPES, default="4x64", help="the callgrind routes' chain")
    args = ap.parse_args()
    if args.lines:
        torch.set_num_threads(1)
        lines()
        return
    if args.summary:
        summary(args.summary)
        return
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    shapes = SHAPES[args.chain]
    pool = [[torch.randn(*s, generator=g) for s in shapes] for _ in range(64)]
    vectors = [torch.randn(shapes[-1][-1], generator=g) for _ in range(64)]

    def control(*options: str) -> None:
        if args.callgrind:
            subprocess.run(["callgrind_control", *options, str(os.getpid())], check=True, capture_output=True)

    control("-i", "on")
    table = routes(pool, vectors, args.calls, g, shapes)
    for name in args.routes:
        route = table[name]
        if name not in ("first", "free"):  # they evaluate and drop what build kept
            for i in range(200):  # warm: plans made, allocator and caches settled
                table["fresh" if name == "build" else name](pool[i % 64], vectors[i % 64], i)
        gc.collect()

        def step(_, i, route=route):
            route(pool[i % 64], vectors[i % 64], i)

        if name in ("build", "first", "free"):
            gc.disable()
        control("-z")
        functools.reduce(step, range(args.calls), None)
        control("-d", name)
        gc.enable()
        print(f"{name}: {args.calls} calls")


if __name__ == "__main__":
    main()
