"""Progress bars for long sliced or streamed evaluations.

A bar is shown only when it helps: tqdm is installed (an optional dependency, extra
``progress``), ``lm.config(progress=...)`` is on (the default), stderr is a terminal, and the
work is estimated to take at least :data:`MIN_SECONDS`. Otherwise the blocks are iterated
plainly, at no cost.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from . import settings

__all__ = ["MIN_SECONDS", "blocks"]

T = TypeVar("T")

MIN_SECONDS = 2.0  # a bar on shorter work only flickers


def _wanted(estimate_seconds: float | None) -> bool:
    if not settings.get("progress"):
        return False
    if estimate_seconds is not None and estimate_seconds < MIN_SECONDS:
        return False
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def blocks(items: Iterable[T], total: int | None = None, desc: str = "lazymat",
           estimate_seconds: float | None = None, unit: str = "block") -> Iterator[T]:
    """Iterate ``items``, with a tqdm bar on stderr when one is wanted (see module docs)."""
    if _wanted(estimate_seconds):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False)
            return
    yield from items
