"""Comparisons over training seeds: the statistics against their formulas, and `compare --seeds`."""

import csv
import json
import math

import pytest

from bilevel.cli import main
from bilevel.fewshot.compare import format_table, seed_runs, summarize_seeds
from bilevel.fewshot.config import TrainConfig, resolve
from bilevel.fewshot.seeds import iqm_interval, over_seeds, paired_difference, rliable_available

T_975 = {2: 12.706204736174698, 3: 4.302652729911275, 5: 2.7764451051977987}  # Student t quantiles, n-1 dof


@pytest.mark.parametrize("values", [[1.0, 2.5], [1.6, 1.72, 1.41], [0.3, -0.2, 0.8, 0.1, 0.45]])
def test_interval_over_seeds_is_the_student_t_interval(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975[n] * sd / math.sqrt(n)
    s = over_seeds(values)
    assert s.n == n and s.mean == pytest.approx(mean, abs=1e-12)
    assert s.low == pytest.approx(mean - half, abs=1e-9) and s.high == pytest.approx(mean + half, abs=1e-9)


def test_paired_difference_is_the_interval_of_the_differences():
    a, b = [1.6, 1.72, 1.41], [1.2, 1.5, 1.3]
    d, direct = paired_difference(a, b), over_seeds([x - y for x, y in zip(a, b)])
    assert (d.mean, d.low, d.high) == pytest.approx((direct.mean, direct.low, direct.high), abs=1e-12)
    assert d.low < 0 < d.high and not d.excludes_zero()  # a above b in every seed (0.11-0.40): 3 seeds cannot tell
    # A shift shared by every seed cancels in the pairing, not in the separate intervals.
    shared = paired_difference([x + 0.1 for x in b], b)
    assert shared.low == shared.high == pytest.approx(0.1) and shared.excludes_zero()


def test_one_seed_claims_nothing_and_bad_scores_are_refused():
    s = over_seeds([1.5])
    assert s.mean == 1.5 and math.isnan(s.low) and math.isnan(s.high)
    with pytest.raises(ValueError, match="not finite"):
        over_seeds([1.0, float("nan")])
    with pytest.raises(ValueError, match="3 seeds against 2"):
        paired_difference([1, 2, 3], [1, 2])


@pytest.mark.skipif(not rliable_available(), reason="rliable not installed (pip install 'bilevel[stats]')")
def test_iqm_is_rliables_and_reproducible():
    values = [1.0, 1.3, 0.9, 1.1]
    first, again = iqm_interval(values), iqm_interval(values)
    assert first == again  # the bootstrap's random state is fixed
    assert first.mean == pytest.approx((1.0 + 1.1) / 2)  # the middle half of 4 seeds
    assert min(values) <= first.low <= first.mean <= first.high <= max(values)
    assert iqm_interval([1.0, 2.0, 3.0]) is None  # rliable trims no run below 4: the IQM would be the mean


def test_seed_runs_name_one_folder_per_method_and_seed(tmp_path):
    config = resolve(TrainConfig(benchmark="sinusoid", method="maml", seed=4))
    runs = seed_runs({"maml": config}, tmp_path, seeds=3)
    assert [(r[1].relative_to(tmp_path).as_posix(), r[2].seed) for r in runs] == [
        ("maml/seed-4", 4), ("maml/seed-5", 5), ("maml/seed-6", 6)]
    assert seed_runs({"maml": config}, tmp_path)[0][1] == tmp_path / "maml"  # one seed: as before
    with pytest.raises(ValueError, match="--seeds must be a positive integer"):
        seed_runs({"maml": config}, tmp_path, seeds=0)


def _row(method, seed, mean):
    return dict(method=method, seed=seed, metric="mse", mean=mean, ci95=0.1, tasks=50, iterations=10,
                seconds_per_iteration=0.01, peak_memory_mb=20.0, benchmark="sinusoid", net="softplus")


def test_seed_table_states_only_differences_that_hold():
    rows = ([_row("maml", s, m) for s, m in enumerate([1.0, 1.2, 1.1])]
            + [_row("reptile", s, m) for s, m in enumerate([0.7, 0.9, 0.8])]  # 0.3 below in every seed
            + [_row("fomaml", s, m) for s, m in enumerate([0.9, 1.6, 1.0])])  # within the spread
    table = format_table(rows)
    assert "| maml | 1.10 [0.85, 1.35] | 1.00, 1.20, 1.10 | (reference) |" in table
    assert "| reptile | 0.80 [0.55, 1.05] | 0.70, 0.90, 0.80 | -0.30 [-0.30, -0.30] |" in table
    assert "excludes 0: reptile below maml;" in table
    summaries = {s["method"]: s for s in summarize_seeds(rows, reference="fomaml")}
    assert summaries["fomaml"]["vs_reference"] is None and summaries["maml"]["reference"] == "fomaml"


def test_pairs_are_matched_by_seed_not_by_position():
    rows = ([_row("maml", s, m) for s, m in [(2, 3.0), (0, 1.0), (1, 2.0)]]  # given out of order
            + [_row("reptile", s, m) for s, m in [(0, 1.5), (1, 2.5), (2, 3.5)]]
            + [_row("fomaml", s, m) for s, m in [(0, 9.0), (7, 9.0)]])  # shares only seed 0 with maml
    summaries = {s["method"]: s for s in summarize_seeds(rows)}
    d = summaries["reptile"]["vs_reference"]
    assert d.low == d.high == pytest.approx(0.5)  # +0.5 in every seed, once paired by seed
    assert summaries["fomaml"]["vs_reference"] is None and summaries["fomaml"]["paired_seeds"] == 1
    assert "Not compared (fewer than 2 seeds shared with maml): fomaml." in format_table(rows)
    with pytest.raises(ValueError, match="reference 'imaml-gd' is not among the methods"):
        summarize_seeds(rows, reference="imaml-gd")
    with pytest.raises(ValueError, match="maml: seed 0 occurs twice"):
        summarize_seeds(rows + [_row("maml", 0, 1.0)])


def test_the_worst_seed_decides_the_unsolved_warning():
    rows = [{**_row("imaml-gd", s, 1.0), "inner_grad_norm": g} for s, g in enumerate([0.05, 0.05, 1.3])]
    rows += [_row("maml", s, 1.0) for s in range(3)]
    table = format_table(rows)
    assert "| 1.300 |" in table and "it was not (imaml-gd 1.30)" in table  # the mean, 0.47, would hide it


def test_compare_over_seeds_writes_per_seed_and_summary_rows(tmp_path, capfd):
    out = tmp_path / "cmp"
    assert main(["compare", "--benchmark", "sinusoid", "--methods", "maml,fomaml", "--seeds", "2", "--iterations", "3",
                 "--meta-batch", "4", "--inner-steps", "2", "--val-every", "3", "--val-tasks", "4", "--tasks", "10",
                 "--jobs", "2", "--out", str(out)]) in (0, None)
    assert "minus maml: paired mean" in capfd.readouterr().out
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("maml", "0"), ("maml", "1"), ("fomaml", "0"),
                                                        ("fomaml", "1"), ("maml", "all"), ("fomaml", "all")]
    for method in ("maml", "fomaml"):
        scores = [json.loads((out / method / f"seed-{s}" / "evaluation-test.json").read_text())["mean"] for s in (0, 1)]
        summary = next(r for r in rows if r["method"] == method and r["seed"] == "all")
        assert float(summary["seeds_mean"]) == pytest.approx(sum(scores) / 2)
    saved = json.loads((out / "compare.json").read_text())
    fomaml = next(s for s in saved["summaries"] if s["method"] == "fomaml")
    maml = next(s for s in saved["summaries"] if s["method"] == "maml")
    assert fomaml["minus_reference"] == pytest.approx(
        sum(f - m for f, m in zip(fomaml["scores"], maml["scores"])) / 2)
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert fomaml["seeds"] == [0, 1] and not saved["runs"][0]["run_dir"].startswith("/")
    assert main(["compare", "--methods", "maml,fomaml", "--seeds", "2", "--reference", "reptile",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--reference reptile is not among the compared methods" in capfd.readouterr().err
    assert main(["compare", "--methods", "maml,fomaml", "--reference", "maml", "--out", str(tmp_path / "y")]) == 2
    assert "it needs --seeds N >= 2" in capfd.readouterr().err
