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
step whose key was seen before in this network is not run again (its FLOPs are not counted
again either), nor one that an earlier network of the same call kept for it
(:func:`plan_networks`: small steps, kept while they fit the budget).

A step that contracts two operands that are unbatched leaf views, in a network with a batch
(``W_E^T W_E`` in the norms of the QK circuits of all heads), is kept on the leaves
(:mod:`lazymat.product_cache`) and found again by later calls.

Memory: :func:`schedule_cost` is the live peak of the schedule the executor runs (each
intermediate from its step to its last reader), and :func:`slice_network` the blocks of labels
(a batch dim, the diagonal's rows, or a contracted index, summed over its blocks) that bring it
under a budget at the least added work. This module plans; :func:`lazymat.execute.contract`
runs. cotengra's ``SliceFinder`` was the model, not a dependency: it slices whole indices
against the largest single tensor (output indices excluded by default), while these networks
have a handful of operands, so every candidate block size is costed exactly against the live
peak, batch (output) labels included, with the steps that read no sliced label run once.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import opt_einsum as oe
import torch

from . import product_cache, settings
from .layout import contraction_output
from .plan import blocks_bytes, copied_factors, merges_as_view, rescales, view_strides
from .rewrite import broadcast_batch
from .settings import BudgetTooSmall

__all__ = ["NetworkCost", "NetworkRun", "Network", "Shared", "closed_chain", "gram_trace", "leaf_steps",
           "pairwise_form", "plan_networks", "schedule_cost", "slice_network", "terms_reserve",
           "unsliced_peak"]

_cache: OrderedDict = OrderedDict()


@dataclass(frozen=True)
class Network:
    """An einsum over squeezed operands: ``eq``, its path and FLOPs (multiply-add = 2),
    counting each distinct step once, and ``peak_bytes``, the live peak of running it whole
    (:func:`schedule_cost`; :func:`slice_network` gives the peak under a budget)."""

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
    labels: tuple = ()  # per operand: its labels as passed to the program (squeezed, transposed)
    sizes: tuple = ()  # (label, size) of every label
    step_labels: tuple = ()  # per step: (labels of each input, labels of the output, any summed)
    itemsize: int = 4
    row_labels: str = ""  # output labels that are matrix dims (the diagonal's), not batch dims
    ids: tuple = ()  # per operand: (class, transposed) from :class:`Shared`
    peak_bytes: int = 0  # live peak of the unsliced run (see :func:`schedule_cost`)
    strides: tuple = ()  # per operand: its strides as passed to the program (per label of ``labels``)
    leaf_views: tuple = ()  # per operand, in a network with a batch: its leaf's size if an unbatched
    # leaf view (else 0; see kept_on_leaves)


class Shared:
    """Operand classes shared by the networks of one call, so that the step keys of different
    networks agree (what a network keeps for later ones: :func:`plan_networks`).

    Two operands share a class when they are the same view of the same base (up to a
    trailing transpose) and are conjugated alike; classes are numbered in order of
    appearance."""

    def __init__(self) -> None:
        self.classes: dict[tuple, int] = {}

    def ids(self, views: list, conj: list[bool]) -> tuple[tuple[int, bool], ...]:
        """Per operand ``(class, transposed)``."""
        out = []
        for v, c in zip(views, conj, strict=True):
            ops, t = v.ops, bool(v.ops) and v.ops[-1] == ("mT",)
            key = (id(v.base), ops[:-1] if t else ops, c)
            out.append((self.classes.setdefault(key, len(self.classes)), t))
        return tuple(out)


def terms_reserve(terms: tuple, out_shape: tuple, itemsize: int) -> int:
    """Bytes a call that adds up its terms' networks (a trace or diagonal of a sum) holds beside
    each network: the running sum of the results so far and the sum it is added into (or, for
    one scaled term, its result and the scaled copy; none for one unscaled term), the nested
    blocks the terms read, formed before the first network and held to the end (:func:`blocks_bytes`),
    and where a term's coefficient is far from 1 (:func:`lazymat.plan.rescales`), the copies of its
    operands rescaled, all held while its network runs (:func:`lazymat.execute.rescaled`: the
    largest term's); and the operands whose views copy (an index list, a cast:
    :func:`lazymat.plan.copied_factors`), formed whole before the network runs, however it is
    sliced (the largest term's)."""
    held = blocks_bytes(terms)[1] + max([_copies_held(t) + (
        itemsize * sum(math.prod(f.shape) for f in t.factors) if t.has_coefficient and rescales(t) else 0)
        for t in terms], default=0)
    if len(terms) == 1 and not terms[0].has_coefficient:
        return held
    return held + 2 * math.prod(out_shape) * itemsize


def _copies_held(term) -> int:
    """The most bytes a term's copied operands hold while they are formed, in order, and then
    while its network runs (all of them)."""
    run = peak = 0
    for _, (held, forming) in sorted(copied_factors(term).items()):
        peak, run = max(peak, run + forming), run + held
    return max(peak, run)


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


def operand_strides(views: list) -> tuple:
    """Per view: the strides of the tensor it stands for (:func:`lazymat.plan.view_strides`),
    row-major where a copying op makes it anew."""
    out = []
    for v in views:
        strides = view_strides(v)
        out.append(strides if strides is not None else
                   tuple(math.prod(v.shape[k + 1:]) for k in range(len(v.shape))))
    return tuple(out)


def kept_on_leaves(views: list) -> tuple:
    """Per view, in a network with a batch: the elements of its leaf when it is an unbatched leaf
    view (else 0), so that a step over two of them, no larger than the larger leaf, is kept on
    the leaves (:func:`leaf_steps`, :func:`lazymat.product_cache.store`) past its last reader;
    () when the network has no batch (nothing is kept)."""
    if all(math.prod(v.shape[:-2]) <= 1 for v in views):
        return ()
    return tuple(math.prod(v.base.shape) if product_cache.is_unbatched_leaf_view(v) else 0 for v in views)


def _plan(shapes: list[tuple], mats: list[tuple[str, str]], out_extra: list[str], extra_shape: tuple,
          itemsize: int, ids: tuple | None = None, strides: tuple | None = None,
          leaf_views: tuple = ()) -> Network:
    ids = tuple((-1 - k, False) for k in range(len(shapes))) if ids is None else ids
    if strides is None:  # row-major operands
        strides = tuple(tuple(math.prod(s[k + 1:]) for k in range(len(s))) for s in shapes)
    key = (tuple(shapes), tuple(mats), tuple(out_extra), itemsize, ids, strides, leaf_views)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    n_mat = 2 * len(shapes) + 2
    blabels, squeeze, out, batch = _label_batch(shapes, n_mat)
    terms = ["".join(b) + r + c for b, (r, c) in zip(blabels, mats, strict=True)]
    eq = ",".join(terms) + "->" + "".join(out) + "".join(out_extra)
    squeezed, passed = [], []
    for s, st, sq, (_, tr) in zip(shapes, strides, squeeze, ids, strict=True):
        squeezed.append(tuple(d for k, d in enumerate(s) if k not in sq))
        kept = [d for k, d in enumerate(st) if k not in sq]
        passed.append(tuple(kept[:-2] + kept[:-3:-1] if tr else kept))  # as _prepared passes it
    optimize = "auto-hq" if len(shapes) <= 8 else "greedy"
    net = _network(eq, squeezed, optimize, None, Network(
        eq, (), 0, 0, tuple(squeeze), (*batch, *extra_shape), itemsize=itemsize,
        row_labels="".join(out_extra), strides=tuple(passed), leaf_views=leaf_views), ids)
    _cache[key] = net
    if len(_cache) > 1024:
        _cache.popitem(last=False)
    return net


def _network(eq: str, squeezed: list[tuple], optimize: str, memory_limit: int | None,
             frame: Network, ids: tuple) -> Network:
    """``frame`` (its equation, squeezes, output shape, item size) with the path opt_einsum finds
    for it, its steps, their keys and the live peak."""
    path, info = oe.contract_path(eq, *squeezed, shapes=True, optimize=optimize, memory_limit=memory_limit)
    steps = _steps(info)
    terms_in = eq.split("->")[0].split(",")
    operands = [(-1 - c, _base_order(t, tr)) for t, (c, tr) in zip(terms_in, ids, strict=True)]
    program, last = _program(info, operands)
    flops = sum(f for (_, _, _, f), (*_, reused) in zip(steps, program, strict=True) if not reused)
    step_labels = tuple((tuple(einsum.split("->")[0].split(",")), einsum.split("->")[1], bool(removed))
                        for _, removed, einsum, _, _ in info.contraction_list)
    net = replace(frame, path=tuple(path), flops=int(flops),
                  largest_bytes=int(info.largest_intermediate) * frame.itemsize, steps=steps,
                  program=program, transposed=tuple(tr for _, tr in ids),
                  out_labels=(last, eq.split("->")[1]),
                  labels=tuple(_base_order(t, tr) for t, (_, tr) in zip(terms_in, ids, strict=True)),
                  sizes=tuple(sorted(info.size_dict.items())), step_labels=step_labels, ids=ids)
    return replace(net, peak_bytes=schedule_cost(net).peak_bytes)


def memory_limited(net: Network, budget: int) -> Network | None:
    """``net`` planned again with opt_einsum's ``memory_limit`` (no intermediate above
    ``budget`` bytes): another order that may fit where the cheapest does not. None when
    opt_einsum finds no pairwise path under the limit (it then joins every operand at once)."""
    size = dict(net.sizes)
    squeezed = [tuple(size[c] for c in t) for t in net.eq.split("->")[0].split(",")]
    limit = max(budget // net.itemsize, 1)
    try:
        alt = _network(net.eq, squeezed, "auto-hq" if len(squeezed) <= 8 else "greedy", limit,
                       replace(net, peak_bytes=0), net.ids)
    except RuntimeError:  # opt_einsum: "No contraction found for given `memory_limit`"
        return None
    if any(len(inds) != 2 for inds, *_ in alt.program) or alt.path == net.path:
        return None
    return alt


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
    of appearance. Returns the steps ``(positions, order, einsum as run, id, reused)`` and the
    last result's labels.

    ``live`` holds each operand's labels in storage order (inputs as the program reads them, a
    step's result in its output order). A pairwise step's result labels are ordered so that
    its GEMM reads both operands as stored (:func:`lazymat.layout.contraction_output`), else
    sorted; either way the order is a function of the renamed einsum, so the same value always
    has the same layout. A reordered result that leaves a later step with labels shared by its
    two operands (batch or contracted) stored in different orders, which torch would copy to
    align (two ``768 x 768`` Gram stacks joined in ``tr(A B)``), keeps the sorted order."""
    keep_sorted: set[int] = set()
    while True:
        program, last, misaligning = _program_pass(info, list(live), keep_sorted)
        if not misaligning:
            return program, last
        keep_sorted |= misaligning


def _program_pass(info, live: list[tuple], keep_sorted: set[int]) -> tuple[tuple, str, set[int]]:
    """One pass of :func:`_program` with the steps in ``keep_sorted`` left in sorted order; also
    returns the reordered steps upstream of a step whose operands store shared labels in
    different orders."""
    live = [(key, labels, frozenset()) for key, labels in live]  # (id, labels, steps upstream)
    program, seen, reordered, misaligning = [], set(), set(), set()
    for k, (inds, _, einsum, _, _) in enumerate(info.contraction_list):
        ins = [live.pop(i) for i in inds]
        order = sorted(range(len(ins)), key=lambda i: ins[i][0])
        upstream = frozenset().union(*(u for *_, u in ins))
        rename: dict[str, str] = {}
        for i in order:
            for ch in ins[i][1]:
                rename.setdefault(ch, oe.get_symbol(len(rename)))
        back = {v: k for k, v in rename.items()}
        out = "".join(back[c] for c in sorted(rename[c] for c in einsum.split("->")[1]))
        if len(ins) == 2:
            first, second = ins[order[0]][1], ins[order[1]][1]
            if [c for c in first if c in second] != [c for c in second if c in first]:
                misaligning |= upstream & reordered
            fast = None if k in keep_sorted else contraction_output(first, second, out, info.size_dict)
            if fast is not None and fast != out:
                out = fast
                reordered.add(k)
        canon = ",".join("".join(rename[c] for c in ins[i][1]) for i in order)
        run = canon + "->" + "".join(rename[c] for c in out)  # labels local to the step
        key = _step_id((run, tuple(ins[i][0] for i in order)))
        program.append((tuple(inds), tuple(order), run, key, key in seen))
        seen.add(key)
        live.append((key, out, upstream | {k}))
    return tuple(program), live[0][1], misaligning


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
    return _plan(shapes, mats, extra, (shapes[0][-2],) if diag else (), itemsize, ids, operand_strides(views),
                 kept_on_leaves(views))


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
    return _plan(list(shapes) + list(shapes), mats, [], (), itemsize, ids, operand_strides(views) * 2,
                 kept_on_leaves(views) * 2)


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


# ---- what torch.einsum allocates besides a step's result ---------------------------------------
def _subscript(label: str) -> int:
    """torch.einsum's order of labels (``A``-``Z``, then ``a``-``z``): its contracted dims follow it."""
    return ord(label) - ord("A") if label.isupper() else 26 + ord(label) - ord("a")


def _row_major(labels: list[str], size: dict) -> dict:
    """Strides (label -> stride) of a new tensor stored in ``labels`` order, outermost first."""
    out, step = {}, 1
    for c in reversed(labels):
        out[c] = step
        step *= size[c]
    return out


def _elementwise_order(order: list[str], operands: list[dict], size: dict) -> list[str]:
    """The dims ``order`` (torch.einsum's) outermost first as torch's TensorIterator lays out a
    new elementwise result of ``operands`` (label -> stride as TensorIterator sees it, 0 on a
    broadcast dim): dims sorted innermost first by insertion, by the first operand whose strides
    tell them apart (a broadcast dim tells nothing; equal strides put the smaller dim inner)."""
    def should_swap(c0: str, c1: str) -> int:
        for st in operands:
            s0, s1 = st[c0], st[c1]
            if s0 == 0 or s1 == 0:
                continue
            if s0 != s1:
                return 1 if s0 > s1 else -1
            if size[c0] > size[c1]:
                return 1
        return 0

    perm = list(reversed(order))  # innermost first
    for i in range(1, len(perm)):
        j = i
        for k in range(i - 1, -1, -1):
            swap = should_swap(perm[k], perm[j])
            if swap > 0:
                perm[k], perm[j] = perm[j], perm[k]
                j = k
            elif swap < 0:
                break
    return perm[::-1]


def einsum_temporaries(run: str, strides: list[dict], size: dict) -> tuple[int, dict]:
    """``(elements, strides)``: what ``torch.einsum(run, *operands)`` allocates besides its result
    (copies of operands that its batched GEMM cannot read as views, sums of labels only one
    operand carries), and the strides of its result (label -> stride). ``strides`` per operand
    (label -> stride), ``size`` per label.

    torch (``sumproduct_pair``) orders dims as the output, then the contracted labels; sorts
    them into those both operands carry (``lro``), the first's own (``lo``), the summed ones and
    the second's own (``ro``, with every dim of size 1), swapping the operands when all of
    ``ro`` comes before ``lo``; reshapes the left operand to ``(lro, lo, sum)`` and the right to
    ``(lro, sum, ro)``, copying one whose groups do not merge as views
    (:func:`lazymat.plan.merges_as_view`); and writes the GEMM's result ``(lro, lo, ro)``
    contiguous. Without a summed label it multiplies elementwise (TensorIterator's layout)."""
    ins, out = run.split("->")
    terms = ins.split(",")
    contracted = sorted({c for t in terms for c in t} - set(out), key=_subscript)
    order = list(out) + contracted
    if len(terms) != 2:  # a diagonal (a view) and a sum into the result
        return 0, _row_major([c for c in order if c in out], size)
    every = [{c: st[c] for c in t} for t, st in zip(terms, strides, strict=True)]  # all dims
    ops = [{c: st[c] for c in t if size[c] != 1} for t, st in zip(terms, strides, strict=True)]
    temp = 0
    size = dict(size)
    for i in (0, 1):
        own = [c for c in contracted if c in ops[i] and c not in ops[1 - i]]
        if own:  # summed away first, into a new tensor row-major over torch's dims (size 1 summed)
            size.update(dict.fromkeys(own, 1))
            temp += math.prod(size[c] for c in ops[i])
            every[i] = _row_major(order, {c: size[c] if c in ops[i] else 1 for c in order})
            ops[i] = {c: every[i][c] for c in ops[i] if size[c] != 1}
    a, b = ops
    summed = [c for c in contracted if c in a and c in b]
    if not summed:  # TensorIterator's strides: 0 on a broadcast dim, 1 on a dim einsum appended
        seen = [{c: op[c] if c in op else every[i].get(c, 1) if size[c] == 1 else 0 for c in order}
                for i, op in enumerate(ops)]
        return temp, _row_major(_elementwise_order(order, seen, size), size)
    lro = [c for c in order if c in a and c in b and c not in summed]
    lo = [i for i, c in enumerate(order) if c in a and c not in b]
    ro = [i for i, c in enumerate(order) if c not in a and c not in summed]
    if lo and ro and ro[-1] < lo[0]:
        a, b, lo, ro = b, a, ro, lo
    lo = [order[i] for i in lo if order[i] in a]
    ro = [order[i] for i in ro if order[i] in b]
    for st, groups in ((a, (lro, lo, summed)), (b, (lro, summed, ro))):
        if not all(merges_as_view([size[c] for c in g], [st[c] for c in g]) for g in groups):
            temp += math.prod(size[c] for c in st)
    strides = _row_major(lro + lo + ro, size)
    return temp, {c: strides.get(c, 1) for c in out}  # a dim of size 1: any stride


@functools.lru_cache(maxsize=4096)
def pairwise_form(run: str, shapes: tuple) -> tuple | None:
    """How :func:`lazymat.execute.contract` runs the pairwise step ``run`` on operands of
    ``shapes`` without ``torch.einsum``'s dozen views: the GEMM that einsum lowers it to
    (:func:`einsum_temporaries`' order of labels), called directly. Returns ``(swap, perms,
    kind, dims, mid, out_perm)``: the operands swapped when ``swap``, each permuted by its
    ``perms`` entry (None: as stored) to ``(lro, lo, sum)`` and ``(lro, sum, ro)``, reshaped to
    ``dims`` (their products) where a group has several labels, then ``torch.dot`` (no ``lro``,
    ``lo`` nor ``ro``: a contraction over every label, ``tr(A B) = sum(A * B^T)``), ``torch.mm``
    (no ``lro``) or ``torch.bmm``; the result viewed as ``mid`` (``lro + lo + ro``) and permuted by
    ``out_perm`` to ``run``'s output. A reshape copies exactly where einsum's does, and the result
    has einsum's strides, so the step costs what the model says. None (einsum runs) for a step
    with a size-1 label, a label only one operand carries that is summed, no summed label
    (an elementwise or outer product), or not two operands."""
    ins, out = run.split("->")
    terms = ins.split(",")
    if len(terms) != 2 or any(len(set(t)) != len(t) for t in terms):
        return None
    size: dict[str, int] = {}
    for t, shape in zip(terms, shapes, strict=True):
        size.update(zip(t, shape, strict=True))
    if 1 in size.values():
        return None
    a, b = terms
    contracted = sorted({c for t in terms for c in t} - set(out), key=_subscript)
    if not contracted or any(c not in a or c not in b for c in contracted):
        return None
    order = list(out) + contracted
    lro = [c for c in order if c in a and c in b and c not in contracted]
    lo = [i for i, c in enumerate(order) if c in a and c not in b]
    ro = [i for i, c in enumerate(order) if c in b and c not in a]
    swap = bool(lo and ro and ro[-1] < lo[0])
    if swap:
        a, b, lo, ro = b, a, ro, lo
    lo, ro = [order[i] for i in lo], [order[i] for i in ro]
    perms = []
    for t, labels in ((a, lro + lo + contracted), (b, lro + contracted + ro)):
        perm = tuple(t.index(c) for c in labels)
        perms.append(None if perm == tuple(range(len(t))) else perm)
    dims = tuple(math.prod(size[c] for c in g) for g in (lro, lo, contracted, ro))
    kind = "bmm" if lro else "mm" if lo or ro else "dot"
    mid = lro + lo + ro
    out_perm = tuple(mid.index(c) for c in out)
    return (swap, tuple(perms), kind, dims, tuple(size[c] for c in mid),
            None if out_perm == tuple(range(len(out))) else out_perm)


@functools.lru_cache(maxsize=1024)
def _step_operands(net: Network) -> tuple:
    """Per step: the einsum it runs and the network's labels of its operands (in the einsum's
    order) and of its result, each in dim order."""
    live = list(net.labels)
    out = []
    for inds, order, run, _, _ in net.program:
        ins = [live.pop(i) for i in inds]
        ordered = [ins[i] for i in order]
        local = {}
        for term, labels in zip(run.split("->")[0].split(","), ordered, strict=True):
            local.update(zip(term, labels, strict=True))
        result = "".join(local[c] for c in run.split("->")[1])
        out.append((run, tuple(ordered), result))
        live.append(result)
    return tuple(out)


# ---- memory: the live peak of the schedule, and slicing to fit a budget ----------------------
@dataclass(frozen=True)
class NetworkCost:
    """What running a network costs when the labels in ``blocks`` are cut into blocks of the
    given sizes (the network runs once per combination of blocks, ``slices`` times):
    ``peak_bytes`` is the live peak of the schedule (every intermediate from its step to its
    last reader, values held across blocks, the accumulated output), ``flops`` the total work,
    counting the steps that do not read a sliced label once (they are computed before the
    loop and held) and the additions that accumulate a sliced summed label."""

    peak_bytes: int
    flops: int
    blocks: tuple = ()  # (label, block size) per sliced label
    slices: int = 1
    dims: tuple = ()  # (label, size, "batch" | "row" | "contracted") per sliced label
    network: Network | None = None  # the order that runs, when not the cheapest one's
    step_live: tuple = ()  # per step: bytes live while it runs (its output included)


@functools.lru_cache(maxsize=1024)
def retained_steps(net: Network) -> frozenset:
    """Steps whose value a call may keep for its later networks (:func:`plan_networks`): those no
    larger than their largest input (Gram matrices, contractions to a small core), so that what
    is kept stays bounded by the operands; larger values are freed after their last reader."""
    size = dict(net.sizes)
    out = set()
    for k, (ins, res, _) in enumerate(net.step_labels):
        if _elements(res, size) <= max(_elements(t, size) for t in ins):
            out.add(k)
    return frozenset(out)


def kept_steps(net: Network, keep: frozenset) -> frozenset:
    """The :func:`retained_steps` of ``net`` whose key is in ``keep`` (the keys later networks of
    the call read): the values it keeps for them, unless they read a sliced label."""
    return frozenset(k for k in retained_steps(net) if net.program[k][3] in keep) if keep else frozenset()


def _elements(labels: str, size: dict) -> int:
    return math.prod(size[c] for c in labels)


def dependent_steps(net: Network, sliced: set) -> list[bool]:
    """Per step: does it read (through its inputs, transitively) a label in ``sliced``? Those
    steps run once per block; the others run once and are held."""
    live = [bool(sliced & set(labels)) for labels in net.labels]
    out = []
    for inds, *_ in net.program:
        dep = any([live.pop(i) for i in inds])
        out.append(dep)
        live.append(dep)
    return out


def _held_steps(dep: list[bool], reads: list[list], keep: frozenset) -> set[int]:
    """Steps run once whose value is held to the end: read by a step that runs per block, or
    kept for later networks (``keep``: step indices)."""
    return {k for k in range(len(dep)) if not dep[k] and (
        k in keep or any(dep[j] for j, ins in enumerate(reads) if ("step", k) in ins))}


def held_keys(net: Network, sliced: set, keep: frozenset) -> frozenset:
    """Step keys whose value the executor holds through a loop over blocks of ``sliced``."""
    dep = dependent_steps(net, sliced)
    reads, _ = _reads(net, dep)
    return frozenset(net.program[k][3] for k in _held_steps(dep, reads, kept_steps(net, keep)))


def _reads(net: Network, dep: list[bool]) -> tuple[list[list], list[bool]]:
    """Per step: the values it reads (``("in", i)`` or ``("step", k)``), and whether it runs.
    A step whose key an earlier step computed reads that value instead of running, unless
    either reads a sliced label: blocks of the same key over differently sliced labels differ."""
    live: list = [("in", i) for i in range(len(net.labels))]
    reads, runs, owner = [], [], {}
    for k, (inds, _, _, key, reused) in enumerate(net.program):
        reads.append([live.pop(i) for i in inds])
        value = owner[key] if reused and not dep[k] and key in owner else ("step", k)
        if not dep[k]:
            owner.setdefault(key, value)
        runs.append(value == ("step", k))
        live.append(value)
    return reads, runs


def schedule_cost(net: Network, blocks: dict | None = None, keep: frozenset = frozenset()) -> NetworkCost:
    """Live peak and FLOPs of running ``net`` as :func:`lazymat.execute.contract` does (see
    :class:`NetworkCost`); the steps of :func:`kept_steps` (``keep``: keys later networks of the
    call read) are held to the end. Operands are not counted (they are the caller's), the output is."""
    blocks = dict(blocks or {})
    full = dict(net.sizes)
    size = {**full, **blocks}
    sliced = set(blocks)
    item = net.itemsize
    dep = dependent_steps(net, sliced)
    keep = kept_steps(net, keep)
    nblocks = {c: -(-full[c] // b) for c, b in blocks.items()}
    slices = math.prod(nblocks.values())
    reads, runs = _reads(net, dep)
    last_read = {v: k for k, ins in enumerate(reads) for v in ins}
    held = {("step", k) for k in _held_steps(dep, reads, keep) | _leaf_kept(net) if not dep[k]}
    out_labels = net.out_labels[1]
    summed = sliced - set(out_labels)
    out_bytes = _elements(out_labels, full) * item
    acc = out_bytes if sliced else 0
    mem = peak = acc
    flops = 0
    alive: dict = {}
    step_live = []
    layouts = _input_layouts(net)  # value -> its strides per dim
    for k, ((ins_l, res, removed), ins) in enumerate(zip(net.step_labels, reads, strict=True)):
        copies = 0
        if runs[k]:
            nbytes = _elements(res, size) * item
            alive[("step", k)] = nbytes
            mem += nbytes
            idx = frozenset("".join(ins_l))
            step_flops = oe.helpers.flop_count(idx, removed, len(ins_l), {**size, **{
                c: full[c] for c in idx & sliced}})
            repeat = math.prod(n for c, n in nblocks.items() if c not in idx) if dep[k] else 1
            flops += step_flops * repeat
            elements, layouts[("step", k)] = _step_layout(net, k, [layouts[v] for v in ins], size)
            copies = elements * item  # alive while the step runs, freed when it returns
        peak = max(peak, mem + copies)
        step_live.append(mem + copies)
        for v in ins:
            if last_read.get(v) == k and v in alive and v not in held:
                mem -= alive.pop(v)
    if net.out_labels[0] != out_labels and step_live:  # the final permutation copies the last result
        step_live[-1] = max(step_live[-1], mem + _elements(out_labels, size) * item)
        peak = max(peak, step_live[-1])
    if summed:
        flops += (slices - 1) * _elements(out_labels, full)
    return NetworkCost(int(peak), int(flops), tuple(sorted(blocks.items())), slices,
                       tuple((c, full[c], _dim_kind(net, c)) for c in sorted(blocks)),
                       step_live=tuple(step_live))


@functools.lru_cache(maxsize=1024)
def _leaf_kept(net: Network) -> frozenset:
    """Steps the executor keeps on the leaves (:func:`leaf_steps`, ``net.leaf_views``): held to
    the end of the call, as a cache, when they read no sliced label."""
    if sum(1 for n in net.leaf_views if n) < 2:
        return frozenset()
    live: list = list(net.leaf_views)
    size = dict(net.sizes)
    out = set()
    for k, ((inds, *_), (_, res, _)) in enumerate(zip(net.program, net.step_labels, strict=True)):
        ins = [live.pop(i) for i in inds]
        live.append(0)
        if all(ins) and _elements(res, size) <= max(ins):
            out.add(k)
    return frozenset(out)


def leaf_kept_bytes(net: Network) -> int:
    """Bytes of the steps an unbudgeted run of ``net`` keeps on the leaves (:func:`_leaf_kept`):
    still held after it returns, beside whatever the caller runs next."""
    size = dict(net.sizes)
    return sum(_elements(net.step_labels[k][1], size) for k in _leaf_kept(net)) * net.itemsize


def _input_layouts(net: Network) -> dict:
    """The strides of the network's operands as the program is passed them (per dim)."""
    return {("in", i): strides for i, strides in enumerate(net.strides)}


def _step_layout(net: Network, k: int, read: list[tuple], size: dict) -> tuple[int, tuple]:
    """:func:`einsum_temporaries` of step ``k`` of ``net`` whose operands (in the program's
    order) have the strides ``read`` (per dim), and its result's strides per dim. Per dim, not
    per label: a step that reads a value another step computed (the same einsum up to labels)
    finds its dims where they are."""
    run, ordered, _ = _step_operands(net)[k]
    terms, local_out = run.split("->")
    order = net.program[k][1]
    strides, local_size = [], {}
    for term, labels, j in zip(terms.split(","), ordered, order, strict=True):
        strides.append(dict(zip(term, read[j], strict=True)))
        local_size.update({c: size[g] for c, g in zip(term, labels, strict=True)})
    elements, out = einsum_temporaries(run, strides, local_size)
    return elements, tuple(out[c] for c in local_out)


@functools.lru_cache(maxsize=1024)
def unsliced_peak(net: Network, keep: frozenset = frozenset()) -> int:
    """Live peak of running ``net`` whole (:func:`schedule_cost`), keeping the steps of
    :func:`kept_steps` for later networks."""
    return schedule_cost(net, None, keep).peak_bytes if keep else net.peak_bytes


@dataclass(frozen=True)
class NetworkRun:
    """How one network of a call runs (:func:`plan_networks`)."""

    network: Network  # the order that runs (opt_einsum's under a memory limit, or the cheapest)
    cost: NetworkCost | None  # its slicing; None: it runs whole
    keep: frozenset  # keys later networks read: of its kept_steps, those reading no sliced label are kept
    free: frozenset  # keys of kept values freed before it runs (no later reader, or dropped to fit)
    kept: frozenset  # keys of the values kept when it runs (found there, not computed again)
    held: int  # bytes beside it: the call's reserve and the kept values
    peak_bytes: int  # its live peak, ``held`` included
    held_after: int  # bytes of the values kept once it has run (the reserve not included)


def plan_networks(nets: list[Network], budget: int | None, reserve: int, device: torch.device | str = "cpu",
                  what: str | None = None, forming: int = 0) -> tuple[NetworkRun, ...]:
    """How :mod:`lazymat.execute` runs the networks of one call (one network, or the terms' of a
    trace or diagonal of a sum) one after another within ``budget`` bytes, each beside ``reserve``
    bytes (:func:`terms_reserve`) and the values earlier networks keep (``budget`` None: no limit,
    every network whole).

    A network keeps the steps of :func:`kept_steps` that a later one reads, and a kept value is
    freed once no later network reads it. Keeping is never forced on a budget: a network that
    does not fit beside the kept values runs after they are freed (their readers compute them
    again), and failing that keeps nothing itself. So each network runs if it fits alone beside
    the reserve, and the call's minimum (the :class:`lazymat.settings.BudgetTooSmall` raised
    below it) is the largest of those needs: exact, and any larger budget runs too.

    ``forming``: the peak bytes of forming the nested blocks the networks read, before the first
    runs (:func:`lazymat.plan.blocks_bytes`); a budget below it is refused naming the larger of it
    and the networks' own least (the forming alone, named before, was refused again)."""
    if budget is None and len(nets) == 1:  # one network, whole: what _in_turn gives it
        return (_alone(nets[0], reserve),)
    if budget is not None and forming > budget:
        return _refused_forming(nets, budget, reserve, device, what, forming)
    return _in_turn(nets, budget, reserve, device, what)


def _refused_forming(nets: list[Network], budget: int, reserve: int, device: torch.device | str,
                     what: str | None, forming: int) -> tuple[NetworkRun, ...]:
    """:func:`plan_networks` under a ``budget`` below the ``forming`` of the blocks: always raises,
    naming the larger of ``forming`` and the least the networks need beside the blocks."""
    try:
        _in_turn(nets, forming, reserve, device, what)
    except BudgetTooSmall as err:  # (its minimum carries the BLAS workspace: taken off, added back)
        raise BudgetTooSmall(what or "closed networks", err.block, budget,
                             err.minimum - settings.blas_workspace(torch.device(device)), device) from None
    raise BudgetTooSmall(what or "closed networks", "forming the nested blocks they read", budget, forming,
                         device)


def _in_turn(nets: list[Network], budget: int | None, reserve: int, device: torch.device | str,
             what: str | None) -> tuple[NetworkRun, ...]:
    """:func:`plan_networks`: each network in turn, beside the values earlier ones keep."""
    if budget is not None:  # a budgeted call keeps nothing on the leaves (execute runs it so)
        nets = [_keeping_nothing_on_leaves(net) for net in nets]
    reads = [frozenset(step[3] for step in net.program) for net in nets]
    later = [frozenset().union(*reads[j + 1:]) for j in range(len(nets))]
    kept: dict = {}  # key -> bytes, as the executor holds them
    on_leaves: dict = {}  # key -> bytes kept on the leaves by earlier networks, held to the end
    runs = []
    for j, net in enumerate(nets):
        stale = frozenset(key for key in kept if key not in reads[j] | later[j])
        everything = frozenset(kept)  # first beside the kept values, then after freeing them
        tries = [(stale, later[j]), (everything, later[j]), (everything, frozenset())]
        for free, keep in dict.fromkeys(tries):
            held = reserve + sum(b for key, b in kept.items() if key not in free) + sum(on_leaves.values())
            cost = _fit(net, None if budget is None else budget - held, keep)
            if cost is not None:
                break
        else:
            raise _too_small(nets, j, budget, reserve, device, what)
        for key in free:
            del kept[key]
        ran = cost.network if cost.network is not None else net
        item = ran.itemsize
        found = frozenset(kept)
        sliced = {c for c, _ in cost.blocks}
        dep = dependent_steps(ran, sliced)
        for k in sorted(kept_steps(ran, keep)):
            key = ran.program[k][3]
            if not dep[k] and key not in kept:
                kept[key] = _elements(ran.step_labels[k][1], dict(ran.sizes)) * ran.itemsize
        for k in _leaf_kept(ran):
            if not dep[k]:
                on_leaves[ran.program[k][3]] = _elements(ran.step_labels[k][1], dict(ran.sizes)) * item
        runs.append(NetworkRun(ran, cost if sliced else None, keep, free, found, held,
                               cost.peak_bytes + held, sum(kept.values())))
    return tuple(runs)


@functools.lru_cache(maxsize=1024)
def _alone(net: Network, reserve: int) -> NetworkRun:
    """:func:`plan_networks`' run of a call's only network without a budget: whole, keeping
    nothing for later networks, beside ``reserve`` bytes (every call of a warm structure asks)."""
    empty = frozenset()
    return NetworkRun(net, None, empty, empty, empty, reserve, _whole(net, empty).peak_bytes + reserve, 0)


def _keeping_nothing_on_leaves(net: Network) -> Network:
    """``net`` as a budgeted call runs it: no step kept on the leaves (``leaf_views`` dropped), its
    ``peak_bytes`` counted again without them (the held Gram would otherwise stay in the figure
    the budget check and the named minimum read)."""
    if not net.leaf_views:
        return net
    bare = replace(net, leaf_views=())
    return replace(bare, peak_bytes=schedule_cost(bare).peak_bytes)


def _fit(net: Network, budget: int | None, keep: frozenset) -> NetworkCost | None:
    """``net``'s cost within ``budget`` (None: no limit; no blocks when it runs whole), None when
    it cannot fit."""
    if budget is not None and budget < 0:
        return None
    if budget is None or unsliced_peak(net, keep) <= budget:
        return _whole(net, keep)
    return slice_network(net, budget, keep)


@functools.lru_cache(maxsize=1024)
def _whole(net: Network, keep: frozenset) -> NetworkCost:
    """The cost of running ``net`` unsliced (every call of a warm structure asks it)."""
    return replace(schedule_cost(net, None, keep), network=net)


def _too_small(nets: list[Network], refused: int, budget: int, reserve: int, device,
               what: str | None) -> BudgetTooSmall:
    """The error of a call whose network ``refused`` does not fit ``budget`` in
    :func:`plan_networks`, naming the call's minimum: the largest need of one network alone
    beside ``reserve``, keeping nothing (the refused one's first: the others need bisecting only
    when they do not fit under it)."""
    def least() -> int:  # under the max_slices setting in force
        need = reserve + _least_budget(nets[refused], frozenset(), budget - reserve)
        for net in nets:
            if _fit(net, need - reserve, frozenset()) is None:
                need = reserve + _least_budget(net, frozenset(), need - reserve)
        return need

    need = least()
    if what is None:
        net = nets[0]
        what = f"a closed network ({net.eq}, result of shape {tuple(net.out_shape)})"
    slices = max(cost.slices for net in nets if (cost := _fit(net, need - reserve, frozenset())))
    bound = settings.get("max_slices")
    block = ("its smallest block (every label cut to 1)" if len(nets) == 1 else
             "the smallest blocks of its networks")
    widest = max(math.prod(n for _, n in net.sizes) for net in nets)
    if widest > bound:  # the bound binds where it raises the least budget
        with settings.scoped(max_slices=widest):
            free = least()
        if need > free:
            block = (f"a run in at most {bound} slices (the max_slices setting; {slices} "
                     f"slice{'s' if slices > 1 else ''} at that budget)")
    return BudgetTooSmall(what, block, budget, need, device)


def _least_budget(net: Network, keep: frozenset, refused: int) -> int:
    """The least budget above ``refused`` that :func:`slice_network` fits ``net`` in within the
    ``max_slices`` setting: at most the peak of its smallest block on its own order
    (:func:`smallest_block`; the whole network when that takes more slices), less where an order
    opt_einsum finds under that memory limit needs less (found by bisection)."""
    lo = refused
    if math.prod(n for _, n in net.sizes) > settings.get("max_slices"):
        top = unsliced_peak(net, keep)
    else:
        top = smallest_block(net, keep)
    hi = max(top, refused + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _fits_at(net, mid, keep) else (mid, hi)
    return hi


def _fits_at(net: Network, budget: int, keep: frozenset) -> bool:
    """Whether :func:`_fit` finds ``net`` a cost within ``budget`` (the same answer), without
    searching for the cheapest slicing: an order whose :func:`smallest_block` fits has a slicing
    (:func:`_search` reaches both of its blocks at worst), within the ``max_slices``
    setting when the network has no more entries than that; only otherwise is it searched."""
    if budget < 0:
        return False
    if unsliced_peak(net, keep) <= budget:
        return True
    bound = settings.get("max_slices")
    alt = memory_limited(net, budget)
    for order in [net] if alt is None else [net, alt]:
        if smallest_block(order, keep) > budget:
            continue
        if math.prod(n for _, n in order.sizes) <= bound or \
                _search(order, budget, keep, schedule_cost(order, None, keep), bound) is not None:
            return True
    return False


@functools.lru_cache(maxsize=1024)
def smallest_block(net: Network, keep: frozenset = frozenset()) -> int:
    """The least live peak a slicing of ``net``'s order reaches, the one figure the least budget,
    the fit test and the search agree on: every label of more than one entry cut to 1, or every
    label, size-1 ones too, whichever peaks lower. Slicing a size-1 label moves nothing but which
    steps count as run per block: it frees a step kept on the leaves (held only when it reads no
    sliced label) and stops a repeated step from being read again (blocks of one key over sliced
    labels differ), so either may be the lower (``tr(X^T X)`` of ``t2x1 @ t1x1 @ ... @ t2x2``:
    40 B against 48 B; where one was taken for the other the least named did not run)."""
    full = dict(net.sizes)
    ones = schedule_cost(net, {c: 1 for c, n in full.items() if n > 1}, keep).peak_bytes
    return min(ones, schedule_cost(net, dict.fromkeys(full, 1), keep).peak_bytes)


def _dim_kind(net: Network, label: str) -> str:
    if label not in net.out_labels[1]:
        return "contracted"
    return "row" if label in net.row_labels else "batch"


_slicings: OrderedDict = OrderedDict()


def slice_network(net: Network, budget: int, keep: frozenset = frozenset()) -> NetworkCost | None:
    """The blocks to cut ``net``'s labels into so that its live peak fits ``budget`` bytes,
    adding the least work, on ``net``'s order or on the one opt_einsum finds under a memory
    limit (:func:`memory_limited`; ``network`` names the order that runs). On one order: the
    largest block of each label that fits on its own, the cheapest of them; when no one label
    can fit, halve the label that saves most memory per FLOP added (the ratio cotengra's
    ``SliceFinder`` scores by, here costed exactly: the networks are small) and look again.
    None when even blocks of 1 of every label do not fit, or when every slicing that fits takes
    more than the ``max_slices`` setting's slices (:func:`plan_networks` raises then); ``keep``
    as in :func:`schedule_cost`."""
    bound = settings.get("max_slices")
    key = (net, budget, keep, bound)
    if key in _slicings:
        return _slicings[key]
    cost = schedule_cost(net, None, keep)
    if cost.peak_bytes > budget:
        alt = memory_limited(net, budget)
        options = [_search(n, budget, keep, schedule_cost(n, None, keep), bound)
                   for n in ([net] if alt is None else [net, alt])
                   if smallest_block(n, keep) <= budget]
        options = [o for o in options if o is not None]
        cost = min(options, key=lambda o: (o.flops, o.slices)) if options else None
    _slicings[key] = cost
    if len(_slicings) > 256:
        _slicings.popitem(last=False)
    return cost


def _search(net: Network, budget: int, keep: frozenset, cost: NetworkCost, bound: int) -> NetworkCost | None:
    """:func:`slice_network`'s search on ``net``'s order; None when it takes more than ``bound``
    slices (halving labels only adds slices, so the search stops there)."""
    full = dict(net.sizes)
    labels = [c for c, n in full.items() if n > 1]
    if cost.peak_bytes <= budget:
        return replace(cost, network=net)
    blocks: dict[str, int] = {}
    while True:
        fits = [f for c in labels if (f := _largest_block(net, blocks, c, budget, keep)) is not None]
        if fits:
            fits = [f for f in fits if f.slices <= bound]
            return replace(min(fits, key=lambda f: (f.flops, f.slices)), network=net) if fits else None
        if cost.slices > bound:
            return None
        if all(blocks.get(c, full[c]) == 1 for c in labels):  # nothing left to halve: every label
            ones = schedule_cost(net, {c: 1 for c in full}, keep)  # cut to 1, size-1 ones too
            return replace(ones, network=net) if ones.peak_bytes <= budget and ones.slices <= bound else None
        best = None  # no one label fits: halve the one that saves most memory per FLOP added
        for c in labels:
            b = blocks.get(c, full[c])
            if b == 1:
                continue
            cand = schedule_cost(net, {**blocks, c: (b + 1) // 2}, keep)
            saved = cost.peak_bytes - cand.peak_bytes
            if saved > 0:
                score = (cand.flops - cost.flops + 1e-6 * cost.flops) / saved
                if best is None or score < best[0]:
                    best = (score, cand)
        if best is None:  # no single label lowers the peak: halve them all
            blocks = {c: (blocks.get(c, full[c]) + 1) // 2 for c in labels}
            cost = schedule_cost(net, blocks, keep)
        else:
            cost = best[1]
            blocks = dict(cost.blocks)


def _largest_block(net: Network, blocks: dict, label: str, budget: int,
                   keep: frozenset) -> NetworkCost | None:
    """The cost with ``label`` cut into the largest blocks that fit ``budget`` (the others as in
    ``blocks``), or None if even blocks of 1 do not fit."""
    lo, hi = 1, blocks.get(label, dict(net.sizes)[label])
    if schedule_cost(net, {**blocks, label: 1}, keep).peak_bytes > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if schedule_cost(net, {**blocks, label: mid}, keep).peak_bytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return schedule_cost(net, {**blocks, label: lo}, keep)

