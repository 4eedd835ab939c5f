"""What a hypergradient's solves report, and the one check that decides what a failure does.

Every :class:`~bilevel.Hypergradient` carries :class:`Diagnostics`: the linear solve's result
(:class:`~bilevel.LinearSolveResult`, without its solution), the fixed-point forward solve's
(:class:`~bilevel.FixedPointResult`, without its solution) and the inner stationarity the
implicit function theorem assumes (:class:`InnerStationarity`, :class:`FixedPointStationarity`),
each ``None`` where a backend has no such solve. All fields are tensors, so diagnostics pass
through ``vmap`` and stack per task.

:func:`failures` reads them and names each problem with its fix; :func:`check_failures` applies
the policy chosen by one argument, ``on_failure``:

* ``"warn"`` (default): a :class:`SolverWarning` naming the problem and the fix;
* ``"raise"``: a :class:`~bilevel.SolverError` with the same message;
* ``"ignore"``: nothing (the diagnostics stay in the result).

A failure is a solve that stopped at negative curvature, diverged, or did not converge
without being configured as a deliberate budget (``truncated=True``, e.g. iMAML's 5-step CG),
an inner solution that is not stationary, or a forward fixed-point solve that did not
converge. Under ``vmap`` no value can be read, so the check is left to the caller of the
``vmap`` (:func:`bilevel.batched_hypergrad` checks the stacked diagnostics after it).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from .eager import values_readable
from .errors import SolverError
from .solvers.fixed_point import FixedPointResult
from .solvers.linear import LinearSolveResult
from .tree import nested_leaves
from .validation import check_choice

__all__ = ["ON_FAILURE", "SolverWarning", "InnerStationarity", "FixedPointStationarity", "Diagnostics", "Failure",
           "stationarity", "failures", "failed_systems", "check_failures", "check_on_failure"]

ON_FAILURE = ("warn", "raise", "ignore")


class SolverWarning(UserWarning):
    """A hypergradient may be wrong: a solve it rests on failed (``on_failure="warn"``)."""


class InnerStationarity(NamedTuple):
    """How far ``phi`` is from ``grad_phi L_in(phi, theta) = 0``, which the implicit hypergradient assumes.

    Attributes:
        residual_norm: ``||grad_phi L_in(phi, theta)||``.
        reference_norm: the same at the inner solver's start ``phi_0`` (NaN where not judged:
            it costs one more gradient).
        stationary: ``residual_norm <= max(rtol * reference_norm, atol)``, and, where measured,
            ``newton_change <= newton_check``.
        newton_change: the relative change ``||g(phi) - g(phi - H^-1 grad L_in(phi))|| / ||g(...)||``
            of the hypergradient ``g`` when ``phi`` takes one Newton step toward stationarity: a
            first-order estimate of the hypergradient's error due to the inner solve (0 where
            ``phi`` is stationary to rounding; ``None`` where not measured). A non-finite change
            (the refined point left the losses' domain, its solve overflowed) fails the check.
    """

    residual_norm: Tensor
    reference_norm: Tensor
    stationary: Tensor
    newton_change: Tensor | None = None


class FixedPointStationarity(NamedTuple):
    """How far ``z`` is from ``z = T(z, theta)``, which the implicit fixed-point hypergradient assumes.

    Attributes:
        residual_norm: ``||T(z) - z||``.
        reference_norm: ``||z||``.
        stationary: ``residual_norm <= max(rtol * reference_norm, atol)``.
    """

    residual_norm: Tensor
    reference_norm: Tensor
    stationary: Tensor


def stationarity(kind: type, residual_norm: Tensor, reference_norm: Tensor, rtol: float | None,
                 atol: float | None = None, newton_change: Tensor | None = None, newton_check: float | None = None):
    """``kind(residual, reference, stationary)`` with ``stationary`` judged by ``rtol``/``atol``
    (``rtol=None``: not judged, always ``True``). ``atol`` defaults to ``1000 eps`` of the dtype
    (2e-13 in float64, 1e-4 in float32), a floor for a start that is already a solution.
    ``newton_change`` (:class:`InnerStationarity` only), where given, must also be finite and
    at most ``newton_check``."""
    residual_norm, reference_norm = residual_norm.detach(), reference_norm.detach()
    if atol is None:
        atol = 1000 * torch.finfo(residual_norm.dtype).eps
    if rtol is None:
        ok = torch.ones_like(residual_norm, dtype=torch.bool)
    else:
        ok = residual_norm <= torch.clamp(rtol * reference_norm, min=atol)
    if newton_change is None:
        return kind(residual_norm, reference_norm, ok)
    newton_change = newton_change.detach()
    if rtol is not None and newton_check is not None:
        ok = ok & (newton_change <= newton_check)  # a non-finite change (a broken refinement) fails
    return kind(residual_norm, reference_norm, ok, newton_change)


class Diagnostics(NamedTuple):
    """A hypergradient's diagnostics, typed; ``None`` where the backend has no such solve."""

    linear_solve: LinearSolveResult | None = None
    forward_solve: FixedPointResult | None = None
    stationarity: InnerStationarity | FixedPointStationarity | None = None

    def as_stats(self) -> dict[str, Tensor]:
        """A flat ``{name: tensor}`` view for logs (``metrics.jsonl``)."""
        out: dict[str, Tensor] = {}
        if self.linear_solve is not None:
            out.update({k: getattr(self.linear_solve, k) for k in self.linear_solve._fields if k != "solution"})
        if self.forward_solve is not None:
            f = self.forward_solve
            out.update(forward_converged=f.converged, forward_steps=f.steps, forward_diverged=f.diverged,
                       forward_residual=f.residual_norm)
        if isinstance(self.stationarity, InnerStationarity):
            out.update(inner_grad_norm=self.stationarity.residual_norm,
                       inner_stationary=self.stationarity.stationary)
            if self.stationarity.newton_change is not None:
                out["newton_change"] = self.stationarity.newton_change
        elif isinstance(self.stationarity, FixedPointStationarity):
            out.update(fixed_point_residual=self.stationarity.residual_norm,
                       fixed_point_stationary=self.stationarity.stationary)
        return out


class Failure(NamedTuple):
    """One kind of failure: ``flags`` (per system, ``True`` where it failed) and the message."""

    kind: str
    flags: Tensor
    message: str


def _worst(values: Tensor, flags: Tensor) -> float:
    return float(values.detach().to(torch.float64).reshape(-1)[flags.reshape(-1)].max())


def failures(d: Diagnostics) -> list[Failure]:
    """Every failure in ``d`` with a message naming it and its fix (reads tensor values)."""
    out: list[Failure] = []

    def of(flags: Tensor) -> str:
        return f"{int(flags.sum())} of {flags.numel()}"

    s = d.linear_solve
    if s is not None:
        diverged = s.diverged.bool()
        negative = s.negative_curvature & ~s.converged & ~s.truncated & ~diverged
        unconverged = ~s.converged & ~s.truncated & ~diverged & ~negative
        if bool(negative.any()):
            out.append(Failure("negative_curvature", negative, (
                f"the linear solve met negative curvature and did not converge in {of(negative)} systems: the "
                "inner Hessian is indefinite there (a nonconvex inner problem or a saddle point). If the solver is "
                "MINRES, GMRES or CG(negative_curvature='continue'), which handle indefinite systems, raise maxiter. "
                "If it is CG with its default negative_curvature='stop', it stopped at the first such direction with "
                "a wrong solution: use MINRES(), GMRES() or CG(negative_curvature='continue') instead")))
        if bool(diverged.any()):
            out.append(Failure("diverged", diverged, (
                f"the linear solve diverged in {of(diverged)} systems (largest residual "
                f"{_worst(s.residual_norm, diverged):.3e}). For Neumann, lower alpha below 2 / the largest "
                "eigenvalue; or use CG or MINRES")))
        if bool(unconverged.any()):
            out.append(Failure("not_converged", unconverged, (
                f"the linear solve did not converge in {of(unconverged)} systems (largest residual "
                f"{_worst(s.residual_norm, unconverged):.3e} after {int(s.steps.max())} steps). Raise maxiter "
                "(Neumann: steps), or make the system better conditioned (ridge=, a larger lambda); a deliberate "
                "fixed budget is declared with truncated=True")))
    f = d.forward_solve
    if f is not None:
        bad = ~f.converged | f.diverged.bool()
        if bool(bad.any()):
            out.append(Failure("forward_not_converged", bad, (
                f"the forward fixed-point solve did not converge in {of(bad)} problems (largest ||T(z) - z|| "
                f"{_worst(f.residual_norm, bad):.3e}). Raise the solver's steps, use Anderson, or check that the "
                "map is a contraction")))
    st = d.stationarity
    if st is not None:
        bad = ~st.stationary
        if bool(bad.any()):
            worst = int(torch.argmax(torch.where(bad, st.residual_norm, torch.zeros_like(st.residual_norm))))
            ratio = float(st.residual_norm.reshape(-1)[worst] / st.reference_norm.reshape(-1)[worst].clamp_min(1e-300))
            if isinstance(st, FixedPointStationarity):
                out.append(Failure("not_stationary", bad, (
                    f"the fixed point is not solved in {of(bad)} problems (||T(z) - z|| = "
                    f"{float(st.residual_norm.reshape(-1)[worst]):.3e}, {ratio:.1e} of ||z||), which implicit "
                    "differentiation assumes to be 0. Solve the forward problem further")))
            else:
                newton = ""
                if st.newton_change is not None:
                    change = float(st.newton_change.reshape(-1)[worst])
                    newton = (f"; one Newton step of the inner problem, phi - H^-1 grad L_in(phi), changes the "
                              f"hypergradient by {change:.1e} of its norm" if change == change else
                              "; the hypergradient after one Newton step of the inner problem is not finite")
                out.append(Failure("not_stationary", bad, (
                    f"the inner solution is not stationary in {of(bad)} tasks (||grad L_in(phi)|| = "
                    f"{float(st.residual_norm.reshape(-1)[worst]):.3e}, {ratio:.1e} of its value at the start"
                    f"{newton}), which the implicit function theorem assumes to be 0. Run the inner solver longer or "
                    "with a better step size, or set the backend's stationarity_rtol (and newton_check)")))
    return out


def failed_systems(d: Diagnostics) -> Tensor | None:
    """Per system (per task in a batch): any failure. ``None`` when ``d`` has nothing to judge."""
    found = failures(d)
    if not found:
        leaves = [t for t in (d.linear_solve, d.forward_solve, d.stationarity) if t is not None]
        if not leaves:
            return None
        shape = nested_leaves(leaves[0])[0].shape
        return torch.zeros(shape, dtype=torch.bool)
    flags = found[0].flags.reshape(found[0].flags.shape[:1] or (1,)).cpu()
    for fl in found[1:]:
        flags = flags | fl.flags.reshape(flags.shape).cpu()
    return flags


def check_on_failure(call: str, on_failure: str) -> str:
    return check_choice(call, "on_failure", on_failure, ON_FAILURE)


def check_failures(call: str, d: Diagnostics, on_failure: str = "warn", stacklevel: int = 3) -> list[Failure]:
    """Apply the failure policy to ``d``: warn, raise or stay quiet. Under ``vmap`` (values
    unreadable) it does nothing; the caller of the ``vmap`` checks the stacked result."""
    if on_failure == "ignore":
        return []
    leaves = nested_leaves(tuple(d))
    if any(not values_readable(t) for t in leaves[:1]):
        return []
    found = failures(d)
    if not found:
        return []
    message = (f"{call}: the hypergradient may be wrong: " + "; ".join(f.message for f in found)
               + ". (on_failure='raise' stops here, on_failure='ignore' silences this.)")
    if on_failure == "raise":
        raise SolverError(message)
    warnings.warn(message, SolverWarning, stacklevel=stacklevel)
    return found
