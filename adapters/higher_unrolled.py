"""The unrolled hypergradient through the ``higher`` library (an adapter, for comparison)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bilevel.hypergrad import AutogradAdapter, reject_inner_solution, reject_create_graph

from ._optional import require

__all__ = ["HigherUnrolled"]


class _ParameterHolder(nn.Module):
    """A module whose parameters are the inner variables: ``forward()`` returns them as a dict,
    so ``higher.innerloop_ctx`` can patch it like any model."""

    def __init__(self, phi0):
        super().__init__()
        self.names = list(phi0)
        for i, value in enumerate(phi0.values()):
            self.register_parameter(f"p{i}", nn.Parameter(value.detach().clone()))

    def forward(self):
        return {name: getattr(self, f"p{i}") for i, name in enumerate(self.names)}


@dataclass(frozen=True)
class HigherUnrolled(AutogradAdapter):
    """Same math as :class:`Unrolled`, computed by ``higher``'s differentiable optimizers.

    The inner variables live in a small module patched by ``higher.innerloop_ctx``; its
    functional copy starts at ``phi_0(theta)`` (keeping the graph to ``theta``), and the inner
    solver runs as its ``torch.optim`` twin (``GradientDescent`` -> ``SGD``, ``Momentum`` ->
    ``SGD(momentum)``, ``Adam`` -> ``Adam``) through the differentiable optimizer;
    ``torch.autograd.grad`` then gives the hypergradient. Plain autograd, so tasks run one at
    a time.
    """

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        if create_graph:
            reject_create_graph(f"{type(self).__name__}.hypergrad", self)
        reject_inner_solution(self, inner_solution)
        higher = require("higher", "higher", "HigherUnrolled")
        solver = problem.require_solver("HigherUnrolled.hypergrad")
        with torch.enable_grad():
            th = self.leaf_theta(theta)
            phi0 = problem.init_inner(th)
            start = [p if p.requires_grad else p.detach().requires_grad_(True) for p in phi0.values()]
            holder = _ParameterHolder(phi0)
            inner_opt = solver.torch_optimizer(list(holder.parameters()))
            with higher.innerloop_ctx(holder, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=True) as (fmodel, diffopt):
                fmodel.update_params(start)  # start from phi_0(theta), not from the holder's copy
                for _ in range(solver.steps):
                    diffopt.step(problem.inner_loss(fmodel(), th, inner_batch))
                phi = fmodel()
                return self.result(problem.outer_loss(phi, th, outer_batch), th, phi)
