"""Backprop through every inner step, with ``torch.func`` (MAML's meta-gradient)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad_and_value

from bilevel.eager import autograd_grads, eager_ok, grad_leaves
from bilevel.hypergrad import HypergradBackend, Hypergradient, reject_inner_solution
from bilevel.inner_solvers import autograd_steps
from bilevel.tree import tree_detach

__all__ = ["Unrolled"]


@dataclass(frozen=True)
class Unrolled(HypergradBackend):
    """``grad_theta L_out(phi_S(theta), theta)`` where ``phi_S`` is the inner solver's last iterate.

    Exact for the unrolled computation (not for ``phi*``): its memory grows linearly with
    the number of inner steps ``S``, since every step's graph is kept. Outside ``torch.func``
    transforms (one task, or a loop over tasks) it backpropagates with plain autograd
    (``bilevel.eager``), under ``vmap`` with ``torch.func``: the same numbers.

    Example:
        >>> from bilevel import hypergrad, Unrolled  # doctest: +SKIP
        >>> hypergrad(problem, theta, support, query, backend=Unrolled())  # doctest: +SKIP
    """

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None):
        reject_inner_solution(self, inner_solution)
        problem.require_solver("Unrolled.hypergrad")

        def outer_of_theta(th):
            phi = problem.solve_inner(th, inner_batch)
            return problem.outer_loss(phi, th, outer_batch), phi

        if eager_ok(theta, inner_batch, outer_batch):
            with torch.enable_grad(), autograd_steps():
                th = grad_leaves(theta)
                loss, phi = outer_of_theta(th)
                (g,) = autograd_grads(loss, th)
        else:
            g, (loss, phi) = grad_and_value(outer_of_theta, has_aux=True)(theta)
        return Hypergradient(loss.detach(), g, tree_detach(phi), {})
