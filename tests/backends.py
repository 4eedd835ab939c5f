"""The one table of hypergradient backends that feeds every contract test.

Each case builds a backend and an inner solver for a strongly convex inner problem with
Hessian eigenvalues in ``[mu, L]`` and ``d`` unknowns, and says which answer it computes:
``"exact"`` (the true hypergradient once the inner problem is solved), ``"first_order"``
(``dL_out/dphi`` at ``phi*``) or ``"reptile"`` (``theta - phi*``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bilevel import (CG, Dense, FirstOrder, GradientDescent, HigherUnrolled, Implicit, Momentum,
                     Neumann, NewtonCG, Reptile, TorchoptImplicit, TruncatedUnrolled, Unrolled)

# Inner iterations so that the contraction (1 - 1/kappa)^steps falls below 1e-16.
def _gd_steps(L, mu):
    return int(math.ceil(37 * L / mu))


def gd(L, mu, d):
    return GradientDescent(lr=1.0 / L, steps=_gd_steps(L, mu))


def momentum(L, mu, d):
    return Momentum(lr=0.5 / L, momentum=0.5, steps=_gd_steps(L, mu))


def newton(L, mu, d):
    return NewtonCG(steps=8, cg_steps=d)


@dataclass(frozen=True)
class Case:
    id: str
    backend: Callable[[float, float, int], object]
    solver: Callable[[float, float, int], object]
    answer: str = "exact"

    def build(self, L: float, mu: float, d: int):
        return self.backend(L, mu, d), self.solver(L, mu, d)


CASES = [
    Case("unrolled-gd", lambda L, mu, d: Unrolled(), gd),
    Case("unrolled-momentum", lambda L, mu, d: Unrolled(), momentum),
    Case("unrolled-newton-cg", lambda L, mu, d: Unrolled(), newton),
    # Truncating to the last 3/4 of the steps drops a part that decays like (1 - mu/L)^(steps/4).
    Case("truncated-gd", lambda L, mu, d: TruncatedUnrolled(3 * _gd_steps(L, mu) // 4), gd),
    Case("higher-gd", lambda L, mu, d: HigherUnrolled(), gd),
    Case("higher-momentum", lambda L, mu, d: HigherUnrolled(), momentum),
    Case("implicit-cg", lambda L, mu, d: Implicit(CG(tol=1e-14), hvp_mode="forward-over-reverse"), newton),
    Case("implicit-cg-reverse-hvp",
         lambda L, mu, d: Implicit(CG(tol=1e-14), hvp_mode="reverse-over-reverse"), newton),
    Case("implicit-neumann", lambda L, mu, d: Implicit(Neumann(alpha=1.0 / L, steps=_gd_steps(L, mu))), newton),
    Case("implicit-dense", lambda L, mu, d: Implicit(Dense()), newton),
    Case("implicit-after-gd", lambda L, mu, d: Implicit(CG(tol=1e-14)), gd),
    Case("torchopt-cg", lambda L, mu, d: TorchoptImplicit(CG(tol=1e-14, negative_curvature="continue")), newton),
    Case("torchopt-neumann",
         lambda L, mu, d: TorchoptImplicit(Neumann(alpha=1.0 / L, steps=_gd_steps(L, mu))), newton),
    Case("first-order", lambda L, mu, d: FirstOrder(), newton, "first_order"),
    Case("reptile", lambda L, mu, d: Reptile(), newton, "reptile"),
]

EXACT = [c for c in CASES if c.answer == "exact"]


def ids(cases):
    return [c.id for c in cases]
