"""Against Betty (betty-ml 0.2.1): the three-level sinusoid task weighting of benchmarks/multilevel_error.py
written in Betty and in bilevel, hypergradients of the task weights and time per outer step, side by side.

    OMP_NUM_THREADS=1 python benchmarks/betty_multilevel.py --out docs/results/betty

Betty is a benchmark peer, not a dependency: ``pip install --no-deps --ignore-requires-python betty-ml==0.2.1``
(it declares Requires-Python < 3.11; docs/results/multilevel/betty-install.txt).

The problem (float64, CPU, one thread) is ``sinusoid()`` of benchmarks/multilevel_error.py: NestedMAML's
1-40-40-1 ReLU network, MAML at level 3 (5 steps at 0.01, 10 support and 10 query points), 8 training
tasks (2 outliers), 4 clean validation tasks; level 2: 10 SGD meta-steps at 0.03 on
``F(theta, w) = sum_i w_i l_i(theta) + (1/2)||theta - theta_0||^2`` from ``theta_0``, ``w = 1/8``; level 1:
``V(theta_10)``, the validation tasks' MAML loss. One outer step: the 10 meta-steps, the weight
hypergradient, and the weight update ``w <- max(w - 1e-3 dV/dw, 0)``.

Betty, as its documentation writes a problem: an ``ImplicitProblem`` per level with ``training_step``,
``Engine`` with ``u2l``/``l2u`` dependencies, ``Config(type=..., unroll_steps=10)`` on the level below
the weights. Two ways:

* "Betty, 2 problems": ``Weights`` (w) over ``Meta`` (theta); level 3 is MAML written inside
  ``Meta.training_step`` (5 differentiable SGD steps from theta per task, ``create_graph=True``, a loop
  over tasks), so Betty's best-response Jacobian at the meta level sees the whole ``l_i(theta)``. Every
  Betty hypergradient applies here (``darts``, ``sama``, ``neumann``, ``cg``): they approximate the
  implicit derivative at ``theta_10`` with the inverse meta-Hessian replaced by ``I`` (darts, sama) or a
  truncated series/solve (neumann, cg).
* "Betty, 3 problems": level 3 as Betty problems of its own (one for the training tasks, one for the
  validation tasks, all tasks' ``phi`` stacked in one module; iMAML's proximal inner loss, Betty's own
  MAML example's way: 5 SGD steps at 0.01 on support loss + 0.5 ||phi - theta||^2 from theta), so the
  weights' gradient path is ``Weights <- Val <- Meta <- Weights``: Betty's "higher-order MLO". Only the
  meta level's hypergradient type matters for w; ``cg`` and ``neumann`` assert there.

References (bilevel): ``UnrolledMeta()`` from theta_0, exact for the 10-step map (the primary
reference); ``ImplicitMeta(CG(tol=1e-12))`` from theta_0, the exact implicit formula at theta_10 (what
Betty's methods approximate; theta_10 is not stationary, so it differs from the unrolled one); and the
lookaheads (NestedMAML's and DARTS's) at theta_10. Error ``||g - g_ref|| / ||g_ref||``, cosine, and the
norm ratio ``||g|| / ||g_ref||`` (darts and sama take the inverse meta-Hessian as ``I``, the lookahead as
``lr I``: their scale differs from the exact one, which a weight step size absorbs, not their direction).

Times: one outer step of each implementation, the implementations alternated round-robin over
``--repeats`` rounds after one warm-up round, medians, and the ratio to bilevel's ``UnrolledMeta``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import logging
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bilevel import CG, Unrolled, run_inner  # noqa: E402
from bilevel.fewshot.run_folder import json_text  # noqa: E402
from bilevel.multilevel import (FiniteDifferenceLookahead, ImplicitMeta, Lookahead, UnrolledMeta,  # noqa: E402
                                weight_hypergrad)
from multilevel_error import sinusoid  # noqa: E402

import betty  # noqa: E402
from betty.configs import Config, EngineConfig  # noqa: E402
from betty.engine import Engine  # noqa: E402
from betty.logging.logger_base import get_logger  # noqa: E402
from betty.problems import ImplicitProblem  # noqa: E402

DT = torch.float64
META_LR, STEPS, INNER_LR, INNER_STEPS, W_LR = 0.03, 10, 0.01, 5, 1e-3


class Params(nn.Module):
    """A dict of tensors as one module (Betty holds a level's parameters in a module)."""

    def __init__(self, tensors):
        super().__init__()
        self.p = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in tensors.items()})

    def forward(self):
        return dict(self.p.items())

    def load(self, tensors):
        with torch.no_grad():
            for k, v in tensors.items():
                self.p[k].copy_(v)


def maml_loss(task_loss, theta, support, query):
    """``l(theta)``: 5 differentiable SGD steps on the support loss from theta, then the query loss."""
    phi = theta
    for _ in range(INNER_STEPS):
        g = torch.autograd.grad(task_loss(phi, support), list(phi.values()), create_graph=True)
        phi = {k: v - INNER_LR * gk for (k, v), gk in zip(phi.items(), g)}
    return task_loss(phi, query)


class Captured:
    """Betty leaves the hypergradient in ``.grad`` of the weights before its optimizer step."""

    def grad_callback(self):
        self.captured = torch.cat([p.grad.detach().reshape(-1).clone() if p.grad is not None
                                   else torch.zeros_like(p).reshape(-1) for p in self.trainable_parameters()])

    def param_callback(self):  # NestedMAML's clip at zero
        for p in self.trainable_parameters():
            p.data.clamp_(min=0)


def engine_runner(engine, top, wmod, tmod, w0, theta0):
    """One outer step of a Betty graph from the same start each call: the weight gradient that
    ``top`` captured and the meta-parameters after the meta-steps."""
    def run():
        wmod.load({"w": w0})
        tmod.load(theta0)
        engine.run()
        return top.captured, {k: v.detach().clone() for k, v in tmod().items()}

    return run


def betty_two(case, kind, **cfg):
    """Weights -> Meta, level 3 inside Meta's loss. Returns (engine, run) with run() one outer step."""
    level, w0, theta0 = case["level"](Unrolled()), case["w"], case["theta0"]
    task_loss = lambda p, b: level.problem.outer_loss(p, None, b)
    (tr_s, tr_q), (va_s, va_q) = level.train, level.validation
    ref = {k: v.clone() for k, v in theta0.items()}

    class Weights(Captured, ImplicitProblem):
        def training_step(self, batch):  # V(theta): the validation tasks' MAML loss at Meta's theta
            theta = self.meta.module()
            return sum(maml_loss(task_loss, theta, va_s[j], va_q[j]) for j in range(va_s.shape[0])) / va_s.shape[0]

    class Meta(ImplicitProblem):
        def training_step(self, batch):  # F(theta, w) = sum_i w_i l_i(theta) + R(theta)
            theta, w = self.module(), self.weights.module()["w"]
            f = sum(w[i] * maml_loss(task_loss, theta, tr_s[i], tr_q[i]) for i in range(tr_s.shape[0]))
            return f + 0.5 * sum(((theta[k] - ref[k]) ** 2).sum() for k in theta)

    wmod, tmod = Params({"w": w0}), Params(theta0)
    top = Weights(name="weights", module=wmod, optimizer=torch.optim.SGD(wmod.parameters(), lr=W_LR),
                  train_data_loader=[(torch.zeros(1),)], config=Config(first_order=True, retain_graph=True))
    meta = Meta(name="meta", module=tmod, optimizer=torch.optim.SGD(tmod.parameters(), lr=META_LR),
                train_data_loader=[(torch.zeros(1),)], config=Config(type=kind, unroll_steps=STEPS, **cfg))
    engine = Engine(config=EngineConfig(train_iters=STEPS, valid_step=10**9, strategy="cpu"), problems=[top, meta],
                    dependencies={"u2l": {top: [meta]}, "l2u": {meta: [top]}})

    return engine_runner(engine, top, wmod, tmod, w0, theta0)


def betty_three(case, kind, lam=1.0, **cfg):
    """Weights -> Meta -> {Train, Val} (iMAML-style level 3 as Betty problems)."""
    level, w0, theta0 = case["level"](Unrolled()), case["w"], case["theta0"]
    task_loss = lambda p, b: level.problem.outer_loss(p, None, b)
    (tr_s, tr_q), (va_s, va_q) = level.train, level.validation
    ref = {k: v.clone() for k, v in theta0.items()}
    batched = torch.vmap(task_loss)

    def stacked(n):
        return Params({k: v.expand(n, *v.shape).contiguous() for k, v in theta0.items()})

    class Task(ImplicitProblem):
        support = None

        def training_step(self, batch):  # sum over tasks: support loss + (lam/2)||phi_i - theta||^2
            phi, theta = self.module(), self.meta.module()
            prox = sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)
            return batched(phi, self.support).sum() + 0.5 * lam * prox

        def on_inner_loop_start(self):
            self.module.load({k: v.detach().expand_as(self.module()[k]) for k, v in self.meta.module().items()})

    class Train(Task):
        support = tr_s

    class Val(Task):
        support = va_s

    class Weights(Captured, ImplicitProblem):
        def training_step(self, batch):
            return batched(self.val_tasks.module(), va_q).mean()

    class Meta(ImplicitProblem):
        def training_step(self, batch):
            theta, w = self.module(), self.weights.module()["w"]
            f = (w * batched(self.train_tasks.module(), tr_q)).sum()
            return f + 0.5 * sum(((theta[k] - ref[k]) ** 2).sum() for k in theta)

    wmod, tmod, trmod, vamod = Params({"w": w0}), Params(theta0), stacked(tr_s.shape[0]), stacked(va_s.shape[0])
    loader = [(torch.zeros(1),)]
    sgd = lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr)
    top = Weights(name="weights", module=wmod, optimizer=sgd(wmod, W_LR), train_data_loader=loader,
                  config=Config(first_order=True, retain_graph=True))
    meta = Meta(name="meta", module=tmod, optimizer=sgd(tmod, META_LR), train_data_loader=loader,
                config=Config(type=kind, unroll_steps=STEPS, first_order=True, retain_graph=True, **cfg))
    low = Config(type="darts", unroll_steps=INNER_STEPS)
    train = Train(name="train_tasks", module=trmod, optimizer=sgd(trmod, INNER_LR), train_data_loader=loader, config=low)
    val = Val(name="val_tasks", module=vamod, optimizer=sgd(vamod, INNER_LR), train_data_loader=loader, config=low)
    engine = Engine(config=EngineConfig(train_iters=STEPS * INNER_STEPS, valid_step=10**9, strategy="cpu"),
                    problems=[top, meta, train, val],
                    dependencies={"u2l": {top: [val], meta: [train]}, "l2u": {train: [meta], val: [meta], meta: [top]}})

    return engine_runner(engine, top, wmod, tmod, w0, theta0)


def betty_cg_on_spd(iterations, n=20):
    """Betty's own ``hypergradient.cg`` on ``l(x, y) = x^T A x / 2 - x^T y`` (A SPD, eigenvalues 1..10):
    its result is ``A^-1 v`` approximated by ``iterations`` CG steps; the relative error to the solve."""
    from types import SimpleNamespace

    from betty.hypergradient.cg import cg
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))[0]
    A = q @ torch.diag(torch.linspace(1, 10, n, dtype=DT)) @ q.T
    v = torch.randn(n, generator=g, dtype=DT)
    x, y = torch.zeros(n, dtype=DT, requires_grad=True), torch.zeros(n, dtype=DT, requires_grad=True)
    params = lambda t: (lambda: [t])
    curr = SimpleNamespace(paths=[], cur_batch=None, config=SimpleNamespace(cg_iterations=iterations, cg_alpha=1.0),
                           training_step_exec=lambda b: 0.5 * x @ A @ x - x @ y, trainable_parameters=params(x),
                           parameters=params(x))
    (out,) = cg([v], curr, SimpleNamespace(trainable_parameters=params(y)), sync=False)
    exact = torch.linalg.solve(A, v)
    return float((out - exact).norm() / exact.norm())


def compare(g, ref):
    g, ref = g.reshape(-1), ref.reshape(-1)
    return dict(rel_error=float((g - ref).norm() / ref.norm()),
                cosine=float(g @ ref / (g.norm() * ref.norm())) if g.norm() > 0 else float("nan"),
                norm_ratio=float(g.norm() / ref.norm()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/results/betty")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    get_logger().setLevel(logging.WARNING)  # Betty's own logger (created on first use at INFO)
    lines = ["OMP_NUM_THREADS=1 python benchmarks/betty_multilevel.py --out " + args.out
             + ("" if args.repeats == 5 else f" --repeats {args.repeats}")]
    log = lambda s: (print(s, flush=True), lines.append(s))
    log(f"torch {torch.__version__}, betty-ml {importlib.metadata.version('betty-ml')}, "
        f"Python {platform.python_version()}, {platform.processor() or platform.machine()}, float64, 1 thread")
    t_start = time.perf_counter()
    warnings.simplefilter("ignore")  # ImplicitMeta at a non-stationary theta_10 warns by design (see the docstring)

    case = sinusoid(meta_lr=META_LR, steps=STEPS)
    lvl, w, theta0 = case["level"](Unrolled()), case["w"], case["theta0"]
    beta_step = lambda g: (w - W_LR * g).clamp(min=0)

    def meta_steps():
        return run_inner(lvl.meta_solver, lvl.objective(w), theta0, detach=True)[0]

    def ours(method, trained, level=lvl):
        def run():
            start = meta_steps() if trained else theta0
            out = weight_hypergrad(level, w, start, method=method)
            beta_step(out.grad)
            return out.grad, (start if trained else out.theta)
        return run

    impls = {  # name -> (family, setting, one outer step returning (dV/dw, theta_10))
        "bilevel UnrolledMeta": ("bilevel", "all 10 meta-steps (exact)", ours(UnrolledMeta(), False)),
        "bilevel UnrolledMeta, task loop": ("bilevel", "the same, vectorize=False (a loop, as Betty's)", ours(
            UnrolledMeta(), False, dataclasses.replace(lvl, vectorize=False))),
        "bilevel ImplicitMeta": ("bilevel", "CG tol 1e-12 at theta_10", ours(
            ImplicitMeta(CG(tol=1e-12, maxiter=200), stationarity_rtol=None), False)),
        **{f"bilevel ImplicitMeta CG {m}": ("bilevel", f"CG, {m} iteration{'s' * (m > 1)} at theta_10", ours(
            ImplicitMeta(CG(maxiter=m, truncated=True), stationarity_rtol=None), False)) for m in (1, 3, 20)},
        "bilevel Lookahead": ("bilevel", "one step, lr 0.03 (NestedMAML)", ours(Lookahead(lr=META_LR), True)),
        "bilevel FiniteDifferenceLookahead": ("bilevel", "eps 0.01 (DARTS)", ours(FiniteDifferenceLookahead(lr=META_LR), True)),
    }
    two = [("darts", "darts_alpha 0.01", {}), ("sama", "sama_adam_alpha 1.0 (SGD: no preconditioning)", {}),
           ("neumann", "alpha 0.03, 9 iterations (10 terms)", dict(neumann_alpha=META_LR, neumann_iterations=9)),
           ("cg", "1 iteration", dict(cg_iterations=1)), ("cg", "3 iterations", dict(cg_iterations=3)),
           ("cg", "20 iterations", dict(cg_iterations=20))]
    failures = {}
    for kind, setting, cfg in two:
        name = f"Betty 2 problems {kind}" + (f" {cfg['cg_iterations']}" if kind == "cg" else "")
        try:
            impls[name] = ("Betty, 2 problems", f"{kind}: {setting}", betty_two(case, kind, **cfg))
        except Exception as e:  # noqa: BLE001 - recorded verbatim
            failures[name] = "".join(traceback.format_exception_only(type(e), e)).strip()
    three = [("darts", "meta level darts_alpha 0.01", {}), ("sama", "meta level sama_adam_alpha 1.0", {}),
             ("cg", "meta level cg", {}), ("neumann", "meta level neumann", {})]
    for kind, setting, cfg in three:
        name = f"Betty 3 problems {kind}"
        try:
            impls[name] = ("Betty, 3 problems", setting, betty_three(case, kind, **cfg))
        except Exception as e:  # noqa: BLE001
            failures[name] = "".join(traceback.format_exception_only(type(e), e)).strip()

    # Warm-up round: the values (every run from the same state gives the same numbers), and failures.
    grads, thetas = {}, {}
    for name in list(impls):
        try:
            grads[name], thetas[name] = impls[name][2]()
        except Exception as e:  # noqa: BLE001 - Betty's assertions, recorded verbatim
            failures[name] = "".join(traceback.format_exception_only(type(e), e)).strip()
            del impls[name]
    for name, msg in failures.items():
        log(f"FAILED {name}: {msg}")

    # Setup checks: Betty's meta-steps land where ours do; its meta gradient equals ours at theta_0.
    theta10 = thetas["bilevel UnrolledMeta"]
    checks = {}
    for name in impls:
        d = max(float((thetas[name][k] - theta10[k]).abs().max()) for k in theta10)
        checks[name] = d
    log("max |theta_10 - theta_10(bilevel)| per implementation: "
        + ", ".join(f"{n}: {d:.1e}" for n, d in checks.items()))

    refs = {"unrolled": grads["bilevel UnrolledMeta"], "implicit": grads["bilevel ImplicitMeta"]}
    rows = []
    # Timing: round-robin, one outer step each per round.
    times = {name: [] for name in impls}
    for _ in range(args.repeats):
        for name in impls:
            t = time.perf_counter()
            impls[name][2]()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["bilevel UnrolledMeta"])
    log(f"{'implementation':36s} {'setting':46s} {'err(unrolled)':>13s} {'cos':>8s} {'|g|/|ref|':>9s} "
        f"{'err(implicit)':>13s} {'cos':>8s} {'ms/step':>8s} {'ratio':>6s}")
    for name, (family, setting, _) in impls.items():
        cu, ci = compare(grads[name], refs["unrolled"]), compare(grads[name], refs["implicit"])
        med = statistics.median(times[name])
        row = dict(implementation=name, family=family, setting=setting, vs_unrolled=cu, vs_implicit=ci,
                   grad=grads[name].tolist(), seconds_median=med, seconds=times[name], ratio_to_unrolled=med / base,
                   theta10_max_abs_diff=checks[name])
        rows.append(row)
        log(f"{name:36s} {setting:46s} {cu['rel_error']:13.2e} {cu['cosine']:+8.4f} {cu['norm_ratio']:9.3g} "
            f"{ci['rel_error']:13.2e} {ci['cosine']:+8.4f} {1e3 * med:8.1f} {med / base:6.2f}")
    pairs = {}  # Betty's CG against ours with the same number of iterations (the same linear system)
    for m in (1, 3, 20):
        b, o = f"Betty 2 problems cg {m}", f"bilevel ImplicitMeta CG {m}"
        if b in grads and o in grads:
            pairs[f"cg {m}"] = dict(compare(grads[b], grads[o]),
                                    time_ratio=statistics.median(times[b]) / statistics.median(times[o]))
            log(f"Betty cg {m} iteration(s) against bilevel CG {m}: rel. difference {pairs[f'cg {m}']['rel_error']:.2e}, "
                f"cosine {pairs[f'cg {m}']['cosine']:+.4f}, time ratio {pairs[f'cg {m}']['time_ratio']:.2f}")
    for b, o in (("Betty 2 problems darts", "bilevel FiniteDifferenceLookahead"), ("Betty 2 problems darts", "bilevel Lookahead")):
        if b in times and o in times:
            r = statistics.median(times[b]) / statistics.median(times[o])
            pairs[f"{b} / {o}"] = dict(time_ratio=r)
            log(f"time ratio {b} / {o}: {r:.2f}")
    spd = {k: betty_cg_on_spd(k) for k in (1, 3, 20, 50)}
    log("Betty's cg on an SPD quadratic (n 20, eigenvalues 1..10), rel. error to A^-1 v: "
        + ", ".join(f"{k} it. {e:.2e}" for k, e in spd.items()))
    total = time.perf_counter() - t_start
    log(f"total {total:.1f} s")
    (out / "results.json").write_text(json_text(dict(
        command=lines[0], torch=torch.__version__, betty="0.2.1", python=platform.python_version(), dtype="float64",
        problem="sinusoid() of benchmarks/multilevel_error.py: 8 training tasks (2 outliers), 4 validation tasks, "
                "MAML level 3 (5 steps at 0.01), 10 SGD meta-steps at 0.03 with (1/2)||theta - theta_0||^2, w = 1/8",
        outer_step="10 meta-steps from theta_0, the weight hypergradient, w <- max(w - 1e-3 g, 0)",
        time=f"one outer step, implementations alternated round-robin over {args.repeats} rounds after a warm-up "
             "round, median; 1 thread on a CPU shared with other work",
        failures=failures, cg_same_iterations=pairs, betty_cg_on_spd_quadratic=spd, rows=rows,
        total_seconds=total)))  # strict JSON: an undefined cosine is null
    (out / "results.log").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
