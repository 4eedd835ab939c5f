"""Training's response to a failed linear solve (``--on-solver-failure``) or a non-finite step.

A task's solve failed when the backend's per-task ``stats`` say it ``diverged`` (a non-finite
residual, or for Neumann a residual larger than the right-hand side), or its ``residual_norm``
is not finite. A solve that merely used up its iteration budget is not a failure: iMAML runs
CG for a fixed 5 steps by design, and ``stats_converged`` (the fraction that reached the
tolerance) is logged for every iteration either way. Backends without these entries never
fail here. The policy decides what happens:

* ``warn`` (default): keep the step; print a warning line (with the count of failed tasks)
  on the 1st, 2nd, 4th, 8th, ... iteration with failures, so that a long run does not print one
  line per iteration. Every iteration's count is in ``metrics.jsonl`` as ``solver_failures``.
* ``skip-task``: recompute the meta-gradient from the healthy tasks only; skip the outer step
  when none is healthy.
* ``stop``: raise :class:`~bilevel.errors.SolverError` naming the iteration, the failed tasks
  and their largest residual.

A NaN or infinite loss or meta-gradient always stops training
(:class:`~bilevel.errors.NonFiniteError`, naming the iteration and the tasks).
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from ..errors import NonFiniteError, SolverError

__all__ = ["SOLVER_FAILURE_POLICIES", "SolverHealth", "failed_tasks", "nonfinite_error"]

SOLVER_FAILURE_POLICIES = ("warn", "skip-task", "stop")


def _per_task(value) -> torch.Tensor:
    value = torch.as_tensor(value)
    return value.reshape(value.shape[0], -1) if value.ndim else value.reshape(1, 1)


def _failed_per_task(stats: dict) -> torch.Tensor | None:
    """Per task: the solve diverged or its residual is not finite (``None``: nothing to judge)."""
    flags = []
    if "diverged" in stats:
        flags.append(_per_task(stats["diverged"]).bool().any(1))
    if "residual_norm" in stats:
        flags.append(~torch.isfinite(_per_task(stats["residual_norm"])).all(1))
    if not flags:
        return None
    failed = flags[0]
    for f in flags[1:]:
        failed = failed | f
    return failed


def failed_tasks(stats: dict) -> list[int]:
    """Indices of the tasks whose solve diverged or has a non-finite residual (dimension 0 is the task)."""
    failed = _failed_per_task(stats)
    return [] if failed is None else [i for i, bad in enumerate(failed.tolist()) if bad]


def _residual(stats: dict, tasks: list[int]) -> str:
    residual = stats.get("residual_norm")
    if residual is None:
        return ""
    residual = torch.as_tensor(residual)
    worst = residual.reshape(residual.shape[0], -1)[tasks].max() if residual.ndim else residual
    return f", largest residual norm {float(worst):.3e}"


class SolverHealth:
    """Applies one ``--on-solver-failure`` policy to each iteration's per-task ``stats``.

    Args:
        policy: ``"warn"``, ``"skip-task"`` or ``"stop"``.
        write: where warning lines go (default: standard error).
    """

    def __init__(self, policy: str = "warn", write: Callable[[str], None] | None = None):
        if policy not in SOLVER_FAILURE_POLICIES:
            raise ValueError(f"--on-solver-failure must be one of {', '.join(SOLVER_FAILURE_POLICIES)}, "
                             f"got {policy!r}")
        self.policy = policy
        self.write = write or (lambda line: print(line, file=sys.stderr))
        self.failing_iterations = 0

    def check(self, iteration: int, stats: dict) -> list[int]:
        """Return the failed tasks of this iteration (``stop``: raise if there are any)."""
        failed = failed_tasks(stats)
        if not failed:
            return []
        what = (f"the linear solve diverged for {len(failed)} of {len(_failed_per_task(stats))} tasks "
                f"(tasks {failed}{_residual(stats, failed)})")
        if self.policy == "stop":
            raise SolverError(f"iteration {iteration}: {what}; stopped by --on-solver-failure stop. Raise "
                              "lambda or --cg-damping, or choose --on-solver-failure warn or skip-task")
        self.failing_iterations += 1
        n = self.failing_iterations
        if n & (n - 1) == 0:  # a power of two
            action = "those tasks are left out of the step" if self.policy == "skip-task" else "continuing"
            self.write(f"warning: iteration {iteration}: {what}; {action} (iterations with failures so far: {n}; "
                       "each iteration's count is solver_failures in metrics.jsonl)")
        return failed


def nonfinite_error(iteration: int, tasks: list[int], cause: str) -> NonFiniteError:
    """The error that stops training on a NaN or infinite loss or meta-gradient."""
    where = f" in tasks {tasks} of the meta-batch" if tasks else ""
    cause = cause.split(". ")[0].rstrip(".")  # the backend's finding, without its advice (given below)
    return NonFiniteError(f"iteration {iteration}: the loss or meta-gradient is not finite{where} ({cause}). "
                          "Training stopped before the outer step, and no checkpoint holds it. Lower the inner "
                          "or outer learning rate, raise lambda, or check the data for NaN")
