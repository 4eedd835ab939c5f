"""The test MSE of predicting 0 on sinusoid regression: the floor a method must beat to have learned.

Scores the constant prediction 0 on the query sets of the first 600 test tasks of each of the
main job's seeds (the same tasks its runs are evaluated on), with the 95% interval over tasks,
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
        _, (x, y) = batch_to_tasks(bench.sampler("test", seed).sample(600), "cpu")
        mean, ci = mean_ci95((y ** 2).mean(dim=(1, 2)))
        print(f"seed {seed}: zero predictor test MSE {mean:.3f} +- {ci:.3f} (95% CI over 600 tasks)")
    a, b = 0.1, 5.0
    print(f"closed form E[A^2]/2 with A ~ U[{a}, {b}]: {(b ** 3 - a ** 3) / (3 * (b - a)) / 2:.3f}")


if __name__ == "__main__":
    main()
