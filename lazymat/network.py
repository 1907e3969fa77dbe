"""Closed einsum networks over a product: traces, diagonals and squared norms.

``tr(V1 @ ... @ Vn)`` is the chain with its two ends joined; ``diag`` keeps the joined
label as an output; ``||X||_F^2 = tr(X^H X)`` puts the conjugate chain beside the chain.
opt_einsum plans each network as a whole, so it finds Gram routes by itself
(``tr(W_E^T W_E ...)`` when that is cheaper) and shares work across broadcast batch dims.
Paths are cached on the equation and shapes.

opt_einsum does not know that two operands are the same tensor: in ``tr(X^H X)`` of
``X = W_E .. W_E^T`` it forms the Gram ``W_E^T W_E`` twice. Operands are therefore given
classes (:class:`Shared`: the same view, conjugated alike, up to a transpose), each pairwise
step gets a key (its operands' keys and its einsum with labels renamed canonically), and a
step whose key was seen before, in this network or another of the same call, is not run
again; its FLOPs are not counted again either.

A step that contracts two operands that are unbatched leaf views, in a network with a batch
(``W_E^T W_E`` in the norms of the QK circuits of all heads), is kept on the leaves
(:mod:`lazymat.product_cache`) and found again by later calls.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass

import opt_einsum as oe
import torch

from . import product_cache
from .rewrite import broadcast_batch

__all__ = ["Network", "closed_chain", "contract", "gram_trace", "leaf_steps"]

_cache: OrderedDict = OrderedDict()


@dataclass(frozen=True)
class Network:
    """An einsum over squeezed operands: ``eq``, its path and FLOPs (multiply-add = 2),
    counting each distinct step once."""

    eq: str
    path: tuple
    flops: int
    largest_bytes: int
    squeeze: tuple  # per operand: dims to squeeze (broadcast size-1 batch dims)
    out_shape: tuple  # shape of the result before dropping the size-1 dims
    steps: tuple = ()  # per pairwise contraction: (einsum, input shapes, output shape, FLOPs)
    program: tuple = ()  # per step: (positions popped, their order, einsum as run, key, reused)
    transposed: tuple = ()  # per operand: passed transposed (its class is the untransposed view)
    out_labels: tuple = ("", "")  # (labels of the last result, labels of the network's output)


class Shared:
    """Operand classes and computed steps shared by the networks of one call.

    Two operands share a class when they are the same view of the same base (up to a
    trailing transpose) and are conjugated alike; classes are numbered in order of
    appearance, so the step keys of different networks of one call agree."""

    def __init__(self) -> None:
        self.classes: dict[tuple, int] = {}
        self.values: dict[tuple, torch.Tensor] = {}
        self.seen: set[tuple] = set()  # step keys already costed (explain)

    def ids(self, views: list, conj: list[bool]) -> tuple[tuple[int, bool], ...]:
        """Per operand ``(class, transposed)``."""
        out = []
        for v, c in zip(views, conj, strict=True):
            ops, t = v.ops, bool(v.ops) and v.ops[-1] == ("mT",)
            key = (id(v.base), ops[:-1] if t else ops, c)
            out.append((self.classes.setdefault(key, len(self.classes)), t))
        return tuple(out)


def _label_batch(shapes: list[tuple], start: int) -> tuple[list[list[str]], list[tuple], list[str], tuple]:
    batch = broadcast_batch(shapes)
    nb = len(batch)
    syms = [oe.get_symbol(start + p) for p in range(nb)]
    labels, squeeze = [], []
    for s in shapes:
        fb = len(s) - 2
        labs, sq = [], []
        for k in range(fb):
            p = nb - fb + k
            if s[k] == 1:
                sq.append(k)
            else:
                labs.append(syms[p])
        labels.append(labs)
        squeeze.append(tuple(sq))
    out = [syms[p] for p in range(nb) if batch[p] != 1]
    return labels, squeeze, out, batch


def _plan(shapes: list[tuple], mats: list[tuple[str, str]], out_extra: list[str],
          extra_shape: tuple, itemsize: int, ids: tuple | None = None) -> Network:
    ids = tuple((-1 - k, False) for k in range(len(shapes))) if ids is None else ids
    key = (tuple(shapes), tuple(mats), tuple(out_extra), itemsize, ids)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    n_mat = 2 * len(shapes) + 2
    blabels, squeeze, out, batch = _label_batch(shapes, n_mat)
    terms = ["".join(b) + r + c for b, (r, c) in zip(blabels, mats, strict=True)]
    eq = ",".join(terms) + "->" + "".join(out) + "".join(out_extra)
    squeezed = []
    for s, sq in zip(shapes, squeeze, strict=True):
        squeezed.append(tuple(d for k, d in enumerate(s) if k not in sq))
    path, info = oe.contract_path(eq, *squeezed, shapes=True, optimize="auto-hq"
                                  if len(shapes) <= 8 else "greedy")
    steps = _steps(info)
    terms_in = eq.split("->")[0].split(",")
    operands = [(-1 - c, _base_order(t, tr)) for t, (c, tr) in zip(terms_in, ids, strict=True)]
    program, last = _program(info, operands)
    flops = sum(f for (_, _, _, f), (*_, reused) in zip(steps, program, strict=True) if not reused)
    net = Network(eq, tuple(path), int(flops), int(info.largest_intermediate) * itemsize,
                  tuple(squeeze), (*batch, *extra_shape), steps, program,
                  tuple(tr for _, tr in ids), (last, eq.split("->")[1]))
    _cache[key] = net
    if len(_cache) > 1024:
        _cache.popitem(last=False)
    return net


def _steps(info) -> tuple:
    """Each contraction of an opt_einsum path with its FLOPs, by opt_einsum's own formula
    (the FLOPs add up to ``info.opt_cost``)."""
    out = []
    for inds, removed, einsum, _, _ in info.contraction_list:
        ins, res = einsum.split("->")
        terms = ins.split(",")
        idx = frozenset("".join(terms))
        flops = oe.helpers.flop_count(idx, bool(removed), len(inds), info.size_dict)
        shape = lambda t: tuple(info.size_dict[c] for c in t)  # noqa: E731
        out.append((einsum, tuple(shape(t) for t in terms), shape(res), int(flops)))
    return tuple(out)


def _base_order(labels: str, transposed: bool) -> str:
    """Labels of an operand passed as its class's view (last two swapped when transposed)."""
    return labels[:-2] + labels[-1] + labels[-2] if transposed else labels


_step_ids: OrderedDict = OrderedDict()  # (einsum, operand ids) -> step id
_next_step_id = itertools.count()


def _step_id(key: tuple) -> int:
    """A small int naming ``key`` (ids are never reused, so an evicted entry can only cost a
    missed share, never a wrong one)."""
    sid = _step_ids.get(key)
    if sid is None:
        sid = _step_ids[key] = next(_next_step_id)
        if len(_step_ids) > 65536:
            _step_ids.popitem(last=False)
    return sid


def _program(info, live: list[tuple]) -> tuple[tuple, str]:
    """Each step of opt_einsum's path with an id naming its value: from the ids of its
    operands (an input: ``-1 - class``), sorted, and its einsum with labels renamed in order
    of appearance (result labels sorted, so the same value always has the same layout).
    Returns the steps ``(positions, order, einsum as run, id, reused)`` and the last
    result's labels."""
    program, seen = [], set()
    for inds, _, einsum, _, _ in info.contraction_list:
        ins = [live.pop(i) for i in inds]
        order = sorted(range(len(ins)), key=lambda i: ins[i][0])
        rename: dict[str, str] = {}
        for i in order:
            for ch in ins[i][1]:
                rename.setdefault(ch, oe.get_symbol(len(rename)))
        back = {v: k for k, v in rename.items()}
        out = "".join(back[c] for c in sorted(rename[c] for c in einsum.split("->")[1]))
        canon = ",".join("".join(rename[c] for c in ins[i][1]) for i in order)
        run = canon + "->" + "".join(rename[c] for c in out)  # labels local to the step
        key = _step_id((run, tuple(ins[i][0] for i in order)))
        program.append((tuple(inds), tuple(order), run, key, key in seen))
        seen.add(key)
        live.append((key, out))
    return tuple(program), live[0][1]


def _mats(n: int, offset: int = 0) -> list[str]:
    return [oe.get_symbol(offset + j) for j in range(n + 1)]


def closed_chain(views: list, diag: bool, itemsize: int, shared: Shared | None = None) -> Network:
    """The network of ``tr(V1..Vn)`` (``diag=False``) or ``diag(V1..Vn)``; ``shared`` names
    the operands (``Shared.ids``) so that repeated steps are found."""
    shapes = [v.shape for v in views]
    d = _mats(len(shapes))
    d[-1] = d[0]
    mats = [(d[i], d[i + 1]) for i in range(len(shapes))]
    extra = [d[0]] if diag else []
    ids = (Shared() if shared is None else shared).ids(views, [False] * len(views))
    return _plan(shapes, mats, extra, (shapes[0][-2],) if diag else (), itemsize, ids)


def gram_trace(views: list, itemsize: int, is_complex: bool, shared: Shared | None = None) -> Network:
    """The network of ``tr(X^H X)`` for ``X = V1..Vn``: operands ``conj(V1..Vn), V1..Vn``
    (for real data the conjugates are the same tensors, so ``W^T W`` is one step)."""
    shapes = [v.shape for v in views]
    n = len(shapes)
    d = _mats(n)
    e = _mats(n, offset=n + 1)
    e[0], e[-1] = d[0], d[-1]
    mats = [(e[i], e[i + 1]) for i in range(n)] + [(d[i], d[i + 1]) for i in range(n)]
    shared = Shared() if shared is None else shared
    ids = shared.ids(list(views) * 2, [is_complex] * n + [False] * n)
    return _plan(list(shapes) + list(shapes), mats, [], (), itemsize, ids)


def leaf_steps(net: Network, views: list, conj: list[bool], dtype: torch.dtype) -> dict[int, tuple]:
    """Steps of ``net`` that contract only operands that are unbatched leaf views: step ->
    ``(views, key)`` for :mod:`lazymat.product_cache` (the key names the views, conjugation,
    the einsum and the dtype it runs in), given the network's operands ``views`` and whether
    each is conjugated."""
    pure = [product_cache.is_unbatched_leaf_view(v) for v in views]
    if sum(pure) < 2:
        return {}
    live: list = list(range(len(views)))
    out = {}
    for k, (inds, order, run, _, _) in enumerate(net.program):
        ins = [live.pop(i) for i in inds]
        live.append(None)
        if any(i is None or not pure[i] for i in ins):
            continue
        read = tuple(ins[i] for i in order)
        key = ("einsum", run, str(dtype), tuple(
            (views[i].base.uid, views[i].ops[:-1] if net.transposed[i] else views[i].ops, conj[i])
            for i in read))
        out[k] = (tuple(views[i] for i in read), key)
    return out


def contract(net: Network, operands: list[torch.Tensor], shared: Shared | None = None,
             views: list | None = None, conj: list[bool] | None = None) -> torch.Tensor:
    """Run ``net`` step by step; a step whose key is in ``shared`` (computed earlier in this
    network or another of the same call) is read from there. Given the operands' ``views``
    (and which are conjugated), a step over unbatched leaf views is read from, or (when the
    network has a batch) kept in, the leaves' cache."""
    values = shared.values if shared is not None else {}
    leafy = {} if views is None else leaf_steps(net, views, conj or [False] * len(views), operands[0].dtype)
    batched = views is not None and any(math.prod(v.shape[:-2]) > 1 for v in views)
    live = []
    for t, sq, tr in zip(operands, net.squeeze, net.transposed, strict=True):
        t = t.squeeze(sq) if sq else t
        live.append(t.mT if tr else t)
    found = False
    for k, (inds, order, run, key, _) in enumerate(net.program):
        ins = [live.pop(i) for i in inds]
        out = values.get(key)
        found = out is None and k in leafy
        if found:
            out = product_cache.lookup(*leafy[k])
            found = out is not None
        if out is None:
            out = torch.einsum(run, *(ins[i] for i in order))
            if k in leafy and batched:
                product_cache.store(leafy[k][0], out, leafy[k][1])
        values[key] = out
        live.append(out)
    last, final = net.out_labels
    if last != final:
        local = {c: oe.get_symbol(k) for k, c in enumerate(last)}
        out = torch.einsum("".join(local.values()) + "->" + "".join(local[c] for c in final), live[0])
    else:  # the user's result must not alias the leaves' cache
        out = live[0].clone() if found else live[0]
    return out.reshape(net.out_shape)
