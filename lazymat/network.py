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

from . import product_cache
from .layout import contraction_output
from .rewrite import broadcast_batch
from .settings import BudgetTooSmall

__all__ = ["NetworkCost", "NetworkRun", "Network", "Shared", "closed_chain", "gram_trace", "leaf_steps",
           "plan_networks", "schedule_cost", "slice_network", "terms_reserve", "unsliced_peak"]

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
    one scaled term, its result and the scaled copy); none for one unscaled term."""
    if len(terms) == 1 and not terms[0].has_coefficient:
        return 0
    return 2 * math.prod(out_shape) * itemsize


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
    optimize = "auto-hq" if len(shapes) <= 8 else "greedy"
    net = _network(eq, squeezed, optimize, None, Network(
        eq, (), 0, 0, tuple(squeeze), (*batch, *extra_shape), itemsize=itemsize,
        row_labels="".join(out_extra)), ids)
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
    held = {("step", k) for k in _held_steps(dep, reads, keep)}
    out_labels = net.out_labels[1]
    summed = sliced - set(out_labels)
    out_bytes = _elements(out_labels, full) * item
    acc = out_bytes if sliced else 0
    mem = peak = acc
    flops = 0
    alive: dict = {}
    step_live = []
    for k, ((ins_l, res, removed), ins) in enumerate(zip(net.step_labels, reads, strict=True)):
        if runs[k]:
            nbytes = _elements(res, size) * item
            alive[("step", k)] = nbytes
            mem += nbytes
            idx = frozenset("".join(ins_l))
            step_flops = oe.helpers.flop_count(idx, removed, len(ins_l), {**size, **{
                c: full[c] for c in idx & sliced}})
            repeat = math.prod(n for c, n in nblocks.items() if c not in idx) if dep[k] else 1
            flops += step_flops * repeat
        peak = max(peak, mem)
        step_live.append(mem)
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
                  what: str | None = None) -> tuple[NetworkRun, ...]:
    """How :mod:`lazymat.execute` runs the networks of one call (one network, or the terms' of a
    trace or diagonal of a sum) one after another within ``budget`` bytes, each beside ``reserve``
    bytes (:func:`terms_reserve`) and the values earlier networks keep (``budget`` None: no limit,
    every network whole).

    A network keeps the steps of :func:`kept_steps` that a later one reads, and a kept value is
    freed once no later network reads it. Keeping is never forced on a budget: a network that
    does not fit beside the kept values runs after they are freed (their readers compute them
    again), and failing that keeps nothing itself. So each network runs if it fits alone beside
    the reserve, and the call's minimum (the :class:`lazymat.settings.BudgetTooSmall` raised
    below it) is the largest of those needs: exact, and any larger budget runs too."""
    reads = [frozenset(step[3] for step in net.program) for net in nets]
    later = [frozenset().union(*reads[j + 1:]) for j in range(len(nets))]
    kept: dict = {}  # key -> bytes, as the executor holds them
    runs = []
    for j, net in enumerate(nets):
        stale = frozenset(key for key in kept if key not in reads[j] | later[j])
        everything = frozenset(kept)  # first beside the kept values, then after freeing them
        tries = [(stale, later[j]), (everything, later[j]), (everything, frozenset())]
        for free, keep in dict.fromkeys(tries):
            held = reserve + sum(b for key, b in kept.items() if key not in free)
            cost = _fit(net, None if budget is None else budget - held, keep)
            if cost is not None:
                break
        else:
            raise _too_small(nets, j, budget, reserve, device, what)
        for key in free:
            del kept[key]
        ran = cost.network if cost.network is not None else net
        found = frozenset(kept)
        sliced = {c for c, _ in cost.blocks}
        dep = dependent_steps(ran, sliced)
        for k in sorted(kept_steps(ran, keep)):
            key = ran.program[k][3]
            if not dep[k] and key not in kept:
                kept[key] = _elements(ran.step_labels[k][1], dict(ran.sizes)) * ran.itemsize
        runs.append(NetworkRun(ran, cost if sliced else None, keep, free, found, held,
                               cost.peak_bytes + held, sum(kept.values())))
    return tuple(runs)


def _fit(net: Network, budget: int | None, keep: frozenset) -> NetworkCost | None:
    """``net``'s cost within ``budget`` (None: no limit; no blocks when it runs whole), None when
    it cannot fit."""
    if budget is not None and budget < 0:
        return None
    if budget is None or unsliced_peak(net, keep) <= budget:
        return replace(schedule_cost(net, None, keep), network=net)
    return slice_network(net, budget, keep)


def _too_small(nets: list[Network], refused: int, budget: int, reserve: int, device,
               what: str | None) -> BudgetTooSmall:
    """The error of a call whose network ``refused`` does not fit ``budget`` in
    :func:`plan_networks`, naming the call's minimum: the largest need of one network alone
    beside ``reserve``, keeping nothing (the refused one's first: the others need bisecting only
    when they do not fit under it)."""
    need = reserve + _least_budget(nets[refused], frozenset(), budget - reserve)
    for net in nets:
        if _fit(net, need - reserve, frozenset()) is None:
            need = reserve + _least_budget(net, frozenset(), need - reserve)
    if what is None:
        net = nets[0]
        what = f"a closed network ({net.eq}, result of shape {tuple(net.out_shape)})"
    block = ("its smallest block (every label cut to 1)" if len(nets) == 1 else
             "the smallest blocks of its networks")
    return BudgetTooSmall(what, block, budget, need, device)


def _least_budget(net: Network, keep: frozenset, refused: int) -> int:
    """The least budget above ``refused`` that :func:`slice_network` fits ``net`` in: at most
    the peak of its smallest block on its own order (every label cut to 1), less where an order
    opt_einsum finds under that memory limit needs less (found by bisection)."""
    lo = refused
    hi = max(schedule_cost(net, {c: 1 for c, n in net.sizes if n > 1}, keep).peak_bytes, refused + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _fit(net, mid, keep) is not None else (mid, hi)
    return hi


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
    None when even blocks of 1 of every label do not fit (:func:`plan_networks` raises then);
    ``keep`` as in :func:`schedule_cost`."""
    key = (net, budget, keep)
    hit = _slicings.get(key)
    if hit is not None:
        return hit
    cost = schedule_cost(net, None, keep)
    if cost.peak_bytes > budget:
        alt = memory_limited(net, budget)
        options = [_search(n, budget, keep, schedule_cost(n, None, keep))
                   for n in ([net] if alt is None else [net, alt])
                   if schedule_cost(n, {c: 1 for c, _ in n.sizes}, keep).peak_bytes <= budget]
        cost = min(options, key=lambda o: (o.flops, o.slices)) if options else None
    _slicings[key] = cost
    if len(_slicings) > 256:
        _slicings.popitem(last=False)
    return cost


def _search(net: Network, budget: int, keep: frozenset, cost: NetworkCost) -> NetworkCost:
    full = dict(net.sizes)
    labels = [c for c, n in full.items() if n > 1]
    if cost.peak_bytes <= budget:
        return replace(cost, network=net)
    blocks: dict[str, int] = {}
    while True:
        fits = [f for c in labels if (f := _largest_block(net, blocks, c, budget, keep)) is not None]
        if fits:
            return replace(min(fits, key=lambda f: (f.flops, f.slices)), network=net)
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

