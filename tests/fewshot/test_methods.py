"""Each named method's meta-gradient on one batch against an independent reference (float64)."""

import pytest
import torch

from bilevel.fewshot import SinusoidMLP, TrainConfig, build_method, make_benchmark, resolve
from bilevel.fewshot.benchmarks import batch_to_tasks
from bilevel import batched_hypergrad
from problems import rel_err

TOL = 1e-10
LR, STEPS, LAM = 0.02, 3, 2.0


@pytest.fixture(scope="module")
def setting():
    bench = make_benchmark("sinusoid", 1, 5, 5)
    torch.manual_seed(0)
    model = SinusoidMLP(hidden=8).double()  # 97 parameters: a dense Hessian is cheap
    support, query = batch_to_tasks(bench.sampler("train", 0).sample(3), "cpu", dtype=torch.float64)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    return bench, model, theta, support, query


def ours(method, setting, **overrides):
    bench, model, theta, support, query = setting
    config = resolve(TrainConfig(benchmark="sinusoid", method=method, inner_lr=LR, inner_steps=STEPS, lam=LAM,
                                 **overrides))
    problem, backend = build_method(config, bench.task_loss(model))
    return batched_hypergrad(problem, theta, support, query, backend=backend), problem


def per_task(setting, fn):
    bench, model, theta, support, query = setting
    grads = [fn(bench.task_loss(model), theta, (support[0][i], support[1][i]), (query[0][i], query[1][i]))
             for i in range(3)]
    return {k: torch.stack([g[k] for g in grads]).mean(0) for k in theta}


def autograd_inner(loss, theta, support, proximal, create_graph, steps=STEPS):
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    phi = dict(th)
    for _ in range(steps):
        obj = loss(phi, support)
        if proximal:
            obj = obj + 0.5 * LAM * sum(((phi[k] - th[k]) ** 2).sum() for k in phi)
        g = torch.autograd.grad(obj, list(phi.values()), create_graph=create_graph)
        phi = {k: p - LR * gk for (k, p), gk in zip(phi.items(), g)}
    return th, phi


def query_grad(loss, phi, query):
    phi = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    return dict(zip(phi, torch.autograd.grad(loss(phi, query), list(phi.values()))))


def test_maml(setting):
    def ref(loss, theta, support, query):
        th, phi = autograd_inner(loss, theta, support, proximal=False, create_graph=True)
        return dict(zip(th, torch.autograd.grad(loss(phi, query), list(th.values()))))

    result, _ = ours("maml", setting)
    assert rel_err(result.grad, per_task(setting, ref)) < TOL


def test_fomaml(setting):
    def ref(loss, theta, support, query):
        _, phi = autograd_inner(loss, theta, support, proximal=False, create_graph=False)
        return query_grad(loss, phi, query)

    result, _ = ours("fomaml", setting)
    assert rel_err(result.grad, per_task(setting, ref)) < TOL


def test_reptile(setting):
    def ref(loss, theta, support, query):
        _, phi = autograd_inner(loss, theta, support, proximal=False, create_graph=False)
        return {k: theta[k] - phi[k].detach() for k in theta}

    result, _ = ours("reptile", setting)
    assert rel_err(result.grad, per_task(setting, ref)) < TOL


def dense_imaml_gradient(loss, phi, support, query):
    """(I + H/lam)^-1 grad L_test(phi) with the Hessian materialized by torch.autograd."""
    names = list(phi)
    shapes = [phi[k].shape for k in names]
    flat = torch.cat([phi[k].detach().reshape(-1) for k in names])

    def unflat(z):
        out, i = {}, 0
        for k, s in zip(names, shapes):
            out[k] = z[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    H = torch.autograd.functional.hessian(lambda z: loss(unflat(z), support), flat)
    g = query_grad(loss, unflat(flat), query)
    rhs = torch.cat([g[k].reshape(-1) for k in names])
    return unflat(torch.linalg.solve(torch.eye(len(flat), dtype=flat.dtype) + H / LAM, rhs))


@pytest.mark.parametrize("method", ["imaml-gd", "imaml-hf"])
def test_imaml(setting, method):
    """CG run to convergence equals the dense formula at the method's own inner solution; for
    imaml-gd that solution also equals an independent autograd gradient-descent loop."""
    bench, model, theta, support, query = setting
    result, _ = ours(method, setting, cg_steps=200)
    assert bool(result.stats["converged"].all())
    loss = bench.task_loss(model)
    expected = []
    for i in range(3):
        phi = {k: v[i] for k, v in result.inner_solution.items()}
        if method == "imaml-gd":
            _, phi_ref = autograd_inner(loss, theta, (support[0][i], support[1][i]), proximal=True, create_graph=False)
            assert rel_err(phi, {k: v.detach() for k, v in phi_ref.items()}) < TOL
        expected.append(dense_imaml_gradient(loss, phi, (support[0][i], support[1][i]), (query[0][i], query[1][i])))
    mean = {k: torch.stack([e[k] for e in expected]).mean(0) for k in theta}
    assert rel_err(result.grad, mean) < 1e-8  # CG stops at a residual of 1e-10 relative


def test_backend_flag_swaps_the_backend(setting):
    """--backend torchopt gives imaml-gd's meta-gradient through TorchOpt: the same numbers."""
    native, _ = ours("imaml-gd", setting)
    torchopt, _ = ours("imaml-gd", setting, backend="torchopt")
    assert rel_err(torchopt.grad, native.grad) < TOL
