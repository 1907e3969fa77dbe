"""The fixed costs of a small compiled eigvals call (issue 12, item 4), cut without changing an
answer: its core is checked finite on the host (entries read back and summed) when small, and
its eigenvalues are ordered on the host from the values read back (``linalg.compiled._host_order``), with
torch's own moduli asked only for a near tie. Answers are compared bit for bit with the general
path (the compiled calls switched off) and with torch's stable sort by its own moduli, and in
value with float64 torch."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compiled_calls import general_path
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close


class AtenCalls(TorchDispatchMode):
    """The ATen operators called inside ``with AtenCalls() as calls:`` (``calls.names``)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def same(a, b):
    """Equal bit for bit (NaN where NaN), same dtype and shape."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a, b)
    assert torch.equal(a.isnan(), b.isnan()), (a, b)
    assert torch.equal(a.nan_to_num(), b.nan_to_num()), (a, b)


def torch_order(t: torch.Tensor) -> list[int]:
    """_sort_desc's order: a stable sort of torch's moduli, descending."""
    return torch.argsort(t.abs(), descending=True, stable=True).tolist()


def host_order(t: torch.Tensor) -> list[int] | None:
    real = t.real.dtype
    values = t.tolist()
    finfo = torch.finfo(real)
    return LA.compiled._host_order(values, list(map(abs, values)), 4 * finfo.eps, finfo.tiny)


def near_ties(draw_base, dtype):
    """Complex values of few moduli, each drawn again moved by a few ulps, with its parts swapped
    or signs flipped, or as the real number of its modulus: ties and near ties of every kind."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32

    def moved(v: float, ulps: int) -> float:
        t = torch.tensor(v, dtype=real)
        for _ in range(abs(ulps)):
            t = torch.nextafter(t, torch.tensor(math.inf if ulps > 0 else -math.inf, dtype=real))
        return t.item()

    kinds = st.sampled_from(["same", "conj", "neg", "swap", "real", "ulp"])
    picked = st.tuples(st.sampled_from(draw_base), kinds, st.integers(-3, 3))
    return st.lists(picked, min_size=1, max_size=10).map(
        lambda picks: [{"same": complex(a, b), "conj": complex(a, -b), "neg": complex(-a, b),
                        "swap": complex(b, a), "real": complex(math.hypot(a, b), 0.0),
                        "ulp": complex(moved(a, k), b)}[how] for (a, b), how, k in picks])


BASE = [(3.0, 4.0), (5.0, 0.0), (1.0, 1.0), (0.6, 0.8), (1e-3, 2.5e-3), (0.0, 0.0), (1e-41, 0.0),
        (7.0, -1e-7)]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([torch.complex64, torch.complex128]))
def test_host_order_is_torchs_stable_sort_or_defers(data, dtype):
    """Whenever the host order is given it is torch's stable sort by torch's own moduli, near
    ties of every kind included (an order by the host's moduli alone misorders some)."""
    values = data.draw(near_ties(BASE, dtype))
    t = torch.tensor(values, dtype=dtype)
    order = host_order(t)
    if order is not None:
        assert order == torch_order(t), (t, t.abs())


def test_host_order_defers_on_a_near_tie_and_keeps_exact_ones():
    """3 + 4i against 5 (equal moduli in exact arithmetic, parts that differ): torch's moduli
    decide; a conjugate pair and +-a keep the solver's order without asking."""
    assert host_order(torch.tensor([5.0, 3 + 4j], dtype=torch.complex128)) is None
    for values in ([1 - 2j, 1 + 2j, -3.0], [2.0, -2.0, 1 + 1j, 1 - 1j]):
        for dtype in (torch.complex64, torch.complex128):
            t = torch.tensor(values, dtype=dtype)
            assert host_order(t) == torch_order(t)


def block_matrix(pairs: list[complex], dtype: torch.dtype) -> torch.Tensor:
    """A real block-diagonal matrix with eigenvalues ``a +- bi`` for each ``a + bi`` (a real
    entry for ``b == 0``), in a random basis kept exact: blocks permuted only."""
    blocks = [torch.tensor([[v.real]]) if v.imag == 0 else torch.tensor([[v.real, -v.imag], [v.imag, v.real]])
              for v in pairs]
    return torch.block_diag(*blocks).to(dtype)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]), full=st.booleans())
def test_compiled_eigvals_of_near_ties_are_the_general_paths(data, dtype, full):
    """eigvals of ``A @ I @ I`` with eigenvalues of near-equal moduli (a block matrix: the
    solver's values are exact or within rounding): the compiled call's host order is the general
    path's stable sort, bit for bit, and the values are float64 torch's."""
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    pairs = data.draw(near_ties(BASE[:5], cdtype))
    A = block_matrix(pairs, dtype)
    n = A.shape[0]
    I = torch.eye(n, dtype=dtype)
    LA.eigvals(lm.lazy(A) @ lm.lazy(I) @ lm.lazy(I), full=full)  # compiles the structure's call
    got = LA.eigvals(lm.lazy(A) @ lm.lazy(I) @ lm.lazy(I), full=full)
    with general_path():
        want = LA.eigvals(lm.lazy(A) @ lm.lazy(I) @ lm.lazy(I), full=full)
    same(got, want)
    ref = torch.linalg.eigvals(A.double())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(got.to(torch.complex128).abs(), ref.abs().sort(descending=True).values, rtol=tol, atol=tol)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), r=st.integers(1, 14), extra=st.integers(0, 4),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64, torch.complex128]),
       bad=st.sampled_from([None, math.inf, -math.inf, math.nan, "huge"]))
def test_compiled_eigvals_with_non_finite_or_huge_entries_are_the_general_paths(data, dtype, r, extra, bad):
    """A core, real or complex, with an inf or NaN entry (the host check below
    HOST_CHECK_ENTRIES, the reduction above it) or entries whose sum overflows though each is
    finite: the same answer as the general path (NaN for a non-finite member), and for finite
    data float64 torch's values."""
    n = r + extra
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    A, B = torch.randn(n, r, generator=gen, dtype=dtype), torch.randn(r, n, generator=gen, dtype=dtype)
    LA.eigvals(lm.lazy(A) @ lm.lazy(B), full=True)  # compiled on finite data
    if bad == "huge":  # finite entries whose sum passes the dtype's range (float64: the host's too)
        A = A * (torch.finfo(dtype).max / 4 / A.abs().max())
    elif bad is not None:
        A[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, r - 1))] = bad
    got = LA.eigvals(lm.lazy(A) @ lm.lazy(B), full=True)
    with general_path():
        want = LA.eigvals(lm.lazy(A) @ lm.lazy(B), full=True)
    same(got, want)
    if bad is None:
        wide = torch.complex128 if dtype.is_complex else torch.float64
        ref = torch.linalg.eigvals(B.to(wide) @ A.to(wide))
        tol = 1e-9 if dtype in (torch.float64, torch.complex128) else 2e-3
        top = ref.abs().max().item()
        assert_close(got[:r].to(torch.complex128).abs(), ref.abs().sort(descending=True).values,
                     rtol=tol, atol=tol * top)


@pytest.mark.parametrize("r", [8, 16])
def test_a_small_compiled_eigvals_call_runs_eig_and_no_reduction_or_abs(r):
    """Below HOST_CHECK_ENTRIES the core is checked on the host (no reduction), and without a
    near tie the order needs no ``abs`` kernel; above it one reduction checks the core."""
    gen = torch.Generator().manual_seed(5)
    A, B = torch.randn(2 * r, r, generator=gen), torch.randn(r, 2 * r, generator=gen)
    LA.eigvals(lm.lazy(A) @ lm.lazy(B))
    with AtenCalls() as calls:
        torch.linalg.eigvals(lm.lazy(A) @ lm.lazy(B))
    names = set(calls.names)
    assert "linalg_eig" in names, names
    assert "abs" not in names, names
    assert ("linalg_vector_norm" in names) == (r * r > LA.compiled.HOST_CHECK_ENTRIES), names
