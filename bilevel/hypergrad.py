"""The hypergradient interface: one result type, one backend protocol, two entry points.

``hypergrad(problem, theta, inner_batch, outer_batch, backend=...)`` gives, for one task,
the outer loss at the inner solution and ``d L_out(phi*(theta), theta) / d theta``.
``batched_hypergrad`` does the same for a meta-batch of tasks and returns the mean: native
backends run the whole batch as one program, ``vmap`` of the per-task gradient (never the
gradient of a ``vmap``-ed mean, which torch 2.13 gets wrong through BatchNorm in training
mode); library adapters loop over tasks.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from .errors import NonFiniteError, SolverError
from .problem import BilevelProblem
from .tree import Params, nested_leaves, nested_map, tree_detach

__all__ = ["Hypergradient", "HypergradBackend", "AutogradAdapter", "reject_inner_solution", "hypergrad",
           "batched_hypergrad", "map_tasks"]


class Hypergradient(NamedTuple):
    """What every backend returns.

    Attributes:
        loss: ``L_out(phi, theta, outer_batch)`` at the inner solution ``phi`` (0-d).
        grad: the hypergradient, a dict keyed like ``theta``.
        inner_solution: ``phi`` (detached).
        stats: backend diagnostics as tensors, e.g. the linear solve's ``converged``,
            ``steps``, ``residual_norm``, ``negative_curvature``, ``diverged``.
    """

    loss: Tensor
    grad: Params
    inner_solution: Params
    stats: dict[str, Tensor]


class HypergradBackend(abc.ABC):
    """A way to compute hypergradients: a small immutable object with one method.

    Every backend implements :meth:`hypergrad` with this one signature. A backend that cannot
    use a given ``inner_solution`` (it differentiates through the inner path) raises a clear
    error itself (:func:`reject_inner_solution`). Native backends are built from
    ``torch.func`` alone and run under ``vmap``; adapters over libraries that differentiate
    with ``torch.autograd`` subclass :class:`AutogradAdapter` and run one task at a time.
    """

    @abc.abstractmethod
    def hypergrad(self, problem: BilevelProblem, theta: Params, inner_batch: Any, outer_batch: Any,
                  *, inner_solution: Params | None = None) -> Hypergradient:
        """Outer loss and hypergradient for one task (``theta`` arrives detached)."""


class AutogradAdapter(HypergradBackend):
    """A backend over a library that differentiates with ``torch.autograd`` (``higher``,
    ``TorchOpt``): never under ``vmap``, so :func:`batched_hypergrad` loops over tasks.

    The shared epilogue: :meth:`leaf_theta` makes ``theta`` a set of autograd leaves, and
    :meth:`result` turns the outer loss at the library's ``phi`` into a :class:`Hypergradient`
    (``d out / d theta``, zero for parameters ``out`` does not depend on).
    """

    @staticmethod
    def leaf_theta(theta: Params) -> Params:
        return {k: v.detach().requires_grad_(True) for k, v in theta.items()}

    @staticmethod
    def result(out: Tensor, theta_leaves: Params, phi: Params, stats: dict | None = None) -> Hypergradient:
        grads = torch.autograd.grad(out, list(theta_leaves.values()), allow_unused=True)
        g = {k: torch.zeros_like(v) if gk is None else gk for (k, v), gk in zip(theta_leaves.items(), grads)}
        return Hypergradient(out.detach(), g, tree_detach(phi), stats or {})


def reject_inner_solution(backend: HypergradBackend, inner_solution: Params | None) -> None:
    """For backends that differentiate through the inner solver's path: no given solution."""
    if inner_solution is not None:
        raise TypeError(f"{type(backend).__name__}.hypergrad: this backend differentiates through the inner "
                        "solver's path and cannot take inner_solution=; use Implicit or FirstOrder.")


def _check_call(call: str, problem, theta, backend) -> None:
    from .fixed_point import FixedPointProblem

    if not isinstance(problem, (BilevelProblem, FixedPointProblem)):
        raise TypeError(f"{call}: expected a BilevelProblem or a FixedPointProblem, got {type(problem).__name__}.")
    if not isinstance(backend, HypergradBackend):
        raise TypeError(f"{call}: backend must be a HypergradBackend such as Implicit() or "
                        f"Unrolled(), got {type(backend).__name__} ({backend!r}).")
    if not isinstance(theta, dict) or not all(isinstance(v, Tensor) for v in theta.values()):
        raise TypeError(f"{call}: theta must be a dict[str, Tensor] (e.g. "
                        f"dict(model.named_parameters())), got {type(theta).__name__}.")
    if not theta:
        raise ValueError(f"{call}: theta is empty; nothing to differentiate.")


def _check_result(call: str, result: Hypergradient, throw: bool) -> Hypergradient:
    if not bool(torch.isfinite(result.loss).all()):
        raise NonFiniteError(f"{call}: the outer loss is not finite ({result.loss.flatten()[:4].tolist()}"
                             "...). Lower the inner learning rate or check the data for NaN.")
    bad = [k for k, g in result.grad.items() if not bool(torch.isfinite(g).all())]
    if bad:
        raise NonFiniteError(f"{call}: the hypergradient is not finite for {bad}. Lower the inner "
                             "learning rate, raise lambda, or use fewer unrolled steps.")
    if throw and "converged" in result.stats and not bool(result.stats["converged"].all()):
        s = result.stats
        failed = int((~s["converged"]).sum())
        detail = []
        if bool(s.get("negative_curvature", torch.tensor(False)).any()):
            detail.append("negative curvature met (raise lambda or damping)")
        if bool(s.get("diverged", torch.tensor(False)).any()):
            detail.append("diverged (lower the Neumann alpha)")
        raise SolverError(f"{call}: the linear solve did not converge in {failed} of "
                          f"{s['converged'].numel()} systems (max residual "
                          f"{float(s['residual_norm'].max()):.3e}); "
                          + ("; ".join(detail) or "raise maxiter or loosen tol") + ".")
    return result


def hypergrad(problem: BilevelProblem, theta: Params, inner_batch: Any, outer_batch: Any, *,
              backend: HypergradBackend, inner_solution: Params | None = None,
              throw: bool = False) -> Hypergradient:
    """Outer loss and hypergradient ``d L_out(phi*(theta), theta) / d theta`` for one task.

    Args:
        problem: the :class:`BilevelProblem`.
        theta: outer parameters; they are detached, the result carries no graph.
        inner_batch: the data passed to ``inner_loss`` (e.g. a task's support set).
        outer_batch: the data passed to ``outer_loss`` (e.g. the task's query set).
        backend: e.g. ``Unrolled()``, ``Implicit(CG(maxiter=5))``, ``FirstOrder()``.
        inner_solution: a solution ``phi*`` computed elsewhere (implicit and first-order
            backends only), e.g. by a ``torch.optim`` loop.
        throw: raise :class:`SolverError` when a linear solve did not converge.

    Raises:
        NonFiniteError: the loss or the hypergradient is NaN or infinite.
    """
    _check_call("hypergrad", problem, theta, backend)
    result = backend.hypergrad(problem, tree_detach(theta), inner_batch, outer_batch, inner_solution=inner_solution)
    return _check_result("hypergrad", result, throw)


def batched_hypergrad(problem: BilevelProblem, theta: Params, inner_batches: Any, outer_batches: Any,
                      *, backend: HypergradBackend, chunk_size: int | None = None,
                      inner_solutions: Params | None = None, vectorize: bool = True,
                      throw: bool = False) -> Hypergradient:
    """Mean outer loss and mean hypergradient over a meta-batch of tasks.

    Every tensor in ``inner_batches`` and ``outer_batches`` (and ``inner_solutions``) has the
    task index as dimension 0. Native backends compute the per-task hypergradients under one
    ``vmap`` (``chunk_size`` tasks at a time, to bound memory); adapters over other libraries
    loop, and so does every backend with ``vectorize=False`` (on a CPU a loop can be faster,
    and it holds one task's graph at a time). Both give the same numbers. ``inner_solution``
    and ``stats`` in the result are stacked per task, and ``stats["task_loss"]`` holds each
    task's outer loss.
    """
    _check_call("batched_hypergrad", problem, theta, backend)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"batched_hypergrad: chunk_size must be a positive int or None, got {chunk_size!r}.")
    theta = tree_detach(theta)
    num_tasks(inner_batches, outer_batches, inner_solutions)

    def one_task(inner_batch, outer_batch, solution=None):
        return backend.hypergrad(problem, theta, inner_batch, outer_batch, inner_solution=solution)

    args = (inner_batches, outer_batches) + (() if inner_solutions is None else (inner_solutions,))
    vectorize = vectorize and not isinstance(backend, AutogradAdapter)
    per_task = map_tasks(one_task, *args, vectorize=vectorize, chunk_size=chunk_size)
    result = Hypergradient(
        loss=per_task.loss.mean(),
        grad={k: g.mean(0) for k, g in per_task.grad.items()},
        inner_solution=per_task.inner_solution,
        stats={**per_task.stats, "task_loss": per_task.loss},
    )
    return _check_result("batched_hypergrad", result, throw)


def map_tasks(fn, *batches, vectorize: bool = True, chunk_size: int | None = None):
    """``fn`` applied to each task (index 0 of every tensor in ``batches``), outputs stacked:
    one ``vmap`` (``chunk_size`` tasks at a time), or a Python loop; the same numbers."""
    if vectorize:
        return vmap(fn, chunk_size=chunk_size, randomness="error")(*batches)
    outs = [fn(*_index(batches, i)) for i in range(num_tasks(*batches))]
    return _stack(outs)


def num_tasks(*trees) -> int:
    sizes = {leaf.shape[0] if leaf.ndim else None for t in trees if t is not None for leaf in nested_leaves(t)}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"batched_hypergrad: every batch tensor needs the same task dimension 0; "
                         f"got leading sizes {sorted(s for s in sizes if s is not None)}"
                         + (" and a 0-d tensor" if None in sizes else "")
                         + ". Stack tasks along dim 0, or call hypergrad() for one task.")
    return sizes.pop()


def _index(tree, i):
    return nested_map(lambda x: x[i], tree)


def _stack(items):
    return nested_map(lambda *xs: torch.stack(xs), *items)
