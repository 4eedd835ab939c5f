"""How well do affordable inner solvers solve iMAML's proximal problem on sinusoid regression?

For 4 validation tasks, prints ``||grad G||`` at ``phi_0 = theta`` and after each solver, with
``G(phi) = L_train(phi) + (lam/2)||phi - theta||^2`` on the mean squared error of 10 support
points. ``theta`` is the meta-learned MLP of a run (``--checkpoint``, e.g. a MAML run of the
main job), else the random initialization. The implicit meta-gradient assumes
``grad G(phi) = 0``.

``--long`` adds why no solver gets far: 4000 GD steps of lr 0.005 (lambda 2), printing
``||grad G||`` and ``G`` along the way and, at the end, the first-layer pre-activation
closest to zero over the support points. A minimizer where a ReLU sits at its kink on a
support point is a point where ``G`` is not differentiable: ``G`` stops decreasing while
``||grad G||`` stays large, and the implicit function theorem does not apply there.

``--net`` chooses the regressor (by default the checkpoint's run's): ``relu`` (Finn et al.'s)
or ``softplus`` (the main job's).

Run: python benchmarks/sinusoid_stationarity.py --checkpoint runs/compare-sinusoid/maml/checkpoint.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.func import grad

from bilevel import Adam, GradientDescent, Momentum, NewtonCG, imaml_problem
from bilevel.fewshot import SinusoidMLP, make_benchmark, resolve
from bilevel.fewshot.config import load_config
from bilevel.fewshot.models import SINUSOID_NETS
from bilevel.fewshot.benchmarks import SinusoidBenchmark, batch_to_tasks
from bilevel.fewshot.checkpoint import load_checkpoint
from bilevel.tree import tree_norm

SOLVERS = {
    "GD lr 0.02 x 25": GradientDescent(0.02, 25),
    "GD lr 0.005 x 100": GradientDescent(0.005, 100),
    "GD lr 0.002 x 200": GradientDescent(0.002, 200),
    "momentum 0.9, lr 0.002 x 100": Momentum(0.002, 100, 0.9),
    "Adam lr 0.01 x 50": Adam(0.01, 50),
    "Newton-CG 5 x 5 CG": NewtonCG(5, 5, hvp_mode="reverse-over-reverse"),
    "Newton-CG 10 x 10 CG": NewtonCG(10, 10, hvp_mode="reverse-over-reverse"),
    "Newton-CG 10 x 20 CG": NewtonCG(10, 20, hvp_mode="reverse-over-reverse"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a run's checkpoint.pt whose model is theta")
    parser.add_argument("--lam", type=float, nargs="+", default=[0.5, 2.0, 10.0])
    parser.add_argument("--long", action="store_true", help="also run 4000 GD steps and report ReLU kinks")
    parser.add_argument("--net", choices=SINUSOID_NETS,
                        help="the regressor's activation (default: the checkpoint's run's, else the benchmark's)")
    args = parser.parse_args()
    if args.net is None:
        config = Path(args.checkpoint).parent / "config.json" if args.checkpoint else None
        args.net = resolve(load_config(config)).net if config and config.exists() else SinusoidBenchmark.default_net
    torch.manual_seed(0)
    bench = make_benchmark("sinusoid", 1, 10, 10, net=args.net)
    model = SinusoidMLP(activation=args.net)
    if args.checkpoint:
        model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    loss = bench.task_loss(model)
    theta = {k: v.detach() for k, v in model.named_parameters()}
    support, _ = batch_to_tasks(bench.sampler("val", 0).sample(4), "cpu")
    print("lambda (mean loss) | solver | ||grad G(theta)|| -> ||grad G(phi)|| for 4 tasks")
    for lam in args.lam:
        for name, solver in SOLVERS.items():
            problem = imaml_problem(loss, lam, solver)
            cells = []
            for i in range(4):
                s = (support[0][i], support[1][i])
                G = problem.objective(theta, s)
                phi = problem.solve_inner(theta, s, detach=True)
                cells.append(f"{float(tree_norm(grad(G)(theta))):.2f} -> {float(tree_norm(grad(G)(phi))):.1e}")
            print(f"{lam:g} | {name} | " + " | ".join(cells), flush=True)
    if args.long:
        long_gd(loss, theta, support)


def long_gd(loss, theta, support, lam=2.0, lr=0.005, checkpoints=(25, 100, 400, 1000, 2000, 4000)):
    print(f"\nlambda {lam:g}, GD lr {lr:g}: step:||grad G||/G ... | min over support points of |first-layer pre-activation|")
    for i in range(4):
        s = (support[0][i], support[1][i])
        G = imaml_problem(loss, lam, GradientDescent(lr, 1)).objective(theta, s)
        phi, cells = dict(theta), []
        for t in range(1, checkpoints[-1] + 1):
            g = grad(G)(phi)
            phi = {k: phi[k] - lr * g[k] for k in phi}
            if t in checkpoints:
                cells.append(f"{t}:{float(tree_norm(grad(G)(phi))):.2f}/{float(G(phi)):.5f}")
        pre = s[0] @ phi["net.0.weight"].T + phi["net.0.bias"]
        print(f"task {i}: " + " ".join(cells) + f" | {float(pre.abs().min()):.1e}", flush=True)


if __name__ == "__main__":
    main()
