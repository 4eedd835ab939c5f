"""Tutorial 4: one meta-learning problem, every hypergradient backend, swapped by one argument.

The problem is iMAML on sinusoid regression with a small MLP (float64, a meta-batch of tasks):

    inner:  phi*(theta) = argmin_phi  L_support(phi) + (lam/2)||phi - theta||^2   (GD from theta)
    outer:  L_query(phi*(theta))

and the only thing that changes between rows is ``backend=``:

    batched_hypergrad(problem, theta, support, query, backend=backend)

The inner problem is run to convergence, so the exact hypergradient of ``phi*`` is the
reference: ``Implicit(Dense())`` (the Hessian materialized and solved directly). Unrolled
differentiation through the converged GD steps approaches it; ``higher`` and TorchOpt compute
the same quantities as ``Unrolled`` and ``Implicit(CG)`` (rows skipped, with a note, when the
library is not installed); the truncated and first-order rows are approximations, and
Reptile's row is a different direction by design (``theta - phi``, not a gradient).

Run:   python examples/swap_backends.py                     every backend
       python examples/swap_backends.py --backend unrolled  one of them
       (--fast: fewer tasks and inner steps, for the tests)
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time

import torch
from torch import nn

from bilevel import (CG, Dense, FirstOrder, GradientDescent, HigherUnrolled, Implicit, Neumann, Reptile,
                     TorchoptImplicit, TruncatedUnrolled, Unrolled, batched_hypergrad, imaml_problem, model_loss)

DTYPE = torch.float64
# The support-loss Hessian at theta has eigenvalues down to about -15 on these tasks: lam = 10
# keeps the inner problem strongly convex near theta; the GD step 0.04 is about 1/L (L ~ 15 + 10).
LAM = 10.0
INNER_LR = 0.04
# Reverse-over-reverse Hessian-vector products, the CPU default of hvp_mode="auto"; to time the two
# modes on your machine, set this to "forward-over-reverse" and compare the printed seconds.
HVP_MODE = "reverse-over-reverse"


def backends(inner_steps: int) -> dict:
    """name -> (backend, the library it needs or None). Each is an immutable object with one method.

    Neumann with ``alpha`` = the inner learning rate and one term per inner step is the linear
    part of unrolled GD; both converge at the same rate.
    """
    return {
        "implicit-dense": (Implicit(Dense(), hvp_mode=HVP_MODE), None),  # the reference
        "implicit-cg": (Implicit(CG(maxiter=20, tol=1e-10), hvp_mode=HVP_MODE), None),
        "implicit-neumann": (Implicit(Neumann(alpha=INNER_LR, steps=inner_steps), hvp_mode=HVP_MODE), None),
        "torchopt-cg": (TorchoptImplicit(CG(maxiter=20, tol=1e-10, negative_curvature="continue")), "torchopt"),
        "unrolled": (Unrolled(), None),
        "higher": (HigherUnrolled(), "higher"),
        "truncated": (TruncatedUnrolled(max(1, inner_steps // 10)), None),
        "first-order": (FirstOrder(), None),
        "reptile": (Reptile(), None),
    }


def sinusoid_tasks(num_tasks: int, shots: int, seed: int = 0):
    """Support and query sets of ``num_tasks`` sinusoids, stacked along dimension 0."""
    g = torch.Generator().manual_seed(seed)
    amp = 0.1 + 4.9 * torch.rand(num_tasks, 1, 1, generator=g, dtype=DTYPE)
    phase = math.pi * torch.rand(num_tasks, 1, 1, generator=g, dtype=DTYPE)

    def draw(n):
        x = 10 * torch.rand(num_tasks, n, 1, generator=g, dtype=DTYPE) - 5
        return x, amp * torch.sin(x + phase)

    return draw(shots), draw(shots)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", help="run only this one (default: all); one of: "
                        + ", ".join(backends(1)))
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--inner-steps", type=int, default=100)
    parser.add_argument("--fast", action="store_true", help="2 tasks, 40 inner steps (for the tests)")
    args = parser.parse_args(argv)
    tasks, inner_steps = (2, 40) if args.fast else (args.tasks, args.inner_steps)
    table = backends(inner_steps)
    if args.backend is not None and args.backend not in table:
        parser.error(f"--backend {args.backend!r} is unknown; choose one of {', '.join(table)}")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).to(DTYPE)
    # By hand, not F.mse_loss: its backward has no forward-mode rule, which Hessian-vector products use.
    task_loss = model_loss(model, lambda out, y: ((out - y) ** 2).mean())
    problem = imaml_problem(task_loss, lam=LAM, inner_solver=GradientDescent(lr=INNER_LR, steps=inner_steps))
    theta = {k: v.detach() for k, v in model.named_parameters()}
    support, query = sinusoid_tasks(tasks, shots=10)

    reference = batched_hypergrad(problem, theta, support, query, backend=table["implicit-dense"][0]).grad
    ref_flat = torch.cat([g.flatten() for g in reference.values()])
    names = [args.backend] if args.backend else list(table)
    print(f"iMAML, {tasks} sinusoid tasks, {inner_steps} inner GD steps, lam {LAM}; reference: implicit-dense")
    print(f"{'backend':<17} {'loss':>8} {'grad norm':>10} {'rel. diff':>10} {'seconds':>8}")
    rows = {}
    for name in names:
        backend, library = table[name]
        if library is not None and importlib.util.find_spec(library) is None:
            print(f"{name:<17} skipped: pip install {library}")
            continue
        start = time.perf_counter()
        result = batched_hypergrad(problem, theta, support, query, backend=backend)
        seconds = time.perf_counter() - start
        flat = torch.cat([result.grad[k].flatten() for k in reference])
        rows[name] = {"loss": float(result.loss), "grad_norm": float(flat.norm()),
                      "rel_diff": float((flat - ref_flat).norm() / ref_flat.norm()), "seconds": seconds}
        r = rows[name]
        print(f"{name:<17} {r['loss']:>8.4f} {r['grad_norm']:>10.4f} {r['rel_diff']:>10.2e} {seconds:>8.3f}")
    return rows


if __name__ == "__main__":
    main()
