"""Meta-training and evaluation of a few-shot run, with exact resume.

A run directory holds ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one
record per training iteration and per validation, :mod:`.run_log`), ``checkpoint.pt``
(written atomically, loaded without running code, :mod:`.checkpoint`), ``summary.json`` and,
after evaluation, ``evaluation-<split>.json``.

:func:`train`'s loop is the algorithm: sample a meta-batch, compute the meta-gradient
(:class:`MetaGradient`: the solver-failure policy of :mod:`.health`, and a stop on a NaN), take
an Adam step, log; validate and checkpoint on schedule. Resume is exact: the checkpoint holds
the parameters, the outer optimizer's state and the task sampler's position, so training N
iterations, stopping (Ctrl-C, a crash, ``kill -9``) and resuming gives the same parameters,
bit for bit on the CPU, as training without a stop (docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.common import atomic_write_text
from ..devices import resolve_device
from ..distributed import World, all_gather_tasks, init_world, take_share, task_share
from ..hypergrad import map_tasks, num_tasks
from ..memory_budget import check_measurable
from ..validation import check_output_dir
from .benchmarks import BENCHMARKS, batch_to_tasks, make_benchmark
from .checkpoint import CHECKPOINT, Checkpointer, Progress, load_checkpoint
from .config import TrainConfig, load_config, resolve, save_config
from .determinism import make_deterministic
from .health import SolverHealth
from .meta_step import MetaGradient, MetaStep, budget_chunk_size, take_tasks
from .interrupt import StopRequest, TrainingInterrupted
from .meters import MemoryMeter, Stopwatch
from .methods import MethodSetup, build_method
from .run_log import MetricsLog, stats_record

__all__ = ["train", "evaluate", "evaluate_params", "setup", "mean_ci95"]


def setup(config: TrainConfig):
    """Build ``(benchmark, model, method, device)`` for a resolved config (``method`` is a
    :class:`~bilevel.fewshot.methods.MethodSetup`)."""
    if getattr(config, "deterministic", False):
        make_deterministic()
    torch.manual_seed(config.seed)  # the network's initialization
    benchmark = make_benchmark(config.benchmark, config.ways, config.shots, config.queries, config.data_root,
                               net=config.net, init=config.init)
    device = resolve_device(config.device)
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
                    vectorize: bool = True, progress: bool = False, world: World | None = None):
    """Adapt ``theta`` to ``num_tasks`` tasks (the method's inner problem and solver on the
    support set) and score each on its query set; returns the per-task metric.

    Under ``torchrun`` (``world``), every rank draws the same tasks, scores its share of each
    batch, and every rank gets all the scores in task order: the same numbers as one process."""
    world = world or World()
    theta = {k: v.detach() for k, v in theta.items()}

    def one_task(support, query):
        phi = problem.solve_inner(theta, support, detach=True)
        return benchmark.score(model, phi, query)

    scores, done = [], 0  # a disabled tqdm does not count, so count here
    with tqdm(total=num_tasks, disable=not progress, dynamic_ncols=True, desc="evaluating", unit="task") as bar:
        while done < num_tasks:
            b = min(meta_batch, num_tasks - done)
            support, query = batch_to_tasks(sampler.sample(b), device)
            share = task_share(b, world)
            if world.distributed:
                support, query = take_share(support, share), take_share(query, share)
            local = (map_tasks(one_task, support, query, vectorize=vectorize, chunk_size=chunk_size).detach()
                     if share.stop > share.start else torch.zeros(0, device=device))
            scores.append(all_gather_tasks(local.double(), world).float().cpu() if world.distributed else local.cpu())
            done += b
            bar.update(b)
    return torch.cat(scores)


def resolve_vectorize(setting: str, device: torch.device, benchmark) -> bool:
    """``auto``: one ``vmap`` over the meta-batch, except for conv nets on a CPU, where ``vmap``'s
    batched (grouped) convolutions are slower than a loop over tasks (3.5 s vs 2.9 s for 8
    Omniglot MAML tasks here) and hold every task's graph at once (19 GB for 32 tasks)."""
    if setting != "auto":
        return setting == "on"
    return not (device.type == "cpu" and benchmark.convolutional)


def is_improvement(value: float, best: float | None, higher_is_better: bool) -> bool:
    """Whether the validation metric ``value`` beats ``best`` (``None``: no validation yet):
    larger for accuracy, smaller for MSE. A NaN never does."""
    if math.isnan(value):
        return False
    return best is None or (value > best if higher_is_better else value < best)


def validate(benchmark, model, method: MethodSetup, config: TrainConfig, device,
             vectorize: bool, world: World | None = None, chunk_size: int | None = None) -> tuple[float, float]:
    """Mean metric and 95% half-width over ``config.val_tasks`` validation tasks, the same
    tasks every time (the validation stream restarts from its seed); ``chunk_size``: the
    run's (default ``config.chunk_size``)."""
    sampler = benchmark.sampler("val", config.seed)
    scores = evaluate_params(benchmark, model, method.eval_problem, dict(model.named_parameters()), sampler,
                             config.val_tasks, config.meta_batch, device, chunk_size or config.chunk_size, vectorize,
                             world=world)
    return mean_ci95(scores)


# --- the training loop and its small helpers

def _run_config(config: TrainConfig | None, run_dir: Path, resume: bool, iterations: int | None) -> TrainConfig:
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            raise ValueError(f"--resume {run_dir}: no {CHECKPOINT} there; start a run with --out {run_dir}")
        config = load_config(run_dir / "config.json")
    config = resolve(config)
    if iterations is not None:
        config = resolve(dataclasses.replace(config, iterations=iterations))
    return config


def _make_run_dir(run_dir: Path) -> None:
    check_output_dir("train", "run_dir", run_dir)  # a file in the way, or a read-only parent: one line
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # what the cheap check cannot see (e.g. a special file system)
        raise ValueError(f"train: run_dir {str(run_dir)!r} cannot be created ({exc.strerror}); choose another "
                         "run_dir") from None


class _NoLog:
    """The metrics log of a rank other than 0: writes nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, record: dict) -> None:
        pass

    def flush(self) -> None:
        pass


def _any_rank(flag: bool, world: World) -> bool:
    if not world.distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _check_world_size(run_dir: Path, world: World, resume: bool) -> None:
    """Resuming with another number of processes is allowed: every rank draws the whole
    meta-batch from the same sampler, so the task stream does not depend on the world size;
    only the order of float additions in the all-reduce changes. Say so once."""
    summary = run_dir / "summary.json"
    if resume and world.is_main and summary.exists():
        before = json.loads(summary.read_text()).get("world_size", 1)
        if before != world.size:
            print(f"note: {run_dir} was trained with {before} process(es), resumed with {world.size}: the same tasks "
                  "and meta-gradients up to float rounding (docs/distributed.md)", file=sys.stderr)


def _due(iteration: int, every: int, last: int) -> bool:
    return iteration % every == 0 or iteration == last


def _outer_step(optimizer: torch.optim.Optimizer, params: dict, grad: dict) -> None:
    from ..modules import write_grad

    optimizer.zero_grad(set_to_none=True)
    write_grad(params, grad)
    optimizer.step()


def _train_record(iteration: int, step: MetaStep, metric: str, score: float, seconds: float, meta_batch: int) -> dict:
    record = {"iteration": iteration, "split": "train", "loss": float(step.result.loss), metric: score,
              "seconds": seconds, "tasks_per_second": meta_batch / seconds, **stats_record(step.result.stats)}
    if any(part is not None for part in step.result.diagnostics):  # a backend with solves that can fail
        record["solver_failures"] = len(step.failed)
    if step.tasks is not None or step.skipped:
        record["skipped_tasks"] = step.failed
    if step.skipped:
        record["skipped_step"] = True
    return record


def _summary(config: TrainConfig, backend, run: Progress, memory: MemoryMeter, device, chunk_size) -> dict:
    budget = {} if config.memory_budget_mb is None else {"chunk_size_chosen": chunk_size}
    return {
        "method": config.method, "benchmark": config.benchmark, "net": config.net, "ways": config.ways,
        "shots": config.shots, "iterations": config.iterations, "backend": config.backend or type(backend).__name__,
        "seconds_per_iteration": run.train_seconds / run.timed_iterations if run.timed_iterations else None,
        "peak_memory_mb": memory.peak_mb(), "memory_kind": memory.kind, "best_val": run.best_val,
        "device": str(device), **budget,
    }


def train(config: TrainConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
          iterations: int | None = None, progress: bool = True) -> dict:
    """Meta-train into ``run_dir``; with ``resume=True`` continue the run saved there
    (``iterations`` then sets a new total).

    Returns the summary (also written to ``summary.json``).

    Raises:
        ValueError: bad settings or run folder (one line naming the fix).
        NonFiniteError: a NaN or infinite loss or meta-gradient (no checkpoint is written for it).
        SolverError: a linear solve failed under ``on_solver_failure="stop"``.
        CheckpointError: the checkpoint to resume is unreadable or unsafe.
        TrainingInterrupted: Ctrl-C; the last completed iteration was checkpointed.
    """
    run_dir = Path(run_dir)
    config = _run_config(config, run_dir, resume, iterations)
    if config.memory_budget_mb is not None:  # before any work
        budget_device = resolve_device(config.device)
        check_measurable(budget_device, resolve_vectorize(config.vectorize, budget_device, BENCHMARKS[config.benchmark]))
    benchmark, model, method, device = setup(config)
    world = init_world(device)  # torchrun: join the process group; else one process
    if world.is_main:
        _make_run_dir(run_dir)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr, eps=config.outer_eps)
    sampler = benchmark.sampler("train", config.seed)
    checkpoints = Checkpointer(run_dir / CHECKPOINT, model, optimizer, sampler, config)
    run = checkpoints.restore() if resume else Progress()
    _check_world_size(run_dir, world, resume)
    if run.iteration > config.iterations:
        raise ValueError(f"--iterations {config.iterations} is below the {run.iteration} iterations already in "
                         f"{run_dir}; ask for at least {run.iteration}")
    if world.is_main:
        save_config(config, run_dir / "config.json")

    vectorize = resolve_vectorize(config.vectorize, device, benchmark)
    params = dict(model.named_parameters())
    chunk_size = config.chunk_size
    if config.memory_budget_mb is not None:
        chunk_size = budget_chunk_size(config, benchmark, method, params, device, vectorize, world)
        if world.is_main:
            print(f"memory budget {config.memory_budget_mb:g} MB: chunk size {chunk_size} of "
                  f"{config.meta_batch} tasks", file=sys.stderr)
    metric, first = benchmark.metric_name, run.iteration + 1
    stopwatch, memory = Stopwatch(device), MemoryMeter(device)
    with tqdm(total=config.iterations, initial=run.iteration, disable=not (progress and world.is_main),
              dynamic_ncols=True, desc=f"{config.method} {config.benchmark}", unit="it") as bar, \
            (MetricsLog(run_dir / "metrics.jsonl", keep_until=run.iteration if resume else None) if world.is_main
             else _NoLog()) as log, \
            StopRequest() as stop:
        health = SolverHealth(getattr(config, "on_solver_failure", None) or "warn",
                              write=(lambda line: bar.write(line, file=sys.stderr)) if world.is_main else (lambda line: None))
        meta_gradient = MetaGradient(method, health, vectorize, chunk_size, world)
        for iteration in range(first, config.iterations + 1):
            stopwatch.start()
            support, query = batch_to_tasks(sampler.sample(config.meta_batch), device)
            step = meta_gradient(iteration, params, support, query)
            if not step.skipped:
                _outer_step(optimizer, params, step.result.grad)
            query_used = query if step.tasks is None else take_tasks(query, step.tasks)
            if world.distributed:  # the inner solutions are this rank's share
                query_used = take_share(query_used, task_share(num_tasks(query_used), world))
            scores = map_tasks(lambda phi, q: benchmark.score(model, phi, q), step.result.inner_solution, query_used,
                               vectorize=vectorize, chunk_size=chunk_size)
            scores = all_gather_tasks(scores.double(), world) if world.distributed else scores
            seconds = stopwatch.stop()
            if Stopwatch.is_timed(iteration, first, config.iterations):
                run.add_time(seconds)
            memory.sample()
            run.iteration = iteration
            record = _train_record(iteration, step, metric, float(scores.mean()), seconds, config.meta_batch)
            log.write(record)
            bar.update(1)
            bar.set_postfix({"loss": f"{record['loss']:.3f}", metric: f"{record[metric]:.3f}",
                             "tasks/s": f"{record['tasks_per_second']:.0f}"}, refresh=False)

            if _due(iteration, config.val_every, config.iterations):
                val_mean, val_ci = validate(benchmark, model, method, config, device, vectorize, world, chunk_size)
                if is_improvement(val_mean, run.best_val, benchmark.higher_is_better):
                    run.best_val = val_mean
                log.write({"iteration": iteration, "split": "val", metric: val_mean, "ci95": val_ci})
                if world.is_main:  # one line per validation, not one per process
                    bar.write(f"[{config.method}] iteration {iteration}: val {metric} {val_mean:.4f} +- {val_ci:.4f}")
            interrupted = stop.requested and iteration < config.iterations
            interrupted = _any_rank(interrupted, world)  # Ctrl-C reaches every rank; stop together
            if (_due(iteration, config.checkpoint_every, config.iterations) or interrupted) and world.is_main:
                log.flush()  # the checkpoint must not cover records still in a buffer
                checkpoints.save(run)
            if interrupted:
                raise TrainingInterrupted(f"interrupted after iteration {iteration} (checkpoint saved); resume "
                                          f"with: bilevel train --resume {run_dir}")

    summary = {**_summary(config, method.backend, run, memory, device, chunk_size), "world_size": world.size}
    if world.is_main:
        atomic_write_text(json.dumps(summary, indent=2) + "\n", run_dir / "summary.json")
    return summary


def evaluate(run_dir: str | os.PathLike, *, tasks: int | None = None, split: str = "test",
             progress: bool = True) -> dict:
    """Mean metric and 95% interval of the trained run over ``tasks`` tasks of ``split``."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        raise ValueError(f"evaluate {run_dir}: no {CHECKPOINT} there; train first with --out {run_dir}")
    config = resolve(load_config(run_dir / "config.json"))
    tasks = tasks or config.eval_tasks
    if tasks < 2:
        raise ValueError(f"--tasks must be at least 2 for a confidence interval, got {tasks}")
    benchmark, model, method, device = setup(config)
    world = init_world(device)
    state = load_checkpoint(run_dir / CHECKPOINT)
    model.load_state_dict(state["model"])
    sampler = benchmark.sampler(split, config.seed)
    chunk_size = config.chunk_size
    if config.memory_budget_mb is not None and (run_dir / "summary.json").exists():  # training's chunk fits
        chunk_size = json.loads((run_dir / "summary.json").read_text()).get("chunk_size_chosen")
    stopwatch = Stopwatch(device)
    stopwatch.start()
    scores = evaluate_params(benchmark, model, method.eval_problem, dict(model.named_parameters()), sampler, tasks,
                             config.meta_batch, device, chunk_size, resolve_vectorize(config.vectorize, device, benchmark),
                             progress=progress and world.is_main, world=world)
    mean, ci = mean_ci95(scores)
    result = {"method": config.method, "benchmark": config.benchmark, "ways": config.ways, "shots": config.shots,
              "split": split, "tasks": tasks, "metric": benchmark.metric_name, "mean": mean, "ci95": ci,
              "iteration": state["iteration"], "seconds": stopwatch.stop(), "world_size": world.size}
    if world.is_main:
        atomic_write_text(json.dumps(result, indent=2) + "\n", run_dir / f"evaluation-{split}.json")
    return result
