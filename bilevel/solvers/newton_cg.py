"""Hessian-free Newton-CG inner solver with a vmap-safe backtracking line search (iMAML-HF)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import vmap

from ..hvp import check_hvp_mode, make_hvp
from .inner import InnerSolver, check_steps, objective_grad
from .linear import solve_cg
from ..tree import tree_axpy, tree_dot, tree_scale, tree_where
from ..validation import check_nonnegative

__all__ = ["NewtonCG"]


@dataclass(frozen=True)
class NewtonCG(InnerSolver):
    """Truncated Newton steps ``phi <- phi + a d`` with ``(H + damping I) d = -g`` solved by CG.

    Each step: ``g = grad f(phi)``; ``cg_steps`` of CG with Hessian-vector products (or the
    problem's ``inner_curvature``, e.g. Gauss-Newton, as in Martens' Hessian-free) give
    ``d``, stopping early on negative curvature (if that happens on the first CG step, the
    steepest-descent direction ``-g`` is used). The step size ``a`` is the largest of
    ``1, shrink, shrink^2, ...`` (``line_search_steps`` candidates) that satisfies the
    Armijo condition ``f(phi + a d) <= f(phi) + c a <g, d>``, else ``0`` (no move).

    The candidates are evaluated together with ``vmap`` and chosen with tensor ops, so
    the solver has no Python branching on tensor values and runs under ``vmap`` over tasks.
    """

    steps: int
    cg_steps: int = 5
    damping: float = 0.0
    line_search_steps: int = 10
    shrink: float = 0.5
    armijo: float = 1e-4
    hvp_mode: str = "auto"

    def __post_init__(self):
        check_steps("NewtonCG", self.steps)
        check_steps("NewtonCG(cg_steps)", self.cg_steps)
        check_steps("NewtonCG(line_search_steps)", self.line_search_steps)
        check_nonnegative("NewtonCG", "damping", self.damping)
        if not 0 < self.shrink < 1:
            raise ValueError(f"NewtonCG: shrink must be in (0, 1), got {self.shrink!r}.")
        if not 0 < self.armijo < 1:
            raise ValueError(f"NewtonCG: armijo must be in (0, 1), got {self.armijo!r}.")
        check_hvp_mode("NewtonCG", self.hvp_mode)

    def matvec(self, f, phi):
        """The Newton system's matrix at ``phi``: ``f.curvature(phi)`` where ``f`` (a problem's
        :class:`~bilevel.problem.InnerObjective`) has one, else the Hessian of ``f``."""
        curvature = getattr(f, "curvature", None)
        matvec = curvature(phi) if curvature is not None else None
        return matvec if matvec is not None else make_hvp(f, phi, self.hvp_mode)

    def step(self, f, phi, state):
        g, f0 = objective_grad(f, phi)
        minus_g = tree_scale(-1.0, g)
        res = solve_cg(self.matvec(f, phi), minus_g, maxiter=self.cg_steps,
                       tol=0.0, ridge=self.damping)
        direction = tree_where(res.steps == 0, minus_g, res.solution)
        slope = tree_dot(g, direction)
        sizes = self.shrink ** torch.arange(self.line_search_steps, dtype=f0.dtype, device=f0.device)
        trial = vmap(lambda a: f(tree_axpy(a, direction, phi)))(sizes)
        accept = (trial <= f0 + self.armijo * sizes * slope) & torch.isfinite(trial)
        first = torch.argmax(accept.to(torch.int64))  # index of the largest accepted size
        chosen = (sizes * (torch.arange(self.line_search_steps, device=f0.device) == first)).sum()
        a = torch.where(accept.any(), chosen, torch.zeros_like(chosen))
        return tree_axpy(a, direction, phi), state
