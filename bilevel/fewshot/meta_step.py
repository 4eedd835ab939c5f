"""The meta-gradient of one meta-batch, as training uses it: the method's backend over the
tasks (split across ranks under ``torchrun``), the solver-failure policy of :mod:`.health`, and a
stop on a NaN that names the iteration and the tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..distributed import World, distributed_hypergrad, task_share
from ..errors import NonFiniteError
from ..hypergrad import Hypergradient, map_tasks, num_tasks
from ..memory_budget import MB, check_measurable, chunk_size_for_budget, cuda_peak_bytes
from ..tree import nested_map
from .benchmarks import batch_to_tasks
from .health import SolverHealth, nonfinite_error
from .methods import MethodSetup

__all__ = ["MetaGradient", "MetaStep", "take_tasks", "budget_chunk_size"]


def take_tasks(tree, tasks: list[int]):
    """Tasks ``tasks`` (dimension 0) of every tensor in a nest of tuples, lists and dicts."""
    return nested_map(lambda t: t[torch.as_tensor(tasks, device=t.device)], tree)


def _is_finite(result: Hypergradient) -> bool:
    return bool(torch.isfinite(result.loss).all()) and all(bool(torch.isfinite(g).all()) for g in result.grad.values())


class MetaStep(NamedTuple):
    """One iteration's meta-gradient.

    Attributes:
        result: the :class:`~bilevel.hypergrad.Hypergradient` over ``tasks``.
        tasks: the meta-batch's tasks it averages (``None``: all of them).
        failed: the tasks whose linear solve did not converge.
        skipped: no outer step (``skip-task`` and every task failed).
    """

    result: Hypergradient
    tasks: list[int] | None
    failed: list[int]
    skipped: bool


class MetaGradient:
    """The mean meta-gradient of a meta-batch, by ``method``'s backend.

    Stops on a NaN or infinite loss or meta-gradient (:class:`~bilevel.errors.NonFiniteError`
    naming the iteration and, rechecked one by one, the tasks) and applies ``health``'s
    policy to the tasks whose linear solve failed: ``skip-task`` recomputes the mean over the
    healthy tasks only (failures are rare, so recomputing is cheaper than always solving
    tasks one by one).
    """

    def __init__(self, method: MethodSetup, health: SolverHealth, vectorize: bool, chunk_size: int | None,
                 world: World | None = None):
        self.method, self.health, self.vectorize, self.chunk_size = method, health, vectorize, chunk_size
        self.world = world or World()

    def compute(self, params, support, query, tasks: list[int] | None = None, split: bool = True) -> Hypergradient:
        """The mean over ``tasks`` (default: all); under ``torchrun`` each rank computes its share
        and the meta-gradient is all-reduced (``split=False``: every rank computes them all)."""
        if tasks is not None:
            support, query = take_tasks(support, tasks), take_tasks(query, tasks)
        world = self.world if split else World()
        inner_solutions = None
        if self.method.adapt is not None:  # the inner solutions come from another solver (official protocol)
            # (every rank adapts every task: distributed_hypergrad takes each rank's share of them)
            theta = {k: v.detach() for k, v in params.items()}
            inner_solutions = map_tasks(lambda s: self.method.adapt.solve_inner(theta, s, detach=True), support,
                                        vectorize=self.vectorize, chunk_size=self.chunk_size)
        # The policy is the trainer's (--on-solver-failure, applied per task in __call__), not the library's warning.
        return distributed_hypergrad(self.method.problem, params, support, query, backend=self.method.backend,
                                     world=world, inner_solutions=inner_solutions, chunk_size=self.chunk_size,
                                     vectorize=self.vectorize, on_failure="ignore")

    def __call__(self, iteration: int, params, support, query) -> MetaStep:
        result = self._finite(iteration, params, support, query, None)
        failed = self.health.check(iteration, result.diagnostics)
        if not failed or self.health.policy != "skip-task":
            return MetaStep(result, None, failed, skipped=False)
        healthy = [t for t in range(num_tasks(support)) if t not in failed]
        if not healthy:
            return MetaStep(result, None, failed, skipped=True)
        return MetaStep(self._finite(iteration, params, support, query, healthy), healthy, failed, skipped=False)

    def _finite(self, iteration, params, support, query, tasks) -> Hypergradient:
        try:
            result = self.compute(params, support, query, tasks)
        except NonFiniteError as exc:
            raise nonfinite_error(iteration, self._nonfinite_tasks(params, support, query, tasks), str(exc)) from None
        if not _is_finite(result):
            losses = result.task_loss
            numbering = tasks if tasks is not None else range(num_tasks(support))
            bad = [] if losses is None else [t for t, ok in zip(numbering, torch.isfinite(losses).tolist()) if not ok]
            raise nonfinite_error(iteration, bad or self._nonfinite_tasks(params, support, query, tasks),
                                  f"mean loss {float(result.loss)}")
        return result

    def _nonfinite_tasks(self, params, support, query, tasks) -> list[int]:
        bad = []
        for t in tasks if tasks is not None else range(num_tasks(support)):
            try:
                finite = _is_finite(self.compute(params, support, query, [t], split=False))
            except NonFiniteError:
                finite = False
            if not finite:
                bad.append(t)
        return bad


def budget_chunk_size(config, benchmark, method: MethodSetup, params: dict, device: torch.device,
                      vectorize: bool, world: World) -> int:
    """``--memory-budget``: the chunk size of :func:`~bilevel.memory_budget.chunk_size_for_budget`,
    each peak that of the loop's meta-gradient (:class:`MetaGradient`) on one meta-batch of
    validation tasks, whose stream restarts from its seed: the training run is unchanged. A
    warm-up on one task first, so that one-time allocations (cuBLAS's workspace) are not
    counted as a task's memory. Under ``torchrun`` each process fits its own share."""
    check_measurable(device, vectorize)
    support, query = batch_to_tasks(benchmark.sampler("val", config.seed).sample(config.meta_batch), device)

    def peak(k: int) -> int:
        gradient = MetaGradient(method, None, vectorize, k, world)
        return cuda_peak_bytes(lambda: gradient.compute(params, support, query), device)

    MetaGradient(method, None, vectorize, None).compute(params, take_tasks(support, [0]), take_tasks(query, [0]),
                                                        split=False)
    share = task_share(config.meta_batch, world)
    return chunk_size_for_budget(peak, max(1, share.stop - share.start), config.memory_budget_mb * MB)
