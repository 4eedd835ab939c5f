"""The cost of torch.func's transform in a detached inner solve: 16 GD steps of iMAML's proximal
problem on one Omniglot 5-way 1-shot task (strided conv4, one thread), through
``run_inner(detach=True)`` (plain autograd since this change) against the same steps taken with
``torch.func.grad_and_value`` (as before). Same numbers; alternating runs; medians.

Run: python benchmarks/inner_step_autograd.py --data-root ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import grad_and_value

from bilevel import GradientDescent, run_inner
from bilevel.fewshot import make_benchmark
from bilevel.fewshot.benchmarks import batch_to_tasks
from bilevel.meta import proximal_penalty


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = make_benchmark("omniglot", 5, 1, 5, args.data_root)
    (xs, ys), _ = batch_to_tasks(bench.sampler("train", 0).sample(1), "cpu")
    torch.manual_seed(0)
    model = bench.build_model()
    loss = bench.task_loss(model)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    f = lambda p: loss(p, (xs[0], ys[0])) + 0.2 * proximal_penalty(p, theta)
    solver = GradientDescent(lr=0.1, steps=16)

    def with_autograd():
        return run_inner(solver, f, dict(theta), detach=True)[0]

    def with_func():
        phi = dict(theta)
        for _ in range(solver.steps):
            g, _ = grad_and_value(f)(phi)
            phi = {k: (phi[k] - solver.lr * g[k]).detach() for k in phi}
        return phi

    a, b = with_autograd(), with_func()
    print("largest difference:", max(float((a[k] - b[k]).abs().max()) for k in a))
    times = {"autograd": [], "torch.func": []}
    for _ in range(args.repeats):
        for name, fn in (("autograd", with_autograd), ("torch.func", with_func)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"16 GD steps: autograd {med['autograd']:.4f} s, torch.func {med['torch.func']:.4f} s, "
          f"torch.func / autograd = {med['torch.func'] / med['autograd']:.2f}")


if __name__ == "__main__":
    main()
