"""Small matrices: where the dense route beats the factored one, how a batch of small CPU
decompositions is best threaded, and where small dense decompositions run fastest on a GPU.

1. (any device) ``crossover``: products ``m x r @ r x r @ r x m`` (fresh expressions every call)
   for svdvals, svd, eigvals and matrix_norm (2, fro, nuc): lazymat's factored route, lazymat's
   dense route (each forced through the constants of ``lazymat.linalg.small.dense_is_cheaper``) and
   eager torch on the materialised matrix, interleaved. ``took`` is the route the shipped
   decision takes (D or F), ``loss`` what that costs over the faster of the two routes, ``-eager``
   what lazymat costs over eager torch. eigvals has no dense route in lazymat: its "dense"
   column is lazymat's eigvals of the materialised matrix (``lm.lazy(X.to_dense())``).
   Then ``fit``: per operation, a least-squares line ``t_dense - t_factored = (flops_dense -
   flops_factored) / rate - overhead`` over the measured shapes
   (``lazymat.linalg.costs.small_route_flops``); ``rate * overhead`` is the crossover in FLOPs that
   ``lazymat.linalg.costs.FACTORED_OVERHEAD_FLOPS`` holds.
2. (CPU) ``split``: a batch of small eigvals/svdvals/svd problems run as one torch call, and split
   across threads by ``lazymat.cpu_batches.split_batch``: the rule of when to split.
3. (GPU only) batched cores decomposed on the GPU vs round-tripped through the CPU (sets
   ``lazymat.linalg._common.CPU_CORE_LIMIT``).
4. (any device) ``overhead``: what a call costs over eager torch on the same dense product where
   lazymat takes the dense route (issue 12: at most 40 us). ``torch.linalg.<op>(lazy(A) @ lazy(B)
   @ lazy(C))`` from fresh tensors every call (nothing cached or hash-consed) against
   ``torch.linalg.<op>(A @ B @ C)``, interleaved, the least time of a single call over many
   rounds (on a loaded machine a round of many calls is preempted more often the longer it runs,
   which inflates the slower side; a single call often runs undisturbed); ``pinv`` of these
   shapes answers a dense tensor, as torch's. ``general`` is the same lazymat call with the
   compiled calls per structure switched off (``lazymat.linalg.compiled._compiled``): what they save.
5. (any device) ``batches``: a batch of ``b`` chains ``64 x 32 @ 32 x 32 @ 32 x 64`` (the first
   factor batched) for svd and svdvals, both lazymat routes forced and eager, the least time of
   a call over interleaved rounds: where the crossover in ``b`` lies, against the shipped
   decision (``FACTORED_OVERHEAD_FLOPS`` is one constant per op for single matrices and
   batches alike: ``b`` times a member's FLOP difference against it).

6. (any device) ``reduced``: the dense, reduced and factored small routes forced, and eager, on
   single and batched chains; then the fits of ``REDUCED_OVERHEAD_FLOPS`` and
   ``FACTORED_OVER_REDUCED_FLOPS`` (``lazymat.linalg.costs.small_route``).
7. (CPU) ``eigvals``: where a 16 x 8 chain's eigvals call spends its time, piece by piece.
   ``stages``: where a 16 x 8 chain's svdvals, svd and eigvals calls spend their overhead over
   eager, each stage timed in place (the call cut after it), interleaved.
8. (any device) ``heads``: batches of heads sharing ``E``, the reduced route against the
   factored one (why the model keeps them factored).
9. (any device) ``build``: the build and release of a fresh ``lazy(A) @ lazy(B) @ lazy(C)`` alone
   (16 x 8 tensors no live node wraps), with ``--against REV`` beside lazymat as of ``REV``.

``python benchmarks/bench_small_cores.py [--quick] [--device cuda] [--threads N] [--part P]``
(``--part overhead --small --against REV``: the 16x8 rows, with lazymat as of git revision ``REV``
timed beside the working tree's in the same process: a before/after under the same load)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import itertools
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

import torch
from _harness import compare, device_name, fmt_time, sync

import lazymat as lm
from lazymat import cpu_batches
from lazymat import linalg as LA

# name: (lazymat op, eager op, the op name dense_is_cheaper decides for)
OPS = {
    "svdvals": (LA.svdvals, torch.linalg.svdvals, "svdvals"),
    "svd": (LA.svd, lambda d: torch.linalg.svd(d, full_matrices=False), "svd"),
    "eigvals": (LA.eigvals, torch.linalg.eigvals, None),
    "norm 2": (lambda x: LA.matrix_norm(x, 2), lambda d: torch.linalg.matrix_norm(d, 2), "svdvals"),
    "norm nuc": (lambda x: LA.matrix_norm(x, "nuc"), lambda d: torch.linalg.matrix_norm(d, "nuc"), "svdvals"),
    "norm fro": (LA.matrix_norm, torch.linalg.matrix_norm, "matrix_norm"),
}


@contextlib.contextmanager
def forced(route: str):
    """Force lazymat's ``"dense"`` (the whole matrix materialised), ``"reduced"`` (the small
    route through one QR, ``lazymat.linalg.small.small_reduction``, where the product is narrower than
    both its dims) or ``"factored"`` route for every small matrix."""
    costs = LA.costs
    tables = costs.FACTORED_OVERHEAD_FLOPS, costs.FACTORED_OVER_REDUCED_FLOPS, costs.REDUCED_OVERHEAD_FLOPS
    saved = LA.costs.DENSE_MAX_ELEMENTS, [dict(t) for t in tables], LA.small._shares_outer_leaf
    if route in ("dense", "reduced"):
        LA.costs.DENSE_MAX_ELEMENTS = float("inf")
        for table, value in zip(tables, ("inf", "inf", "inf" if route == "dense" else "-inf"), strict=True):
            table.update(dict.fromkeys(table, float(value)))
        if route == "reduced":  # also where a batch shares an outer leaf (see --part heads)
            LA.small._shares_outer_leaf = lambda x: False
    else:
        LA.costs.DENSE_MAX_ELEMENTS = 0
    try:
        yield
    finally:
        LA.costs.DENSE_MAX_ELEMENTS, LA.small._shares_outer_leaf = saved[0], saved[2]
        for table, old in zip(tables, saved[1], strict=True):
            table.update(old)


def crossover(device: str, shapes: list[tuple[int, int]], rounds: int, min_time: float) -> list[tuple]:
    """Time both routes and eager per (op, m, r); returns ``(op, m, r, t_dense, t_factored)``."""
    g = torch.Generator().manual_seed(0)
    print(f"float32 m x r @ r x r @ r x m on {device_name(device)}, fresh expression per call, "
          "interleaved medians")
    print(f"{'op':>9} {'m':>4} {'r':>4} {'factored':>9} {'dense':>9} {'eager':>9} took "
          f"{'loss':>8} {'-eager':>8}")
    rows = []
    for m, r in shapes:
        A, B, C = (torch.randn(*s, generator=g).to(device) for s in ((m, r), (r, r), (r, m)))

        def build(A=A, B=B, C=C):
            return lm.lazy(A.clone()) @ lm.lazy(B) @ lm.lazy(C)

        for name, (lazy_op, eager_op, decided) in OPS.items():
            def factored(lazy_op=lazy_op, build=build):
                with forced("factored"):
                    return lazy_op(build())

            def dense(lazy_op=lazy_op, build=build, eigen=decided is None):
                if eigen:
                    return lazy_op(lm.lazy(build().to_dense()))
                with forced("dense"):
                    return lazy_op(build())

            fns = {"factored": factored, "dense": dense,
                   "eager": lambda eager_op=eager_op, A=A, B=B, C=C: eager_op(A.clone() @ B @ C)}
            t = compare(fns, device, rounds=rounds, min_time=min_time)
            took = "F" if decided is None or not LA.small.dense_is_cheaper(build(), decided) else "D"
            chosen = t["dense" if took == "D" else "factored"]
            loss = chosen - min(t["dense"], t["factored"])
            cells = " ".join(f"{fmt_time(t[k]):>9}" for k in fns)
            print(f"{name:>9} {m:>4} {r:>4} {cells} {took:>4} {loss * 1e6:>+6.0f}us "
                  f"{(chosen - t['eager']) * 1e6:>+6.0f}us", flush=True)
            rows.append((name, decided, m, r, t["dense"], t["factored"]))
    return rows


def fit(rows: list[tuple]) -> None:
    """Per decided op, the crossover in FLOPs two ways: from a least-squares line through the
    measured ``(flops_dense - flops_factored, t_dense - t_factored)``, and as the threshold on
    ``flops_dense - flops_factored`` that loses the least time over the measured shapes."""
    print("\nfit, per decision (dFLOPs = flops_dense - flops_factored, "
          "lazymat.linalg.costs.small_route_flops):")
    print("  line: t_dense - t_factored = dFLOPs / rate - overhead; crossover = rate * overhead")
    print("  best: the dFLOPs threshold losing the least time summed over the shapes above (worst loss)")
    for decided in ("svdvals", "svd", "matrix_norm"):
        pts = [(float(d - f), td - tf) for _, dec, m, r, td, tf in rows if dec == decided
               for d, f in [LA.costs.small_route_flops(m, m, r, decided)]]
        if len(pts) < 2:
            continue
        x = torch.tensor([p[0] for p in pts], dtype=torch.float64)
        y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
        design = torch.stack([x, torch.ones_like(x)], dim=1)
        slope, intercept = torch.linalg.lstsq(design, y[:, None]).solution[:, 0].tolist()
        rate = 1 / slope if slope > 0 else float("nan")

        def losses(c, pts=pts):  # time lost per shape when dense is taken for dFLOPs <= c
            return [max(dt, 0) if d <= c else max(-dt, 0) for d, dt in pts]

        cuts = sorted({0.0, *(d for d, _ in pts)})
        least = min(sum(losses(c)) for c in cuts)
        good = [c for c in cuts if sum(losses(c)) <= least]  # every threshold in [lo, hi) does as well
        higher = [c for c in cuts if c > good[-1]]
        best = (good[0] * higher[0]) ** 0.5 if higher and good[0] > 0 else good[0]
        hi = higher[0] if higher else float("inf")
        print(f"{decided:>12}: line {rate / 1e9:.2f} GFLOP/s, overhead {-intercept * 1e6:.0f} us, crossover "
              f"{-intercept * rate:.3g}; best in [{good[0]:.3g}, {hi:.3g}), "
              f"middle {best:.3g} (total {sum(losses(best)) * 1e6:.0f} us, worst "
              f"{max(losses(best)) * 1e6:.0f} us); "
              f"shipped {LA.costs.FACTORED_OVERHEAD_FLOPS[decided]:.3g} (total "
              f"{sum(losses(LA.costs.FACTORED_OVERHEAD_FLOPS[decided])) * 1e6:.0f} us, worst "
              f"{max(losses(LA.costs.FACTORED_OVERHEAD_FLOPS[decided])) * 1e6:.0f} us)")


REDUCED_SHAPES = [((), m, r, n) for m, r, n in (
    (8, 2, 8), (8, 4, 8), (16, 4, 16), (16, 8, 16), (16, 8, 64), (24, 8, 24), (32, 8, 32), (32, 16, 32),
    (48, 12, 48), (48, 24, 48), (64, 8, 64), (64, 16, 64), (64, 32, 64), (96, 12, 96), (96, 48, 96),
    (128, 16, 128), (128, 64, 128), (40, 5, 200), (200, 5, 40), (192, 24, 192), (256, 32, 256),
    (256, 128, 256), (384, 48, 384), (384, 192, 384), (512, 64, 512), (512, 128, 512))] + [
    ((8,), 16, 8, 16), ((64,), 16, 8, 16), ((4,), 64, 32, 64), ((16,), 64, 32, 64), ((32,), 64, 32, 64),
    ((4,), 128, 16, 128)]


def reduced(device: str, shapes: list[tuple], rounds: int, min_time: float) -> None:
    """The three routes of svdvals and svd per ``batch x m x r @ r x r @ r x n`` chain (fresh
    expressions, the compiled calls), each forced, and eager torch, interleaved medians; then
    per op the ``REDUCED_OVERHEAD_FLOPS`` threshold on ``count * (dense - reduced) FLOPs`` (the
    reduced route taken above it) losing the least time, and the route the shipped model takes."""
    g = torch.Generator().manual_seed(7)
    print(f"\nsmall routes, float32 on {device_name(device)}, fresh expression per call, interleaved medians")
    print(f"{'op':>8} {'shape':>22} {'route':>6} {'dense':>9} {'reduced':>9} {'factored':>9} {'eager':>9} "
          f"{'took':>8} {'loss':>8} {'-eager':>8}")
    pts: dict[str, list] = {"svdvals": [], "svd": []}
    against: dict[str, list] = {"svdvals": [], "svd": []}
    for batch, m, r, n in shapes:
        A = torch.randn(*batch, m, r, generator=g).to(device)
        B, C = (torch.randn(*s, generator=g).to(device) for s in ((r, r), (r, n)))
        label = f"{'x'.join(map(str, batch)) + ' x ' if batch else ''}{m}x{r}@{r}x{r}@{r}x{n}"
        count = math.prod(batch)
        for name in pts:
            lazy_op, eager_op, _ = OPS[name]

            def run(route, lazy_op=lazy_op, A=A, B=B, C=C):
                with forced(route):
                    return lazy_op(lm.lazy(A.clone()) @ lm.lazy(B) @ lm.lazy(C))

            fns = {k: functools.partial(run, k) for k in ("dense", "reduced", "factored")}
            fns["eager"] = lambda eager_op=eager_op, A=A, B=B, C=C: eager_op(A.clone() @ B @ C)
            t = compare(fns, device, rounds=rounds, min_time=min_time)
            x = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
            took = ("factored" if not LA.small.dense_is_cheaper(x, name) else
                    "reduced" if LA.small.small_reduction(x, name) else "dense")
            loss = t[took] - min(t["dense"], t["reduced"], t["factored"])
            cells = " ".join(f"{fmt_time(t[k]):>9}" for k in fns)
            print(f"{name:>8} {label:>22} {cells} {took:>8} {loss * 1e6:>+6.0f}us "
                  f"{(t[took] - t['eager']) * 1e6:>+6.0f}us", flush=True)
            dense = LA.costs.small_route_flops(m, n, r, name)[0]
            side = min(("right", "left"), key=lambda sd: LA.costs.reduced_route_flops(m, n, r, name, sd))
            pts[name].append((count * (dense - LA.costs.reduced_route_flops(m, n, r, name, side)),
                              t["dense"] - t["reduced"]))
            small, cost = LA.costs.small_route(m, n, r, count, name)
            # the reduced route against the factored
            if m * n <= LA.costs.DENSE_MAX_ELEMENTS and small != "dense":
                factored = count * LA.costs.small_route_flops(m, n, r, name)[1]
                against[name].append((cost - factored, t["factored"] - t["reduced"]))
    print("\nfit: REDUCED_OVERHEAD_FLOPS, the threshold on count * (dense - reduced) FLOPs (reduced taken"
          " above it), and FACTORED_OVER_REDUCED_FLOPS, on the reduced route's cost"
          " (lazymat.linalg.costs.small_route) minus the factored FLOPs (reduced taken at or below it), "
          "each losing"
          " the least time")
    for name in pts:
        for what, rows, shipped, above in (
                ("reduced", pts[name], LA.costs.REDUCED_OVERHEAD_FLOPS[name], True),
                ("factored", against[name], LA.costs.FACTORED_OVER_REDUCED_FLOPS[name], False)):
            def losses(c, rows=rows, above=above):  # time lost per shape with the threshold c
                return [max(-dt, 0) if (d > c) == above else max(dt, 0) for d, dt in rows]

            cuts = sorted({-1.0, *(d for d, _ in rows)})
            least = min(sum(losses(c)) for c in cuts)
            good = [c for c in cuts if sum(losses(c)) <= least]
            higher = [c for c in cuts if c > good[-1]]
            hi = higher[0] if higher else float("inf")
            print(f"{name:>8} {what:>8}: best in [{good[0]:.3g}, {hi:.3g}) (total {least * 1e6:.0f} us, "
                  f"worst {max(losses(good[0])) * 1e6:.0f} us); shipped {shipped:.3g} (total "
                  f"{sum(losses(shipped)) * 1e6:.0f} us, worst {max(losses(shipped)) * 1e6:.0f} us)")


def shared_heads(device: str, rounds: int) -> None:
    """Batches of heads ``E @ Q_h @ K_h^T @ E^T`` sharing ``E``: the reduced route (forced)
    against the factored route, which factorises ``E`` once for the batch; the model keeps
    such batches off the reduced route (``lazymat.linalg.small._shares_outer_leaf``)."""
    g = torch.Generator().manual_seed(11)
    print(f"\nsvdvals of heads sharing E, float32 on {device_name(device)}, least per call over {rounds} "
          "interleaved rounds")
    print(f"{'heads':>5} {'vocab':>5} {'d_model':>7} {'d_head':>6} {'reduced':>9} {'factored':>9} "
          f"{'took':>8}")
    # session 10's three batches, then head counts swept at two shapes (where the guard's saving
    # starts to pay: the price of _shares_outer_leaf's exclusion)
    sweep = [(h, 96, 32, 4) for h in (6, 12, 24, 48, 96)] + [(h, 120, 20, 3) for h in (24, 48, 144)]
    for heads, vocab, d_model, d_head in ((12, 120, 20, 3), (12, 200, 64, 8), (144, 96, 32, 4), *sweep):
        E = torch.randn(vocab, d_model, generator=g).to(device)
        Q, K = (torch.randn(heads, d_model, d_head, generator=g).to(device) for _ in range(2))

        def run(route, E=E, Q=Q, K=K):
            with forced(route):
                e = lm.lazy(E.clone())
                return LA.svdvals(e @ lm.lazy(Q) @ lm.lazy(K).mT @ e.mT)

        t = min_per_call({k: functools.partial(run, k) for k in ("reduced", "factored")}, device, rounds, 1)
        x = lm.lazy(E) @ lm.lazy(Q) @ lm.lazy(K).mT @ lm.lazy(E).mT
        took = ("factored" if not LA.small.dense_is_cheaper(x) else
                "reduced" if LA.small.small_reduction(x, "svdvals") else "dense")
        print(f"{heads:>5} {vocab:>5} {d_model:>7} {d_head:>6} {fmt_time(t['reduced']):>9} "
              f"{fmt_time(t['factored']):>9} {took:>8}", flush=True)


def eigvals_parts(device: str, rounds: int) -> None:
    """Where a 16 x 8 @ 8 x 8 @ 8 x 16 eigvals call's time goes (issue 12 item 4: it loses to
    eager although LAPACK runs on the 8 x 8 core): each piece of the compiled call timed alone,
    interleaved, least per call; the ops after LAPACK as the extra time of ``eig`` then the op
    (they run from cold caches)."""
    g = torch.Generator().manual_seed(9)
    A, B, C = torch.randn(16, 8, generator=g), torch.randn(8, 8, generator=g), torch.randn(8, 16, generator=g)
    core, whole = C @ A @ B, A @ B @ C
    vals = torch.linalg.eigvals(core)
    values = vals.tolist()
    eig = torch.linalg.eigvals

    def after(fn):
        return lambda: (eig(core), fn())

    def host_order(values):  # the compiled call's order (linalg.compiled._host_order), moduli on the host
        return LA.compiled._host_order(values, list(map(abs, values)), 4 * torch.finfo(torch.float32).eps,
                              torch.finfo(torch.float32).tiny)

    fns = {
        "eager eigvals(A @ B @ C), 16 x 16": lambda: eig(A.clone() @ B.clone() @ C.clone()),
        "lazymat eigvals (compiled call)": lambda: LA.eigvals(lm.lazy(A.clone()) @ lm.lazy(B.clone())
                                                              @ lm.lazy(C.clone())),
        "clone x 3": lambda: (A.clone(), B.clone(), C.clone()),
        "build lazy(A) @ lazy(B) @ lazy(C)": lambda: lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C),
        "eig 16 x 16": lambda: eig(whole),
        "eig 8 x 8 (the core)": lambda: eig(core),
        "core C @ A @ B": lambda: C @ A @ B,
        "vector_norm (finite check)": lambda: float(torch.linalg.vector_norm(core)),
        "host sum (finite check)": lambda: math.isfinite(sum(map(sum, core.tolist()))),
        "eig 8x8, then abs().tolist()": after(lambda: vals.abs().tolist()),
        "eig 8x8, then tolist()": after(lambda: vals.tolist()),
        "eig 8x8, then tolist(), host order": after(lambda: host_order(vals.tolist())),
        "eig 8x8, then tensor(list)": after(lambda: torch.tensor(values, dtype=vals.dtype)),
    }
    t = min_per_call(fns, device, rounds, 1)
    print(f"\neigvals of a 16 x 8 @ 8 x 8 @ 8 x 16 chain, float32 on {device_name(device)}, least per call "
          f"over {rounds} interleaved rounds (the 'then' rows: minus eig 8 x 8 alone)")
    for name, v in t.items():
        extra = v - t["eig 8 x 8 (the core)"] if name.startswith("eig 8x8, then") else v
        print(f"{name:>36} {fmt_time(extra):>9}")


def stages(device: str, rounds: int) -> None:
    """Where a 16 x 8 @ 8 x 8 @ 8 x 16 call's overhead over eager goes (issue 12 item 4), measured
    in place (every piece from the caches a call leaves: run alone, a piece is several times
    cheaper): the call cut after each stage, interleaved, least per call. ``run`` is the
    structure's compiled call on fresh tensors (the product, LAPACK, the read-back and the
    finisher); ``build +`` adds the nodes (and their death); ``_compiled`` the checks of the
    leaves and the call's key; ``torch.linalg`` torch's ``__torch_function__`` and
    ``interop.dispatch``. Each row's ``step``: what its stage adds to the row above."""
    from lazymat.rewrite import leaf_chain

    g = torch.Generator().manual_seed(3)
    A, B, C = torch.randn(16, 8, generator=g), torch.randn(8, 8, generator=g), torch.randn(8, 16, generator=g)
    ops = {"svdvals": (torch.linalg.svdvals, (True,)), "eigvals": (torch.linalg.eigvals, (True,)),
           "svd": (functools.partial(torch.linalg.svd, full_matrices=False), ())}
    print(f"\nstages of a 16x8@8x8@8x16 call, float32 on {device_name(device)}, least per call over "
          f"{rounds} interleaved rounds")
    for name, (op, options) in ops.items():
        def build():
            return lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ lm.lazy(C.clone())

        for _ in range(3):
            op(build())  # the structure's call compiled
        run = next(c for k, c in LA.compiled._CALLS.items() if k[0] == name and k[1] == options).run

        def build_run(run=run):
            x = build()
            x._cache["read"] = True  # as _compiled marks it
            return run([leaf.tensor for leaf in leaf_chain(x)])

        fns = {
            "eager": lambda op=op: op(A.clone() @ B.clone() @ C.clone()),
            "build, then eager": lambda op=op: (build(), op(A.clone() @ B.clone() @ C.clone())),
            "run": lambda run=run: run([A.clone(), B.clone(), C.clone()]),
            "build + run": build_run,
            "build + _compiled": lambda name=name, options=options: LA.compiled._compiled(
                build(), name, options),
            "torch.linalg (the whole call)": lambda op=op: op(build()),
        }
        t = min_per_call(fns, device, rounds, 1)
        print(f"  {name}: {'':>26} {'time':>9} {'- eager':>9} {'step':>9}")
        previous = t["eager"]
        for stage, v in t.items():
            step = v - (t["eager"] if stage == "build, then eager" else previous)
            print(f"  {stage:>36} {fmt_time(v):>9} {(v - t['eager']) * 1e6:>+7.1f}us {step * 1e6:>+7.1f}us")
            if stage != "build, then eager":
                previous = v


def split(batches: tuple, widths: tuple, rounds: int, min_time: float) -> None:
    """A batch of small problems as one torch call with torch's threads, with one intra-op
    thread, and split across threads by ``split_batch`` (one intra-op thread each)."""
    g = torch.Generator().manual_seed(2)
    ops = {"eigvals": torch.linalg.eigvals, "svdvals": torch.linalg.svdvals,
           "svd": lambda c: torch.linalg.svd(c, full_matrices=False)}
    threads = torch.get_num_threads()
    print(f"\nsmall decompositions on the CPU ({threads} threads), wall time: as is / one intra-op thread / "
          "split across threads, then as-is time over each (> 1: faster than as is)")
    print(f"{'batch':>5} {'r':>4} " + " ".join(f"{k:>34}" for k in ops))
    for batch in batches:
        for r in widths:
            if batch * r**3 > 4 * 512**3 // 8:  # seconds per call: nothing small left to learn
                continue
            cores = torch.randn(batch, r, r, generator=g)
            cells = []
            for fn in ops.values():
                def one(fn=fn, c=cores):
                    with cpu_batches.one_intra_op_thread():
                        return fn(c)

                fns = {"as is": lambda fn=fn, c=cores: fn(c), "one": one,
                       "split": lambda fn=fn, c=cores: cpu_batches.split_batch(fn, c, threads, min_work=0)}
                t = compare(fns, "cpu", rounds=rounds, min_time=min_time)
                cells.append("/".join(fmt_time(t[k]) for k in fns)
                             + f" {t['as is'] / t['one']:.2f} {t['as is'] / t['split']:.2f}")
            print(f"{batch:>5} {r:>4} " + " ".join(f"{c:>34}" for c in cells), flush=True)


def gpu_placement(rounds: int) -> None:
    dev = "cuda"
    g = torch.Generator().manual_seed(1)
    ops = {
        "eigvals": torch.linalg.eigvals,
        "svdvals": torch.linalg.svdvals,
        "svd": lambda c: torch.linalg.svd(c, full_matrices=False),
        "qr": torch.linalg.qr,
    }
    print(f"float32 cores on {device_name(dev)}: GPU time / CPU round-trip time (<1: GPU wins)")
    print(f"{'batch':>5} {'r':>5} " + " ".join(f"{k:>22}" for k in ops))
    for batch in (1, 144):
        for r in (16, 64, 128, 256, 512, 1024):
            if batch * r * r > 144 * 256 * 256:
                continue
            cores = torch.randn(batch, r, r, generator=g).to(dev)
            cells = []
            for fn in ops.values():
                def cpu(fn=fn, cores=cores):
                    out = fn(cores.cpu())
                    return [o.to(dev) for o in out] if isinstance(out, tuple) else out.to(dev)

                fns = {"gpu": lambda fn=fn, cores=cores: fn(cores), "cpu": cpu}
                t = compare(fns, dev, rounds=rounds, min_time=0)
                cells.append(f"{fmt_time(t['gpu'])}/{fmt_time(t['cpu'])} {t['gpu'] / t['cpu']:.2f}")
            print(f"{batch:>5} {r:>5} " + " ".join(f"{c:>22}" for c in cells))


# name: (lazymat call through torch's API, eager call on the dense product, the op name
# dense_is_cheaper decides for, None where there is no dense route)
OVERHEAD_OPS = {
    "svdvals": (torch.linalg.svdvals, torch.linalg.svdvals, "svdvals"),
    "svd": (torch.linalg.svd, lambda d: torch.linalg.svd(d, full_matrices=False), "svd"),
    "matrix_rank": (torch.linalg.matrix_rank, torch.linalg.matrix_rank, "svdvals"),
    "norm 2": (lambda x: torch.linalg.matrix_norm(x, 2), lambda d: torch.linalg.matrix_norm(d, 2), "svdvals"),
    "norm nuc": (lambda x: torch.linalg.matrix_norm(x, "nuc"), lambda d: torch.linalg.matrix_norm(d, "nuc"),
                 "svdvals"),
    "norm fro": (torch.linalg.matrix_norm, torch.linalg.matrix_norm, "matrix_norm"),
    "cond": (torch.linalg.cond, torch.linalg.cond, "svdvals"),
    "pinv": (torch.linalg.pinv, torch.linalg.pinv, "svd"),
    "eigvals": (torch.linalg.eigvals, torch.linalg.eigvals, None),
    "to_dense": (lambda x: x.to_dense(), lambda d: d, None),
}
OVERHEAD_BOUND = 40e-6  # issue 12, item 1: seconds over eager per call


def min_per_call(fns: dict, device: str, rounds: int, calls: int, clock=time.perf_counter,
                 swap: tuple[str, str] | None = None) -> dict:
    """The least seconds per call of each function over ``rounds`` interleaved rounds of
    ``calls`` calls (the floor a quiet moment reaches; a loaded machine only adds). ``swap``:
    two functions that trade places every other round (what runs just before a call decides
    how warm its caches are: each takes the other's turn as often)."""
    best = dict.fromkeys(fns, math.inf)
    for fn in fns.values():  # warm: plans cached, kernels loaded
        for _ in range(3):
            fn()
    sync(device)
    names = list(fns)
    orders = [names]
    if swap is not None:
        i, j = names.index(swap[0]), names.index(swap[1])
        other = list(names)
        other[i], other[j] = other[j], other[i]
        orders.append(other)
    for round_ in range(rounds):
        for name in orders[round_ % len(orders)]:
            fn = fns[name]
            t = clock()
            for _ in range(calls):
                fn()
            sync(device)
            best[name] = min(best[name], (clock() - t) / calls)
    return best


@contextlib.contextmanager
def general_path():
    """lazymat's general path for every call: no compiled call per structure is looked up."""
    saved = LA.compiled._compiled
    LA.compiled._compiled = lambda x, op, options: None
    try:
        yield
    finally:
        LA.compiled._compiled = saved


def base_package(rev: str) -> Any:
    """lazymat as of git revision ``rev`` of this checkout, imported beside the working tree's
    as the package ``lazymat_base`` (its one absolute self-import, ``expr._layer``'s, renamed):
    both run interleaved in one process, under the same load."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    where = tempfile.mkdtemp(prefix="lazymat_base_")
    archive = subprocess.run(["git", "archive", rev, "lazymat"], capture_output=True, check=True,
                             cwd=root).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    os.rename(os.path.join(where, "lazymat"), os.path.join(where, "lazymat_base"))
    expr = os.path.join(where, "lazymat_base", "expr.py")
    with open(expr) as f:
        text = f.read().replace('import_module(f"lazymat.{name}")', 'import_module(f"lazymat_base.{name}")')
    with open(expr, "w") as f:
        f.write(text)
    sys.path.insert(0, where)
    return importlib.import_module("lazymat_base")


# where --scaled puts the attention scale 1/8 (eager torch the same): none, on the first factor, on
# the product
SCALES = {"A@B@C": lambda a, b, c: a @ b @ c, "(A/8)@B@C": lambda a, b, c: (a / 8) @ b @ c,
          "(A@B@C)/8": lambda a, b, c: (a @ b @ c) / 8}


def overhead(device: str, shapes: list[tuple], rounds: int, calls: int, against: str | None = None,
             scaled: bool = False) -> None:
    """lazymat minus eager torch per op on each ``m x r @ r x r @ r x n`` chain (a batch of
    the first factor when given), and the verdict against :data:`OVERHEAD_BOUND`; with
    ``against``, also lazymat as of that git revision (:func:`base_package`), interleaved;
    ``scaled``: each op also on the chain with a scale 1/8 on its first factor, and on the
    product (:data:`SCALES`)."""
    base = None if against is None else base_package(against)
    print(f"\nper-call cost over eager torch, float32 on {device_name(device)}, fresh tensors every call, "
          f"interleaved, least over {rounds} rounds of {calls} calls"
          + ("" if base is None else f"; base: lazymat as of {against}, in the same process"))
    print(f"{'shape':>22} {'op':>11} {'route':>6} {'eager':>9} {'lazymat':>9} {'general':>9} {'over':>9}  "
          + ("verdict" if base is None else f"{'base':>9} {'base over':>9}  verdict"))
    g = torch.Generator().manual_seed(3)
    worst = 0.0
    for batch, m, r, n in shapes:
        A = torch.randn(*batch, m, r, generator=g).to(device)
        B, C = (torch.randn(*s, generator=g).to(device) for s in ((r, r), (r, n)))
        x = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
        shape = f"{'x'.join(map(str, batch)) + ' x ' if batch else ''}{m}x{r}@{r}x{r}@{r}x{n}"
        for (name, (lazy_op, eager_op, decided)), (scale, chain) in itertools.product(
                OVERHEAD_OPS.items(), list(SCALES.items()) if scaled else [next(iter(SCALES.items()))]):
            if name == "eigvals" and m != n:
                continue
            label = shape if not scaled else f"{scale} {m}x{r}"
            route = ("-" if decided is None else "factor" if not LA.small.dense_is_cheaper(x, decided) else
                     "dense" if LA.small.small_reduction(x, decided) is None else "reduce")

            def eager(eager_op=eager_op, A=A, B=B, C=C, chain=chain):
                return eager_op(chain(A.clone(), B.clone(), C.clone()))

            def lazy(lazy_op=lazy_op, A=A, B=B, C=C, chain=chain):
                return lazy_op(chain(lm.lazy(A.clone()), lm.lazy(B.clone()), lm.lazy(C.clone())))

            def general(lazy=lazy):
                with general_path():
                    return lazy()

            fns = {"eager": eager, "lazymat": lazy, "general": general}
            if base is not None:  # the same call through the base revision's package
                base_op = (lambda x: x.to_dense()) if name == "to_dense" else lazy_op

                def before(base_op=base_op, A=A, B=B, C=C, chain=chain):
                    return base_op(chain(base.lazy(A.clone()), base.lazy(B.clone()), base.lazy(C.clone())))

                fns["base"] = before
            t = min_per_call(fns, device, rounds, calls, swap=None if base is None else ("lazymat", "base"))
            over = t["lazymat"] - t["eager"]
            worst = max(worst, over)
            verdict = "ok" if over <= OVERHEAD_BOUND else f"over by {(over - OVERHEAD_BOUND) * 1e6:.0f} us"
            then = "" if base is None else \
                f"{fmt_time(t['base']):>9} {(t['base'] - t['eager']) * 1e6:>+7.1f}us  "
            print(f"{label:>22} {name:>11} {route:>6} {fmt_time(t['eager']):>9} {fmt_time(t['lazymat']):>9} "
                  f"{fmt_time(t['general']):>9} {over * 1e6:>+7.1f}us  {then}{verdict}", flush=True)
    bound = OVERHEAD_BOUND * 1e6
    print(f"worst: {worst * 1e6:+.1f} us over eager ({'within' if worst <= OVERHEAD_BOUND else 'above'} "
          f"the {bound:.0f} us bound)")


def build(device: str, rounds: int, against: str | None = None) -> None:
    """The build and release of ``lazy(A) @ lazy(B) @ lazy(C)`` over fresh 16 x 8 tensors (32 per
    call, made beforehand: no clone timed), then its build again while a chain over the same
    tensors lives (every node found), least per build over ``rounds`` interleaved rounds; with
    ``against``, beside lazymat as of that revision (:func:`base_package`), three repeats."""
    g = torch.Generator().manual_seed(3)
    A, B, C = (torch.randn(*s, generator=g).to(device) for s in ((16, 8), (8, 8), (8, 16)))
    packages = {"lazymat": lm} if against is None else {"lazymat": lm, "base": base_package(against)}

    def builds(package, pool):
        def run():
            for a, b, c in pool:
                package.lazy(a) @ package.lazy(b) @ package.lazy(c)  # dies at once (or was found)
        return run

    pools = {name: [(A.clone(), B.clone(), C.clone()) for _ in range(64)] for name in packages}
    kept = [package.lazy(a) @ package.lazy(b) @ package.lazy(c)  # noqa: F841 - alive while timed
            for name, package in packages.items() for a, b, c in pools[name][:32]]
    print(f"\nbuild and release of lazy(A) @ lazy(B) @ lazy(C), 16x8@8x8@8x16 on {device_name(device)}, "
          f"least per build over {rounds} interleaved rounds of 32 (found: while a chain over the same "
          "tensors lives)" + ("" if against is None else f"; base: {against}"))
    for kind, size in (("fresh", slice(32, 64)), ("found", slice(0, 32))):
        fns = {name: builds(package, pools[name][size]) for name, package in packages.items()}
        for _ in range(1 if against is None else 3):
            t = min_per_call(fns, device, rounds, 1, swap=None if against is None else ("lazymat", "base"))
            ratio = "" if against is None else f"  (ratio {t['lazymat'] / t['base']:.3f})"
            print(f"  {kind}: " + "  ".join(f"{name} {fmt_time(v / 32)}" for name, v in t.items()) + ratio)


def batches(device: str, sizes: tuple[int, ...], rounds: int) -> None:
    """Both routes of svd and svdvals on batches of ``b`` 64 x 32 chains (see the module)."""
    print(f"\nbatches of 64x32@32x32@32x64 (first factor batched), float32 on {device_name(device)}, "
          f"least per call over {rounds} interleaved rounds")
    print(f"{'op':>8} {'b':>3} {'b*dFLOPs':>9} {'factored':>9} {'dense':>9} {'eager':>9} took {'loss':>7}")
    g = torch.Generator().manual_seed(5)
    ops = {"svd": (LA.svd, lambda d: torch.linalg.svd(d, full_matrices=False)),
           "svdvals": (LA.svdvals, torch.linalg.svdvals)}
    for name, (lazy_op, eager_op) in ops.items():
        dense, factored = LA.costs.small_route_flops(64, 64, 32, name)
        for b in sizes:
            A = torch.randn(b, 64, 32, generator=g).to(device)
            B, C = (torch.randn(*s, generator=g).to(device) for s in ((32, 32), (32, 64)))

            def run(route, lazy_op=lazy_op, A=A, B=B, C=C):
                with forced(route):
                    return lazy_op(lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ lm.lazy(C.clone()))

            def eager(eager_op=eager_op, A=A, B=B, C=C):
                return eager_op(A.clone() @ B.clone() @ C.clone())

            fns = {"factored": lambda run=run: run("factored"), "dense": lambda run=run: run("dense"),
                   "eager": eager}
            t = min_per_call(fns, device, rounds, 1)
            took = "D" if LA.small.dense_is_cheaper(lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C), name) else "F"
            loss = t["dense" if took == "D" else "factored"] - min(t["dense"], t["factored"])
            cells = " ".join(f"{fmt_time(t[k]):>9}" for k in fns)
            print(f"{name:>8} {b:>3} {b * (dense - factored):>9.3g} {cells} {took:>4} {loss * 1e6:>+6.0f}us",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="a few shapes, few rounds (< 30 s)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--part", choices=("all", "crossover", "split", "overhead", "batches", "reduced",
                                       "eigvals", "heads", "stages", "build"), default="all")
    ap.add_argument("--against", metavar="REV", default=None,
                    help="overhead, build: also time lazymat as of git revision REV, interleaved in this "
                    "process")
    ap.add_argument("--small", action="store_true", help="overhead: the 16x8 chain only")
    ap.add_argument("--scaled", action="store_true",
                    help="overhead: each op also with a scale 1/8 on the first factor and on the product")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time this process's CPU time (steadier on a loaded machine; needs --threads 1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        if torch.get_num_threads() != 1 or args.device != "cpu":
            ap.error("--cpu-time counts every thread's time: use it with --threads 1 on the CPU")
        global compare
        compare = functools.partial(compare, clock=time.process_time)
        print("clock: process CPU time (time.process_time), not wall time")
    if args.part in ("all", "crossover"):
        if args.quick:
            shapes = [(16, 8), (64, 8), (64, 32), (256, 32)]
            rows = crossover(args.device, shapes, rounds=3, min_time=0.002)
        else:
            shapes = [(m, r) for m in (8, 16, 32, 64, 96, 128, 192, 256, 384, 512)
                      for r in sorted({max(2, m // 8), m // 2})]
            rows = crossover(args.device, shapes, rounds=7, min_time=0.01)
        fit(rows)
    if args.device == "cpu" and args.part in ("all", "split"):
        if args.quick:
            split((1, 16), (32, 64), rounds=3, min_time=0.002)
        else:
            split((1, 2, 4, 16, 144), (8, 16, 32, 64, 128, 256, 512), rounds=5, min_time=0.01)
    if args.part in ("all", "overhead"):
        if args.quick:
            overhead(args.device, [((), 64, 32, 64), ((4,), 64, 32, 64)], rounds=60, calls=1,
                     against=args.against)
        else:
            shapes = [((), 16, 8, 16)] if args.small else [
                ((), 64, 32, 64), ((), 16, 8, 16), ((), 128, 16, 128), ((4,), 64, 32, 64)]
            overhead(args.device, shapes, rounds=400, calls=1, against=args.against, scaled=args.scaled)
    if args.part in ("all", "reduced"):
        if args.quick:
            quick = [((), 16, 8, 16), ((), 64, 32, 64), ((4,), 64, 32, 64)]
            reduced(args.device, quick, rounds=3, min_time=0.002)
        else:
            reduced(args.device, REDUCED_SHAPES, rounds=7, min_time=0.01)
    if args.part in ("all", "heads"):
        shared_heads(args.device, rounds=5 if args.quick else 30)
    if args.device == "cpu" and args.part in ("all", "eigvals"):
        eigvals_parts(args.device, rounds=60 if args.quick else 400)
    if args.part in ("all", "stages"):
        stages(args.device, rounds=60 if args.quick else 400)
    if args.part in ("all", "build"):
        build(args.device, rounds=30 if args.quick else 300, against=args.against)
    if args.part in ("all", "batches"):
        sizes = (2, 4) if args.quick else (1, 2, 3, 4, 5, 6, 8)
        batches(args.device, sizes, rounds=20 if args.quick else 100)
    if args.device.startswith("cuda") and not args.quick and args.part == "all":
        gpu_placement(rounds=3)


if __name__ == "__main__":
    main()
