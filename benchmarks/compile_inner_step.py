"""Does torch.compile pay for the meta-learning step on a CPU? One Omniglot 5-way 1-shot task,
max-pool conv4, one thread: the time of iMAML's inner solve (16 GD steps on the proximal
problem) and of the whole implicit meta-gradient (CG 5), eager against ``torch.compile`` of the
task loss. Prints compile time, steady-state medians, and whether the answers agree.

Run: python benchmarks/compile_inner_step.py --data-root ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bilevel import CG, GradientDescent, Implicit, hypergrad, imaml_problem
from bilevel.fewshot import make_benchmark
from bilevel.fewshot.benchmarks import batch_to_tasks


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = make_benchmark("omniglot", 5, 1, 15, args.data_root, net="maxpool")
    support, query = batch_to_tasks(bench.sampler("train", 0).sample(1), "cpu")
    s, q = (support[0][0], support[1][0]), (query[0][0], query[1][0])
    torch.manual_seed(0)
    model = bench.build_model()
    theta = {k: v.detach() for k, v in model.named_parameters()}
    eager_loss = bench.task_loss(model)
    compiled_loss = torch.compile(eager_loss, dynamic=False)
    backend = Implicit(CG(maxiter=5, tol=0.0))
    results = {}
    for name, loss in (("eager", eager_loss), ("compiled", compiled_loss)):
        problem = imaml_problem(loss, 0.4, GradientDescent(lr=0.1, steps=16))
        inner = lambda: problem.solve_inner(theta, s, detach=True)
        t0 = time.perf_counter()
        try:
            inner()
            first_inner = time.perf_counter() - t0
            t_inner, phi = timed(inner, args.repeats)
        except Exception as exc:  # report, do not hide
            print(f"{name}: inner solve failed: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        meta = lambda: hypergrad(problem, theta, s, q, backend=backend)
        try:
            meta()
            t_meta, res = timed(meta, args.repeats)
        except Exception as exc:
            print(f"{name}: meta-gradient failed: {type(exc).__name__}: {str(exc)[:200]}")
            t_meta, res = None, None
        results[name] = (first_inner, t_inner, t_meta, phi, res)
        print(f"{name}: first inner solve {first_inner:.2f} s (compile included), inner solve {t_inner:.4f} s, "
              f"meta-gradient {'failed' if t_meta is None else f'{t_meta:.4f} s'}", flush=True)
    if len(results) == 2:
        a, b = results["eager"], results["compiled"]
        print("inner solution max difference:", max(float((a[3][k] - b[3][k]).abs().max()) for k in a[3]))
        print(f"compiled / eager inner solve: {b[1] / a[1]:.2f}")
        if a[4] is not None and b[4] is not None:
            print("meta-gradient max difference:", max(float((a[4].grad[k] - b[4].grad[k]).abs().max()) for k in a[4].grad))
            print(f"compiled / eager meta-gradient: {b[2] / a[2]:.2f}")


if __name__ == "__main__":
    main()
