"""Shared fixtures: seeded float64 data and a CUDA marker that skips without a GPU."""

import contextlib
import math
import os
import sys

import pytest
import torch
from hypothesis import settings
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# CI replays the same examples on every run (a landing never hangs on a lucky draw); local runs
# keep exploring new ones. Loaded here, before the test modules build their settings objects.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def randn(gen, *shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, generator=gen, dtype=dtype).to(device)


def assert_close(actual, expected, rtol=1e-10, atol=None):
    """Relative comparison against the eager result's scale."""
    actual = actual.to(expected.dtype)
    scale = expected.abs().max().item() if expected.numel() else 1.0
    atol = atol if atol is not None else rtol * max(scale, 1e-300)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


class TorchCalls(TorchFunctionMode):
    """Records every torch function called inside ``with TorchCalls() as calls:``:
    ``calls.names`` in order, ``calls.count(name)``, the output shapes of matmuls, and
    ``calls.inputs(name)``: the shapes of the tensor arguments of each call of ``name``, and
    ``calls.reading(name, *tensors)``: how many calls read exactly those tensors' storages."""

    def __init__(self):
        super().__init__()
        self.names = []
        self.matmul_shapes = []
        self._inputs = []
        self._storages = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        self.names.append(name)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        self._inputs.append(tuple(tuple(a.shape) for a in tensors))
        self._storages.append(frozenset(a.untyped_storage().data_ptr() for a in tensors))
        if name == "matmul":
            self.matmul_shapes.append(tuple(out.shape))
        return out

    def count(self, name):
        return self.names.count(name)

    def inputs(self, name):
        return [shapes for n, shapes in zip(self.names, self._inputs, strict=True) if n == name]

    def reading(self, name, *tensors):
        """How many calls of ``name`` read exactly the storages of ``tensors`` (views included)."""
        want = frozenset(t.untyped_storage().data_ptr() for t in tensors)
        return sum(1 for n, s in zip(self.names, self._storages, strict=True) if n == name and s == want)

    def qr_inputs(self):
        """Shape of the matrix of every ``torch.linalg.qr`` call."""
        return [shapes[0] for shapes in self.inputs("linalg_qr")]


def torch_or_index_error(X, D, key):
    """``D[key]``, torch's answer; or None, once ``X[key]`` is checked to raise the IndexError
    torch raises for that key (the indexing properties' common first step)."""
    try:
        return D[key]
    except IndexError:
        with pytest.raises(IndexError):
            X[key]
        return None


@contextlib.contextmanager
def products_kept_whatever_they_cost():
    """Products of unbatched leaves kept on the leaves whatever they cost to form again
    (``product_cache.MIN_KEPT_FLOPS = 0``), for the tests of that cache, whose shapes are small;
    the plans made before (their ``shared_steps``) are dropped on the way in and out."""
    from lazymat import product_cache
    from lazymat.plan import clear_plan_tables

    saved = product_cache.MIN_KEPT_FLOPS
    product_cache.MIN_KEPT_FLOPS = 0
    clear_plan_tables()
    try:
        yield
    finally:
        product_cache.MIN_KEPT_FLOPS = saved
        clear_plan_tables()


@contextlib.contextmanager
def general_path():
    """Every linalg call answered by the general path (no compiled call is looked up)."""
    from lazymat.linalg import compiled

    saved = compiled._compiled
    compiled._compiled = lambda x, op, options: None
    try:
        yield
    finally:
        compiled._compiled = saved


@pytest.fixture(scope="module")
def every_product_kept():
    """:func:`products_kept_whatever_they_cost` for a whole module (hypothesis tests included)."""
    with products_kept_whatever_they_cost():
        yield


@pytest.fixture
def every_product_kept_here():
    """:func:`products_kept_whatever_they_cost` for one test."""
    with products_kept_whatever_they_cost():
        yield


@pytest.fixture
def network_steps(monkeypatch):
    """The pairwise steps of the closed networks run since the fixture was made (every one goes
    through ``lazymat.execute._pairwise``, as a GEMM or by ``torch.einsum``), in order:
    ``(einsum, input shapes, output shape)``."""
    from lazymat import execute

    steps = []
    real = execute._pairwise

    def record(run, operands):
        out = real(run, operands)
        steps.append((run, tuple(tuple(t.shape) for t in operands), tuple(out.shape)))
        return out

    monkeypatch.setattr(execute, "_pairwise", record)
    return steps


@pytest.fixture
def block_counts(monkeypatch):
    """Block counts of the streamed and sliced loops run since the last clear (every one goes
    through ``lazymat.progress.blocks``)."""
    from lazymat import progress

    counts = []
    real = progress.blocks

    def record(items, total=None, **kw):
        counts.append(total)
        return real(items, total=total, **kw)

    monkeypatch.setattr(progress, "blocks", record)
    return counts


class ValueReads(TorchDispatchMode):
    """Counts the values read back to the host (``_local_scalar_dense``: ``bool(t)``,
    ``t.item()``); on a GPU each one waits for the device's queue to drain."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


# aten ops that run LAPACK (or a reduction) on a whole matrix: what a route decomposes
DECOMPOSITIONS = frozenset({
    "_linalg_svd", "linalg_eig", "_linalg_eigh", "_linalg_det", "_linalg_slogdet", "linalg_qr",
    "linalg_lu_factor_ex", "linalg_lu", "_linalg_solve_ex", "linalg_inv_ex", "linalg_cholesky_ex",
    "linalg_vector_norm", "linalg_matrix_exp", "geqrf", "linalg_householder_product",
})


_LAZYMAT = os.path.dirname(os.path.abspath(__import__("lazymat").__file__)) + os.sep


def _called_by_lazymat() -> bool:
    """Whether lazymat's code is on the Python stack (the op is lazymat's, not the test's)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_LAZYMAT):
            return True
        frame = frame.f_back
    return False


# aten ops that multiply: what forms a matrix
PRODUCTS = frozenset({"mm", "bmm", "addmm", "baddbmm", "matmul", "dot", "vdot", "mv"})


class RouteRan(TorchDispatchMode):
    """Which route ran for a matrix, read off what was formed and decomposed inside ``with
    RouteRan() as ran:``: the dense route forms the matrix by a product, or hands it (or its
    transpose) to LAPACK; the factored one forms and decomposes only smaller matrices (the
    factors' QRs or Grams, a core). ``ran.route(shape)`` is ``"dense"`` when a product wrote, or
    a decomposition read, the whole batch of matrices of ``shape`` (either order), else
    ``"factored"``, or None when nothing was multiplied or decomposed at all.
    Only lazymat's own ops count: a test's torch reference inside the block is no route.
    ``ran.shapes`` lists ``(op, shape)`` for each. Shapes cannot tell the two routes apart where
    the core is as large as the matrix (a square product of full rank): see
    :func:`distinguishes`."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in DECOMPOSITIONS and name not in PRODUCTS or not _called_by_lazymat():
            return out  # (a test's own torch reference is no route)
        if name in DECOMPOSITIONS:
            self.shapes += [(name, tuple(a.shape)) for a in args
                            if isinstance(a, torch.Tensor) and a.ndim >= 2]
        elif name in PRODUCTS and isinstance(out, torch.Tensor):
            self.shapes.append((name, tuple(out.shape)))
        return out

    def route(self, shape):
        if not self.shapes:
            return None
        *batch, m, n = tuple(shape)
        count = math.prod(batch)  # the whole batch at once (a factor's Gram may be m x m alone)
        whole = any(s[-2:] in ((m, n), (n, m)) and math.prod(s[:-2]) == count
                    or s == (count * m, n) for _, s in self.shapes)  # (or written flattened, one GEMM)
        return "dense" if whole else "factored"

    forced = None  # the route forced_route forced

    def assert_forced(self, x):
        """Assert that the forced route ran for the expression ``x``, where shapes can tell
        (:func:`distinguishes`)."""
        if distinguishes(x):
            self.check(x.shape, self.forced)

    def check(self, shape, route):
        """Assert that ``route`` (``"dense"`` or ``"factored"``) ran for a matrix of ``shape``:
        for ``"factored"``, that the dense one did not (nothing multiplied at all is no dense
        route: an answer read off the leaves, or cached)."""
        ran = self.route(shape)
        assert ran == route or route == "factored" and ran is None, \
            f"forced the {route} route on {tuple(shape)}, but {ran} ran: {self.shapes}"


def distinguishes(x) -> bool:
    """Whether ``x`` has a factored route that :class:`RouteRan` can tell from the dense one: its
    narrowest inner width is below ``min(m, n)`` (at full width the factor form is the matrix
    itself, ``L`` formed ``m x n``), and its form's factors are all views of leaves (a nested
    block, a sum inside a product or a ``cat``, is formed whole, and may have the matrix's
    shape)."""
    from lazymat.core import factor
    from lazymat.expr import Leaf
    from lazymat.rewrite import canonical

    leaves = all(isinstance(f.base, Leaf) for t in canonical(x).terms for f in t.factors)
    return leaves and factor(x)[0].shape[-1] < min(x.shape[-2:])


@contextlib.contextmanager
def forced_route(route, x=None):
    """Force ``route`` for linalg inside the block: ``"factored"``, ``DENSE_MAX_ELEMENTS = 0``;
    ``"dense"``, no size limit and no fixed cost per call for the factored or reduced routes to
    undercut (a dense route still needs a single product or a sum and a fitting budget). With
    ``x``, assert on the way out that the route ran for ``x`` (:class:`RouteRan`), where shapes
    can tell (:func:`distinguishes`). Yields the recorder."""
    from unittest import mock

    from lazymat import linalg as LA

    costs = LA.costs
    with contextlib.ExitStack() as stack:
        if route == "factored":
            stack.enter_context(mock.patch.object(costs, "DENSE_MAX_ELEMENTS", 0))
        elif route == "dense":
            stack.enter_context(mock.patch.object(costs, "DENSE_MAX_ELEMENTS", math.inf))
            stack.enter_context(mock.patch.dict(costs.FACTORED_OVERHEAD_FLOPS,
                                                dict.fromkeys(costs.FACTORED_OVERHEAD_FLOPS, math.inf)))
            stack.enter_context(mock.patch.dict(costs.REDUCED_OVERHEAD_FLOPS,
                                                dict.fromkeys(costs.REDUCED_OVERHEAD_FLOPS, math.inf)))
        else:
            raise ValueError(f"route must be 'dense' or 'factored', got {route!r}")
        ran = stack.enter_context(RouteRan())
        ran.forced = route
        yield ran
    if x is not None:
        ran.assert_forced(x)


@pytest.fixture
def factored_route():
    """The factored route forced for the whole test (:func:`forced_route`); the recorder, for
    ``factored_route.assert_forced(X)`` once ``X``'s answers ran."""
    with forced_route("factored") as ran:
        yield ran


class Multiplied(TorchDispatchMode):
    """The aten ``mul``/``mul_`` calls inside ``with Multiplied() as m:`` (a coefficient's and a
    rescaling's passes): ``m.calls``, and ``m.elements``, the elements they write."""

    def __init__(self):
        super().__init__()
        self.calls = self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("mul", "mul_"):
            self.calls += 1
            self.elements += out.numel()
        return out
