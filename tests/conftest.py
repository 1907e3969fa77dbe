"""Shared fixtures: seeded float64 data and a CUDA marker that skips without a GPU."""

import contextlib
import os

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
