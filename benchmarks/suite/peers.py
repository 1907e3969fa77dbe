"""The peers lazymat is measured against, loaded when installed (``pip install lazymat[bench]``).

TransformerLens 4.x: only its ``FactoredMatrix`` module and ``utilities.matrix`` (for
``composition_scores``) are loaded, not the package ``__init__`` (which pulls in transformers
and datasets). Composer: only ``algorithms/factorize/factorize_core.py`` (``pip install
--no-deps mosaicml``). Each loader returns None when its package is missing or broken, and
``why_missing`` says why, so the report can say so."""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

why_missing: dict[str, str] = {}

_TL_MODULES = (
    ("transformer_lens.utilities.tensors", "utilities/tensors.py"),
    ("transformer_lens.utilities.slice", "utilities/slice.py"),
    ("transformer_lens.FactoredMatrix", "FactoredMatrix.py"),
    ("transformer_lens.utilities.matrix", "utilities/matrix.py"),
)


def _package_root(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache  # a loader: loads once, holds no tensors
def transformer_lens() -> types.SimpleNamespace | None:
    """``FactoredMatrix`` and ``composition_scores`` of TransformerLens, or None."""
    root = _package_root("transformer_lens")
    if root is None:
        why_missing["TransformerLens"] = "not installed (pip install 'lazymat[bench]')"
        return None
    for name, path in (("transformer_lens", root), ("transformer_lens.utilities", root / "utilities")):
        if name not in sys.modules:  # empty parents: the submodules load without the heavy __init__
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    modules = {}
    try:
        for name, rel in _TL_MODULES:
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, root / rel)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            modules[name] = module
    except ImportError as e:
        why_missing["TransformerLens"] = f"not importable: {e}"
        return None
    return types.SimpleNamespace(FactoredMatrix=modules["transformer_lens.FactoredMatrix"].FactoredMatrix,
                                 composition_scores=modules["transformer_lens.utilities.matrix"].composition_scores)


@functools.cache
def composer_factorize() -> types.ModuleType | None:
    """Composer's ``factorize_core`` module (its own ``factorize_matrix``), or None."""
    root = _package_root("composer")
    if root is None:
        why_missing["Composer"] = "not installed (pip install --no-deps mosaicml)"
        return None
    spec = importlib.util.spec_from_file_location("composer_factorize_core",
                                                  root / "algorithms/factorize/factorize_core.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        why_missing["Composer"] = f"not importable: {e}"
        return None
    return module
