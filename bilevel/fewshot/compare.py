"""Train and evaluate several methods on one benchmark, side by side.

Each method trains in its own process (``python -m bilevel train``), so that its peak memory
is its own; the table (accuracy or MSE with a 95% interval, seconds per iteration, peak
memory) is printed and written as ``compare.md`` and ``compare.csv``, with the learning
curves in ``learning_curves.png``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

__all__ = ["compare", "format_table", "plot_learning_curves"]


def _run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "bilevel", *args]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[2:])}` failed with exit code {proc.returncode}")


def compare(methods: list[str], out: Path, train_args: list[str], eval_tasks: int | None = None,
            resume: bool = False) -> list[dict]:
    """Train and evaluate each method under ``out/<method>``.

    With ``resume``, a run that finished training (it has ``summary.json``) is kept as it is, an
    unfinished one continues from its checkpoint, and an existing evaluation is reused.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in methods:
        run_dir = out / method
        if resume and (run_dir / "summary.json").exists():
            pass
        elif resume and (run_dir / "checkpoint.pt").exists():
            _run(["train", "--resume", str(run_dir)])
        else:
            _run(["train", "--method", method, "--out", str(run_dir), *train_args])
        if not (resume and (run_dir / "evaluation-test.json").exists()):
            _run(["evaluate", str(run_dir), "--quiet"] + (["--tasks", str(eval_tasks)] if eval_tasks else []))
        summary = json.loads((run_dir / "summary.json").read_text())
        evaluation = json.loads((run_dir / "evaluation-test.json").read_text())
        rows.append({**summary, **{k: evaluation[k] for k in ("metric", "mean", "ci95", "tasks")}})
    write_outputs(rows, out)
    return rows


def format_table(rows: list[dict]) -> str:
    metric = rows[0]["metric"]
    scale, unit = (100.0, " (%)") if metric == "accuracy" else (1.0, "")
    head = f"| method | test {metric}{unit} +- 95% CI | tasks | iterations | s / iteration | peak memory (MB) |"
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        spi = "n/a" if r["seconds_per_iteration"] is None else f"{r['seconds_per_iteration']:.3f}"
        lines.append(f"| {r['method']} | {scale * r['mean']:.2f} +- {scale * r['ci95']:.2f} | {r['tasks']} | "
                     f"{r['iterations']} | {spi} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def plot_learning_curves(rows: list[dict], out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = rows[0]["metric"]
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        records = [json.loads(line) for line in (out / r["method"] / "metrics.jsonl").read_text().splitlines() if line]
        train = [x for x in records if x["split"] == "train"]
        val = [x for x in records if x["split"] == "val"]
        window = max(1, len(train) // 50)
        xs = [x["iteration"] for x in train]
        ys = [x[metric] for x in train]
        smooth = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
        ax_train.plot(xs, smooth, label=r["method"])
        if val:
            ax_val.errorbar([x["iteration"] for x in val], [x[metric] for x in val], yerr=[x["ci95"] for x in val],
                            label=r["method"], marker="o", capsize=3)
    for ax, title in ((ax_train, f"train {metric} (query, moving average)"), (ax_val, f"validation {metric} +- 95% CI")):
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(metric)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        if metric == "mse":
            ax.set_yscale("log")
    first = rows[0]
    fig.suptitle(f"{first['benchmark']} {first['ways']}-way {first['shots']}-shot" if first["benchmark"] != "sinusoid"
                 else f"sinusoid regression, {first['shots']} shots")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], out: Path) -> None:
    table = format_table(rows)
    (out / "compare.md").write_text(table + "\n")
    with open(out / "compare.csv", "w", newline="") as f:
        fields = ["method", "benchmark", "ways", "shots", "metric", "mean", "ci95", "tasks", "iterations",
                  "seconds_per_iteration", "peak_memory_mb", "memory_kind", "device", "backend"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot_learning_curves(rows, out, out / "learning_curves.png")
