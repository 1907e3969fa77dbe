"""QR of the tall factors the spectral routes reduce: Householder, or CholeskyQR with a shift.

Every SVD of a factored matrix starts with the QR of its tall ``(..., m, r)`` factors. Two routes:

- ``"householder"``: ``torch.linalg.qr`` (LAPACK / cuSOLVER). Backward stable for any input,
  rank deficient included; on a GPU its panel updates run far below GEMM speed (an H100 took
  ~1.8 ms for one 50257 x 64 factor).
- ``"cholesky"``: repeated CholeskyQR, ``G = X^H X = R^H R``, ``X <- X R^-1``, all GEMMs and
  triangular solves. A pass shifts ``G`` by a multiple of ``u ||X||_F^2`` when its Cholesky
  fails or its diagonal says ``X`` is too ill-conditioned (Fukaya, Kannan, Nakatsukasa, Yamamoto,
  Yanagisawa, "Shifted Cholesky QR for computing the QR factorization of ill-conditioned
  matrices", SIAM J. Sci. Comput. 2020); a pass shifted by ``t ||X||_F^2`` shrinks the
  condition number by a factor of about ``sqrt(t)``, so the route reaches condition numbers near
  ``1/u``. Passes repeat until the
  Gram matrix of the pass's input is within 0.5 of the identity (then that pass leaves ``Q``
  orthonormal to rounding), at most :data:`MAX_PASSES`: two for a well-conditioned factor
  (CholeskyQR2), three or more after shifts (shifted CholeskyQR3). Whatever it cannot certify
  (exact rank deficiency, non-finite input) is answered by Householder, so the route never
  returns a worse QR, only a slower one.

``lm.config(qr=...)`` picks the route; ``"auto"`` (the default) is CholeskyQR on CUDA, and on
the CPU CholeskyQR from :data:`CPU_CHOLESKY_ROWS` rows when ``Q`` is asked for or the factor
fits :data:`CPU_CHOLESKY_R_BYTES`, else Householder: a blocked Householder QR runs near GEMM
speed once its factor leaves the cache, where CholeskyQR2's extra GEMMs cost more than they
save (quiet 2-core CPU, float32: CholeskyQR 0.27-0.85x Householder's time with ``Q`` from 4096
rows, and for ``R`` alone up to 8 MiB factors; 1.05-1.47x for ``R`` alone past that, 50257 x 64
included: 18.1 against 12.1 ms; ``benchmarks/probes/cpu_probe_qr_crossover19.py``,
``benchmarks/results/cpu-qr-crossover19.txt``, ``benchmarks/results/cpu-qr.txt``).
"""

from __future__ import annotations

import numpy
import torch

from . import settings

__all__ = ["CPU_CHOLESKY_R_BYTES", "CPU_CHOLESKY_ROWS", "MAX_PASSES", "certified", "certified_members",
           "cholesky_qr", "qr", "qr_route", "qr_unchecked", "takes_cholesky"]

MAX_PASSES = 6  # CholeskyQR passes before the route gives up and Householder answers

# Shifts tried on a pass whose unshifted Cholesky fails or is too ill-conditioned, as multiples
# of u ||X||_F^2 (u the unit roundoff): a practical one ((m + n) u, the rounding of a
# Gram entry summed in blocks) and Fukaya et al.'s proven one (11 (m n + n (n + 1)) u).


def _shifts(m: int, n: int) -> tuple[float, ...]:
    return (float(m + n), 11.0 * (m * n + n * (n + 1)))


# On the CPU, CholeskyQR wins where its GEMMs stay in cache or Q is asked for: from this many rows,
# in mode "reduced", and in mode "r" for factors up to CPU_CHOLESKY_R_BYTES (quiet 2-core CPU,
# benchmarks/results/cpu-qr-crossover19.txt: 0.27-0.85x Householder's time there, 1.05-1.47x past it)
CPU_CHOLESKY_ROWS = 4096
CPU_CHOLESKY_R_BYTES = 8 * 2**20


def qr_route(device: torch.device | str, A: torch.Tensor | None = None, mode: str = "reduced") -> str:
    """The route the ``qr`` setting picks on ``device`` (for ``A`` in ``mode`` where given):
    ``"householder"`` or ``"cholesky"``."""
    return _route(device, None if A is None else A.shape, 0 if A is None else A.element_size(), mode)


def _route(device: torch.device | str, shape: tuple | None, itemsize: int, mode: str) -> str:
    """:func:`qr_route` of a factor of ``shape`` (None: not known) with ``itemsize``-byte entries."""
    chosen = settings.get("qr")
    if chosen != "auto":
        return chosen
    if torch.device(device).type == "cuda":
        return "cholesky"
    if shape is None or shape[-2] < CPU_CHOLESKY_ROWS:
        return "householder"
    small = shape[-2] * shape[-1] * itemsize <= CPU_CHOLESKY_R_BYTES
    return "cholesky" if mode == "reduced" or small else "householder"


def qr(A: torch.Tensor, mode: str = "reduced") -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.qr(A, mode)`` (``"reduced"`` or ``"r"``) by the configured route.

    ``A: (..., m, n)``; returns ``(Q (..., m, n), R (..., n, n))`` for a tall ``A``, and ``Q``
    empty in mode ``"r"``, like torch. Only tall, nonempty, full-column-rank inputs take the
    Cholesky route, and only while float32 products run in full precision (TF32 or bfloat16
    GEMMs, ``torch.set_float32_matmul_precision("high")``, would leave ``Q`` orthonormal only to
    ~1e-3); the rest go to Householder. A conjugated view (a factor read ``.mH``) is factored as
    its data, ``conj(M) = conj(Q) conj(R)``, conjugated in place: torch would first copy it
    resolved, an ``m x n`` copy no plan counts (with gradients, torch's route as it is)."""
    if A.is_conj() and not (A.requires_grad and torch.is_grad_enabled()):
        Q, R = qr(A.conj(), mode)
        return Q.conj_physical_(), R.conj_physical_()
    if _takes_cholesky(A, mode):
        out = cholesky_qr(A, with_q=mode == "reduced")
        if out is not None:
            Q, R = out
            return (A.new_empty(0) if Q is None else Q), R
    return torch.linalg.qr(A, mode=mode)


def qr_unchecked(A: torch.Tensor,
                 mode: str = "reduced") -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """:func:`qr` for a caller that reads the device later anyway (a small core on its way to
    the host): ``(Q, R, evidence)``. Where :func:`qr` would take the Cholesky route, the
    two-pass answer is queued and ``evidence`` holds the small tensors (on ``A``'s device) that
    :func:`certified` judges, wherever they are moved: when it says no, ``Q`` and ``R`` are not
    a QR and the caller must ask :func:`qr`, which answers as if this call had not happened.
    Elsewhere :func:`qr`'s answer, and None."""
    if _takes_cholesky(A, mode):
        Q, R, evidence = _queued_cholesky_qr2(A, with_q=mode == "reduced")
        return (A.new_empty(0) if Q is None else Q), R, evidence
    return (*qr(A, mode), None)


def certified(evidence: tuple) -> bool:
    """Whether CholeskyQR2's answer is the QR that :func:`_shifted_cholesky_qr` computes, from
    its ``evidence`` ``(info0, info1, R0, G)`` on any device, or read back as NumPy arrays: both
    Cholesky factorisations succeeded, the first factor ``R0``'s diagonal bounds ``cond(A)``
    below ``u^-1/2 / 8``, and the second pass's Gram matrix ``G`` is within 0.5 of ``I``."""
    info0, info1, R0, G = evidence
    if isinstance(R0, numpy.ndarray) or R0.ndim == 2 and R0.device.type == "cpu":  # (one matrix's)
        return _certified_on_host(*(_host_array(t) if isinstance(t, torch.Tensor) else t for t in evidence))
    d = torch.diagonal(R0, dim1=-2, dim2=-1).real.abs()
    u = _unit_roundoff(d.dtype)
    lo, hi = torch.aminmax(d, dim=-1)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    # ||G - I||_2 <= ||G - I||_F: within 0.5, the pass's singular values lie in sqrt(1 +- 0.5)
    near = torch.linalg.matrix_norm(G - eye) < 0.5
    ok = (hi / lo < 0.125 * u**-0.5) & near & (info0 == 0) & (info1 == 0)
    return bool(ok.all())


def certified_members(evidence: tuple) -> list[bool]:
    """:func:`certified` of each member of a stack of independent QRs (the evidence's leading
    dim; one per side of a product, :func:`lazymat.linalg._common.stacked_tall_qrs`), from
    the evidence of the one call that factorised them all, read back as NumPy arrays or tensors
    (on a device: one read each): a member it refuses is redone alone."""
    arrays = [a if isinstance(a, numpy.ndarray) else _host_array(a.cpu()) for a in evidence]
    return [_certified_on_host(*(a[k] for a in arrays)) for k in range(len(arrays[0]))]


def _host_array(t: torch.Tensor) -> numpy.ndarray:
    """A host tensor's data as NumPy, no dispatch where none is needed (``numpy.asarray`` of a
    tensor detaches it twice: sixteen dispatches per spectral call on the CPU)."""
    t = t.detach() if t.requires_grad else t
    return (t.resolve_conj() if t.is_conj() else t).numpy()


def _certified_on_host(info0: numpy.ndarray, info1: numpy.ndarray, R0: numpy.ndarray,
                       G: numpy.ndarray) -> bool:
    """:func:`certified` of evidence read back (one matrix's, or a batch's), in NumPy
    (microseconds where a dozen torch calls on tiny tensors cost tens: the host's work after a
    GPU route's one read)."""
    if numpy.any(info0) or numpy.any(info1):
        return False
    d = numpy.abs(numpy.diagonal(R0, axis1=-2, axis2=-1).real)
    lo, hi = d.min(-1), d.max(-1)  # (NaN if any is: the comparisons below then fail)
    with numpy.errstate(divide="ignore", invalid="ignore"):  # (lo = 0 fails the first test)
        bounded = (lo > 0) & (hi / lo < 0.125 * (numpy.finfo(d.dtype).eps / 2) ** -0.5)
    if not numpy.all(bounded):
        return False
    eye = numpy.eye(G.shape[-1], dtype=G.dtype)
    return bool(numpy.all(numpy.linalg.norm(G - eye, axis=(-2, -1)) < 0.5))


def _takes_cholesky(A: torch.Tensor, mode: str) -> bool:
    return takes_cholesky(A.shape, A.dtype, A.device, mode)


def takes_cholesky(shape: tuple, dtype: torch.dtype, device: torch.device | str, mode: str) -> bool:
    """Whether :func:`qr` of a factor of ``shape`` and ``dtype`` on ``device`` in ``mode``
    first tries CholeskyQR (else Householder answers at once)."""
    if mode not in ("reduced", "r"):
        raise ValueError(f"qr: mode must be 'reduced' or 'r', got {mode!r}")
    m, n = shape[-2], shape[-1]
    exact_gemms = (dtype in (torch.float64, torch.complex128)
                   or torch.get_float32_matmul_precision() == "highest")
    return _route(device, shape, dtype.itemsize, mode) == "cholesky" and 0 < n <= m and exact_gemms


def _unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def _factor_gram(G: torch.Tensor, m: int, n: int, u: float) -> torch.Tensor | None:
    """Upper ``R`` with ``R^H R = G (+ shift)``: unshifted when the Cholesky succeeds and its
    diagonal bounds the condition number below ``u^-1/2 / 8`` (past that the unshifted factor
    loses too much), else with the smallest shift of :func:`_shifts` that factorises."""
    R, info = torch.linalg.cholesky_ex(G, upper=True)
    if not bool(info.any()):
        d = torch.diagonal(R, dim1=-2, dim2=-1).real.abs()
        estimate = d.amax(-1) / d.amin(-1)  # a lower bound on cond(X)
        if bool((estimate < 0.125 * u**-0.5).all()):
            return R
    scale = torch.diagonal(G, dim1=-2, dim2=-1).real.sum(-1)  # ||X||_F^2, per batch member
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    for c in _shifts(m, n):
        shifted = G + (c * u * scale)[..., None, None] * eye
        R, info = torch.linalg.cholesky_ex(shifted, upper=True)
        if not bool(info.any()):
            return R
    return None


def cholesky_qr(A: torch.Tensor, with_q: bool) -> tuple[torch.Tensor | None, torch.Tensor] | None:
    """Shifted, repeated CholeskyQR of a tall ``A (..., m, n)`` (see the module docstring):
    ``(Q or None, R)`` with ``A = Q R``, ``Q`` orthonormal to rounding, ``R`` upper triangular;
    None when the passes cannot certify that (the caller falls back to Householder).

    Cost per pass: a Gram matrix (``2 m n^2`` FLOPs) and a triangular solve (``m n^2``), the
    last pass's solve only when ``with_q``. The common case, two unshifted passes, runs first
    with one read of the device (:func:`_cholesky_qr2`); only a factor it cannot certify goes
    through the pass-by-pass route, which reads the device after each step."""
    out = _cholesky_qr2(A, with_q)
    return out if out is not None else _shifted_cholesky_qr(A, with_q)


def _cholesky_qr2(A: torch.Tensor, with_q: bool) -> tuple[torch.Tensor | None, torch.Tensor] | None:
    """Two unshifted passes (CholeskyQR2), queued without waiting for the device, then one read
    of their certificate (:func:`certified`); None when it does not hold."""
    Q, R, evidence = _queued_cholesky_qr2(A, with_q)
    return (Q, R) if certified(evidence) else None


def _queued_cholesky_qr2(A: torch.Tensor, with_q: bool) -> tuple[torch.Tensor | None, torch.Tensor, tuple]:
    """``(Q or None, R, evidence)``: two unshifted passes (CholeskyQR2) and, unread, the small
    tensors :func:`certified` judges them by, the checks :func:`_shifted_cholesky_qr` makes step
    by step. When it says yes, the answer is the one the step-by-step route computes (the same
    operations in the same order); when not (ill-conditioned, rank deficient or non-finite), it
    is no QR."""
    if A.ndim > 3 and A.is_contiguous():  # one batch dim, a view: bmm (matmul adds five views or more)
        Q, R, evidence = _queued_cholesky_qr2(A.flatten(0, -3), with_q)
        batch = A.shape[:-2]
        return (None if Q is None else Q.unflatten(0, batch), R.unflatten(0, batch),
                tuple(t.unflatten(0, batch) for t in evidence))
    mm = torch.bmm if A.ndim == 3 else torch.matmul
    R0, info0 = torch.linalg.cholesky_ex(mm(A.mH, A), upper=True)
    X = torch.linalg.solve_triangular(R0, A, upper=True, left=False)
    G = mm(X.mH, X)
    R1, info1 = torch.linalg.cholesky_ex(G, upper=True)
    Q = torch.linalg.solve_triangular(R1, X, upper=True, left=False) if with_q else None
    return Q, mm(R1, R0), (info0, info1, R0, G)


def _shifted_cholesky_qr(A: torch.Tensor, with_q: bool) -> tuple[torch.Tensor | None, torch.Tensor] | None:
    """:func:`cholesky_qr` pass by pass: a shift where a Cholesky fails or the factor is too
    ill-conditioned, passes until the Gram matrix is within 0.5 of ``I``, None past
    :data:`MAX_PASSES` or where no shift factorises."""
    m, n = A.shape[-2], A.shape[-1]
    u = _unit_roundoff(A.real.dtype if A.is_complex() else A.dtype)
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    X, R = A, None
    for p in range(MAX_PASSES):
        G = X.mH @ X
        # ||G - I||_2 <= ||G - I||_F: within 0.5, X's singular values lie in sqrt(1 +- 0.5)
        last = p > 0 and bool((torch.linalg.matrix_norm(G - eye) < 0.5).all())
        if p == MAX_PASSES - 1 and not last:
            return None
        Rp = _factor_gram(G, m, n, u)
        if Rp is None:
            return None
        R = Rp if R is None else Rp @ R
        if last and not with_q:
            return None, R
        X = torch.linalg.solve_triangular(Rp, X, upper=True, left=False)
        if last:
            return X, R
    return None
