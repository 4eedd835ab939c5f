"""Each named method's meta-gradient on one batch against an independent reference (float64)."""

import pytest
import torch

from bilevel.fewshot import SinusoidMLP, TrainConfig, build_method, make_benchmark, resolve
from bilevel.fewshot.benchmarks import batch_to_tasks
from bilevel import batched_hypergrad, hypergrad
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
    overrides = {"lam_scale": "mean", **overrides} if overrides.get("protocol") != "official" else overrides
    if method != "imaml-hf":
        overrides = {"inner_momentum": 0.0, **overrides}  # plain GD, as the independent loops below
    config = resolve(TrainConfig(benchmark="sinusoid", method=method, shots=5, queries=5, inner_lr=LR,
                                 inner_steps=STEPS, lam=LAM, **overrides))
    method = build_method(config, bench.task_loss(model))
    inner = None
    if method.adapt is not None:
        inner = torch.func.vmap(lambda s: method.adapt.solve_inner(theta, s, detach=True))(support)
    return batched_hypergrad(method.problem, theta, support, query, backend=method.backend,
                             inner_solutions=inner), method.problem


def per_task(setting, fn):
    bench, model, theta, support, query = setting
    grads = [fn(bench.task_loss(model), theta, (support[0][i], support[1][i]), (query[0][i], query[1][i]))
             for i in range(3)]
    return {k: torch.stack([g[k] for g in grads]).mean(0) for k in theta}


def autograd_inner(loss, theta, support, proximal, create_graph, steps=STEPS, lam=LAM):
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    phi = dict(th)
    for _ in range(steps):
        obj = loss(phi, support)
        if proximal:
            obj = obj + 0.5 * lam * sum(((phi[k] - th[k]) ** 2).sum() for k in phi)
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


def dense_imaml_gradient(loss, phi, support, query, lam=LAM, damping=0.0):
    """((1 + damping) I + H/lam)^-1 grad L_test(phi) with the Hessian materialized by torch.autograd."""
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
    return unflat(torch.linalg.solve((1 + damping) * torch.eye(len(flat), dtype=flat.dtype) + H / lam, rhs))


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


@pytest.mark.parametrize("lam_scale,damping", [("sum", 0.0), ("mean", 0.5)])
def test_imaml_lam_scale_and_damping(setting, lam_scale, damping):
    """--lam-scale sum divides lambda by the support size (5 here); --cg-damping d solves
    ((1 + d) I + H/lam) g = grad L_test: both against an autograd inner loop and a dense solve."""
    bench, model, theta, support, query = setting
    lam = LAM / 5 if lam_scale == "sum" else LAM
    result, _ = ours("imaml-gd", setting, cg_steps=200, lam_scale=lam_scale, cg_damping=damping)
    loss = bench.task_loss(model)
    expected = []
    for i in range(3):
        s, q = (support[0][i], support[1][i]), (query[0][i], query[1][i])
        _, phi = autograd_inner(loss, theta, s, proximal=True, create_graph=False, lam=lam)
        phi = {k: v.detach() for k, v in phi.items()}
        assert rel_err({k: v[i] for k, v in result.inner_solution.items()}, phi) < TOL
        expected.append(dense_imaml_gradient(loss, phi, s, q, lam=lam, damping=damping))
    mean = {k: torch.stack([e[k] for e in expected]).mean(0) for k in theta}
    assert rel_err(result.grad, mean) < 1e-8  # CG stops at a residual of 1e-10 relative


def test_official_protocol(setting):
    """The released iMAML code, independently: GD on L_train alone, one pull step
    phi <- phi - lr lam (phi - theta), then ((1 + 1) I + H/(lam + 10))^-1 grad L_test(phi)."""
    bench, model, theta, support, query = setting
    result, _ = ours("imaml-gd", setting, cg_steps=200, protocol="official")
    loss = bench.task_loss(model)
    expected = []
    for i in range(3):
        s, q = (support[0][i], support[1][i]), (query[0][i], query[1][i])
        _, phi = autograd_inner(loss, theta, s, proximal=False, create_graph=False)
        phi = {k: (v - LR * LAM * (v - theta[k])).detach() for k, v in phi.items()}
        assert rel_err({k: v[i] for k, v in result.inner_solution.items()}, phi) < TOL
        expected.append(dense_imaml_gradient(loss, phi, s, q, lam=LAM + 10, damping=1.0))
    mean = {k: torch.stack([e[k] for e in expected]).mean(0) for k in theta}
    assert rel_err(result.grad, mean) < 1e-8


def test_gauss_newton_curvature(setting):
    """--curvature gauss-newton solves (I + G/lam) g = grad L_test with G = J^T H_loss J, the
    Gauss-Newton matrix, built densely here from the Jacobian of the network's outputs."""
    bench, model, theta, support, query = setting
    config = resolve(TrainConfig(benchmark="sinusoid", method="imaml-gd", shots=5, queries=5, inner_lr=LR,
                                 inner_steps=STEPS, lam=LAM, lam_scale="mean", cg_steps=200,
                                 curvature="gauss-newton"))
    method = build_method(config, bench.task_loss(model), bench.outputs(model), bench.criterion)
    result = batched_hypergrad(method.problem, theta, support, query, backend=method.backend)
    names = list(theta)
    for i in range(3):
        x, y = support[0][i], support[1][i]
        phi = {k: v[i] for k, v in result.inner_solution.items()}
        flat = torch.cat([phi[k].reshape(-1) for k in names])

        def unflat(z):
            out, j = {}, 0
            for k in names:
                out[k] = z[j:j + phi[k].numel()].reshape(phi[k].shape)
                j += phi[k].numel()
            return out

        J = torch.autograd.functional.jacobian(lambda z: bench.outputs(model)(unflat(z), x).reshape(-1), flat)
        G = J.T @ J * (2 / J.shape[0])  # the squared error's Hessian in the outputs is 2/n I
        g = query_grad(bench.task_loss(model), phi, (query[0][i], query[1][i]))
        rhs = torch.cat([g[k].reshape(-1) for k in names])
        expected = torch.linalg.solve(torch.eye(len(flat), dtype=flat.dtype) + G / LAM, rhs)
        single = hypergrad(method.problem, theta, (x, y), (query[0][i], query[1][i]), backend=method.backend,
                           inner_solution=phi)
        assert rel_err(single.grad, unflat(expected)) < 1e-8
    assert not bool(result.stats["negative_curvature"].any())
