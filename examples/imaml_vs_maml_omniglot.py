"""Tutorial 3: iMAML against MAML on Omniglot, from Python.

The few-shot layer (``bilevel.fewshot``) turns a benchmark and a method name into a bilevel
problem, an inner solver and a backend:

    maml      inner: L_support(phi) from phi_0 = theta, GD steps        backend Unrolled()
    imaml-gd  inner: L_support(phi) + (lam/2)||phi - theta||^2, GD    backend Implicit(CG(maxiter=5))

Part 1 computes one meta-gradient of each method by hand, to show the pieces: the benchmark
hands out tasks and builds the network, ``build_method`` makes the problem and backend, and
``batched_hypergrad`` is the meta-gradient of a meta-batch. Part 2 runs the library's
trainer (``train``, then ``evaluate`` on test tasks) for both methods and prints a table.

The same from the command line:

    bilevel train --benchmark omniglot --ways 5 --shots 1 --method imaml-gd --iterations 100 --meta-batch 4 \\
        --val-every 25 --val-tasks 50 --data-root ../shared/data/omniglot --out runs/tutorial-omniglot/imaml-gd
    bilevel train --benchmark omniglot --ways 5 --shots 1 --method maml --iterations 100 --meta-batch 4 \\
        --val-every 25 --val-tasks 50 --data-root ../shared/data/omniglot --out runs/tutorial-omniglot/maml
    bilevel evaluate runs/tutorial-omniglot/imaml-gd --tasks 200
    bilevel evaluate runs/tutorial-omniglot/maml --tasks 200

or both at once: ``bilevel compare --benchmark omniglot --methods maml,imaml-gd ...``.

The Omniglot archives are read from ``--data-root`` (else ``$BILEVEL_DATA``, else
``~/.cache/bilevel``, and downloaded there when missing and online).

Measured (the default run below: 100 iterations x 4 tasks per method, 10 minutes of CPU on one
thread): test accuracy over 200 tasks 0.729 +- 0.017 for imaml-gd and 0.741 +- 0.017 for maml,
well below the papers' 99% after 20000 x 32 tasks (docs/reproduction.md has long runs).

Run:   python examples/imaml_vs_maml_omniglot.py --data-root ../shared/data/omniglot
       (--fast: 2 iterations of 2 tasks, 3-way, for the tests)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bilevel import batched_hypergrad
from bilevel.fewshot import TrainConfig, build_method, evaluate, make_benchmark, resolve, train


def one_meta_gradient(config: TrainConfig, tasks: int) -> dict:
    """One meta-gradient by hand: what each iteration of ``train`` computes before its Adam step."""
    config = resolve(config)
    torch.manual_seed(config.seed)
    benchmark = make_benchmark("omniglot", config.ways, config.shots, config.queries, config.data_root,
                               net=config.net, init=config.init)
    model = benchmark.build_model()                       # Conv4: 4 strided conv blocks + linear head
    method = build_method(config, benchmark.task_loss(model))  # problem, inner solver, backend
    batch = benchmark.sampler("train", config.seed).sample(tasks)  # tasks stacked along dimension 0
    support, query = (batch.support_x, batch.support_y), (batch.query_x, batch.query_y)
    theta = dict(model.named_parameters())
    start = time.perf_counter()
    # vectorize=False: on a CPU a loop over conv-net tasks is faster than one vmap (the trainer's default).
    result = batched_hypergrad(method.problem, theta, support, query, backend=method.backend, vectorize=False)
    seconds = time.perf_counter() - start
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in result.grad.values())))
    print(f"  {config.method:<9} {type(method.backend).__name__:<9} query loss {float(result.loss):.4f}  "
          f"meta-gradient norm {norm:.4f}  ({seconds:.2f} s for {tasks} tasks)")
    return {"loss": float(result.loss), "grad_norm": norm, "seconds": seconds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder with images_background.zip and images_evaluation.zip")
    parser.add_argument("--methods", default="imaml-gd,maml", help="comma-separated (default: imaml-gd,maml)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--eval-tasks", type=int, default=200)
    parser.add_argument("--out", default="runs/tutorial-omniglot", help="one run folder per method inside")
    parser.add_argument("--fast", action="store_true", help="3-way, 2 iterations of 2 tasks, 2 inner steps")
    args = parser.parse_args(argv)

    common = dict(benchmark="omniglot", ways=args.ways, shots=args.shots, data_root=args.data_root,
                  iterations=args.iterations, meta_batch=args.meta_batch, val_every=max(1, args.iterations // 4),
                  val_tasks=50, eval_tasks=args.eval_tasks)
    if args.fast:
        common.update(ways=3, queries=2, iterations=2, meta_batch=2, inner_steps=2, val_every=2, val_tasks=2,
                      eval_tasks=4)
    methods = args.methods.split(",")

    print("Part 1: one meta-gradient of each method, by hand")
    by_hand = {m: one_meta_gradient(TrainConfig(method=m, **common), common["meta_batch"]) for m in methods}

    print("\nPart 2: meta-train and evaluate with the library's trainer")
    results = {}
    for m in methods:
        run_dir = Path(args.out) / m
        summary = train(TrainConfig(method=m, **common), run_dir, progress=not args.fast)
        test = evaluate(run_dir, tasks=common["eval_tasks"], progress=False)
        results[m] = {**test, "seconds_per_iteration": summary["seconds_per_iteration"],
                      "best_val": summary["best_val"]}
    print(f"\n{common['ways']}-way {common['shots']}-shot Omniglot, {common['iterations']} iterations x "
          f"{common['meta_batch']} tasks, test accuracy over {common['eval_tasks']} tasks:")
    print(f"{'method':<10} {'test accuracy':>20} {'best val':>9} {'s/iteration':>12}")
    for m, r in results.items():
        per_it = r["seconds_per_iteration"]
        print(f"{m:<10} {r['mean']:>11.3f} +- {r['ci95']:.3f} {r['best_val']:>9.3f} "
              f"{per_it if per_it is not None else float('nan'):>12.2f}")
    return {"by_hand": by_hand, "results": results}


if __name__ == "__main__":
    main()
