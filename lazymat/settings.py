"""Process-wide settings: which opt_einsum optimizer plans products.

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

_settings: dict[str, Any] = {"optimize": "auto"}


def get(name: str) -> Any:
    """The current value of setting ``name`` (``"optimize"``)."""
    return _settings[name]


class config:  # noqa: N801 - used like a function: lm.config(optimize=...)
    """Set options now; as a context manager, restore the previous ones on exit."""

    def __init__(self, optimize: str | None = None):
        self._old = dict(_settings)
        if optimize is not None:
            if optimize not in OPTIMIZERS:
                raise ValueError(f"optimize must be one of {OPTIMIZERS}, got {optimize!r}")
            _settings["optimize"] = optimize

    def __enter__(self) -> config:
        return self

    def __exit__(self, *exc: object) -> None:
        _settings.clear()
        _settings.update(self._old)
