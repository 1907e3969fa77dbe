"""Products over broadcast batches never materialise the broadcast: ``torch.matmul`` of a
``(a, 1, m, k)`` and a ``(1, b, k, n)`` operand copies both to the full ``a x b`` batch before
its GEMM (``a b`` times each operand's size, far above the result for all-pairs circuits), and
no plan or budget counts those copies. Checked by recording, with a dispatch mode, every new
storage that an aten op allocates while lazymat runs: none may exceed the predicted peak or
the largest leaf (one operand laid out again for its GEMM), past small temporaries."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close, randn


class Allocations(TorchDispatchMode):
    """The byte size of every storage an aten op creates (outputs that are not views of an
    input), in ``with Allocations() as allocs:``; ``allocs.largest`` is the biggest."""

    def __init__(self):
        super().__init__()
        self.sizes = [0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if t.untyped_storage().data_ptr() not in seen:
                self.sizes.append(t.untyped_storage().nbytes())
        return out

    @property
    def largest(self) -> int:
        return max(self.sizes)


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


SMALL = 2**14  # bytes: temporaries below this are not what the test is about


def allowed(peak: int, *leaves: torch.Tensor) -> int:
    return max(peak, SMALL, *(t.numel() * t.element_size() for t in leaves))


def pairs(gen, a, b, m, k, n):
    """``A_i B_j`` over all pairs (i, j), contracting the long ``k``: (lazy, dense)."""
    A, B = randn(gen, a, 1, m, k), randn(gen, b, k, n)
    return lm.lazy(A) @ lm.lazy(B), A @ B, (A, B)


def test_all_pairs_product_allocates_no_broadcast_copy(gen):
    """12 x 12 pairs of (4 x 2000) @ (2000 x 4): the result holds 144 x 4 x 4 entries, the
    broadcast copies 144 x 4 x 2000 each."""
    X, D, leaves = pairs(gen, 12, 12, 4, 2000, 4)
    peak = lm.explain(X).planned.peak_bytes
    with Allocations() as allocs:
        out = X.to_dense()
    assert_close(out, D)
    assert allocs.largest <= allowed(peak, *leaves), (allocs.largest, peak)


def test_spectrum_of_all_pairs_circuits_allocates_no_broadcast_copy(gen, monkeypatch, factored_route):
    """svdvals and svd of V_i O_i K_j Q_j^T over 6 x 6 pairs (d_model 120, d_head 4): no side
    is copied per pair beyond what explain predicts."""
    V, O = randn(gen, 6, 1, 120, 4), randn(gen, 6, 1, 4, 80)
    K, Q = randn(gen, 6, 80, 4), randn(gen, 6, 120, 4)
    X = lm.lazy(V) @ lm.lazy(O) @ lm.lazy(K) @ lm.lazy(Q).mT
    want = torch.linalg.svdvals(V @ O @ K @ Q.mT)[..., :4]
    for op in ("svdvals", "svd"):
        X.clear_cache()
        peak = lm.explain(X, op).planned.peak_bytes
        with Allocations() as allocs:
            got = getattr(LA, op)(X)
        S = got if op == "svdvals" else got[1]
        assert_close(S, want, rtol=1e-9)
        assert allocs.largest <= allowed(peak, V, O, K, Q), (op, allocs.largest, peak)
    factored_route.assert_forced(X)


@settings(max_examples=30, deadline=None)
@given(a=st.integers(2, 5), b=st.integers(2, 5), m=st.integers(1, 6), k=st.integers(1, 900),
       n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_broadcast_products_stay_within_the_predicted_peak(a, b, m, k, n, seed):
    """Random all-pairs products: no allocation above the predicted peak (past small
    temporaries), and the values equal dense float64."""
    gen = torch.Generator().manual_seed(seed)
    X, D, leaves = pairs(gen, a, b, m, k, n)
    peak = lm.explain(X).planned.peak_bytes
    with Allocations() as allocs:
        got = X.to_dense()
    assert allocs.largest <= allowed(peak, *leaves), (allocs.largest, peak)
    assert_close(got, D, rtol=1e-9)
