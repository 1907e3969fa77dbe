"""Deterministic per-call counts for small matrices (issue 12, item 4): Python lines run in
lazymat's modules and torch operator calls, for ``torch.linalg.<op>(lazy(A) @ lazy(B) @ lazy(C))``
from fresh tensors every call (nothing hash-consed, plans warm), next to eager torch's operator
calls on ``A @ B @ C``.

Timings of a ~40 us overhead drown in the noise of a loaded machine; these counts do not (the
same numbers on every run). Lines are counted with ``sys.settrace`` (line events in files under
``lazymat/``), frames (Python functions of those files entered) with ``sys.setprofile``,
operator calls with a ``TorchDispatchMode`` (every ATen call, views included).
One traced call per row, after three warm-up calls. ``lapack``: the LAPACK calls of each side
with the shape each reads (the reduced small route: a QR, then an SVD of the ``m x r`` matrix).

``PYTHONPATH=$PWD python benchmarks/count_small_calls.py [--quick] [--ops svdvals eigvals ...]``
(the last rows: the chain's last operand read transposed, ``lazy(C.mT).mT``; eager is the same)

``--callgrind``: instead, machine instructions per call of eager torch, lazymat, and lazymat's
general path (its compiled calls per structure switched off) on the chain ``--shape M R N``
(64x32 by default), each route ``--calls`` times inside ``functools.reduce`` (as ``count_overhead.py``)::

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 PYTHONPATH=$PWD valgrind --tool=callgrind \\
        --instr-atstart=no --collect-atstart=no --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/cg.out "$(python -c 'import sys; print(sys.executable)')" \\
        benchmarks/count_small_calls.py --callgrind --ops svdvals
    grep -E "^(desc: Trigger|totals)" /tmp/cg.out.*   # each route's instructions; / --calls
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import subprocess
import sys

import torch
from _harness import lines_of
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm

OPS = {
    "svdvals": torch.linalg.svdvals,
    "svd": lambda x: torch.linalg.svd(x, full_matrices=False),
    "matrix_rank": torch.linalg.matrix_rank,
    "norm 2": lambda x: torch.linalg.matrix_norm(x, 2),
    "norm nuc": lambda x: torch.linalg.matrix_norm(x, "nuc"),
    "norm fro": torch.linalg.matrix_norm,
    "cond": torch.linalg.cond,
    "pinv": torch.linalg.pinv,
    "eigvals": torch.linalg.eigvals,
    "to_dense": None,
}
PACKAGE = os.path.dirname(lm.__file__) + os.sep


# LAPACK calls named in the "lapack" column, with the matrix each reads: the reduced small route
# shows as a QR and an SVD of the m x r matrix, the dense one as an SVD of the whole matrix
_LAPACK = {"_linalg_svd": "svd", "linalg_qr": "qr", "linalg_eig": "eig", "_linalg_eigh": "eigh"}


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.lapack: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        name = _LAPACK.get(func.__name__.split(".")[0])
        if name is not None:
            self.lapack.append(f"{name} {'x'.join(map(str, args[0].shape))}")
        return func(*args, **(kwargs or {}))


def frames_of(call) -> int:
    """Python frames entered in lazymat's files during ``call()`` (``sys.setprofile``'s call
    events): each costs microseconds when it runs from cold caches, as after LAPACK."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            count += 1

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return count


def traced(call) -> _Ops:
    with _Ops() as mode:
        call()
    return mode


def callgrind(ops: list[str], calls: int, shape: tuple[int, int, int]) -> None:
    """Zero and dump callgrind's counters around ``calls`` calls of each route (see above)."""
    from lazymat import linalg as LA

    def control(*options: str) -> None:
        subprocess.run(["callgrind_control", *options, str(os.getpid())], check=True, capture_output=True)

    def general(op):
        def call(x):
            saved, LA.compiled._compiled = LA.compiled._compiled, lambda x, op, options: None
            try:
                return op(x)
            finally:
                LA.compiled._compiled = saved
        return call

    g = torch.Generator().manual_seed(3)
    m, r, n = shape
    A, B, C = (torch.randn(*s, generator=g) for s in ((m, r), (r, r), (r, n)))

    def fresh() -> lm.Expr:
        return lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ lm.lazy(C.clone())

    control("-i", "on")
    for name in ops:
        op = OPS[name] or (lambda x: x.to_dense() if isinstance(x, lm.Expr) else x)
        routes = {"eager": lambda op=op: op(A.clone() @ B.clone() @ C.clone()),
                  "lazymat": lambda op=op: op(fresh()),
                  "general": lambda op=op: general(op)(fresh())}
        for route, fn in routes.items():
            for _ in range(5):  # warm: plans made, calls compiled
                fn()
            gc.collect()
            control("-z")
            functools.reduce(lambda _, i, fn=fn: fn(), range(calls), None)
            control("-d", f"{name}-{route}")
            print(f"{name} {route}: {calls} calls", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one shape")
    ap.add_argument("--ops", nargs="*", default=list(OPS), choices=list(OPS))
    ap.add_argument("--callgrind", action="store_true", help="instructions per route under callgrind")
    ap.add_argument("--calls", type=int, default=20, help="calls per route under callgrind")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 32, 64), metavar=("M", "R", "N"),
                    help="the chain M x R @ R x R @ R x N under callgrind")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.callgrind:
        callgrind(args.ops, args.calls, tuple(args.shape))
        return
    # (batch, m, r, n, whether the last operand is read transposed: lazy(C.mT).mT)
    shapes = [((), 64, 32, 64, False)] if args.quick else [
        ((), 64, 32, 64, False), ((), 16, 8, 16, False), ((4,), 64, 32, 64, False), ((), 64, 32, 64, True)]
    g = torch.Generator().manual_seed(3)
    print(f"lazymat from {PACKAGE}; per call: Python lines in lazymat, torch operator calls (eager's)")
    print(f"{'shape':>22} {'op':>11} {'lines':>6} {'frames':>6} {'ops':>4} {'eager ops':>9}  "
          "lapack (lazymat | eager)")
    for batch, m, r, n, flip in shapes:
        A = torch.randn(*batch, m, r, generator=g)
        B, C = torch.randn(r, r, generator=g), torch.randn(r, n, generator=g)
        label = f"{'x'.join(map(str, batch)) + ' x ' if batch else ''}{m}x{r}@{r}x{r}@{r}x{n}"
        label += ".mT" if flip else ""
        for name in args.ops:
            op = OPS[name] or (lambda x: x.to_dense() if isinstance(x, lm.Expr) else x)

            def lazy(op=op, A=A, B=B, C=C, flip=flip):
                last = lm.lazy(C.mT.clone()).mT if flip else lm.lazy(C.clone())
                return op(lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ last)

            def eager(op=op, A=A, B=B, C=C):
                return op(A.clone() @ B.clone() @ C.clone())

            for _ in range(3):
                lazy()
            mine, theirs = traced(lazy), traced(eager)
            counts = f"{lines_of(lazy):>6} {frames_of(lazy):>6} {mine.count:>4} {theirs.count:>9}"
            print(f"{label:>22} {name:>11} {counts}  {', '.join(mine.lapack)} | {', '.join(theirs.lapack)}",
                  flush=True)


if __name__ == "__main__":
    main()
