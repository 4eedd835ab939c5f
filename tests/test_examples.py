"""The tutorials in examples/ run (in their --fast mode) and show what they claim.

Each script is imported and its ``main(argv)`` called in-process; ``main`` returns the numbers
it printed, which the tests check.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_fakes():
    """The fake-Omniglot archive writer of the data tests (tests/data/conftest.py)."""
    spec = importlib.util.spec_from_file_location("fake_omniglot", REPO / "tests" / "data" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logistic_hpo_matches_finite_differences_and_lowers_validation_loss(capsys):
    out = load_example("logistic_hpo").main(["--fast"])
    # float64, inner problem solved to machine precision: the implicit hypergradient is exact.
    assert out["rel_error"] < 1e-7
    losses = out["val_losses"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert "relative error vs central finite differences" in capsys.readouterr().out


def test_data_hypercleaning_ranks_corrupted_examples_lower():
    pytest.importorskip("sklearn")
    out = load_example("data_hypercleaning").main(["--fast"])
    # After 3 outer steps the weights already separate the groups (the full run: AUC 0.904, docs/results/examples/data_hypercleaning.txt).
    assert out["weight_corrupted"] < out["weight_clean"]
    assert out["auc"] > 0.8
    assert out["val_losses"][-1] < out["val_losses"][0]
    assert out["acc_learned"] >= out["acc_uniform"]


# A 12-character stand-in for Omniglot with 5 drawings each: 9 meta-training characters (3 held
# out for validation, so 6 x 4 rotations = 24 training classes), 3 test characters: enough
# for 3-way tasks with 1 support and 2 query examples per class.
FAKE_LAYOUT = {"images_background": {"Alpha": 4, "Beta": 4}, "images_evaluation": {"Gamma": 4}}
FAKE_DRAWINGS = 5


@pytest.fixture
def fake_omniglot(tmp_path, monkeypatch):
    """Fake archives in the official layout, and the benchmark pointed at their smaller split."""
    from bilevel.data import load_omniglot, omniglot_splits
    from bilevel.fewshot import benchmarks

    fakes = load_fakes()
    root, first_id = tmp_path / "omniglot", 1
    root.mkdir()
    for archive, alphabets in FAKE_LAYOUT.items():
        fakes.write_archive(root / f"{archive}.zip", archive, alphabets, first_id=first_id, drawings=FAKE_DRAWINGS)
        first_id += sum(alphabets.values())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(benchmarks, "load_omniglot", functools.partial(
        load_omniglot, download=False, progress=False, expected_characters=first_id - 1, drawings=FAKE_DRAWINGS))
    monkeypatch.setattr(benchmarks, "omniglot_splits", functools.partial(omniglot_splits, num_train=9, num_val=3))
    return root


def test_imaml_vs_maml_omniglot_trains_and_evaluates(fake_omniglot, tmp_path):
    out = load_example("imaml_vs_maml_omniglot").main(
        ["--fast", "--data-root", str(fake_omniglot), "--out", str(tmp_path / "runs")])
    assert set(out["results"]) == {"imaml-gd", "maml"}
    for method in ("imaml-gd", "maml"):
        by_hand = out["by_hand"][method]
        assert math.isfinite(by_hand["loss"]) and by_hand["grad_norm"] > 0
        result = out["results"][method]
        assert result["tasks"] == 4 and result["split"] == "test"
        assert 0.0 <= result["mean"] <= 1.0 and math.isfinite(result["ci95"])
        assert (tmp_path / "runs" / method / "evaluation-test.json").is_file()


def test_swap_backends_agree_with_the_dense_reference():
    rows = load_example("swap_backends").main(["--fast"])
    # Exact methods on a converged inner problem (40 GD steps, contraction 0.8 per step).
    assert rows["implicit-dense"]["rel_diff"] == 0.0
    assert rows["implicit-cg"]["rel_diff"] < 1e-8
    assert rows["implicit-neumann"]["rel_diff"] < 1e-3
    assert rows["unrolled"]["rel_diff"] < 1e-3
    if "torchopt-cg" in rows:
        assert abs(rows["torchopt-cg"]["grad_norm"] - rows["implicit-cg"]["grad_norm"]) < 1e-8
    if "higher" in rows:
        assert abs(rows["higher"]["rel_diff"] - rows["unrolled"]["rel_diff"]) < 1e-8
    # The approximations are visibly different.
    assert rows["truncated"]["rel_diff"] > 1e-2 and rows["first-order"]["rel_diff"] > 1e-2
    losses = {round(r["loss"], 10) for r in rows.values()}
    assert len(losses) == 1, losses  # every backend evaluates the same outer loss


def test_migration_page_snippets_agree():
    """docs/migration.md: each higher/TorchOpt snippet and the bilevel one after it give the same numbers
    (benchmarks/migration_snippets.py runs the page and prints them: docs/results/examples/)."""
    pytest.importorskip("higher")
    pytest.importorskip("torchopt")
    spec = importlib.util.spec_from_file_location("migration_snippets", REPO / "benchmarks" / "migration_snippets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    m = module.measure()
    assert m["higher_vs_unrolled"] <= 1e-6 and m["metasgd_vs_unrolled"] <= 1e-6
    # TorchOpt's CG stops at its default rtol=1e-5; ours runs to 1e-10.
    assert abs(m["custom_root"] - m["implicit_cg"]) <= 1e-5 * abs(m["implicit_cg"]) and m["cg_converged"]
    assert m["solve_cg_diff"] < 1e-12
    assert m["torch_func_vs_unrolled"] <= 1e-7 and m["loss_finite"]
