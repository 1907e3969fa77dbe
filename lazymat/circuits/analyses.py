"""The standard analyses of transformer circuits, each one lazy expression handed to the engine.

Conventions follow Elhage et al. (2021) and TransformerLens (row vectors; ``W_OV = W_V W_O``,
``W_QK = W_Q W_K^T``, both ``d_model x d_model``). Nothing here knows a fast route: the
engine plans every product, shares what heads have in common (``W_U @ W_E`` for all full OV
circuits) and reads decompositions off the smallest core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

import lazymat as lm
from lazymat import settings
from lazymat.indexing import integer_scalar

from . import selection
from .results import Directions, Scores, head_name

if TYPE_CHECKING:
    from .model import Circuits

KINDS = ("Q", "K", "V")
_UNBOUNDED = 2**62  # bytes: a budget no plan reaches


def widened(x: lm.Expr) -> lm.Expr:
    """``x`` read in float32 when its weights are 16-bit (the engine casts at the leaves). A score
    is a ratio of sums over many entries: with float16 weights the norm of a head's OV circuit
    times that of another's passes 65504, float16's largest value, and a composition score of
    0.09 came out 0 (an eigenvalue sum, NaN); bfloat16 keeps 8 bits, too few to rank tokens by."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"composition kind {kind!r}: choose 'Q', 'K' or 'V'")


def _composition_right(c: Circuits, kind: str) -> lm.Expr:
    _check_kind(kind)
    return {"Q": c.QK, "K": lambda: c.QK().mT, "V": c.OV}[kind]()


def composition(left: lm.Expr, right: lm.Expr) -> torch.Tensor:
    """``||A B||_F / (||A||_F ||B||_F)`` for every pair: ``left (..., d, d)`` the earlier heads'
    OV circuits, ``right (..., d, d)`` the later heads'; batch dims are the outer product."""
    nr = right.ndim - 2
    pairs = left[(Ellipsis,) + (None,) * nr + (slice(None), slice(None))] @ right
    num = lm.linalg.matrix_norm(pairs)
    den = lm.linalg.matrix_norm(left)[(Ellipsis,) + (None,) * nr] * lm.linalg.matrix_norm(right)
    return num / den


def random_baseline(c: Circuits, kind: str, samples: int = 32, seed: int = 0) -> float:
    """Mean composition score of Gaussian factors of the same shapes as the model's heads
    (``d_model x d_head`` times ``d_head x d_model``): the level that chance alone reaches.
    ``samples`` pairs (a positive int: the mean of none is NaN, which would turn every
    corrected score into NaN) drawn from a generator seeded with the int ``seed``."""
    _check_kind(kind)
    samples, seed = _baseline_int(samples, "samples", 1), _baseline_int(seed, "seed", None)
    g = torch.Generator().manual_seed(seed)
    D, Dh = c.d_model, c.d_head

    def low_rank():
        a = torch.randn(samples, D, Dh, generator=g, dtype=torch.float64)
        b = torch.randn(samples, Dh, D, generator=g, dtype=torch.float64)
        return lm.lazy(a) @ lm.lazy(b)

    left, right = low_rank(), low_rank()
    right = right.mT if kind == "K" else right
    s = lm.linalg.matrix_norm(left @ right) / (lm.linalg.matrix_norm(left) * lm.linalg.matrix_norm(right))
    return s.mean().item()


def _baseline_int(value: Any, name: str, least: int | None) -> int:
    """``value`` as an int (Python, numpy or a 0-dim integer tensor; a bool or float is none),
    at least ``least``; otherwise a ``TypeError``/``ValueError`` naming ``name`` and the value."""
    number = None if isinstance(value, bool) else integer_scalar(value)
    if number is None:
        raise TypeError(f"random baseline: {name} must be an int, got {value!r} ({type(value).__name__})")
    if least is not None and number < least:
        raise ValueError(f"random baseline: {name} must be at least {least}, got {number}"
                         + (" (the mean of no samples is NaN)" if name == "samples" else ""))
    return number


def composition_scores(c: Circuits, kind: str = "K", baseline: bool = False, samples: int = 32,
                       seed: int = 0) -> Scores:
    """Q-, K- or V-composition of every pair of heads, ``[L, H, L, H]`` (earlier, later).

    ``W_A`` is the OV circuit of the earlier head; ``W_B`` the later head's ``W_QK`` (Q),
    ``W_QK^T`` (K) or ``W_OV`` (V), as in TransformerLens's ``all_composition_scores``. Only
    pairs from an earlier to a strictly later layer can compose; all other entries are 0 (and
    marked invalid). ``baseline=True`` subtracts :func:`random_baseline` from the valid ones."""
    right = widened(_composition_right(c, kind))
    scores = composition(widened(c.OV()), right)
    layers = torch.arange(c.n_layers, device=scores.device)
    valid = (layers[:, None, None, None] < layers[None, None, :, None]).expand_as(scores)
    notes = [f"{kind}-composition: ||W_OV(a) W_B(b)|| / (||W_OV(a)|| ||W_B(b)||), layer(a) < layer(b)"]
    if baseline:
        b = random_baseline(c, kind, samples, seed)
        scores = scores - b
        notes.append(f"minus the random baseline {b:.4f} (Gaussian factors of the same shapes)")
    scores = torch.where(valid, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    name = f"{kind}-composition" + (" (baseline-corrected)" if baseline else "")
    return Scores(scores, name, valid=valid, notes=notes)


def copying_scores(c: Circuits) -> Scores:
    """``sum(eig) / sum(|eig|)`` of every head's full OV circuit ``W_E W_V W_O W_U``, ``[L, H]``:
    near 1 when a head raises the logit of the token it attends to."""
    ev = lm.linalg.eigvals(widened(c.full_OV()))
    scores = ev.sum(-1).real / ev.abs().sum(-1)
    notes = ["sum of eigenvalues / sum of |eigenvalues| of W_E W_OV W_U"]
    return Scores(scores, "copying score", notes=notes)


def singular_directions(c: Circuits, kind: str, layer: int, head: int | None = None, k: int = 10,
                        top: int = 10) -> Directions:
    """Top-``k`` right singular vectors of a circuit, read in the vocabulary.

    ``"OV"`` (a head's ``W_OV``) and ``"w_in"``/``"w_out"`` (a layer's MLP neuron directions,
    ``d_mlp x d_model``) are read by the unembedding ``W_U``: which logits each output
    direction raises (what TransformerLens's ``SVDInterpreter`` does). ``"QK"`` is read by
    ``W_E^T``: which key tokens each key-side direction attends to. A direction's sign is
    chosen so its largest vocabulary score (in absolute value) is positive."""
    counts = []
    for name, value in (("k", k), ("top", top)):  # Python, numpy or 0-dim tensor ints, as layers
        number = None if isinstance(value, bool) else integer_scalar(value)
        if number is None or number < 0:
            raise ValueError(f"singular_directions: {name} must be a non-negative int, got {value!r}")
        counts.append(number)
    k, top = counts
    if kind not in ("OV", "QK", "w_in", "w_out"):
        raise ValueError(f"kind {kind!r}: choose 'OV', 'QK', 'w_in' or 'w_out'")
    layer = selection.one(layer, c.n_layers, "layer")  # one layer: a list or None is a TypeError
    if kind in ("OV", "QK"):
        if head is None:
            raise ValueError(f"singular_directions({kind!r}) needs a head")
        head = selection.one(head, c.n_heads, "head")
        x = c.OV(layer, head) if kind == "OV" else c.QK(layer, head)
        what = f"{kind} {head_name(layer, head)}"
    else:
        if head is not None:
            raise ValueError(f"singular_directions({kind!r}) is per layer; got head={head}")
        x = c.w_in(layer) if kind == "w_in" else c.w_out(layer)
        what = f"{kind} layer {layer}"
    if x.device.type == "meta":  # (the tokens are read off values)
        raise ValueError(f"singular_directions({kind!r}) of {what}: the weights are on the meta device "
                         "(shapes only), so no direction can be read as tokens; load the weights on a "
                         "real device (device='cpu' or 'cuda'), or cost it with "
                         "lm.explain(expr, 'svd')")
    _, S, Vh = lm.linalg.svd(widened(x))
    k = min(k, S.shape[-1])
    reader = widened(c.W_E.mT if kind == "QK" else c.W_U)
    scores = (Vh[:k] @ reader).to_dense()
    peak = scores.gather(-1, scores.abs().argmax(-1, keepdim=True))
    scores = scores * torch.where(peak < 0, -1.0, 1.0).to(scores.dtype)
    ids = torch.topk(scores, min(top, scores.shape[-1]), dim=-1).indices
    tokens = [[c.token(i) for i in row] for row in ids.tolist()]
    return Directions(what, S[:k], scores, ids, tokens)


def diagonal_rank(expr: lm.Expr, rows: Sequence[int] | None = None,
                  memory_budget: int | str | None = None) -> torch.Tensor:
    """For each row ``i`` of a square ``(..., n, n)`` lazy expression, how many entries of the
    row exceed its diagonal entry (0: the diagonal is the row's maximum; for a full OV circuit,
    the head copies token ``i``). ``(..., n)`` (or ``(..., len(rows))``), int64. A 16-bit
    expression is compared in float32 (:func:`widened`), as the other analyses compute.

    Streamed over blocks of rows: the matrix is never formed; each block is one lazy product
    pushed through the chain. A block, its comparison mask and what forming it holds (its
    planned peak: a gathered slice of a factor) fit the memory budget (the call's
    ``memory_budget``, else ``lm.config(memory_budget=...)``, else half the device's free
    memory); a budget below that for one row of every matrix raises
    :class:`lazymat.settings.BudgetTooSmall` before anything runs. ``rows`` is read as a layer
    or head argument (ints, negative ones from the end, a slice; ``None``: all).

    A row holding a NaN has no rank (NaN compares false: counting would call its diagonal the
    maximum, or skip the NaN): it raises :class:`lazymat.linalg.NonFiniteError` (a
    ``ValueError``) naming the row, as ``lm.linalg.matrix_rank`` and torch's raise for a NaN
    entry. An inf compares as a number."""
    if not lm.is_lazy(expr):
        raise TypeError(f"diagonal_rank expects a lazy expression, got {type(expr).__name__}")
    n, m = expr.shape[-2:]
    if n != m:
        raise ValueError(f"diagonal_rank needs a square matrix, got shape {tuple(expr.shape)}")
    if expr.dtype.is_complex:
        raise TypeError(f"diagonal_rank compares entries: it needs a real expression, got a "
                        f"{tuple(expr.shape)} {str(expr.dtype).replace('torch.', '')} one (rank X.real)")
    expr = widened(expr)  # (a float16 full OV circuit's entries pass 65504: ties at inf)
    wanted = _rows(rows, n)
    out = torch.empty(tuple(expr.shape[:-2]) + (len(wanted),), dtype=torch.int64, device=expr.device)
    if out.numel() == 0 or expr.device.type == "meta":  # nothing to compare (meta: shapes only,
        return out                                       # as torch's own ops give on meta)
    budget = settings.memory_budget(expr.device, memory_budget)
    row_bytes = math.prod(expr.shape[:-2]) * n * (expr.dtype.itemsize + 1)  # the row, its mask
    fixed, per_row = _block_costs(expr, wanted)
    if budget < fixed + per_row + row_bytes:
        raise settings.BudgetTooSmall(
            f"diagonal_rank of a {tuple(expr.shape)} {str(expr.dtype).replace('torch.', '')} expression",
            "one row of every matrix, its comparison mask and what forming it holds", budget,
            fixed + per_row + row_bytes, expr.device)
    step = (budget - fixed) // (per_row + row_bytes)
    for start in range(0, len(wanted), step):
        chunk = wanted[start:start + step]
        # the block is formed within what its rows and masks leave of the budget (it slices
        # itself further if its plan needs more than estimated)
        left = budget - len(chunk) * row_bytes + settings.blas_workspace(expr.device)
        block = expr[..., chunk, :].to_dense(memory_budget=left)
        cols = torch.tensor(chunk, device=block.device)
        diag = block.gather(-1, cols.expand(block.shape[:-1])[..., None])
        _refuse_nan_rows(expr, block, chunk)
        out[..., start:start + len(chunk)] = (block > diag).sum(-1)
    return out


def _block_costs(expr: lm.Expr, wanted: list[int]) -> tuple[int, int]:
    """``(fixed, per_row)`` bytes that forming a block of ``k`` of the rows ``wanted`` holds
    besides the block, ``fixed + k * per_row``, from the planned peaks of two and three rows
    (a gathered slice of a factor grows with the rows; a far product formed once does not). The
    rows are the first one repeated: a list a slice can stand for (one row, or two in a row) is
    read as that slice, a view, where a block of scattered rows is gathered."""
    def peak(rows: list[int]) -> int:  # the unsliced plan's (no budget: nothing to cut)
        return lm.explain(expr[..., rows, :], memory_budget=_UNBOUNDED).planned.peak_bytes

    two, three = peak(wanted[:1] * 2), peak(wanted[:1] * 3)
    per_row = max(three - two, 0)
    return max(two - 2 * per_row, 0), per_row


def _rows(rows: Sequence[int] | torch.Tensor | slice | int | None, n: int) -> list[int]:
    """The rows :func:`diagonal_rank` is asked for, as the layer and head arguments are read
    (:mod:`.selection`: ints, negative ones from the end, a slice or ``None``; a float or bool
    is a ``TypeError`` naming it, not a row rounded down)."""
    key = selection.key(rows, n, "row")
    if isinstance(key, int):
        return [key]
    return list(range(n))[key] if isinstance(key, slice) else key


def _refuse_nan_rows(expr: lm.Expr, block: torch.Tensor, rows: list[int]) -> None:
    """Raise :class:`lazymat.linalg.NonFiniteError` naming the first row of ``block`` (rows
    ``rows`` of ``expr``) that holds a NaN: the count of entries above its diagonal would be a
    silent wrong answer."""
    suspect = block.sum(-1).isnan()  # a NaN makes its row's sum NaN (so may +inf with -inf):
    if not bool(suspect.any()):     # one reduction, no mask of the block's size
        return
    nan = torch.zeros_like(suspect)
    nan[suspect] = block[suspect].isnan().any(-1)
    if not bool(nan.any()):
        return
    *member, row = (int(i) for i in nan.nonzero()[0])
    where = f"row {rows[row]}" + (f" of matrix {tuple(member)}" if member else "")
    raise lm.linalg.NonFiniteError(
        f"diagonal_rank: {where} of the {tuple(expr.shape)} {str(expr.dtype).replace('torch.', '')} "
        "expression holds NaN, so no rank of its diagonal entry exists (a NaN compares false "
        "with everything); check the weights for NaN (torch.linalg.matrix_rank raises for NaN too)")
