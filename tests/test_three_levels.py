"""Hypergradients that compose: ``create_graph=True`` makes one level's hypergradient a
differentiable function of the level above, so three levels are built from two-level calls.

    level 1:  min_lam   L1(theta*(lam))
    level 2:  theta*(lam) = argmin_theta L2(phi*(theta), theta, lam)
    level 3:  phi*(theta) = argmin_phi   L3(phi, theta)

The level-2 gradient ``g(theta, lam) = d L2(phi*(theta), theta, lam) / d theta`` is
``hypergrad(problem23, theta, ..., create_graph=True).grad`` with any level-3 backend. Level 1
differentiates through level 2 in two ways, each in float64 against an exact answer:

* unrolled: ``K`` gradient steps ``theta <- theta - eta g(theta, lam)``, backpropagated;
* implicit: ``d theta*/d lam = -(dg/dtheta)^-1 dg/dlam`` at the level-2 solution, the
  Jacobians of ``g`` taken by autograd through ``create_graph``.

Quadratics give a closed form (checked to 1e-9); a nonconvex problem is checked against
central finite differences of the whole three-level computation (to 1e-6).
"""

import pytest
import torch

from bilevel import CG, BilevelProblem, Dense, GradientDescent, Implicit, Unrolled, hypergrad
from bilevel.tree import tree_ravel

DT = torch.float64
torch.manual_seed(0)
P = torch.tensor([[2.4, 0.1, 0.05], [0.1, 2.2, 0.05], [0.05, 0.05, 2.1]], dtype=DT)  # SPD, eigenvalues in [2.0, 2.6]
B = torch.tensor([[1.0, 0.3], [-0.4, 1.2], [0.5, 0.7]], dtype=DT)
C = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]], dtype=DT)
D = torch.tensor([0.7, -1.1], dtype=DT)
TARGET = torch.tensor([0.3, -0.2], dtype=DT)
LAM = torch.tensor([0.1, -0.3], dtype=DT)

LEVEL3_STEPS = 24  # gradient descent on L3 at lr 0.42 contracts by 0.17 a step: converged to rounding


def level3_backends():
    out = [("unrolled", Unrolled()), ("implicit-cg", Implicit(CG(tol=1e-14))), ("implicit-dense", Implicit(Dense()))]
    try:
        from bilevel.solvers.minres import MINRES
    except ImportError:
        return out
    out.append(("implicit-minres", Implicit(MINRES(tol=1e-14))))
    return out


LEVEL3 = level3_backends()


def quadratic_problem(lam: torch.Tensor, nonconvex: bool = False) -> BilevelProblem:
    """Levels 2-3 for a given ``lam`` (closed over, so the result is differentiable in it)."""

    def inner(phi, theta, batch):  # L3
        p = phi["p"]
        value = 0.5 * p @ P @ p - p @ (B @ theta["t"])
        return value + (0.1 * torch.cos(p).sum() if nonconvex else 0.0)

    def outer(phi, theta, batch):  # L2
        r = C @ phi["p"] - D
        penalty = (torch.exp(lam) * theta["t"] ** 2).sum()
        fit = (torch.log1p(r ** 2).sum() if nonconvex else 0.5 * (r ** 2).sum())
        return fit + 0.5 * penalty

    return BilevelProblem(inner, outer, GradientDescent(lr=0.42, steps=LEVEL3_STEPS),
                          inner_init={"p": torch.zeros(3, dtype=DT)})


def level2_gradient(lam, theta, backend):
    """``g(theta, lam)`` with autograd history to both."""
    return hypergrad(quadratic_problem(lam, NONCONVEX[0]), {"t": theta}, None, None, backend=backend,
                     create_graph=True, on_failure="raise").grad["t"]


NONCONVEX = [False]


def level1_unrolled(lam, backend, steps=36, lr=0.85):
    theta = torch.zeros(2, dtype=DT)
    for _ in range(steps):
        theta = theta - lr * level2_gradient(lam, theta, backend)
    return 0.5 * ((theta - TARGET) ** 2).sum(), theta


def level1_implicit(lam, backend, theta_star):
    """``dL1/dlam = -(dg/dlam)^T (dg/dtheta)^-T dL1/dtheta`` at ``theta_star``."""
    theta = theta_star.detach().requires_grad_(True)
    g = level2_gradient(lam, theta, backend)
    rows = [torch.autograd.grad(g[i], (theta, lam), retain_graph=True) for i in range(2)]
    g_theta = torch.stack([r[0] for r in rows])  # dg/dtheta (symmetric: a Hessian)
    g_lam = torch.stack([r[1] for r in rows])
    w = torch.linalg.solve(g_theta.T, theta_star.detach() - TARGET)
    return -(g_lam.T @ w)


def closed_form():
    """Levels 2-3 in closed form: phi* = M theta, theta* = (M^T C^T C M + diag e^lam)^-1 M^T C^T D."""
    lam = LAM.clone().requires_grad_(True)
    M = torch.linalg.solve(P, B)
    K = M.T @ C.T @ C @ M + torch.diag(torch.exp(lam))
    theta_star = torch.linalg.solve(K, M.T @ C.T @ D)
    loss = 0.5 * ((theta_star - TARGET) ** 2).sum()
    return torch.autograd.grad(loss, lam)[0], theta_star.detach()


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name,backend", LEVEL3, ids=[n for n, _ in LEVEL3])
def test_quadratic_three_levels_unrolled_and_implicit_at_level_two(name, backend):
    exact, theta_star = closed_form()
    lam = LAM.clone().requires_grad_(True)
    loss, theta_k = level1_unrolled(lam, backend)
    assert rel(theta_k.detach(), theta_star) < 1e-10  # level 2 converged, so unrolling gives the implicit answer
    unrolled = torch.autograd.grad(loss, lam)[0]
    assert rel(unrolled, exact) < 1e-9, (name, unrolled, exact)
    implicit = level1_implicit(lam, backend, theta_star)
    assert rel(implicit, exact) < 1e-9, (name, implicit, exact)


def test_nonconvex_three_levels_against_central_finite_differences():
    NONCONVEX[0] = True
    try:
        backends = [b for _, b in LEVEL3 if not isinstance(b, Unrolled)][:1] + [Unrolled()]

        def value(lam_value):
            with torch.no_grad():
                lam = lam_value.clone()
                theta = torch.zeros(2, dtype=DT)
                for _ in range(36):
                    theta = theta - 0.85 * hypergrad(quadratic_problem(lam, True), {"t": theta}, None, None,
                                                    backend=Implicit(Dense()), on_failure="raise").grad["t"]
                return 0.5 * float(((theta - TARGET) ** 2).sum())

        eps = 1e-5
        fd = torch.tensor([(value(LAM + eps * e) - value(LAM - eps * e)) / (2 * eps) for e in torch.eye(2, dtype=DT)])
        for backend in backends:
            lam = LAM.clone().requires_grad_(True)
            loss, _ = level1_unrolled(lam, backend)
            ours = torch.autograd.grad(loss, lam)[0]
            assert rel(ours, fd) < 1e-6, (backend, ours, fd)
    finally:
        NONCONVEX[0] = False


def test_create_graph_refused_by_backends_that_cannot_differentiate():
    from bilevel import FirstOrder
    with pytest.raises(TypeError, match="create_graph=True needs a backend whose hypergradient is differentiable"):
        hypergrad(quadratic_problem(LAM), {"t": torch.zeros(2, dtype=DT)}, None, None, backend=FirstOrder(),
                  create_graph=True)


def test_without_create_graph_the_result_is_a_constant():
    lam = LAM.clone().requires_grad_(True)
    g = hypergrad(quadratic_problem(lam), {"t": torch.zeros(2, dtype=DT)}, None, None, backend=Implicit(Dense())).grad["t"]
    assert not g.requires_grad
    assert tree_ravel({"g": g}).shape == (2,)
