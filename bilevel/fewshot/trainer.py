"""Meta-training and evaluation of a few-shot run, with exact resume.

A run directory holds ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one
JSON record per training iteration and per validation), ``checkpoint.pt`` (written
atomically: temp file, then ``os.replace``), ``summary.json`` and, after evaluation,
``evaluation.json``.

Resume is exact: the checkpoint holds the parameters, the outer optimizer's state and the
task sampler's position, so training N iterations, stopping, and resuming gives the same
parameters, bit for bit on the CPU, as training without a stop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..hypergrad import batched_hypergrad, map_tasks
from .benchmarks import batch_to_tasks, make_benchmark
from .config import TrainConfig, load_config, resolve, save_config
from .methods import build_method

__all__ = ["train", "evaluate", "evaluate_params", "setup", "mean_ci95"]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def setup(config: TrainConfig):
    """Build ``(benchmark, model, method, device)`` for a resolved config (``method`` is a
    :class:`~bilevel.fewshot.methods.MethodSetup`)."""
    torch.manual_seed(config.seed)  # the network's initialization
    benchmark = make_benchmark(config.benchmark, config.ways, config.shots, config.queries, config.data_root,
                               net=config.net, init=config.init)
    device = _device(config.device)
    model = benchmark.build_model().to(device)
    method = build_method(config, benchmark.task_loss(model), benchmark.outputs(model), benchmark.criterion)
    return benchmark, model, method, device


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval, ``1.96 std / sqrt(n)``."""
    values = values.double()
    n = values.numel()
    std = float(values.std(unbiased=True)) if n > 1 else float("nan")
    return float(values.mean()), 1.96 * std / math.sqrt(n)


def evaluate_params(benchmark, model, problem, theta, sampler, num_tasks, meta_batch, device, chunk_size=None,
                    vectorize: bool = True, progress: bool = False):
    """Adapt ``theta`` to ``num_tasks`` tasks (the method's inner problem and solver on the
    support set) and score each on its query set; returns the per-task metric."""
    theta = {k: v.detach() for k, v in theta.items()}

    def one_task(support, query):
        phi = problem.solve_inner(theta, support, detach=True)
        return benchmark.score(model, phi, query)

    scores, done = [], 0  # a disabled tqdm does not count, so count here
    with tqdm(total=num_tasks, disable=not progress, dynamic_ncols=True, desc="evaluating", unit="task") as bar:
        while done < num_tasks:
            b = min(meta_batch, num_tasks - done)
            support, query = batch_to_tasks(sampler.sample(b), device)
            scores.append(map_tasks(one_task, support, query, vectorize=vectorize, chunk_size=chunk_size).detach().cpu())
            done += b
            bar.update(b)
    return torch.cat(scores)


def _vectorize(setting: str, device: torch.device, benchmark) -> bool:
    """``auto``: one ``vmap`` over the meta-batch, except for conv nets on a CPU, where ``vmap``'s
    batched (grouped) convolutions are slower than a loop over tasks (3.5 s vs 2.9 s for 8
    Omniglot MAML tasks here) and hold every task's graph at once (19 GB for 32 tasks)."""
    if setting != "auto":
        return setting == "on"
    return not (device.type == "cpu" and benchmark.convolutional)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _stats_record(stats: dict) -> dict:
    """The backend's per-task diagnostics for the log, whatever their keys: the mean of each
    (a fraction for flags), and the per-task list of the inner stationarity ``||grad G(phi)||``."""
    record = {}
    for key, value in stats.items():
        if key == "task_loss":
            continue
        record[f"stats_{key}"] = float(value.double().mean())
        if key == "inner_grad_norm":
            record["inner_grad_norm_per_task"] = [round(float(v), 6) for v in value.flatten()]
    return record


def _truncate_log(path: Path, iteration: int) -> None:
    """Keep only the records of iterations up to ``iteration`` (those the checkpoint covers)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept))


def train(config: TrainConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
          iterations: int | None = None, progress: bool = True) -> dict:
    """Meta-train into ``run_dir``; with ``resume=True`` continue the run saved there.

    Returns the summary (also written to ``summary.json``).
    """
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "checkpoint.pt").exists():
            raise ValueError(f"--resume {run_dir}: no checkpoint.pt there; start a run with --out {run_dir}")
        config = load_config(run_dir / "config.json")
    config = resolve(config)
    if iterations is not None:
        config.iterations = iterations
        config = resolve(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.json")

    benchmark, model, method, device = setup(config)
    problem, backend = method.problem, method.backend
    optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr, eps=config.outer_eps)
    sampler = benchmark.sampler("train", config.seed)
    log_path = run_dir / "metrics.jsonl"
    start, best_val, train_seconds, timed_iterations = 0, None, 0.0, 0
    if resume:
        state = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        start, best_val = state["iteration"], state["best_val"]
        train_seconds, timed_iterations = state["train_seconds"], state["timed_iterations"]
        _truncate_log(log_path, start)
    elif log_path.exists():
        log_path.unlink()

    def checkpoint(iteration):
        _save_atomic({"iteration": iteration, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "sampler": sampler.state_dict(), "best_val": best_val, "train_seconds": train_seconds,
                      "timed_iterations": timed_iterations, "config": dataclasses.asdict(config)}, run_dir / "checkpoint.pt")

    def validate():
        val_sampler = benchmark.sampler("val", config.seed)  # the same val tasks every time
        scores = evaluate_params(benchmark, model, method.eval_problem, dict(model.named_parameters()), val_sampler,
                                 config.val_tasks, config.meta_batch, device, config.chunk_size, vectorize)
        return mean_ci95(scores)

    params = dict(model.named_parameters())
    vectorize = _vectorize(config.vectorize, device, benchmark)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = peak_rss = _rss_mb()
    metric = benchmark.metric_name
    bar = tqdm(total=config.iterations, initial=start, disable=not progress, dynamic_ncols=True,
               desc=f"{config.method} {config.benchmark}", unit="it")
    with open(log_path, "a") as log:
        for iteration in range(start + 1, config.iterations + 1):
            t0 = time.perf_counter()
            support, query = batch_to_tasks(sampler.sample(config.meta_batch), device)
            inner_solutions = None
            if method.adapt is not None:  # the inner solutions come from another solver (official protocol)
                theta = {k: v.detach() for k, v in params.items()}
                inner_solutions = map_tasks(lambda s: method.adapt.solve_inner(theta, s, detach=True), support,
                                            vectorize=vectorize, chunk_size=config.chunk_size)
            result = batched_hypergrad(problem, params, support, query, backend=backend, inner_solutions=inner_solutions,
                                       chunk_size=config.chunk_size, vectorize=vectorize)
            optimizer.zero_grad(set_to_none=True)
            for name, p in params.items():
                p.grad = result.grad[name]
            optimizer.step()
            scores = map_tasks(lambda phi, q: benchmark.score(model, phi, q), result.inner_solution, query,
                               vectorize=vectorize, chunk_size=config.chunk_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            if iteration > start + 1 or config.iterations == start + 1:  # skip the warm-up step
                train_seconds += seconds
                timed_iterations += 1
            peak_rss = max(peak_rss, _rss_mb())
            record = {"iteration": iteration, "split": "train", "loss": float(result.loss),
                      metric: float(scores.mean()), "seconds": seconds,
                      "tasks_per_second": config.meta_batch / seconds}
            record.update(_stats_record(result.stats))
            log.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix({"loss": f"{record['loss']:.3f}", metric: f"{record[metric]:.3f}",
                             "tasks/s": f"{record['tasks_per_second']:.0f}"}, refresh=False)
            if iteration % config.val_every == 0 or iteration == config.iterations:
                val_mean, val_ci = validate()
                better = best_val is None or (val_mean > best_val if benchmark.higher_is_better else val_mean < best_val)
                best_val = val_mean if better else best_val
                log.write(json.dumps({"iteration": iteration, "split": "val", metric: val_mean, "ci95": val_ci}) + "\n")
                bar.write(f"[{config.method}] iteration {iteration}: val {metric} {val_mean:.4f} +- {val_ci:.4f}")
            if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
                log.flush()
                checkpoint(iteration)
    bar.close()
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss - base_rss)
    summary = {
        "method": config.method, "benchmark": config.benchmark, "ways": config.ways, "shots": config.shots,
        "iterations": config.iterations, "backend": config.backend or type(backend).__name__,
        "seconds_per_iteration": train_seconds / timed_iterations if timed_iterations else None,
        "peak_memory_mb": peak, "memory_kind": "cuda max_memory_allocated" if device.type == "cuda"
        else "growth of process RSS during training", "best_val": best_val, "device": str(device),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate(run_dir: str | os.PathLike, *, tasks: int | None = None, split: str = "test",
             progress: bool = True) -> dict:
    """Mean metric and 95% interval of the trained run over ``tasks`` tasks of ``split``."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").exists():
        raise ValueError(f"evaluate {run_dir}: no checkpoint.pt there; train first with --out {run_dir}")
    config = resolve(load_config(run_dir / "config.json"))
    tasks = tasks or config.eval_tasks
    if tasks < 2:
        raise ValueError(f"--tasks must be at least 2 for a confidence interval, got {tasks}")
    benchmark, model, method, device = setup(config)
    state = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    sampler = benchmark.sampler(split, config.seed)
    t0 = time.perf_counter()
    scores = evaluate_params(benchmark, model, method.eval_problem, dict(model.named_parameters()), sampler, tasks,
                             config.meta_batch, device, config.chunk_size, _vectorize(config.vectorize, device, benchmark),
                             progress=progress)
    mean, ci = mean_ci95(scores)
    result = {"method": config.method, "benchmark": config.benchmark, "ways": config.ways, "shots": config.shots,
              "split": split, "tasks": tasks, "metric": benchmark.metric_name, "mean": mean, "ci95": ci,
              "iteration": state["iteration"], "seconds": time.perf_counter() - t0}
    (run_dir / f"evaluation-{split}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
