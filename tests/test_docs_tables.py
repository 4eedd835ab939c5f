"""The correctness tables in the docs are the committed results, rendered by
benchmarks/results_tables.py (rerun it with --write-docs after rerunning a study)."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "results_tables.py"
_spec = importlib.util.spec_from_file_location("results_tables", _PATH)
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def test_each_page_holds_the_table_its_results_render():
    for name, (render, page) in tables.TABLES.items():
        text = page.read_text()
        assert tables.replace_table(text, name, render()) == text, \
            f"{page.name}: the {name} table differs from its results; run python benchmarks/results_tables.py --write-docs"


def test_a_page_without_markers_is_refused():
    try:
        tables.replace_table("no markers here", "user-problems", "x")
    except ValueError as e:
        assert "markers" in str(e)
    else:
        raise AssertionError("replace_table accepted a page without markers")
