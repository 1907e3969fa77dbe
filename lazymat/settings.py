"""Process-wide settings: which opt_einsum optimizer plans products, how large a dense matrix an
implicit conversion (``np.asarray(X)``, a library that converts its argument) may build, how much
memory one evaluation may use (``memory_budget``) and in how many slices at most it may run to
fit it (``max_slices``), and whether long work shows a progress bar.

``lm.config(optimize="dp")`` sets it; used as a context manager it sets it for the block, in this
thread (or asyncio task) only, and the old value holds again on exit:

    >>> import lazymat as lm
    >>> X = lm.symbol("A", (100, 10)) @ lm.symbol("B", (10, 100)) @ lm.symbol("C", (100, 5))
    >>> with lm.config(optimize="left-to-right"):
    ...     X.plan().flops
    300000
    >>> X.plan().flops
    20000
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import torch

__all__ = ["ALWAYS_FITS", "BUDGET_FRACTION", "DEFAULT_MAX_SLICES", "OPTIMIZERS", "BudgetTooSmall",
           "available_memory", "blas_workspace", "config", "format_bytes", "get", "memory_budget",
           "default_budget", "parse_bytes", "scoped"]

OPTIMIZERS = ("auto", "optimal", "dp", "greedy", "branch-2", "left-to-right")
QR_ROUTES = ("auto", "householder", "cholesky")  # see lazymat.qr
QR_SIDES = ("auto", "separate", "stacked")  # see lazymat.linalg.spectrum.stacks_sides
SMALL_CORE_PLACEMENTS = ("auto", "cpu", "device")  # see lazymat.linalg.CPU_CORE_LIMIT

# np.asarray(X) from a third-party library looks harmless; past this size it is refused with the
# dense size named, so a vocab x vocab circuit is never built by accident (X.to_dense() is explicit
# and never limited). 1 GiB: any analysis result a person plots fits well below it.
DEFAULT_IMPLICIT_DENSE_LIMIT = 2**30

# With no budget set, one evaluation may use this fraction of the memory free on its device at
# call time: the rest is headroom for the caching allocator's fragmentation (on a GPU), for the
# operands and the result (which the budget does not count), and for whatever else the process
# holds. A half keeps an analysis from starving the program it runs in, and still lets all-pairs
# composition of a 7B-parameter model run unsliced on an 80 GB GPU.
BUDGET_FRACTION = {"cuda": 0.5, "cpu": 0.5}

# With no budget set, work below this runs without asking the device for its free memory (a
# ~30 us read of /proc/meminfo): every device lazymat runs on has 16 MiB free, so small
# expressions pay nothing for the budget.
ALWAYS_FITS = 16 * 2**20

# A sliced plan (an evaluation filled in blocks, a closed network looped over blocks of labels)
# may take at most this many slices; a budget that needs more is refused (BudgetTooSmall names
# the least budget within the bound). Below it, a tiny budget would cut a network into millions
# of pieces (every label halved) and recompute it for each, running for minutes or hours.
DEFAULT_MAX_SLICES = 2**16

_settings: dict[str, Any] = {"optimize": "auto", "implicit_dense_limit": DEFAULT_IMPLICIT_DENSE_LIMIT,
                             "memory_budget": None, "progress": True, "qr": "auto",
                             "qr_sides": "auto", "small_cores": "auto", "max_slices": DEFAULT_MAX_SLICES}
# The settings of the ``with lm.config(...)`` blocks (and of a call's own ``memory_budget=``) active
# in this thread or task, over the process-wide ones: one thread's block is not another's, and
# blocks that end in any order leave nothing behind (a process-wide dict restored on exit let one
# thread's 1 KiB budget refuse another's calls, and could restore it after both had ended).
_scope: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "lazymat_settings_scope", default=MappingProxyType({}))

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class BudgetTooSmall(ValueError):
    """A memory budget below what the smallest block of an evaluation needs; raised before
    anything runs, never answered by an unbudgeted run.

    ``budget`` is the budget in bytes as set (a call's ``memory_budget=``, ``lm.config``, or
    the default), ``minimum`` the smallest budget in bytes with which the same call runs, and
    ``device`` the device it runs on. Every raise site passes what it was evaluating
    (``context``: the operation, shape and dtype) and what the smallest block is (``block``);
    the message is formatted here so that all of them read alike."""

    def __init__(self, context: str, block: str, budget: int, need: int, device: torch.device | str):
        self.device = torch.device(device)
        self.context, self.block = context, block
        reserve = blas_workspace(self.device)
        self.budget = int(budget) + reserve
        self.minimum = int(need) + reserve
        held = (f" (of which {format_bytes(reserve)} is held back for the BLAS library's workspace, "
                "see lazymat.settings.blas_workspace)" if reserve else "")
        super().__init__(
            f"{context}: a memory budget of {self.budget} bytes ({format_bytes(self.budget)}) on "
            f"{self.device}{held} is below the {self.minimum} bytes ({format_bytes(self.minimum)}) that "
            f"{block} needs; raise memory_budget to at least {self.minimum} bytes")

    def within(self, call: str) -> BudgetTooSmall:
        """This error as the user's ``call`` raises it (``"eigvalsh of a (64, 1000, 1000) float64
        expression"``): the step that refused (an internal SVD, a core formed) named after it;
        itself when it names that call already (or was unpickled: its parts are gone)."""
        if self.context is None or self.context.startswith(call):
            return self
        reserve = blas_workspace(self.device)
        return BudgetTooSmall(f"{call}, at its step {self.context}", self.block, self.budget - reserve,
                              self.minimum - reserve, self.device)

    def __reduce__(self):  # pickles (multiprocessing, pytest-xdist) despite the keyword-rich init
        return _rebuild_budget_error, (self.args[0], self.budget, self.minimum, str(self.device))


def _rebuild_budget_error(message: str, budget: int, minimum: int, device: str) -> BudgetTooSmall:
    err = BudgetTooSmall.__new__(BudgetTooSmall)
    ValueError.__init__(err, message)
    err.budget, err.minimum, err.device = budget, minimum, torch.device(device)
    err.context = err.block = None
    return err


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``"512 B"``, ``"1.5 MiB"``, ``"9.41 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


def get(name: str) -> Any:
    """The current value of setting ``name`` (``"optimize"``, ``"memory_budget"``, ...): the
    innermost ``with lm.config(...)`` block's of this thread, else the process-wide one."""
    scope = _scope.get()
    return scope[name] if name in scope else _settings[name]


def available_memory(device: torch.device | str) -> int:
    """Bytes free for new allocations on ``device`` now: the CUDA driver's free memory plus what
    torch's caching allocator holds unused, or the operating system's available RAM."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device here to read the free memory of {device}: give the call a "
                           "memory_budget= (or set lm.config(memory_budget=...)) to plan or cost on it")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other POSIX systems: free pages (an underestimate: the OS cache is not counted)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # no way to ask: assume a modest machine


def memory_budget(device: torch.device | str, override: int | str | None = None) -> int:
    """Bytes one evaluation on ``device`` may use for intermediates: ``override`` (a call's own
    ``memory_budget=``), else ``lm.config(memory_budget=...)``, else :data:`BUDGET_FRACTION` of
    :func:`available_memory`; less, on a GPU, the BLAS workspace no plan counts
    (:func:`blas_workspace`), so that the memory measured stays within the budget set."""
    device = torch.device(device)
    if override is not None:
        chosen = parse_bytes(override, "memory_budget")
    elif get("memory_budget") is not None:
        chosen = get("memory_budget")
    else:
        chosen = int(BUDGET_FRACTION.get(device.type, 0.5) * available_memory(device))
    return chosen if device.type == "cpu" else max(0, chosen - blas_workspace(device))


# Default workspace sizes in KiB, as torch 2.x sets them (aten/src/ATen/cuda/CublasHandlePool.cpp:
# parseChosenWorkspaceSize, parseCUDABlasLtWorkspaceSize).
_BLAS_KIB = {"sm90": 4096 * 8, "cuda": 4096 * 2 + 16 * 8, "rocm": 1024 * 32, "rocm-gfx94/95": 1024 * 128}
_BLASLT_KIB = {"cuda": 1024, "rocm": 76 * 1024}
_blas_workspaces: dict[str, int] = {}


def blas_workspace(device: torch.device | str) -> int:
    """Bytes the BLAS library keeps on ``device`` once the first matrix product has run: torch
    gives each (cuBLAS handle, stream) pair a workspace from its caching allocator on the first
    GEMM and holds it for the life of the process, so it counts in ``max_memory_allocated`` but
    in no plan's peak. :func:`memory_budget` deducts it once (lazymat runs on one handle and
    stream per thread). The sizes are torch's (``aten/src/ATen/cuda/CublasHandlePool.cpp``):
    ``CUBLAS_WORKSPACE_CONFIG`` (``":SIZE:COUNT"`` pairs, SIZE in KiB) if set, else 32 MiB on
    Hopper (sm90) and 4096 KiB x 2 + 16 KiB x 8 = 8.125 MiB on other GPUs (ROCm: 32 MiB, 128 MiB
    on gfx94x/gfx95x); plus cuBLASLt's own (``CUBLASLT_WORKSPACE_SIZE`` KiB, default 1 MiB, at
    most the cuBLAS one; ROCm: 76 MiB) unless ``TORCH_CUBLASLT_UNIFIED_WORKSPACE=1`` shares one.
    0 on the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return 0
    key = str(device)
    hit = _blas_workspaces.get(key)
    if hit is None:
        hit = _blas_workspaces[key] = _blas_workspace_bytes(device)
    return hit


def _blas_workspace_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    rocm = torch.version.hip is not None
    try:
        props = torch.cuda.get_device_properties(device)
    except (AssertionError, RuntimeError):  # costing a CUDA plan (symbols) with no GPU to ask
        props = None                        # (torch asserts it was built with CUDA): its defaults
    if props is None:
        kind = "rocm" if rocm else "cuda"
    elif rocm:
        kind = "rocm-gfx94/95" if getattr(props, "gcnArchName", "").startswith(("gfx94", "gfx95")) else "rocm"
    else:
        kind = "sm90" if (props.major, props.minor) == (9, 0) else "cuda"
    pairs = re.findall(r":([0-9]+):([0-9]+)", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    blas_kib = sum(int(size) * int(count) for size, count in pairs) if pairs else _BLAS_KIB[kind]
    lt_text = os.environ.get("CUBLASLT_WORKSPACE_SIZE", "").strip()
    lt_kib = int(lt_text) if lt_text.isdigit() else _BLASLT_KIB["rocm" if rocm else "cuda"]
    if os.environ.get("TORCH_CUBLASLT_UNIFIED_WORKSPACE", "").strip().lower() in ("1", "true", "yes", "on"):
        lt_kib = 0  # cuBLASLt runs in the cuBLAS workspace
    elif not rocm:
        lt_kib = min(lt_kib, blas_kib)
    return (blas_kib + lt_kib) * 1024


def parse_bytes(value: int | float | str, what: str = "size") -> int:
    """Bytes from a number or a string such as ``"8GiB"``, ``"512 MB"`` or ``"1e9"``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of bytes or a string like '8GiB', got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if text.endswith(u)), "b")
        number = text[: len(text) - len(unit)] if text.endswith(unit) else text
        try:
            value = float(number) * _UNITS[unit]
        except ValueError:
            raise ValueError(f"{what} {value!r} is not a size (examples: 1048576, '512MiB', '8GB')") from None
    elif not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of bytes or a string like '8GiB', got {value!r}")
    if value != value or value < 0 or value == float("inf"):
        raise ValueError(f"{what} must be a finite number of bytes >= 0, got {value!r}")
    return int(value)


class config:  # noqa: N801 - used like a function: lm.config(optimize=...)
    """Set options now, for the whole process; as a context manager, for the block only and in
    this thread (or asyncio task) only: other threads keep theirs, and the previous ones are in
    force again on exit. An option left None is unchanged; ``memory_budget="default"`` sets no
    budget (:func:`memory_budget`'s default fraction of the free memory)."""

    def __init__(self, optimize: str | None = None, implicit_dense_limit: int | str | None = None,
                 memory_budget: int | str | None = None, progress: bool | None = None,
                 qr: str | None = None, small_cores: str | None = None, max_slices: int | None = None,
                 qr_sides: str | None = None):
        self._new = _checked(optimize=optimize, implicit_dense_limit=implicit_dense_limit,
                             memory_budget=memory_budget, progress=progress, qr=qr,
                             small_cores=small_cores, max_slices=max_slices, qr_sides=qr_sides)
        self._old = {k: _settings[k] for k in self._new}
        _settings.update(self._new)
        self._token: contextvars.Token | None = None
        # a plain call inside a block sets the block's values too (else the block would hide them
        # until it ends); a `with` takes this back on entering, for its own token
        scope = _scope.get()
        self._inside = _scope.set({**scope, **self._new}) if any(k in scope for k in self._new) else None

    def __enter__(self) -> config:
        for k, v in self._old.items():  # the block's values are its own: the process-wide ones back
            if _settings[k] is self._new[k]:
                _settings[k] = v
        if self._inside is not None:
            _scope.reset(self._inside)
            self._inside = None
        self._token = _scope.set({**_scope.get(), **self._new})
        return self

    def __exit__(self, *exc: object) -> None:
        _scope.reset(self._token)


@contextlib.contextmanager
def scoped(**options: Any) -> Iterator[None]:
    """``with lm.config(**options)`` for lazymat's own calls (a call's ``memory_budget=``): the
    options hold in this thread for the block, and never touch the process-wide ones."""
    token = _scope.set({**_scope.get(), **_checked(**options)})
    try:
        yield
    finally:
        _scope.reset(token)


@contextlib.contextmanager
def default_budget() -> Iterator[None]:
    """No memory budget set, for the block and in this thread: each evaluation takes the default
    (:data:`BUDGET_FRACTION` of the free memory), whatever ``lm.config`` set process-wide."""
    token = _scope.set({**_scope.get(), "memory_budget": None})
    try:
        yield
    finally:
        _scope.reset(token)


def _checked(optimize: str | None = None, implicit_dense_limit: int | str | None = None,
             memory_budget: int | str | None = None, progress: bool | None = None,
             qr: str | None = None, small_cores: str | None = None,
             max_slices: int | None = None, qr_sides: str | None = None) -> dict[str, Any]:
    """The options given (None: unchanged), checked and parsed."""
    if max_slices is not None:
        if isinstance(max_slices, bool) or not isinstance(max_slices, int):
            raise TypeError(f"max_slices must be an int, got {max_slices!r}")
        if max_slices < 1:
            raise ValueError(f"max_slices must be at least 1, got {max_slices}")
    if optimize is not None and optimize not in OPTIMIZERS:
        raise ValueError(f"optimize must be one of {OPTIMIZERS}, got {optimize!r}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if qr is not None and qr not in QR_ROUTES:
        raise ValueError(f"qr must be one of {QR_ROUTES}, got {qr!r}")
    if qr_sides is not None and qr_sides not in QR_SIDES:
        raise ValueError(f"qr_sides must be one of {QR_SIDES}, got {qr_sides!r}")
    if small_cores is not None and small_cores not in SMALL_CORE_PLACEMENTS:
        raise ValueError(f"small_cores must be one of {SMALL_CORE_PLACEMENTS}, got {small_cores!r}")
    new: dict[str, Any] = {"optimize": optimize, "progress": progress, "qr": qr, "qr_sides": qr_sides,
                           "small_cores": small_cores, "max_slices": max_slices}
    if implicit_dense_limit is not None:
        new["implicit_dense_limit"] = parse_bytes(implicit_dense_limit, "implicit_dense_limit")
    if memory_budget is not None and memory_budget != "default":
        new["memory_budget"] = parse_bytes(memory_budget, "memory_budget")
    given = {k: v for k, v in new.items() if v is not None}
    if memory_budget == "default":  # no budget set: the default fraction of the free memory again
        given["memory_budget"] = None
    return given
