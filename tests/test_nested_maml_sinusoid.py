"""The NestedMAML sinusoid benchmark's core on a tiny setting (benchmarks/nested_maml_sinusoid.py)."""

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "nested_maml_sinusoid.py"
_spec = importlib.util.spec_from_file_location("nested_maml_sinusoid", _PATH)
nm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = nm  # dataclasses look their module up there
_spec.loader.exec_module(nm)

TINY = nm.Config(pool=16, val_tasks=8, test_tasks=8, test_queries=20, meta_batch=16, val_batch=8,
                 iterations=30, evals=1, weight_lr=300.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_lookahead_weights_separate_corrupted_tasks_and_schema(seed):
    # Half of 16 tasks come from tanh(x) - 2 phi; after 30 NestedMAML iterations (every task in every
    # batch) the lookahead has pushed their weights towards zero against the clean ones. At this tiny
    # budget not every seed separates (seeds 2 and 3 keep a few large corrupted weights, AUC 0.75 and
    # 0.16): the benchmark's claim is over seeds at its own budget, this checks the mechanism.
    r = nm.run(TINY, 0.5, "nested", seed=seed, log=lambda s: None)
    assert set(r) == nm.RESULT_KEYS
    assert r["mean_weight_corrupted"] < 0.5 * r["mean_weight_clean"]
    assert r["weight_auc"] > 0.75
    assert r["zero_weights_corrupted"] > r["zero_weights_clean"]
    assert r["curve"][-1]["iteration"] == TINY.iterations and r["test_mse"] == r["curve"][-1]["test_mse"]
    assert json.loads(json.dumps(r)) == r  # the result file round-trips


def test_weight_step_is_blind_to_the_scale_of_w():
    # Level 2 steps on the normalized weights u = w / sum(w), so dV/dw is orthogonal to w:
    # a small step leaves <w, w_new - w> = 0 (to float rounding).
    cfg = replace(TINY, pool=6, meta_batch=6, val_batch=4, weight_lr=10.0)
    g = torch.Generator().manual_seed(0)
    pool = nm.task_params(6, seed=3)
    corrupted = torch.arange(6) < 3
    train = nm.draw_points(pool, corrupted, cfg.shots, cfg.shots, g)
    val = nm.draw_points(nm.task_params(4, seed=4), torch.zeros(4, dtype=torch.bool), cfg.shots, cfg.shots, g)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.5])
    new = nm.weight_step(nm.make_problem(cfg), cfg, train, val, w, nm.init_theta(0), nm.Lookahead(lr=0.005), 1)
    step = new - w
    assert (new > 0).all() and step.abs().max() > 1e-3  # a real step, no weight clipped
    assert abs(float(torch.dot(w, step))) < 1e-3 * float(w.norm() * step.norm())


def test_runs_resume_and_uniform_weights(tmp_path):
    cfg = replace(TINY, iterations=2, evals=1)
    messages = []
    nm.run_all(cfg, [0.5], ["maml"], [0], tmp_path, log=messages.append)
    path = nm.run_path(tmp_path, 0.5, "maml", 0)
    record = json.loads(path.read_text())
    assert record["weight_auc"] is None and record["mean_weight_clean"] == record["mean_weight_corrupted"] == 1.0
    nm.run_all(cfg, [0.5], ["maml"], [0], tmp_path, log=messages.append)
    assert messages[-1].startswith("skip")


def test_official_logs_are_split_into_floats():
    assert nm.concatenated_floats("0.171499938953202230.189991568988189100.05") == pytest.approx(
        [0.17149993895320223, 0.1899915689881891, 0.05])
    with pytest.raises(ValueError, match="cannot split"):
        nm.concatenated_floats("0.1e-050.2")
