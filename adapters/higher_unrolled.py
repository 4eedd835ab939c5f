"""The unrolled hypergradient through the ``higher`` library (an adapter, for comparison)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel.hypergrad import HypergradBackend, Hypergradient

from ._optional import require

__all__ = ["HigherUnrolled"]


@dataclass(frozen=True)
class HigherUnrolled(HypergradBackend):
    """Same math as :class:`Unrolled`, computed by ``higher``'s differentiable optimizers.

    The inner solver is mapped to its ``torch.optim`` twin (``GradientDescent`` -> ``SGD``,
    ``Momentum`` -> ``SGD(momentum)``, ``Adam`` -> ``Adam``) and stepped with
    ``higher.optim.get_diff_optim`` (what ``higher.innerloop_ctx`` uses) on explicit
    parameter lists, then ``torch.autograd.grad`` gives the hypergradient. Plain autograd,
    so tasks run one at a time.
    """

    vmappable = False

    def hypergrad(self, problem, theta, inner_batch, outer_batch):
        higher = require("higher", "higher", "HigherUnrolled")
        solver = problem.require_solver("HigherUnrolled.hypergrad")
        with torch.enable_grad():
            th = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
            phi0 = problem.init_inner(th)
            names = list(phi0)
            params = [p if p.requires_grad else p.detach().requires_grad_(True) for p in phi0.values()]
            reference = [torch.zeros_like(p, requires_grad=True) for p in params]
            diffopt = higher.optim.get_diff_optim(solver.torch_optimizer(reference), reference,
                                                  track_higher_grads=True)
            for _ in range(solver.steps):
                loss = problem.inner_loss(dict(zip(names, params)), th, inner_batch)
                params = diffopt.step(loss, params=params)
            phi = dict(zip(names, params))
            out = problem.outer_loss(phi, th, outer_batch)
            grads = torch.autograd.grad(out, list(th.values()), allow_unused=True)
        g = {k: torch.zeros_like(v) if gk is None else gk for (k, v), gk in zip(th.items(), grads)}
        return Hypergradient(out.detach(), g, {k: p.detach() for k, p in phi.items()}, {})
