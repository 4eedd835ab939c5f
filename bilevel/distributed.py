"""Data-parallel meta-gradients over processes and machines, with ``torch.distributed``.

Every rank draws the same global meta-batch (same sampler, same seed), keeps a disjoint
contiguous share of its tasks, computes their meta-gradients with any backend, and an
all-reduce of ``sum over its tasks`` gives every rank the mean over the global meta-batch:

    g = (1 / B) sum_{r} sum_{i in share(r)} g_i

so the result does not depend on the number of processes (up to the order of float
additions). Launch with ``torchrun``; the process group uses gloo on CPU and NCCL on GPU,
with a timeout so that a failed rank ends the job instead of hanging it. No communication
code of our own: one ``all_reduce`` and one ``all_gather``.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .hypergrad import Hypergradient, batched_hypergrad, num_tasks
from .tree import Params, nested_map

__all__ = ["World", "init_world", "leave_world", "task_share", "take_share", "all_gather_tasks", "distributed_hypergrad",
           "reduce_hypergrad"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` (``size == 1``: no process group)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, progress bars and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def launched(cls) -> "World":
        """The place ``torchrun`` gave this process (``RANK``, ``WORLD_SIZE``), read from the
        environment without joining a process group; a plain process (``WORLD_SIZE`` unset or 1)
        is ``World(0, 1)``, as in :func:`init_world`."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), size) if size > 1 else cls()


def init_world(device: torch.device, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> World:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``MASTER_ADDR``...); a plain single process gets ``World(0, 1)``.

    gloo on CPU, NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``); collectives time out after
    ``timeout``, so a rank that died ends the others with an error instead of a hang. The group
    is destroyed at interpreter exit (:func:`leave_world`): a gloo group left alive can abort
    the process as it exits (``terminate called without an active exception``, exit -6), so
    a job whose every rank finished would still fail.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout)
        atexit.register(leave_world)
    return World(dist.get_rank(), dist.get_world_size())


def leave_world() -> None:
    """Destroy the process group, if one is joined (a no-op otherwise, so safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def task_share(num_tasks: int, world: World) -> slice:
    """The contiguous, disjoint share of ``num_tasks`` tasks that ``world.rank`` computes.

    Shares differ in size by at most one task when ``num_tasks`` is not a multiple of the
    world size; ranks beyond ``num_tasks`` get an empty share.
    """
    base, extra = divmod(num_tasks, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def take_share(batch: Any, share: slice) -> Any:
    """The tasks ``share`` (dimension 0) of every tensor in a nested batch."""
    return nested_map(lambda t: t[share], batch)


def all_gather_tasks(values: Tensor, world: World) -> Tensor:
    """Concatenate every rank's per-task ``values`` (dimension 0) in rank order, on every rank."""
    if not world.distributed:
        return values
    sizes = [torch.zeros((), dtype=torch.int64, device=values.device) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor(values.shape[0], device=values.device))
    longest = int(max(sizes))
    padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype, device=values.device)
    padded[: values.shape[0]] = values
    gathered = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(n)] for g, n in zip(gathered, sizes)])


def distributed_hypergrad(problem, theta: Params, inner_batches, outer_batches, *, backend,
                          world: World | None = None, inner_solutions=None, **kwargs) -> Hypergradient:
    """:func:`~bilevel.batched_hypergrad` over the global meta-batch, split across ranks.

    Every rank passes the same global batches; it computes its :func:`task_share` and the
    all-reduce returns, on every rank, the mean loss and mean hypergradient over all tasks.
    ``diagnostics`` and ``task_loss`` hold every task's (gathered in task order);
    ``inner_solution`` only this rank's share. With ``world.size == 1`` this is ``batched_hypergrad``.

    Example (inside a ``torchrun`` program)::

        world = init_world(device)
        result = distributed_hypergrad(problem, theta, support, query, backend=Implicit(CG(maxiter=5)),
                                       world=world)
        # result.grad is the same on every rank: step the optimizer everywhere
    """
    world = world or World()
    if not world.distributed:
        return batched_hypergrad(problem, theta, inner_batches, outer_batches, backend=backend,
                                 inner_solutions=inner_solutions, **kwargs)
    total = num_tasks(inner_batches, outer_batches, inner_solutions)  # the same task count everywhere, checked
    share = task_share(total, world)
    if share.stop - share.start == 0:
        raise ValueError(f"distributed_hypergrad: rank {world.rank} has no task: the meta-batch ({total}) "
                         f"must have at least as many tasks as processes ({world.size}).")
    local = batched_hypergrad(problem, theta, take_share(inner_batches, share), take_share(outer_batches, share),
                              backend=backend,
                              inner_solutions=None if inner_solutions is None else take_share(inner_solutions, share),
                              **kwargs)
    return reduce_hypergrad(local, total, world)


def reduce_hypergrad(local: Hypergradient, total: int, world: World) -> Hypergradient:
    """Every rank's :func:`~bilevel.batched_hypergrad` over its :func:`task_share` of ``total``
    tasks -> the global mean loss and hypergradient (one all-reduce of ``n_local * mean``) and
    every task's per-task ``stats``, gathered in task order. ``inner_solution`` stays local."""
    share = task_share(total, world)
    n_local = share.stop - share.start
    names = list(local.grad)
    flat = torch.cat([local.grad[k].reshape(-1) * n_local for k in names]
                     + [(local.loss * n_local).reshape(1)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat / total
    grads, offset = {}, 0
    for k in names:
        n = local.grad[k].numel()
        grads[k] = flat[offset:offset + n].view_as(local.grad[k])
        offset += n
    def every_task(value: Tensor) -> Tensor:  # per-task diagnostics: every task's, in task order
        if value.ndim >= 1 and value.shape[0] == n_local:
            gathered = all_gather_tasks(value.reshape(n_local, -1).to(torch.float64), world)
            return gathered.reshape(total, *value.shape[1:]).to(value.dtype)
        return value

    task_loss = None if local.task_loss is None else every_task(local.task_loss)
    return Hypergradient(flat[-1], grads, local.inner_solution, nested_map(every_task, local.diagnostics), task_loss)
