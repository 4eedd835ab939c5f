"""nn.Module-native use: module_params / module_buffers / write_grad, and model_loss with a subset of
the parameters as theta, a custom forward, and buffers (BatchNorm) that the solve never mutates.

References are independent of the library: central finite differences and MAML written by hand
with torch.func on a copy of the module."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from bilevel import (CG, BilevelProblem, GradientDescent, Implicit, Unrolled, batched_hypergrad, hypergrad,
                     maml_problem, model_loss, module_buffers, module_params, write_grad)

D = torch.float64
LR, STEPS = 0.1, 2


def mse(out, y):
    return ((out - y) ** 2).mean()  # by hand: F.mse_loss has no forward-mode rule on torch 2.13


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1), nn.Flatten(0)).to(D)


def data(tasks=None, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    lead = () if tasks is None else (tasks,)
    return (torch.randn(*lead, n, 3, generator=g, dtype=D), torch.randn(*lead, n, generator=g, dtype=D))


def maml_by_hand(module, head, support, query, names=None):
    """MAML's outer loss of ``head`` (the parameters adapted), the rest of ``module`` fixed."""
    rest = {k: p.detach() for k, p in module.named_parameters() if k not in head}

    def loss(p, batch):
        return mse(functional_call(module, {**rest, **p}, (batch[0],)), batch[1])

    p = head
    for _ in range(STEPS):
        g = grad(loss)(p, support)
        p = {k: p[k] - LR * g[k] for k in p}
    return loss(p, query)


# --- module_params and module_buffers ------------------------------------------------------------

def test_module_params_selects_by_prefix_name_list_and_predicate():
    net = mlp()
    names = [k for k, _ in net.named_parameters()]
    for trainable in ("2", ["2"], ["2.weight", "2.bias"], lambda n: n.startswith("2.")):
        theta, frozen = module_params(net, trainable=trainable)
        assert list(theta) == ["2.weight", "2.bias"] and list(frozen) == ["0.weight", "0.bias"]
    theta, frozen = module_params(net)
    assert list(theta) == names and frozen == {}
    # Views: no copy, no history, they follow an in-place update of the module.
    assert all(not t.requires_grad and t.data_ptr() == net.get_parameter(k).data_ptr() for k, t in theta.items())
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert torch.equal(theta["0.weight"], net[0].weight)


def test_module_params_names_a_typo_and_an_empty_selection():
    net = mlp()
    with pytest.raises(ValueError, match=r"module_params: trainable entries \['head'\] match no parameter.*"
                                         r"The parameters are \['0.weight'"):
        module_params(net, trainable=["2", "head"])
    with pytest.raises(ValueError, match=r"module_params: trainable=\['0.w'\] selects|match no parameter"):
        module_params(net, trainable=["0.w"])  # a prefix is a whole dotted component, not a substring
    with pytest.raises(ValueError, match="selects no parameter, so theta would be empty"):
        module_params(net, trainable=lambda n: False)
    with pytest.raises(TypeError, match="module_params: trainable must be None"):
        module_params(net, trainable=3)
    with pytest.raises(TypeError, match="module_params: expected an nn.Module, got dict"):
        module_params({"w": torch.zeros(2)})


def test_module_buffers_are_copies():
    bn = nn.BatchNorm1d(2).to(D)
    buffers = module_buffers(bn)
    assert set(buffers) == {"running_mean", "running_var", "num_batches_tracked"}
    assert all(b.data_ptr() != bn.get_buffer(k).data_ptr() for k, b in buffers.items())
    functional_call(bn, buffers, (torch.randn(4, 2, dtype=D),))
    assert torch.equal(bn.running_mean, torch.zeros(2, dtype=D)) and int(bn.num_batches_tracked) == 0
    assert int(buffers["num_batches_tracked"]) == 1


# --- write_grad -----------------------------------------------------------------------------------

def test_write_grad_round_trip_into_a_module_and_a_dict():
    net = mlp()
    g = {k: torch.randn_like(p) for k, p in net.named_parameters()}
    write_grad(net, g)
    assert all(torch.equal(p.grad, g[k]) for k, p in net.named_parameters())
    # A copy: an in-place gradient transform leaves the source intact.
    before = {k: v.clone() for k, v in g.items()}
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3)
    assert all(torch.equal(g[k], before[k]) for k in g)
    # accumulate adds; a subset leaves the others (frozen) alone.
    net.zero_grad(set_to_none=True)
    head = {k: g[k] for k in ("2.weight", "2.bias")}
    write_grad(net, head)
    write_grad(net, head, accumulate=True)
    assert torch.equal(net[2].weight.grad, 2 * g["2.weight"]) and net[0].weight.grad is None
    # A dict of leaves, then an optimizer step uses it.
    theta = {"w": torch.zeros(3, dtype=D, requires_grad=True)}
    opt = torch.optim.SGD(theta.values(), lr=0.5)
    write_grad(theta, {"w": torch.ones(3, dtype=D)})
    opt.step()
    assert torch.equal(theta["w"].detach(), torch.full((3,), -0.5, dtype=D))


def test_write_grad_messages_name_the_key():
    net = nn.Linear(2, 1).to(D)
    theta = {"w": torch.zeros(3, dtype=D, requires_grad=True)}
    with pytest.raises(ValueError, match=r"write_grad: grad names \['weigth'\], which the module \(Linear\) has no "
                                         r"parameter of; its parameters are \['weight', 'bias'\]"):
        write_grad(net, {"weigth": torch.zeros(1, 2, dtype=D)})
    with pytest.raises(ValueError, match=r"missing from grad \['w'\], not in target \['v'\]"):
        write_grad(theta, {"v": torch.zeros(3, dtype=D)})
    with pytest.raises(ValueError, match=r"grad\['weight'\] has shape \(4, 1, 2\), but the module \(Linear\)'s "
                                         r"'weight' has shape \(1, 2\).*reduction='none'"):
        write_grad(net, {"weight": torch.zeros(4, 1, 2, dtype=D)})
    with pytest.raises(TypeError, match=r"grad\['w'\] is torch.float32 on cpu, but target's 'w' is torch.float64"):
        write_grad(theta, {"w": torch.zeros(3)})
    with pytest.raises(TypeError, match=r"grad\['w'\] is a float, not a Tensor"):
        write_grad(theta, {"w": 1.0})
    views, _ = module_params(net)  # detached views: writing into them would be lost
    with pytest.raises(ValueError, match=r"target\['weight'\] does not require grad.*write_grad\(model, result.grad\)"):
        write_grad(views, {k: torch.zeros_like(v) for k, v in views.items()})
    with pytest.raises(ValueError, match=r"target's 'w' is not a leaf tensor"):
        write_grad({"w": theta["w"] * 2}, {"w": torch.zeros(3, dtype=D)})
    with pytest.raises(TypeError, match="write_grad: target must be an nn.Module or a dict"):
        write_grad([theta["w"]], {"w": torch.zeros(3, dtype=D)})
    assert net.weight.grad is None and theta["w"].grad is None  # nothing written by a failed call


# --- model_loss with a subset, a custom forward --------------------------------------------------

def test_head_only_hypergradient_equals_central_differences_and_maml_by_hand():
    net = mlp()
    support, query = data(seed=1), data(seed=2)
    theta, frozen = module_params(net, trainable="2")
    problem = maml_problem(model_loss(net, mse, trainable="2"), GradientDescent(lr=LR, steps=STEPS))
    result = hypergrad(problem, theta, support, query, backend=Unrolled())
    assert set(result.grad) == {"2.weight", "2.bias"}

    by_hand = grad(lambda h: maml_by_hand(net, h, support, query))(theta)
    eps = 1e-6
    for k, t in theta.items():
        fd = torch.zeros_like(t)
        for i in range(t.numel()):
            e = torch.zeros_like(t).view(-1)
            e[i] = eps
            up = maml_by_hand(net, {**theta, k: t + e.view_as(t)}, support, query)
            down = maml_by_hand(net, {**theta, k: t - e.view_as(t)}, support, query)
            fd.view(-1)[i] = (up - down) / (2 * eps)
        torch.testing.assert_close(result.grad[k], by_hand[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(result.grad[k], fd, rtol=1e-7, atol=1e-9)  # central differences: O(eps^2)
    # The backbone is frozen: no gradient reached the module.
    assert all(p.grad is None for p in net.parameters())
    write_grad(net, result.grad)
    assert torch.equal(net[2].weight.grad, result.grad["2.weight"]) and net[0].weight.grad is None


def test_head_only_implicit_agrees_with_unrolled_over_a_meta_batch():
    net = mlp()
    support, query = data(tasks=3, seed=1), data(tasks=3, seed=2)
    theta, _ = module_params(net, trainable=["2.weight", "2.bias"])
    loss = model_loss(net, mse, trainable=["2.weight", "2.bias"])
    problem = maml_problem(loss, GradientDescent(lr=LR, steps=STEPS))
    vec = batched_hypergrad(problem, theta, support, query, backend=Unrolled())
    loop = batched_hypergrad(problem, theta, support, query, backend=Unrolled(), vectorize=False)
    ref = {k: torch.stack([grad(lambda h: maml_by_hand(net, h, (support[0][t], support[1][t]),
                                                           (query[0][t], query[1][t])))(theta)[k]
                           for t in range(3)]).mean(0) for k in theta}
    for k in theta:
        torch.testing.assert_close(vec.grad[k], ref[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(loop.grad[k], ref[k], rtol=1e-12, atol=1e-14)


def test_model_loss_names_the_fix_for_mismatched_params():
    net = mlp()
    x, y = data()
    head, _ = module_params(net, trainable="2")
    with pytest.raises(ValueError, match=r"model_loss: params names do not match: missing \['0.weight', '0.bias'\], "
                                         r"unexpected \[\]. .*model_loss\(model, trainable=...\)"):
        model_loss(net, mse)(head, (x, y))
    full, _ = module_params(net)
    with pytest.raises(ValueError, match=r"unexpected \['0.weight', '0.bias'\]. \['0.weight', '0.bias'\] are frozen "
                                         r"by model_loss\(trainable='2'\)"):
        model_loss(net, mse, trainable="2")(full, (x, y))
    with pytest.raises(ValueError, match=r"model_loss: trainable entries \['head'\] match no parameter"):
        model_loss(net, mse, trainable="head")
    with pytest.raises(TypeError, match=r"model_loss: forward must be callable as forward\(call, x\)"):
        model_loss(net, mse, forward="logits")


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 1), nn.Linear(2, 1)

    def forward(self, u, v, scale=1.0):
        return {"out": scale * (self.a(u) + self.b(v)).squeeze(-1)}


def test_custom_forward_takes_several_inputs_keywords_and_picks_the_output():
    torch.manual_seed(0)
    net = TwoInputs().to(D)
    g = torch.Generator().manual_seed(4)
    u, v, y = (torch.randn(6, 3, generator=g, dtype=D), torch.randn(6, 2, generator=g, dtype=D),
               torch.randn(6, generator=g, dtype=D))
    loss = model_loss(net, mse, trainable="b", forward=lambda call, x: call(*x, scale=2.0)["out"])
    theta, _ = module_params(net, trainable="b")
    torch.testing.assert_close(loss(theta, ((u, v), y)), mse(net(u, v, scale=2.0)["out"], y), rtol=0, atol=0)


# --- buffers: BatchNorm ---------------------------------------------------------------------------

class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.out = nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Linear(6, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.bn(self.fc(x)))).squeeze(-1)


def bn_by_hand(model, theta, support, query):
    """Per-task MAML gradients on a copy without running statistics: train-mode BatchNorm's maths."""
    m = copy.deepcopy(model)
    m.bn.track_running_stats, m.bn.running_mean, m.bn.running_var, m.bn.num_batches_tracked = False, None, None, None
    per_task = []
    for t in range(support[0].shape[0]):
        def loss(p, batch):
            return mse(functional_call(m, p, (batch[0],)), batch[1])

        def maml(p):
            for _ in range(STEPS):
                g = grad(loss)(p, (support[0][t], support[1][t]))
                p = {k: p[k] - LR * g[k] for k in p}
            return loss(p, (query[0][t], query[1][t]))
        per_task.append(grad(maml)(theta))
    return {k: torch.stack([g[k] for g in per_task]).mean(0) for k in theta}


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_batchnorm_train_mode_is_exact_and_leaves_running_stats_unchanged(vectorize):
    torch.manual_seed(0)
    model = BNNet().to(D).train()
    with torch.no_grad():  # running statistics away from their (0, 1) start, to see any change
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(2.0)
    before = {k: b.clone() for k, b in model.named_buffers()}
    support, query = data(tasks=2, seed=3), data(tasks=2, seed=4)
    theta, _ = module_params(model)
    problem = maml_problem(model_loss(model, mse), GradientDescent(lr=LR, steps=STEPS))
    result = batched_hypergrad(problem, theta, support, query, backend=Unrolled(), vectorize=vectorize)
    ref = bn_by_hand(model, theta, support, query)
    for k in theta:
        torch.testing.assert_close(result.grad[k], ref[k], rtol=1e-12, atol=1e-14)
    # Implicit differentiates through forward-mode HVPs of the same batch-statistics BatchNorm.
    batched_hypergrad(problem, theta, support, query, backend=Implicit(CG(maxiter=3)), vectorize=vectorize,
                      on_failure="ignore")
    assert all(torch.equal(b, before[k]) for k, b in model.named_buffers()), "the solve mutated the module"


def test_batchnorm_eval_mode_reads_running_stats_under_vmap():
    torch.manual_seed(0)
    model = BNNet().to(D).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    before = {k: b.clone() for k, b in model.named_buffers()}
    support, query = data(tasks=2, seed=3), data(tasks=2, seed=4)
    theta, _ = module_params(model, trainable="out")
    problem = maml_problem(model_loss(model, mse, trainable="out"), GradientDescent(lr=LR, steps=STEPS))
    vec = batched_hypergrad(problem, theta, support, query, backend=Unrolled())
    per_task = [grad(lambda h: maml_by_hand(model, h, (support[0][t], support[1][t]),
                                            (query[0][t], query[1][t])))(theta) for t in range(2)]
    for k in theta:  # maml_by_hand calls the eval-mode module: running statistics as constants
        torch.testing.assert_close(vec.grad[k], torch.stack([g[k] for g in per_task]).mean(0), rtol=1e-12, atol=1e-14)
    assert all(torch.equal(b, before[k]) for k, b in model.named_buffers())


class Counter(nn.Module):
    """A module that writes its own buffer in place in forward (not a norm layer)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.register_buffer("total", torch.zeros(()))

    def forward(self, x):
        out = self.lin(x).squeeze(-1)
        self.total.add_(out.detach().mean())
        return out


def test_another_in_place_buffer_write_is_refused_under_vmap_and_works_in_a_loop():
    torch.manual_seed(0)
    model = Counter().to(D)
    support, query = data(tasks=2, seed=3), data(tasks=2, seed=4)
    theta, _ = module_params(model)
    problem = maml_problem(model_loss(model, mse), GradientDescent(lr=LR, steps=STEPS))
    with pytest.raises(RuntimeError, match=r"model_loss: Counter's forward failed under a torch.func transform, most "
                                           r"likely because it writes one of its buffers \['total'\] in place.*"
                                           r"vectorize=False\) with Unrolled"):
        batched_hypergrad(problem, theta, support, query, backend=Unrolled())
    loop = batched_hypergrad(problem, theta, support, query, backend=Unrolled(), vectorize=False)
    assert torch.isfinite(loop.grad["lin.weight"]).all() and float(model.total) == 0.0  # the copy was written


# --- bad inputs around modules --------------------------------------------------------------------

def test_inner_init_messages_point_to_module_params():
    model = nn.Linear(3, 1)
    with pytest.raises(TypeError, match=r"inner_init got a module \(Linear\).*inner_init=module_params\(model\)\[0\]"):
        BilevelProblem(lambda p, t, b: p["weight"].sum(), lambda p, t, b: p["weight"].sum(),
                       GradientDescent(lr=0.1, steps=1), inner_init=model)
    hpo = BilevelProblem(lambda p, t, b: (p["w"] ** 2).sum() + t["c"].sum(), lambda p, t, b: p["w"].sum(),
                         GradientDescent(lr=0.1, steps=1))
    with pytest.raises(KeyError, match=r"looked up phi\['w'\].*inner_init=\{'w': torch.zeros\(...\)\}.*"
                                       r"module_params\(model\)\[0\]"):
        hypergrad(hpo, {"c": torch.zeros(2, dtype=D)}, None, None, backend=Unrolled())


# --- the docs page --------------------------------------------------------------------------------

def test_modules_page_snippets_run():
    """docs/modules.md's snippets run in order (each ends in its own assertions)."""
    page = Path(__file__).resolve().parents[1] / "docs" / "modules.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks, "docs/modules.md has no python snippet"
    namespace = {"__name__": "modules_page"}
    for code in blocks:
        exec(compile(code, str(page), "exec"), namespace)


def test_write_grad_refuses_a_frozen_parameter_of_a_module():
    """An optimizer steps any parameter whose .grad is set, requires_grad or not: writing one
    into a frozen layer would train it."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).double()
    net[0].weight.requires_grad_(False)
    grads = {k: torch.ones_like(p) for k, p in net.named_parameters()}
    with pytest.raises(ValueError, match=r"'0.weight' is frozen"):
        write_grad(net, grads)
    assert net[0].weight.grad is None
