"""Products of unbatched leaf views, cached on the leaves across evaluations and analyses.

In a batched product such as ``W_O @ W_U @ W_E @ W_V`` over all heads, the planner forms
``W_U @ W_E`` once for the whole batch (its factors carry no batch dim). That step is the
same in every later evaluation that contracts the same views of the same leaves (the
eigenvalue core again, a slice of the batch, another analysis of the same weights), so its
result is kept on the first leaf it reads, like a leaf's QR (:mod:`lazymat.core`):

- keyed by the views (each leaf's ``uid`` and the view's ops: no reference to the other
  leaves, so no cycle and nothing kept alive), and dropped when any other leaf it reads is
  freed (the entry holds a weak reference to each, whose callback holds the owner's products
  weakly: :class:`_Products`);
- valid while :func:`lazymat.expr.tensor_state` of every leaf it reads is unchanged;
- never stored or used while autograd records through a leaf (the value has no graph);
- dropped by ``X.clear_cache()`` on any expression over the owning leaf.

Bound: only batch-shared steps are stored (the maximal spans of unbatched leaf views in a
term with a batch), only when forming the span again costs more than keeping it
(:func:`worth_keeping`: at least :data:`MIN_KEPT_FLOPS`), only when the product has no more
elements than the largest tensor it reads, and at most :data:`MAX_PRODUCTS_PER_LEAF` per owning
leaf (the oldest is dropped).
Any evaluation looks spans of unbatched leaf views up, batched or not. Closed networks
(:mod:`lazymat.network`) keep their steps over two such views here too, under a key that
names the einsum; results handed to the user are copies, never the cached tensor.

Not done: the planner does not yet treat a cached span as free when it orders a product,
so a later evaluation finds the product only where its own plan forms the same span.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

import torch

from .caching import caches
from .expr import Leaf, tensor_state
from .rewrite import Term, View

if TYPE_CHECKING:
    from .plan import ChainPlan

__all__ = ["MAX_PRODUCTS_PER_LEAF", "MIN_KEPT_FLOPS", "holds_none", "is_cached", "is_unbatched_leaf_view",
           "leaf_products", "lookup", "not_kept", "slots_below", "store", "store_span", "worth_keeping"]

MAX_PRODUCTS_PER_LEAF = 8
# A span whose products cost fewer FLOPs than this is formed again rather than kept: keeping an
# entry (the leaves' states, a weak reference per other leaf, the release when one dies) and
# finding it again cost Python work of the order of 10 us, what a 64x64x64 product (2**19 FLOPs)
# takes on one CPU core or a kernel launch on a GPU (a fresh batched 3-chain of 64x32 factors
# spent about a third of its overhead over eager keeping a 32x32 @ 32x64 product no later call
# read). The spans worth keeping (``W_U @ W_E``: ~60 GFLOPs) are many orders above.
MIN_KEPT_FLOPS = 2**19
_SLOT = "products"
# Weak references to the leaves' products (:class:`_Products`, until freed): while there are none,
# an unbatched evaluation has nothing to look up and skips the search (one check per term).
_owners: set[weakref.ref] = set()
_NONE_FOUND: tuple[dict, frozenset, dict] = ({}, frozenset(), {})  # read only, like every answer
_unkept = [0]  # open :func:`not_kept` scopes


@contextlib.contextmanager
def not_kept() -> Iterator[None]:
    """Nothing is stored on the leaves inside. A sliced evaluation plans its blocks and the work
    they share on shape-only symbols, and a block's products over its own views are read by no
    other block: kept on the leaves, they would outlive the evaluation that counted them
    (:func:`lazymat.plan.evaluation_bytes`) and stay held, uncounted, beside the next blocks."""
    _unkept[0] += 1
    try:
        yield
    finally:
        _unkept[0] -= 1


def slots_below(program: tuple, n: int, step: int) -> set[int]:
    """The slots (factors ``< n``, then steps' results) that ``program``'s ``step`` reads,
    directly or through earlier steps: none is needed once that step's product is found."""
    out, stack = set(), list(program[step])
    while stack:
        slot = stack.pop()
        out.add(slot)
        if slot >= n:
            stack.extend(program[slot - n])
    return out


def worth_keeping(steps: tuple, program: tuple, n: int, step: int) -> bool:
    """Whether the span ``program``'s ``step`` forms (over ``n`` factors; ``steps`` the plan's
    :class:`lazymat.plan.Step` per step) costs at least :data:`MIN_KEPT_FLOPS` to form again: the
    FLOPs of that step and of every step below it."""
    flops = steps[step].flops
    if flops >= MIN_KEPT_FLOPS:
        return True
    below = sum([steps[s - n].flops for s in slots_below(program, n, step) if s >= n])
    return flops + below >= MIN_KEPT_FLOPS


def is_unbatched_leaf_view(v: View) -> bool:
    """True for a view of a leaf that has no batch dim larger than 1: a data leaf, or a symbol
    (plans and explain on symbols predict what a run on data of their shapes keeps)."""
    return type(v.base) is Leaf and math.prod(v.shape[:-2]) == 1


def _key(views: tuple[View, ...]) -> tuple:
    return tuple((v.base.uid, v.ops) for v in views)


def _recording(views: tuple[View, ...]) -> bool:
    return not caches([v.base.tensor for v in views])


def _states(views: tuple[View, ...]) -> tuple:
    return tuple(tensor_state(v.base.tensor) for v in views)


def lookup(views: tuple[View, ...], key: tuple | None = None) -> torch.Tensor | None:
    """The cached product of ``views`` (unbatched leaf views), if valid and usable now;
    ``key`` names another contraction of them than the chain product (a network step)."""
    products = _products(views[0].base)
    if not products or _recording(views):
        return None
    hit = products.get(_key(views) if key is None else key)
    if hit is None or hit[0] != _states(views):
        return None
    return hit[1]


def is_cached(views: tuple[View, ...], key: tuple | None = None) -> bool:
    """True when :func:`lookup` would find the product (what ``explain`` reports)."""
    return lookup(views, key) is not None


def store(views: tuple[View, ...], value: torch.Tensor, key: tuple | None = None) -> None:
    """Keep ``value`` (the product of ``views``, computed once for a batch) on the first leaf,
    within the bounds above."""
    _keep([v.base for v in views], _key(views) if key is None else key, value)


def store_span(leaves: list[Leaf], ops: tuple, value: torch.Tensor) -> None:
    """:func:`store` for the views of ``leaves`` with ``ops`` (per leaf: ``()``, or ``(("mT",),)``
    read transposed), under the same key: a fresh chain's span, read from its leaves without
    building a view (:func:`lazymat.execute.evaluate`)."""
    _keep(leaves, tuple(zip(map(_UID, leaves), ops, strict=True)), value)


class _Handle(weakref.ref):
    """A weak reference to a leaf's :class:`_Products`, hashed and compared by identity (a dict's
    contents are neither hashable nor what tells two apart)."""

    __slots__ = ()
    __hash__ = object.__hash__
    __eq__ = object.__eq__


class _Products(OrderedDict):
    """The products kept on one leaf, ``key -> (states, value, watchers)``, oldest first; ``ref``
    is the one weak reference to it, both its entry in :data:`_owners` (dropped with it, when its
    leaf dies or its cache is cleared) and what the watchers' callbacks read it by."""

    __slots__ = ("ref",)


_UID, _TENSOR = (operator.attrgetter(a) for a in ("uid", "tensor"))


def _keep(bases: list[Leaf], key: tuple, value: torch.Tensor) -> None:
    """:func:`store` of ``value``, the product of views of ``bases`` named ``key``: each tensor's
    state read once, one weak reference per other leaf (:func:`_watch`)."""
    tensors = list(map(_TENSOR, bases))  # (map over C getters: no comprehension's frame)
    if _unkept[0] or value.numel() > max(map(torch.Tensor.numel, tensors)):
        return
    if not caches(tensors):
        return  # the value has no graph, or the call is differentiated (lazymat.caching)
    owner = bases[0]
    cache = owner._cache_dict
    products = cache.get(_SLOT) if cache else None
    if products is None:
        products = owner._cache[_SLOT] = _Products()
        products.ref = _Handle(products, _owners.discard)
        _owners.add(products.ref)
    hit = products.get(key)
    states = tuple(map(tensor_state, tensors))
    if hit is None:
        products[key] = (states, value, _watch(owner, bases, products.ref, key))
        if len(products) > MAX_PRODUCTS_PER_LEAF:
            products.popitem(last=False)
    else:
        products[key] = (states, value, hit[2])
        products.move_to_end(key)


def _watch(owner: Leaf, bases: list[Leaf], products: weakref.ref, key: tuple) -> tuple[weakref.ref, ...]:
    """Weak references to the leaves other than ``owner`` among ``bases``, whose callback drops
    the entry ``key`` from ``products`` (the owner's) when one is freed. Held by the entry
    itself, they go with it (cheaper than a ``weakref.finalize`` per leaf, which a global
    registry holds)."""
    forget = functools.partial(_forget, products, key)
    if len(bases) == 2:  # the commonest span (a batch's two unbatched leaves)
        other = bases[1]
        return () if other is owner else (weakref.ref(other, forget),)
    others = {id(b): b for b in bases[1:] if b is not owner}
    return tuple([weakref.ref(other, forget) for other in others.values()])


def _forget(products_ref: weakref.ref, key: tuple, _: weakref.ref | None = None) -> None:
    products = products_ref()
    if products is not None:
        products.pop(key, None)


def holds_none(bases: list) -> bool:
    """True when none of ``bases`` (the bases of a product's views) holds a product: an
    unbatched product of them has nothing to find (it keeps nothing either)."""
    if not _owners:  # no leaf holds any (one check)
        return True
    return not any(type(base) is Leaf and _products(base) for base in bases)


def _products(leaf: Leaf) -> OrderedDict | None:
    """The products kept on ``leaf``, if any (read without making the leaf a cache)."""
    cache = leaf._cache_dict
    return cache.get(_SLOT) if cache else None


def leaf_products(term: Term, plan: ChainPlan) -> tuple[Mapping, AbstractSet, Mapping]:
    """The steps whose product spans only unbatched leaf views, as large as such spans get
    in the plan: ``found`` (step -> product cached on the leaves), ``skip`` (slots, factors
    or steps, that only feed a found product) and ``keep`` (step -> views, products to cache:
    the term has a batch, so the step is computed once for all of it). Callers only read
    them (the empty answer is one shared object)."""
    factors = term.factors
    batched = len(term.shape) > 2 and math.prod(term.shape[:-2]) > 1
    if not batched and (not _owners or holds_none([v.base for v in factors])):
        return _NONE_FOUND  # nothing cached to find, nothing to keep (the common case)
    n = len(factors)
    pure = [is_unbatched_leaf_view(v) for v in factors]
    if sum(pure) < 2 or not plan.program:
        return _NONE_FOUND
    consumer: dict[int, int] = {}
    for step, (a, b) in enumerate(plan.program):
        pure.append(pure[a] and pure[b])
        consumer[a] = consumer[b] = n + step
    found: dict[int, torch.Tensor] = {}
    keep: dict[int, tuple] = {}
    skip: set[int] = set()
    for step, st in enumerate(plan.steps):
        slot = n + step
        if not pure[slot] or (slot in consumer and pure[consumer[slot]]):
            continue
        views = factors[st.left[0] : st.right[1] + 1]
        hit = lookup(views)
        if hit is not None:
            found[step] = hit
            skip |= slots_below(plan.program, n, step)
        elif batched and worth_keeping(plan.steps, plan.program, n, step):
            keep[step] = views
    return found, skip, keep
