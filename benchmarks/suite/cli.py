"""``python -m benchmarks``: every workload for every installed implementation, one table.

Run from the repository root. ``--quick`` takes a few minutes on a 2-core CPU; ``--only``
picks workloads; ``--memory`` adds a peak-memory pass (one child process per implementation
and case); ``--json`` keeps the raw samples and the machine; ``--out`` writes the markdown."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from lazymat import settings

from . import memory, report
from .case import SHAPES, Context
from .machine import describe, one_line
from .runner import run_case
from .workloads import registry


def parse(argv: list[str] | None) -> argparse.Namespace:
    workloads = registry()
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="workloads:\n" + "\n".join(f"  {k:<22} {d}"
                                                                   for k, (d, _) in workloads.items()))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--preset", default="gpt2-small", choices=list(SHAPES),
                    help="model shapes of the circuit workloads (tiny: for tests)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (minutes)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only these workloads (repeatable, or a comma list)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="samples per implementation (default 5; 3 with --quick)")
    ap.add_argument("--memory", action="store_true",
                    help="also measure peak memory (a child process each)")
    ap.add_argument("--json", metavar="PATH", help="write raw samples, machine and options as JSON")
    ap.add_argument("--out", metavar="PATH",
                    help="write the table as markdown (e.g. benchmarks/results/NAME.md)")
    ap.add_argument("--memory-child", nargs=3, metavar=("WORKLOAD", "CASE", "IMPL"), help=argparse.SUPPRESS)
    ap.add_argument("--gemm-flops", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.only = [w.strip() for item in args.only for w in item.split(",") if w.strip()]
    unknown = [w for w in args.only if w not in workloads]
    if unknown:
        ap.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(workloads)}")
    try:
        kind = torch.device(args.device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        ap.error(f"--device {args.device!r}: expected cpu or cuda (or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: needs at least one sample per implementation")
    args.repeats = args.repeats or (3 if args.quick else 5)
    for option, path in (("--json", args.json), ("--out", args.out)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            ap.error(f"{option} {path}: folder {folder} does not exist or is not writable "
                     "(checked before any workload runs)")
    return args


def _child_argv(args: argparse.Namespace, gemm_flops: float) -> list[str]:
    return ["--device", args.device, "--preset", args.preset, "--gemm-flops", repr(gemm_flops)] + \
        (["--quick"] if args.quick else [])


def _memory_child(args: argparse.Namespace) -> None:
    workload, case_name, impl = args.memory_child
    ctx = Context(args.device, args.preset, args.quick, args.gemm_flops, settings.memory_budget(args.device))
    case = next(c for c in registry()[workload][1](ctx) if c.name == case_name)
    if case.prepare is not None:
        case.prepare()
    print(json.dumps({"peak_bytes": memory.peak_bytes_of(case.impls[impl], args.device)}))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.memory_child:
        _memory_child(args)
        return
    machine = describe(args.device, 256 if args.preset == "tiny" else None)  # tiny: a test, keep it fast
    ctx = Context(args.device, args.preset, args.quick, machine["gemm_flops"],
                  settings.memory_budget(args.device))
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{command}\n{one_line(machine)}\n", flush=True)
    budget_s = 3.0 if args.quick else 30.0
    memo: dict = {}
    records = []
    started = time.perf_counter()
    for name, (what, build) in registry().items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"[{name}] {what}", flush=True)
        for case in build(ctx):
            record = run_case(case, ctx, args.repeats, budget_s, memo)
            if args.memory:
                for impl in case.impls:
                    entry = record["impls"][impl]
                    if "error" in entry:
                        continue
                    entry["peak_bytes"], err = memory.measure(
                        name, case.name, impl, _child_argv(args, ctx.gemm_flops), timeout_s=600)
                    if err:
                        entry["memory_error"] = err
            records.append(record)
            print(report.text_table([record]).split("\n", 1)[1], flush=True)
        print(f"[{name}] {time.perf_counter() - t0:.0f} s\n", flush=True)
        _write(args, records, machine, command)  # after every workload: a cut-off run keeps what it did
    print(report.text_table(records))
    print("\ngeometric means of time / lazymat's time (above 1: lazymat is faster):")
    print("\n".join("  " + line for line in report.summary(records)))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def _write(args: argparse.Namespace, records: list[dict], machine: dict, command: str) -> None:
    method = memory.METHOD[torch.device(args.device).type] if args.memory else None
    options = {k: v for k, v in vars(args).items() if k not in ("memory_child", "gemm_flops")}
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json(records, machine, options, method))
    if args.out:
        with open(args.out, "w") as f:
            f.write(report.markdown(records, machine, command, method))
