"""Three levels (bilevel.multilevel) against exact answers, in float64.

The quadratic problem, task i (P_i SPD, level 3 solved to rounding by 24 gradient steps)::

    level 3:  phi_i*(theta) = argmin 0.5 phi^T P_i phi - phi^T (B_i theta + c_i) = P_i^-1 (B_i theta + c_i)
              l_i(theta) = 0.5 ||C_i phi_i* - d_i||^2 = 0.5 ||J_i theta - r_i||^2,
              J_i = C_i P_i^-1 B_i,  r_i = d_i - C_i P_i^-1 c_i
    level 2:  F(theta, w) = sum_i w_i l_i(theta) + (mu/2)||theta||^2,   G = H(w) theta - b(w),
              H(w) = sum_i w_i J_i^T J_i + mu I,   b(w) = sum_i w_i J_i^T r_i
    level 1:  V(theta) = mean_j l^val_j(theta)

Closed forms. At the solution theta* = H^-1 b, differentiating H theta* = b in w_i gives
``d theta*/d w_i = -H^-1 g_i(theta*)`` with ``g_i = J_i^T (J_i theta - r_i)``, so

    dV/dw_i = -<g_i(theta*), H^-1 grad V(theta*)>.

K gradient steps at rate eta from theta_0: theta_K = A^K theta_0 + (I - A^K) H^-1 b with
A = I - eta H; its w-derivative is taken by autograd of that formula (dense algebra, no level 3).
The one-step lookahead is ``-eta <grad V(theta_0 - eta G(theta_0)), g_i(theta_0)>``.
Tolerances: 1e-9 relative where the answer is exact up to rounding (level 3 converged,
level 2's implicit point converged to ~1e-13); the finite-difference checks state theirs.
"""

import dataclasses
import warnings

import pytest
import torch

from bilevel import (CG, Dense, FirstOrder, GradientDescent, Implicit, SolverError, SolverWarning, Unrolled,
                     BilevelProblem, maml_problem, run_inner)
from bilevel.multilevel import (FiniteDifferenceLookahead, ImplicitMeta, Lookahead, TaskWeightedMetaTraining,
                                UnrolledMeta, weight_hypergrad)

DT = torch.float64
N_TRAIN, N_VAL, DIM_PHI, DIM_THETA = 4, 3, 4, 3
MU = 1.0
META_LR = 0.7  # H's eigenvalues lie in [1.0, ~1.3]: gradient descent contracts by <= 0.3 a step
LEVEL3 = [("unrolled", Unrolled()), ("implicit-cg", Implicit(CG(tol=1e-14))), ("implicit-dense", Implicit(Dense()))]


def quadratic_tasks(n, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=DT)
    q = torch.linalg.qr(r(n, DIM_PHI, DIM_PHI))[0]
    eig = 2.0 + 0.6 * torch.rand(n, DIM_PHI, generator=g, dtype=DT)  # level 3: lr 0.42 contracts by <= 0.16
    P = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    inner = {"P": P, "B": 0.6 * r(n, DIM_PHI, DIM_THETA), "c": r(n, DIM_PHI)}
    outer = {"C": 0.35 * r(n, 2, DIM_PHI), "d": r(n, 2)}
    return inner, outer


TRAIN, VAL = quadratic_tasks(N_TRAIN, 0), quadratic_tasks(N_VAL, 1)
W = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=DT)
THETA0 = {"t": torch.tensor([0.5, -0.3, 0.2], dtype=DT)}

QUADRATIC = BilevelProblem(
    inner_loss=lambda phi, theta, b: 0.5 * phi["p"] @ b["P"] @ phi["p"] - phi["p"] @ (b["B"] @ theta["t"] + b["c"]),
    outer_loss=lambda phi, theta, b: 0.5 * ((b["C"] @ phi["p"] - b["d"]) ** 2).sum(),
    inner_solver=GradientDescent(lr=0.42, steps=24),
    inner_init={"p": torch.zeros(DIM_PHI, dtype=DT)})


def level(backend, meta_steps, regularized=True, **kw):
    reg = (lambda theta: 0.5 * MU * (theta["t"] ** 2).sum()) if regularized else None
    return TaskWeightedMetaTraining(QUADRATIC, backend, train=TRAIN, validation=VAL,
                                    meta_solver=GradientDescent(lr=META_LR, steps=meta_steps), regularizer=reg,
                                    on_failure="raise", **kw)


def jr(tasks):
    inner, outer = tasks
    Pinv = torch.linalg.inv(inner["P"])
    J = outer["C"] @ Pinv @ inner["B"]
    r = outer["d"] - (outer["C"] @ (Pinv @ inner["c"].unsqueeze(-1))).squeeze(-1)
    return J, r


def closed(w):
    """H(w), b(w), the task gradients g(theta) (stacked) and grad V(theta), in dense algebra."""
    J, r = jr(TRAIN)
    Jv, rv = jr(VAL)
    H = torch.einsum("i,iab,iac->bc", w, J, J) + MU * torch.eye(DIM_THETA, dtype=DT)
    b = torch.einsum("i,iab,ia->b", w, J, r)
    g = lambda th: torch.einsum("iab,ia->ib", J, torch.einsum("iab,b->ia", J, th) - r)
    gv = lambda th: torch.einsum("iab,ia->ib", Jv, torch.einsum("iab,b->ia", Jv, th) - rv).mean(0)
    return H, b, g, gv


def closed_implicit(w):
    H, b, g, gv = closed(w)
    theta = torch.linalg.solve(H, b)
    return -(g(theta) @ torch.linalg.solve(H, gv(theta))), theta


def closed_unrolled(w, steps):
    w = w.clone().requires_grad_(True)
    H, b, _, gv = closed(w)
    A = torch.eye(DIM_THETA, dtype=DT) - META_LR * H
    Ak = torch.linalg.matrix_power(A, steps)
    theta = Ak @ THETA0["t"] + (torch.eye(DIM_THETA, dtype=DT) - Ak) @ torch.linalg.solve(H, b)
    return torch.autograd.grad(theta, w, gv(theta.detach()))[0], theta.detach()


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name,backend", LEVEL3, ids=[n for n, _ in LEVEL3])
def test_unrolled_meta_steps_equal_the_closed_form_of_the_k_step_map(name, backend):
    exact, theta_k = closed_unrolled(W, steps=3)
    out = weight_hypergrad(level(backend, 3), W, THETA0, method=UnrolledMeta())
    assert rel(out.theta["t"], theta_k) < 1e-10
    assert rel(out.grad, exact) < 1e-9, (name, out.grad, exact)


@pytest.mark.parametrize("name,backend", LEVEL3, ids=[n for n, _ in LEVEL3])
def test_implicit_meta_equals_the_closed_form_at_the_solution(name, backend):
    exact, theta_star = closed_implicit(W)
    out = weight_hypergrad(level(backend, 30), W, THETA0, method=ImplicitMeta(CG(tol=1e-13)))
    assert rel(out.theta["t"], theta_star) < 1e-12  # 30 meta-steps contract by 0.3^30
    assert bool(out.diagnostics.linear_solve.converged) and bool(out.diagnostics.stationarity.stationary)
    assert rel(out.grad, exact) < 1e-9, (name, out.grad, exact)


def test_implicit_meta_with_a_dense_solve_and_truncated_unrolling():
    exact, _ = closed_implicit(W)
    out = weight_hypergrad(level(Unrolled(), 30), W, THETA0, method=ImplicitMeta(Dense()))
    assert rel(out.grad, exact) < 1e-9
    # Truncated backpropagation through the last 3 of 30 converged steps: the
    # Neumann series of H^-1 cut after 3 terms, an approximation (not exact).
    trunc = weight_hypergrad(level(Unrolled(), 30), W, THETA0, method=UnrolledMeta(backprop_steps=3)).grad
    A = torch.eye(DIM_THETA, dtype=DT) - META_LR * closed(W)[0]
    H, b, g, gv = closed(W)
    theta = torch.linalg.solve(H, b)
    series = META_LR * sum(torch.linalg.matrix_power(A, k) for k in range(3))
    assert rel(trunc, -(g(theta) @ (series @ gv(theta)))) < 1e-9
    assert rel(trunc, exact) > 1e-3


@pytest.mark.parametrize("name,backend", LEVEL3, ids=[n for n, _ in LEVEL3])
def test_lookahead_is_exactly_one_unrolled_gradient_step(name, backend):
    look = weight_hypergrad(level(backend, 1), W, THETA0, method=Lookahead(lr=META_LR)).grad
    one_step = weight_hypergrad(level(backend, 1), W, THETA0, method=UnrolledMeta()).grad
    assert rel(look, one_step) < 1e-12, (name, look, one_step)
    H, b, g, gv = closed(W)
    theta1 = THETA0["t"] - META_LR * (H @ THETA0["t"] - b)
    assert rel(look, -META_LR * (g(THETA0["t"]) @ gv(theta1))) < 1e-9


def test_finite_difference_lookahead_is_exact_on_quadratics():
    lvl = level(Unrolled(), 1)
    look = weight_hypergrad(lvl, W, THETA0, method=Lookahead(lr=META_LR)).grad
    darts = weight_hypergrad(lvl, W, THETA0, method=FiniteDifferenceLookahead(lr=META_LR)).grad
    assert rel(darts, look) < 1e-9  # central differences of a quadratic: rounding only (~1e-13 seen)


def test_a_failing_level_two_solve_goes_through_the_failure_policy():
    with pytest.raises(SolverError, match="ImplicitMeta.weight_grad: .*linear solve did not converge"):
        weight_hypergrad(level(Unrolled(), 30), W, THETA0, method=ImplicitMeta(CG(maxiter=1)))
    two_steps = TaskWeightedMetaTraining(QUADRATIC, Unrolled(), TRAIN, VAL, GradientDescent(lr=META_LR, steps=2),
                                         regularizer=lambda th: 0.5 * MU * (th["t"] ** 2).sum())  # on_failure="warn"
    with pytest.warns(SolverWarning, match="ImplicitMeta.weight_grad: .*not stationary"):
        weight_hypergrad(two_steps, W, THETA0, method=ImplicitMeta(CG()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a declared budget is not a failure
        weight_hypergrad(level(Unrolled(), 30), W, THETA0, method=ImplicitMeta(CG(maxiter=1, truncated=True)))


def test_bad_inputs_name_the_call_and_the_fix():
    with pytest.raises(ValueError, match="weight_hypergrad: w must be a 1-D floating-point tensor with one weight per "
                                         "training task \\(4\\)"):
        weight_hypergrad(level(Unrolled(), 1), torch.ones(3, dtype=DT), THETA0, method=Lookahead(lr=0.1))
    with pytest.raises(TypeError, match="meta_solver must be an InnerSolver"):
        TaskWeightedMetaTraining(QUADRATIC, Unrolled(), TRAIN, VAL, meta_solver="sgd")
    with pytest.raises(TypeError, match="create_graph=True needs a backend"):
        weight_hypergrad(dataclasses.replace(mlp_level(2), backend=FirstOrder()), torch.ones(3, dtype=DT), MLP_THETA,
                         method=UnrolledMeta())


# --- A nonconvex problem: a small tanh MLP, MAML at level 3, against central finite differences.

def mlp_loss(p, batch):
    x, y = batch[..., 0:1], batch[..., 1]
    h = torch.tanh(x @ p["w1"] + p["b1"])
    return ((h @ p["w2"] - y) ** 2).mean()


def sine_tasks(n, seed):
    g = torch.Generator().manual_seed(seed)
    amp, phase = 0.5 + torch.rand(n, 1, generator=g, dtype=DT), 3 * torch.rand(n, 1, generator=g, dtype=DT)
    x = 4 * torch.rand(n, 2, 6, generator=g, dtype=DT) - 2
    y = amp.unsqueeze(1) * torch.sin(x + phase.unsqueeze(1))
    data = torch.stack([x, y], -1)
    return data[:, 0], data[:, 1]  # support, query: (n, 6, 2) each


MLP_THETA = {k: v.to(DT) for k, v in {"w1": torch.tensor([[0.9, -0.6, 0.4, 1.2]]), "b1": torch.tensor([0.1, -0.2, 0.3, 0.0]),
                                       "w2": torch.tensor([0.5, -0.7, 0.8, 0.3])}.items()}


def mlp_level(meta_steps):
    return TaskWeightedMetaTraining(maml_problem(mlp_loss, GradientDescent(lr=0.3, steps=2)), Unrolled(),
                                    train=sine_tasks(3, 2), validation=sine_tasks(2, 3),
                                    meta_solver=GradientDescent(lr=0.2, steps=meta_steps), on_failure="raise")


def test_nonconvex_unrolled_meta_against_central_finite_differences():
    lvl, w = mlp_level(3), torch.tensor([0.5, 0.2, 0.3], dtype=DT)
    out = weight_hypergrad(lvl, w, MLP_THETA, method=UnrolledMeta())

    def value(wv):
        with torch.no_grad():
            theta, _ = run_inner(lvl.meta_solver, lvl.objective(wv), dict(MLP_THETA), detach=True)
        return float(lvl.validation_gradient(theta).loss)

    eps = 1e-5
    fd = torch.tensor([(value(w + eps * e) - value(w - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=DT)])
    assert rel(out.grad, fd) < 1e-6, (out.grad, fd)  # central differences: O(eps^2) + rounding/eps ~ 1e-9


@pytest.mark.parametrize("backend", [Unrolled(), FirstOrder()], ids=["unrolled", "first-order"])
def test_nonconvex_lookahead_is_exactly_one_unrolled_step_with_any_level_three_backend(backend):
    lvl = dataclasses.replace(mlp_level(1), backend=backend)
    w = torch.tensor([0.5, 0.2, 0.3], dtype=DT)
    look = weight_hypergrad(lvl, w, MLP_THETA, method=Lookahead(lr=0.2)).grad
    one_step = weight_hypergrad(lvl, w, MLP_THETA, method=UnrolledMeta()).grad
    assert rel(look, one_step) < 1e-12  # one step from a theta that does not depend on w: no second order


def test_nonconvex_finite_difference_lookahead_converges_to_the_lookahead_at_second_order():
    lvl, w = mlp_level(1), torch.tensor([0.5, 0.2, 0.3], dtype=DT)
    look = weight_hypergrad(lvl, w, MLP_THETA, method=Lookahead(lr=0.2)).grad
    errors = [rel(weight_hypergrad(lvl, w, MLP_THETA, method=FiniteDifferenceLookahead(lr=0.2, eps=eps)).grad, look)
              for eps in (0.04, 0.02)]
    assert errors[0] > 1e-8  # a nonconvex l_i: DARTS's differences are not exact
    assert 3.0 < errors[0] / errors[1] < 5.0, errors  # O(eps^2): halving eps quarters the error


def test_a_meta_solver_that_reads_the_objectives_value_is_refused():
    """NewtonCG's line search and Hessian products would read the meta-objective's value, which
    carries only its gradient: it used to return a zero weight hypergradient without a word."""
    from bilevel import NewtonCG

    with pytest.raises(TypeError, match="must use only gradients .*NewtonCG"):
        TaskWeightedMetaTraining(QUADRATIC, Unrolled(), train=TRAIN, validation=VAL,
                                 meta_solver=NewtonCG(steps=2, cg_steps=2))
