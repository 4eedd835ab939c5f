"""Fig. 2a of the iMAML paper: meta-gradient error against iterations, on an exact problem.

The inner problem is iMAML's ``G(phi) = L_train(phi) + (lam/2)||phi - theta||^2`` with
``L_train`` an L2-free logistic regression (not quadratic), in float64. Newton's method with
a dense Hessian solves it to machine precision (``||grad G(phi*)|| < 1e-12``), and a dense
solve gives the exact meta-gradient ``g* = (I + H/lam)^-1 grad L_test(phi*)``. Then, against
``g*``, the relative error ``||g - g*|| / ||g*||`` of

* iMAML: ``Implicit(CG(maxiter=k))`` at ``phi*``, ``k`` CG steps (0 steps: the zero start);
* Neumann: ``Implicit(Neumann(alpha=1/L, steps=k))`` at ``phi*``;
* MAML: ``Unrolled`` through ``k`` gradient-descent steps on ``G`` from ``theta`` (step 1/L);
* first-order MAML: ``grad L_test`` at the same ``k``-step iterate (a bias that stays).

``L`` is the largest eigenvalue of ``H + lam I``. Writes ``gradient_error.csv`` and
``gradient_error.png``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import grad

from ..adapters import FirstOrder, Implicit, Unrolled
from ..hypergrad import hypergrad
from ..solvers.inner import GradientDescent
from ..solvers.linear import CG, Neumann
from ..meta import imaml_problem

__all__ = ["gradient_error", "main"]


def _logistic_loss(params, batch):
    x, y = batch
    return F.binary_cross_entropy_with_logits(x @ params["w"], y)


def _rel_err(g, ref):
    return float(torch.linalg.norm(g["w"] - ref["w"]) / torch.linalg.norm(ref["w"]))


def make_problem(dim: int = 40, n_train: int = 60, n_test: int = 200, lam: float = 0.1, scale: float = 6.0,
                 seed: int = 0):
    """A logistic-regression iMAML task: ``(task_loss, theta, train, test, lam)`` in float64."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(dim, generator=g, dtype=torch.float64)

    def data(n):
        x = scale * torch.randn(n, dim, generator=g, dtype=torch.float64) / dim ** 0.5
        y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x @ w_true)).double()
        return x, y

    theta = {"w": 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)}
    return _logistic_loss, theta, data(n_train), data(n_test), lam


def exact_solution(task_loss, theta, train, test, lam):
    """``(phi*, g*, L)`` by Newton's method and dense solves."""
    G = lambda w: task_loss({"w": w}, train) + 0.5 * lam * ((w - theta["w"]) ** 2).sum()
    w = theta["w"].clone()
    for _ in range(50):
        g = torch.func.grad(G)(w)
        if float(g.norm()) < 1e-13:
            break
        w = w - torch.linalg.solve(torch.func.hessian(G)(w), g)
    stationarity = float(torch.func.grad(G)(w).norm())
    if stationarity > 1e-12:
        raise RuntimeError(f"gradient_error: Newton did not solve the inner problem (||grad G|| = {stationarity:.1e})")
    H = torch.func.hessian(lambda v: task_loss({"w": v}, train))(w)
    v = grad(lambda v: task_loss({"w": v}, test))(w)
    exact = torch.linalg.solve(torch.eye(len(w), dtype=w.dtype) + H / lam, v)
    eigenvalues = torch.linalg.eigvalsh(H) + lam  # of H + lam I, the inner problem's Hessian
    return {"w": w}, {"w": exact}, float(eigenvalues.max()), float(eigenvalues.min())


def gradient_error(max_steps: int = 20, **problem_kwargs) -> list[dict]:
    """One row per iteration count ``k = 0..max_steps``: each method's relative error."""
    task_loss, theta, train, test, lam = make_problem(**problem_kwargs)
    phi_star, exact, L, mu = exact_solution(task_loss, theta, train, test, lam)
    v_theta = {"w": grad(lambda v: task_loss({"w": v}, test))(theta["w"])}
    rows = []
    for k in range(max_steps + 1):
        row = {"steps": k}
        if k == 0:
            row.update(imaml_cg=1.0, neumann=1.0, maml=_rel_err(v_theta, exact), fomaml=_rel_err(v_theta, exact))
        else:
            solved = imaml_problem(task_loss, lam, None)
            for name, solver in (("imaml_cg", CG(maxiter=k, tol=0.0, truncated=True)),
                                 ("neumann", Neumann(alpha=1 / L, steps=k, tol=0.0, truncated=True))):
                r = hypergrad(solved, theta, train, test, backend=Implicit(solver), inner_solution=phi_star)
                row[name] = _rel_err(r.grad, exact)
            unrolled = imaml_problem(task_loss, lam, GradientDescent(lr=1 / L, steps=k))
            row["maml"] = _rel_err(hypergrad(unrolled, theta, train, test, backend=Unrolled()).grad, exact)
            row["fomaml"] = _rel_err(hypergrad(unrolled, theta, train, test, backend=FirstOrder()).grad, exact)
        rows.append(row)
    rows[0]["condition_number"] = L / mu
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["steps"] for r in rows]
    for key, label, style in (("imaml_cg", "iMAML (CG steps)", "o-"), ("neumann", "iMAML (Neumann terms)", "s--"),
                              ("maml", "MAML (inner GD steps)", "^-"), ("fomaml", "first-order MAML (inner GD steps)", "v:")):
        ax.semilogy(steps, [max(r[key], 1e-17) for r in rows], style, label=label, markersize=4)
    ax.set_xlabel("iterations (CG steps, Neumann terms, or inner GD steps)")
    ax.set_ylabel("relative meta-gradient error")
    ax.set_title(f"meta-gradient error (logistic regression, condition number {rows[0]['condition_number']:.0f})")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(out: str | Path, max_steps: int = 20) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = gradient_error(max_steps)
    with open(out / "gradient_error.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["steps", "imaml_cg", "neumann", "maml", "fomaml"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "gradient_error.png")
    return rows
