"""A small conv net with BatchNorm (the few-shot net's shape) in float64: backends that
compute the same math agree to 1e-10, and a meta-batch under ``vmap`` equals a loop."""

import dataclasses

import pytest
import torch
from torch.func import grad, vmap

from backends import CASES, ids
from bilevel import (CG, Adam, Dense, FirstOrder, GradientDescent, HigherUnrolled, Implicit,
                     Momentum, NewtonCG, TorchoptImplicit, TruncatedUnrolled, Unrolled, batched_hypergrad, hypergrad,
                     imaml_problem, maml_problem)
from problems import conv_tasks, net_loss, rel_err

TOL = 1e-10
LAM = 5.0  # large enough that H + lam I is positive definite for this net and data


def task(i, support, query):
    return (support[0][i], support[1][i]), (query[0][i], query[1][i])


@pytest.fixture(scope="module")
def tasks():
    return conv_tasks(num_tasks=3)


def plain_autograd_maml(net, theta, support, query, lr, steps):
    """MAML written by hand with torch.autograd and create_graph=True."""
    loss_fn = net_loss(net)
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    phi = dict(th)
    for _ in range(steps):
        g = torch.autograd.grad(loss_fn(phi, support), list(phi.values()), create_graph=True)
        phi = {k: p - lr * gk for (k, p), gk in zip(phi.items(), g)}
    out = loss_fn(phi, query)
    return dict(zip(th, torch.autograd.grad(out, list(th.values()))))


@pytest.mark.parametrize("solver", [GradientDescent(lr=0.3, steps=3), Momentum(lr=0.2, steps=3, momentum=0.7),
                                    Adam(lr=0.05, steps=3)], ids=["gd", "momentum", "adam"])
def test_unrolled_equals_higher(tasks, solver):
    net, theta, support, query = tasks
    problem = maml_problem(net_loss(net), solver)
    ib, ob = task(0, support, query)
    ours = hypergrad(problem, theta, ib, ob, backend=Unrolled())
    theirs = hypergrad(problem, theta, ib, ob, backend=HigherUnrolled())
    assert rel_err(ours.grad, theirs.grad) < TOL
    assert rel_err(ours.inner_solution, theirs.inner_solution) < TOL


def test_unrolled_equals_plain_autograd_loop(tasks):
    net, theta, support, query = tasks
    ib, ob = task(1, support, query)
    ours = hypergrad(maml_problem(net_loss(net), GradientDescent(lr=0.3, steps=4)), theta, ib, ob,
                     backend=Unrolled())
    assert rel_err(ours.grad, plain_autograd_maml(net, theta, ib, ob, 0.3, 4)) < TOL


def test_implicit_cg_equals_torchopt_and_dense(tasks):
    net, theta, support, query = tasks
    problem = imaml_problem(net_loss(net), LAM, GradientDescent(lr=0.1, steps=5))
    ib, ob = task(0, support, query)
    # Same truncated CG (5 steps, no early stop) in both libraries: the same arithmetic.
    ours = hypergrad(problem, theta, ib, ob, backend=Implicit(CG(maxiter=5, tol=0.0)))
    theirs = hypergrad(problem, theta, ib, ob, backend=TorchoptImplicit(CG(maxiter=5, tol=0.0, negative_curvature="continue")))
    assert rel_err(ours.grad, theirs.grad) < TOL
    # Run to convergence, CG solves the same system as a dense solve of the materialized Hessian.
    converged = hypergrad(problem, theta, ib, ob, backend=Implicit(CG(tol=1e-14)))
    dense = hypergrad(problem, theta, ib, ob, backend=Implicit(Dense()))
    assert bool(converged.stats["converged"]) and not bool(converged.stats["negative_curvature"])
    assert rel_err(converged.grad, dense.grad) < TOL
    torchopt_converged = hypergrad(problem, theta, ib, ob, backend=TorchoptImplicit(CG(tol=1e-14, negative_curvature="continue")))
    assert rel_err(torchopt_converged.grad, dense.grad) < TOL


def test_imaml_meta_gradient_is_the_proximal_formula(tasks):
    """For iMAML the general implicit formula equals (I + H/lam)^-1 grad L_test(phi) exactly."""
    from bilevel import hvp, solve_dense

    net, theta, support, query = tasks
    loss_fn = net_loss(net)
    problem = imaml_problem(loss_fn, LAM, GradientDescent(lr=0.1, steps=5))
    ib, ob = task(2, support, query)
    result = hypergrad(problem, theta, ib, ob, backend=Implicit(Dense()))
    phi = result.inner_solution
    g_test = grad(loss_fn)(phi, ob)
    matvec = lambda v: {k: v[k] + hvp(lambda p: loss_fn(p, ib), phi, v)[k] / LAM for k in v}
    expected = solve_dense(matvec, g_test).solution
    assert rel_err(result.grad, expected) < TOL


def test_first_order_is_the_query_gradient_at_the_adapted_weights(tasks):
    net, theta, support, query = tasks
    loss_fn = net_loss(net)
    problem = maml_problem(loss_fn, GradientDescent(lr=0.3, steps=3))
    ib, ob = task(0, support, query)
    result = hypergrad(problem, theta, ib, ob, backend=FirstOrder())
    phi = {k: v.clone().requires_grad_(True) for k, v in problem.solve_inner(theta, ib).items()}
    expected = dict(zip(phi, torch.autograd.grad(loss_fn(phi, ob), list(phi.values()))))
    assert rel_err(result.grad, expected) < TOL


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_batched_equals_looped(tasks, case):
    """vmap over tasks gives each task's own hypergradient; the mean equals a Python loop.

    With BatchNorm in training mode this catches the torch 2.13 trap where the gradient of
    a vmap-ed mean is wrong (see the next test): a tolerance of 1e-10 is far below its error.
    """
    net, theta, support, query = tasks
    backend, solver = case.build(L=4.0, mu=LAM, d=3)  # d=3: short Newton-CG inner solves
    if isinstance(getattr(backend, "linear_solver", None), CG):  # vmap runs every CG iteration
        backend = dataclasses.replace(backend, linear_solver=dataclasses.replace(backend.linear_solver, maxiter=20, tol=1e-14))
    if isinstance(solver, NewtonCG):  # batched vs looped needs no converged inner problem
        solver = dataclasses.replace(solver, steps=2)
    if case.id.startswith(("unrolled", "higher")):  # MAML: a few steps of the case's solver type
        solver = Momentum(lr=0.2, steps=4) if "momentum" in case.id else GradientDescent(lr=0.3, steps=4)
        problem = maml_problem(net_loss(net), solver)
    elif case.id.startswith("truncated"):  # theta must enter the inner loss: iMAML's proximal term
        backend = TruncatedUnrolled(2)
        problem = imaml_problem(net_loss(net), LAM, GradientDescent(lr=0.1, steps=4))
    else:
        problem = imaml_problem(net_loss(net), LAM, solver)
    batched = batched_hypergrad(problem, theta, support, query, backend=backend)
    looped = [hypergrad(problem, theta, *task(i, support, query), backend=backend) for i in range(3)]
    mean = {k: torch.stack([r.grad[k] for r in looped]).mean(0) for k in theta}
    assert rel_err(batched.grad, mean) < TOL
    torch.testing.assert_close(batched.stats["task_loss"], torch.stack([r.loss for r in looped]),
                               rtol=1e-12, atol=0)
    for k in looped[0].stats:
        expected = torch.stack([r.stats[k] for r in looped])
        if expected.is_floating_point():  # residual norms: equal up to rounding
            torch.testing.assert_close(batched.stats[k], expected, rtol=1e-6, atol=1e-12)
        else:
            assert torch.equal(batched.stats[k], expected), k


def test_chunked_vmap_and_loop_equal_unchunked(tasks):
    net, theta, support, query = tasks
    problem = imaml_problem(net_loss(net), LAM, GradientDescent(lr=0.1, steps=3))
    backend = Implicit(CG(maxiter=3))
    full = batched_hypergrad(problem, theta, support, query, backend=backend)
    chunked = batched_hypergrad(problem, theta, support, query, backend=backend, chunk_size=2)
    looped = batched_hypergrad(problem, theta, support, query, backend=backend, vectorize=False)
    assert rel_err(chunked.grad, full.grad) < TOL
    assert rel_err(looped.grad, full.grad) < TOL
    assert torch.equal(looped.stats["steps"], full.stats["steps"])


def test_grad_of_vmapped_mean_through_batchnorm_is_caught(tasks):
    """The trap the batched path avoids: grad(mean(vmap(task loss))) through training-mode
    BatchNorm is wrong on torch 2.13, by far more than the 1e-10 the test above allows."""
    net, theta, support, query = tasks
    problem = maml_problem(net_loss(net), GradientDescent(lr=0.3, steps=3))

    def task_outer(th, ib, ob):
        return problem.outer_loss(problem.solve_inner(th, ib), th, ob)

    naive = grad(lambda th: vmap(task_outer, in_dims=(None, 0, 0))(th, support, query).mean())(theta)
    looped = [hypergrad(problem, theta, *task(i, support, query), backend=Unrolled()) for i in range(3)]
    mean = {k: torch.stack([r.grad[k] for r in looped]).mean(0) for k in theta}
    err = rel_err(naive, mean)
    if err < TOL:
        pytest.skip(f"this torch ({torch.__version__}) no longer has the trap (error {err:.1e})")
    assert err > 1e3 * TOL


def test_one_implicit_task_on_a_cpu_takes_plain_autograd_with_the_vmap_numbers(tasks, monkeypatch):
    """Outside torch.func transforms, reverse-over-reverse Implicit runs on plain autograd
    (bilevel.eager); under vmap it cannot. Both give the same hypergradient and diagnostics."""
    from bilevel.adapters import implicit as implicit_module

    net, theta, support, query = tasks
    problem = imaml_problem(net_loss(net), LAM, GradientDescent(lr=0.1, steps=6))
    backend = Implicit(CG(maxiter=8, tol=0.0), hvp_mode="reverse-over-reverse", newton_check=None)
    calls = []
    real = implicit_module._implicit_autograd
    monkeypatch.setattr(implicit_module, "_implicit_autograd", lambda *a: calls.append(1) or real(*a))
    eager = hypergrad(problem, theta, *task(0, support, query), backend=backend)
    assert calls == [1]
    under_vmap = batched_hypergrad(problem, theta, tuple(t[:1] for t in support), tuple(t[:1] for t in query),
                                   backend=backend)
    assert calls == [1]  # vmap took the torch.func path
    assert rel_err(under_vmap.grad, eager.grad) < TOL
    for k in ("residual_norm", "inner_grad_norm"):
        torch.testing.assert_close(under_vmap.stats[k][0], eager.stats[k], rtol=1e-8, atol=1e-14)


def test_one_unrolled_task_on_a_cpu_backpropagates_with_plain_autograd(tasks, monkeypatch):
    """Unrolled outside torch.func transforms runs its steps with create_graph autograd
    (bilevel.eager) and gets vmap's (torch.func's) meta-gradient."""
    net, theta, support, query = tasks
    problem = maml_problem(net_loss(net), Momentum(lr=0.2, steps=3))
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(k.get("create_graph")) or real(*a, **k))
    eager = hypergrad(problem, theta, *task(0, support, query), backend=Unrolled())
    assert calls.count(True) == 3 and len(calls) == 4  # 3 differentiable steps, then the meta-gradient
    monkeypatch.setattr(torch.autograd, "grad", real)
    under_vmap = batched_hypergrad(problem, theta, tuple(t[:1] for t in support), tuple(t[:1] for t in query),
                                   backend=Unrolled())
    assert rel_err(under_vmap.grad, eager.grad) < TOL
