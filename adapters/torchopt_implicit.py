"""The implicit hypergradient through TorchOpt's ``custom_root`` (an adapter, for comparison)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import warnings

import torch

from bilevel.hypergrad import AutogradAdapter
from bilevel.linear_solve import CG, Neumann

from ._optional import require

__all__ = ["TorchoptImplicit"]


@dataclass(frozen=True)
class TorchoptImplicit(AutogradAdapter):
    """``torchopt.diff.implicit.custom_root`` on the optimality condition ``grad_phi L_in = 0``.

    Args:
        linear_solver: :class:`~bilevel.CG` (mapped to ``torchopt.linear_solve.solve_cg``) or
            :class:`~bilevel.Neumann` (mapped to ``solve_inv(ns=True)``).

    TorchOpt differentiates with ``torch.autograd``, so tasks run one at a time. Its CG always
    continues through negative curvature (our ``CG(negative_curvature="continue")``).
    """

    linear_solver: Any = field(default_factory=CG)

    def __post_init__(self):
        if not isinstance(self.linear_solver, (CG, Neumann)):
            raise TypeError(f"TorchoptImplicit: linear_solver must be CG(...) or Neumann(...), got "
                            f"{self.linear_solver!r}; TorchOpt has no equivalent of the others.")

    def _torchopt_solve(self, torchopt, num_unknowns: int):
        s = self.linear_solver
        if isinstance(s, CG):
            return torchopt.linear_solve.solve_cg(maxiter=s.maxiter or num_unknowns, rtol=s.tol,
                                                  atol=s.atol, ridge=s.ridge or None)
        return torchopt.linear_solve.solve_inv(ns=True, maxiter=s.steps, alpha=s.alpha)

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None):
        torchopt = require("torchopt", "torchopt", "TorchoptImplicit")
        phi_star = problem.inner_solution("TorchoptImplicit.hypergrad", theta, inner_batch, inner_solution)
        names, theta_names = list(phi_star), list(theta)

        # custom_root takes and returns tuples of tensors, so phi and theta travel as such;
        # it differentiates the optimality condition with functorch transforms, as here.
        def inner_objective(phi_values, theta_values):
            return problem.inner_loss(dict(zip(names, phi_values)), dict(zip(theta_names, theta_values)),
                                      inner_batch)

        optimality = torch.func.grad(inner_objective, argnums=0)

        solve = self._torchopt_solve(torchopt, sum(p.numel() for p in phi_star.values()))

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
        def inner_solver(phi_values, theta_values):
            return tuple(phi_star.values())

        with torch.enable_grad(), warnings.catch_warnings():
            # TorchOpt 0.7 calls the deprecated functorch.vjp; the warning is theirs, not the user's.
            warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
            th = self.leaf_theta(theta)
            phi_init = tuple(v.clone().requires_grad_(True) for v in phi_star.values())
            phi = dict(zip(names, inner_solver(phi_init, tuple(th.values()))))
            return self.result(problem.outer_loss(phi, th, outer_batch), th, phi_star)
