"""Closed einsum networks over a product: traces, diagonals and squared norms.

``tr(V1 @ ... @ Vn)`` is the chain with its two ends joined; ``diag`` keeps the joined
label as an output; ``||X||_F^2 = tr(X^H X)`` puts the conjugate chain beside the chain.
opt_einsum plans each network as a whole, so it finds Gram routes by itself
(``tr(W_E^T W_E ...)`` when that is cheaper) and shares work across broadcast batch dims.
Paths are cached on the equation and shapes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import opt_einsum as oe
import torch

from .rewrite import broadcast_batch

__all__ = ["Network", "closed_chain", "contract", "gram_trace"]

_cache: OrderedDict = OrderedDict()


@dataclass(frozen=True)
class Network:
    """An einsum over squeezed operands: ``eq``, its path and FLOPs (multiply-add = 2)."""

    eq: str
    path: tuple
    flops: int
    largest_bytes: int
    squeeze: tuple  # per operand: dims to squeeze (broadcast size-1 batch dims)
    out_shape: tuple  # shape of the result before dropping the size-1 dims
    steps: tuple = ()  # per pairwise contraction: (einsum, input shapes, output shape, FLOPs)


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
          extra_shape: tuple, itemsize: int) -> Network:
    key = (tuple(shapes), tuple(mats), tuple(out_extra), itemsize)
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
    net = Network(eq, tuple(path), int(info.opt_cost), int(info.largest_intermediate) * itemsize,
                  tuple(squeeze), (*batch, *extra_shape), _steps(info))
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


def _mats(n: int, offset: int = 0) -> list[str]:
    return [oe.get_symbol(offset + j) for j in range(n + 1)]


def closed_chain(shapes: list[tuple], diag: bool, itemsize: int) -> Network:
    """The network of ``tr(V1..Vn)`` (``diag=False``) or ``diag(V1..Vn)``."""
    d = _mats(len(shapes))
    d[-1] = d[0]
    mats = [(d[i], d[i + 1]) for i in range(len(shapes))]
    extra = [d[0]] if diag else []
    return _plan(shapes, mats, extra, (shapes[0][-2],) if diag else (), itemsize)


def gram_trace(shapes: list[tuple], itemsize: int) -> Network:
    """The network of ``tr(X^H X)`` for ``X = V1..Vn``: operands ``conj(V1..Vn), V1..Vn``."""
    n = len(shapes)
    d = _mats(n)
    e = _mats(n, offset=n + 1)
    e[0], e[-1] = d[0], d[-1]
    mats = [(e[i], e[i + 1]) for i in range(n)] + [(d[i], d[i + 1]) for i in range(n)]
    return _plan(list(shapes) + list(shapes), mats, [], (), itemsize)


def contract(net: Network, operands: list[torch.Tensor]) -> torch.Tensor:
    ops = [t.squeeze(sq) if sq else t for t, sq in zip(operands, net.squeeze, strict=True)]
    out = oe.contract(net.eq, *ops, optimize=list(net.path), backend="torch")
    return out.reshape(net.out_shape)
