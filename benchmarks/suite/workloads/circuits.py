"""Circuit workloads on random weights of the preset's shapes: the full QK circuit of one head
and of every head, copying scores, Q-/K-/V-composition of every pair of heads.

lazymat runs each as a user would, on fresh leaves (or a new ``Circuits``) every call, so no
decomposition or product is served from a cache. The hand-written routes are the smallest-core
routes an expert would write; TransformerLens runs its ``FactoredMatrix`` code paths (its
``composition_scores`` as ``all_composition_scores`` calls it)."""

from __future__ import annotations

import torch

import lazymat as lm
from lazymat import linalg as LA
from lazymat.circuits import Circuits

from .. import peers
from ..case import Case, Context
from ..floor import Floor

QK_OPS = ("svd", "svdvals", "matrix_norm", "eigvals", "trace", "diagonal")
# TransformerLens FactoredMatrix: what it offers for each op (no trace, no diagonal)
TL_QK_OPS = {"svd": lambda f: f.svd(), "svdvals": lambda f: f.S, "matrix_norm": lambda f: f.norm(),
             "eigvals": lambda f: f.eigenvalues}
DENSE_OPS = {"svd": lambda m: torch.linalg.svd(m, full_matrices=False), "svdvals": torch.linalg.svdvals,
             "matrix_norm": torch.linalg.matrix_norm, "eigvals": torch.linalg.eigvals,
             "trace": lambda m: m.diagonal(0, -2, -1).sum(-1), "diagonal": lambda m: m.diagonal(0, -2, -1)}


# dense decompositions run far below GEMM speed: their FLOPs count this many times over when
# deciding whether the dense route is worth running (a 50257 x 50257 SVD takes hours, not seconds)
DECOMPOSITION_SLOWDOWN = 20


def _dense_cost(op: str, n: int, width: int, batch: int) -> tuple[float, float]:
    """Estimated (peak bytes, GEMM-equivalent FLOPs) of forming a batch of ``n x n`` float32
    circuits of inner width ``width`` and running ``op`` on them (a decomposition keeps about
    three matrices of the size)."""
    decomposition = {"svd": 22, "svdvals": 4, "eigvals": 10}.get(op, 0) * n**3 * DECOMPOSITION_SLOWDOWN
    bytes_ = batch * n * n * 4 * (3 if decomposition else 1)
    return bytes_, batch * (2 * n * n * width + decomposition)


def lazy_qk(E, Q, K) -> lm.Expr:
    """The lazy full QK circuit over fresh leaves (``t[...]`` is a new tensor object each call)."""
    e = lm.lazy(E[...], name="W_E")
    return e @ lm.lazy(Q[...], name="W_Q") @ lm.lazy(K[...], name="W_K").mT @ e.mT


def qk_circuit(ctx: Context) -> list[Case]:
    W = ctx.weights()
    E, Q, K = W["W_E"], W["W_Q"][0, 0], W["W_K"][0, 0]
    tl = peers.transformer_lens()
    n = E.shape[0]
    cases = []
    for op in QK_OPS:
        fn = getattr(LA, op)
        case = Case("qk-circuit", op, {"lazymat": lambda fn=fn: fn(lazy_qk(E, Q, K))},
                    floor=Floor.of(lazy_qk(E, Q, K), op))
        if tl is not None and op in TL_QK_OPS:
            case.impls["TransformerLens"] = lambda op=op: TL_QK_OPS[op](tl.FactoredMatrix(E @ Q, K.mT @ E.mT))
        elif tl is not None:
            case.skipped["TransformerLens"] = f"FactoredMatrix has no {op}"
        _add_dense(ctx, case, op, lambda: E @ Q @ K.mT @ E.mT, n, Q.shape[-1], 1)
        cases.append(case)
    return cases


def _add_dense(ctx: Context, case: Case, op: str, form, n: int, width: int, batch: int) -> None:
    why = ctx.dense_skip(*_dense_cost(op, n, width, batch), f"{op} of {batch} x {n} x {n}")
    if why:
        case.skipped["dense torch"] = why
    else:
        case.impls["dense torch"] = lambda: DENSE_OPS[op](form())


def _shared_qr_svdvals(E, Q, K):
    R_E = torch.linalg.qr(E, mode="r")[1]
    R1 = torch.linalg.qr(R_E @ Q, mode="r")[1]
    R2 = torch.linalg.qr(R_E @ K, mode="r")[1]
    return torch.linalg.svdvals(R1 @ R2.mT)


def _gram_norm(E, Q, K):
    G = E.mT @ E
    return ((Q.mT @ G @ Q) * (K.mT @ G @ K)).sum((-2, -1)).sqrt()


def qk_all_heads(ctx: Context) -> list[Case]:
    W = ctx.weights()
    E, Q, K = W["W_E"], W["W_Q"], W["W_K"]
    batch, n = Q.shape[0] * Q.shape[1], E.shape[0]
    cases = []
    for op, hand in (("svdvals", _shared_qr_svdvals), ("matrix_norm", _gram_norm)):
        fn = getattr(LA, op)
        case = Case("qk-all-heads", op, {"lazymat": lambda fn=fn: fn(lazy_qk(E, Q, K)),
                                          "hand-written": lambda hand=hand: hand(E, Q, K)},
                    floor=Floor.of(lazy_qk(E, Q, K), op))
        case.skipped["TransformerLens"] = "the one-head figures are in qk-circuit"
        _add_dense(ctx, case, op, lambda: E @ Q @ K.mT @ E.mT, n, Q.shape[-1], batch)
        cases.append(case)
    cases[0].notes.append("hand-written: W_E's QR once, then R_E W_Q, R_E W_K and the d_head cores")
    cases[1].notes.append("hand-written: the Gram W_E^T W_E once, then per head tr(G_Q G_K)")
    return cases


# ---- copying scores ----------------------------------------------------------------------------
def copying_from_eigvals(ev: torch.Tensor) -> torch.Tensor:
    return ev.sum(-1).real / ev.abs().sum(-1)


def tl_copying(tl, W) -> torch.Tensor:
    """Copying scores from TransformerLens's ``FactoredMatrix`` eigenvalues."""
    return copying_from_eigvals((W["W_E"] @ tl.FactoredMatrix(W["W_V"], W["W_O"]) @ W["W_U"]).eigenvalues)


def copying(ctx: Context) -> list[Case]:
    W = ctx.weights()
    case = Case("copying", "all heads", {
        "lazymat": lambda: Circuits(W).copying_scores().scores,
        "hand-written": lambda: copying_from_eigvals(torch.linalg.eigvals(
            (W["W_O"] @ (W["W_U"] @ W["W_E"]) @ W["W_V"]).cpu()).to(ctx.device)),
    }, floor=Floor.of(Circuits(W).full_OV(), "eigvals"))
    case.notes.append("hand-written: W_U W_E once, then the d_head cores W_O (W_U W_E) W_V")
    tl = peers.transformer_lens()
    if tl is not None:
        s = ctx.shape
        need = s.n_layers * s.n_heads * s.d_vocab * s.d_head * 4 * 2  # W_E W_V and W_O W_U per head
        if need > ctx.memory_budget:
            case.skipped["TransformerLens"] = (
                f"out of memory: its per-head factors W_E W_V, W_O W_U hold {need / 2**30:.1f} GiB "
                f"> budget {ctx.memory_budget / 2**30:.1f} GiB (estimated, not run)")
        else:
            case.impls["TransformerLens"] = lambda: tl_copying(tl, W)
    s = ctx.shape
    _add_dense(ctx, case, "eigvals", lambda: W["W_E"] @ W["W_V"] @ W["W_O"] @ W["W_U"], s.d_vocab, s.d_head,
               s.n_layers * s.n_heads)
    return [case]


# ---- composition ---------------------------------------------------------------------------------
def _right_factors(W, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The later head's ``W_B = X @ Y`` as (X, Y): ``W_QK``, ``W_QK^T`` or ``W_OV``."""
    return {"Q": (W["W_Q"], W["W_K"].mT), "K": (W["W_K"], W["W_Q"].mT), "V": (W["W_V"], W["W_O"])}[kind]


def _earlier_to_later(scores: torch.Tensor) -> torch.Tensor:
    layers = torch.arange(scores.shape[0], device=scores.device)
    mask = layers[:, None, None, None] < layers[None, None, :, None]
    return torch.where(mask, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))


def hand_composition(W, kind: str) -> torch.Tensor:
    """One GEMM of the stacked ``R_V(a) W_O(a)`` against the stacked ``R_Y(b) X(b)^T`` (``R``
    the triangular QR factors: ``||W_V W_O X Y|| = ||R_V W_O X R_Y^T||``), then block norms."""
    L, H, Dh, D = W["W_O"].shape
    X, Y = _right_factors(W, kind)
    A = (torch.linalg.qr(W["W_V"], mode="r")[1] @ W["W_O"]).reshape(L * H * Dh, D)
    B = (torch.linalg.qr(Y.mT, mode="r")[1] @ X.mT).reshape(L * H * Dh, D)
    P = (A @ B.mT).reshape(L, H, Dh, L, H, Dh)
    num = P.square().sum((2, 5)).sqrt()
    na, nb = A.reshape(L, H, Dh * D).norm(dim=-1), B.reshape(L, H, Dh * D).norm(dim=-1)
    return _earlier_to_later(num / (na[:, :, None, None] * nb[None, None]))


def tl_composition(tl, W, kind: str) -> torch.Tensor:
    """TransformerLens's ``composition_scores`` on ``FactoredMatrix`` circuits, masked as its
    ``all_composition_scores`` does."""
    X, Y = _right_factors(W, kind)
    left, right = tl.FactoredMatrix(W["W_V"], W["W_O"]), tl.FactoredMatrix(X, Y)
    return _earlier_to_later(tl.composition_scores(left, right, broadcast_dims=True))


def composition_pairs(c: Circuits) -> tuple[lm.Expr, lm.Expr, lm.Expr]:
    """The earlier heads' OV circuits, the later heads' ``W_QK^T`` and every pair's product, as
    ``lazymat.circuits`` builds them for K-composition (Q and V cost the same)."""
    left, right = c.OV(), c.QK().mT
    return left, right, left[..., None, None, :, :] @ right


def composition_floor(c: Circuits, timed: bool = True) -> Floor:
    """The pair norms and both sides' norms (see :meth:`Floor.of` for ``timed``)."""
    return sum((Floor.of(x, "matrix_norm", timed) for x in composition_pairs(c)), Floor())


def _composition_cases(ctx: Context, W, workload: str, tl_allowed: str | None) -> list[Case]:
    tl = peers.transformer_lens()
    floor = composition_floor(Circuits(W))
    cases = []
    for kind in ("Q", "K", "V"):
        case = Case(workload, f"{kind}-composition", {
            "lazymat": lambda kind=kind: Circuits(W).composition_scores(kind).scores,
            "hand-written": lambda kind=kind: hand_composition(W, kind)}, floor=floor)
        if tl is not None and tl_allowed is None:
            case.impls["TransformerLens"] = lambda kind=kind: tl_composition(tl, W, kind)
        elif tl is not None:
            case.skipped["TransformerLens"] = tl_allowed
        cases.append(case)
    cases[0].notes.append("hand-written: QR factors of the head factors, then one GEMM of all pairs")
    return cases


def composition(ctx: Context) -> list[Case]:
    s = ctx.shape
    pairs = (s.n_layers * s.n_heads) ** 2
    broadcast = pairs * s.d_head * s.d_model * 4 * 2
    two = (2 * s.n_heads) ** 2
    why = (f"{pairs} pairs, {pairs / two:.0f}x the {two} of composition-2-layers where it is timed "
           f"(its time grows with the pairs); its broadcast operands hold ~{broadcast / 2**30:.1f} GiB"
           ) if pairs > 2000 else None
    return _composition_cases(ctx, ctx.weights(), "composition", why)


def composition_two_layers(ctx: Context) -> list[Case]:
    W = {k: (v[:2] if v.ndim == 4 else v) for k, v in ctx.weights().items()}
    return _composition_cases(ctx, W, "composition-2-layers", None)
