"""Choose each method's inner learning rate, inner steps and lambda for the sinusoid main job.

Every method gets the same budget as the main job (500 meta-iterations of 25 tasks) for each
point of a small grid, and is scored on 100 validation tasks (never the test tasks); the best
point per method, and the chosen one (among the points that fit the main job's 3 minutes, the
cheapest in training time, within 20%, whose validation MSE lies within the best one's 95%
interval; for iMAML, among the points whose inner problem was solved, ``||grad G|| <=
UNSOLVED_INNER``), are printed and written to ``OUT/tuning.json`` with every
run's validation MSE and, for iMAML, the inner stationarity ``||grad G(phi)||`` averaged over
the last 100 iterations. The chosen values are the sinusoid defaults in
``bilevel/fewshot/config.py``. Finished runs in ``runs/sinusoid-tuning-runs`` are reused.

Run (one thread; each grid 15-30 minutes on a quiet core), once per regressor (iMAML-GD on softplus
with --seeds 3, docs/results/sinusoid-tuning-softplus/tune-imaml-gd.log):
    OMP_NUM_THREADS=1 python benchmarks/tune_sinusoid.py --net softplus \
        --methods maml,fomaml,reptile,imaml-gd,imaml-hf --out docs/results/sinusoid-tuning-softplus
    OMP_NUM_THREADS=1 python benchmarks/tune_sinusoid.py --net relu --out docs/results/sinusoid-tuning

The softplus runs are named ``softplus-...``, the ReLU ones have no prefix.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

from bilevel import NonFiniteError
from bilevel.fewshot import TrainConfig, resolve, train
from bilevel.fewshot.config import load_config
from bilevel.fewshot.benchmarks import SinusoidBenchmark
from bilevel.fewshot.compare import UNSOLVED_INNER, late_mean
from bilevel.fewshot.models import SINUSOID_NETS
from bilevel.fewshot.seeds import over_seeds

GRID = {
    # Every grid states the outer learning rate: the method tables' defaults (1e-2 for some since the
    # outer grids) must not leak into a point (a run is reused only if its config matches, below).
    "maml": dict(inner_lr=[0.01, 0.02, 0.05], inner_steps=[1, 5, 10], outer_lr=[0.001]),
    # Re-tuned over 3 seeds on softplus with a wider grid (the 3-seed main job's first choice, 1 step of
    # lr 0.02, averaged 3.15 test MSE); docs/results/sinusoid-tuning (ReLU) used lr {0.01, 0.02, 0.05}.
    # The outer learning rate too: at Adam's 1e-3 every point ends between 2.9 and 3.4 on validation.
    "fomaml": [dict(inner_lr=[0.005, 0.01, 0.02], inner_steps=[1, 5, 10, 20], outer_lr=[0.001]),
               dict(inner_lr=[0.01], inner_steps=[1, 5, 10], outer_lr=[0.003, 0.01])],
    "reptile": dict(inner_lr=[0.01, 0.02, 0.05], inner_steps=[1, 5, 10], outer_lr=[0.001]),
    # iMAML's inner problem is solved, not just stepped: more steps, and lambda on the mean loss.
    # A list of grids is their union: plain gradient descent, then the heavy ball and Nesterov's
    # momentum, which reach stationarity in the same 25 steps at lambda 10 (stationarity.txt).
    "imaml-gd": [dict(lam=[0.5, 2.0, 10.0], inner_lr=[0.02, 0.05], inner_steps=[25], curvature=["hessian"],
                      inner_momentum=[0.0], outer_lr=[0.001]),
                 dict(lam=[2.0, 10.0], inner_lr=[0.005, 0.01], inner_steps=[25], inner_momentum=[0.5],
                      inner_nesterov=[False], outer_lr=[0.001]),
                 dict(lam=[2.0, 10.0], inner_lr=[0.005, 0.01], inner_steps=[25], inner_momentum=[0.7],
                      inner_nesterov=[True], outer_lr=[0.001]),
                 # Added after a 3-seed main job: Nesterov at lr 0.005 left seeds 1 and 2 unsolved late in
                 # training (||grad G|| 2-3) as the meta-learned net sharpened; the heavy ball's stable
                 # step range is wider (lr * h < 2 (1 + m) against 2 (1 + m) / (1 + 2 m)).
                 dict(lam=[10.0], inner_lr=[0.005, 0.006], inner_steps=[25], inner_momentum=[0.6],
                      inner_nesterov=[False], outer_lr=[0.001]),
                 dict(lam=[10.0], inner_lr=[0.004], inner_steps=[25], inner_momentum=[0.7], inner_nesterov=[True],
                      outer_lr=[0.001])],
    "imaml-gd-ggn": dict(lam=[0.5, 2.0, 10.0], inner_lr=[0.02], inner_steps=[25], curvature=["gauss-newton"],
                         inner_momentum=[0.0], outer_lr=[0.001]),
    "imaml-hf": dict(lam=[0.5, 2.0, 10.0], hf_steps=[2, 5, 10], outer_lr=[0.001]),
    # The outer (Adam) learning rate at each method's chosen inner point, over 3 seeds: FOMAML's grid
    # found 1e-3 far too small for 500 iterations (validation 0.79 at 0.01 against 2.9-3.1 at 1e-3),
    # so every method gets the same three rates.
    "maml-outer": dict(inner_lr=[0.01], inner_steps=[5], outer_lr=[0.001, 0.003, 0.01]),
    "reptile-outer": dict(inner_lr=[0.01], inner_steps=[10], outer_lr=[0.001, 0.003, 0.01]),
    "imaml-gd-outer": dict(lam=[10.0], inner_lr=[0.005], inner_steps=[25], inner_momentum=[0.6],
                           inner_nesterov=[False], outer_lr=[0.001, 0.003, 0.01]),
    "imaml-hf-outer": dict(lam=[10.0], hf_steps=[5], outer_lr=[0.001, 0.003, 0.01]),
}
# A grid key's method: the key without its variant's suffix.
VARIANTS = ("-ggn", "-outer")


def method_of(key: str) -> str:
    for suffix in VARIANTS:
        key = key.removesuffix(suffix)
    return key
# Points run for the record but never chosen: they take the main job past its 3 minutes.
# iMAML-HF with 10 Newton steps trains at 0.48-0.52 s per iteration on one core on the softplus
# net (docs/reproduction.md), 4.0-4.3 minutes for the 500 iterations alone.
OVER_BUDGET = {"imaml-hf": lambda point: point["hf_steps"] >= 10}
# The implicit meta-gradient assumes the inner problem solved: an iMAML point whose inner
# stationarity ||grad G|| (mean of the last 100 iterations) is above this is never chosen.
STATIONARY = {"imaml-gd": UNSOLVED_INNER, "imaml-hf": UNSOLVED_INNER, "imaml-gd-outer": UNSOLVED_INNER,
              "imaml-hf-outer": UNSOLVED_INNER}


def points(grid) -> list[dict]:
    """Every point of a grid (a dict of value lists) or of a list of grids (their union)."""
    grids = grid if isinstance(grid, list) else [grid]
    return [dict(zip(g, values)) for g in grids for values in itertools.product(*g.values())]


def run_name(net: str, method: str, point: dict) -> str:
    prefix = [net] if net != "relu" else []  # the ReLU runs keep their old names
    words = []
    for k, v in point.items():
        if k in ("curvature", "inner_nesterov") or (k == "inner_momentum" and not v) or (k == "outer_lr" and v == 0.001):
            continue  # named by a suffix, or the default (plain gradient descent): the old names
        words.append(f"{k}{v}")
    return "-".join(prefix + [method_of(method)] + words
                    + (["nesterov"] if point.get("inner_nesterov") else [])
                    + (["ggn"] if point.get("curvature") == "gauss-newton" else []))


def train_seed(args, method: str, point: dict, seed: int) -> dict:
    """One training run of ``point`` (reused when finished): its validation MSE, the task
    interval, training seconds and late inner stationarity, or ``{"diverged": message}``."""
    name = run_name(args.net, method, point) + (f"-seed{seed}" if seed else "")  # seed 0 keeps the old names
    run_dir = Path("runs/sinusoid-tuning-runs") / name
    config = resolve(TrainConfig(benchmark="sinusoid", method=method_of(method), lam_scale="mean",
                                 iterations=args.iterations, net=args.net, val_every=args.iterations, seed=seed,
                                 **point))
    if (run_dir / "summary.json").exists():  # finished earlier: reuse it, if it ran this very point
        saved = resolve(load_config(run_dir / "config.json"))
        differ = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(config, f.name)]
        if differ:
            raise SystemExit(f"tune_sinusoid: {run_dir} was trained with other settings ({', '.join(differ)}); "
                             "move it away to rerun this point")
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        try:
            summary = train(config, run_dir, progress=False)
        except NonFiniteError as exc:  # the inner loop diverged: this point is out
            return {"diverged": str(exc)}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"val_mse": summary["best_val"], "val_ci95": [r["ci95"] for r in records if r["split"] == "val"][-1],
            "train_seconds": round(summary["seconds_per_iteration"] * summary["iterations"], 1),
            "inner_grad_norm": late_mean(run_dir, "stats_inner_grad_norm")}


def score_point(args, method: str, point: dict) -> dict:
    """A grid point over ``args.seeds`` seeds: the mean validation MSE with its interval over
    seeds (over the validation tasks for one seed), and the worst seed's inner stationarity."""
    limit = STATIONARY.get(method)
    seeds = []
    for seed in range(args.seeds):
        result = train_seed(args, method, point, seed)
        seeds.append(result)
        if "diverged" in result:
            return {**point, "val_mse": float("inf"), "diverged": result["diverged"], "seeds": seed + 1}
        if limit is not None and (result["inner_grad_norm"] is None or result["inner_grad_norm"] > limit):
            break  # not solved with this seed: no later seed can make the point eligible
    if len(seeds) == 1:
        return {**point, **seeds[0], "seeds": 1}
    stats = over_seeds([r["val_mse"] for r in seeds])
    norms = [r["inner_grad_norm"] for r in seeds]
    return {**point, "val_mse": stats.mean, "val_ci95": stats.half_width, "val_mse_per_seed": [r["val_mse"] for r in seeds],
            "train_seconds": round(sum(r["train_seconds"] for r in seeds) / len(seeds), 1),
            "inner_grad_norm": None if None in norms else max(norms), "inner_grad_norm_per_seed": norms,
            "seeds": len(seeds)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/sinusoid-tuning")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--methods", default=",".join(GRID))
    parser.add_argument("--net", default=SinusoidBenchmark.default_net, choices=SINUSOID_NETS,
                        help="the regressor's activation (default: %(default)s, the main job's)")
    parser.add_argument("--seeds", type=lambda t: max(1, int(t)) if int(t) >= 1 else parser.error(
                            f"--seeds must be a positive integer, got {t}"), default=1,
                        help="training seeds per point (default: 1); an iMAML point trains seeds after the first "
                             "only if the first left its inner problem solved, and counts as solved only if every "
                             "seed did")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The methods not rerun keep their earlier results.
    results = json.loads((out / "tuning.json").read_text()) if (out / "tuning.json").exists() else {}
    for method in args.methods.split(","):
        runs = []
        for point in points(GRID[method]):
            row = score_point(args, method, point)
            runs.append(row)
            print(method, row, flush=True)
        over = OVER_BUDGET.get(method, lambda point: False)
        for r in runs:
            r["over_budget"] = over(r)
        best = min(runs, key=lambda r: r["val_mse"])
        # Among the points within the budget, the cheapest whose validation MSE is within the
        # best one's 95% interval: the grid's differences inside that interval are noise, its
        # differences in time are not. Times within 20% of the cheapest count as equal (they
        # were measured beside other jobs).
        limit = STATIONARY.get(method)
        for r in runs:
            if limit is not None:
                r["stationary"] = r.get("inner_grad_norm") is not None and r["inner_grad_norm"] <= limit
        eligible = [r for r in runs if not r["over_budget"] and "diverged" not in r and r.get("stationary", True)]
        if not eligible:
            print(f"{method}: no point within the budget converged (stationary, not diverged); none chosen",
                  flush=True)
            results[method] = {"grid": GRID[method], "runs": runs, "best": best, "chosen": None}
            (out / "tuning.json").write_text(json.dumps(results, indent=2) + "\n")
            continue
        best_eligible = min(eligible, key=lambda r: r["val_mse"])
        close = [r for r in eligible if r["val_mse"] <= best_eligible["val_mse"] + best_eligible["val_ci95"]]
        cheapest = min(r["train_seconds"] for r in close)
        chosen = min((r for r in close if r["train_seconds"] <= 1.2 * cheapest), key=lambda r: r["val_mse"])
        results[method] = {"grid": GRID[method], "runs": runs, "best": best, "chosen": chosen}
        print(f"best {method}: {best}\nchosen {method}: {chosen}", flush=True)
        (out / "tuning.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
