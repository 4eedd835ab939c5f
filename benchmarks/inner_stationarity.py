"""How well does gradient descent solve iMAML's inner problem on 5-way 1-shot Omniglot?

For conv4 at its initialization (PyTorch's default), prints for a few tasks the gradient norm
of G(phi) = L_train(phi) + (lam/2)||phi - theta||^2 at phi_0 = theta and after the inner
solver, and G itself: the implicit meta-gradient assumes grad G(phi) = 0.

Run: python benchmarks/inner_stationarity.py --data-root ../shared/data/omniglot
"""

from __future__ import annotations

import argparse

import torch
from torch.func import grad

from bilevel import GradientDescent, imaml_problem
from bilevel.fewshot import make_benchmark
from bilevel.fewshot.benchmarks import batch_to_tasks
from bilevel.tree import tree_norm


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--lam", type=float, default=2.0)
    args = parser.parse_args()
    bench = make_benchmark("omniglot", 5, 1, 5, args.data_root)
    support, _ = batch_to_tasks(bench.sampler("train", 0).sample(args.tasks), "cpu")
    torch.manual_seed(0)
    model = bench.build_model()
    loss = bench.task_loss(model)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    print(f"{'lr':>5} {'steps':>5} {'task':>4} {'|grad G(theta)|':>16} {'|grad G(phi)|':>14} {'G(theta)':>9} {'G(phi)':>8}")
    for lr, steps in [(0.1, 16), (0.02, 16), (0.02, 100)]:
        problem = imaml_problem(loss, args.lam, GradientDescent(lr=lr, steps=steps))
        for i in range(args.tasks):
            s = (support[0][i], support[1][i])
            G = problem.objective(theta, s)
            phi = problem.solve_inner(theta, s, detach=True)
            print(f"{lr:>5} {steps:>5} {i:>4} {float(tree_norm(grad(G)(theta))):>16.3f} "
                  f"{float(tree_norm(grad(G)(phi))):>14.3f} {float(G(theta)):>9.3f} {float(G(phi)):>8.3f}")


if __name__ == "__main__":
    main()
