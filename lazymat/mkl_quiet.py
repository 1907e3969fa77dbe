"""MKL's error printer silenced while lazymat's own LAPACK calls run.

An SVD that MKL's LAPACK runs on a matrix with an infinite entry writes "Intel oneMKL ERROR:
Parameter 4 was incorrect on entry to SLASCL" on the process's stdout (its scaling routine
refuses inf) and answers NaN. lazymat answers such a batch member NaN itself, after the fact
(from the norm of the singular values, which it reads anyway), so the message is only noise on
the user's terminal; checking every matrix before LAPACK would cost a reduction and a device
read per call.

On first use, :data:`quiet` puts a filter in front of MKL's printer (its ``xerbla``, through
``mkl_serv_set_xerbla`` of the MKL that torch links): a message raised while a block is open
is dropped, any other goes to the printer that was there before, so the user's own calls print
as they did. The filter stays (put back at exit): entering and leaving a block is then a list
append and pop, no C call; after LAPACK, where every line runs with cold caches, that is
all a small decomposition pays. Blocks open in several threads at once count alike (a message
raised in any thread while one is open is dropped). Where torch carries no such MKL (another
platform or BLAS), nothing is filtered.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import threading
from collections.abc import Callable

import torch

__all__ = ["quiet"]

_XERBLA = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int)


def _set_xerbla() -> Callable[[int | None], int | None] | None:
    """MKL's ``mkl_serv_set_xerbla`` (returns the printer it replaces) from torch's library;
    None when torch was built without it."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(lib).mkl_serv_set_xerbla
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    return fn


class _Quiet:
    """A reusable, re-entrant context: MKL prints nothing inside any block (see the module)."""

    def __init__(self) -> None:
        self._open: list[None] = []  # one entry per block open now (append and pop are atomic)
        self._installed = False
        self._lock = threading.Lock()
        self._filter: Callable | None = None  # the C callback MKL holds (kept alive here)
        self._previous: Callable | None = None  # the printer messages outside a block go to

    def _install(self) -> None:
        """Put the filter in front of MKL's printer, once (a no-op without MKL)."""
        with self._lock:
            if self._installed:
                return
            swap = _set_xerbla()
            if swap is not None:
                self._filter = _XERBLA(self._message)
                previous = swap(ctypes.cast(self._filter, ctypes.c_void_p).value)
                if previous:
                    self._previous = _XERBLA(previous)
                    atexit.register(swap, previous)
                else:  # no printer to pass messages on to: leave MKL's as it was
                    swap(None)
                    self._filter = None
            self._installed = True

    def _message(self, name: bytes, info: ctypes.c_void_p, length: int) -> None:
        """MKL's ``xerbla(routine, parameter, name length)``: dropped inside a block."""
        if not self._open:
            self._previous(name, info, length)

    def __enter__(self) -> None:
        if not self._installed:
            self._install()
        self._open.append(None)

    def __exit__(self, *exc: object) -> None:
        self._open.pop()

    def blocks(self) -> list[None]:
        """The list of open blocks (the filter installed first): a hot caller opens a block by
        appending to it and closes it by popping, inline, without :meth:`call`'s frame."""
        if not self._installed:
            self._install()
        return self._open

    def call(self, fn: Callable, arg: object) -> object:
        """``fn(arg)`` inside a block: as ``with quiet: fn(arg)``, in one Python call (after a
        LAPACK call every further function runs from cold caches)."""
        if not self._installed:
            self._install()
        opened = self._open
        opened.append(None)
        try:
            return fn(arg)
        finally:
            opened.pop()


quiet = _Quiet()
