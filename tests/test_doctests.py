"""Every docstring example of the installed package runs and gives its printed answer.

The modules are imported by their installed names (``bilevel.adapters.implicit``, never a
top-level ``adapters``), so the same test passes on an editable install, on ``pip install .``
run from another directory, and on a wheel."""

import doctest
import importlib
import pkgutil

import pytest

import bilevel
import bilevel.adapters


def package_modules() -> list[str]:
    """Every module of ``bilevel``; ``bilevel.adapters`` is walked on its own, since an editable
    install maps it to the top-level ``adapters/`` directory, outside ``bilevel.__path__``."""
    names = {"bilevel", "bilevel.adapters"}
    for package in (bilevel, bilevel.adapters):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):  # importing it would run the command line
                names.add(info.name)
    return sorted(names)


MODULES = package_modules()


def test_the_backends_are_found_under_their_installed_name():
    assert "bilevel.adapters.implicit" in MODULES and not any(m.startswith("adapters") for m in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in finder.find(module, name):  # globals: a copy of the module's, as pytest's doctests
        if test.examples:
            runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
