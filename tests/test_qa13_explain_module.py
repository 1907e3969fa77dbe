"""``lazymat.explain`` is both the function (``lm.explain``, the public API) and the module
holding the report's parts: each is reached as docs/cost-introspection.md says."""

import importlib
import inspect

import lazymat as lm


def test_the_function_and_the_modules_names_are_both_reachable():
    module = importlib.import_module("lazymat.explain")
    assert inspect.isfunction(lm.explain) and lm.explain is module.explain
    for name in module.__all__:  # `from lazymat.explain import <name>`, as the docs say
        assert getattr(__import__("lazymat.explain", fromlist=[name]), name) is getattr(module, name)
    import lazymat.explain as EX  # the package attribute wins (Python's `import a.b as c`)
    assert EX is lm.explain
