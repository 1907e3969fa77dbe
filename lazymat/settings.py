"""Process-wide settings: which opt_einsum optimizer plans products, and how large a dense
matrix an implicit conversion (``np.asarray(X)``, a library that converts its argument) may build.

``lm.config(optimize="dp")`` sets it; used as a context manager it restores the old value:

    >>> import lazymat as lm
    >>> X = lm.symbol("A", (100, 10)) @ lm.symbol("B", (10, 100)) @ lm.symbol("C", (100, 5))
    >>> with lm.config(optimize="left-to-right"):
    ...     X.plan().flops
    300000
    >>> X.plan().flops
    20000
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPTIMIZERS", "config", "get"]

OPTIMIZERS = ("auto", "optimal", "dp", "greedy", "branch-2", "left-to-right")

# np.asarray(X) from a third-party library looks harmless; past this size it is refused with the
# dense size named, so a vocab x vocab circuit is never built by accident (X.to_dense() is explicit
# and never limited). 1 GiB: any analysis result a person plots fits well below it.
DEFAULT_IMPLICIT_DENSE_LIMIT = 2**30

_settings: dict[str, Any] = {"optimize": "auto", "implicit_dense_limit": DEFAULT_IMPLICIT_DENSE_LIMIT}

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def get(name: str) -> Any:
    """The current value of setting ``name`` (``"optimize"``)."""
    return _settings[name]


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
    """Set options now; as a context manager, restore the previous ones on exit."""

    def __init__(self, optimize: str | None = None, implicit_dense_limit: int | str | None = None):
        self._old = dict(_settings)
        if optimize is not None and optimize not in OPTIMIZERS:
            raise ValueError(f"optimize must be one of {OPTIMIZERS}, got {optimize!r}")
        limit = None if implicit_dense_limit is None else parse_bytes(
            implicit_dense_limit, "implicit_dense_limit")
        if optimize is not None:
            _settings["optimize"] = optimize
        if limit is not None:
            _settings["implicit_dense_limit"] = limit

    def __enter__(self) -> config:
        return self

    def __exit__(self, *exc: object) -> None:
        _settings.clear()
        _settings.update(self._old)
