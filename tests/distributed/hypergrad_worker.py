"""Run by tests/test_distributed.py under torchrun: distributed_hypergrad on 5 ridge-like tasks,
saved by rank 0 beside the single-process answer; then, given ``train ARGS...``, the same
processes run ``bilevel train ARGS`` (one launch for both checks: each launch costs seconds).

Usage: hypergrad_worker.py OUT [FAIL_RANK] [train ARGS...]"""

import sys

import torch

from bilevel import CG, GradientDescent, Implicit, batched_hypergrad, imaml_problem
from bilevel.distributed import distributed_hypergrad, init_world


def main():
    argv = sys.argv[1:]
    train_args = argv[argv.index("train"):] if "train" in argv else None
    argv = argv[:argv.index("train")] if train_args else argv
    check_hypergrad(*argv)
    if train_args:
        from bilevel.cli import main as bilevel_main

        sys.exit(bilevel_main(train_args))


def check_hypergrad(out, fail_rank=None):
    torch.manual_seed(0)
    tasks, d = 5, 4
    A = torch.randn(tasks, 6, d, dtype=torch.float64)
    b = torch.randn(tasks, 6, dtype=torch.float64)
    problem = imaml_problem(lambda p, batch: ((batch[0] @ p["w"] - batch[1]) ** 2).mean(), 1.0,
                            GradientDescent(lr=0.1, steps=20))
    theta = {"w": torch.randn(d, dtype=torch.float64)}
    backend = Implicit(CG(maxiter=4))
    world = init_world(torch.device("cpu"))
    if fail_rank is not None and world.rank == int(fail_rank):
        raise RuntimeError(f"rank {world.rank} fails on purpose")
    result = distributed_hypergrad(problem, theta, (A, b), (A, b), backend=backend, world=world)
    if world.is_main:
        single = batched_hypergrad(problem, theta, (A, b), (A, b), backend=backend)
        torch.save({"distributed": result.grad["w"], "single": single.grad["w"], "loss": (result.loss, single.loss),
                    "steps": (result.stats["steps"], single.stats["steps"]), "world": world.size}, out)


if __name__ == "__main__":
    main()
