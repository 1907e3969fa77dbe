"""QR routes for tall factors: Householder (torch.linalg.qr) against shifted CholeskyQR
(lazymat.qr), on GPT-2-small-shaped factors, and the full QK circuit's ``svd``/``svdvals`` end
to end under each ``lm.config(qr=...)`` route, side by side in one run (ratios < 1: CholeskyQR
wins). Also prints each route's error in the singular values against float64 Householder.

Run: ``python benchmarks/bench_qr.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse

import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm
from lazymat import linalg as LA
from lazymat.qr import cholesky_qr


def tall(m: int, n: int, dev: str, g: torch.Generator) -> torch.Tensor:
    """A GPT-2-like factor: ``W_E @ W`` with ``W_E (m, 768)`` and ``W (768, n)``."""
    E = torch.randn(m, 768, generator=g) * 0.1
    W = torch.randn(768, n, generator=g) * 768**-0.5
    return (E @ W if n < 768 else E).to(dev)


def sv_error(R: torch.Tensor, ref: torch.Tensor) -> float:
    return ((torch.linalg.svdvals(R.double().cpu()) - ref).abs().max() / ref[0]).item()


def factors(dev: str, quick: bool, rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    m = 4096 if quick else 50257
    print(f"tall float32 factors on {device_name(dev)}: Householder / CholeskyQR times, ratio = "
          "Cholesky / Householder; max singular-value error relative to S_max (float64 reference)")
    for n in (64, 256) if quick else (64, 768):
        A = tall(m, n, dev, g)
        ref = torch.linalg.svdvals(A.double().cpu())
        for with_q in (False, True):
            mode = "reduced" if with_q else "r"
            fns = {"householder": lambda A=A, mode=mode: torch.linalg.qr(A, mode=mode),
                   "cholesky": lambda A=A, with_q=with_q: cholesky_qr(A, with_q)}
            t = compare(fns, dev, rounds=rounds)
            err_h = sv_error(torch.linalg.qr(A, mode="r")[1], ref)
            out = cholesky_qr(A, with_q)
            err_c = float("nan") if out is None else sv_error(out[1], ref)
            print(f"  {m}x{n} mode={mode:<7} householder {fmt_time(t['householder']):>9} (err {err_h:.1e})"
                  f"  cholesky {fmt_time(t['cholesky']):>9} (err {err_c:.1e})"
                  f"  ratio {t['cholesky'] / t['householder']:.2f}")


def qk_circuit(dev: str, quick: bool, rounds: int) -> None:
    g = torch.Generator().manual_seed(1)
    d_vocab = 4096 if quick else 50257
    E = lm.lazy((torch.randn(d_vocab, 768, generator=g) * 0.1).to(dev), name="W_E")
    Q = lm.lazy((torch.randn(768, 64, generator=g) * 768**-0.5).to(dev), name="W_Q")
    K = lm.lazy((torch.randn(768, 64, generator=g) * 768**-0.5).to(dev), name="W_K")
    qk = E @ Q @ K.T @ E.T
    print(f"full QK circuit ({d_vocab} x {d_vocab}, rank 64) end to end, caches cleared per call")
    for name, op in (("svd", LA.svd), ("svdvals", LA.svdvals)):
        def run(route, op=op):
            def call():
                qk.clear_cache()
                with lm.config(qr=route):
                    return op(qk)
            return call
        t = compare({"householder": run("householder"), "cholesky": run("cholesky")}, dev, rounds=rounds)
        print(f"  {name:<8} householder {fmt_time(t['householder']):>9}  cholesky "
              f"{fmt_time(t['cholesky']):>9}  ratio {t['cholesky'] / t['householder']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="4096-row factors, 3 rounds (seconds)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    print(f"torch {torch.__version__}")
    factors(args.device, args.quick, rounds)
    qk_circuit(args.device, args.quick, rounds)


if __name__ == "__main__":
    main()
