"""Meta-learning as bilevel problems: MAML-style and iMAML (proximal) inner objectives.

A task's loss is ``task_loss(params, batch) -> scalar``; the support set is the inner
batch, the query set the outer batch, and ``phi`` starts at ``theta``.

* :func:`maml_problem`: ``L_in(phi) = L_train(phi)``; with ``Unrolled`` this is MAML,
  with ``FirstOrder`` first-order MAML, with ``Reptile`` Reptile.
* :func:`imaml_problem`: ``L_in(phi) = L_train(phi) + (lam/2)||phi - theta||^2``; with
  ``Implicit`` the hypergradient is iMAML's ``(I + H/lam)^-1 grad L_test(phi*)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .solvers.inner import InnerSolver
from .problem import BilevelProblem, Curvature
from .tree import Params, check_same_keys

__all__ = ["model_loss", "maml_problem", "imaml_problem", "proximal_penalty"]

TaskLoss = Callable[[Params, Any], Tensor]


def model_loss(module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> TaskLoss:
    """``(params, (x, y)) -> criterion(module(x; params), y)`` through ``functional_call``.

    ``params`` must name exactly the module's parameters (buffers come from the module).
    """
    names = {k: p for k, p in module.named_parameters()}

    def loss(params: Params, batch) -> Tensor:
        check_same_keys("model_loss", names, params, what="params", check_shapes=False)
        x, y = batch
        return criterion(functional_call(module, params, (x,)), y)

    return loss


def proximal_penalty(phi: Params, theta: Params) -> Tensor:
    """``0.5 ||phi - theta||^2`` over all leaves."""
    return 0.5 * sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)


def maml_problem(task_loss: TaskLoss, inner_solver: InnerSolver) -> BilevelProblem:
    """Inner: ``task_loss(phi, support)`` from ``phi_0 = theta``; outer: ``task_loss(phi, query)``."""
    return BilevelProblem(
        inner_loss=lambda phi, theta, support: task_loss(phi, support),
        outer_loss=lambda phi, theta, query: task_loss(phi, query),
        inner_solver=inner_solver,
        inner_init="theta",
    )


def imaml_problem(task_loss: TaskLoss, lam: float, inner_solver: InnerSolver,
                  inner_curvature: Curvature | None = None) -> BilevelProblem:
    """iMAML: inner ``task_loss(phi, support) + (lam/2)||phi - theta||^2`` from ``phi_0 = theta``.

    ``inner_curvature`` (see :class:`BilevelProblem`) replaces the Hessian in second-order inner
    solvers; it must include the proximal term's ``lam I``.

    Raises:
        ValueError: ``lam <= 0`` (the proximal term must make the inner problem strongly convex).
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
        raise ValueError(f"imaml_problem: lam must be a number > 0, got {lam!r}. iMAML's paper uses "
                         "lam = 2.0; lam -> infinity approaches first-order MAML.")
    return BilevelProblem(
        inner_loss=lambda phi, theta, support: task_loss(phi, support) + lam * proximal_penalty(phi, theta),
        outer_loss=lambda phi, theta, query: task_loss(phi, query),
        inner_solver=inner_solver,
        inner_init="theta",
        inner_curvature=inner_curvature,
    )
