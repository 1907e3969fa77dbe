"""lazymat.linalg is a package of modules, one idea each: its imports point down one order (no
cycle), the package exports the public calls, and a module setting is set on the module that
reads it (the package holds no copy that would take a write the routes never read)."""

import ast
import pathlib

import pytest
import torch

import lazymat as lm
from lazymat import linalg as LA

# bottom up, as docs/concepts.md's table and the package docstring list them
ORDER = ["_common", "costs", "peaks", "small", "blocks", "gradients", "calls", "spectrum", "compiled",
         "singular", "eigen", "hermitian", "norms", "systems", "products", "entries"]
PACKAGE = pathlib.Path(LA.__file__).parent


def _module_imports(name: str) -> set[str]:
    """The package modules ``name`` imports when it is imported (module level, not on use)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {a.name for a in node.names}
    return out


def test_every_module_is_listed_once():
    on_disk = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert on_disk == sorted(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_imports_point_down(name):
    below = set(ORDER[:ORDER.index(name)])
    assert _module_imports(name) <= below, f"{name} imports {_module_imports(name) - below} from above it"


def test_public_calls_resolve_on_the_package():
    assert len(LA.__all__) == len(set(LA.__all__)) == 27
    for name in LA.__all__:
        assert getattr(lm.linalg, name).__module__.startswith("lazymat.linalg.")


SETTINGS = [("DENSE_MAX_ELEMENTS", "costs"), ("SEGMENT_OVERHEAD_FLOPS", "costs"), ("HOST_VALUES", "spectrum"),
            ("HOST_CHECK_ENTRIES", "compiled")]


@pytest.mark.parametrize("name, module", SETTINGS)
def test_settings_live_only_on_their_module(monkeypatch, name, module):
    assert isinstance(getattr(getattr(LA, module), name), (int, float))
    with pytest.raises(AttributeError):
        monkeypatch.setattr(LA, name, 0)  # a copy on the package would take it silently


def test_a_setting_on_its_module_reaches_the_routes(monkeypatch):
    """The dense route limit set on ``costs`` is the one ``small`` decides by."""
    gen = torch.Generator().manual_seed(0)
    X = lm.lazy(torch.randn(6, 3, generator=gen, dtype=torch.float64)) @ lm.lazy(
        torch.randn(3, 5, generator=gen, dtype=torch.float64))
    assert LA.small.dense_is_cheaper(X, "svdvals")
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)
    assert not LA.small.dense_is_cheaper(X, "svdvals")
