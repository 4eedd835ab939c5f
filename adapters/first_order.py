"""First-order MAML: the outer gradient at the inner solution, applied to ``theta``."""

from __future__ import annotations

from dataclasses import dataclass

from torch.func import grad_and_value

from bilevel.hypergrad import HypergradBackend, Hypergradient, reject_create_graph
from bilevel.tree import Params

__all__ = ["FirstOrder", "map_onto_theta"]


def map_onto_theta(call: str, theta: Params, phi_like: Params) -> None:
    extra = [k for k in phi_like if k not in theta]
    if extra:
        raise ValueError(f"{call}: inner parameters {extra} have no counterpart in theta; a "
                         "first-order update needs phi and theta to share names (meta-learning, "
                         "inner_init='theta'). For hyperparameter problems use Implicit or Unrolled.")


@dataclass(frozen=True)
class FirstOrder(HypergradBackend):
    """``dL_out/dtheta + dL_out/dphi (phi)`` with ``d phi / d theta`` taken as the identity.

    The first-order MAML meta-gradient: ``grad L_test(phi)`` at the adapted parameters,
    plus any direct dependence of ``L_out`` on ``theta``. Biased unless ``lam -> inf``.
    """

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        if create_graph:
            reject_create_graph(f"{type(self).__name__}.hypergrad", self)
        phi = problem.inner_solution("FirstOrder.hypergrad", theta, inner_batch, inner_solution)
        map_onto_theta("FirstOrder.hypergrad", theta, phi)
        (g_phi, g_theta), loss = grad_and_value(problem.outer_loss, argnums=(0, 1))(phi, theta, outer_batch)
        g = {k: g_theta[k] + g_phi[k] if k in g_phi else g_theta[k] for k in theta}
        return Hypergradient(loss.detach(), g, phi)
