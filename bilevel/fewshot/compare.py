"""Train and evaluate several methods on one benchmark, side by side, over one or more training seeds.

Each run trains and evaluates in its own fresh process (``multiprocessing``, spawned), so that
its peak memory is its own; the process receives the run's resolved :class:`TrainConfig`
itself, never a command line. The table (accuracy or MSE with a 95% interval, seconds per
iteration, peak memory) is printed and written as ``compare.md`` and ``compare.csv``, with the
learning curves in ``learning_curves.png``.

With ``seeds > 1`` every method trains with seeds ``seed, seed + 1, ...`` (run folders
``OUT/<method>/seed-<s>``) and the table reports per method the mean over seeds with a 95%
interval over seeds, each seed's score, the paired difference to a reference method and the
interquartile mean (:mod:`.seeds`); ``compare.csv`` holds one row per (method, seed) and one
summary row per method, ``compare.json`` the same summaries, and the plot shows the spread over
seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .backends import BACKENDS
from .children import Children, StopRequested
from .run_folder import holds_run
from .config import TrainConfig, inapplicable, load_config, resolve
from .methods import METHODS
from .seeds import SeedStats, iqm_interval, over_seeds, paired_difference

__all__ = ["compare", "run_one", "run_many", "run_configs", "late_mean", "format_table", "plot_learning_curves", "write_outputs",
           "describe_training", "describe_evaluation", "seed_runs", "summarize_seeds", "finished"]


def run_configs(runs: dict[str, dict], shared: dict) -> dict[str, TrainConfig]:
    """One resolved config per run: ``shared`` settings plus the run's own (which win).

    A shared setting that a run does not use (``--lam`` for ``maml``) is dropped for that run;
    one that no run uses raises ``ValueError``, as does any invalid setting: before any work.
    """
    configs, unused = {}, set(shared)
    for name, own in runs.items():
        asked = TrainConfig(**{**shared, **own})
        skip = {k: m for k, m in inapplicable(asked).items() if k not in own}
        unused -= set(shared) - set(skip)
        configs[name] = resolve(dataclasses.replace(asked, **{k: None for k in skip}))
    if unused:
        name = sorted(unused)[0]
        message = inapplicable(TrainConfig(**{**shared, **next(iter(runs.values()))}))[name]
        raise ValueError(f"{message} (no run of this comparison uses it)")
    return configs


def _check_resumable(run_dir: Path, config: TrainConfig) -> None:
    """A run kept by ``resume`` must have been asked with the same settings (``iterations`` aside)."""
    if not (run_dir / "config.json").exists():
        return
    saved = resolve(load_config(run_dir / "config.json"))
    differ = [f"--{f.name.replace('_', '-')} {getattr(config, f.name)} (saved: {getattr(saved, f.name)})"
              for f in dataclasses.fields(TrainConfig)
              if f.name not in ("iterations", "lam_effective") and getattr(config, f.name) != getattr(saved, f.name)]
    if differ:
        raise ValueError(f"--resume: {run_dir} was trained with other settings: asked {'; '.join(differ)}; "
                         "use another --out, or ask for the saved settings")


def describe_training(summary: dict, out) -> str:
    """The line printed when a run ends (``bilevel train``, ``bilevel compare``)."""
    spi = summary["seconds_per_iteration"]
    return (f"trained {summary['method']} on {summary['benchmark']} for {summary['iterations']} iterations"
            + (f" ({spi:.3f} s/iteration)" if spi else "") + f"; run saved in {out}")


def describe_evaluation(r: dict) -> str:
    """The line printed for an evaluation (``bilevel evaluate``, ``bilevel compare``)."""
    scale, unit = (100.0, "%") if r["metric"] == "accuracy" else (1.0, "")
    return (f"{r['method']} {r['benchmark']} {r['split']} {r['metric']}: {scale * r['mean']:.2f}{unit} "
            f"+- {scale * r['ci95']:.2f}{unit} (95% CI over {r['tasks']} tasks, iteration {r['iteration']})")


def _plan(run_dir: Path, config: TrainConfig, eval_tasks: int | None, resume: bool) -> tuple[str | None, bool]:
    """``(training, evaluate)``: training is ``"new"``, ``"resume"`` or ``None`` (the run is done)."""
    summary_path, evaluation_path = run_dir / "summary.json", run_dir / "evaluation-test.json"
    if not resume:
        return "new", True
    if not (summary_path.exists() and json.loads(summary_path.read_text())["iterations"] == config.iterations):
        return ("resume" if (run_dir / "checkpoint.pt").exists() else "new"), True
    if not evaluation_path.exists():
        return None, True
    previous = json.loads(evaluation_path.read_text())
    stale = previous["iteration"] != config.iterations or (eval_tasks and previous["tasks"] != eval_tasks)
    return None, bool(stale)


def finished(run_dir: Path, config: TrainConfig, eval_tasks: int | None = None) -> bool:
    """Whether ``run_dir`` holds ``config``'s run trained to its iterations and evaluated there
    (nothing for :func:`run_one` to do with ``resume=True``)."""
    return _plan(Path(run_dir), config, eval_tasks, resume=True) == (None, False)


def _train_and_evaluate(config: TrainConfig, run_dir: Path, training: str | None, evaluate_run: bool,
                        eval_tasks: int | None, quiet: bool, threads: int | None, overwrite: bool = False) -> None:
    """The child process: train (``"new"``), continue (``"resume"``) or keep the run, then evaluate it."""
    if threads is not None:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # for anything this process starts
        torch.set_num_threads(threads)
    from ..data import DataError
    from .trainer import evaluate, train

    try:
        if training is not None:
            if training == "resume":
                summary = train(None, run_dir, resume=True, iterations=config.iterations, progress=not quiet)
            else:
                summary = train(config, run_dir, progress=not quiet, overwrite=overwrite)
            if not quiet:
                print(describe_training(summary, run_dir))
        if evaluate_run:
            result = evaluate(run_dir, tasks=eval_tasks, progress=False)
            if not quiet:
                print(describe_evaluation(result))
    except (ValueError, DataError, RuntimeError) as exc:
        print(f"bilevel compare: {run_dir}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def run_one(name: str, run_dir: Path, config: TrainConfig, eval_tasks: int | None = None, resume: bool = False,
            quiet: bool = False, threads: int | None = None, children: Children | None = None,
            overwrite: bool = False) -> dict:
    """Train and evaluate the resolved ``config`` in ``run_dir``, in a fresh process; its table row.

    With ``resume``, a run that finished training (``summary.json`` at ``config.iterations``) is
    kept, an unfinished one continues from its checkpoint, and an existing evaluation of the same
    checkpoint is reused (then no process is started). ``threads`` sets the child's
    ``OMP_NUM_THREADS`` and torch threads; ``children`` (:class:`~.children.Children`) tracks
    the process so that a stop signal reaches it.
    """
    run_dir = Path(run_dir)
    training, evaluate_run = _plan(run_dir, config, eval_tasks, resume)
    if training is not None or evaluate_run:
        process = multiprocessing.get_context("spawn").Process(
            target=_train_and_evaluate,
            args=(config, run_dir, training, evaluate_run, eval_tasks, quiet, threads, overwrite),
            name=f"bilevel-{name}")
        children = children if children is not None else Children()
        children.start(process)
        try:
            process.join()
        finally:
            children.finished(process)
        if process.exitcode != 0:
            if children.stop_signal is not None and process.exitcode in (130, -children.stop_signal):
                raise StopRequested(f"{name}: stopped by {signal.Signals(children.stop_signal).name} "
                                    f"(checkpoint in {run_dir})")
            raise RuntimeError(f"{name}: training or evaluation in {run_dir} failed (exit code {process.exitcode}); "
                               "see the message above")
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluation = json.loads((run_dir / "evaluation-test.json").read_text())
    return {**summary, "method": name, "seed": config.seed,
            **{k: evaluation[k] for k in ("metric", "mean", "ci95", "tasks")},
            "run_dir": str(run_dir), "inner_grad_norm": late_mean(run_dir, "stats_inner_grad_norm")}


def late_mean(run_dir: Path, key: str, last: int = 100) -> float | None:
    """The mean of ``key`` over the last ``last`` training iterations (``None`` if not logged)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    values = [r[key] for r in map(json.loads, lines) if r["split"] == "train" and key in r][-last:]
    return sum(values) / len(values) if values else None


def run_many(runs: list[tuple[str, Path, TrainConfig]], eval_tasks: int | None = None, resume: bool = False,
             jobs: int = 1, quiet: bool = False, overwrite: bool = False) -> list[dict]:
    """:func:`run_one` for each ``(name, run_dir, config)``, ``jobs`` processes at a time
    (more than one pays on a GPU or a many-core CPU). With several, each child gets
    ``OMP_NUM_THREADS = cores // jobs`` unless the variable is set.

    Every config is resolved, and with ``resume`` checked against the run it would continue,
    before any run starts; without ``resume`` a folder that already holds a run is refused
    unless ``overwrite`` (its files are then replaced by the new run's). The children are spawned (``multiprocessing``), so a script that
    calls this must do so under ``if __name__ == "__main__":``.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
    runs = [(name, Path(run_dir), resolve(config)) for name, run_dir, config in runs]
    if resume and overwrite:
        raise ValueError("--resume keeps the runs in --out and --overwrite replaces them: give one")
    if resume:
        for _, run_dir, config in runs:
            _check_resumable(run_dir, config)
    elif not overwrite:
        held = [str(run_dir) for _, run_dir, _ in runs if holds_run(run_dir)]
        if held:
            raise ValueError(f"{len(held)} of the {len(runs)} run folders already hold a run (first: {held[0]}); "
                             "pass --resume to keep and continue them, or --overwrite to train them again")
    threads = None
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Several multi-threaded torch processes on the same cores slow each other down many times over.
        threads = max(1, (os.cpu_count() or 1) // jobs)
    children = Children()
    # SIGTERM / SIGHUP reach every running child (each saves its checkpoint); then exit 130.
    with children.forwarding(), ThreadPoolExecutor(max_workers=jobs) as pool:
        # Longest first, so that the jobs finish together; the rows keep the given order.
        order = sorted(range(len(runs)), key=lambda i: -inner_work(runs[i][2]))
        futures = {i: pool.submit(run_one, *runs[i], eval_tasks, resume, quiet, threads, children, overwrite)
                   for i in order}
        results = []
        for i in range(len(runs)):
            try:
                results.append(futures[i].result())
            except StopRequested:  # stopped by the forwarded signal (saved), or not started after it
                if children.stop_signal is None:
                    raise
        return results


def inner_work(c: TrainConfig) -> int:
    """A run's work in gradient evaluations, roughly (a Hessian-vector product counts as
    ``_HVP_COST``): the order in which :func:`run_many` starts runs, not a timing. The backend's
    share is its registry entry's cost model (:class:`~.backends.BackendEntry`: ``backprop``, ``hvps``)."""
    method = METHODS[c.method]
    backend = BACKENDS[c.backend or method.backend]
    if method.inner_solver == "newton-cg":
        inner = c.hf_steps * (1 + _HVP_COST * c.hf_cg_steps)
    else:
        inner = c.inner_steps
    if backend.backprop == "every step":
        inner *= 2  # backprop through every step
    elif backend.backprop == "last steps":
        inner += c.truncate_steps or 0  # through the last ones
    meta = _HVP_COST * backend.hvps(c)
    return (inner + meta) * c.iterations * c.meta_batch


_HVP_COST = 3  # a Hessian-vector product in gradients: an estimate, used for the order only


def seed_runs(configs: dict[str, TrainConfig], out: Path, seeds: int = 1) -> list[tuple[str, Path, TrainConfig]]:
    """``(method, run_dir, config)`` for every method and seed: one seed runs in ``out/<method>``
    with the config's own seed; ``seeds > 1`` in ``out/<method>/seed-<s>`` for ``s = seed, seed + 1, ...``."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    runs = []
    for m, config in configs.items():
        if seeds == 1:
            runs.append((m, out / m, config))
            continue
        for s in range(config.seed, config.seed + seeds):
            runs.append((m, out / m / f"seed-{s}", dataclasses.replace(config, seed=s)))
    return runs


def compare(configs: dict[str, TrainConfig], out: Path, eval_tasks: int | None = None, resume: bool = False,
            jobs: int = 1, seeds: int = 1, reference: str | None = None, overwrite: bool = False) -> list[dict]:
    """Train and evaluate each ``{method: config}`` (``seeds`` seeds each) under ``out``; write the
    table, CSV and plot (and, over seeds, ``compare.json``). ``reference``: the method the paired
    differences are taken against (default ``maml`` when it is compared, else the first)."""
    if reference is not None and reference not in configs:
        raise ValueError(f"--reference {reference} is not among the compared methods ({', '.join(configs)})")
    rows = run_many(seed_runs(configs, out, seeds), eval_tasks, resume, jobs,  # checks every config first
                    overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(rows, out, reference)
    return rows


def _methods(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows grouped by method, in the given order, each method's seeds in order."""
    grouped: dict[str, list[dict]] = {}
    for r in rows:
        grouped.setdefault(r["method"], []).append(r)
    return {m: sorted(rs, key=lambda r: r.get("seed") or 0) for m, rs in grouped.items()}


def _over_seeds(rows: list[dict]) -> bool:
    """Whether some method has several runs (seeds): the table, CSV and plot over seeds apply."""
    return any(len(runs) > 1 for runs in _methods(rows).values())


def _default_reference(methods) -> str:
    return "maml" if "maml" in methods else next(iter(methods))


def summarize_seeds(rows: list[dict], reference: str | None = None) -> list[dict]:
    """One summary per method over its seeds: the per-seed scores, their mean with a 95% interval
    over seeds, the paired difference to ``reference`` over the seeds both have (``None`` when
    they share fewer than 2, with ``paired_seeds`` saying how many they share), the interquartile
    mean with its bootstrap interval (``None`` without ``rliable`` or below 4 seeds), the mean
    seconds per iteration and peak memory, and the inner stationarity of the worst seed (the
    largest ``||grad G||``: one unsolved seed is enough for the table to warn).

    Raises ``ValueError`` when ``reference`` is not among the methods, or a (method, seed) occurs twice.
    """
    methods = _methods(rows)
    for m, runs in methods.items():
        seeds = [r.get("seed") for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{m}: seed {sorted(s for s in seeds if seeds.count(s) > 1)[0]} occurs twice; "
                             "give each (method, seed) one run")
    if reference is not None and reference not in methods:
        raise ValueError(f"reference {reference!r} is not among the methods ({', '.join(methods)})")
    reference = reference or _default_reference(methods)
    ref_scores = {r["seed"]: r["mean"] for r in methods[reference]}
    summaries = []
    for m, runs in methods.items():
        scores = [r["mean"] for r in runs]
        shared = [r for r in runs if r["seed"] in ref_scores]
        diff = (paired_difference([r["mean"] for r in shared], [ref_scores[r["seed"]] for r in shared])
                if m != reference and len(shared) >= 2 else None)

        def mean_of(key):
            values = [r[key] for r in runs if r.get(key) is not None]
            return sum(values) / len(values) if values else None

        norms = [r["inner_grad_norm"] for r in runs if r.get("inner_grad_norm") is not None]
        first = runs[0]
        summaries.append({
            "method": m, "benchmark": first.get("benchmark"), "net": first.get("net"), "ways": first.get("ways"),
            "shots": first.get("shots"), "backend": first.get("backend"), "metric": first["metric"],
            "tasks": first["tasks"], "iterations": first["iterations"], "seeds": [r["seed"] for r in runs],
            "scores": scores, "over_seeds": over_seeds(scores), "reference": reference, "vs_reference": diff,
            "paired_seeds": len(shared) if m != reference else None,
            "iqm": iqm_interval(scores), "seconds_per_iteration": mean_of("seconds_per_iteration"),
            "peak_memory_mb": mean_of("peak_memory_mb"), "inner_grad_norm": max(norms) if norms else None,
        })
    return summaries


# Above this, the table warns that an implicit meta-gradient's inner problem was not solved: 3-5x
# what iMAML-GD reaches on Omniglot (0.1-0.15), where it learns.
UNSOLVED_INNER = 0.5
# Why, per sinusoid net, under that warning.
_UNSOLVED_WHY = {
    "relu": " On sinusoid's ReLU net no solver gets there (the minimizer sits on a ReLU kink); with --net softplus "
            "Newton-CG does: docs/sinusoid.md.",
    "softplus": " On the softplus net Newton-CG gets there (imaml-hf: 5 Newton steps at lambda 10 on the mean loss), "
                "and so does imaml-gd's default inner loop (25 heavy-ball steps, lr 0.005, momentum 0.6, lambda 10); "
                "25 plain gradient steps do not: docs/sinusoid.md.",
}


def format_table(rows: list[dict], reference: str | None = None) -> str:
    """The comparison as markdown, with a note under it when an iMAML row's inner problem was
    left far from stationary (``||grad G|| > UNSOLVED_INNER``, late in training). Rows of several
    seeds per method give the table over seeds (:func:`format_seed_table`)."""
    if _over_seeds(rows):
        return format_seed_table(summarize_seeds(rows, reference))
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
    return "\n".join(lines + _unsolved_note(rows))


def _unsolved_note(rows: list[dict]) -> list[str]:
    """The lines under a table whose iMAML rows left the inner problem unsolved (none if solved)."""
    unsolved = [f"{r['method']} {r['inner_grad_norm']:.2f}" for r in rows
                if r.get("inner_grad_norm") is not None and r["inner_grad_norm"] > UNSOLVED_INNER]
    if not unsolved:
        return []
    # Runs summarized before the net was recorded are sinusoid's ReLU ones.
    why = _UNSOLVED_WHY[rows[0].get("net") or "relu"] if rows[0].get("benchmark") == "sinusoid" else ""
    return ["", f"Note: the implicit meta-gradient assumes the inner problem solved (||grad G|| = 0); it was "
            f"not ({', '.join(unsolved)}), so that meta-gradient is biased.{why}"]


def _interval(stats: SeedStats | None, scale: float) -> str:
    if stats is None:
        return "-"
    if math.isnan(stats.low):
        return f"{scale * stats.mean:.2f}"
    return f"{scale * stats.mean:.2f} [{scale * stats.low:.2f}, {scale * stats.high:.2f}]"


def format_seed_table(summaries: list[dict]) -> str:
    """The comparison over seeds as markdown: per method the mean over seeds with its 95%
    t-interval over seeds, each seed's score, the paired difference to the reference with its
    interval, the interquartile mean with its bootstrap interval, and a line under the table
    naming the differences whose interval excludes zero (the claims that hold over these seeds)."""
    first = summaries[0]
    metric, reference = first["metric"], first["reference"]
    scale, unit = (100.0, " (%)") if metric == "accuracy" else (1.0, "")
    n = max(len(s["scores"]) for s in summaries)
    iqm = any(s["iqm"] is not None for s in summaries)
    columns = (["method", f"test {metric}{unit}: mean over seeds [95% CI over seeds]", "per seed",
                f"minus {reference}: paired mean [95% CI]"] + (["IQM [95% bootstrap CI]"] if iqm else [])
               + ["s / iteration", "peak memory (MB)", "inner stationarity ||grad G|| (worst seed)"])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for s in summaries:
        spi = "n/a" if s["seconds_per_iteration"] is None else f"{s['seconds_per_iteration']:.3f}"
        memory = "n/a" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}"
        stationarity = "-" if s["inner_grad_norm"] is None else f"{s['inner_grad_norm']:.3f}"
        diff = "(reference)" if s["method"] == reference else _interval(s["vs_reference"], scale)
        lines.append(f"| {s['method']} | {_interval(s['over_seeds'], scale)} | "
                     + ", ".join(f"{scale * x:.2f}" for x in s["scores"]) + f" | {diff} |"
                     + (f" {_interval(s['iqm'], scale)} |" if iqm else "")
                     + f" {spi} | {memory} | {stationarity} |")
    better = "higher" if metric == "accuracy" else "lower"
    holds = [f"{s['method']} {'above' if s['vs_reference'].low > 0 else 'below'} {reference}" for s in summaries
             if s["vs_reference"] is not None and n > 1 and s["vs_reference"].excludes_zero()]
    unpaired = [s["method"] for s in summaries if s["method"] != reference and s["vs_reference"] is None]
    seeds = ", ".join(str(x) for x in first["seeds"])
    lines += ["", f"{n} training seeds ({seeds}), {first['tasks']} test tasks each, {first['iterations']} "
              f"iterations; {better} is better. Paired differences whose 95% interval over seeds excludes 0: "
              + (", ".join(holds) if holds else "none") + "; every other compared pair is within the seeds' spread."
              + (f" Not compared (fewer than 2 seeds shared with {reference}): {', '.join(unpaired)}." if unpaired else "")]
    return "\n".join(lines + _unsolved_note(summaries))


def _curves(run_dir: str, metric: str) -> tuple[list, list, list, list]:
    """A run's train curve (moving average over 1/50 of the run) and validation points."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    train = [x for x in records if x["split"] == "train"]
    val = [x for x in records if x["split"] == "val"]
    window = max(1, len(train) // 50)
    ys = [x[metric] for x in train]
    smooth = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]
    return [x["iteration"] for x in train], smooth, [x["iteration"] for x in val], val


def plot_learning_curves(rows: list[dict], out: Path, path: Path) -> None:
    """Train (moving average) and validation curves per method; over several seeds, the mean
    over seeds with a band from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = rows[0]["metric"]
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    several = _over_seeds(rows)
    for m, runs in _methods(rows).items():
        curves = [_curves(r["run_dir"], metric) for r in runs]
        if not several:
            xs, smooth, vx, val = curves[0]
            ax_train.plot(xs, smooth, label=m)
            if val:
                ax_val.errorbar(vx, [x[metric] for x in val], yerr=[x["ci95"] for x in val], label=m, marker="o",
                                capsize=3)
            continue
        for ax, pick in ((ax_train, lambda c: (c[0], c[1])), (ax_val, lambda c: (c[2], [x[metric] for x in c[3]]))):
            series = [pick(c) for c in curves]
            length = min(len(xs) for xs, _ in series)
            if length == 0:
                continue
            xs = series[0][0][:length]
            columns = list(zip(*(ys[:length] for _, ys in series)))
            mean = [sum(c) / len(c) for c in columns]
            (line,) = ax.plot(xs, mean, label=f"{m} (mean of {len(runs)} seeds)", marker="o" if ax is ax_val else None)
            ax.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(), alpha=0.2)
    band = ", band: lowest to highest seed" if several else ""
    for ax, title in ((ax_train, f"train {metric} (query, moving average){band}"),
                      (ax_val, f"validation {metric}" + (band if several else " +- 95% CI"))):
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(metric)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if metric == "mse":
            ax.set_yscale("log")
    first = rows[0]
    fig.suptitle(f"{first['benchmark']} {first['ways']}-way {first['shots']}-shot" if first["benchmark"] != "sinusoid"
                 else f"sinusoid regression, {first['shots']} shots")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_CSV_FIELDS = ["method", "seed", "benchmark", "ways", "shots", "metric", "mean", "ci95", "tasks", "iterations",
               "seconds_per_iteration", "peak_memory_mb", "memory_kind", "device", "backend", "inner_grad_norm"]
_SUMMARY_FIELDS = ["seeds", "seeds_mean", "seeds_ci95_low", "seeds_ci95_high", "reference", "minus_reference",
                   "minus_reference_ci95_low", "minus_reference_ci95_high", "iqm", "iqm_ci95_low", "iqm_ci95_high"]


def _summary_row(s: dict) -> dict:
    """A method's summary over seeds as one CSV / JSON row (``seed`` is ``all``)."""
    stats = {"seeds_": s["over_seeds"], "minus_reference_": s["vs_reference"], "iqm_": s["iqm"]}
    row = {"method": s["method"], "seed": "all", **{k: s[k] for k in ("benchmark", "ways", "shots", "backend")},
           "metric": s["metric"], "tasks": s["tasks"],
           "iterations": s["iterations"], "seconds_per_iteration": s["seconds_per_iteration"],
           "peak_memory_mb": s["peak_memory_mb"], "inner_grad_norm": s["inner_grad_norm"],
           "seeds": list(s["seeds"]), "reference": s["reference"], "paired_seeds": s["paired_seeds"],
           "scores": s["scores"]}
    for prefix, value in stats.items():
        name = prefix.rstrip("_") if prefix != "seeds_" else "seeds_mean"
        row[name] = None if value is None else _finite_or_none(value.mean)
        row[f"{prefix}ci95_low"] = None if value is None else _finite_or_none(value.low)
        row[f"{prefix}ci95_high"] = None if value is None else _finite_or_none(value.high)
    return row


def _finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined interval (one seed) is written as null."""
    return x if math.isfinite(x) else None


def _relative(run_dir: str, out: Path) -> str:
    """A run folder as written in ``compare.json``: relative to ``out`` when inside it."""
    try:
        return str(Path(run_dir).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(run_dir)


def write_outputs(rows: list[dict], out: Path, reference: str | None = None) -> None:
    """``compare.md`` (the table), ``compare.csv`` (a row per run; over seeds also a summary row
    per method), ``learning_curves.png`` and, over seeds, ``compare.json`` (the summaries)."""
    several = _over_seeds(rows)
    stats = summarize_seeds(rows, reference) if several else None  # once: rliable's bootstrap is not free
    table = format_seed_table(stats) if several else format_table(rows)
    (out / "compare.md").write_text(table + "\n")
    summaries = [_summary_row(s) for s in stats] if several else []
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS + (_SUMMARY_FIELDS if several else []),
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        writer.writerows({**r, "seeds": " ".join(str(x) for x in r["seeds"])} for r in summaries)
    if several:
        runs = [{**r, "run_dir": _relative(r["run_dir"], out)} for r in rows]
        (out / "compare.json").write_text(json.dumps({"summaries": summaries, "runs": runs}, indent=2) + "\n")
    plot_learning_curves(rows, out, out / "learning_curves.png")
