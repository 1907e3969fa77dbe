"""The examples in the README and in module docstrings run and say what they claim."""

import doctest
import pathlib
import re

import pytest

import lazymat
from lazymat import expr, settings

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", [expr, settings])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has a python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["S"].shape == (64,)
    assert lazymat.is_lazy(namespace["qk"])


def test_readme_commands_are_at_the_top():
    lines = (ROOT / "README.md").read_text().splitlines()
    head = "\n".join(lines[:8])
    assert "python -m lazymat" in head and "pytest" in head and "torch==2.13.0" in head


def test_readme_names_every_module():
    """The README's "What is where" table names every module of the package (a newcomer reads
    the tree from it), and names none that is gone."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## What is where", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"`(lazymat/[\w/]+?\.py|lazymat/\w+/)`", table))
    for part in re.findall(r"`lazymat/(\w+)\.py`, `(\w+)\.py`, `(\w+)\.py`", table):
        named.update(f"lazymat/{p}.py" for p in part)
    package = ROOT / "lazymat"
    modules = {f"lazymat/{p.name}" for p in package.glob("*.py") if not p.name.startswith("__")}
    modules |= {f"lazymat/{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()}
    modules |= {f"lazymat/{p.parent.name}/{p.name}" for p in package.glob("*/*.py")
                if not p.name.startswith("__")}
    subpackages = {m for m in modules if m.endswith("/")}
    # a subpackage is named as a whole, or each of its modules is
    covered = {m for m in modules if any(m.startswith(s) for s in subpackages & named)}
    covered |= {s for s in subpackages if any(n.startswith(s) for n in named)}
    assert modules - named - covered == set(), "modules the README's table does not name"
    assert named - modules == set(), "the README's table names modules that are gone"
