"""A deep equilibrium (DEQ) classifier trained by implicit differentiation of its fixed point.

The hidden state of each example is the fixed point of one tanh layer applied to itself,

    z* = tanh(W z* + U x + b),        logits = V z* + c,

found by Anderson acceleration (forward) and differentiated with ``FixedPointImplicit``: the
gradient solves the adjoint system ``(I - dT/dz)^T w = dL/dz`` with GMRES at ``z*`` and never
stores the forward iterations, so memory does not grow with their number. After every Adam step
``W`` is rescaled to spectral norm at most 0.9: tanh is 1-Lipschitz, so the layer stays a
contraction, its fixed point exists and is unique, and both solves converge.

The task is synthetic (no download): points in the plane labelled by which of three rings they
fall in, which no linear classifier separates.

Run: python examples/deq.py          (400 steps)
     python examples/deq.py --fast   (a few steps, a few seconds: the test runs this)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from bilevel.adapters import FixedPointImplicit
from bilevel import Anderson, FixedPointProblem, fixed_point_hypergrad, write_grad
from bilevel.solvers.linear import GMRES

HIDDEN = 32
MAX_NORM = 0.9  # spectral norm bound on W: the layer is a contraction with factor <= 0.9


def rings(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points in the plane, class = ring (radius in [0, 1), [1, 2), [2, 3)), with noise."""
    label = torch.randint(0, 3, (n,), generator=generator)
    radius = label + torch.rand(n, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return x + 0.05 * torch.randn(n, 2, generator=generator), label


def init_theta(generator: torch.Generator) -> dict[str, torch.Tensor]:
    W = torch.randn(HIDDEN, HIDDEN, generator=generator)
    return {
        "W": 0.5 * W / torch.linalg.matrix_norm(W, 2),
        "U": torch.randn(HIDDEN, 2, generator=generator),
        "b": 0.1 * torch.randn(HIDDEN, generator=generator),
        "V": 0.1 * torch.randn(3, HIDDEN, generator=generator),
        "c": torch.zeros(3),
    }


def layer(z, theta, x):
    """``T(z) = tanh(W z + U x + b)``, one row per example."""
    return {"z": torch.tanh(z["z"] @ theta["W"].T + x @ theta["U"].T + theta["b"])}


def cross_entropy(z, theta, label):
    return F.cross_entropy(z["z"] @ theta["V"].T + theta["c"], label)


PROBLEM = FixedPointProblem(
    map=layer,
    outer_loss=cross_entropy,
    forward_solver=Anderson(steps=40, memory=5, tol=1e-5),
    init=lambda theta, x: {"z": x.new_zeros(x.shape[0], HIDDEN)},
)
BACKEND = FixedPointImplicit(GMRES(maxiter=30, tol=1e-5))


def accuracy(theta, x, label) -> float:
    z = PROBLEM.solve(theta, x, detach=True).solution
    return float(((z["z"] @ theta["V"].T + theta["c"]).argmax(1) == label).float().mean())


def train(steps: int, seed: int = 0) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    train_x, train_y = rings(300, g)
    test_x, test_y = rings(300, g)
    theta = {k: v.requires_grad_(True) for k, v in init_theta(g).items()}
    opt = torch.optim.Adam(theta.values(), lr=0.05)
    out = {"train_before": accuracy(theta, train_x, train_y), "test_before": accuracy(theta, test_x, test_y)}
    residuals, forward_steps, adjoint_steps = [], [], []
    start = time.perf_counter()
    for step in range(steps):
        result = fixed_point_hypergrad(PROBLEM, theta, train_x, train_y, backend=BACKEND)
        opt.zero_grad()
        write_grad(theta, result.grad)
        opt.step()
        with torch.no_grad():  # keep T a contraction: rescale W to spectral norm <= MAX_NORM
            theta["W"].mul_(MAX_NORM / torch.linalg.matrix_norm(theta["W"], 2).clamp(min=MAX_NORM))
        z_norm = float(torch.linalg.vector_norm(result.inner_solution["z"]))
        residuals.append(float(result.stats["fixed_point_residual"]) / z_norm)
        forward_steps.append(int(result.stats["forward_steps"]))
        adjoint_steps.append(int(result.stats["steps"]))
        if step % max(steps // 8, 1) == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {float(result.loss):.4f}  ||T(z*) - z*|| / ||z*|| {residuals[-1]:.1e}  "
                  f"forward steps {forward_steps[-1]:2d}  GMRES steps {adjoint_steps[-1]:2d}")
    out.update(train_after=accuracy(theta, train_x, train_y), test_after=accuracy(theta, test_x, test_y),
               mean_residual=sum(residuals) / len(residuals), mean_forward_steps=sum(forward_steps) / steps,
               mean_adjoint_steps=sum(adjoint_steps) / steps, seconds=time.perf_counter() - start)
    return out


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a few training steps (a few seconds)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 400, 40 with --fast)")
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.fast else 400)
    out = train(steps)
    print(f"\naccuracy before training: train {out['train_before']:.3f}  test {out['test_before']:.3f}")
    print(f"accuracy after {steps} steps: train {out['train_after']:.3f}  test {out['test_after']:.3f}")
    print(f"mean ||T(z*) - z*|| / ||z*|| {out['mean_residual']:.1e}; mean Anderson "
          f"steps {out['mean_forward_steps']:.1f}, mean GMRES steps {out['mean_adjoint_steps']:.1f}; "
          f"{out['seconds']:.1f} s")
    return out


if __name__ == "__main__":
    main()
