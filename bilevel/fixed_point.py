"""Fixed points instead of minima: ``z* = T(z*, theta, batch)`` and the solvers that find them.

A deep equilibrium layer, a proximal-gradient or ADMM solver run to convergence, a message
passing scheme iterated to a steady state: each defines its output implicitly as a fixed point
of a map ``T``. :class:`FixedPointProblem` holds the map, an outer loss of the fixed point and
a forward solver; a backend (``FixedPointImplicit``, ``UnrolledFixedPoint`` in
``bilevel.adapters``) gives ``d L_out(z*(theta), theta) / d theta``.

The forward solvers, :class:`FixedPointIteration` and :class:`Anderson`, are immutable
objects called as ``solver(fn, z0) -> FixedPointResult`` for ``fn: z -> T(z)``. Like the
linear solvers they

* run a fixed number of iterations and freeze the iterate once converged (masked updates,
  no Python control flow on tensor values), so a batch of problems solves under
  ``torch.func.vmap``; outside ``vmap`` they return as soon as every iterate has converged;
* are built from tensor ops only, so ``UnrolledFixedPoint`` differentiates through them;
* never fail silently: the result reports ``converged``, ``steps``, ``residual_norm``
  ``= ||T(z) - z||`` at the returned ``z`` and ``diverged``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from .errors import SolverError
from .linear_solve import _known_true, _threshold
from .problem import Loss, _scalar_checked
from .tree import (Params, check_same_keys, tree_detach, tree_norm, tree_ravel, tree_sub, tree_unravel,
                   tree_where)
from .validation import check_nonnegative, check_int

if TYPE_CHECKING:  # imported at call time below, so that bilevel.hypergrad may import this module
    from .hypergrad import HypergradBackend, Hypergradient

__all__ = [
    "FixedPointResult",
    "FixedPointSolver",
    "FixedPointIteration",
    "Anderson",
    "FixedPointProblem",
    "fixed_point_hypergrad",
    "batched_fixed_point_hypergrad",
]

Map = Callable[[Params, Params, Any], Params]
"""``map(z, theta, batch) -> z`` with the keys and shapes of ``z``."""


class FixedPointResult(NamedTuple):
    """A fixed point ``z = T(z)`` with diagnostics (all tensors, so it passes through ``vmap``).

    Attributes:
        solution: ``z``, a dict shaped like the starting point.
        converged: ``||T(z) - z|| <= max(tol * ||z||, atol)`` (bool).
        steps: iterations that changed ``z`` (int64).
        residual_norm: ``||T(z) - z||`` at the returned ``z``.
        diverged: the residual is not finite or ended above the starting one, ``||T(z0) - z0||``.
    """

    solution: Params
    converged: Tensor
    steps: Tensor
    residual_norm: Tensor
    diverged: Tensor

    def diagnostics(self) -> dict[str, Tensor]:
        """Everything but the solution."""
        return {k: getattr(self, k) for k in self._fields if k != "solution"}


def _check_map_output(call: str, z: Params, out) -> Params:
    """``out`` if it is a dict of tensors with the keys and shapes of ``z``; else a clear error."""
    if not isinstance(out, Mapping) or not all(isinstance(v, Tensor) for v in out.values()):
        raise TypeError(f"{call}: the map must return a dict[str, Tensor] with the keys and shapes of z "
                        f"(a fixed point satisfies z == map(z)), got {type(out).__name__}.")
    missing = [k for k in z if k not in out]
    extra = [k for k in out if k not in z]
    if missing or extra:
        raise ValueError(f"{call}: the map's output has keys {list(out)}, but z has {list(z)} (missing "
                         f"{missing}, unexpected {extra}). Return a dict with exactly the keys of z.")
    for k in z:
        if out[k].shape != z[k].shape:
            raise ValueError(f"{call}: the map's output[{k!r}] has shape {tuple(out[k].shape)}, but z[{k!r}] "
                             f"has shape {tuple(z[k].shape)}. A fixed point needs map(z) shaped like z.")
    return dict(out)


class FixedPointSolver(abc.ABC):
    """A configured forward solver: ``solver(fn, z0) -> FixedPointResult`` for a map ``fn: z -> T(z)``.

    Subclasses are immutable and validate their settings at construction. ``steps`` bounds the
    iterations (each costs one evaluation of ``T``, plus one at ``z0``); the iteration stops
    once ``||T(z) - z|| <= max(tol ||z||, atol)``. Set ``atol`` when the fixed point may be 0.
    """

    steps: int
    tol: float
    atol: float

    @abc.abstractmethod
    def __call__(self, fn: Callable[[Params], Params], z0: Params) -> FixedPointResult:
        """Iterate from ``z0`` towards ``z = fn(z)``."""


@dataclass(frozen=True)
class FixedPointIteration(FixedPointSolver):
    """Damped (Krasnosel'skii-Mann) iteration ``z <- (1 - damping) z + damping T(z)``.

    Converges linearly at rate ``rho(I - damping (I - J))`` near ``z*``, ``J = dT/dz``: for a
    contraction (``||J|| < 1``) any ``damping`` in ``(0, 1]`` works and ``1`` is fastest;
    ``damping < 1`` also converges for some non-expansive or mildly expansive maps.

    Example:
        >>> import torch
        >>> solver = FixedPointIteration(steps=200, tol=1e-7)
        >>> res = solver(lambda z: {"x": torch.cos(z["x"])}, {"x": torch.zeros(())})
        >>> round(float(res.solution["x"]), 5), bool(res.converged)  # the Dottie number
        (0.73909, True)
    """

    steps: int = 100
    tol: float = 1e-6
    atol: float = 0.0
    damping: float = 1.0

    def __post_init__(self):
        check_int("FixedPointIteration", "steps", self.steps)
        check_nonnegative("FixedPointIteration", "tol", self.tol)
        check_nonnegative("FixedPointIteration", "atol", self.atol)
        if not _in_half_open_unit(self.damping):
            raise ValueError(f"FixedPointIteration: damping must be a number in (0, 1], got {self.damping!r}; "
                             "1 is the plain iteration z <- T(z), smaller values damp it.")

    def __call__(self, fn, z0):
        call = "FixedPointIteration"
        z = dict(z0)
        r = tree_sub(_check_map_output(call, z, fn(z)), z)
        state = _Progress.start(z, r, self.tol, self.atol)
        for _ in range(self.steps):
            if _known_true(state.done):
                break
            z_new = {k: z[k] + self.damping * r[k] for k in z}
            r_new = tree_sub(fn(z_new), z_new)
            active = ~state.done
            z, r = tree_where(active, z_new, z), tree_where(active, r_new, r)
            state = state.advance(active, z, r, self.tol, self.atol)
        return state.result(z)


@dataclass(frozen=True)
class Anderson(FixedPointSolver):
    """Anderson acceleration (type II) with a memory of ``m`` residuals.

    With ``g(z) = T(z) - z`` and the last ``m`` differences ``dZ`` of iterates and ``dG`` of
    residuals (columns), each step solves the small regularized least-squares problem

        gamma = argmin ||g_k - dG gamma||^2 + ridge * ||dG||_F^2 * ||gamma||^2

    and moves to ``z_{k+1} = z_k + mixing g_k - (dZ + mixing dG) gamma``: the plain damped step
    corrected by the secant information of the history (for a linear map it is GMRES in
    disguise, and converges in about ``n`` steps on ``n`` unknowns when ``m >= n``). The
    ridge is relative to ``||dG||_F^2`` so it does not depend on the scale of ``z``, and at
    least ``10 eps`` of the dtype so the small system stays solvable in floating point;
    unfilled memory slots get ``gamma = 0``. Cost: one evaluation of ``T`` per step, ``2m``
    stored vectors and an ``m x m`` solve.

    Example:
        >>> import torch
        >>> solver = Anderson(steps=50, memory=5, tol=1e-10)
        >>> res = solver(lambda z: {"x": torch.cos(z["x"])}, {"x": torch.zeros((), dtype=torch.float64)})
        >>> round(float(res.solution["x"]), 10), int(res.steps) < 10
        (0.7390851332, True)
    """

    steps: int = 50
    memory: int = 5
    tol: float = 1e-6
    atol: float = 0.0
    ridge: float = 1e-8
    mixing: float = 1.0

    def __post_init__(self):
        check_int("Anderson", "steps", self.steps)
        check_int("Anderson", "memory", self.memory)
        check_nonnegative("Anderson", "tol", self.tol)
        check_nonnegative("Anderson", "atol", self.atol)
        check_nonnegative("Anderson", "ridge", self.ridge)
        if not _in_half_open_unit(self.mixing):
            raise ValueError(f"Anderson: mixing must be a number in (0, 1], got {self.mixing!r}; it is the "
                             "damping of the plain step inside each Anderson step (1: undamped).")

    def __call__(self, fn, z0):
        call = "Anderson"
        like = dict(z0)
        z = tree_ravel(like)

        def residual(v: Tensor) -> Tensor:
            z_dict = tree_unravel(v, like)
            return tree_ravel(_check_map_output(call, z_dict, fn(z_dict))) - v

        m, beta = self.memory, self.mixing
        g = residual(z)
        state = _Progress.start({"z": z}, {"z": g}, self.tol, self.atol)
        dZ = torch.zeros(z.shape[0], m, dtype=z.dtype, device=z.device)
        dG = torch.zeros_like(dZ)
        filled = torch.zeros(m, dtype=torch.bool, device=z.device)
        eye = torch.eye(m, dtype=z.dtype, device=z.device)
        # The ridge is at least 10 rounding errors of the Gram matrix, so H stays positive definite
        # in floating point (more memory than unknowns makes dG rank deficient); the floor guards
        # an all-zero history (an exactly converged iterate).
        eps = torch.finfo(z.dtype).eps
        ridge, floor = max(self.ridge, 10 * eps), eps ** 2
        for k in range(self.steps):
            if _known_true(state.done):
                break
            gram = dG.T @ dG
            lam = ridge * torch.trace(gram) + floor
            both = filled[:, None] & filled[None, :]
            H = torch.where(both, gram + lam * eye, eye)  # unfilled slots: gamma_i = 0
            rhs = torch.where(filled, dG.T @ g, torch.zeros_like(filled, dtype=z.dtype))
            # solve_ex never raises: under vmap one bad problem must not stop the batch, and a
            # non-finite step shows up as a non-finite residual, reported as diverged.
            gamma = torch.linalg.solve_ex(H, rhs)[0]
            z_new = z + beta * g - (dZ + beta * dG) @ gamma
            g_new = residual(z_new)
            active = ~state.done
            slot = torch.arange(m, device=z.device) == k % m  # a ring buffer of the last m differences
            dZ = torch.where(slot, (z_new - z)[:, None], dZ)
            dG = torch.where(slot, (g_new - g)[:, None], dG)
            filled = filled | slot
            z, g = torch.where(active, z_new, z), torch.where(active, g_new, g)
            state = state.advance(active, {"z": z}, {"z": g}, self.tol, self.atol)
        return state.result(tree_unravel(z, like))


def _in_half_open_unit(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


class _Progress(NamedTuple):
    """The bookkeeping both forward solvers share: stop flag, step count and residuals."""

    done: Tensor
    steps: Tensor
    residual_norm: Tensor
    initial_norm: Tensor
    threshold: Tensor

    @classmethod
    def start(cls, z: Params, r: Params, tol: float, atol: float) -> _Progress:
        rn = tree_norm(r)
        thresh = _threshold(tree_norm(z), tol, atol)
        steps = torch.zeros((), dtype=torch.int64, device=rn.device)
        return cls(_stop(rn, thresh), steps, rn, rn, thresh)

    def advance(self, active: Tensor, z: Params, r: Params, tol: float, atol: float) -> _Progress:
        rn = tree_norm(r)  # z and r are already frozen where inactive
        thresh = _threshold(tree_norm(z), tol, atol)
        return self._replace(done=self.done | _stop(rn, thresh), steps=self.steps + active.to(torch.int64),
                             residual_norm=rn, threshold=thresh)

    def result(self, z: Params) -> FixedPointResult:
        rn = self.residual_norm
        return FixedPointResult(
            solution=z,
            converged=rn <= self.threshold,
            steps=self.steps,
            residual_norm=rn,
            diverged=~torch.isfinite(rn) | (rn > self.initial_norm),
        )


def _stop(rn: Tensor, thresh: Tensor) -> Tensor:
    # A non-finite residual stops the iteration too: it is reported as diverged.
    return (rn <= thresh) | ~torch.isfinite(rn)


# --- The problem.


def _map_checked(fn: Map) -> Map:
    def checked(z, theta, batch):
        return _check_map_output("map(z, theta, batch)", z, fn(z, theta, batch))

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
        """``(z*, forward diagnostics)``: ``given`` (validated, detached; no diagnostics) or a
        fresh detached solve."""
        if given is None:
            result = self.solve(theta, batch, detach=True)
            return result.solution, result.diagnostics()
        if self.init is not None:
            check_same_keys(call, self.init_state(theta, batch), given, what="inner_solution")
        elif not isinstance(given, Mapping):
            raise TypeError(f"{call}: inner_solution must be a dict[str, Tensor] shaped like z, got "
                            f"{type(given).__name__}.")
        return tree_detach(given), None


# --- Entry points: bilevel.hypergrad and bilevel.batched_hypergrad accept a FixedPointProblem
# too; these add the check of the forward solve (throw=True) and a FixedPointProblem-specific message.


def fixed_point_hypergrad(problem: FixedPointProblem, theta: Params, batch: Any, outer_batch: Any, *,
                          backend: HypergradBackend, inner_solution: Params | None = None,
                          throw: bool = False) -> Hypergradient:
    """Outer loss and hypergradient ``d L_out(z*(theta), theta) / d theta`` for one fixed-point problem.

    Args:
        problem: the :class:`FixedPointProblem`.
        theta: parameters of the map and the outer loss; detached, the result carries no graph.
        batch: the data passed to ``map``.
        outer_batch: the data passed to ``outer_loss``.
        backend: ``FixedPointImplicit(...)`` or ``UnrolledFixedPoint()``.
        inner_solution: a fixed point ``z*`` computed elsewhere (implicit backend only).
        throw: raise :class:`SolverError` when the forward or the adjoint solve did not converge.

    Returns:
        A :class:`~bilevel.Hypergradient`; ``inner_solution`` is ``z*``.
    """
    from .hypergrad import hypergrad

    _check_call("fixed_point_hypergrad", problem, theta, backend)
    result = hypergrad(problem, theta, batch, outer_batch, backend=backend, inner_solution=inner_solution,
                       throw=throw)
    return _check_forward(result, "fixed_point_hypergrad", throw)


def batched_fixed_point_hypergrad(problem: FixedPointProblem, theta: Params, batches: Any, outer_batches: Any,
                                  *, backend: HypergradBackend, chunk_size: int | None = None,
                                  inner_solutions: Params | None = None, vectorize: bool = True,
                                  throw: bool = False) -> Hypergradient:
    """Mean outer loss and mean hypergradient over a batch of fixed-point problems (tasks on dim 0).

    Native backends run all tasks under one ``vmap`` (``chunk_size`` at a time); with
    ``vectorize=False`` they loop. Both give the same numbers. As
    :func:`~bilevel.batched_hypergrad`, ``stats`` are stacked per task and
    ``stats["task_loss"]`` holds each task's outer loss.
    """
    from .hypergrad import batched_hypergrad

    _check_call("batched_fixed_point_hypergrad", problem, theta, backend)
    result = batched_hypergrad(problem, theta, batches, outer_batches, backend=backend, chunk_size=chunk_size,
                               inner_solutions=inner_solutions, vectorize=vectorize, throw=throw)
    return _check_forward(result, "batched_fixed_point_hypergrad", throw)


def _check_call(call: str, problem, theta, backend) -> None:
    from .hypergrad import HypergradBackend

    if not isinstance(problem, FixedPointProblem):
        raise TypeError(f"{call}: expected a FixedPointProblem, got {type(problem).__name__}"
                        + (" (use bilevel.hypergrad for a BilevelProblem)." if type(problem).__name__ ==
                           "BilevelProblem" else "."))
    if not isinstance(backend, HypergradBackend):
        raise TypeError(f"{call}: backend must be a HypergradBackend such as FixedPointImplicit() or "
                        f"UnrolledFixedPoint(), got {type(backend).__name__} ({backend!r}).")
    if not isinstance(theta, dict) or not all(isinstance(v, Tensor) for v in theta.values()):
        raise TypeError(f"{call}: theta must be a dict[str, Tensor], got {type(theta).__name__}.")
    if not theta:
        raise ValueError(f"{call}: theta is empty; nothing to differentiate.")


def _check_forward(result, call: str, throw: bool):
    converged = result.stats.get("forward_converged")
    if throw and converged is not None and not bool(converged.all()):
        raise SolverError(f"{call}: the forward fixed-point solve did not converge in {int((~converged).sum())} "
                          f"of {converged.numel()} problems (max ||T(z) - z|| "
                          f"{float(result.stats['fixed_point_residual'].max()):.3e}); raise the solver's steps, "
                          "use Anderson, or check that the map is a contraction.")
    return result
