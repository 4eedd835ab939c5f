"""Tests that fail on a wrong answer: evaluation scores the split it reports, and the best
validation metric follows the metric's direction (lower MSE, higher accuracy)."""

import json
import math

import pytest

from bilevel.fewshot import TrainConfig, evaluate, evaluate_params, mean_ci95, train
from bilevel.fewshot.checkpoint import load_checkpoint
from bilevel.fewshot.config import load_config, resolve
from bilevel.fewshot.trainer import resolve_vectorize, is_improvement, setup

SMALL = dict(benchmark="sinusoid", method="fomaml", val_tasks=4, meta_batch=4, inner_steps=2, eval_tasks=8,
             device="cpu")


def scores_on(run_dir, split, tasks):
    """The run's checkpoint adapted to ``tasks`` tasks of ``split``, built here from the parts."""
    config = resolve(load_config(run_dir / "config.json"))
    benchmark, model, method, device = setup(config)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    return evaluate_params(benchmark, model, method.eval_problem, dict(model.named_parameters()),
                           benchmark.sampler(split, config.seed), tasks, config.meta_batch, device,
                           config.chunk_size, resolve_vectorize(config.vectorize, device, benchmark))


def test_evaluate_scores_the_split_it_reports(tmp_path):
    train(TrainConfig(**SMALL, iterations=2, val_every=2), tmp_path, progress=False)
    test, val = scores_on(tmp_path, "test", 8), scores_on(tmp_path, "val", 8)
    assert mean_ci95(test) != mean_ci95(val)  # the streams differ, so a swap shows
    for split, expected in (("test", test), ("val", val)):
        result = evaluate(tmp_path, tasks=8, split=split, progress=False)
        assert (result["split"], result["mean"], result["ci95"]) == (split, *mean_ci95(expected))
        saved = json.loads((tmp_path / f"evaluation-{split}.json").read_text())
        assert saved["mean"] == result["mean"] and saved["split"] == split


@pytest.mark.parametrize("value, best, higher_is_better, better", [
    (1.0, None, False, True), (1.0, None, True, True),  # the first validation is the best so far
    (1.0, 2.0, False, True), (3.0, 2.0, False, False),  # MSE: lower is better
    (3.0, 2.0, True, True), (1.0, 2.0, True, False),  # accuracy: higher is better
    (2.0, 2.0, False, False), (2.0, 2.0, True, False),  # a tie keeps the earlier one
    (math.nan, 2.0, False, False), (math.nan, None, True, False),  # a NaN never
])
def test_is_improvement_follows_the_metric_direction(value, best, higher_is_better, better):
    assert is_improvement(value, best, higher_is_better) is better


def test_best_val_of_a_sinusoid_run_is_the_lowest_validation_mse(tmp_path):
    summary = train(TrainConfig(**SMALL, iterations=8, val_every=2), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r["mse"] for r in records if r["split"] == "val"]
    assert len(val) == 4 and max(val) > min(val)
    assert summary["best_val"] == min(val)
    assert json.loads((tmp_path / "summary.json").read_text())["best_val"] == min(val)
