"""The import rule, read from the source by benchmarks/import_graph.py (see docs/architecture.md).

Each rule is its own test, so a failure names the rule and lists the imports that break it; the
checker itself is tested on a small made-up package, so a rule that passes is not passing vacuously.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "import_graph.py"
_spec = importlib.util.spec_from_file_location("import_graph", _PATH)
ig = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ig)

_MODULES, _EDGES, _RESULTS = ig.graph()

_WHY = {
    "forbidden": "the library below the applications (solvers, problems, backends) imports fewshot/data/cli/reproduce/bench",
    "upward": "a module imports a module of a higher layer",
    "facade": "the library below the applications imports the `bilevel` facade; import the module that defines the name instead",
    "cycles": "import cycle (module-level and lazy imports)",
    "private": "a private name or module is imported from another package; make it public there, or move it",
    "unlayered": "modules without a layer: add them to LAYERS in benchmarks/import_graph.py",
}


def test_the_graph_is_read():
    # A sanity floor: the walk found the package, the backends and imports of all three kinds of place.
    assert {"bilevel", "bilevel.hypergrad", "bilevel.adapters.implicit", "bilevel.fewshot.trainer"} <= set(_MODULES)
    assert ("bilevel.adapters.implicit", "bilevel.hypergrad") in {(e.source, e.target) for e in _EDGES}
    assert {"module", "lazy"} <= {e.kind for e in _EDGES}


@pytest.mark.parametrize("rule", ig.RULES)
def test_import_rule(rule):
    broken = _RESULTS[rule]
    assert not broken, f"{_WHY[rule]}:\n" + "\n".join(ig.describe(rule, v) for v in broken)


# A made-up package: `pkg` facade; layer 0 `pkg.base`; layer 1 `pkg.a`, `pkg.b`, `pkg.c`; layer 3 `pkg.app.*`.
_SYNTHETIC = {
    "pkg": "from .a import f\nfrom .app.run import main\n",
    "pkg.base": "from ._hidden import secret\n",  # the same package: allowed
    "pkg._hidden": "secret = 1\n",
    "pkg.a": "from . import b\nfrom .base import thing\n",
    "pkg.b": "def g():\n    from .c import h\n",  # lazy
    "pkg.c": ("from typing import TYPE_CHECKING\nimport pkg.a\nif TYPE_CHECKING:\n    from pkg.base import T\n"
              "def k():\n    from .app.run import main\n"),
    "pkg.app": "",
    "pkg.app.run": "from .._hidden import secret\nfrom ..base import _private, public\nimport pkg.app._util\n"
                   "from .. import base\n",
    "pkg.app._util": "",
}
_PACKAGES = {"pkg", "pkg.app"}


@pytest.fixture
def synthetic(monkeypatch):
    monkeypatch.setattr(ig, "FACADE", "pkg")
    monkeypatch.setattr(ig, "APPLICATIONS", ["pkg.app"])
    monkeypatch.setattr(ig, "LAYERS", {0: ("base", ["pkg.base", "pkg._hidden"]), 1: ("numerics", ["pkg.a", "pkg.b",
                                       "pkg.c"]), 3: ("applications", ["pkg.app"])})
    edges = ig.parse(_SYNTHETIC, _PACKAGES)
    return edges, ig.check(_SYNTHETIC, _PACKAGES, edges)


def test_edges_resolve_relative_lazy_and_type_checking_imports(synthetic):
    edges, _ = synthetic
    found = {(e.source, e.target, e.kind) for e in edges}
    assert {("pkg.a", "pkg.b", "module"), ("pkg.a", "pkg.base", "module"), ("pkg.b", "pkg.c", "lazy"),
            ("pkg.c", "pkg.a", "module"), ("pkg.c", "pkg.base", "type"), ("pkg.c", "pkg.app.run", "lazy"),
            ("pkg.app.run", "pkg._hidden", "module"), ("pkg.app.run", "pkg.app._util", "module"),
            ("pkg.app.run", "pkg.base", "module"), ("pkg", "pkg.app.run", "module")} <= found
    assert ("pkg.c", "typing", "module") not in found  # only our own modules are edges


def test_cycle_finder(synthetic):
    _, results = synthetic
    assert [c.modules for c in results["cycles"]] == [["pkg.a", "pkg.b", "pkg.c"]]
    assert {(e.source, e.target) for e in results["cycles"][0].edges} == {
        ("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a")}
    # Tarjan on its own: two cycles sharing nothing, a self-loop, a chain, a lone node.
    components = ig.strongly_connected("abcdefgz", [("a", "b"), ("b", "a"), ("c", "d"), ("d", "e"), ("e", "c"),
                                                    ("e", "f"), ("g", "g"), ("b", "c")])
    assert components == [["a", "b"], ["c", "d", "e"], ["f"], ["g"], ["z"]]


def test_type_checking_imports_break_no_cycle(synthetic, monkeypatch):
    modules = {"pkg.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
               "pkg.b": "from .a import A\n"}
    monkeypatch.setattr(ig, "LAYERS", {1: ("numerics", ["pkg.a", "pkg.b"])})
    assert ig.check(modules, set(), ig.parse(modules, set()))["cycles"] == []


def test_private_import_detector(synthetic):
    _, results = synthetic
    assert {(e.source, e.target, tuple(ig.private_names(e))) for e in results["private"]} == {
        ("pkg.app.run", "pkg._hidden", ("_hidden",)),  # a private module of another package
        ("pkg.app.run", "pkg.base", ("_private",)),  # a private name from another package
    }  # not pkg.base -> pkg._hidden (same package), nor pkg.app.run -> pkg.app._util (same package)


def test_layer_rules_on_the_synthetic_package(synthetic):
    _, results = synthetic
    assert [(e.source, e.target) for e in results["forbidden"]] == [("pkg.c", "pkg.app.run")]
    assert [(e.source, e.target) for e in results["upward"]] == [("pkg.c", "pkg.app.run")]
    assert results["facade"] == [] and results["unlayered"] == []
    facade = {"pkg.a": "import pkg\n", "pkg": "from .a import x\n", "pkg.z": ""}
    found = ig.check(facade, {"pkg"}, ig.parse(facade, {"pkg"}))
    assert [(e.source, e.target) for e in found["facade"]] == [("pkg.a", "pkg")] and found["unlayered"] == ["pkg.z"]
