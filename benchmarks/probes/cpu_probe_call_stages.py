"""Where a compiled small call's instructions go (issue 12, item 4): callgrind counts per call of
``torch.linalg.<op>(lazy(A) @ lazy(B) @ lazy(C))`` (16x8 @ 8x8 @ 8x16 float32, fresh tensors every
call), each stage's share found by running the same call with the stages after it cut off (their
answer returned at once, precomputed): the clones alone, the build (and release), the
``__torch_function__`` protocol (lazymat's dispatch stubbed), ``interop.dispatch`` (the compiled
call stubbed), ``compiled._compiled`` before its run (every compiled run stubbed), and the whole
call; beside eager torch on ``A @ B @ C``. The differences between neighbouring rows are the
stages' costs (cpu-small-counts.txt, session 17).

Run under callgrind, from the repository root::

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 PYTHONPATH=$PWD valgrind --tool=callgrind \\
        --instr-atstart=no --collect-atstart=no --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/cg.out "$(python -c 'import sys; print(sys.executable)')" \\
        benchmarks/probes/cpu_probe_call_stages.py --op svd
    grep -E "^(desc: Trigger|totals)" /tmp/cg.out.*   # each stage's instructions; / --calls
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import subprocess

import torch

import lazymat as lm
from lazymat import expr as E
from lazymat.linalg import compiled

OPS = {"svd": lambda x: torch.linalg.svd(x, full_matrices=False), "svdvals": torch.linalg.svdvals,
       "eigvals": torch.linalg.eigvals, "nuc": lambda x: torch.linalg.matrix_norm(x, "nuc")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", choices=OPS, default="svd")
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(3)
    A, B, C = torch.randn(16, 8, generator=g), torch.randn(8, 8, generator=g), torch.randn(8, 16, generator=g)
    op = OPS[args.op]

    def fresh():
        return lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ lm.lazy(C.clone())

    answer = op(A @ B @ C)

    def control(*options: str) -> None:
        subprocess.run(["callgrind_control", *options, str(os.getpid())], check=True, capture_output=True)

    def count(name: str, fn) -> None:
        for _ in range(5):  # warm: plans made, calls compiled
            fn()
        gc.collect()
        control("-z")
        functools.reduce(lambda _, i: fn(), range(args.calls), None)
        control("-d", name)
        print(f"{name}: {args.calls} calls", flush=True)

    control("-i", "on")
    count("eager", lambda: op(A.clone() @ B.clone() @ C.clone()))
    count("clones", lambda: (A.clone(), B.clone(), C.clone()))
    count("build", fresh)
    count("whole", lambda: op(fresh()))
    saved = E._torch_dispatch
    E._torch_dispatch = lambda func, a, k: answer
    count("protocol", lambda: op(fresh()))
    E._torch_dispatch = saved
    saved = compiled._compiled
    compiled._compiled = lambda x, name, options: answer
    count("dispatch", lambda: op(fresh()))
    compiled._compiled = saved
    calls = dict(compiled._CALLS)
    for key, call in calls.items():
        compiled._CALLS[key] = call._replace(run=lambda tensors: answer)
    count("prologue", lambda: op(fresh()))
    compiled._CALLS.update(calls)


if __name__ == "__main__":
    main()
