"""The small routes' cost model: measured per-call overheads (in FLOPs) and the FLOP counts of
the factored, dense and reduced routes and of square segments, pure functions of the shapes."""
from __future__ import annotations

import functools
import itertools
import math

from ..core import qr_flops
from ..expr import Expr, broadcast_shapes
from ..plan import plan_chain
from ..rewrite import Term, canonical

# Factoring, planning and two QRs cost a fixed time per call (Python, and one small torch call
# per step) that a small matrix does not repay: materialising it (or a reduced matrix of its
# singular values, below) and calling torch is then faster. One cost model decides, per
# operation: each route's FLOPs (``small_route_flops``, ``reduced_route_flops``) plus its extra
# fixed cost per call, expressed in FLOPs at the rate small LAPACK calls run
# (``FACTORED_OVERHEAD_FLOPS``; for the reduced route the two constants below). The constants
# are the thresholds that lost the least time over the sweeps of
# ``benchmarks/bench_small_cores.py`` on the 2-core CPU (single matrices, quiet:
# benchmarks/results/cpu-small-crossover-quiet.txt; batches of b 64 x 32 chains:
# cpu-small-batch-crossover.txt): the factored route's extra ~0.2-0.8 ms per call at
# 10-50 GFLOP/s. svd: single matrices want [1.53e7, 1.95e7), batches [1.82e7, 2.27e7) (a batch
# of 4 is dense); svdvals: single matrices [1.99e6, 2.52e6), batches [2.95e6, 3.54e6), so the
# single matrices' upper end. A matrix over DENSE_MAX_ELEMENTS is never materialised for speed
# alone (memory; the Frobenius norm's dense route still wins at 384^2).
# det, slogdet and solve of a single product of several square segments (see "square
# matrices" below): the factored route's fixed cost per segment beyond the first (one more LU
# call and the Python around it), against forming the product and one LU, in FLOPs of
# square_route_flops. Fitted like the spectral constants, chains of 2 and 3 squares of 8..384
# (bench_solve.py --part crossover; benchmarks/results/cpu-solve-crossover.txt, two runs under
# load): det and slogdet [1.18e6, 2.8e6) both runs, solve [1.11e6, 2.67e6) and [9.1e6, 2.2e7):
# chains of 64 x 64 squares are formed, of 128 x 128 not. inv keeps its segments: its answer
# there is lazy (the segments' inverses, the product never formed), which the FLOPs of the call
# alone do not price.
SEGMENT_OVERHEAD_FLOPS = 1.8e6
FACTORED_OVERHEAD_FLOPS = {"svdvals": 2.5e6, "svd": 1.9e7, "matrix_norm": 1.7e7,
                           "det": SEGMENT_OVERHEAD_FLOPS, "slogdet": SEGMENT_OVERHEAD_FLOPS,
                           "solve": SEGMENT_OVERHEAD_FLOPS}
DENSE_MAX_ELEMENTS = 512 * 512
# The small route materialises either the whole matrix or, when cheaper, a reduced one: a
# product ``L @ R`` of inner width ``r`` below both its dims has the singular values of
# ``L @ T^H`` (``m x r``; ``R^H = Q T`` a Householder QR of the ``n x r`` side, backward stable
# as the dense SVD is) with ``Vh = Vh_M Q^H``, or of ``T @ R`` (``L = Q T``) with ``U = Q U_M``
# (``reduce_small``). REDUCED_OVERHEAD_FLOPS: its extra fixed cost per call over the dense
# route (one QR and one product call, and the vectors' product), the threshold that lost the
# least time over ``bench_small_cores.py --part reduced`` (benchmarks/results/
# cpu-small-reduced.txt, four runs under load: svdvals [6.3e4, 8.8e4) twice, [8.8e4, 2.1e5)
# twice, one shape flipping within 20 us; svd [8.6e4, 2.3e5) three times, [2.8e5, 5.5e5) once).
# FACTORED_OVER_REDUCED_FLOPS: the factored route's extra fixed cost against the reduced route,
# fitted likewise. The reduced route's FLOPs (Householder QRs, tall SVDs) run at about the
# factored route's rate, the dense route's square SVDs faster, so FACTORED_OVERHEAD_FLOPS
# (fitted against the dense route) cannot serve both pairs. svdvals took the reduced route
# everywhere within DENSE_MAX_ELEMENTS (threshold >= 2.25e7, three runs); svd wants
# [1.73e7, 3.79e7) (two runs; one [7.4e6, 1.1e7): 256 x 128 chains, 1.13e7, a tie within
# 0.1 ms of 3.5-4 ms); 384 x 192 chains are factored.
REDUCED_OVERHEAD_FLOPS = {"svdvals": 1.5e5, "svd": 1.5e5}
FACTORED_OVER_REDUCED_FLOPS = {"svdvals": 4.5e7, "svd": 2.5e7}


def svd_flops(m: int, n: int, vectors: bool) -> float:
    """Golub-Reinsch SVD of an ``m x n`` matrix: ``4 M N^2 - 4/3 N^3`` for the values,
    ``14 M N^2 + 8 N^3`` with the reduced vectors (``M >= N``; Golub & Van Loan Fig. 8.6.1)."""
    big, k = max(m, n), min(m, n)
    return 14 * big * k * k + 8 * k**3 if vectors else 4 * big * k * k - 4 / 3 * k**3


@functools.lru_cache(maxsize=4096)  # a pure function of four numbers, asked on every call
def small_route_flops(m: int, n: int, r: int, op: str) -> tuple[float, float]:
    """``(dense, factored)`` FLOPs of ``op`` (``"svdvals"``, ``"svd"`` or ``"matrix_norm"``, the
    Frobenius norm) on one ``m x n`` matrix ``L @ R`` of inner width ``r``, leaving out the
    work both routes share (forming ``L`` and ``R``). Dense: the product ``L @ R`` then torch's
    routine. Factored: QRs of the ``m x r`` and ``n x r`` sides, the ``r x r`` core and its
    SVD (and ``U``, ``Vh`` formed from the Q factors), or for the norm the two Gram matrices."""
    materialise = 2 * m * n * r
    if op == "matrix_norm":
        return materialise + 2 * m * n, 2 * (m + n) * r * r + 2 * r * r
    vectors = op == "svd"
    factored = qr_flops(m, r, vectors) + qr_flops(n, r, vectors) + 2 * r**3 + svd_flops(r, r, vectors)
    if vectors:
        factored += 2 * (m + n) * r * r
    return materialise + svd_flops(m, n, vectors), factored


def reduced_route_flops(m: int, n: int, r: int, op: str, side: str) -> float:
    """FLOPs of the reduced small route of ``op`` (``"svdvals"`` or ``"svd"``) on one ``m x n``
    matrix ``L @ R`` of inner width ``r < min(m, n)``, leaving out forming ``L`` and ``R`` (as
    :func:`small_route_flops`): ``side="right"``, the QR of the ``n x r`` side ``R^H``, the
    ``m x r`` matrix ``L @ T^H`` and its SVD (with ``Vh = Vh_M Q^H``); ``"left"``, the same
    through ``L``'s QR and the ``r x n`` matrix ``T @ R``."""
    vectors = op == "svd"
    reduced, kept = (n, m) if side == "right" else (m, n)
    flops = qr_flops(reduced, r, vectors) + 2 * kept * r * r + svd_flops(kept, r, vectors)
    return flops + 2 * reduced * r * r if vectors else flops


def small_route(m: int, n: int, r: int, count: int, op: str, single: bool = True) -> tuple[str, float]:
    """``(route, cost)``: the cheapest small route of ``op`` on a batch of ``count`` ``m x n``
    matrices ``L @ R`` of inner width ``r``: ``"dense"``, or for the SVDs of a ``single``
    product (not a sum) narrower than both its dims ``"right"``/``"left"``
    (:func:`reduced_route_flops`), costed in FLOPs with the reduced route's fixed cost per call
    (:data:`REDUCED_OVERHEAD_FLOPS`)."""
    return _cheapest(m, n, r, count, op, single and r < min(m, n), REDUCED_OVERHEAD_FLOPS.get(op))


@functools.lru_cache(maxsize=4096)  # a pure function of numbers, asked on every call
def _cheapest(m: int, n: int, r: int, count: int, op: str, reducible: bool,
              overhead: float | None) -> tuple[str, float]:
    dense = count * small_route_flops(m, n, r, op)[0]
    if not reducible or overhead is None:
        return "dense", dense
    side = min(("right", "left"), key=lambda s: reduced_route_flops(m, n, r, op, s))
    cost = count * reduced_route_flops(m, n, r, op, side) + overhead
    return (side, cost) if cost < dense else ("dense", dense)


def _square_spans(t: Term, n: int) -> list[tuple[int, int]]:
    """The square segments of the term ``t`` of an ``n x n`` product: ``(first factor, last + 1)``
    each, cut at every chain dim equal to ``n``."""
    cuts = [i for i, d in enumerate(t.dims) if d == n]  # the first and the last among them
    return list(itertools.pairwise(cuts))


# the ops whose route between square segments and the formed product is a cost comparison (not
# inv: see SEGMENT_OVERHEAD_FLOPS)
SQUARE_OPS = ("det", "slogdet", "solve")


def square_route_flops(x: Expr, op: str, k: int = 0) -> tuple[float, float, int]:
    """``(dense, factored, calls)`` for ``op`` (one of :data:`SQUARE_OPS`; ``k`` right-hand
    sides for ``"solve"``) on a single product ``x`` of ``n x n``: dense, the product formed as
    planned and one LU (with its solves, ``2 n^2 k``); factored, each square segment formed (a
    leaf view: nothing) and its own LU (and solves) per member of
    its batch; ``calls``, the factored route's LU calls beyond the dense route's one (priced by
    :data:`FACTORED_OVERHEAD_FLOPS`)."""
    t, n = canonical(x).terms[0], x.shape[-1]
    shapes = tuple([tuple(f.shape) for f in t.factors])
    itemsize = x.dtype.itemsize

    def lu(batch: int) -> float:
        each = 2 * n**3 / 3
        return batch * (each + (2 * n * n * k if op == "solve" else 0))

    spans = _square_spans(t, n)
    dense = plan_chain(shapes, itemsize).flops + lu(math.prod(x.shape[:-2]))
    factored = sum([plan_chain(shapes[a:b], itemsize).flops + lu(math.prod(broadcast_shapes(*(
        s[:-2] for s in shapes[a:b])))) for a, b in spans])
    return dense, factored, len(spans) - 1
