"""The implicit hypergradient through TorchOpt's ``custom_root`` (an adapter, for comparison)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from bilevel.diagnostics import Diagnostics, InnerStationarity, stationarity
from bilevel.hypergrad import AutogradAdapter, reject_create_graph
from bilevel.solvers.linear import CG, LinearSolveResult, Neumann, budget_truncated, threshold
from bilevel.tree import tree_detach, tree_norm
from bilevel.validation import check_positive

from ._optional import require
from .implicit import DEFAULT_NEWTON_CHECK, DEFAULT_STATIONARITY_RTOL, _grad_norm, newton_change

__all__ = ["TorchoptImplicit"]


def _continuing_cg() -> CG:
    return CG(negative_curvature="continue")


@dataclass(frozen=True)
class TorchoptImplicit(AutogradAdapter):
    """``torchopt.diff.implicit.custom_root`` on the optimality condition ``grad_phi L_in = 0``.

    Args:
        linear_solver: :class:`~bilevel.CG` with ``negative_curvature="continue"`` (the default
            here; mapped to ``torchopt.linear_solve.solve_cg``, whose CG always continues through
            negative curvature, so ``"stop"`` is refused) or :class:`~bilevel.Neumann` (mapped to
            ``solve_inv(ns=True)``).
        stationarity_rtol: as :class:`~bilevel.Implicit`.
        newton_check: as :class:`~bilevel.Implicit`: the hypergradient after one Newton step of
            the inner problem (computed with the native implicit formula and this linear
            solver) must move by at most this fraction of its norm; ``None``: not checked.

    TorchOpt differentiates with ``torch.autograd``, so tasks run one at a time. TorchOpt
    reports nothing about its solve; the adapter measures it: the true residual
    ``||b - A x||`` of TorchOpt's solution (one more matvec), so ``converged``,
    ``residual_norm``, ``diverged`` and ``truncated`` are filled (``steps`` is the budget;
    ``negative_curvature`` is not observable and reported ``False``), and the failure policy
    applies as for the native backends.
    """

    linear_solver: Any = field(default_factory=_continuing_cg)
    stationarity_rtol: float | None = DEFAULT_STATIONARITY_RTOL
    newton_check: float | None = DEFAULT_NEWTON_CHECK

    def __post_init__(self):
        if not isinstance(self.linear_solver, (CG, Neumann)):
            raise TypeError(f"TorchoptImplicit: linear_solver must be CG(...) or Neumann(...), got "
                            f"{self.linear_solver!r}; TorchOpt has no equivalent of the others.")
        if isinstance(self.linear_solver, CG) and self.linear_solver.negative_curvature == "stop":
            raise ValueError("TorchoptImplicit: TorchOpt's CG always continues through negative curvature, so "
                             "CG(negative_curvature='stop') cannot be honoured; pass CG(..., "
                             "negative_curvature='continue') (TorchOpt's behaviour) or use the native Implicit.")
        if self.stationarity_rtol is not None:
            check_positive("TorchoptImplicit", "stationarity_rtol", self.stationarity_rtol)
        if self.newton_check is not None:
            check_positive("TorchoptImplicit", "newton_check", self.newton_check)

    def _torchopt_solve(self, torchopt, num_unknowns: int):
        s = self.linear_solver
        if isinstance(s, CG):
            return torchopt.linear_solve.solve_cg(maxiter=s.maxiter or num_unknowns, rtol=s.tol,
                                                  atol=s.atol, ridge=s.ridge or None), s.maxiter or num_unknowns
        return torchopt.linear_solve.solve_inv(ns=True, maxiter=s.steps, alpha=s.alpha), s.steps

    def _measured(self, solve, budget: int, record: list):
        """TorchOpt's solve, and the true residual of its answer appended to ``record``."""
        s = self.linear_solver
        ridge = getattr(s, "ridge", 0.0)

        def measured_solve(matvec, b):
            x = solve(matvec, b)
            with torch.no_grad():
                ax = matvec(x)
                ax = ax if isinstance(ax, tuple) else (ax,)
                xs, bs = (x if isinstance(x, tuple) else (x,)), (b if isinstance(b, tuple) else (b,))
                res = torch.sqrt(sum(((bi - (ai + ridge * xi)) ** 2).sum() for bi, ai, xi in zip(bs, ax, xs)))
                b_norm = torch.sqrt(sum((bi ** 2).sum() for bi in bs))
                ax_norm = torch.sqrt(sum(((ai + ridge * xi) ** 2).sum() for ai, xi in zip(ax, xs)))
                # The true residual of a float32 solve cannot fall below rounding: ~eps (||Ax|| + ||b||);
                # float64 honours tol as given, as threshold() does.
                rounding = (100 * torch.finfo(b_norm.dtype).eps * (ax_norm + b_norm) if b_norm.dtype == torch.float32
                            else torch.zeros_like(b_norm))
            converged = res <= torch.maximum(threshold(b_norm, s.tol, s.atol), rounding)
            diverged = ~torch.isfinite(res)
            record.append(LinearSolveResult(
                solution={}, converged=converged, steps=torch.tensor(budget), residual_norm=res,
                negative_curvature=torch.zeros((), dtype=torch.bool), diverged=diverged,
                truncated=budget_truncated(s.truncated, converged, torch.zeros_like(converged), diverged)))
            return x

        return measured_solve

    def hypergrad(self, problem, theta, inner_batch, outer_batch, *, inner_solution=None, create_graph=False):
        if create_graph:
            reject_create_graph(f"{type(self).__name__}.hypergrad", self)
        torchopt = require("torchopt", "torchopt", "TorchoptImplicit")
        phi_star = problem.inner_solution("TorchoptImplicit.hypergrad", theta, inner_batch, inner_solution)
        names, theta_names = list(phi_star), list(theta)

        # custom_root takes and returns tuples of tensors, so phi and theta travel as such;
        # it differentiates the optimality condition with functorch transforms, as here.
        def inner_objective(phi_values, theta_values):
            return problem.inner_loss(dict(zip(names, phi_values)), dict(zip(theta_names, theta_values)),
                                      inner_batch)

        optimality = torch.func.grad(inner_objective, argnums=0)
        solve, budget = self._torchopt_solve(torchopt, sum(p.numel() for p in phi_star.values()))
        record: list = []

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=self._measured(solve, budget, record))
        def inner_solver(phi_values, theta_values):
            return tuple(phi_star.values())

        with torch.enable_grad(), warnings.catch_warnings():
            # TorchOpt 0.7 calls the deprecated functorch.vjp; the warning is theirs, not the user's.
            warnings.filterwarnings("ignore", category=FutureWarning, module="torchopt")
            th = self.leaf_theta(theta)
            phi_init = tuple(v.clone().requires_grad_(True) for v in phi_star.values())
            phi = dict(zip(names, inner_solver(phi_init, tuple(th.values()))))
            result = self.result(problem.outer_loss(phi, th, outer_batch), th, phi_star)
        inner_grad = tree_detach(dict(zip(names, optimality(tuple(phi_star.values()),
                                                            tuple(tree_detach(theta).values())))))
        residual = tree_norm(inner_grad)
        if self.stationarity_rtol is None:  # not judged: the reference's gradient is not taken
            reference = torch.full_like(residual, float("nan"))
        else:
            reference = _grad_norm(problem.inner_loss, problem.init_inner(theta), theta, inner_batch)
        change = None
        if self.stationarity_rtol is not None and self.newton_check is not None:
            change = newton_change(problem.inner_loss, problem.outer_loss, theta, phi_star, inner_batch, outer_batch,
                                   self.linear_solver, "auto", None, inner_grad, result.grad, residual)
        stat = stationarity(InnerStationarity, residual, reference, self.stationarity_rtol, newton_change=change,
                            newton_check=self.newton_check)
        return result._replace(diagnostics=Diagnostics(linear_solve=record[-1] if record else None, stationarity=stat))
