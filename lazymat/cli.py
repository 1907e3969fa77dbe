"""The ``lazymat`` command.

``lazymat`` (or ``lazymat demo``) runs the built-in demo; ``lazymat explain EXPR`` prints
what an operation on an expression of shape-only symbols will cost::

    lazymat explain "W_E @ W_Q @ W_K.T @ W_E.T" --shape W_E=50257x768 --shape W_Q=768x64 \\
        --shape W_K=768x64 --op svd --png qk.png
    lazymat explain "W_E @ W_V[3] @ W_O[3] @ W_U" --preset gpt2-small
    lazymat presets gpt2-small          # the names and shapes a preset defines

Bad input (unknown names, missing or mismatched shapes, syntax, unwritable output files)
gives one clear line (with a caret under the column for syntax errors) on stderr and exit
code 2; the command never prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from importlib import metadata

import torch

from .demo import add_arguments as add_demo_arguments
from .explain import OPS, REDUCTIONS, explain
from .parse import NON_FINITE_WORDS, ParseError, check_syntax, did_you_mean, names_in, parse
from .presets import PRESETS, preset_symbols
from .settings import OPTIMIZERS, scoped

__all__ = ["UsageError", "build_parser", "main"]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64, "complex64": torch.complex64, "complex128": torch.complex128}


PICTURE_SUFFIXES = (".png", ".svg", ".pdf")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    try:
        return metadata.version("lazymat")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (exit code 2 through :class:`UsageError`)."""

    def error(self, message: str):
        if "expression" in message and "required" in message:
            message += (" (an expression that starts with '-' needs a leading space, \" -A @ B\", or "
                        "to come last, after '--')")
        raise UsageError(f"{message} (see {self.prog} -h)")


def _shapes(items: list[str], dtype: torch.dtype, preset: str | None) -> dict:
    from .expr import symbol

    names = preset_symbols(preset, dtype) if preset else {}
    if preset:
        from .circuits.model import circuit_names

        names.update(circuit_names(names))
    given: dict[str, str] = {}
    for item in items:
        m = re.fullmatch(r"([A-Za-z_][A-Za-z_0-9]*)=(\d{1,18}(?:x\d{1,18})+)", item.strip())
        if not m:
            raise UsageError(f"--shape {item!r}: expected NAME=AxB with dims of at most 18 digits "
                             "(e.g. W_E=50257x768, batch dims first: W_V=12x12x768x64)")
        if m.group(1) in given:  # (the last one won, silently)
            raise UsageError(f"--shape {m.group(1)} is given twice: {given[m.group(1)]!r} and {item!r}")
        given[m.group(1)] = item
        if m.group(1).lower() in NON_FINITE_WORDS:
            raise UsageError(f"--shape {item!r}: {m.group(1)!r} cannot name a matrix (expressions refuse "
                             "it as a number word)")
        names[m.group(1)] = symbol(m.group(1), tuple(int(d) for d in m.group(2).split("x")), dtype=dtype)
    return names


def _preset_names(preset: str, dtype: torch.dtype) -> set[str]:
    """The names ``--preset`` defines: its weights and the circuits over them."""
    from .circuits.model import circuit_names

    names = preset_symbols(preset, dtype)
    return set(names) | set(circuit_names(names))


def _no_shape(missing: list[str], names: dict, preset: str | None, dtype: torch.dtype) -> str:
    """What to say of names with no shape: a name the chosen preset lacks but others define
    (``W_pos``, ``pos_QK`` of a model with rotary positions) is said to be so, rather than
    offered a look-alike name; a preset is suggested only when none was given."""
    name = missing[0]
    head, hint = f"no shape for {', '.join(missing)}", did_you_mean(name, names)
    if preset:
        others = [p for p in PRESETS if p != preset and name in _preset_names(p, dtype)]
        if others:
            return (f"{head}: the preset {preset} has no {name} (it is defined by {', '.join(others)}); "
                    f"give --shape {name}=AxB")
        return f"{head}{hint}: the preset {preset} has no {name}; give --shape {name}=AxB"
    return f"{head}{hint}: give --shape {name}=AxB or a --preset ({', '.join(PRESETS)})"


def _check_output(path: str | None, flag: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Refuse an output file that cannot be written before any work is done."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a folder; give a file name")
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise UsageError(f"{flag} {path!r}: the file name must end in {', '.join(suffixes)}")


def _write(path: str, flag: str, write) -> None:
    try:
        write()
    except OSError as e:
        raise UsageError(f"{flag} {path!r}: {e.strerror or e}") from None


def _explain(args: argparse.Namespace) -> int:
    dtype = DTYPES[args.dtype]
    if args.preset and args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}{did_you_mean(args.preset, PRESETS)}; "
                         f"choose one of {', '.join(PRESETS)}")
    _check_output(args.dot, "--dot")
    _check_output(args.png, "--png", PICTURE_SUFFIXES)
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--png needs matplotlib: pip install 'lazymat[draw]'") from None
    names = _shapes(args.shape or [], dtype, args.preset)
    try:
        check_syntax(args.expression)  # a syntax error first, before asking for shapes
        missing = [n for n in names_in(args.expression) if n not in names]
        if missing:
            raise UsageError(_no_shape(missing, names, args.preset, dtype))
        x = parse(args.expression, names)
    except ParseError as e:
        raise UsageError(str(e)) from None
    try:
        with scoped(optimize=args.optimize):
            given = {name: getattr(args, name) for name in ("k", "dim", "ord")}
            options = {name: value for name, value in given.items() if value is not None}
            if args.op == "topk" and args.k is None:
                raise UsageError("--op topk needs --k (the number of values per line)")
            takes = {"matrix_norm": {"ord"}, "solve": {"k"}, "lstsq": {"k"}}.get(args.op)
            if options and args.op not in REDUCTIONS and set(options) != takes:
                raise UsageError(f"--{' --'.join(options)}: options of a reduction (--op "
                                 f"{' | '.join(REDUCTIONS)}; --ord also of matrix_norm), "
                                 f"not of --op {args.op}")
            report = explain(x, op=args.op, memory_budget=args.memory_budget, **options)
            text = json.dumps(report.to_dict(), indent=2) if args.json else str(report)
    except (ValueError, TypeError, IndexError) as e:  # bad shapes, options, dims: the user's input
        raise UsageError(str(e).splitlines()[0]) from None
    except RuntimeError as e:  # torch's own refusal of the options (a top-k k out of range, a
        # reduction over an empty dim): explain checks them as evaluation would
        raise UsageError(str(e).splitlines()[0]) from None
    except OverflowError:
        raise UsageError(f"shape {tuple(x.shape)} is too large to cost: its FLOPs or bytes exceed the "
                         "float range") from None
    print(text)
    if args.dot:
        _write(args.dot, "--dot", lambda: _write_text(args.dot, report.to_dot()))
    if args.png:
        _write(args.png, "--png", lambda: report.draw(args.png))
    return 0


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _order(text: str) -> float | str:
    """A norm's order: a number (``2``, ``-1``, ``inf``) or ``fro`` / ``nuc``."""
    if text in ("fro", "nuc"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no norm order (a number, inf, fro or nuc)") from None


def _presets(args: argparse.Namespace) -> int:
    if args.name is None:
        for name, m in PRESETS.items():
            print(f"{name:<18} vocab {m.d_vocab}, d_model {m.d_model}, {m.n_layers} layers x "
                  f"{m.n_heads} heads of {m.d_head}, d_mlp {m.d_mlp}")
        return 0
    if args.name not in PRESETS:
        raise UsageError(f"unknown preset {args.name!r}{did_you_mean(args.name, PRESETS)}; choose one of "
                         f"{', '.join(PRESETS)}")
    for weight, shape in PRESETS[args.name].shapes().items():
        print(f"{weight:<8} {'x'.join(map(str, shape))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``lazymat`` command's argument parser: the ``demo``, ``explain`` and ``presets`` subcommands."""
    parser = _Parser(prog="lazymat",
                                     description="Lazy matrix expressions: demo and cost reports.")
    parser.add_argument("--version", action="version", version=f"lazymat {version()}")
    sub = parser.add_subparsers(dest="command")
    parser.set_defaults(subparsers=sub.choices)  # main() names the subcommand's help in errors
    demo = sub.add_parser("demo", help="circuit analyses, costed (the default; synthetic GPT-2 small)")
    add_demo_arguments(demo)
    ex = sub.add_parser("explain", help="what an operation on an expression will cost")
    ex.add_argument("expression", help='e.g. "W_E @ W_Q @ W_K.T @ W_E.T"')
    ex.add_argument("--shape", action="append", metavar="NAME=AxB",
                    help="shape of a name (repeatable, once per name)")
    ex.add_argument("--preset", help=f"standard weight names and shapes: {', '.join(PRESETS)}")
    ex.add_argument("--op", default="to_dense", choices=OPS + REDUCTIONS)
    ex.add_argument("--k", type=int, help="values per line for --op topk; columns of B for --op solve, lstsq")
    ex.add_argument("--dim", type=int, help="the dim a reduction (--op topk, amax, sum, ...) reduces")
    ex.add_argument("--ord", type=_order,
                    help="the order of --op vector_norm (default 2), matrix_norm (default fro; nuc, 2, inf)")
    ex.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ex.add_argument("--optimize", default="auto", choices=OPTIMIZERS, help="the contraction-order search")
    ex.add_argument("--memory-budget", metavar="BYTES",
                    help="bytes the evaluation's intermediates may use (e.g. 2GiB); shows the slicing")
    ex.add_argument("--json", action="store_true", help="print the report as JSON")
    ex.add_argument("--dot", metavar="FILE", help="write the steps of the route as Graphviz DOT text")
    ex.add_argument("--png", metavar="FILE",
                    help="draw the steps of the route for --op with their costs (.png/.svg/.pdf)")
    pr = sub.add_parser("presets", help="list the presets, or the weight names and shapes of one")
    pr.add_argument("name", nargs="?", help=f"one of {', '.join(PRESETS)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0, or 2 for bad input) instead of raising
    ``SystemExit`` so that it can be called in-process."""
    parser = build_parser()
    try:
        try:
            args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
            if extra:  # argparse would name the top parser: name the subcommand's help instead
                (args.subparsers.get(args.command) or parser).error(
                    f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as e:  # argparse's own usage errors (2), --help and --version (0)
            return e.code if isinstance(e.code, int) else 2
        if args.command in (None, "demo"):
            from .demo import run

            run(args if args.command else parser.parse_args(["demo"]))
            return 0
        return _presets(args) if args.command == "presets" else _explain(args)
    except UsageError as e:
        print(f"lazymat: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (``lazymat ... | head``): stop quietly
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # stdout is not a real file (tests, notebooks)
        pass
