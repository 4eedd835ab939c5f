"""Tutorial 1: learn per-feature L2 penalties of logistic regression by implicit differentiation.

    inner:  w*(theta) = argmin_w  mean_i softplus(-y_i x_i^T w) + (1/2) sum_j exp(theta_j) w_j^2
    outer:  F(theta)  = mean_{val} softplus(-y x^T w*(theta))

``theta`` holds the log-penalties, one per feature. ``Implicit(CG)`` differentiates the inner
optimality condition ``grad_w L_in(w*, theta) = 0`` instead of the solver's path:

    dF/dtheta = -(d^2 L_in / dw dtheta)^T [d^2 L_in / dw^2]^-1 dF/dw   (here dL_out/dtheta = 0)

The inner problem is strongly convex and small, so Newton-CG (finished by one full Newton step,
see ``solve_to_precision``) solves it to machine precision, and the hypergradient can be
checked against central finite differences of ``F`` in float64 (the script asserts a relative
error below 1e-5). Then Adam steps on ``theta`` lower the
validation loss: only the first 3 of 10 features carry signal, and the learned penalties grow
on the other 7.

Measured (``python examples/logistic_hpo.py``: 100 Adam steps, 17 s of CPU on one thread):
relative error against finite differences 6.7e-10; validation loss 0.3828 -> 0.3451; test
loss 0.3734 -> 0.3261 and accuracy 0.829 -> 0.856; learned penalties below 0.05 on the 3
informative features, median 0.87 on the other 7.

Run:   python examples/logistic_hpo.py            (--fast: 5 Adam steps, for the tests)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from bilevel import CG, BilevelProblem, Implicit, NewtonCG, hypergrad, make_hvp, solve_cg, write_grad

DTYPE = torch.float64  # finite differences need it; the library works in any dtype
# softplus has no fast forward-mode rule on torch 2.13 (forward-over-reverse Hessian-vector
# products were 15x slower here), so both Newton-CG and the implicit backend use reverse mode.
HVP_MODE = "reverse-over-reverse"


def make_data(seed: int = 0, n_train: int = 60, n_val: int = 200, n_test: int = 1000, d: int = 10,
              informative: int = 3):
    """Logistic data where only the first ``informative`` features matter; labels in {-1, +1}."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.zeros(d, dtype=DTYPE)
    w_true[:informative] = torch.tensor([3.0, -2.0, 1.5], dtype=DTYPE)[:informative]

    def split(n):
        x = torch.randn(n, d, generator=g, dtype=DTYPE)
        p = torch.sigmoid(x @ w_true)
        y = torch.where(torch.rand(n, generator=g, dtype=DTYPE) < p, 1.0, -1.0).to(DTYPE)
        return x, y

    return split(n_train), split(n_val), split(n_test)


def logistic_loss(w, batch):
    x, y = batch
    return F.softplus(-y * (x @ w)).mean()


def make_problem(d: int) -> BilevelProblem:
    return BilevelProblem(
        inner_loss=lambda phi, theta, b: logistic_loss(phi["w"], b)
        + 0.5 * (theta["log_l2"].exp() * phi["w"] ** 2).sum(),
        outer_loss=lambda phi, theta, b: logistic_loss(phi["w"], b),
        # Full CG inside each Newton step: quadratic convergence to machine precision.
        inner_solver=NewtonCG(steps=8, cg_steps=d, hvp_mode=HVP_MODE),
        inner_init={"w": torch.zeros(d, dtype=DTYPE)},
    )


def solve_to_precision(problem, theta, batch):
    """``w*(theta)`` to float64 precision: Newton-CG, then one full Newton step.

    Finite differences with ``eps = 1e-5`` need ``w*`` to about 1e-15. Near the solution
    (``||grad|| ~ 1e-10``) the decrease a Newton step makes is below float64's resolution of the
    loss, so Newton-CG's Armijo test may reject it; the last step is taken without a line search.
    """
    phi = problem.solve_inner(theta, batch, detach=True)
    f = problem.objective(theta, batch)
    g = torch.func.grad(f)(phi)
    step = solve_cg(make_hvp(f, phi, HVP_MODE), g, tol=1e-14).solution
    return {k: phi[k] - step[k] for k in phi}


def finite_difference_grad(problem, theta, train, val, eps: float = 1e-5):
    """Central differences of F(theta) = L_out(w*(theta)), one coordinate at a time."""
    base = theta["log_l2"]
    fd = torch.empty_like(base)
    for j in range(base.numel()):
        e = torch.zeros_like(base)
        e[j] = eps

        def value(t):
            th = {"log_l2": t}
            return problem.outer_loss(solve_to_precision(problem, th, train), th, val)

        fd[j] = (value(base + e) - value(base - e)) / (2 * eps)
    return fd


def accuracy(w, batch):
    x, y = batch
    return float(((x @ w).sign() == y).to(DTYPE).mean())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="Adam steps on theta")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam learning rate on theta")
    parser.add_argument("--init-penalty", type=float, default=0.01, help="starting exp(theta_j)")
    parser.add_argument("--fast", action="store_true", help="5 Adam steps (for the tests)")
    args = parser.parse_args(argv)
    steps = 5 if args.fast else args.steps

    train, val, test = make_data()
    d = train[0].shape[1]
    problem = make_problem(d)
    backend = Implicit(CG(maxiter=2 * d, tol=1e-10), hvp_mode=HVP_MODE)
    theta = {"log_l2": torch.full((d,), math.log(args.init_penalty), dtype=DTYPE)}

    # 1. The hypergradient at the start, against central finite differences.
    start = time.perf_counter()
    first = hypergrad(problem, theta, train, val, backend=backend, throw=True,
                      inner_solution=solve_to_precision(problem, theta, train))
    seconds = time.perf_counter() - start
    fd = finite_difference_grad(problem, theta, train, val)
    rel_error = float((first.grad["log_l2"] - fd).norm() / fd.norm())
    print(f"hypergradient ({seconds * 1e3:.1f} ms, CG steps {int(first.stats['steps'])}, "
          f"inner ||grad|| {float(first.stats['inner_grad_norm']):.1e})")
    print(f"  relative error vs central finite differences: {rel_error:.2e}")
    if not rel_error < 1e-5:
        raise AssertionError(f"hypergradient disagrees with finite differences: relative error {rel_error:.2e}")

    # 2. Hypergradient descent: Adam on theta, the hypergradient as its gradient.
    theta = {"log_l2": theta["log_l2"].clone().requires_grad_(True)}
    opt = torch.optim.Adam([theta["log_l2"]], lr=args.lr)
    w0 = first.inner_solution["w"]
    val_losses = []
    for step in range(steps + 1):
        result = hypergrad(problem, theta, train, val, backend=backend)
        val_losses.append(float(result.loss))
        if step % max(1, steps // 10) == 0 or step == steps:
            print(f"step {step:3d}  validation loss {float(result.loss):.4f}")
        if step < steps:
            opt.zero_grad()
            write_grad(theta, result.grad)
            opt.step()
    w = result.inner_solution["w"]
    penalties = theta["log_l2"].detach().exp()
    print(f"test loss {float(logistic_loss(w0, test)):.4f} -> {float(logistic_loss(w, test)):.4f}, "
          f"test accuracy {accuracy(w0, test):.3f} -> {accuracy(w, test):.3f}")
    print(f"learned penalties: informative features {[round(v, 3) for v in penalties[:3].tolist()]}, "
          f"the other {len(penalties) - 3}: median {float(penalties[3:].median()):.3f}")
    return {"rel_error": rel_error, "val_losses": val_losses, "penalties": penalties,
            "test_loss": (float(logistic_loss(w0, test)), float(logistic_loss(w, test)))}


if __name__ == "__main__":
    main()
