"""Users' own problems, reproduced with the public API: is the library right, loud, or silently wrong?

Each case computes something a user would compute with ``bilevel`` and compares it with an
independent reference (central finite differences, a closed form, or a hand-written
``torch.func`` program), in float64 unless the case is about precision. Its verdict:

* ``right``: agrees with the reference within the stated tolerance, no warning;
* ``loud``: a ``UserWarning`` subclass from bilevel, or an exception whose message names the
  problem (type and message recorded);
* ``SILENT-WRONG``: no warning or exception, and off by more than the tolerance;
* ``unhelpful``: a raw torch error, or a message whose hint is misleading.

Run::

    OMP_NUM_THREADS=1 python benchmarks/user_problems.py --out docs/results/user-problems

``--out DIR`` writes ``results.json`` (per case: id, description, values, reference, error,
tolerance, verdict, messages, deviation) and ``results.log`` (the command on its first line);
stdout gets a table. Needs scikit-learn (digits, breast cancer) and torchopt (case 4).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian

import bilevel
from bilevel import (CG, GMRES, MINRES, Anderson, BilevelProblem, FixedPointImplicit, FixedPointIteration,
                     FixedPointProblem, GradientDescent, Implicit, Neumann, NewtonCG, TorchoptImplicit, Unrolled,
                     batched_hypergrad, hypergrad, map_tasks, maml_problem, model_loss, module_params)
from bilevel.hvp import resolve_hvp_mode
from bilevel.solvers.inner import detached_gradient, run_inner

D = torch.float64
CASES: list = []
LIBRARY_WORDS = ("hypergrad", "BilevelProblem", "Implicit", "TorchoptImplicit", "inner_init", "make_hvp", "hvp(",
                 "model_loss", "FixedPoint", "theta[", "inner_solution", "inner_loss", "Unrolled", "CG", "vmap")


def case(cid: str, description: str):
    def register(fn):
        CASES.append((cid, description, fn))
        return fn
    return register


def tolist(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64) if x.is_floating_point() else x.detach()
        return x.tolist()
    if isinstance(x, dict):
        return {k: tolist(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [tolist(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def flat(g) -> torch.Tensor:
    if isinstance(g, dict):
        return torch.cat([v.detach().to(D).reshape(-1) for v in g.values()])
    return torch.as_tensor(g, dtype=D).reshape(-1)


def rel_err(value, reference) -> float:
    v, r = flat(value), flat(reference)
    return float((v - r).norm() / r.norm().clamp_min(1e-300))


def diag_summary(result) -> dict:
    d = result.diagnostics
    out = {}
    if d.linear_solve is not None:
        s = d.linear_solve
        out["linear_solve"] = {k: tolist(getattr(s, k)) for k in s._fields if k != "solution"}
    if d.forward_solve is not None:
        f = d.forward_solve
        out["forward_solve"] = {k: tolist(getattr(f, k)) for k in f._fields if k != "solution"}
    if d.stationarity is not None:
        st = d.stationarity
        out["stationarity"] = {k: tolist(getattr(st, k)) for k in st._fields}
    return out


def is_library_message(exc: BaseException) -> bool:
    if type(exc).__module__.split(".")[0] in ("bilevel", "adapters"):
        return True
    msg = str(exc)
    return any(w in msg.split("\n")[0][:200] for w in LIBRARY_WORDS)


def judge(out: dict, caught, exc) -> str:
    """The verdict from the case's output, the recorded warnings and any exception."""
    if "verdict" in out:
        return out["verdict"]
    lib_warn = [w for w in caught if issubclass(w.category, UserWarning)
                and (issubclass(w.category, bilevel.SolverWarning) or "bilevel" in str(w.filename)
                     or "bilevel" in w.category.__module__)]
    if exc is not None:
        return "loud" if is_library_message(exc) else "unhelpful"
    if lib_warn:
        return "loud"
    err, tol = out.get("error"), out.get("tolerance")
    if err is None or tol is None:
        return "n/a"
    return "right" if err <= tol else "SILENT-WRONG"


# --------------------------------------------------------------------------- helpers shared by cases


def ridge_data(seed=0, n=30, d=5, nv=40):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=D)
    Xv = torch.randn(nv, d, generator=g, dtype=D)
    w = torch.randn(d, generator=g, dtype=D)
    y = X @ w + 0.1 * torch.randn(n, generator=g, dtype=D)
    yv = Xv @ w + 0.1 * torch.randn(nv, generator=g, dtype=D)
    return X, y, Xv, yv


def ridge_problem(lam: float, d: int, steps=400, lr=None, X=None):
    """Inner ``0.5||Xw - y||^2 + lam/2 ||w - theta||^2``, outer ``0.5||Xv w - yv||^2``."""
    if lr is None:
        L = float(torch.linalg.eigvalsh(X.T @ X)[-1]) + lam
        lr = 1.0 / L
    return BilevelProblem(
        inner_loss=lambda phi, theta, b: 0.5 * ((b[0] @ phi["w"] - b[1]) ** 2).sum()
                                         + 0.5 * lam * ((phi["w"] - theta["c"]) ** 2).sum(),
        outer_loss=lambda phi, theta, b: 0.5 * ((b[0] @ phi["w"] - b[1]) ** 2).sum(),
        inner_solver=GradientDescent(lr=lr, steps=steps),
        inner_init={"w": torch.zeros(d, dtype=X.dtype)})


def ridge_exact(lam, theta_c, X, y, Xv, yv):
    """``w*`` and ``dL_out/dtheta = lam A^-1 Xv^T (Xv w* - yv)``, ``A = X^T X + lam I``."""
    A = X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype)
    w = torch.linalg.solve(A, X.T @ y + lam * theta_c)
    return w, lam * torch.linalg.solve(A, Xv.T @ (Xv @ w - yv))


def central_fd(f, theta: dict, h: float) -> dict:
    out = {}
    for k, v in theta.items():
        g = torch.zeros_like(v)
        for i in range(v.numel()):
            e = torch.zeros_like(v).reshape(-1)
            e[i] = h
            e = e.reshape(v.shape)
            plus = dict(theta, **{k: v + e})
            minus = dict(theta, **{k: v - e})
            g.reshape(-1)[i] = (f(plus) - f(minus)) / (2 * h)
        out[k] = g
    return out


# --------------------------------------------------------------------------- 1a: weight decay of a tanh MLP on digits

_DIGITS = {}


def digits_setup():
    if _DIGITS:
        return _DIGITS
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=D)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:300], perm[300:600]
    g = torch.Generator().manual_seed(1)
    init = {"W1": torch.randn(12, 64, generator=g, dtype=D) * 0.3, "b1": torch.zeros(12, dtype=D),
            "W2": torch.randn(10, 12, generator=g, dtype=D) * 0.3, "b2": torch.zeros(10, dtype=D)}

    def net(phi, x):
        return torch.tanh(x @ phi["W1"].T + phi["b1"]) @ phi["W2"].T + phi["b2"]

    def inner(phi, theta, b):
        wd = theta["log_wd"].exp()
        return (F.cross_entropy(net(phi, b[0]), b[1]) + 0.5 * wd[0] * (phi["W1"] ** 2).sum()
                + 0.5 * wd[1] * (phi["W2"] ** 2).sum())

    def outer(phi, theta, b):
        return F.cross_entropy(net(phi, b[0]), b[1])

    steps = 3000
    problem = BilevelProblem(inner_loss=inner, outer_loss=outer, inner_solver=GradientDescent(lr=2.0, steps=steps),
                             inner_init=init)
    theta = {"log_wd": torch.tensor([math.log(1e-3), math.log(1e-3)], dtype=D)}
    train, val = (X[tr], y[tr]), (X[va], y[va])

    def solve(th):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return problem.solve_inner(th, train, detach=True)

    def outer_of(th):
        return float(outer(solve(th), th, val))

    t0 = time.perf_counter()
    phi = solve(theta)
    solve_s = time.perf_counter() - t0
    p = {k: v.clone().requires_grad_(True) for k, v in phi.items()}
    gnorm = float(torch.cat([g.reshape(-1) for g in torch.autograd.grad(inner(p, theta, train), list(p.values()))]).norm())
    p0 = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    g0 = float(torch.cat([g.reshape(-1) for g in torch.autograd.grad(inner(p0, theta, train), list(p0.values()))]).norm())
    fd = central_fd(outer_of, theta, 1e-4)
    # The Hessian's smallest eigenvalues at phi (910 unknowns: a dense Hessian is cheap here).
    names = list(phi)
    shapes = [phi[k].shape for k in names]
    sizes = [phi[k].numel() for k in names]

    def flat_inner(v):
        parts = dict(zip(names, [t.reshape(s) for t, s in zip(torch.split(v, sizes), shapes)]))
        return inner(parts, theta, train)
    H = hessian(flat_inner)(torch.cat([phi[k].reshape(-1) for k in names]))
    eig = torch.linalg.eigvalsh(H)
    _DIGITS.update(problem=problem, theta=theta, train=train, val=val, phi=phi, fd=fd, gnorm=gnorm, g0=g0,
                   steps=steps, solve_s=solve_s, eig_min=eig[:3].tolist(), eig_max=float(eig[-1]))
    return _DIGITS


def digits_case(backend, given_solution: bool):
    s = digits_setup()
    kw = {"inner_solution": s["phi"]} if given_solution else {}
    r = hypergrad(s["problem"], s["theta"], s["train"], s["val"], backend=backend, **kw)
    err = rel_err(r.grad, s["fd"])
    return {"values": tolist(r.grad["log_wd"]), "reference": tolist(s["fd"]["log_wd"]), "error": err,
            "tolerance": 0.02, "diagnostics": diag_summary(r),
            "notes": {"inner": f"GradientDescent(lr=2.0, steps={s['steps']}) on 300 digits, MLP 64-12-10 tanh, "
                               f"outer: cross-entropy on 300 others; theta = log weight decay of W1, W2 = log 1e-3",
                      "reached_grad_norm": s["gnorm"], "grad_norm_at_init": s["g0"],
                      "hessian_smallest_eigenvalues": s["eig_min"], "hessian_largest": s["eig_max"],
                      "solve_seconds": s["solve_s"],
                      "reference": "central FD (h=1e-4) of theta -> L_out(GD solve(theta)); relative error, "
                                   "tolerance 2% because phi is stationary only to the reached grad norm"},
            "deviation": "the issue's data split, network and weight decays are not known; this MLP (64-12-10, "
                         "300 train / 300 validation digits, weight decay 1e-3 on W1 and W2, GD lr 2.0, 3000 "
                         "steps) reaches a grad norm like the issue's (6e-4), but its Hessian there is indefinite "
                         "(smallest eigenvalues recorded): GD has not reached a minimum, so no implicit answer "
                         "matches the FD of the GD solve, unlike the issue where CG 'continue' agreed to 1%. "
                         "The default Implicit solves for itself; the other implicit variants get "
                         "inner_solution= (the same detached solve) to save time. Larger decays (1e-2, 3e-3) "
                         "tried by hand did not converge better in 3000 steps."}


@case("1a-cg-default", "digits MLP weight decay: Implicit(CG(maxiter=50)) (default negative_curvature='stop')")
def c1a_stop():
    return digits_case(Implicit(CG(maxiter=50)), False)


@case("1a-cg-continue", "digits MLP weight decay: Implicit(CG(maxiter=50, negative_curvature='continue'))")
def c1a_cont():
    return digits_case(Implicit(CG(maxiter=50, negative_curvature="continue")), True)


@case("1a-minres", "digits MLP weight decay: Implicit(MINRES(maxiter=200))")
def c1a_minres():
    return digits_case(Implicit(MINRES(maxiter=200)), True)


@case("1a-unrolled", "digits MLP weight decay: Unrolled() through 3000 GD steps")
def c1a_unrolled():
    out = digits_case(Unrolled(), False)
    out["tolerance"] = 1e-4  # the FD differentiates exactly the computation Unrolled differentiates
    return out


# --------------------------------------------------------------------------- 1b: a saddle point (fair logistic regression)

_FAIR = {}


def fair_setup():
    if _FAIR:
        return _FAIR
    from sklearn.datasets import load_breast_cancer
    data = load_breast_cancer()
    X = torch.tensor(data.data, dtype=D)
    y = torch.tensor(data.target, dtype=D)
    sensitive = (X[:, 1] > X[:, 1].median()).to(D)  # "mean texture" above its median
    X = (X - X.mean(0)) / X.std(0)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:300], perm[300:]
    eps = 0.1  # the unconstrained squared gap is 0.131, so the constraint is active (0 < mu < 1)

    def scores(phi, x):
        return x @ phi["w"] + phi["b"]

    def gap(phi, b):
        p = torch.sigmoid(scores(phi, b[0]))
        a = b[2]
        return ((p * a).sum() / a.sum() - (p * (1 - a)).sum() / (1 - a).sum()) ** 2

    def logistic(phi, b):
        return F.binary_cross_entropy_with_logits(scores(phi, b[0]), b[1])

    def lagrangian(phi, theta, b):
        return logistic(phi, b) + 0.5 * theta["log_l2"].exp() * (phi["w"] ** 2).sum() + phi["mu"] * (gap(phi, b) - eps)

    def outer(phi, theta, b):
        return logistic(phi, b)

    train = (X[tr], y[tr], sensitive[tr])
    val = (X[va], y[va], sensitive[va])
    init = {"w": torch.zeros(30, dtype=D), "b": torch.zeros((), dtype=D), "mu": torch.zeros((), dtype=D)}

    def solve(theta):
        """The saddle point: Newton on (w, b) for fixed mu, bisection on mu for gap = eps (KKT with mu > 0)."""
        def w_of(mu, start):
            v = start.clone()
            def f(v):
                return lagrangian({"w": v[:30], "b": v[30], "mu": mu}, theta, train)
            for _ in range(30):
                gr = grad(f)(v)
                if float(gr.norm()) < 1e-14:
                    break
                v = v - torch.linalg.solve(hessian(f)(v), gr)
            return v
        v = w_of(torch.tensor(0.0, dtype=D), torch.zeros(31, dtype=D))
        if float(gap({"w": v[:30], "b": v[30]}, train)) <= eps:
            return {"w": v[:30], "b": v[30], "mu": torch.tensor(0.0, dtype=D)}
        lo, hi = 0.0, 1.0
        while float(gap({"w": w_of(torch.tensor(hi, dtype=D), v)[:30], "b": v[30]}, train)) > eps:
            hi *= 2
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            v = w_of(torch.tensor(mid, dtype=D), v)
            if float(gap({"w": v[:30], "b": v[30]}, train)) > eps:
                lo = mid
            else:
                hi = mid
        mu = torch.tensor(0.5 * (lo + hi), dtype=D)
        v = w_of(mu, v)
        return {"w": v[:30], "b": v[30], "mu": mu}

    problem = BilevelProblem(inner_loss=lagrangian, outer_loss=outer, inner_solver=None, inner_init=init)
    theta = {"log_l2": torch.tensor(math.log(1e-2), dtype=D)}
    phi = solve(theta)
    # Check it is a saddle: stationary in (w, b), and gap = eps (mu > 0).
    sg = grad(lambda p: lagrangian(p, theta, train))(phi)
    stat = float(torch.cat([v.reshape(-1) for v in sg.values()]).norm())

    # Projected gradient descent-ascent from the saddle: is it a fixed point of the solver?
    p = {k: v.clone() for k, v in phi.items()}
    for _ in range(200):
        gg = grad(lambda q: lagrangian(q, theta, train))(p)
        p = {"w": p["w"] - 0.5 * gg["w"], "b": p["b"] - 0.5 * gg["b"], "mu": (p["mu"] + 0.5 * gg["mu"]).clamp_min(0)}
    gda_drift = float(torch.cat([(p[k] - phi[k]).reshape(-1) for k in phi]).norm())
    fd = central_fd(lambda th: float(outer(solve(th), th, val)), theta, 1e-4)
    _FAIR.update(problem=problem, theta=theta, train=train, val=val, phi=phi, fd=fd, stat=stat, gda_drift=gda_drift)
    return _FAIR


def fair_case(backend):
    s = fair_setup()
    r = hypergrad(s["problem"], s["theta"], s["train"], s["val"], backend=backend, inner_solution=s["phi"])
    err = float((flat(r.grad) - flat(s["fd"])).abs().max())
    return {"values": tolist(r.grad["log_l2"]), "reference": tolist(s["fd"]["log_l2"]), "error": err,
            "tolerance": 1e-6, "diagnostics": diag_summary(r),
            "notes": {"mu": float(s["phi"]["mu"]), "saddle_grad_norm": s["stat"],
                      "projected_GDA_drift_from_saddle_200_steps": s["gda_drift"],
                      "reference": "central FD (h=1e-4) of log_l2 -> validation logistic loss at the saddle; "
                                   "absolute error"},
            "deviation": "the saddle is computed by Newton on (w, b) inside bisection on mu (KKT, gap = eps), "
                         "to 1e-14, instead of projected gradient descent-ascent (too slow to reach FD accuracy); "
                         "it is a fixed point of projected GDA (drift recorded). Sensitive attribute: 'mean "
                         "texture' above its median; fairness gap = squared difference of mean predicted "
                         "probability between groups, eps = 0.1 (unconstrained: 0.131); theta = log L2 = log 1e-2."}


@case("1b-cg-default", "fair logistic regression saddle point, inner_solution=, Implicit() (default CG)")
def c1b_cg():
    return fair_case(Implicit())


@case("1b-minres", "fair logistic regression saddle point, inner_solution=, Implicit(MINRES())")
def c1b_minres():
    return fair_case(Implicit(MINRES()))


@case("1b-gmres", "fair logistic regression saddle point, inner_solution=, Implicit(GMRES())")
def c1b_gmres():
    return fair_case(Implicit(GMRES()))


# --------------------------------------------------------------------------- 1c: Neumann with alpha too large


def neumann_case(alpha_factor, steps, truncated):
    X, y, Xv, yv = ridge_data(3)
    lam = 1.0
    L = float(torch.linalg.eigvalsh(X.T @ X)[-1]) + lam
    problem = ridge_problem(lam, 5, steps=2000, X=X)
    theta = {"c": torch.zeros(5, dtype=D)}
    _, ref = ridge_exact(lam, theta["c"], X, y, Xv, yv)
    phi = problem.solve_inner(theta, (X, y), detach=True)
    r = hypergrad(problem, theta, (X, y), (Xv, yv), inner_solution=phi,
                  backend=Implicit(Neumann(alpha=alpha_factor / L, steps=steps, truncated=truncated)))
    notes = {"alpha": alpha_factor / L, "2/lambda_max": 2 / L, "steps": steps, "truncated": truncated,
             "reference": "closed-form ridge hypergradient; relative error"}
    with warnings.catch_warnings(record=True) as cw:
        warnings.simplefilter("always")
        # The same budget with a valid alpha (1/lambda_max): how much of the error is the budget's.
        ok = hypergrad(problem, theta, (X, y), (Xv, yv), inner_solution=phi,
                       backend=Implicit(Neumann(alpha=1.0 / L, steps=steps, truncated=truncated)))
        # The same alpha with 20 steps: is the divergence caught once it has grown?
        more = hypergrad(problem, theta, (X, y), (Xv, yv), inner_solution=phi,
                         backend=Implicit(Neumann(alpha=alpha_factor / L, steps=20, truncated=truncated)))
    notes.update(error_same_budget_alpha_1_over_lambda_max=rel_err(ok.grad, ref),
                 error_same_alpha_20_steps=rel_err(more.grad, ref),
                 diverged_flag_same_alpha_20_steps=tolist(more.diagnostics.linear_solve.diverged),
                 warnings_of_those_two=[str(w.message)[:160] for w in cw])
    return {"values": tolist(r.grad["c"]), "reference": tolist(ref), "error": rel_err(r.grad, ref),
            "tolerance": 1e-6, "diagnostics": diag_summary(r), "notes": notes}


@case("1c-neumann-alpha3", "ridge: Implicit(Neumann(alpha=3/lambda_max, steps=5))")
def c1c_a():
    return neumann_case(3.0, 5, False)


@case("1c-neumann-alpha2.1", "ridge: Implicit(Neumann(alpha=2.1/lambda_max, steps=3))")
def c1c_b():
    return neumann_case(2.1, 3, False)


@case("1c-neumann-alpha3-truncated", "ridge: Implicit(Neumann(alpha=3/lambda_max, steps=5, truncated=True))")
def c1c_c():
    return neumann_case(3.0, 5, True)


@case("1c-neumann-alpha2.1-truncated", "ridge: Implicit(Neumann(alpha=2.1/lambda_max, steps=3, truncated=True))")
def c1c_d():
    return neumann_case(2.1, 3, True)


# --------------------------------------------------------------------------- 2: a solve nested in a detached solve

_NEST = {}


def nested_setup():
    if _NEST:
        return _NEST
    g = torch.Generator().manual_seed(5)
    d, a, k = 4, 0.1, 3  # features, level-2 lr, level-2 steps
    Xs, Xq = torch.randn(10, d, generator=g, dtype=D), torch.randn(10, d, generator=g, dtype=D)
    wt = torch.randn(d, generator=g, dtype=D)
    ys, yq = Xs @ wt + torch.sin(Xs[:, 0]), Xq @ wt + torch.sin(Xq[:, 0])
    Xv = torch.randn(20, d, generator=g, dtype=D)
    yv = Xv @ wt

    def task_loss(p, b):
        return 0.5 * ((b[0] @ p["w"] - b[1]) ** 2).mean()

    level2 = maml_problem(task_loss, GradientDescent(lr=a, steps=k))

    def inner1(phi, theta, b):  # the MAML objective of phi (a meta-init) + log-weighted ridge
        adapted = level2.solve_inner(phi, b[0])
        return task_loss(adapted, b[1]) + 0.5 * theta["log_l2"].exp() * (phi["w"] ** 2).sum()

    def outer1(phi, theta, b):
        return task_loss(phi, b)

    p1 = BilevelProblem(inner_loss=inner1, outer_loss=outer1, inner_solver=GradientDescent(lr=0.3, steps=300),
                        inner_init={"w": torch.zeros(d, dtype=D)})
    theta = {"log_l2": torch.tensor(-1.0, dtype=D)}

    # Independent reference: MAML by hand with torch.func (second order through the k steps).
    def maml_by_hand(w, th, b, first_order=False):
        p = w
        for _ in range(k):
            gw = grad(lambda q: 0.5 * ((b[0][0] @ q - b[0][1]) ** 2).mean())(p)
            p = p - a * (gw.detach() if first_order else gw)
        return 0.5 * ((b[1][0] @ p - b[1][1]) ** 2).mean() + 0.5 * th.exp() * (w ** 2).sum()

    batch = ((Xs, ys), (Xq, yq))
    _NEST.update(p1=p1, theta=theta, batch=batch, val=(Xv, yv), maml_by_hand=maml_by_hand, d=d)
    return _NEST


@case("2-detached-step", "nested: one detached level-1 GD step whose inner loss runs a MAML solve_inner, "
                         "vs torch.func second-order reference step")
def c2_step():
    s = nested_setup()
    phi0 = {"w": torch.linspace(-1, 1, s["d"], dtype=D)}
    solver = GradientDescent(lr=0.3, steps=1)
    step, _ = run_inner(solver, s["p1"].objective(s["theta"], s["batch"], detached_gradient), phi0, detach=True)
    th = s["theta"]["log_l2"]
    true_g = grad(lambda w: s["maml_by_hand"](w, th, s["batch"]))(phi0["w"])
    fo_g = grad(lambda w: s["maml_by_hand"](w, th, s["batch"], first_order=True))(phi0["w"])
    ref = phi0["w"] - 0.3 * true_g
    fo = phi0["w"] - 0.3 * fo_g
    return {"values": tolist(step["w"]), "reference": tolist(ref), "error": float((step["w"] - ref).norm()),
            "tolerance": 1e-10,
            "notes": {"distance_to_first_order_step": float((step["w"] - fo).norm()),
                      "true_vs_first_order_step": float((ref - fo).norm()),
                      "reference": "phi0 - lr * torch.func.grad of a hand-written 3-step second-order MAML loss"}}


@case("2-nested-implicit", "nested: hypergrad(level-1 problem, Implicit(CG())) vs central FD through a "
                           "closed-form level-1 solve (the level-1 objective is quadratic)")
def c2_implicit():
    s = nested_setup()
    th = s["theta"]
    r = hypergrad(s["p1"], th, s["batch"], s["val"], backend=Implicit(CG()))

    def solve_exact(theta):
        f = lambda w: s["maml_by_hand"](w, theta["log_l2"], s["batch"])
        w0 = torch.zeros(s["d"], dtype=D)
        return w0 - torch.linalg.solve(hessian(f)(w0), grad(f)(w0))

    def outer_of(theta):
        w = solve_exact(theta)
        return float(0.5 * ((s["val"][0] @ w - s["val"][1]) ** 2).mean())
    fd = central_fd(outer_of, th, 1e-5)
    return {"values": tolist(r.grad["log_l2"]), "reference": tolist(fd["log_l2"]), "error": rel_err(r.grad, fd),
            "tolerance": 1e-6, "diagnostics": diag_summary(r),
            "notes": {"reference": "central FD (h=1e-5) of the validation loss at the exact (Newton) minimizer of "
                                   "the hand-written second-order MAML objective"}}


# --------------------------------------------------------------------------- 3: composition


def logistic_hpo(seed=7, n=40, d=4):
    g = torch.Generator().manual_seed(seed)
    X, Xv = torch.randn(n, d, generator=g, dtype=D), torch.randn(n, d, generator=g, dtype=D)
    wt = torch.randn(d, generator=g, dtype=D)
    y, yv = (X @ wt > 0).to(D), (Xv @ wt > 0).to(D)

    def inner(phi, theta, b):
        return (F.binary_cross_entropy_with_logits(b[0] @ phi["w"], b[1])
                + 0.5 * (theta["log_l2"].exp() * phi["w"] ** 2).sum())

    def outer(phi, theta, b):
        return F.binary_cross_entropy_with_logits(b[0] @ phi["w"], b[1])
    return inner, outer, (X, y), (Xv, yv), d


def create_graph_case(backend, solver, tol):
    inner, outer, train, val, d = logistic_hpo()
    problem = BilevelProblem(inner_loss=inner, outer_loss=outer, inner_solver=solver,
                             inner_init={"w": torch.zeros(d, dtype=D)})
    theta0 = torch.tensor([-1.0, -0.5, 0.0, 0.5], dtype=D)
    th = {"log_l2": theta0.clone().requires_grad_(True)}
    r = hypergrad(problem, th, train, val, backend=backend, create_graph=True)
    f = (r.grad["log_l2"] ** 2).sum() + r.grad["log_l2"][0] * th["log_l2"][1]
    (df,) = torch.autograd.grad(f, th["log_l2"])

    def f_of(theta):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g_ = hypergrad(problem, theta, train, val, backend=backend).grad["log_l2"]
        return float((g_ ** 2).sum() + g_[0] * theta["log_l2"][1])
    fd = central_fd(f_of, {"log_l2": theta0}, 1e-5)
    return {"values": tolist(df), "reference": tolist(fd["log_l2"]), "error": rel_err(df, fd["log_l2"]),
            "tolerance": tol, "diagnostics": diag_summary(r),
            "notes": {"function": "f(theta) = ||g(theta)||^2 + g_0(theta) theta_1, g = hypergrad(...).grad",
                      "reference": "central FD (h=1e-5) of f computed with the same backend without create_graph"}}


@case("3-create-graph-unrolled", "d/dtheta of a function of hypergrad(create_graph=True).grad, Unrolled (GD 30 steps)")
def c3_unrolled():
    return create_graph_case(Unrolled(), GradientDescent(lr=0.5, steps=30), 1e-6)


@case("3-create-graph-implicit", "d/dtheta of a function of hypergrad(create_graph=True).grad, Implicit(CG()) "
                                 "with a NewtonCG inner solve")
def c3_implicit():
    return create_graph_case(Implicit(CG()), NewtonCG(steps=20, cg_steps=8), 1e-5)


def ridge_tasks(T=3):
    ins, outs = [], []
    for t in range(T):
        X, y, Xv, yv = ridge_data(10 + t)
        ins.append((X, y))
        outs.append((Xv, yv))
    inner_b = (torch.stack([i[0] for i in ins]), torch.stack([i[1] for i in ins]))
    outer_b = (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]))
    return ins, outs, inner_b, outer_b


@case("3-map-tasks-vmap", "map_tasks(lambda ib, ob: hypergrad(..., Implicit(CG())), ...) under vmap vs "
                          "closed form per task (and vs a loop)")
def c3_map():
    ins, outs, ib, ob = ridge_tasks()
    lam = 2.0
    problem = ridge_problem(lam, 5, steps=3000, lr=0.01, X=ins[0][0])
    theta = {"c": torch.full((5,), 0.3, dtype=D)}
    res = map_tasks(lambda i, o: hypergrad(problem, theta, i, o, backend=Implicit(CG())), ib, ob)
    ref = torch.stack([ridge_exact(lam, theta["c"], *ins[t], *outs[t])[1] for t in range(3)])
    loop = torch.stack([hypergrad(problem, theta, ins[t], outs[t], backend=Implicit(CG())).grad["c"] for t in range(3)])
    return {"values": tolist(res.grad["c"]), "reference": tolist(ref), "error": rel_err(res.grad["c"], ref),
            "tolerance": 1e-6,
            "notes": {"error_vs_loop": rel_err(res.grad["c"], loop),
                      "linear_solve_converged_per_task": tolist(res.diagnostics.linear_solve.converged),
                      "reference": "closed-form ridge hypergradient per task (GD lr 0.01, 3000 steps)"}}


@case("3-batched-none", "batched_hypergrad(reduction='none'), Unrolled and Implicit, per task vs closed form and loop")
def c3_batched():
    ins, outs, ib, ob = ridge_tasks()
    lam = 2.0
    problem = ridge_problem(lam, 5, steps=3000, lr=0.01, X=ins[0][0])
    theta = {"c": torch.full((5,), 0.3, dtype=D)}
    ref = torch.stack([ridge_exact(lam, theta["c"], *ins[t], *outs[t])[1] for t in range(3)])
    vals, errs, loops = {}, {}, {}
    for name, backend in [("Implicit", Implicit(CG())), ("Unrolled", Unrolled())]:
        r = batched_hypergrad(problem, theta, ib, ob, backend=backend, reduction="none")
        loop = torch.stack([hypergrad(problem, theta, ins[t], outs[t], backend=backend).grad["c"] for t in range(3)])
        vals[name] = tolist(r.grad["c"])
        errs[name] = rel_err(r.grad["c"], ref)
        loops[name] = rel_err(r.grad["c"], loop)
    return {"values": vals, "reference": tolist(ref), "error": max(errs.values()), "tolerance": 1e-6,
            "notes": {"error_per_backend": errs, "error_vs_loop": loops, "shape": list(ref.shape)}}


# --------------------------------------------------------------------------- 4: failures that must be loud


def small_ridge():
    X, y, Xv, yv = ridge_data(4)
    lam = 0.5
    problem = ridge_problem(lam, 5, steps=3000, X=X)
    theta = {"c": torch.zeros(5, dtype=D)}
    return problem, theta, (X, y), (Xv, yv), ridge_exact(lam, theta["c"], X, y, Xv, yv)[1]


@case("4-torchopt-maxiter1-raise", "TorchoptImplicit(CG(maxiter=1, negative_curvature='continue')), on_failure='raise'")
def c4_a():
    problem, theta, tr, va, ref = small_ridge()
    r = hypergrad(problem, theta, tr, va, backend=TorchoptImplicit(CG(maxiter=1, negative_curvature="continue")),
                  on_failure="raise")
    return {"values": tolist(r.grad["c"]), "reference": tolist(ref), "error": rel_err(r.grad, ref),
            "tolerance": 1e-6, "diagnostics": diag_summary(r)}


@case("4-torchopt-stop", "TorchoptImplicit(CG()) (negative_curvature='stop' cannot be honoured)")
def c4_b():
    TorchoptImplicit(CG())
    return {"verdict": "SILENT-WRONG", "notes": "constructed without complaint"}


@case("4-fixed-point-few-steps", "hypergrad(FixedPointProblem with FixedPointIteration(steps=2), "
                                 "FixedPointImplicit(), on_failure='raise')")
def c4_c():
    g = torch.Generator().manual_seed(2)
    W = 0.5 * torch.randn(4, 4, generator=g, dtype=D) / 2
    x = torch.randn(4, generator=g, dtype=D)
    yt = torch.randn(4, generator=g, dtype=D)

    def make(steps):
        return FixedPointProblem(map=lambda z, th, b: {"z": torch.tanh(W @ z["z"] + th["u"] * b)},
                                 outer_loss=lambda z, th, y: ((z["z"] - y) ** 2).sum(),
                                 forward_solver=FixedPointIteration(steps=steps, tol=1e-12),
                                 init={"z": torch.zeros(4, dtype=D)})
    theta = {"u": torch.full((4,), 0.7, dtype=D)}
    conv = make(500)
    fd = central_fd(lambda th: float(conv.outer_loss(conv.solve(th, x).solution, th, yt)), theta, 1e-5)
    r = hypergrad(make(2), theta, x, yt, backend=FixedPointImplicit(), on_failure="raise")
    return {"values": tolist(r.grad["u"]), "reference": tolist(fd["u"]), "error": rel_err(r.grad, fd),
            "tolerance": 1e-6, "diagnostics": diag_summary(r)}


# --------------------------------------------------------------------------- 5: Hessian-vector product modes


@case("5-resolve-meta", "resolve_hvp_mode('auto', {'w': torch.empty(2, device='meta')})")
def c5_a():
    mode = resolve_hvp_mode("auto", {"w": torch.empty(2, device="meta")})
    return {"values": mode, "reference": "reverse-over-reverse",
            "verdict": "right" if mode == "reverse-over-reverse" else "SILENT-WRONG"}


def mse_case(mode):
    X, y, Xv, yv = ridge_data(8)
    lam = 0.7
    n = X.shape[0]
    problem = BilevelProblem(
        inner_loss=lambda phi, theta, b: F.mse_loss(b[0] @ phi["w"], b[1]) + 0.5 * lam * ((phi["w"] - theta["c"]) ** 2).sum(),
        outer_loss=lambda phi, theta, b: 0.5 * ((b[0] @ phi["w"] - b[1]) ** 2).sum(),
        inner_solver=GradientDescent(lr=0.1, steps=3000), inner_init={"w": torch.zeros(5, dtype=D)})
    theta = {"c": torch.zeros(5, dtype=D)}
    # mse_loss = ||Xw - y||^2 / n: the ridge closed form with X, y scaled by sqrt(2/n).
    sc = math.sqrt(2.0 / n)
    _, ref = ridge_exact(lam, theta["c"], X * sc, y * sc, Xv, yv)
    r = hypergrad(problem, theta, (X, y), (Xv, yv), backend=Implicit(CG(), hvp_mode=mode))
    return {"values": tolist(r.grad["c"]), "reference": tolist(ref), "error": rel_err(r.grad, ref),
            "tolerance": 1e-6, "diagnostics": diag_summary(r)}


@case("5-mse-auto", "F.mse_loss inner loss through Implicit(CG(), hvp_mode='auto')")
def c5_b():
    return mse_case("auto")


@case("5-mse-forward-over-reverse", "F.mse_loss inner loss through Implicit(CG(), hvp_mode='forward-over-reverse') "
                                    "(what 'auto' used to pick on GPUs)")
def c5_c():
    return mse_case("forward-over-reverse")


# --------------------------------------------------------------------------- 6: nn.Module friction


@case("6i-inner-init-module", "BilevelProblem(..., inner_init=model)")
def c6_i():
    model = nn.Linear(3, 1).double()
    BilevelProblem(inner_loss=lambda p, t, b: p["weight"].sum(), outer_loss=lambda p, t, b: p["weight"].sum(),
                   inner_init=model)
    return {"verdict": "SILENT-WRONG", "notes": "accepted a module"}


@case("6ii-hpo-missing-inner-init", "HPO problem without inner_init (phi names differ from theta's)")
def c6_ii():
    X, y, Xv, yv = ridge_data(1)
    problem = BilevelProblem(
        inner_loss=lambda phi, theta, b: 0.5 * ((b[0] @ phi["w"] - b[1]) ** 2).sum()
                                         + 0.5 * theta["log_l2"].exp() * (phi["w"] ** 2).sum(),
        outer_loss=lambda phi, theta, b: 0.5 * ((b[0] @ phi["w"] - b[1]) ** 2).sum(),
        inner_solver=GradientDescent(lr=0.01, steps=10))
    hypergrad(problem, {"log_l2": torch.tensor(0.0, dtype=D)}, (X, y), (Xv, yv), backend=Implicit())
    return {"verdict": "SILENT-WRONG", "notes": "ran"}


def head_only_task():
    """A tanh MLP whose head (``2.*``) is theta, with one support and one query set."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    g = torch.Generator().manual_seed(0)
    support = torch.randn(10, 4, generator=g, dtype=D), torch.randint(0, 2, (10,), generator=g)
    query = torch.randn(10, 4, generator=g, dtype=D), torch.randint(0, 2, (10,), generator=g)
    return model, support, query


def head_only_maml_reference(model, head, support, query):
    """MAML (3 steps at 0.1) of the head by hand, the body frozen at the module's values."""
    body = {k: v.detach() for k, v in model.named_parameters() if k not in head}

    def loss(h, b):
        return F.cross_entropy(functional_call(model, {**body, **h}, (b[0],)), b[1])

    def maml(h):
        p = h
        for _ in range(3):
            gg = grad(loss)(p, support)
            p = {k: p[k] - 0.1 * gg[k] for k in p}
        return loss(p, query)
    return grad(maml)({k: v.detach().clone() for k, v in head.items()})


@case("6iii-model-loss-head-only", "maml_problem(model_loss(model)) with theta = the head's parameters only")
def c6_iii():
    model, support, query = head_only_task()
    theta = {k: v.detach().clone() for k, v in model.named_parameters() if k.startswith("2.")}
    problem = maml_problem(model_loss(model), GradientDescent(lr=0.1, steps=3))
    r = hypergrad(problem, theta, support, query, backend=Unrolled())
    ref = head_only_maml_reference(model, theta, support, query)
    return {"values": tolist(r.grad), "reference": tolist(ref), "error": rel_err(r.grad, ref), "tolerance": 1e-8}


@case("6iii-model-loss-trainable", "the fix 6iii names: module_params(model, trainable='2') and model_loss(model, "
      "trainable='2')")
def c6_iii_fixed():
    model, support, query = head_only_task()
    theta, _ = module_params(model, trainable="2")
    problem = maml_problem(model_loss(model, trainable="2"), GradientDescent(lr=0.1, steps=3))
    r = hypergrad(problem, {k: v.clone() for k, v in theta.items()}, support, query, backend=Unrolled())
    ref = head_only_maml_reference(model, theta, support, query)
    return {"values": tolist(r.grad), "reference": tolist(ref), "error": rel_err(r.grad, ref), "tolerance": 1e-8}


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.bn(self.fc(x)))).squeeze(-1)


def bn_setup():
    torch.manual_seed(0)
    model = BNNet().double().train()
    g = torch.Generator().manual_seed(3)
    T = 2
    xs, ys = torch.randn(T, 8, 3, generator=g, dtype=D), torch.randn(T, 8, generator=g, dtype=D)
    xq, yq = torch.randn(T, 8, 3, generator=g, dtype=D), torch.randn(T, 8, generator=g, dtype=D)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    problem = maml_problem(model_loss(model, lambda o, y: ((o - y) ** 2).mean()), GradientDescent(lr=0.1, steps=2))
    return model, problem, theta, (xs, ys), (xq, yq)


def bn_reference(model, theta, ib, oq):
    """Per-task MAML gradient by hand: a deep copy of the module, batch statistics (train mode)."""
    m = copy.deepcopy(model)
    # Train-mode BatchNorm normalizes by batch statistics; the copy drops its running buffers so
    # that torch.func.grad does not meet their in-place update (the same maths, no side effect).
    m.bn.track_running_stats, m.bn.running_mean, m.bn.running_var, m.bn.num_batches_tracked = False, None, None, None
    grads = []
    for t in range(ib[0].shape[0]):
        def loss(p, x, y):
            return ((functional_call(m, p, (x,)) - y) ** 2).mean()

        def maml(p):
            for _ in range(2):
                gg = grad(loss)(p, ib[0][t], ib[1][t])
                p = {k: p[k] - 0.1 * gg[k] for k in p}
            return loss(p, oq[0][t], oq[1][t])
        grads.append(grad(maml)(theta))
    return {k: torch.stack([g[k] for g in grads]).mean(0) for k in theta}


def bn_case(vectorize):
    model, problem, theta, ib, oq = bn_setup()
    before = model.bn.running_mean.clone()
    ref = bn_reference(model, theta, ib, oq)
    changed = {}
    try:
        r = batched_hypergrad(problem, theta, ib, oq, backend=Unrolled(), vectorize=vectorize)
    finally:
        changed["running_mean_changed"] = not torch.equal(before, model.bn.running_mean)
        changed["running_mean_max_change"] = float((model.bn.running_mean - before).abs().max())
        PENDING_NOTES.update(changed)
    out = {"values": tolist(r.grad["fc.weight"][0]), "reference": tolist(ref["fc.weight"][0]),
           "error": rel_err(r.grad, ref), "tolerance": 1e-8, "notes": changed}
    return out


@case("6iv-batchnorm-vmap", "BatchNorm (train mode) model through batched_hypergrad (vmap path), Unrolled")
def c6_iv_a():
    return bn_case(True)


@case("6iv-batchnorm-loop", "BatchNorm (train mode) model through batched_hypergrad(vectorize=False), Unrolled")
def c6_iv_b():
    return bn_case(False)


@case("6v-float-theta", "theta={'c': -3.0}")
def c6_v():
    problem, _, tr, va, _ = small_ridge()
    hypergrad(problem, {"c": -3.0}, tr, va, backend=Implicit())
    return {"verdict": "SILENT-WRONG", "notes": "ran"}


@case("6vi-int-theta", "an integer tensor in theta")
def c6_vi():
    problem, _, tr, va, _ = small_ridge()
    hypergrad(problem, {"c": torch.tensor([1, 2, 3, 4, 5])}, tr, va, backend=Implicit())
    return {"verdict": "SILENT-WRONG", "notes": "ran"}


def half_setup(dtype):
    g = torch.Generator().manual_seed(9)
    X, Xv = torch.randn(30, 5, generator=g, dtype=D), torch.randn(30, 5, generator=g, dtype=D)
    wt = torch.randn(5, generator=g, dtype=D)
    y, yv = X @ wt + 0.3 * torch.randn(30, generator=g, dtype=D), Xv @ wt

    def problem_for(dt, steps=100):
        return BilevelProblem(
            inner_loss=lambda phi, theta, b: 0.5 * ((b[0] @ phi["w"] - b[1]) ** 2).mean()
                                             + 0.5 * (theta["log_l2"].exp() * phi["w"] ** 2).sum(),
            outer_loss=lambda phi, theta, b: 0.5 * ((b[0] @ phi["w"] - b[1]) ** 2).mean(),
            inner_solver=GradientDescent(lr=0.3, steps=steps), inner_init={"w": torch.zeros(5, dtype=dt)})
    theta = {"log_l2": torch.linspace(-2.0, 0.5, 5, dtype=D)}
    return problem_for, theta, (X, y), (Xv, yv)


def half_case(dtype, backend):
    problem_for, theta, tr, va = half_setup(dtype)
    cast = lambda t: t.to(dtype)
    rounded = lambda t: t.to(dtype).to(D)
    ref64 = hypergrad(problem_for(D), theta, tr, va, backend=backend).grad["log_l2"]
    ref_rounded = hypergrad(problem_for(D), {"log_l2": rounded(theta["log_l2"])}, tuple(map(rounded, tr)),
                            tuple(map(rounded, va)), backend=backend).grad["log_l2"]
    r = hypergrad(problem_for(dtype), {"log_l2": cast(theta["log_l2"])}, tuple(map(cast, tr)), tuple(map(cast, va)),
                  backend=backend)
    got = r.grad["log_l2"]
    err_rounded = rel_err(got, ref_rounded)
    tol = 2 * torch.finfo(dtype).eps  # the output is cast back to the half dtype: one to two ulps
    extra = {}
    if isinstance(backend, Implicit):
        # Does the fix the warning names (raise maxiter) silence it? CG's tol=1e-10 is relative,
        # and the library computes in float32 (eps 1.2e-7).
        with warnings.catch_warnings(record=True) as cw:
            warnings.simplefilter("always")
            r50 = hypergrad(problem_for(dtype), {"log_l2": cast(theta["log_l2"])}, tuple(map(cast, tr)),
                            tuple(map(cast, va)), backend=Implicit(CG(maxiter=50)))
        extra = {"with_CG_maxiter_50": {"warnings": [str(w.message)[:200] for w in cw],
                                        "residual_norm": tolist(r50.diagnostics.linear_solve.residual_norm),
                                        "error": rel_err(r50.grad, ref_rounded)}}
        if cw and err_rounded <= tol:
            extra["verdict_reason"] = ("false alarm: the value is right to the half dtype's precision, and the "
                                       "named fix (raise maxiter) does not silence the warning: CG's default "
                                       "tol=1e-10 is below float32's reach")
    out = {"values": tolist(got), "reference": tolist(ref_rounded), "error": err_rounded, "tolerance": tol,
           "diagnostics": diag_summary(r)}
    if "verdict_reason" in extra:
        out["verdict"] = "unhelpful"
    out["notes"] = {
            "result_dtype": str(got.dtype), "error_vs_float64_on_original_inputs": rel_err(got, ref64),
                      "input_rounding_error (float64 on rounded inputs vs float64)": rel_err(ref_rounded, ref64),
                      "float64_answer": tolist(ref64),
                      "reference": "float64 computation on the half-rounded inputs (what the library was given); "
                                   "tolerance 2 eps of the half dtype (the result is cast back)", **extra}
    return out


for _dt, _dn in [(torch.bfloat16, "bf16"), (torch.float16, "fp16")]:
    for _bk, _bn in [(lambda: Unrolled(), "unrolled"), (lambda: Implicit(CG()), "implicit-cg")]:
        def _make(dt=_dt, bk=_bk):
            return lambda: half_case(dt, bk())
        case(f"6vii-{_dn}-{_bn}", f"{_dn} theta/data/init, {_bn} (GD 100 steps, per-feature log L2) vs float64")(_make())


# --------------------------------------------------------------------------- 7: warm starts


def warm_ridge():
    X, y, Xv, yv = ridge_data(6)
    lam = 1.0
    return X, y, Xv, yv, lam


@case("7-inner-start-unrolled", "inner_start= to Unrolled: a 10-step solve warm-started at a neighbouring "
                                "theta's solution vs the converged hypergradient")
def c7_a():
    X, y, Xv, yv, lam = warm_ridge()
    theta = {"c": torch.full((5,), 0.2, dtype=D)}
    prev = {"w": ridge_exact(lam, theta["c"] - 0.05, X, y, Xv, yv)[0]}
    short = ridge_problem(lam, 5, steps=10, X=X)
    _, ref = ridge_exact(lam, theta["c"], X, y, Xv, yv)
    warm = hypergrad(short, theta, (X, y), (Xv, yv), backend=Unrolled(), inner_start=prev)
    cold = hypergrad(short, theta, (X, y), (Xv, yv), backend=Unrolled())
    long = ridge_problem(lam, 5, steps=2000, X=X)
    cold_long = hypergrad(long, theta, (X, y), (Xv, yv), backend=Unrolled())
    return {"values": tolist(warm.grad["c"]), "reference": tolist(ref), "error": rel_err(warm.grad, ref),
            "tolerance": 0.05,
            "notes": {"cold_10_steps_error": rel_err(cold.grad, ref), "cold_2000_steps_error": rel_err(cold_long.grad, ref),
                      "warm_solution_error": float((warm.inner_solution["w"] - ridge_exact(lam, theta["c"], X, y, Xv, yv)[0]).norm()),
                      "cold_solution_error": float((cold.inner_solution["w"] - ridge_exact(lam, theta["c"], X, y, Xv, yv)[0]).norm()),
                      "meaning": "no gradient flows through the start: a warm-started unrolled gradient is the "
                                 "10-step truncation from a near-solution (tolerance 5%)"}}


@case("7-inner-start-implicit", "inner_start= to Implicit(CG()): 50-step solve from a neighbouring solution")
def c7_b():
    X, y, Xv, yv, lam = warm_ridge()
    theta = {"c": torch.full((5,), 0.2, dtype=D)}
    prev = {"w": ridge_exact(lam, theta["c"] - 0.05, X, y, Xv, yv)[0]}
    _, ref = ridge_exact(lam, theta["c"], X, y, Xv, yv)
    short = ridge_problem(lam, 5, steps=50, X=X)
    warm = hypergrad(short, theta, (X, y), (Xv, yv), backend=Implicit(CG()), inner_start=prev)
    with warnings.catch_warnings(record=True) as cw:
        warnings.simplefilter("always")
        cold = hypergrad(short, theta, (X, y), (Xv, yv), backend=Implicit(CG()))
    return {"values": tolist(warm.grad["c"]), "reference": tolist(ref), "error": rel_err(warm.grad, ref),
            "tolerance": 1e-4, "diagnostics": diag_summary(warm),
            "notes": {"steps_saved": "none: the inner solver runs its fixed 50 steps either way (stationarity is "
                                     "judged against the grad norm at the warm start)",
                      "cold_50_steps_error": rel_err(cold.grad, ref), "cold_warnings": [str(w.message) for w in cw],
                      "cold_stationarity": diag_summary(cold).get("stationarity")}}


@case("7-inner-start-fixed-point", "inner_start= to FixedPointImplicit: forward steps cold vs warm")
def c7_c():
    g = torch.Generator().manual_seed(2)
    W = 0.5 * torch.randn(4, 4, generator=g, dtype=D) / 2
    x = torch.randn(4, generator=g, dtype=D)
    yt = torch.randn(4, generator=g, dtype=D)
    problem = FixedPointProblem(map=lambda z, th, b: {"z": torch.tanh(W @ z["z"] + th["u"] * b)},
                                outer_loss=lambda z, th, y: ((z["z"] - y) ** 2).sum(),
                                forward_solver=FixedPointIteration(steps=500, tol=1e-10),
                                init={"z": torch.zeros(4, dtype=D)})
    theta = {"u": torch.full((4,), 0.7, dtype=D)}
    prev = problem.solve({"u": theta["u"] - 0.01}, x).solution
    cold = hypergrad(problem, theta, x, yt, backend=FixedPointImplicit())
    warm = hypergrad(problem, theta, x, yt, backend=FixedPointImplicit(), inner_start=prev)
    return {"values": tolist(warm.grad["u"]), "reference": tolist(cold.grad["u"]), "error": rel_err(warm.grad, cold.grad),
            "tolerance": 1e-8,
            "notes": {"forward_steps_cold": int(cold.diagnostics.forward_solve.steps),
                      "forward_steps_warm": int(warm.diagnostics.forward_solve.steps),
                      "reference": "the cold-started FixedPointImplicit (both converged to tol 1e-10)"}}


@case("7-inner-solution-unrolled", "inner_solution= to Unrolled")
def c7_d():
    problem, theta, tr, va, _ = small_ridge()
    hypergrad(problem, theta, tr, va, backend=Unrolled(), inner_solution={"w": torch.zeros(5, dtype=D)})
    return {"verdict": "SILENT-WRONG", "notes": "accepted inner_solution"}


# --------------------------------------------------------------------------- runner


PENDING_NOTES: dict = {}  # notes a case records before it raises

MISLEADING = {
    # A hint naming an API that does not exist is misleading (checked at run time below).
    "bilevel.module_params": lambda: not hasattr(bilevel, "module_params"),
}


def run_case(cid, description, fn):
    t0 = time.perf_counter()
    out, exc, tb = {}, None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn() or {}
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            exc, tb = e, traceback.format_exc(limit=4)
    if PENDING_NOTES:
        notes = out.get("notes") if isinstance(out.get("notes"), dict) else {}
        out["notes"] = {**PENDING_NOTES, **notes}
        PENDING_NOTES.clear()
    verdict = judge(out, caught, exc)
    messages = [{"type": w.category.__name__, "message": str(w.message)} for w in caught
                if issubclass(w.category, UserWarning)]
    if exc is not None:
        messages.append({"type": type(exc).__name__, "message": str(exc)})
    for needle, bad in MISLEADING.items():
        if verdict == "loud" and any(needle in m["message"] for m in messages) and bad():
            verdict = "unhelpful"
            out.setdefault("notes", {})
            if isinstance(out["notes"], dict):
                out["notes"]["misleading_hint"] = f"the message points to {needle}, which does not exist"
            else:
                out["notes"] = {"note": out["notes"], "misleading_hint": f"{needle} does not exist"}
    record = {"id": cid, "description": description, "verdict": verdict,
              "values": out.get("values"), "reference": out.get("reference"), "error": out.get("error"),
              "tolerance": out.get("tolerance"), "messages": messages, "diagnostics": out.get("diagnostics"),
              "notes": out.get("notes"), "deviation": out.get("deviation"),
              "seconds": round(time.perf_counter() - t0, 2)}
    if tb is not None and verdict == "unhelpful":
        record["traceback"] = tb
    return record


def fmt(x, n=4):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{n}g}"
    if isinstance(x, list):
        flatx = []
        def rec(v):
            if isinstance(v, list):
                for u in v:
                    rec(u)
            else:
                flatx.append(v)
        rec(x)
        s = ", ".join(fmt(v, n) if isinstance(v, float) else str(v) for v in flatx[:3])
        return "[" + s + (", ..." if len(flatx) > 3 else "") + "]"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {fmt(v, n)}" for k, v in list(x.items())[:2]) + "}"
    return str(x)


def table(records) -> str:
    lines = [f"{'case':32s} {'verdict':12s} {'error':>10s} {'tol':>8s}  value / reference / message"]
    for r in records:
        msg = r["messages"][-1]["type"] + ": " + r["messages"][-1]["message"][:110] if r["messages"] else ""
        lines.append(f"{r['id']:32s} {r['verdict']:12s} {fmt(r['error'], 3):>10s} {fmt(r['tolerance'], 2):>8s}  "
                     f"{fmt(r['values'])} vs {fmt(r['reference'])}")
        if msg:
            lines.append(f"{'':32s}   {msg}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write results.json and results.log here")
    parser.add_argument("--only", default=None, help="comma-separated case id prefixes")
    args = parser.parse_args(argv)
    cases = CASES if args.only is None else [c for c in CASES if any(c[0].startswith(p) for p in args.only.split(","))]
    t0 = time.perf_counter()
    records = []
    for i, (cid, description, fn) in enumerate(cases):
        rec = run_case(cid, description, fn)
        records.append(rec)
        print(f"[{i + 1}/{len(cases)}] {cid}: {rec['verdict']} ({rec['seconds']} s)", flush=True)
    total = time.perf_counter() - t0
    text = table(records)
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("right", "loud", "SILENT-WRONG", "unhelpful", "n/a")}
    summary = f"{len(records)} cases in {total:.1f} s: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    print("\n" + text + "\n\n" + summary)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        import os
        env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
        meta = {"command": env + " ".join(["python"] + sys.argv), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "seconds": round(total, 1), "summary": counts}
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "cases": records}, indent=1, default=str))
        (args.out / "results.log").write_text(meta["command"] + "\n" + text + "\n\n" + summary + "\n")
    return records


if __name__ == "__main__":
    main()
