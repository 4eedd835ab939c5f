"""Backprop through every inner step, with ``torch.func`` (MAML's meta-gradient)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import grad_and_value

from bilevel.eager import autograd_available, autograd_grads, eager_ok, grad_leaves
from bilevel.hypergrad import HypergradBackend, Hypergradient, reject_inner_solution
from bilevel.solvers.inner import func_gradient, graph_gradient
from bilevel.tree import tree_detach

__all__ = ["Unrolled"]


@dataclass(frozen=True)
class Unrolled(HypergradBackend):
    """``grad_theta L_out(phi_S(theta), theta)`` where ``phi_S`` is the inner solver's last iterate.

    Exact for the unrolled computation (not for ``phi*``): its memory grows linearly with
    the number of inner steps ``S``, since every step's graph is kept. Outside ``torch.func``
    transforms (one task, or a loop over tasks) its steps take plain autograd gradients with
    ``create_graph`` (``graph_gradient``), under ``vmap`` ``torch.func`` ones: the same numbers.
    No diagnostics: nothing is assumed that could fail. Supports ``create_graph=True``.

    Example:
        >>> from bilevel import hypergrad, Unrolled  # doctest: +SKIP
        >>> hypergrad(problem, theta, support, query, backend=Unrolled())  # doctest: +SKIP
    """

    supports_create_graph: ClassVar[bool] = True

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        reject_inner_solution(self, inner_solution)
        problem.require_solver("Unrolled.hypergrad")

        def outer_of_theta(th, gradient):
            phi = problem.solve_inner(th, inner_batch, gradient=gradient)
            return problem.outer_loss(phi, th, outer_batch), phi

        if create_graph and autograd_available():  # differentiable in theta and in what the losses close over
            with torch.enable_grad():
                th = grad_leaves(theta, keep_graph=True)
                loss, phi = outer_of_theta(th, graph_gradient)
                (g,) = autograd_grads(loss, th, create_graph=True)
        elif not create_graph and eager_ok(theta, inner_batch, outer_batch):
            with torch.enable_grad():
                th = grad_leaves(theta)
                loss, phi = outer_of_theta(th, graph_gradient)
                (g,) = autograd_grads(loss, th)
        else:  # under a transform: torch.func, which composes with the enclosing one
            g, (loss, phi) = grad_and_value(lambda th: outer_of_theta(th, func_gradient), has_aux=True)(theta)
        return Hypergradient(loss if create_graph else loss.detach(), g, tree_detach(phi))
