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

A run folder has one writer at a time (:mod:`.run_lock`: a second train, resume or evaluate
is refused naming the holder's PID), a new run never replaces an old one silently
(``overwrite=True`` or ``resume=True``, :mod:`.run_folder`), a checkpoint is resumed or
evaluated only if it agrees with ``config.json`` and its own digest (:mod:`.checkpoint`), and
SIGTERM and SIGHUP stop like Ctrl-C (:mod:`.interrupt`).
"""

from __future__ import annotations

import contextlib
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
from .checkpoint import CHECKPOINT, Checkpointer, Progress, check_config, load_checkpoint, load_model_state
from .config import TrainConfig, load_config, resolve, save_config
from .determinism import make_deterministic
from .health import SolverHealth
from .meta_step import MetaGradient, MetaStep, budget_chunk_size, take_tasks
from .interrupt import StopRequest, TrainingInterrupted
from .meters import MemoryMeter, Stopwatch
from .methods import MethodSetup, build_method
from .run_folder import claim_for_new_run, json_text, remove_leftover_temp_files, writing
from .run_lock import RunLock
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

def _run_config(config: TrainConfig | None, run_dir: Path, resume: bool, iterations: int | None,
                places: dict) -> TrainConfig:
    if resume:
        if not (run_dir / CHECKPOINT).exists():
            raise ValueError(f"--resume {run_dir}: no {CHECKPOINT} there; start a run with --out {run_dir}")
        config = load_config(run_dir / "config.json")
    config = resolve(config)
    if iterations is not None or places:
        config = resolve(dataclasses.replace(config, **places, **({} if iterations is None else
                                                                    {"iterations": iterations})))
    return config


def _places(data_root: str | None, device: str | None) -> dict:
    """The settings that only say where things are, as given (``None``: the run's own)."""
    return {k: v for k, v in (("data_root", data_root), ("device", device)) if v is not None}


def _folder_lock(run_dir: Path, command: str):
    """The run folder's lock in the process that writes (rank 0 under ``torchrun``)."""
    return RunLock(run_dir, command) if World.launched().is_main else contextlib.nullcontext()


def _read_summary(run_dir: Path) -> dict:
    """``summary.json``, or ``{}`` when it is missing or not a JSON object (it is rewritten at the end)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


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
    if resume and world.is_main and (run_dir / "summary.json").exists():
        before = _read_summary(run_dir).get("world_size", 1)
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


def _keep_peak_memory(summary: dict, before: dict, iterations_run: int) -> dict:
    """A resume measures only its own iterations: the run's peak is the larger of the two
    (the earlier one alone when nothing ran, never the 0.0 of an unmeasured process)."""
    earlier = before.get("peak_memory_mb")
    if not isinstance(earlier, (int, float)) or before.get("memory_kind") != summary["memory_kind"]:
        return summary if iterations_run else {**summary, **{k: before[k] for k in ("peak_memory_mb", "memory_kind")
                                                              if k in before}}
    return {**summary, "peak_memory_mb": max(float(earlier), summary["peak_memory_mb"] if iterations_run else 0.0)}


def train(config: TrainConfig | None, run_dir: str | os.PathLike, *, resume: bool = False,
          iterations: int | None = None, progress: bool = True, overwrite: bool = False,
          data_root: str | None = None, device: str | None = None) -> dict:
    """Meta-train into ``run_dir``; with ``resume=True`` continue the run saved there
    (``iterations`` then sets a new total).

    A folder that already holds a run (a checkpoint, a summary or an evaluation) is refused
    unless ``resume=True`` or ``overwrite=True`` (which deletes the old run's files first). The
    folder is locked for the life of the call. ``data_root`` and ``device``, when given,
    replace the config's (a resumed run's data may have moved, or it may go on on another device).

    Returns the summary (also written to ``summary.json``).

    Raises:
        ValueError: bad settings, a run folder that holds a run, or one in use by another
            process (one line naming the fix or the PID).
        NonFiniteError: a NaN or infinite loss or meta-gradient (no checkpoint is written for it).
        SolverError: a linear solve failed under ``on_solver_failure="stop"``.
        CheckpointError: the checkpoint to resume is unreadable, unsafe, damaged, not finite or
            another run's; or (its subclass ``RunFolderError``) a file of the run could not be
            written (a full disk), or ``metrics.jsonl`` is damaged.
        TrainingInterrupted: SIGINT (Ctrl-C), SIGTERM or SIGHUP; the last completed iteration was
            checkpointed.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError(f"train {run_dir}: --resume continues the run there and --overwrite deletes it; choose "
                         "one")
    config = _run_config(config, run_dir, resume, iterations, _places(data_root, device))
    if config.memory_budget_mb is not None:  # before any work
        budget_device = resolve_device(config.device)
        check_measurable(budget_device, resolve_vectorize(config.vectorize, budget_device, BENCHMARKS[config.benchmark]))
    if World.launched().is_main:
        _make_run_dir(run_dir)
    with _folder_lock(run_dir, "train --resume" if resume else "train"):
        if World.launched().is_main:
            remove_leftover_temp_files(run_dir)  # a killed write's; no other writer lives here now
            if not resume:
                claim_for_new_run(run_dir, overwrite)  # a run there: refused unless overwrite, before loading data
        if resume:  # another run's checkpoint is refused before any data are loaded (restore checks it again)
            check_config(load_checkpoint(run_dir / CHECKPOINT), config, run_dir / CHECKPOINT)
        return _train(config, run_dir, resume, progress)


def _train(config: TrainConfig, run_dir: Path, resume: bool, progress: bool) -> dict:
    """:func:`train` in its locked, claimed run folder."""
    benchmark, model, method, device = setup(config)
    world = init_world(device)  # torchrun: join the process group; else one process
    optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr, eps=config.outer_eps)
    sampler = benchmark.sampler("train", config.seed)
    checkpoints = Checkpointer(run_dir / CHECKPOINT, model, optimizer, sampler, config)
    run = checkpoints.restore() if resume else Progress()
    _check_world_size(run_dir, world, resume)
    if run.iteration > config.iterations:
        raise ValueError(f"--iterations {config.iterations} is below the {run.iteration} iterations already in "
                         f"{run_dir}; ask for at least {run.iteration}")
    if world.is_main:
        with writing(run_dir / "config.json"):
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
                # An overflowed validation (inf) is no best: a checkpoint holding it could not be loaded.
                if math.isfinite(val_mean) and is_improvement(val_mean, run.best_val, benchmark.higher_is_better):
                    run.best_val = val_mean
                log.write({"iteration": iteration, "split": "val", metric: val_mean, "ci95": val_ci})
                if world.is_main:  # one line per validation, not one per process
                    bar.write(f"[{config.method}] iteration {iteration}: val {metric} {val_mean:.4f} +- {val_ci:.4f}")
            interrupted = stop.requested and iteration < config.iterations
            interrupted = _any_rank(interrupted, world)  # Ctrl-C reaches every rank; stop together
            if (_due(iteration, config.checkpoint_every, config.iterations) or interrupted) and world.is_main:
                log.flush()  # the checkpoint must not cover records still in a buffer
                with writing(checkpoints.path):  # a full disk: one line, the previous checkpoint kept
                    checkpoints.save(run)
            if interrupted:
                raise TrainingInterrupted(f"interrupted ({stop.signal_name}) after iteration {iteration} (checkpoint "
                                          f"saved); resume with: bilevel train --resume {run_dir}", stop.signum)

    summary = {**_summary(config, method.backend, run, memory, device, chunk_size), "world_size": world.size}
    if resume:
        summary = _keep_peak_memory(summary, _read_summary(run_dir), max(0, config.iterations - first + 1))
    if world.is_main:
        with writing(run_dir / "summary.json"):
            atomic_write_text(json_text(summary), run_dir / "summary.json")
    return summary


def evaluate(run_dir: str | os.PathLike, *, tasks: int | None = None, split: str = "test",
             progress: bool = True, data_root: str | None = None, device: str | None = None) -> dict:
    """Mean metric and 95% interval of the trained run over ``tasks`` tasks of ``split``, also
    written to ``evaluation-<split>.json`` (strict JSON: a NaN is ``null``).

    The checkpoint must agree with ``config.json`` and its digest, and be finite
    (:class:`~bilevel.fewshot.checkpoint.CheckpointError` otherwise); the folder is locked while
    evaluating. ``data_root`` and ``device``, when given, replace the run's."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        raise ValueError(f"evaluate {run_dir}: no {CHECKPOINT} there; train first with --out {run_dir}")
    config = resolve(load_config(run_dir / "config.json"))
    places = _places(data_root, device)
    config = resolve(dataclasses.replace(config, **places)) if places else config
    tasks = tasks or config.eval_tasks
    if tasks < 2:
        raise ValueError(f"--tasks must be at least 2 for a confidence interval, got {tasks}")
    with _folder_lock(run_dir, "evaluate"):
        return _evaluate(config, run_dir, tasks, split, progress)


def _evaluate(config: TrainConfig, run_dir: Path, tasks: int, split: str, progress: bool) -> dict:
    state = load_checkpoint(run_dir / CHECKPOINT)
    check_config(state, config, run_dir / CHECKPOINT)  # before any data are loaded
    benchmark, model, method, device = setup(config)
    world = init_world(device)
    load_model_state(model, state, run_dir / CHECKPOINT)
    sampler = benchmark.sampler(split, config.seed)
    chunk_size = config.chunk_size
    if config.memory_budget_mb is not None and (run_dir / "summary.json").exists():  # training's chunk fits
        chunk_size = _read_summary(run_dir).get("chunk_size_chosen")
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
        path = run_dir / f"evaluation-{split}.json"
        with writing(path):
            atomic_write_text(json_text(result), path)
    return result
