"""Train and evaluate several methods on one benchmark, side by side.

Each method trains in its own process (``python -m bilevel train``), so that its peak memory
is its own; the table (accuracy or MSE with a 95% interval, seconds per iteration, peak
memory) is printed and written as ``compare.md`` and ``compare.csv``, with the learning
curves in ``learning_curves.png``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["compare", "run_one", "run_many", "format_table", "plot_learning_curves", "write_outputs"]


def _run(args: list[str], quiet: bool = False, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "bilevel", *args]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[2:])}` failed with exit code {proc.returncode}")


def run_one(name: str, run_dir: Path, train_args: list[str], eval_tasks: int | None = None,
            resume: bool = False, quiet: bool = False, env: dict | None = None) -> dict:
    """Train (``train_args`` name the method) and evaluate one run in ``run_dir``; its table row.

    With ``resume``, a run that finished training (``summary.json`` at the asked number of
    iterations) is kept, an unfinished one continues from its checkpoint, and an existing
    evaluation of the same checkpoint is reused.
    """
    quiet_flag = ["--quiet"] if quiet else []
    summary_path = run_dir / "summary.json"
    done = resume and summary_path.exists() and _asked_iterations(train_args) in (
        None, json.loads(summary_path.read_text())["iterations"])
    if done:
        pass
    elif resume and (run_dir / "checkpoint.pt").exists():
        iterations = _asked_iterations(train_args)
        _run(["train", "--resume", str(run_dir), *quiet_flag]
             + (["--iterations", str(iterations)] if iterations else []), quiet, env)
    else:
        _run(["train", "--out", str(run_dir), *train_args, *quiet_flag], quiet, env)
    summary = json.loads(summary_path.read_text())
    evaluation_path = run_dir / "evaluation-test.json"
    stale = not evaluation_path.exists() or json.loads(evaluation_path.read_text())["iteration"] != summary["iterations"]
    if not resume or stale or (eval_tasks and json.loads(evaluation_path.read_text())["tasks"] != eval_tasks):
        _run(["evaluate", str(run_dir), "--quiet"] + (["--tasks", str(eval_tasks)] if eval_tasks else []), quiet, env)
    evaluation = json.loads(evaluation_path.read_text())
    return {**summary, "method": name, **{k: evaluation[k] for k in ("metric", "mean", "ci95", "tasks")},
            "run_dir": str(run_dir), "inner_grad_norm": _late_mean(run_dir, "stats_inner_grad_norm")}


def _late_mean(run_dir: Path, key: str, last: int = 100) -> float | None:
    """The mean of ``key`` over the last ``last`` training iterations (``None`` if not logged)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    values = [r[key] for r in map(json.loads, lines) if r["split"] == "train" and key in r][-last:]
    return sum(values) / len(values) if values else None


def _asked_iterations(train_args: list[str]) -> int | None:
    return int(train_args[train_args.index("--iterations") + 1]) if "--iterations" in train_args else None


def run_many(runs: list[tuple[str, Path, list[str]]], eval_tasks: int | None = None, resume: bool = False,
             jobs: int = 1, quiet: bool = False) -> list[dict]:
    """:func:`run_one` for each ``(name, run_dir, train_args)``, ``jobs`` processes at a time
    (more than one pays on a GPU or a many-core CPU). With several, each child gets
    ``OMP_NUM_THREADS = cores // jobs`` unless the variable is set."""
    if jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs}")
    env = None
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Several multi-threaded torch processes on the same cores slow each other down many times over.
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, name, run_dir, args, eval_tasks, resume, quiet, env)
                   for name, run_dir, args in runs]
        return [f.result() for f in futures]


def compare(methods: list[str], out: Path, train_args: list[str], eval_tasks: int | None = None,
            resume: bool = False, jobs: int = 1) -> list[dict]:
    """Train and evaluate each method under ``out/<method>``; write the table, CSV and plot."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [(m, out / m, ["--method", m, *train_args]) for m in methods]
    rows = run_many(runs, eval_tasks, resume, jobs)
    write_outputs(rows, out)
    return rows


def format_table(rows: list[dict]) -> str:
    metric = rows[0]["metric"]
    scale, unit = (100.0, " (%)") if metric == "accuracy" else (1.0, "")
    head = (f"| method | test {metric}{unit} +- 95% CI | tasks | iterations | s / iteration | peak memory (MB) | "
            "inner stationarity ||grad G|| |")
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        spi = "n/a" if r["seconds_per_iteration"] is None else f"{r['seconds_per_iteration']:.3f}"
        stationarity = "-" if r.get("inner_grad_norm") is None else f"{r['inner_grad_norm']:.3f}"
        lines.append(f"| {r['method']} | {scale * r['mean']:.2f} +- {scale * r['ci95']:.2f} | {r['tasks']} | "
                     f"{r['iterations']} | {spi} | {r['peak_memory_mb']:.0f} | {stationarity} |")
    return "\n".join(lines)


def plot_learning_curves(rows: list[dict], out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = rows[0]["metric"]
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        records = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines() if line]
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
                  "seconds_per_iteration", "peak_memory_mb", "memory_kind", "device", "backend", "inner_grad_norm"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot_learning_curves(rows, out, out / "learning_curves.png")
