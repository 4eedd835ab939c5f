"""Bad input raises ValueError/TypeError naming the call, what was expected and given."""

import math
import sys

import pytest
import torch

from bilevel import (CG, BilevelProblem, Dense, FirstOrder, GradientDescent, HigherUnrolled, Implicit,
                     Neumann, NewtonCG, NonFiniteError, SolverError, TorchoptImplicit, TruncatedUnrolled,
                     Unrolled, batched_hypergrad, hypergrad, imaml_problem, model_loss)
from problems import DTYPE, ridge_data, ridge_problem


@pytest.fixture
def ridge():
    inner, outer, theta = ridge_data()
    return ridge_problem(10.0, GradientDescent(lr=0.01, steps=5)), theta, inner, outer


@pytest.mark.parametrize("lam", [0.0, -1.0, math.nan])
def test_lambda_must_be_positive(lam):
    with pytest.raises(ValueError, match=r"imaml_problem: lam must be a number > 0"):
        imaml_problem(lambda p, b: p["w"].sum(), lam, GradientDescent(lr=0.1, steps=1))


@pytest.mark.parametrize("steps", [0, -3])
def test_step_count_must_be_positive(steps):
    with pytest.raises(ValueError, match=rf"GradientDescent: steps must be >= 1, got {steps}"):
        GradientDescent(lr=0.1, steps=steps)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        NewtonCG(steps=steps)
    with pytest.raises(ValueError, match="TruncatedUnrolled: steps must be >= 1"):
        TruncatedUnrolled(steps)


def test_step_count_must_be_an_int():
    with pytest.raises(TypeError, match="steps must be an int, got float"):
        GradientDescent(lr=0.1, steps=2.5)


def test_non_scalar_loss(ridge):
    _, theta, inner, outer = ridge
    problem = BilevelProblem(lambda phi, th, b: (phi["w"] - th["w"]) ** 2,
                             lambda phi, th, b: phi["w"].sum(), GradientDescent(lr=0.1, steps=2))
    with pytest.raises(ValueError, match=r"inner_loss\(phi, theta, batch\): expected a scalar Tensor, "
                                         r"got a tensor of shape \(5,\)\. Reduce it"):
        hypergrad(problem, theta, inner, outer, backend=Unrolled())


def test_loss_that_is_not_a_tensor(ridge):
    _, theta, inner, outer = ridge
    problem = BilevelProblem(lambda phi, th, b: ((phi["w"] - th["w"]) ** 2).sum(),
                             lambda phi, th, b: 1.0, GradientDescent(lr=0.1, steps=2))
    with pytest.raises(TypeError, match=r"outer_loss\(phi, theta, batch\): expected a scalar Tensor, got float"):
        hypergrad(problem, theta, inner, outer, backend=Implicit())


def test_non_finite_loss_and_gradient(ridge):
    _, theta, inner, outer = ridge
    diverging = ridge_problem(10.0, GradientDescent(lr=10.0, steps=200))
    with pytest.raises(NonFiniteError, match="hypergrad: the outer loss is not finite"):
        hypergrad(diverging, theta, inner, outer, backend=Unrolled())
    assert issubclass(NonFiniteError, ValueError)
    nan_grad = BilevelProblem(lambda phi, th, b: ((phi["w"] - th["w"]) ** 2).sum(),
                              lambda phi, th, b: torch.sqrt(th["w"] * 0).sum() + phi["w"].sum(),
                              GradientDescent(lr=0.1, steps=1))
    with pytest.raises(NonFiniteError, match=r"hypergradient is not finite for \['w'\]"):
        hypergrad(nan_grad, theta, inner, outer, backend=Implicit())


def test_mismatched_parameter_names(ridge):
    problem, theta, inner, outer = ridge
    with pytest.raises(ValueError, match=r"Implicit.hypergrad: inner_solution has names \['v'\], but phi starts "
                                         r"at theta .*give BilevelProblem inner_init="):
        hypergrad(problem, theta, inner, outer, backend=Implicit(), inner_solution={"v": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"inner_solution\['w'\] has shape \(4,\), expected \(5,\)"):
        hypergrad(problem, theta, inner, outer, backend=Implicit(), inner_solution={"w": torch.zeros(4)})


def test_missing_parameter_names_in_model_loss():
    net = torch.nn.Linear(3, 2)
    loss = model_loss(net)
    with pytest.raises(ValueError, match=r"model_loss: params names do not match: missing \['bias'\]"):
        loss({"weight": net.weight}, (torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)))


def test_first_order_needs_shared_names():
    inner, outer, theta = ridge_data()
    problem = ridge_problem(10.0, GradientDescent(lr=0.01, steps=3), inner_init={"u": torch.zeros(5, dtype=DTYPE)})
    hpo = BilevelProblem(lambda phi, th, b: ((phi["u"] - th["w"]) ** 2).sum(),
                         lambda phi, th, b: phi["u"].sum(), GradientDescent(lr=0.1, steps=2),
                         inner_init={"u": torch.zeros(5, dtype=DTYPE)})
    with pytest.raises(ValueError, match=r"FirstOrder.hypergrad: inner parameters \['u'\] have no counterpart"):
        hypergrad(hpo, theta, inner, outer, backend=FirstOrder())
    del problem


def test_unknown_solver_and_backend_options(ridge):
    problem, theta, inner, outer = ridge
    with pytest.raises(TypeError, match=r"Implicit: linear_solver must be a LinearSolver such as CG\(maxiter=5\).*"
                       r"got str \('cg'\)\. Strings are not accepted: write CG\(\)"):
        Implicit("cg")
    with pytest.raises(TypeError, match=r"Implicit: linear_solver must be a LinearSolver.*got function"):
        Implicit(lambda matvec, b: None)
    with pytest.raises(ValueError, match=r"Neumann: tol must be a number >= 0, got -1"):
        Neumann(tol=-1)
    with pytest.raises(ValueError, match=r"Neumann: atol must be a number >= 0"):
        Neumann(atol=float("nan"))
    with pytest.raises(ValueError, match=r"Dense: a direct solve has no starting point"):
        Dense()(lambda v: v, {"x": torch.ones(2)}, init={"x": torch.ones(2)})
    with pytest.raises(ValueError, match="Implicit: unknown hvp mode 'fast'"):
        Implicit(hvp_mode="fast")
    with pytest.raises(TypeError, match="hypergrad: backend must be a HypergradBackend"):
        hypergrad(problem, theta, inner, outer, backend="implicit")
    with pytest.raises(TypeError, match="TorchoptImplicit: linear_solver must be CG"):
        TorchoptImplicit(Dense())
    with pytest.raises(ValueError, match="BilevelProblem: inner_init='zeros' is unknown"):
        BilevelProblem(lambda *a: 0, lambda *a: 0, inner_init="zeros")
    with pytest.raises(TypeError, match="BilevelProblem: inner_solver must be an InnerSolver"):
        BilevelProblem(lambda *a: 0, lambda *a: 0, inner_solver=torch.optim.SGD)


def test_backend_specific_misuse(ridge):
    problem, theta, inner, outer = ridge
    for backend in (Unrolled(), TruncatedUnrolled(2), HigherUnrolled()):
        with pytest.raises(TypeError, match=f"{type(backend).__name__}.hypergrad: this backend differentiates "
                           "through the inner solver's path and cannot take inner_solution="):
            hypergrad(problem, theta, inner, outer, backend=backend, inner_solution=theta)
    with pytest.raises(ValueError, match=r"TruncatedUnrolled\(steps=9\): more than the inner solver's 5 steps"):
        hypergrad(problem, theta, inner, outer, backend=TruncatedUnrolled(9))
    newton = ridge_problem(10.0, NewtonCG(steps=2))
    with pytest.raises(TypeError, match="NewtonCG has no torch.optim equivalent"):
        hypergrad(newton, theta, inner, outer, backend=HigherUnrolled())
    no_solver = ridge_problem(10.0, None)
    with pytest.raises(ValueError, match="Unrolled.hypergrad: the problem has no inner_solver"):
        hypergrad(no_solver, theta, inner, outer, backend=Unrolled())


def test_batched_input_errors(ridge):
    problem, theta, inner, outer = ridge
    X, y = inner
    with pytest.raises(ValueError, match="batched_hypergrad: every batch tensor needs the same task dimension 0"):
        batched_hypergrad(problem, theta, (X[None], y[None]), (outer[0][None].expand(2, -1, -1), outer[1][None]),
                          backend=Unrolled())
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        batched_hypergrad(problem, theta, (X[None], y[None]), (outer[0][None], outer[1][None]),
                          backend=Unrolled(), chunk_size=0)


def test_throw_raises_solver_error_on_unconverged_solve(ridge):
    problem, theta, inner, outer = ridge
    result = hypergrad(problem, theta, inner, outer, backend=Implicit(CG(maxiter=1)))
    assert not bool(result.stats["converged"])  # reported, not raised, by default
    with pytest.raises(SolverError, match="did not converge in 1 of 1 systems"):
        hypergrad(problem, theta, inner, outer, backend=Implicit(CG(maxiter=1)), throw=True)


def test_missing_optional_library_names_the_install_command(monkeypatch, ridge):
    problem, theta, inner, outer = ridge
    monkeypatch.setitem(sys.modules, "higher", None)  # makes `import higher` raise ImportError
    with pytest.raises(ImportError, match=r"HigherUnrolled needs the 'higher' library.*pip install 'bilevel\[higher\]'"):
        hypergrad(problem, theta, inner, outer, backend=HigherUnrolled())
