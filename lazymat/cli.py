"""The ``lazymat`` command.

``lazymat`` (or ``lazymat demo``) runs the built-in demo; ``lazymat explain EXPR`` prints
what an operation on an expression of shape-only symbols will cost::

    lazymat explain "W_E @ W_Q @ W_K.T @ W_E.T" --shape W_E=50257x768 --shape W_Q=768x64 \\
        --shape W_K=768x64 --op svd
    lazymat explain "W_E @ W_V[3] @ W_O[3] @ W_U" --preset gpt2-small

Bad input (unknown names, missing or mismatched shapes, syntax) gives one clear line
(with a caret under the column for syntax errors) on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import torch

from .demo import add_arguments as add_demo_arguments
from .explain import OPS, explain
from .parse import ParseError, parse
from .presets import PRESETS, preset_symbols
from .settings import OPTIMIZERS, config

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64, "complex64": torch.complex64, "complex128": torch.complex128}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def _shapes(items: list[str], dtype: torch.dtype, preset: str | None) -> dict:
    from .expr import symbol

    names = preset_symbols(preset, dtype) if preset else {}
    if preset:
        from .circuits.model import circuit_names

        names.update(circuit_names(names))
    for item in items:
        m = re.fullmatch(r"([A-Za-z_][A-Za-z_0-9]*)=(\d+(?:x\d+)+)", item.strip())
        if not m:
            raise UsageError(f"--shape {item!r}: expected NAME=AxB (e.g. W_E=50257x768, batch dims "
                             "first: W_V=12x12x768x64)")
        names[m.group(1)] = symbol(m.group(1), tuple(int(d) for d in m.group(2).split("x")), dtype=dtype)
    return names


def _explain(args: argparse.Namespace) -> int:
    dtype = DTYPES[args.dtype]
    if args.preset and args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    names = _shapes(args.shape or [], dtype, args.preset)
    used = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", args.expression)) - {"T", "mT", "None"}
    missing = sorted(n for n in used if n not in names)
    if missing:
        raise UsageError(f"no shape for {', '.join(missing)}: give --shape {missing[0]}=AxB or a "
                         f"--preset ({', '.join(PRESETS)})")
    try:
        x = parse(args.expression, names)
    except ParseError as e:
        raise UsageError(str(e)) from None
    try:
        with config(optimize=args.optimize):
            report = explain(x, op=args.op)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    if args.dot:
        with open(args.dot, "w") as f:
            f.write(x.to_dot())
    if args.png:
        from .explain import draw

        draw(x, args.png)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazymat",
                                     description="Lazy matrix expressions: demo and cost reports.")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="circuit analyses, costed (the default; synthetic GPT-2 small)")
    add_demo_arguments(demo)
    ex = sub.add_parser("explain", help="what an operation on an expression will cost")
    ex.add_argument("expression", help='e.g. "W_E @ W_Q @ W_K.T @ W_E.T"')
    ex.add_argument("--shape", action="append", metavar="NAME=AxB", help="shape of a name (repeatable)")
    ex.add_argument("--preset", help=f"standard weight names and shapes: {', '.join(PRESETS)}")
    ex.add_argument("--op", default="to_dense", choices=OPS)
    ex.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ex.add_argument("--optimize", default="auto", choices=OPTIMIZERS, help="the contraction-order search")
    ex.add_argument("--json", action="store_true", help="print the report as JSON")
    ex.add_argument("--dot", metavar="FILE", help="write the DAG as Graphviz DOT text")
    ex.add_argument("--png", metavar="FILE", help="draw the DAG with costs (.png/.svg/.pdf)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command in (None, "demo"):
        from .demo import run

        run(args if args.command else parser.parse_args(["demo"]))
        return 0
    try:
        return _explain(args)
    except UsageError as e:
        print(f"lazymat: error: {e}", file=sys.stderr)
        return 2
