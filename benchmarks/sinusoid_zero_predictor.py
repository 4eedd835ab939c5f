"""The test MSE of predicting 0 on sinusoid regression: the floor a method must beat to have learned.

Scores the constant prediction 0 on the query sets of the 600 test tasks of each of the main
job's seeds, drawn as ``bilevel evaluate`` draws them (24 meta-batches of 25: the same tasks), with the 95% interval over tasks,
and the closed form E[A^2] / 2 for amplitudes A ~ U[0.1, 5.0].

Run: python benchmarks/sinusoid_zero_predictor.py > docs/results/sinusoid/zero-predictor.txt
"""

from __future__ import annotations

import torch

from bilevel.fewshot import make_benchmark
from bilevel.fewshot.benchmarks import batch_to_tasks
from bilevel.fewshot.trainer import mean_ci95


def main():
    bench = make_benchmark("sinusoid", 1, 10, 10)
    for seed in (0, 1, 2):
        sampler = bench.sampler("test", seed)
        # Drawn as evaluation draws them (meta-batches of 25): a single draw of 600 gives other tasks.
        queries = [batch_to_tasks(sampler.sample(25), "cpu")[1][1] for _ in range(600 // 25)]
        mean, ci = mean_ci95(torch.cat([(y ** 2).mean(dim=(1, 2)) for y in queries]))
        print(f"seed {seed}: zero predictor test MSE {mean:.3f} +- {ci:.3f} (95% CI over 600 tasks)")
    a, b = 0.1, 5.0
    print(f"closed form E[A^2]/2 with A ~ U[{a}, {b}]: {(b ** 3 - a ** 3) / (3 * (b - a)) / 2:.3f}")


if __name__ == "__main__":
    main()
