"""MKL's error printer silenced while lazymat's own LAPACK calls run.

An SVD that MKL's LAPACK runs on a matrix with an infinite entry writes "Intel oneMKL ERROR:
Parameter 4 was incorrect on entry to SLASCL" on the process's stdout (its scaling routine
refuses inf) and answers NaN. lazymat answers such a batch member NaN itself, after the fact
(from the norm of the singular values, which it reads anyway), so the message is only noise on
the user's terminal; checking every matrix before LAPACK would cost a reduction and a device
read per call.

:data:`quiet` swaps MKL's printer (its ``xerbla``, through ``mkl_serv_set_xerbla`` of the MKL
that torch links) for a silent one inside the block and puts the previous one back after: no
torch operation, two C calls. Blocks entered from several threads at once share one swap
(counted under a lock). Where torch carries no such MKL (another platform or BLAS), nothing is
swapped.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable

import torch

__all__ = ["quiet"]

_XERBLA = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int)


@_XERBLA
def _silent(name: bytes, info: ctypes.c_void_p, length: int) -> None:
    """MKL's ``xerbla(routine, parameter, name length)``: the message is dropped."""


_SILENT_ADDRESS = ctypes.cast(_silent, ctypes.c_void_p).value


@functools.cache
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
    """A reusable, re-entrant context: MKL prints nothing inside any block. Entered on every
    small decomposition (after LAPACK, with cold caches), so it does the least: two C calls
    and a lock, MKL's setter looked up once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._previous: int | None = None
        self._swap: Callable[[int | None], int | None] | None | bool = None  # looked up on first use

    def __enter__(self) -> None:
        swap = self._swap
        if swap is None:
            swap = self._swap = _set_xerbla() or False
        if swap:
            with self._lock:
                if self._depth == 0:
                    self._previous = swap(_SILENT_ADDRESS)
                self._depth += 1

    def __exit__(self, *exc: object) -> None:
        swap = self._swap
        if swap:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    swap(self._previous)


quiet = _Quiet()
