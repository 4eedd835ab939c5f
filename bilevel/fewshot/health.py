"""Training's response to a failed solve (``--on-solver-failure``) or a non-finite step.

A task's solve failed when the library's failure check (:func:`bilevel.diagnostics.failures`,
the same objects :func:`bilevel.hypergrad` warns or raises with) finds a failure in its
diagnostics: a linear solve that diverged, stopped at negative curvature, or did not converge
without being a deliberate budget, a forward fixed-point solve that did not converge, or an
inner solution that is not stationary (where the backend judges it). A solve configured as a
budget is not a failure: iMAML runs ``CG(maxiter=5, truncated=True)`` by design, and
``stats_converged`` (the fraction that reached the tolerance) is logged for every iteration
either way. The policy decides what happens:

* ``warn`` (default): keep the step; print a warning line (with the count of failed tasks and
  the library's message naming the fix) on the 1st, 2nd, 4th, 8th, ... iteration with
  failures, so that a long run does not print one line per iteration. Every iteration's count
  is in ``metrics.jsonl`` as ``solver_failures``.
* ``skip-task``: recompute the meta-gradient from the healthy tasks only; skip the outer step
  when none is healthy.
* ``stop``: raise :class:`~bilevel.errors.SolverError` naming the iteration, the failed tasks
  and the failure.

A NaN or infinite loss or meta-gradient always stops training
(:class:`~bilevel.errors.NonFiniteError`, naming the iteration and the tasks).
"""

from __future__ import annotations

import sys
from typing import Callable

from ..diagnostics import Diagnostics, failed_systems, failures
from ..errors import NonFiniteError, SolverError

__all__ = ["SOLVER_FAILURE_POLICIES", "SolverHealth", "failed_tasks", "nonfinite_error"]

SOLVER_FAILURE_POLICIES = ("warn", "skip-task", "stop")


def failed_tasks(diagnostics: Diagnostics) -> list[int]:
    """Indices of the tasks (dimension 0 of every diagnostic) with any failure."""
    flags = failed_systems(diagnostics)
    return [] if flags is None else [i for i, bad in enumerate(flags.reshape(-1).tolist()) if bad]


class SolverHealth:
    """Applies one ``--on-solver-failure`` policy to each iteration's per-task diagnostics.

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

    def check(self, iteration: int, diagnostics: Diagnostics) -> list[int]:
        """Return the failed tasks of this iteration (``stop``: raise if there are any)."""
        failed = failed_tasks(diagnostics)
        if not failed:
            return []
        total = failed_systems(diagnostics).numel()
        what = (f"{len(failed)} of {total} tasks failed (tasks {failed}): "
                + "; ".join(f.message for f in failures(diagnostics)))
        if self.policy == "stop":
            raise SolverError(f"iteration {iteration}: {what}; stopped by --on-solver-failure stop (or choose "
                              "--on-solver-failure warn or skip-task)")
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
