"""The unrolled hypergradient through the ``higher`` library (an adapter, for comparison)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bilevel.hypergrad import HypergradBackend, Hypergradient

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
class HigherUnrolled(HypergradBackend):
    """Same math as :class:`Unrolled`, computed by ``higher``'s differentiable optimizers.

    The inner variables live in a small module patched by ``higher.innerloop_ctx``; its
    functional copy starts at ``phi_0(theta)`` (keeping the graph to ``theta``), and the inner
    solver runs as its ``torch.optim`` twin (``GradientDescent`` -> ``SGD``, ``Momentum`` ->
    ``SGD(momentum)``, ``Adam`` -> ``Adam``) through the differentiable optimizer;
    ``torch.autograd.grad`` then gives the hypergradient. Plain autograd, so tasks run one at
    a time.
    """

    vmappable = False

    def hypergrad(self, problem, theta, inner_batch, outer_batch):
        higher = require("higher", "higher", "HigherUnrolled")
        solver = problem.require_solver("HigherUnrolled.hypergrad")
        with torch.enable_grad():
            th = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
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
                out = problem.outer_loss(phi, th, outer_batch)
                grads = torch.autograd.grad(out, list(th.values()), allow_unused=True)
        g = {k: torch.zeros_like(v) if gk is None else gk for (k, v), gk in zip(th.items(), grads)}
        return Hypergradient(out.detach(), g, {k: p.detach() for k, p in phi.items()}, {})
