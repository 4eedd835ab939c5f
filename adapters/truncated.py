"""Backprop through the last ``steps`` inner steps only (truncated backpropagation)."""

from __future__ import annotations

from dataclasses import dataclass

from torch.func import grad_and_value

from bilevel.hypergrad import HypergradBackend, Hypergradient, reject_inner_solution, reject_create_graph
from bilevel.solvers.inner import check_steps, detached_gradient, run_inner
from bilevel.tree import tree_detach

__all__ = ["TruncatedUnrolled"]


@dataclass(frozen=True)
class TruncatedUnrolled(HypergradBackend):
    """Run ``S - steps`` inner steps without a graph, then differentiate through the last ``steps``.

    Memory grows with ``steps``, not ``S``; the gradient through the truncated prefix (and
    through ``phi_0``) is dropped, trading bias for memory. ``steps == S`` equals
    :class:`Unrolled`.
    """

    steps: int

    def __post_init__(self):
        check_steps("TruncatedUnrolled", self.steps)

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        if create_graph:
            reject_create_graph(f"{type(self).__name__}.hypergrad", self)
        reject_inner_solution(self, inner_solution)
        solver = problem.require_solver("TruncatedUnrolled.hypergrad")
        if self.steps > solver.steps:
            raise ValueError(f"TruncatedUnrolled(steps={self.steps}): more than the inner solver's "
                             f"{solver.steps} steps; use at most {solver.steps} or Unrolled().")
        prefix = solver.steps - self.steps
        theta_const = tree_detach(theta)
        phi, state = run_inner(solver, problem.objective(theta_const, inner_batch, detached_gradient),
                               problem.init_inner(theta_const), steps=prefix, detach=True)

        def outer_of_theta(th):
            if prefix == 0:  # nothing truncated: keep the path through phi_0 as Unrolled does
                start, st = problem.init_inner(th), None
            else:
                start, st = phi, state
            phi_s, _ = run_inner(solver, problem.objective(th, inner_batch), start, st, steps=self.steps)
            return problem.outer_loss(phi_s, th, outer_batch), phi_s

        g, (loss, phi_s) = grad_and_value(outer_of_theta, has_aux=True)(theta)
        return Hypergradient(loss.detach(), g, tree_detach(phi_s))
