"""A bilevel problem, written once and differentiated by any backend.

    theta* = argmin_theta  L_out(phi*(theta), theta, outer_batch)
    phi*(theta) = argmin_phi L_in(phi, theta, inner_batch)

``phi`` and ``theta`` are parameter dicts (``dict[str, Tensor]``); a ``nn.Module`` enters
through ``torch.func.functional_call``. The hypergradient is the total derivative
``d L_out(phi*(theta), theta) / d theta``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .inner_solvers import InnerSolver, run_inner
from .tree import Params, check_same_keys, tree_detach

__all__ = ["BilevelProblem", "InnerObjective", "Loss", "Curvature"]

Loss = Callable[[Params, Params, Any], Tensor]
"""``loss(phi, theta, batch) -> scalar Tensor``."""

Curvature = Callable[[Params, Params, Any], Callable[[Params], Params]]
"""``curvature(theta, phi, batch) -> (v -> M v)``: a curvature matrix of ``L_in`` at ``phi``."""


def _scalar_checked(fn: Loss, name: str) -> Loss:
    def checked(phi, theta, batch):
        out = fn(phi, theta, batch)
        if not isinstance(out, Tensor):
            raise TypeError(f"{name}(phi, theta, batch): expected a scalar Tensor, got "
                            f"{type(out).__name__}.")
        if out.ndim != 0:
            raise ValueError(f"{name}(phi, theta, batch): expected a scalar Tensor, got a tensor "
                             f"of shape {tuple(out.shape)}. Reduce it, e.g. with .mean().")
        return out

    checked.__wrapped__ = fn
    return checked


@dataclass(frozen=True)
class BilevelProblem:
    """An inner and an outer objective, how ``phi`` starts, and how the inner problem is solved.

    Args:
        inner_loss: ``L_in(phi, theta, batch)``, minimized over ``phi``.
        outer_loss: ``L_out(phi, theta, batch)``.
        inner_solver: an :class:`~bilevel.InnerSolver` (``None`` if you only ever pass
            ``inner_solution=`` to an implicit or first-order backend).
        inner_init: where ``phi`` starts: ``"theta"`` (meta-learning: ``phi_0 = theta``), a
            callable ``theta -> phi_0``, or a fixed dict (hyperparameter optimization).
        inner_curvature: the matrix second-order inner solvers (:class:`~bilevel.NewtonCG`) use
            in place of the Hessian of ``L_in``, as ``(theta, phi, batch) -> matvec``, e.g. a
            Gauss-Newton matrix from :func:`~bilevel.make_ggn`; ``None``: the exact Hessian.
            It changes how the inner problem is solved, not the problem.

    Example:
        >>> import torch
        >>> from bilevel import BilevelProblem, GradientDescent
        >>> problem = BilevelProblem(
        ...     inner_loss=lambda phi, theta, b: ((phi["w"] - b) ** 2).sum() + theta["lam"] * (phi["w"] ** 2).sum(),
        ...     outer_loss=lambda phi, theta, b: ((phi["w"] - 1.0) ** 2).sum(),
        ...     inner_solver=GradientDescent(lr=0.1, steps=50),
        ...     inner_init={"w": torch.zeros(3)})
    """

    inner_loss: Loss
    outer_loss: Loss
    inner_solver: InnerSolver | None = None
    inner_init: str | Callable[[Params], Params] | Mapping[str, Tensor] = "theta"
    inner_curvature: Curvature | None = None

    def __post_init__(self):
        for name in ("inner_loss", "outer_loss"):
            if not callable(getattr(self, name)):
                raise TypeError(f"BilevelProblem: {name} must be callable as {name}(phi, theta, "
                                f"batch) -> scalar Tensor, got {type(getattr(self, name)).__name__}.")
        if self.inner_solver is not None and not isinstance(self.inner_solver, InnerSolver):
            raise TypeError(f"BilevelProblem: inner_solver must be an InnerSolver such as "
                            f"GradientDescent(lr=0.1, steps=10), got {type(self.inner_solver).__name__}.")
        if self.inner_curvature is not None and not callable(self.inner_curvature):
            raise TypeError("BilevelProblem: inner_curvature must be callable as (theta, phi, batch) -> matvec, "
                            f"got {type(self.inner_curvature).__name__}.")
        init = self.inner_init
        if isinstance(init, str) and init != "theta":
            raise ValueError(f"BilevelProblem: inner_init={init!r} is unknown; use 'theta', a callable "
                             "theta -> phi_0 or a dict of tensors.")
        if not (isinstance(init, (str, Mapping)) or callable(init)):
            raise TypeError(f"BilevelProblem: inner_init must be 'theta', a callable or a dict, got "
                            f"{type(init).__name__}.")
        object.__setattr__(self, "inner_loss", _scalar_checked(self.inner_loss, "inner_loss"))
        object.__setattr__(self, "outer_loss", _scalar_checked(self.outer_loss, "outer_loss"))

    def init_inner(self, theta: Params) -> Params:
        """``phi_0`` for this ``theta``."""
        if isinstance(self.inner_init, str):
            return dict(theta)
        if isinstance(self.inner_init, Mapping):
            return dict(self.inner_init)
        return dict(self.inner_init(theta))

    def objective(self, theta: Params, batch) -> InnerObjective:
        """The inner objective ``phi -> L_in(phi, theta, batch)``."""
        return InnerObjective(self, theta, batch)

    def require_solver(self, call: str) -> InnerSolver:
        if self.inner_solver is None:
            raise ValueError(f"{call}: the problem has no inner_solver; give BilevelProblem an "
                             "inner_solver or pass inner_solution=phi_star.")
        return self.inner_solver

    def solve_inner(self, theta: Params, batch, detach: bool = False) -> Params:
        """Run the inner solver from ``init_inner(theta)``; ``detach=True`` keeps no graph."""
        solver = self.require_solver("BilevelProblem.solve_inner")
        if detach:
            theta = tree_detach(theta)
        phi, _ = run_inner(solver, self.objective(theta, batch), self.init_inner(theta), detach=detach)
        return phi

    def inner_solution(self, call: str, theta: Params, batch, given: Params | None) -> Params:
        """``given`` (validated against ``phi_0``'s names and shapes) or a fresh detached solve."""
        if given is None:
            return self.solve_inner(theta, batch, detach=True)
        check_same_keys(call, self.init_inner(theta), given, what="inner_solution")
        return tree_detach(given)


@dataclass(frozen=True)
class InnerObjective:
    """``phi -> L_in(phi, theta, batch)`` for one ``theta`` and batch: what inner solvers minimize.

    ``curvature(phi)`` is the problem's ``inner_curvature`` at ``phi`` (``None`` if it has none:
    solvers then use the Hessian of this function).
    """

    problem: BilevelProblem
    theta: Params
    batch: Any

    def __call__(self, phi: Params) -> Tensor:
        return self.problem.inner_loss(phi, self.theta, self.batch)

    def curvature(self, phi: Params) -> Callable[[Params], Params] | None:
        build = self.problem.inner_curvature
        return None if build is None else build(self.theta, phi, self.batch)
