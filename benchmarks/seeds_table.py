"""The table over seeds of runs trained one by one (``bilevel train --seed S`` each), as
``bilevel compare --seeds`` writes it, plus the validation curves at equal iterations and at
equal wall time.

Each RUN_DIR is a finished run (``summary.json`` and ``evaluation-test.json``); runs are grouped
by their config's ``method`` and paired across methods by their ``seed``. Writes to ``--out``:
``compare.md`` / ``compare.csv`` / ``compare.json`` / ``learning_curves.png`` (the same files as
``bilevel compare --seeds``) and ``curves.md``: per method and validation iteration, the mean
over seeds with its t-interval, and each method's median seconds per iteration (the median of
the per-iteration times in ``metrics.jsonl``, robust to the few iterations that a paused process
stretched).

Run: python benchmarks/seeds_table.py runs/omniglot-seeds/{maml,imaml-gd}-seed{0,1,2} \
    --reference maml --out docs/results/omniglot-5w1s-seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bilevel.fewshot.compare import finished, run_one, write_outputs
from bilevel.fewshot.config import load_config, resolve
from bilevel.fewshot.seeds import over_seeds


def curves(rows: list[dict]) -> str:
    """Validation mean over seeds [95% CI] at every validated iteration, and median s / it."""
    methods: dict[str, list[dict]] = {}
    for r in rows:
        methods.setdefault(r["method"], []).append(r)
    metric = rows[0]["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    val = {}
    for m, runs in methods.items():
        per_seed = []
        for r in runs:
            records = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            per_seed.append({x["iteration"]: x[metric] for x in records if x["split"] == "val"})
            r["median_seconds"] = statistics.median(x["seconds"] for x in records if x["split"] == "train")
        common = sorted(set.intersection(*(set(p) for p in per_seed)))
        val[m] = {it: over_seeds([p[it] for p in per_seed]) for it in common}
    iterations = sorted(set.union(*(set(v) for v in val.values())))
    lines = [f"validation {metric}, mean over seeds [95% CI over seeds]", "",
             "| iteration | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for it in iterations:
        cells = []
        for m in methods:
            s = val[m].get(it)
            cells.append("" if s is None else f"{scale * s.mean:.1f} [{scale * s.low:.1f}, {scale * s.high:.1f}]")
        lines.append(f"| {it} | " + " | ".join(cells) + " |")
    lines += ["", "| method | median s / iteration, per seed | mean of the medians |", "|---|---|---|"]
    for m, runs in methods.items():
        medians = [r["median_seconds"] for r in runs]
        lines.append(f"| {m} | " + ", ".join(f"{x:.2f}" for x in medians) + f" | {sum(medians) / len(medians):.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reference", help="the method of the paired differences (default: maml, else the first)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for run_dir in args.runs:
        config = resolve(load_config(run_dir / "config.json"))
        if not finished(run_dir, config):  # never start (or join) a run here: a live trainer may own the folder
            raise SystemExit(f"seeds_table: {run_dir} is not finished (trained and evaluated at iteration "
                             f"{config.iterations}); finish it with bilevel train --resume / bilevel evaluate")
        rows.append(run_one(config.method, run_dir, config, resume=True))  # finished: read only
    args.out.mkdir(parents=True, exist_ok=True)
    write_outputs(rows, args.out, args.reference)
    table = curves(rows)
    (args.out / "curves.md").write_text(table + "\n")
    print((args.out / "compare.md").read_text() + "\n" + table)


if __name__ == "__main__":
    main()
