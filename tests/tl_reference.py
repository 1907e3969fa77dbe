"""TransformerLens's own ``FactoredMatrix``, the peer of the lazymat.compat equivalence tests.

``tl()`` returns TransformerLens's own ``FactoredMatrix`` module when ``transformer-lens`` is
installed (extra ``compat-test``), else the test is skipped. Only that module and the two
utility modules it imports are loaded: the package ``__init__`` pulls in ``transformers``.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest


def _load_transformer_lens_factored_matrix():
    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    added = [name for name in _MODULES if name not in sys.modules]
    try:
        return _load(root)
    finally:  # leave sys.modules as it was, so a real `import transformer_lens` still works
        for name in added:
            sys.modules.pop(name, None)


_MODULES = (
    "transformer_lens", "transformer_lens.utilities", "transformer_lens.utilities.tensors",
    "transformer_lens.utilities.slice", "transformer_lens.FactoredMatrix",
    "transformer_lens.utilities.matrix",
)


def _load(root):
    # empty parent packages, so that importing the submodules skips the heavy __init__ files
    for name, path in (("transformer_lens", root), ("transformer_lens.utilities", root / "utilities")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    modules = {}
    for name, rel in (
        ("transformer_lens.utilities.tensors", "utilities/tensors.py"),
        ("transformer_lens.utilities.slice", "utilities/slice.py"),
        ("transformer_lens.FactoredMatrix", "FactoredMatrix.py"),
        ("transformer_lens.utilities.matrix", "utilities/matrix.py"),
    ):
        module = sys.modules.get(name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(name, root / rel)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        modules[name] = module
    return types.SimpleNamespace(
        FactoredMatrix=modules["transformer_lens.FactoredMatrix"].FactoredMatrix,
        composition_scores=modules["transformer_lens.utilities.matrix"].composition_scores,
    )


try:
    TL = _load_transformer_lens_factored_matrix()
except ImportError:  # jaxtyping/einops missing
    TL = None


def tl():
    """TransformerLens's ``FactoredMatrix`` and ``composition_scores``, or skip the test."""
    if TL is None:
        pytest.skip("transformer-lens not installed (pip install lazymat[compat-test])")
    return TL
