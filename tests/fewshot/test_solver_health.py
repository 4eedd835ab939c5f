"""The solver-failure policy (warn, skip-task, stop) and the stop on a NaN, in training.

A failure is forced by marking chosen tasks' solves as diverged (a truncated solve, such as
iMAML's 5 CG steps, is not a failure)."""

import json

import pytest
import torch

import bilevel.distributed as distributed_module
import bilevel.fewshot.trainer as trainer_module
from bilevel.diagnostics import Diagnostics
from bilevel.solvers.linear import LinearSolveResult
from bilevel.errors import NonFiniteError, SolverError
from bilevel.fewshot import TrainConfig, train
from bilevel.fewshot.checkpoint import load_checkpoint
from bilevel.fewshot.config import resolve
from bilevel.fewshot.health import SolverHealth, failed_tasks
from bilevel.fewshot.meta_step import MetaGradient
from bilevel.fewshot.trainer import setup
from bilevel.hypergrad import hypergrad

SMALL = dict(benchmark="sinusoid", method="imaml-gd", iterations=4, val_every=100, val_tasks=4, meta_batch=4,
             inner_steps=3, checkpoint_every=1, device="cpu")


def train_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "train"]


def solve_result(diverged, converged=None, truncated=None) -> Diagnostics:
    """Per-task diagnostics of a linear solve with the given flags."""
    diverged = torch.as_tensor(diverged)
    no = torch.zeros_like(diverged)
    return Diagnostics(linear_solve=LinearSolveResult(
        solution={}, converged=~diverged if converged is None else torch.as_tensor(converged),
        steps=torch.full(diverged.shape, 5), residual_norm=diverged.double() * 0.5, negative_curvature=no,
        diverged=diverged, truncated=no if truncated is None else torch.as_tensor(truncated)))


def mark_diverged(monkeypatch, failing: list[int]):
    """batched_hypergrad as usual, but on a full meta-batch the ``failing`` tasks report a diverged solve."""
    real = distributed_module.batched_hypergrad
    calls = []

    def patched(*args, **kwargs):
        result = real(*args, **kwargs)
        n = result.task_loss.shape[0]
        calls.append(n)
        diverged = torch.zeros(n, dtype=torch.bool)
        if n == SMALL["meta_batch"]:
            diverged[failing] = True
        return result._replace(diagnostics=solve_result(diverged))

    monkeypatch.setattr(distributed_module, "batched_hypergrad", patched)
    return calls


def test_failed_tasks_reads_divergence_not_a_used_up_budget():
    assert failed_tasks(solve_result([False, True, False, True])) == [1, 3]
    unconverged = [False, False]
    assert failed_tasks(solve_result(unconverged, converged=[False, True])) == [0]  # not converged, no budget
    assert failed_tasks(solve_result(unconverged, converged=[False, False], truncated=[True, True])) == []  # a budget
    assert failed_tasks(Diagnostics()) == []  # nothing to judge
    with pytest.raises(ValueError, match="--on-solver-failure must be one of warn, skip-task, stop"):
        SolverHealth("ignore")


def test_truncated_cg_is_not_a_failure(tmp_path, capsys):
    train(TrainConfig(**SMALL, cg_steps=1, on_solver_failure="stop"), tmp_path, progress=False)
    records = train_records(tmp_path)
    assert all(r["stats_converged"] == 0.0 and r["solver_failures"] == 0 for r in records)
    assert "warning" not in capsys.readouterr().err


def test_warn_logs_the_count_and_keeps_training(tmp_path, capsys, monkeypatch):
    mark_diverged(monkeypatch, failing=[0, 1, 2, 3])
    summary = train(TrainConfig(**SMALL, on_solver_failure="warn"), tmp_path, progress=False)
    assert summary["iterations"] == 4
    assert [r["solver_failures"] for r in train_records(tmp_path)] == [4, 4, 4, 4]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    # one line per iteration at most, on the 1st, 2nd, 4th, ... iteration with failures
    assert [line.split(":")[1].strip() for line in warnings] == ["iteration 1", "iteration 2", "iteration 4"]
    assert all("4 of 4 tasks failed" in line and "the linear solve diverged in 4 of 4 systems" in line
               for line in warnings)


def test_stop_names_the_iteration_the_tasks_and_the_residual(tmp_path, monkeypatch):
    mark_diverged(monkeypatch, failing=[0, 1, 2, 3])
    with pytest.raises(SolverError) as info:
        train(TrainConfig(**SMALL, on_solver_failure="stop"), tmp_path, progress=False)
    message = str(info.value)
    assert "iteration 1:" in message and "tasks [0, 1, 2, 3]" in message and "largest residual" in message
    assert not (tmp_path / "checkpoint.pt").exists()


def test_skip_task_skips_the_step_when_no_task_is_healthy(tmp_path, monkeypatch):
    mark_diverged(monkeypatch, failing=[0, 1, 2, 3])
    config = TrainConfig(**SMALL, on_solver_failure="skip-task")
    train(config, tmp_path, progress=False)
    _, model, _, _ = setup(resolve(config))  # the initialization, untouched
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert all(r["skipped_step"] and r["skipped_tasks"] == [0, 1, 2, 3] for r in train_records(tmp_path))


def test_skip_task_averages_the_healthy_tasks_only(tmp_path, monkeypatch):
    calls = mark_diverged(monkeypatch, failing=[1])
    maml = {**SMALL, "method": "maml", "iterations": 2}
    train(TrainConfig(**maml, on_solver_failure="skip-task"), tmp_path, progress=False)
    assert calls == [4, 3, 4, 3]  # each iteration: the meta-batch, then its 3 healthy tasks again
    assert all(r["solver_failures"] == 1 and r["skipped_tasks"] == [1] for r in train_records(tmp_path))

    # the step's meta-gradient is the mean over tasks 0, 2, 3, each computed on its own
    benchmark, model, method, device = setup(resolve(TrainConfig(**maml)))
    support, query = trainer_module.batch_to_tasks(benchmark.sampler("train", 0).sample(4), device)
    params = dict(model.named_parameters())
    step = MetaGradient(method, SolverHealth("skip-task"), vectorize=True, chunk_size=None)(1, params, support, query)
    assert step.tasks == [0, 2, 3] and step.failed == [1] and not step.skipped
    one = [hypergrad(method.problem, params, (support[0][t], support[1][t]), (query[0][t], query[1][t]),
                     backend=method.backend).grad for t in range(4)]
    for name in params:
        healthy = torch.stack([one[t][name] for t in (0, 2, 3)]).mean(0)
        torch.testing.assert_close(step.result.grad[name], healthy, rtol=1e-5, atol=1e-6)  # vmap vs one task
    everything = torch.cat([torch.stack([g[name] for g in one]).mean(0).flatten() for name in params])
    assert (torch.cat([step.result.grad[n].flatten() for n in params]) - everything).abs().max() > 1e-3


def poison_task(monkeypatch, task: int, at_call: int):
    """The ``at_call``-th training meta-batch gets a NaN input in task ``task``'s support set."""
    real, calls = trainer_module.batch_to_tasks, []

    def poisoned(batch, device):
        (sx, sy), query = real(batch, device)
        calls.append(1)
        if len(calls) == at_call:
            sx = sx.clone()
            sx[task, 0] = float("nan")
        return (sx, sy), query

    monkeypatch.setattr(trainer_module, "batch_to_tasks", poisoned)


@pytest.mark.parametrize("method", ["maml", "imaml-gd"])
def test_a_nan_stops_training_naming_the_iteration_and_the_task(tmp_path, monkeypatch, method):
    poison_task(monkeypatch, task=2, at_call=2)
    with pytest.raises(NonFiniteError) as info:
        train(TrainConfig(**{**SMALL, "method": method}), tmp_path, progress=False)
    assert "iteration 2:" in str(info.value) and "in tasks [2] of the meta-batch" in str(info.value)
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # iteration 1's, finite
    assert state["iteration"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_nan_returned_without_an_error_also_stops_training(tmp_path, monkeypatch):
    """Whether or not the backend raises, a non-finite result never reaches the optimizer; the
    task comes from ``task_loss``."""
    real = distributed_module.batched_hypergrad

    def nan_in_task_3(*args, **kwargs):
        result = real(*args, **kwargs)
        loss = result.task_loss.clone()
        loss[3] = float("nan")
        return result._replace(loss=loss.mean(), task_loss=loss)

    monkeypatch.setattr(distributed_module, "batched_hypergrad", nan_in_task_3)
    with pytest.raises(NonFiniteError, match=r"iteration 1: .* in tasks \[3\] of the meta-batch"):
        train(TrainConfig(**{**SMALL, "method": "maml"}), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
