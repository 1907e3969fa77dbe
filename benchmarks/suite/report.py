"""The results table (stdout and markdown) and the JSON document of a run.

One row per implementation of each case: median time, ratio to lazymat's median (above 1:
slower than lazymat), % of floor (the floor time over the median: 100% is the machine's
limit for the cheapest known route), peak memory (with ``--memory``), the largest relative
difference of its result from lazymat's, and a note (why a peer did not run, or its error)."""

from __future__ import annotations

import json
import math

from .._harness import fmt_time
from .machine import one_line

COLUMNS = ("workload", "case", "implementation", "median", "vs lazymat", "% of floor", "peak memory",
           "rel. diff", "note")


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def rows(records: list[dict]) -> list[list[str]]:
    out = []
    for r in records:
        quality = r.get("quality_name")
        for name, e in r["impls"].items():
            if "error" in e:
                out.append([r["workload"], r["case"], name, "-", "-", "-", "-", "-", e["error"]])
                continue
            note = f"{quality} {e['quality']:.4f}" if quality and e.get("quality") is not None else ""
            out.append([
                r["workload"], r["case"], name, fmt_time(e["median"]),
                f"{e['ratio']:.2f}x" if e.get("ratio") is not None else "-",
                f"{e['pct_of_floor']:.0f}%" if e.get("pct_of_floor") is not None else "-",
                fmt_bytes(e.get("peak_bytes")) if "peak_bytes" in e else "-",
                f"{e['max_rel_diff']:.1e}" if e.get("max_rel_diff") is not None else "",
                note or e.get("memory_error", ""),
            ])
        for name, est in r.get("estimates", {}).items():
            flops = f"{est['flops']:.3g} FLOPs; " if est.get("flops") is not None else ""
            out.append([r["workload"], r["case"], name, "-", "-",
                        fmt_time(r["floor_s"]) + " floor" if name == "lazymat" and r["floor_s"] else "-",
                        fmt_bytes(est.get("peak_bytes")), "", flops + est.get("note", "")])
        for name, why in r["skipped"].items():
            out.append([r["workload"], r["case"], name, "-", "-", "-", "-", "", f"not run: {why}"])
    return out


def summary(records: list[dict]) -> list[str]:
    """Per workload and peer: the geometric mean of its ratios to lazymat over the cases where
    both ran (above 1: lazymat faster), with the range and the number of cases."""
    ratios: dict[tuple[str, str], list[float]] = {}
    for r in records:
        for name, e in r["impls"].items():
            if name != "lazymat" and e.get("ratio"):
                ratios.setdefault((r["workload"], name), []).append(e["ratio"])
    lines = []
    for (workload, name), v in ratios.items():
        gm = math.exp(sum(math.log(x) for x in v) / len(v))
        span = f" ({min(v):.2f}-{max(v):.2f}x over {len(v)} cases)" if len(v) > 1 else ""
        lines.append(f"{workload}: {name} / lazymat = {gm:.2f}x{span}")
    return lines


def text_table(records: list[dict]) -> str:
    body = rows(records)
    widths = [max(len(row[k]) for row in [list(COLUMNS), *body]) for k in range(len(COLUMNS) - 1)]
    numeric = {3, 4, 5, 6, 7}

    def line(row):
        cells = [c.rjust(w) if k in numeric else c.ljust(w)
                 for k, (c, w) in enumerate(zip(row, widths, strict=False))]
        return "  ".join(cells + [row[-1]]).rstrip()

    return "\n".join([line(list(COLUMNS)), *(line(r) for r in body)])


def markdown(records: list[dict], machine: dict, command: str, memory_method: str | None) -> str:
    head = [f"# lazymat benchmarks: `{command}`", "",
            f"Machine: {one_line(machine)}.", "",
            "Median of round-robin samples (implementations interleaved in one process). "
            "`vs lazymat`: median / lazymat's median (above 1: slower than lazymat). "
            "`% of floor`: (FLOPs of lazymat's route / measured GEMM throughput + its decompositions "
            "timed alone) / median. `rel. diff`: max |result - lazymat's| / max |lazymat's|.",
            f"Peak memory: {memory_method}." if memory_method
            else "Peak memory: not measured (run with --memory).",
            "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    body = ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows(records)]
    notes = [f"- {r['workload']} / {r['case']}: {n}" for r in records for n in r["notes"]]
    means = ["", "Geometric means of the ratios (time / lazymat's time; above 1: lazymat is faster):", ""]
    means += [f"- {line}" for line in summary(records)]
    return "\n".join(head + body + ([""] + notes if notes else []) + means) + "\n"


def to_json(records: list[dict], machine: dict, options: dict, memory_method: str | None) -> str:
    return json.dumps({"machine": machine, "options": options, "memory_method": memory_method,
                       "results": records}, indent=1)
