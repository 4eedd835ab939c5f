"""Sinusoid: iMAML's validation MSE against how well its inner problem was solved.

One point per iMAML run of the sinusoid grids (``benchmarks/tune_sinusoid.py``, with and without
``--net softplus``): x is ``||grad G(phi)||`` averaged over the last 100 training iterations (the
implicit meta-gradient assumes 0), y the validation MSE at the end (+- 95% CI); MAML's
validation MSE on each net is a horizontal line. Runs outside the grids
(``--extra NET:RUN_DIR``) are added as points.

Run: python benchmarks/plot_sinusoid_stationarity.py --out docs/results/sinusoid-tuning-softplus/stationarity.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bilevel.fewshot.compare import late_mean
from bilevel.fewshot.config import load_config

GRIDS = {"relu": "docs/results/sinusoid-tuning/tuning.json", "softplus": "docs/results/sinusoid-tuning-softplus/tuning.json"}
MARKERS = {"imaml-gd": "o", "imaml-hf": "s"}
COLORS = {"relu": "tab:red", "softplus": "tab:blue"}


def extra_point(run_dir: Path) -> dict:
    """Validation MSE and late stationarity of one finished run, as in a grid's records."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    val = [r for r in records if r["split"] == "val"][-1]
    return {"method": load_config(run_dir / "config.json").method, "val_mse": val["mse"], "val_ci95": val["ci95"],
            "inner_grad_norm": late_mean(run_dir, "stats_inner_grad_norm")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--extra", nargs="*", default=[], help="NET:RUN_DIR of runs outside the grids")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = {net: [] for net in GRIDS}
    for net, path in GRIDS.items():
        grid = json.loads(Path(path).read_text())
        for method in ("imaml-gd", "imaml-hf"):
            points[net] += [{**r, "method": method} for r in grid[method]["runs"] if r.get("inner_grad_norm") is not None]
        ax.axhline(grid["maml"]["chosen"]["val_mse"], color=COLORS[net], ls="--", lw=1, label=f"MAML, {net} net")
    for spec in args.extra:
        net, run_dir = spec.split(":", 1)
        points[net].append(extra_point(Path(run_dir)))
    for net, runs in points.items():
        for method, marker in MARKERS.items():
            mine = [r for r in runs if r["method"] == method]
            ax.errorbar([r["inner_grad_norm"] for r in mine], [r["val_mse"] for r in mine],
                        yerr=[r["val_ci95"] for r in mine], fmt=marker, color=COLORS[net], capsize=3,
                        label=f"{method}, {net} net")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inner stationarity ||grad G(phi)||, mean of the last 100 iterations")
    ax.set_ylabel("validation MSE (100 tasks) +- 95% CI")
    ax.set_title("sinusoid, 500 x 25: iMAML learns where its inner problem is solved")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print("written:", args.out)


if __name__ == "__main__":
    main()
