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
