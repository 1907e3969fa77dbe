"""The ``lazymat`` command: with no arguments, runs the built-in demo."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lazymat", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="circuits of GPT-2-small-shaped random weights (default)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        from .demo import main as run_demo

        run_demo(seed=getattr(args, "seed", 0))
        return 0
    return 2
