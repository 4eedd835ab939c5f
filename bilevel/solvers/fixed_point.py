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
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..eager import known_true
from ..tree import (Params, tree_norm, tree_ravel, tree_sub, tree_unravel,
                   tree_where)
from ..validation import check_nonnegative, check_int

__all__ = [
    "FixedPointResult",
    "FixedPointSolver",
    "FixedPointIteration",
    "Anderson",
    "check_map_output",
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


def check_map_output(call: str, z: Params, out) -> Params:
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
        r = tree_sub(check_map_output(call, z, fn(z)), z)
        state = _Progress.start(z, r, self.tol, self.atol)
        for _ in range(self.steps):
            if known_true(state.done):
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
            return tree_ravel(check_map_output(call, z_dict, fn(z_dict))) - v

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
            if known_true(state.done):
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
        # tol as given in every dtype: the residual T(z) - z is computed afresh each step, so a
        # float32 forward solve reaches far below the linear solvers' float32 floor.
        thresh = torch.clamp(tol * tree_norm(z), min=atol)
        steps = torch.zeros((), dtype=torch.int64, device=rn.device)
        return cls(_stop(rn, thresh), steps, rn, rn, thresh)

    def advance(self, active: Tensor, z: Params, r: Params, tol: float, atol: float) -> _Progress:
        rn = tree_norm(r)  # z and r are already frozen where inactive
        thresh = torch.clamp(tol * tree_norm(z), min=atol)
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
