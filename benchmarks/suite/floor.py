"""The floor of a figure: the time the cheapest known route could take on this machine.

Its contractions run at the measured GEMM throughput (``FLOPs / gemm_flops``); its
decompositions (QR, SVD, eigenvalues) do not run at GEMM speed, so each is timed alone on
random data of its shape, on the device and (for CUDA) also on the CPU, keeping the faster (a QR
by each of lazymat's two routes, keeping the faster).
The route and its steps are read from ``lazymat.explain`` (lazymat's own plan, the cheapest
route the suite knows for these workloads)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import lazymat as lm
from lazymat.qr import qr

from .timing import median, round_robin

DECOMPOSITION_PREFIXES = ("QR of", "SVD of", "eigendecomposition")


@dataclass
class Floor:
    """Contraction FLOPs and the decompositions (kind, input shape) of the cheapest route."""

    flops: float = 0.0
    decompositions: list[tuple[str, tuple]] = field(default_factory=list)

    def __add__(self, other: Floor) -> Floor:
        return Floor(self.flops + other.flops, self.decompositions + other.decompositions)

    @classmethod
    def of(cls, x: lm.Expr, op: str, time_decompositions: bool = True) -> Floor:
        """The floor of ``op`` on ``x``, from its explain report. With ``time_decompositions``
        off (shapes too large to run here), the decompositions' estimated FLOPs are counted
        at GEMM speed instead: a lower floor than the real one."""
        report = lm.explain(x, op)
        floor = cls()
        for row in report.rows:
            if not time_decompositions or not row.op.startswith(DECOMPOSITION_PREFIXES):
                floor.flops += row.flops
            elif row.flops:  # a cached QR costs nothing
                floor.decompositions.append((_kind(row.op, op), tuple(row.inputs[0])))
        return floor


def _kind(step: str, op: str) -> str:
    if step.startswith("QR of"):
        return "qr" if "keep Q" in step else "qr_r"
    if step.startswith("SVD of"):
        return "svd" if op == "svd" else "svdvals"
    return "eig" if op == "eig" else "eigvals"


def _qr_by(route: str, mode: str):
    """A QR of ``mode`` by one of lazymat's routes (:mod:`lazymat.qr`), whatever ``qr=`` says."""
    def run(a: torch.Tensor):
        with lm.config(qr=route):
            return qr(a, mode)
    return run


# A QR's floor is the faster of its two known routes: Householder (torch's) and CholeskyQR2
# (lazymat's; random data is well conditioned, so it certifies): timing Householder alone put
# the floor of a CPU svd at 3.3x the time lazymat took (its auto route is CholeskyQR there)
_ROUTINES = {
    "qr": [_qr_by("householder", "reduced"), _qr_by("cholesky", "reduced")],
    "qr_r": [_qr_by("householder", "r"), _qr_by("cholesky", "r")],
    "svd": lambda a: torch.linalg.svd(a, full_matrices=False),
    "svdvals": torch.linalg.svdvals,
    "eig": torch.linalg.eig,
    "eigvals": torch.linalg.eigvals,
}


def decomposition_seconds(kind: str, shape: tuple, device: str, memo: dict, repeats: int = 3) -> float:
    """Median seconds of one decomposition of a random float32 ``shape`` (memoised)."""
    key = (kind, shape, device)
    if key not in memo:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(*shape, generator=g)
        devices = ["cpu"] + ([device] if torch.device(device).type == "cuda" else [])
        best = math.inf
        routines = _ROUTINES[kind] if isinstance(_ROUTINES[kind], list) else [_ROUTINES[kind]]
        for d in devices:
            x = a.to(d)
            for fn in routines:
                samples = round_robin({kind: lambda x=x, fn=fn: fn(x)}, d, repeats, budget_s=5.0)[0]
                best = min(best, median(samples[kind]))
        memo[key] = best
    return memo[key]


def floor_seconds(floor: Floor, gemm_flops: float, device: str, memo: dict, repeats: int = 3
                  ) -> tuple[float, float]:
    """(contraction seconds at GEMM speed, decomposition seconds timed alone)."""
    decompositions = sum(decomposition_seconds(k, s, device, memo, repeats) for k, s in floor.decompositions)
    return floor.flops / gemm_flops, decompositions
