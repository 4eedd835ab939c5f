"""Three levels (bilevel.multilevel): each level-1 method's error against the exact hypergradient
of the task weights, and its time and peak memory per outer step.

    OMP_NUM_THREADS=1 python benchmarks/multilevel_error.py --out docs/results/multilevel

Two problems, float64 on the CPU:
  quadratic  the three-level quadratic of tests/test_multilevel.py (4 training, 3 validation tasks); the
             exact dV/dw is the closed form at the level-2 solution theta* (20 meta-steps at lr 0.7 reach it to ~1e-10).
  sinusoid   NestedMAML's network (1-40-40-1 ReLU), MAML at level 3 (5 steps, lr 0.01, 10 support and
             10 query points), 8 training tasks of which 2 are outliers (targets from another function
             family), 4 clean validation tasks, level 2: 10 gradient meta-steps (lr 0.03) on
             sum_i w_i l_i + (1/2)||theta - theta_0||^2; the exact dV/dw is backpropagation through those
             10 steps (the 10-step map's own derivative).
The approximations: truncated backpropagation (last k meta-steps), implicit at level 2 with a few CG
steps (at the meta-trained theta, whether stationary or not), NestedMAML's one-step lookahead and
DARTS's finite-difference lookahead, both at the meta-trained theta (where NestedMAML applies them: its
current meta-parameters). Error: ||approx - exact|| / ||exact||, and the cosine between them (a
lookahead's scale differs from the exact one by the meta-Hessian, which a weight step size absorbs).
Time: median of 3 calls of weight_hypergrad after one warm-up (1 call where the warm-up took over 0.2 s). Peak memory (sinusoid only; the quadratic's
tensors are a few KB): the largest live tensor memory during one call, from torch.profiler's CPU memory events (net per operator, so a peak inside
one operator is not seen). The unrolled and implicit rows include level 2's meta-steps; the lookahead
rows do not (NestedMAML interleaves: its meta-step is the ordinary one, outside the weight update).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bilevel import CG, BilevelProblem, FirstOrder, GradientDescent, Implicit, Unrolled, maml_problem, run_inner  # noqa: E402
from bilevel.multilevel import (FiniteDifferenceLookahead, ImplicitMeta, Lookahead, TaskWeightedMetaTraining,  # noqa: E402
                                UnrolledMeta, weight_hypergrad)

DT = torch.float64


def timed(fn):
    t = time.perf_counter()
    fn()  # a warm-up
    times = []
    for _ in range(3 if time.perf_counter() - t < 0.2 else 1):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, sorted(times)[len(times) // 2]


def peak_mb(fn) -> float:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = list(itertools.accumulate(e.self_cpu_memory_usage for e in events))
    return max([0] + live) / 2**20


def compare(approx, exact):
    err = float((approx - exact).norm() / exact.norm())
    cos = float(approx @ exact / (approx.norm() * exact.norm()))
    return err, cos


# --- The quadratic (as tests/test_multilevel.py).

def quadratic():
    n_phi, n_theta, mu = 4, 3, 1.0

    def tasks(n, seed):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=DT)
        q = torch.linalg.qr(r(n, n_phi, n_phi))[0]
        P = q @ torch.diag_embed(2.0 + 0.6 * torch.rand(n, n_phi, generator=g, dtype=DT)) @ q.transpose(1, 2)
        return {"P": P, "B": 0.6 * r(n, n_phi, n_theta), "c": r(n, n_phi)}, {"C": 0.35 * r(n, 2, n_phi), "d": r(n, 2)}

    train, val = tasks(4, 0), tasks(3, 1)
    problem = BilevelProblem(
        inner_loss=lambda phi, th, b: 0.5 * phi["p"] @ b["P"] @ phi["p"] - phi["p"] @ (b["B"] @ th["t"] + b["c"]),
        outer_loss=lambda phi, th, b: 0.5 * ((b["C"] @ phi["p"] - b["d"]) ** 2).sum(),
        inner_solver=GradientDescent(lr=0.42, steps=24), inner_init={"p": torch.zeros(n_phi, dtype=DT)})
    w = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=DT)
    theta0 = {"t": torch.tensor([0.5, -0.3, 0.2], dtype=DT)}

    def jr(t):
        inner, outer = t
        Pinv = torch.linalg.inv(inner["P"])
        return outer["C"] @ Pinv @ inner["B"], outer["d"] - (outer["C"] @ (Pinv @ inner["c"].unsqueeze(-1))).squeeze(-1)

    (J, r), (Jv, rv) = jr(train), jr(val)
    H = torch.einsum("i,iab,iac->bc", w, J, J) + mu * torch.eye(n_theta, dtype=DT)
    theta = torch.linalg.solve(H, torch.einsum("i,iab,ia->b", w, J, r))
    g = torch.einsum("iab,ia->ib", J, torch.einsum("iab,b->ia", J, theta) - r)
    gv = torch.einsum("iab,ia->ib", Jv, torch.einsum("iab,b->ia", Jv, theta) - rv).mean(0)
    exact = -(g @ torch.linalg.solve(H, gv))

    def level(backend):
        return TaskWeightedMetaTraining(problem, backend, train, val, GradientDescent(lr=0.7, steps=20),
                                        regularizer=lambda th: 0.5 * mu * (th["t"] ** 2).sum(), on_failure="ignore")

    return dict(level=level, w=w, theta0=theta0, exact=exact, backends={"Unrolled": Unrolled(),
                "Implicit(CG)": Implicit(CG(tol=1e-12))}, meta_lr=0.7, steps=20,
                profile_memory=False)  # a few KB of tensors, and the profiler's overhead is minutes here


# --- The sinusoid few-task problem.

def sinusoid(meta_lr=0.03, steps=10):
    g = torch.Generator().manual_seed(0)
    layers = [(1, 40), (40, 40), (40, 1)]
    theta0 = {}
    for i, (a, b) in enumerate(layers):
        theta0[f"w{i}"] = torch.randn(a, b, generator=g, dtype=DT) * math.sqrt(2 / a)
        theta0[f"b{i}"] = torch.zeros(b, dtype=DT)

    def net(p, x):
        h = x / 5  # inputs in [-1, 1]: a meta-Hessian that gradient descent at lr ~0.01 can step on
        for i in range(len(layers)):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)

    def loss(p, batch):
        return ((net(p, batch[..., :1]) - batch[..., 1]) ** 2).mean()

    def tasks(n, outliers, shots=10):
        amp = 0.1 + 4.9 * torch.rand(n, 1, generator=g, dtype=DT)  # the official ranges: amplitude [0.1, 5],
        phase = math.pi * torch.rand(n, 1, generator=g, dtype=DT)  # phase [0, pi], x in [-5, 5]
        x = 10 * torch.rand(n, 2 * shots, generator=g, dtype=DT) - 5
        y = amp * torch.sin(x + phase)
        y[:outliers] = amp[:outliers] * torch.tanh(x[:outliers]) - 2 * phase[:outliers]  # another function family
        data = torch.stack([x, y], -1)
        return data[:, :shots], data[:, shots:]

    train, val = tasks(8, outliers=2), tasks(4, outliers=0)
    problem = maml_problem(loss, GradientDescent(lr=0.01, steps=5))
    ref = {k: v.clone() for k, v in theta0.items()}
    reg = lambda th: 0.5 * sum(((th[k] - ref[k]) ** 2).sum() for k in th)

    def level(backend):
        return TaskWeightedMetaTraining(problem, backend, train, val, GradientDescent(lr=meta_lr, steps=steps),
                                        regularizer=reg, on_failure="ignore")

    w = torch.full((8,), 1 / 8, dtype=DT)
    exact = weight_hypergrad(level(Unrolled()), w, theta0, method=UnrolledMeta()).grad
    return dict(level=level, w=w, theta0=theta0, exact=exact, backends={"Unrolled": Unrolled()},
                lookahead_backends={"Unrolled": Unrolled(), "FirstOrder": FirstOrder()}, meta_lr=meta_lr, steps=steps,
                profile_memory=True)


def methods(case):
    k = case["steps"]
    out = [("unrolled", f"all {k} meta-steps", UnrolledMeta(), "start")]  # the sinusoid's reference
    out += [("truncated unrolled", f"last {b} of {k}", UnrolledMeta(backprop_steps=b), "start") for b in (1, 3)]
    out += [("implicit", "CG, converged", ImplicitMeta(CG(tol=1e-12, maxiter=100), stationarity_rtol=None), "start")]
    out += [("implicit", f"CG, {m} steps", ImplicitMeta(CG(maxiter=m, truncated=True), stationarity_rtol=None), "start")
            for m in (1, 3)]
    out += [("lookahead", "one step (NestedMAML)", Lookahead(lr=case["meta_lr"]), "trained"),
            ("DARTS finite difference", "eps 0.01", FiniteDifferenceLookahead(lr=case["meta_lr"]), "trained")]
    return out


def run_case(name, case, log):
    rows = []
    w, theta0, exact = case["w"], case["theta0"], case["exact"]
    trained = {}
    for label, backend in {**case["backends"], **case.get("lookahead_backends", {})}.items():
        lvl = case["level"](backend)
        for method, setting, m, where in methods(case):
            if label not in case["backends"] and where != "trained":
                continue  # first-order level 3: only the lookaheads, which need no second order
            if where == "trained":
                if label not in trained:  # the meta-trained theta, where NestedMAML takes its lookahead
                    trained[label] = run_inner(lvl.meta_solver, lvl.objective(w), theta0, detach=True)[0]
                start = trained[label]
            else:
                start = theta0
            fn = lambda: weight_hypergrad(lvl, w, start, method=m)
            out, seconds = timed(fn)
            err, cos = compare(out.grad, exact)
            row = dict(problem=name, level3=label, method=method, setting=setting, rel_error=err, cosine=cos,
                       seconds=seconds, peak_mb=peak_mb(fn) if case["profile_memory"] else None)
            rows.append(row)
            log(f"{name:9s} {label:12s} {method:24s} {setting:22s} err {err:9.2e} cos {cos:+.4f} "
                f"{1e3 * seconds:8.1f} ms " + ("   - MB" if row["peak_mb"] is None else f"{row['peak_mb']:7.2f} MB"))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/results/multilevel")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    lines = ["OMP_NUM_THREADS=1 python benchmarks/multilevel_error.py --out " + args.out]
    log = lambda s: (print(s, flush=True), lines.append(s))
    log(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, float64, 1 thread")
    t0 = time.perf_counter()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncated rows are approximations by design
        for name, build in (("quadratic", quadratic), ("sinusoid", sinusoid)):
            rows += run_case(name, build(), log)
    log(f"total {time.perf_counter() - t0:.1f} s")
    (out / "results.json").write_text(json.dumps({"command": lines[0], "torch": torch.__version__,
                                                  "memory": "peak live tensor memory in one call, torch.profiler "
                                                            "CPU memory events (net per operator)",
                                                  "time": "median of 3 calls after a warm-up (1 call where the warm-up took over 0.2 s), 1 thread",
                                                  "rows": rows}, indent=1) + "\n")
    (out / "results.log").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
