"""Reptile (Nichol et al. 2018): move ``theta`` towards the adapted parameters."""

from __future__ import annotations

from dataclasses import dataclass

from bilevel.hypergrad import HypergradBackend, Hypergradient, reject_create_graph

from .first_order import map_onto_theta

__all__ = ["Reptile"]

@dataclass(frozen=True)
class Reptile(HypergradBackend):
    """Returns ``theta - phi`` as the "gradient", so an outer SGD step with rate ``eps`` gives
    Reptile's update ``theta <- theta + eps (phi - theta)``.

    Not the gradient of the outer loss: a meta-learning baseline. ``loss`` is still the
    outer loss at ``phi``, for logging. Parameters of ``theta`` without an inner counterpart
    get a zero update.
    """

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        if create_graph:
            reject_create_graph(f"{type(self).__name__}.hypergrad", self)
        phi = problem.inner_solution("Reptile.hypergrad", theta, inner_batch, inner_solution)
        map_onto_theta("Reptile.hypergrad", theta, phi)
        loss = problem.outer_loss(phi, theta, outer_batch)
        g = {k: theta[k] - phi[k] if k in phi else theta[k] * 0 for k in theta}
        return Hypergradient(loss.detach(), g, phi)
