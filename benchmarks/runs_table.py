"""A markdown table of training runs, read from their folders (config.json, metrics.jsonl,
summary.json, evaluation-test.json): what each run was, what it reached, and its iMAML
diagnostics (negative-curvature fraction of CG, CG residual, inner stationarity ||grad G||,
averaged over the logged training iterations).

Run: python benchmarks/runs_table.py runs/omniglot-5w1s/* [--val-at 100 200 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _records(run: Path):
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def describe(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    records = _records(run)
    train = [r for r in records if r["split"] == "train"]
    val = {r["iteration"]: r for r in records if r["split"] == "val"}
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    evaluation = run / "evaluation-test.json"
    test = json.loads(evaluation.read_text()) if evaluation.exists() else None

    def mean(key):
        values = [r[key] for r in train if key in r]
        return sum(values) / len(values) if values else None

    return {"run": run.name, "config": config, "iterations": len(train), "val": val, "summary": summary,
            "test": test, "negative_curvature": mean("stats_negative_curvature"),
            "cg_residual": mean("stats_residual_norm"), "inner_grad_norm": mean("stats_inner_grad_norm"),
            "seconds": mean("seconds")}


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def table(runs: list[Path], val_at: list[int] | None = None) -> str:
    rows = [describe(r) for r in runs if (r / "config.json").exists()]
    checkpoints = val_at or sorted({i for d in rows for i in d["val"]})[-4:]
    head = ("| run | method | protocol | lambda (scale) -> on mean loss | iterations x meta-batch | "
            + " | ".join(f"val @{i}" for i in checkpoints)
            + " | test (600 tasks) | s / it | neg. curvature | CG residual | inner grad norm |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in rows:
        c = d["config"]
        lam = (f"{c['lam']:g} ({c['lam_scale']}) -> {c['lam_effective']:g}" if c["method"].startswith("imaml") else "-")
        vals = [f"{100 * d['val'][i]['accuracy']:.1f} +- {100 * d['val'][i]['ci95']:.1f}" if i in d["val"] else ""
                for i in checkpoints]
        test = f"{100 * d['test']['mean']:.2f} +- {100 * d['test']['ci95']:.2f}" if d["test"] else ""
        lines.append(f"| {d['run']} | {c['method']} | {c.get('protocol', 'paper')} | {lam} | "
                     f"{d['iterations']} x {c['meta_batch']} | " + " | ".join(vals) + f" | {test} | "
                     f"{_fmt(d['seconds'], '.2f')} | {_fmt(d['negative_curvature'], '.2f')} | "
                     f"{_fmt(d['cg_residual'], '.2f')} | {_fmt(d['inner_grad_norm'], '.3f')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--val-at", nargs="*", type=int, help="validation iterations to show (default: the last 4)")
    args = parser.parse_args()
    print(table(args.runs, args.val_at))


if __name__ == "__main__":
    main()
