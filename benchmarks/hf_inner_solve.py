"""How well each inner solver solves iMAML's proximal problem on real Omniglot tasks.

For theta at PyTorch's initialization and at trained checkpoints (``--checkpoint``), runs each
inner solver on ``G(phi) = L_train(phi) + (lam/2)||phi - theta||^2`` for ``--tasks`` validation
tasks and prints the mean inner stationarity ``||grad G||``, ``G``, support and query
accuracy. The implicit meta-gradient assumes ``grad G = 0``.

Run: python benchmarks/hf_inner_solve.py --data-root ../shared/data/omniglot \
        --checkpoint runs/omniglot-5w1s/imaml-gd/checkpoint.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.func import grad

from bilevel import GradientDescent, NewtonCG, make_ggn
from bilevel.fewshot import make_benchmark
from bilevel.fewshot.benchmarks import batch_to_tasks
from bilevel.fewshot.checkpoint import load_checkpoint
from bilevel.solvers.inner import run_inner
from bilevel.meta import proximal_penalty
from bilevel.tree import tree_dot


@dataclasses.dataclass(frozen=True)
class GaussNewtonCG(NewtonCG):
    """NewtonCG with ``J^T H_loss J + lam I`` in place of the Hessian of ``G``."""

    ggn_at: object = None  # phi -> matvec

    def matvec(self, f, phi):
        return self.ggn_at(phi)


def solvers(lam, outputs, criterion, support):
    x, y = support
    ggn = lambda phi: make_ggn(lambda p: outputs(p, x), lambda o: criterion(o, y), phi, ridge=lam)
    return {
        "gd 16 x lr 0.1": GradientDescent(lr=0.1, steps=16),
        "gd 64 x lr 0.1": GradientDescent(lr=0.1, steps=64),
        "hf hessian 5x5": NewtonCG(steps=5, cg_steps=5),
        "hf hessian 5x5 damping 1": NewtonCG(steps=5, cg_steps=5, damping=1.0),
        "hf hessian 10x5": NewtonCG(steps=10, cg_steps=5),
        "hf gauss-newton 5x5": GaussNewtonCG(steps=5, cg_steps=5, ggn_at=ggn),
        "hf gauss-newton 10x5": GaussNewtonCG(steps=10, cg_steps=5, ggn_at=ggn),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--lam", type=float, default=0.4, help="lambda on the mean support loss (default 0.4)")
    parser.add_argument("--checkpoint", nargs="*", default=[])
    args = parser.parse_args()
    bench = make_benchmark("omniglot", 5, 1, 5, args.data_root)
    support, query = batch_to_tasks(bench.sampler("val", 0).sample(args.tasks), "cpu")
    torch.manual_seed(0)
    model = bench.build_model()
    loss, outputs = bench.task_loss(model), bench.outputs(model)
    thetas = {"init": {k: v.detach() for k, v in model.named_parameters()}}
    for path in args.checkpoint:
        state = load_checkpoint(path)["model"]
        thetas[path] = {k: state[k] for k in thetas["init"]}
    print(f"{'theta':<45} {'solver':<26} {'|grad G|':>9} {'G':>7} {'sup acc':>8} {'qry acc':>8} {'s/task':>7}")
    for name, theta in thetas.items():
        rows = {}
        for i in range(args.tasks):
            s = (support[0][i], support[1][i])
            q = (query[0][i], query[1][i])
            G = lambda p: loss(p, s) + args.lam * proximal_penalty(p, theta)
            for label, solver in solvers(args.lam, outputs, bench.criterion, s).items():
                t0 = time.perf_counter()
                phi, _ = run_inner(solver, G, dict(theta), detach=True)
                dt = time.perf_counter() - t0
                g = grad(G)(phi)
                r = rows.setdefault(label, [0.0] * 5)
                for j, v in enumerate((float(tree_dot(g, g).sqrt()), float(G(phi)),
                                       float(bench.score(model, phi, s)), float(bench.score(model, phi, q)), dt)):
                    r[j] += v / args.tasks
        for label, r in rows.items():
            print(f"{name[-45:]:<45} {label:<26} {r[0]:>9.4f} {r[1]:>7.4f} {r[2]:>8.3f} {r[3]:>8.3f} {r[4]:>7.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
