"""Every docstring example in the library runs as written (keras-hub's and nanochat's habit: examples are code)."""

import doctest
import importlib
import pkgutil

import pytest

import tfchat


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(tfchat.__path__, "tfchat."):
        module = importlib.import_module(info.name)
        # Examples marked +SKIP (they need a trained model or a server) do not count.
        if any(not e.options.get(doctest.SKIP) for t in doctest.DocTestFinder().find(module) for e in t.examples):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_library_has_examples():
    assert len(MODULES) >= 40


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
