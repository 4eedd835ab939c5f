"""Extreme eigenvalues of the support-loss Hessian of conv4 on 5-way 1-shot Omniglot tasks.

For each network (``--net``: strided, maxpool) and initialization (PyTorch's default, and the
official iMAML code's xavier gain 1.73), at theta and at the iMAML inner solution phi*
(``--lam``, 16 GD steps of lr 0.1), prints the support loss and estimates the largest and the
most negative eigenvalue of H = hess L_train by shifted power iteration over Hessian-vector
products. iMAML's CG solves with I + H/lam, positive definite only if lambda_min(H) > -lam.

Run: python benchmarks/hessian_spectrum.py --data-root ../shared/data/omniglot --net strided maxpool
"""

from __future__ import annotations

import argparse

import torch

from bilevel import GradientDescent, hvp, imaml_problem
from bilevel.fewshot import make_benchmark
from bilevel.fewshot.benchmarks import batch_to_tasks
from bilevel.tree import tree_axpy, tree_dot, tree_scale


def power_iteration(f, x, shift=0.0, iters=100, seed=0):
    """Dominant eigenvalue of H(x) - shift I, plus shift (Rayleigh quotient at the last iterate)."""
    g = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(t.shape, generator=g) for k, t in x.items()}
    value = 0.0
    for _ in range(iters):
        v = tree_scale(1 / tree_dot(v, v).sqrt(), v)
        Hv = tree_axpy(-shift, v, hvp(f, x, v, "reverse-over-reverse"))
        value = float(tree_dot(v, Hv))
        v = Hv
    return value + shift


def extremes(f, x):
    dominant = power_iteration(f, x)
    # Shift by the dominant magnitude so the other end of the spectrum dominates.
    other = power_iteration(f, x, shift=abs(dominant) if dominant > 0 else -abs(dominant))
    return max(dominant, other), min(dominant, other)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--lam", type=float, default=2.0, help="lambda on the mean support loss (default: 2.0)")
    parser.add_argument("--net", nargs="+", default=["strided", "maxpool"], choices=["strided", "maxpool"])
    parser.add_argument("--init", nargs="+", default=["torch", "official"], choices=["torch", "official"])
    args = parser.parse_args()
    print(f"{'net':<8} {'init':<9} {'task':>4} {'point':>6} {'L_train':>8} {'lambda_max':>11} {'lambda_min':>11}")
    for net in args.net:
        for init in args.init:
            bench = make_benchmark("omniglot", 5, 1, 5, args.data_root, net=net, init=init)
            support, _ = batch_to_tasks(bench.sampler("train", 0).sample(args.tasks), "cpu")
            torch.manual_seed(0)
            model = bench.build_model()
            loss = bench.task_loss(model)
            theta = {k: v.detach() for k, v in model.named_parameters()}
            problem = imaml_problem(loss, args.lam, GradientDescent(lr=0.1, steps=16))
            for i in range(args.tasks):
                s = (support[0][i], support[1][i])
                f = lambda p: loss(p, s)
                for point, x in (("theta", theta), ("phi*", problem.solve_inner(theta, s, detach=True))):
                    hi, lo = extremes(f, x)
                    print(f"{net:<8} {init:<9} {i:>4} {point:>6} {float(f(x)):>8.3f} {hi:>11.3f} {lo:>11.3f}",
                          flush=True)


if __name__ == "__main__":
    main()
