"""Which linear solver for the implicit hypergradient's system ``H w = g``, by curvature?

For three real inner problems, at their (approximate) stationary point ``x*``, with ``H`` the
Hessian of the inner objective (Hessian-vector products from :func:`bilevel.make_hvp`) and
``g`` the gradient of a validation loss at ``x*``, solves ``H w = g`` with CG (stopping at the
first negative-curvature direction, the default), CG continuing through it, MINRES, GMRES, the
Neumann series and the dense solve, and reports each one's relative error
``||w - w_ref|| / ||w_ref||`` against an eigendecomposition of the dense Hessian, its relative
residual ``||H w - g|| / ||g||``, its diagnostics and the matvecs it used:

* ``logreg``, strongly convex: ridge-regularised logistic regression on scikit-learn's breast
  cancer data (standardised), solved by Newton's method to ``||grad|| < 1e-12``.
* ``mlp``, nonconvex: a tanh MLP 64-16-10 (1210 parameters) on 500 digits with weight decay
  ``--weight-decay``, trained by full-batch heavy-ball gradient descent (the library's
  ``Momentum``) until ``||grad|| < --grad-tol``; at such a point the Hessian is indefinite.
* ``fairness``, a saddle point: logistic regression with demographic-parity and
  equal-opportunity constraints (sensitive attribute: sex) on scikit-learn's diabetes data
  (target above its median), degree-2 features; ``x = (w, b, mu)`` is a stationary point of
  the Lagrangian ``L = loss + (rho/2)||w||^2 + mu^T c(w, b)`` found by Newton's method on the
  KKT system, whose Hessian ``[[H_ww, J^T], [J, 0]]`` is symmetric indefinite.

and, for contrast, one non-symmetric system (reference: ``torch.linalg.solve``):

* ``fixedpoint``: the adjoint ``(I - J)^T w = dL/dz`` of a DEQ layer ``z = tanh(W z + U x)``
  (``||W||_2 = --deq-contraction``) on digits, at its fixed point.

Writes ``results.json`` and ``results.log`` (the command on the first line) to ``--out``.

Run: OMP_NUM_THREADS=1 python benchmarks/linear_solver_curvature.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.func import grad, vjp, vmap

from bilevel import CG, GMRES, Dense, Momentum, Neumann, make_hvp, run_inner
from bilevel.solvers.minres import MINRES
from bilevel.tree import tree_norm, tree_ravel, tree_unravel

DTYPE = torch.float64
OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "linear-solver-curvature"


# --- The problems: (matvec, point x, right-hand side g, facts, whether the matrix is symmetric).


def standardize(train, *others):
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-8)
    return [(t - mu) / sd for t in (train, *others)]


def split(n, n_train, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train], perm[n_train:]


def dense_matrix(matvec, like):
    """Column i is ``matvec(e_i)`` (one batched matvec per unknown)."""
    n = tree_ravel(like).numel()
    eye = torch.eye(n, dtype=DTYPE)
    return vmap(lambda v: tree_ravel(matvec(tree_unravel(v, like))))(eye).T


def newton(f, x, tol, max_steps=50):
    """Newton's method on ``grad f = 0`` with the dense Hessian (small problems): converges to
    the nearest stationary point, minimum or saddle, quadratically."""
    for step in range(max_steps):
        gx = grad(f)(x)
        if float(tree_norm(gx)) < tol:
            break
        H = dense_matrix(make_hvp(f, x), x)
        delta = torch.linalg.solve(H, tree_ravel(gx))
        x = {k: x[k] - d for k, d in tree_unravel(delta, x).items()}
    return x, step


def logistic(z, y):
    return torch.nn.functional.binary_cross_entropy_with_logits(z, y)


def logreg_problem(args):
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X, y = torch.tensor(X, dtype=DTYPE), torch.tensor(y, dtype=DTYPE)
    tr, va = split(len(X), 400, args.seed)
    Xtr, Xva = standardize(X[tr], X[va])
    ytr, yva = y[tr], y[va]
    lam = args.logreg_ridge

    def inner(p):
        return logistic(Xtr @ p["w"] + p["b"], ytr) + 0.5 * lam * (p["w"] ** 2).sum()

    def outer(p):
        return logistic(Xva @ p["w"] + p["b"], yva)

    x0 = {"w": torch.zeros(X.shape[1], dtype=DTYPE), "b": torch.zeros((), dtype=DTYPE)}
    x, steps = newton(inner, x0, tol=1e-12)
    facts = {"data": f"breast cancer, {len(tr)} train / {len(va)} validation, 30 features standardised",
             "objective": f"mean logistic loss + ({lam}/2)||w||^2", "inner_solver": f"Newton, {steps} steps"}
    return hessian_system(inner, x, grad(outer)(x), facts)


def mlp_problem(args):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X, dtype=DTYPE), torch.tensor(y)
    tr, va = split(len(X), 500, args.seed)
    va = va[:500]
    Xtr, Xva = standardize(X[tr], X[va])
    ytr, yva = y[tr], y[va]
    wd = args.weight_decay

    def net(p, X):
        return torch.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    def inner(p):
        return (torch.nn.functional.cross_entropy(net(p, Xtr), ytr)
                + 0.5 * wd * sum((v ** 2).sum() for v in p.values()))

    def outer(p):
        return torch.nn.functional.cross_entropy(net(p, Xva), yva)

    g = torch.Generator().manual_seed(args.seed)
    x = {"W1": torch.randn(64, 16, generator=g, dtype=DTYPE) / 8, "b1": torch.zeros(16, dtype=DTYPE),
         "W2": torch.randn(16, 10, generator=g, dtype=DTYPE) / 4, "b2": torch.zeros(10, dtype=DTYPE)}
    solver = Momentum(lr=args.mlp_lr, steps=100, momentum=0.9)
    state, steps = None, 0
    while steps < args.mlp_max_steps:
        x, state = run_inner(solver, inner, x, state, detach=True)
        steps += solver.steps
        if float(tree_norm(grad(inner)(x))) < args.grad_tol:
            break
    facts = {"data": f"digits, {len(tr)} train / {len(va)} validation, 64 pixels standardised",
             "objective": f"mean cross-entropy of a tanh MLP 64-16-10 + ({wd}/2)||theta||^2",
             "inner_solver": f"heavy-ball gradient descent (Momentum(lr={args.mlp_lr}, momentum=0.9)), {steps} steps"}
    return hessian_system(inner, x, grad(outer)(x), facts)


def fairness_problem(args):
    from sklearn.datasets import load_diabetes
    from sklearn.preprocessing import PolynomialFeatures

    data = load_diabetes()
    X, target = torch.tensor(data.data, dtype=DTYPE), torch.tensor(data.target, dtype=DTYPE)
    sex = X[:, 1] > 0  # the data set's two (standardised) values of its 'sex' column
    features = torch.tensor(PolynomialFeatures(2, include_bias=False).fit_transform(
        torch.cat([X[:, :1], X[:, 2:]], 1).numpy()), dtype=DTYPE)
    y = (target > target.median()).to(DTYPE)
    tr, va = split(len(X), 310, args.seed)
    Ftr, Fva = standardize(features[tr], features[va])
    ytr, yva, s = y[tr], y[va], sex[tr]
    rho = args.fairness_ridge
    groups = [(s, ~s), (s & (ytr > 0), ~s & (ytr > 0))]  # demographic parity, equal opportunity

    def constraints(p):
        prob = torch.sigmoid(Ftr @ p["w"] + p["b"])
        return torch.stack([prob[a].mean() - prob[b].mean() for a, b in groups])

    def lagrangian(p):
        return (logistic(Ftr @ p["w"] + p["b"], ytr) + 0.5 * rho * (p["w"] ** 2).sum()
                + (p["mu"] * constraints(p)).sum())

    def outer(p):
        return logistic(Fva @ p["w"] + p["b"], yva)

    x0 = {"w": torch.zeros(Ftr.shape[1], dtype=DTYPE), "b": torch.zeros((), dtype=DTYPE),
          "mu": torch.zeros(2, dtype=DTYPE)}
    x, steps = newton(lagrangian, x0, tol=1e-12)
    c = constraints(x)
    facts = {"data": f"diabetes, {len(tr)} train / {len(va)} validation, target > median, sensitive: sex, "
                     f"{Ftr.shape[1]} degree-2 features standardised",
             "objective": f"Lagrangian: mean logistic loss + ({rho}/2)||w||^2 + mu^T c(w, b), c = (demographic "
                          "parity, equal opportunity) gaps of the predicted probabilities",
             "inner_solver": f"Newton on the KKT system, {steps} steps",
             "multipliers": x["mu"].tolist(), "constraint_gaps": c.tolist()}
    return hessian_system(lagrangian, x, grad(outer)(x), facts)


def fixed_point_problem(args):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X, dtype=DTYPE), torch.tensor(y)
    idx, _ = split(len(X), args.deq_examples, args.seed)
    (Xb,) = standardize(X[idx])
    yb = y[idx]
    g = torch.Generator().manual_seed(args.seed)
    width = args.deq_width
    W = torch.randn(width, width, generator=g, dtype=DTYPE)
    W = W * (args.deq_contraction / torch.linalg.matrix_norm(W, 2))
    U = torch.randn(64, width, generator=g, dtype=DTYPE) / 8
    V = torch.randn(width, 10, generator=g, dtype=DTYPE)
    drive = Xb @ U

    def T(z):
        return {"z": torch.tanh(z["z"] @ W.T + drive)}

    z = {"z": torch.zeros(len(Xb), width, dtype=DTYPE)}
    for steps in range(1, 1001):
        z = T(z)
        if float((T(z)["z"] - z["z"]).norm() / z["z"].norm()) < 1e-14:
            break
    _, vjp_T = vjp(T, z)

    def adjoint(w):  # (I - J)^T w, J = dT/dz at z*
        return {"z": w["z"] - vjp_T(w)[0]["z"]}

    rhs = grad(lambda z: torch.nn.functional.cross_entropy(z["z"] @ V, yb))(z)
    facts = {"data": f"digits, {len(Xb)} examples, 64 pixels standardised",
             "objective": f"adjoint (I - J)^T w = dL/dz of a DEQ layer z = tanh(W z + U x), ||W||_2 = "
                          f"{args.deq_contraction}, width {width}, L = cross-entropy of a linear readout",
             "inner_solver": f"fixed-point iteration, {steps} steps",
             "fixed_point_residual": float((T(z)["z"] - z["z"]).norm() / z["z"].norm())}
    return adjoint, z, rhs, facts, False


def hessian_system(f, x, g, facts):
    """The implicit hypergradient's system: the Hessian of the inner objective ``f`` at ``x``."""
    facts["grad_norm"] = float(tree_norm(grad(f)(x)))
    return make_hvp(f, x), x, g, facts, True


PROBLEMS = {"logreg": logreg_problem, "mlp": mlp_problem, "fairness": fairness_problem,
            "fixedpoint": fixed_point_problem}


# --- The solvers, as a user configures them.


def solvers(n, alpha, args):
    """CG and MINRES at the library's default budget (``maxiter`` = n unknowns) and at
    ``--long-factor`` times it (in floating point Lanczos loses orthogonality, and ill-conditioned
    systems need more than n steps); GMRES without restarts, keeping up to n vectors; the
    Neumann series with ``--neumann-steps`` terms and ``alpha`` = 1 / max |lambda| (a user would
    estimate it by power iteration; 1 for a fixed point's adjoint)."""
    long = args.long_factor * n
    return {
        "CG(stop)": CG(maxiter=n, tol=args.tol),
        "CG(continue)": CG(maxiter=n, tol=args.tol, negative_curvature="continue"),
        f"CG(continue) {args.long_factor}n": CG(maxiter=long, tol=args.tol, negative_curvature="continue"),
        "MINRES": MINRES(maxiter=n, tol=args.tol),
        f"MINRES {args.long_factor}n": MINRES(maxiter=long, tol=args.tol),
        "GMRES": GMRES(maxiter=n, tol=args.tol),
        "Neumann": Neumann(alpha=alpha, steps=args.neumann_steps, tol=args.tol),
        "Dense": Dense(),
    }


def counted(matvec):
    def wrapped(v):
        wrapped.calls += 1
        return matvec(v)

    wrapped.calls = 0
    return wrapped


def study(name, args, log):
    matvec, x, g, facts, symmetric = PROBLEMS[name](args)
    n = tree_ravel(x).numel()
    A = dense_matrix(matvec, x)
    gf = tree_ravel(g)
    facts.update(n=n, symmetric=symmetric, asymmetry=float((A - A.T).abs().max() / A.abs().max()),
                 rhs_norm=float(gf.norm()))
    if symmetric:
        evals, evecs = torch.linalg.eigh(0.5 * (A + A.T))
        w_ref = evecs @ ((evecs.T @ gf) / evals)
        facts.update(eig_min=float(evals[0]), eig_max=float(evals[-1]), abs_eig_min=float(evals.abs().min()),
                     negative_eigenvalues=int((evals < 0).sum()), cond=float(evals.abs().max() / evals.abs().min()))
        alpha = 1.0 / float(evals.abs().max())
    else:
        w_ref = torch.linalg.solve(A, gf)
        evals = torch.linalg.eigvals(A)
        sv = torch.linalg.svdvals(A)
        facts.update(eig_real_min=float(evals.real.min()), eig_real_max=float(evals.real.max()),
                     eig_imag_max=float(evals.imag.abs().max()), cond=float(sv[0] / sv[-1]))
        alpha = 1.0  # Neumann on I - J^T: the adjoint fixed-point iteration
    log(f"\n## {name}: {facts['data']}")
    log(f"objective: {facts['objective']}; inner solver: {facts['inner_solver']}")
    if symmetric:
        log(f"n = {n}, ||grad f(x*)|| = {facts['grad_norm']:.2e}, eigenvalues in [{facts['eig_min']:.3e}, "
            f"{facts['eig_max']:.3e}], {facts['negative_eigenvalues']} negative, min |lambda| = "
            f"{facts['abs_eig_min']:.3e}, cond = {facts['cond']:.2e}")
    else:
        log(f"n = {n}, ||T(z*) - z*|| / ||z*|| = {facts['fixed_point_residual']:.1e}, not symmetric "
            f"(max |A - A^T| / max |A| = {facts['asymmetry']:.2f}), eigenvalues' real parts in "
            f"[{facts['eig_real_min']:.3f}, {facts['eig_real_max']:.3f}], |imaginary| <= "
            f"{facts['eig_imag_max']:.3f}, cond = {facts['cond']:.2e}")
    if "multipliers" in facts:
        log(f"multipliers mu = {facts['multipliers']}, constraint gaps c = {facts['constraint_gaps']}")
    log(f"{'solver':<16} {'rel. error':>10} {'rel. resid.':>11} {'matvecs':>7} {'steps':>6} {'conv.':>5} "
        f"{'neg.curv.':>9} {'diverged':>8} {'seconds':>7}")
    rows = {}
    for label, solver in solvers(n, alpha, args).items():
        op = counted(matvec)
        start = time.perf_counter()
        result = solver(op, g)
        seconds = time.perf_counter() - start
        w = tree_ravel(result.solution)
        rows[label] = row = {
            "solver": repr(solver),
            "rel_error": float((w - w_ref).norm() / w_ref.norm()),
            "rel_residual": float((A @ w - gf).norm() / gf.norm()),
            # Dense materializes H with one batched call (vmap) standing for n matvecs.
            "matvecs": n if label == "Dense" else op.calls,
            "seconds": seconds,
            **{k: (v.item() if v.dtype == torch.bool else int(v) if not v.is_floating_point() else float(v))
               for k, v in result.diagnostics().items()},
        }
        log(f"{label:<16} {row['rel_error']:>10.2e} {row['rel_residual']:>11.2e} {row['matvecs']:>7} "
            f"{row['steps']:>6} {str(row['converged']):>5} {str(row['negative_curvature']):>9} "
            f"{str(row['diverged']):>8} {seconds:>7.2f}")
    return {**facts, "solvers": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--tol", type=float, default=1e-10, help="relative residual tolerance of the iterative solvers")
    parser.add_argument("--long-factor", type=int, default=4,
                        help="the longer CG and MINRES budget, in multiples of n (default 4)")
    parser.add_argument("--neumann-steps", type=int, default=200, help="terms of the Neumann series")
    parser.add_argument("--logreg-ridge", type=float, default=1e-2, help="ridge of the logistic regression")
    parser.add_argument("--fairness-ridge", type=float, default=1e-3, help="ridge of the fairness Lagrangian")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay of the MLP")
    parser.add_argument("--grad-tol", type=float, default=1e-3, help="train the MLP until ||grad|| < this")
    parser.add_argument("--mlp-lr", type=float, default=0.1)
    parser.add_argument("--mlp-max-steps", type=int, default=10_000)
    parser.add_argument("--deq-examples", type=int, default=50)
    parser.add_argument("--deq-width", type=int, default=20)
    parser.add_argument("--deq-contraction", type=float, default=0.9, help="spectral norm of the DEQ's W")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS")
    given = sys.argv[1:] if argv is None else argv
    command = ((f"OMP_NUM_THREADS={threads} " if threads else "")
               + shlex.join(["python", "benchmarks/linear_solver_curvature.py", *given]))
    lines = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    log(f"$ {command}")
    log(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, float64; "
        f"tol {args.tol}; n = number of unknowns")
    start = time.perf_counter()
    results = {name: study(name, args, log) for name in args.problems}
    log(f"\ntotal {time.perf_counter() - start:.1f} s")
    payload = {"command": command, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "settings": {k: (os.path.relpath(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "problems": results}
    (args.out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "results.log").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
