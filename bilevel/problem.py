"""The problems the backends differentiate, written once.

:class:`BilevelProblem`, an inner minimum::

    theta* = argmin_theta  L_out(phi*(theta), theta, outer_batch)
    phi*(theta) = argmin_phi L_in(phi, theta, inner_batch)

:class:`FixedPointProblem`, an inner fixed point ``z*(theta) = T(z*, theta, batch)``.

``phi``, ``z`` and ``theta`` are parameter dicts (``dict[str, Tensor]``); a ``nn.Module``
enters through ``torch.func.functional_call`` (:mod:`bilevel.modules`). The hypergradient
is the total derivative ``d L_out(phi*(theta), theta) / d theta``; both problems go to the
same entry points, :func:`bilevel.hypergrad` and :func:`bilevel.batched_hypergrad`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .solvers.fixed_point import FixedPointResult, FixedPointSolver, Map, check_map_output
from .solvers.inner import Gradient, InnerSolver, detached_gradient, func_gradient, run_inner
from .tree import Params, check_same_keys, tree_detach

__all__ = ["BilevelProblem", "FixedPointProblem", "InnerObjective", "Loss", "Curvature", "Map"]

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
        if isinstance(init, torch.nn.Module):
            raise TypeError(f"BilevelProblem: inner_init got a module ({type(init).__name__}); it takes the "
                            "starting point as a dict of tensors: inner_init=module_params(model)[0] (from "
                            "bilevel import module_params; its trainable= picks a subset), 'theta', or a callable "
                            "theta -> phi_0.")
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

    def objective(self, theta: Params, batch, gradient: Gradient = func_gradient) -> InnerObjective:
        """The inner objective ``phi -> L_in(phi, theta, batch)``, differentiated by ``gradient``."""
        return InnerObjective(self, theta, batch, gradient)

    def require_solver(self, call: str) -> InnerSolver:
        if self.inner_solver is None:
            raise ValueError(f"{call}: the problem has no inner_solver; give BilevelProblem an "
                             "inner_solver or pass inner_solution=phi_star.")
        return self.inner_solver

    def solve_inner(self, theta: Params, batch, detach: bool = False, gradient: Gradient | None = None) -> Params:
        """Run the inner solver from ``init_inner(theta)``.

        ``detach=True`` keeps no graph (steps take :func:`~bilevel.solvers.inner.detached_gradient`);
        otherwise the result is differentiable in ``theta`` through every step (by default with
        ``torch.func``; a backend may pass another ``gradient``).
        """
        solver = self.require_solver("BilevelProblem.solve_inner")
        if detach:
            theta = tree_detach(theta)
        gradient = gradient or (detached_gradient if detach else func_gradient)
        try:
            phi, _ = run_inner(solver, self.objective(theta, batch, gradient), self.init_inner(theta), detach=detach)
        except KeyError as exc:
            raise self._explain_missing(exc, theta) from exc
        return phi

    def _explain_missing(self, exc: KeyError, theta: Params) -> Exception:
        key = exc.args[0] if exc.args else None
        if isinstance(self.inner_init, str) and isinstance(key, str) and key not in theta:
            return KeyError(f"inner_loss looked up phi[{key!r}], but phi starts at theta (inner_init='theta', the "
                            f"default, for meta-learning), whose names are {list(theta)}. When the inner variables "
                            "are not theta's (hyperparameter optimization), give BilevelProblem inner_init= (a dict "
                            f"of starting tensors, e.g. inner_init={{{key!r}: torch.zeros(...)}}, or "
                            "module_params(model)[0] for a model's weights; or a callable theta -> phi_0).")
        return exc

    def inner_solution(self, call: str, theta: Params, batch, given: Params | None) -> Params:
        """``given`` (validated against ``phi_0``'s names and shapes) or a fresh detached solve."""
        if given is None:
            return self.solve_inner(theta, batch, detach=True)
        if isinstance(self.inner_init, str) and isinstance(given, Mapping) and set(given) != set(theta):
            raise ValueError(f"{call}: inner_solution has names {list(given)}, but phi starts at theta "
                             f"(inner_init='theta', the default), whose names are {list(theta)}. If phi has its own "
                             "variables, give BilevelProblem inner_init= (a dict of starting tensors or a callable "
                             "theta -> phi_0).")
        check_same_keys(call, self.init_inner(theta), given, what="inner_solution")
        return tree_detach(given)


@dataclass(frozen=True)
class InnerObjective:
    """``phi -> L_in(phi, theta, batch)`` for one ``theta`` and batch: what inner solvers minimize.

    ``gradient`` is how steps differentiate it (:func:`~bilevel.solvers.inner.objective_grad`),
    chosen by the backend that runs the solve. ``curvature(phi)`` is the problem's
    ``inner_curvature`` at ``phi`` (``None`` if it has none: solvers then use the Hessian of
    this function).
    """

    problem: BilevelProblem
    theta: Params
    batch: Any
    gradient: Gradient = func_gradient

    def __call__(self, phi: Params) -> Tensor:
        return self.problem.inner_loss(phi, self.theta, self.batch)

    def curvature(self, phi: Params) -> Callable[[Params], Params] | None:
        build = self.problem.inner_curvature
        return None if build is None else build(self.theta, phi, self.batch)


# --- A fixed point instead of a minimum.


def _map_checked(fn: Map) -> Map:
    def checked(z, theta, batch):
        return check_map_output("map(z, theta, batch)", z, fn(z, theta, batch))

    checked.__wrapped__ = fn
    return checked


@dataclass(frozen=True)
class FixedPointProblem:
    """An outer loss of the fixed point of a map: ``min_theta L_out(z*(theta), theta)`` with
    ``z*(theta) = map(z*, theta, batch)``.

    The hypergradient ``d L_out(z*(theta), theta) / d theta`` exists (implicit function
    theorem) when ``I - dT/dz`` is invertible at ``z*``; the implicit backend also needs the
    spectral radius of ``dT/dz`` below 1 for its iterative adjoint solves, which holds for
    any contraction.

    Args:
        map: ``map(z, theta, batch) -> z`` returning a dict with the keys and shapes of ``z``;
            checked on every call.
        outer_loss: ``L_out(z, theta, batch) -> scalar Tensor``.
        forward_solver: a :class:`FixedPointSolver` (:class:`Anderson`, :class:`FixedPointIteration`);
            ``None`` if you only ever pass ``inner_solution=`` to ``FixedPointImplicit``.
        init: where the forward solver starts: a fixed dict ``z0``, or a callable
            ``init(theta, batch) -> z0`` (a deep equilibrium state has one row per example,
            so its shape comes from the batch). Required with a ``forward_solver``.

    Example:
        >>> import torch
        >>> from bilevel import Anderson
        >>> problem = FixedPointProblem(
        ...     map=lambda z, theta, x: {"z": torch.tanh(theta["W"] @ z["z"] + x)},
        ...     outer_loss=lambda z, theta, y: ((z["z"] - y) ** 2).sum(),
        ...     forward_solver=Anderson(steps=50, tol=1e-8),
        ...     init=lambda theta, x: {"z": torch.zeros_like(x)})
        >>> res = problem.solve({"W": 0.3 * torch.eye(2)}, torch.ones(2))
        >>> bool(res.converged), float(res.residual_norm) < 1e-7
        (True, True)
    """

    map: Map
    outer_loss: Loss
    forward_solver: FixedPointSolver | None = None
    init: Callable[[Params, Any], Params] | Mapping[str, Tensor] | None = None

    def __post_init__(self):
        if not callable(self.map):
            raise TypeError("FixedPointProblem: map must be callable as map(z, theta, batch) -> z (a dict with "
                            f"z's keys and shapes), got {type(self.map).__name__}.")
        if not callable(self.outer_loss):
            raise TypeError("FixedPointProblem: outer_loss must be callable as outer_loss(z, theta, batch) -> "
                            f"scalar Tensor, got {type(self.outer_loss).__name__}.")
        if self.forward_solver is not None and not isinstance(self.forward_solver, FixedPointSolver):
            raise TypeError("FixedPointProblem: forward_solver must be a FixedPointSolver such as "
                            "Anderson(steps=50) or FixedPointIteration(steps=100), got "
                            f"{type(self.forward_solver).__name__}.")
        init = self.init
        if isinstance(init, str):
            raise ValueError(f"FixedPointProblem: init={init!r} is not accepted: the shape of z is not known "
                             "before the map runs. Pass a dict z0 or a callable init(theta, batch) -> z0, e.g. "
                             "lambda theta, x: {'z': x.new_zeros(x.shape[0], hidden)}.")
        if init is not None and not (isinstance(init, Mapping) or callable(init)):
            raise TypeError(f"FixedPointProblem: init must be a dict z0 or a callable init(theta, batch) -> z0, "
                            f"got {type(init).__name__}.")
        if init is None and self.forward_solver is not None:
            raise ValueError("FixedPointProblem: a forward_solver needs a starting point; pass init= (a dict z0 "
                             "or a callable init(theta, batch) -> z0).")
        object.__setattr__(self, "map", _map_checked(self.map))
        object.__setattr__(self, "outer_loss", _scalar_checked(self.outer_loss, "outer_loss"))

    def init_state(self, theta: Params, batch) -> Params:
        """``z0`` for this ``theta`` and ``batch``."""
        if isinstance(self.init, Mapping):
            return dict(self.init)
        return dict(self.init(theta, batch))

    def require_solver(self, call: str) -> FixedPointSolver:
        if self.forward_solver is None:
            raise ValueError(f"{call}: the problem has no forward_solver; give FixedPointProblem a "
                             "forward_solver (and init) or pass inner_solution=z_star.")
        return self.forward_solver

    def solve(self, theta: Params, batch, detach: bool = False) -> FixedPointResult:
        """Run the forward solver on ``z -> map(z, theta, batch)`` from ``init``; ``detach=True``
        keeps no graph (for implicit differentiation), otherwise the result is differentiable
        through every iteration (for ``UnrolledFixedPoint``)."""
        solver = self.require_solver("FixedPointProblem.solve")
        if detach:
            theta = tree_detach(theta)
        result = solver(lambda z: self.map(z, theta, batch), self.init_state(theta, batch))
        return result._replace(solution=tree_detach(result.solution)) if detach else result

    def fixed_point(self, call: str, theta: Params, batch, given: Params | None):
        """``(z*, the forward solve's result without its solution)``: ``given`` (validated,
        detached; no forward solve, ``None``) or a fresh detached solve."""
        if given is None:
            result = self.solve(theta, batch, detach=True)
            return result.solution, result._replace(solution={})
        if self.init is not None:
            check_same_keys(call, self.init_state(theta, batch), given, what="inner_solution")
        elif not isinstance(given, Mapping):
            raise TypeError(f"{call}: inner_solution must be a dict[str, Tensor] shaped like z, got "
                            f"{type(given).__name__}.")
        return tree_detach(given), None
