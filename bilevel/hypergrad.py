"""The hypergradient interface: one result type, one backend protocol, two entry points.

``hypergrad(problem, theta, inner_batch, outer_batch, backend=...)`` gives, for one task,
the outer loss at the inner solution and ``d L_out(phi*(theta), theta) / d theta``.
``batched_hypergrad`` does the same for a meta-batch of tasks and returns the mean (or, with
``reduction="none"``, every task's): native backends run the whole batch as one program,
``vmap`` of the per-task gradient (never the gradient of a ``vmap``-ed mean, which torch 2.13
gets wrong through BatchNorm in training mode); library adapters loop over tasks.

Both accept a :class:`~bilevel.BilevelProblem` or a :class:`~bilevel.FixedPointProblem`, and
both apply one failure policy (``on_failure``, :mod:`bilevel.diagnostics`) to the result's
typed diagnostics. With ``create_graph=True`` the hypergradient carries autograd history to
``theta`` (and to whatever the losses close over), so one level's hypergradient can sit
inside another level's loss.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from .diagnostics import Diagnostics, check_failures, check_on_failure
from .eager import values_readable
from .errors import NonFiniteError
from .problem import BilevelProblem, FixedPointProblem
from .tree import Params, check_same_keys, nested_leaves, nested_map, tree_detach

__all__ = ["Hypergradient", "HypergradBackend", "AutogradAdapter", "reject_inner_solution", "reject_create_graph",
           "hypergrad", "batched_hypergrad", "fixed_point_hypergrad", "batched_fixed_point_hypergrad", "map_tasks",
           "num_tasks", "REDUCTIONS"]

REDUCTIONS = ("mean", "none")
_HALF = (torch.float16, torch.bfloat16)


class Hypergradient(NamedTuple):
    """What every backend returns.

    Attributes:
        loss: ``L_out(phi, theta, outer_batch)`` at the inner solution ``phi`` (0-d; per task
            with ``reduction="none"``).
        grad: the hypergradient, a dict keyed like ``theta``.
        inner_solution: ``phi`` (detached).
        diagnostics: the typed :class:`~bilevel.diagnostics.Diagnostics` of the solves.
        task_loss: :func:`batched_hypergrad` only: each task's outer loss.
    """

    loss: Tensor
    grad: Params
    inner_solution: Params
    diagnostics: Diagnostics = Diagnostics()
    task_loss: Tensor | None = None

    @property
    def stats(self) -> dict[str, Tensor]:
        """A flat ``{name: tensor}`` view of the diagnostics (and ``task_loss``), for logs."""
        out = self.diagnostics.as_stats()
        if self.task_loss is not None:
            out["task_loss"] = self.task_loss
        return out


class HypergradBackend(abc.ABC):
    """A way to compute hypergradients: a small immutable object with one method.

    Every backend implements :meth:`hypergrad` with this one signature and fills
    ``diagnostics`` for every solve it runs. A backend that cannot use a given
    ``inner_solution`` (it differentiates through the inner path) raises a clear error itself
    (:func:`reject_inner_solution`); one that supports ``create_graph=True`` says so with
    ``supports_create_graph``. Native backends are built from ``torch.func`` and run under
    ``vmap``; adapters over libraries that differentiate with ``torch.autograd`` subclass
    :class:`AutogradAdapter` and run one task at a time.
    """

    supports_create_graph: ClassVar[bool] = False

    @abc.abstractmethod
    def hypergrad(self, problem: BilevelProblem | FixedPointProblem, theta: Params, inner_batch: Any, outer_batch: Any,
                  *, inner_solution: Params | None = None, create_graph: bool = False) -> Hypergradient:
        """Outer loss and hypergradient for one task. ``theta`` arrives detached unless
        ``create_graph``, when the result must stay differentiable in it."""


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
    def result(out: Tensor, theta_leaves: Params, phi: Params,
               diagnostics: Diagnostics = Diagnostics()) -> Hypergradient:
        grads = torch.autograd.grad(out, list(theta_leaves.values()), allow_unused=True)
        g = {k: torch.zeros_like(v) if gk is None else gk for (k, v), gk in zip(theta_leaves.items(), grads)}
        return Hypergradient(out.detach(), g, tree_detach(phi), diagnostics)


def reject_inner_solution(backend: HypergradBackend, inner_solution: Params | None) -> None:
    """For backends that differentiate through the inner solver's path: no given solution."""
    if inner_solution is not None:
        raise TypeError(f"{type(backend).__name__}.hypergrad: this backend differentiates through the inner "
                        "solver's path and cannot take inner_solution=; use Implicit or FirstOrder, or pass "
                        "inner_start= to start the inner solver from a point of your own (a warm start).")


def reject_create_graph(call: str, backend) -> None:
    raise TypeError(f"{call}: create_graph=True needs a backend whose hypergradient is differentiable "
                    f"(Unrolled, Implicit); {type(backend).__name__} does not support it.")


# --- Checks shared by both entry points.


def _check_call(call: str, problem, theta, backend) -> None:
    if not isinstance(problem, (BilevelProblem, FixedPointProblem)):
        raise TypeError(f"{call}: expected a BilevelProblem or a FixedPointProblem, got {type(problem).__name__}.")
    if not isinstance(backend, HypergradBackend):
        raise TypeError(f"{call}: backend must be a HypergradBackend such as Implicit() or "
                        f"Unrolled(), got {type(backend).__name__} ({backend!r}).")
    if not isinstance(theta, Mapping):
        raise TypeError(f"{call}: theta must be a dict[str, Tensor] (e.g. dict(model.named_parameters())), "
                        f"got {type(theta).__name__}.")
    for k, v in theta.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{call}: theta[{k!r}] is a {type(v).__name__} ({v!r}), not a Tensor; write e.g. "
                            f"theta = {{{k!r}: torch.tensor({v!r})}}.")
        if not (v.is_floating_point() or v.is_complex()):
            raise TypeError(f"{call}: theta[{k!r}] has dtype {v.dtype}; hypergradients need floating-point "
                            f"tensors (e.g. torch.tensor(..., dtype=torch.float32) or theta[{k!r}].float()).")
    if not theta:
        raise ValueError(f"{call}: theta is empty; nothing to differentiate.")


def _on_failure(call: str, on_failure: str, throw: bool | None) -> str:
    if throw is not None:  # the older spelling
        if not isinstance(throw, bool):
            raise TypeError(f"{call}: throw must be True or False, got {throw!r}; prefer on_failure='raise'.")
        return "raise" if throw else on_failure
    return check_on_failure(call, on_failure)


def _check_result(call: str, result: Hypergradient, on_failure: str) -> Hypergradient:
    """The failure policy on a result whose values can be read (under ``vmap`` they cannot:
    the caller of the ``vmap`` checks). A non-finite loss or hypergradient always raises,
    except with ``on_failure="ignore"``."""
    if not isinstance(result, Hypergradient) or not isinstance(result.diagnostics, Diagnostics):
        raise TypeError(f"{call}: the backend returned {type(result).__name__}"
                        + (f" with diagnostics of type {type(result.diagnostics).__name__}"
                           if isinstance(result, Hypergradient) else "")
                        + "; a backend returns Hypergradient(loss, grad, inner_solution, Diagnostics(...)).")
    if on_failure == "ignore" or not values_readable(result.loss):
        return result
    if not bool(torch.isfinite(result.loss.detach()).all()):
        raise NonFiniteError(f"{call}: the outer loss is not finite ({result.loss.detach().flatten()[:4].tolist()}"
                             "...). Lower the inner learning rate or check the data for NaN.")
    bad = [k for k, g in result.grad.items() if not bool(torch.isfinite(g.detach()).all())]
    if bad:
        raise NonFiniteError(f"{call}: the hypergradient is not finite for {bad}. Lower the inner "
                             "learning rate, raise lambda, or use fewer unrolled steps.")
    check_failures(call, result.diagnostics, on_failure, stacklevel=4)
    return result


def _with_start(call: str, problem, theta: Params, inner_batch, start: Params | None):
    """``problem`` with its inner solver (or forward solver) starting at ``start``."""
    if start is None:
        return problem
    if not isinstance(start, Mapping):
        raise TypeError(f"{call}: inner_start must be a dict[str, Tensor] shaped like phi_0, got {type(start).__name__}.")
    start = tree_detach(dict(start))
    if isinstance(problem, FixedPointProblem):
        if problem.init is not None:
            check_same_keys(call, problem.init_state(theta, inner_batch), start, what="inner_start")
        return dataclasses.replace(problem, init=start)
    check_same_keys(call, problem.init_inner(theta), start, what="inner_start")
    return dataclasses.replace(problem, inner_init=start)


def _call_backend(backend: HypergradBackend, problem, theta, inner_batch, outer_batch, inner_solution,
                  create_graph: bool) -> Hypergradient:
    if create_graph:
        return backend.hypergrad(problem, theta, inner_batch, outer_batch, inner_solution=inner_solution,
                                 create_graph=True)
    return backend.hypergrad(problem, theta, inner_batch, outer_batch, inner_solution=inner_solution)


# --- Low precision: computed in float32.


def _half_dtypes(theta: Params) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in theta.items() if v.dtype in _HALF}


def _to_float32(tree):
    return nested_map(lambda t: t.float() if t.dtype in _HALF else t, tree)


def _problem_to_float32(problem):
    if isinstance(problem, BilevelProblem) and isinstance(problem.inner_init, Mapping):
        return dataclasses.replace(problem, inner_init=_to_float32(dict(problem.inner_init)))
    if isinstance(problem, FixedPointProblem) and isinstance(problem.init, Mapping):
        return dataclasses.replace(problem, init=_to_float32(dict(problem.init)))
    return problem


def _back_to(dtypes: dict[str, torch.dtype], result: Hypergradient) -> Hypergradient:
    grad = {k: g.to(dtypes[k]) if k in dtypes else g for k, g in result.grad.items()}
    return result._replace(grad=grad)


# --- Entry points.


def hypergrad(problem: BilevelProblem | FixedPointProblem, theta: Params, inner_batch: Any, outer_batch: Any, *,
              backend: HypergradBackend, inner_solution: Params | None = None, inner_start: Params | None = None,
              on_failure: str = "warn", create_graph: bool = False, throw: bool | None = None) -> Hypergradient:
    """Outer loss and hypergradient ``d L_out(phi*(theta), theta) / d theta`` for one task.

    Args:
        problem: a :class:`~bilevel.BilevelProblem` or a :class:`~bilevel.FixedPointProblem`.
        theta: outer parameters, a dict of floating-point tensors. Detached unless ``create_graph``.
        inner_batch: the data passed to ``inner_loss`` (e.g. a task's support set).
        outer_batch: the data passed to ``outer_loss`` (e.g. the task's query set).
        backend: e.g. ``Unrolled()``, ``Implicit(CG(maxiter=5, truncated=True))``, ``FirstOrder()``.
        inner_solution: a solution ``phi*`` computed elsewhere (implicit and first-order
            backends only), e.g. by a ``torch.optim`` loop.
        inner_start: a warm start: the inner (or forward) solver starts here instead of at the
            problem's ``inner_init`` (``init``), for every backend that runs a solver. It is a
            constant: no gradient flows through it (with ``inner_init="theta"``, MAML's path
            through ``phi_0 = theta`` is then dropped).
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"``: what a failed solve
            does (:mod:`bilevel.diagnostics`).
        create_graph: the hypergradient carries autograd history to ``theta`` and to what the
            losses close over (``Unrolled``, ``Implicit``), so that it can sit inside another
            level's loss; ``theta`` is then not detached.
        throw: the older spelling of ``on_failure="raise"``.

    Theta in bfloat16 or float16 is computed in float32 (HVPs, linear solve, outer gradient;
    the batches and a fixed ``inner_init`` are cast too) and the hypergradient cast back:
    half precision alone loses percents (``benchmarks/user_problems.py``).

    Raises:
        NonFiniteError: the loss or the hypergradient is NaN or infinite.
        SolverError: a solve failed and ``on_failure="raise"``.
    """
    call = "hypergrad"
    on_failure = _on_failure(call, on_failure, throw)
    _check_call(call, problem, theta, backend)
    if create_graph and not backend.supports_create_graph:
        reject_create_graph(call, backend)
    if inner_solution is not None and inner_start is not None:
        raise ValueError(f"{call}: give inner_solution= (a solution, no solve runs) or inner_start= (where the "
                         "solve starts), not both.")
    half = _half_dtypes(theta)
    if half:
        theta, inner_batch, outer_batch = _to_float32(dict(theta)), _to_float32(inner_batch), _to_float32(outer_batch)
        inner_solution, inner_start = _to_float32(inner_solution), _to_float32(inner_start)
        problem = _problem_to_float32(problem)
    theta = dict(theta) if create_graph else tree_detach(dict(theta))
    problem = _with_start(call, problem, theta, inner_batch, inner_start)
    result = _call_backend(backend, problem, theta, inner_batch, outer_batch, inner_solution, create_graph)
    result = _check_result(call, result, on_failure)
    return _back_to(half, result) if half else result


def batched_hypergrad(problem: BilevelProblem | FixedPointProblem, theta: Params, inner_batches: Any, outer_batches: Any,
                      *, backend: HypergradBackend, chunk_size: int | None = None,
                      inner_solutions: Params | None = None, inner_starts: Params | None = None,
                      vectorize: bool = True, reduction: str = "mean", on_failure: str = "warn",
                      create_graph: bool = False, throw: bool | None = None) -> Hypergradient:
    """Mean outer loss and mean hypergradient over a meta-batch of tasks (``reduction="none"``:
    every task's, stacked on dimension 0).

    Every tensor in ``inner_batches`` and ``outer_batches`` (and ``inner_solutions``,
    ``inner_starts``) has the task index as dimension 0. Native backends compute the per-task
    hypergradients under one ``vmap`` (``chunk_size`` tasks at a time, to bound memory);
    adapters over other libraries loop, and so does every backend with ``vectorize=False``
    (on a CPU a loop can be faster, and it holds one task's graph at a time). Both give the
    same numbers. ``inner_solution`` and ``diagnostics`` in the result are stacked per task,
    ``task_loss`` holds each task's outer loss, and the failure policy reads every task's
    diagnostics once, after the ``vmap``. Other arguments as :func:`hypergrad`.
    """
    call = "batched_hypergrad"
    on_failure = _on_failure(call, on_failure, throw)
    _check_call(call, problem, theta, backend)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"{call}: chunk_size must be a positive int or None, got {chunk_size!r}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{call}: reduction must be 'mean' or 'none' (every task's hypergradient), got {reduction!r}.")
    if create_graph and not backend.supports_create_graph:
        reject_create_graph(call, backend)
    if inner_solutions is not None and inner_starts is not None:
        raise ValueError(f"{call}: give inner_solutions= or inner_starts=, not both.")
    half = _half_dtypes(theta)
    if half:
        theta, inner_batches, outer_batches = (_to_float32(dict(theta)), _to_float32(inner_batches),
                                               _to_float32(outer_batches))
        inner_solutions, inner_starts = _to_float32(inner_solutions), _to_float32(inner_starts)
        problem = _problem_to_float32(problem)
    theta = dict(theta) if create_graph else tree_detach(dict(theta))
    num_tasks(inner_batches, outer_batches, inner_solutions, inner_starts)

    def one_task(inner_batch, outer_batch, solution=None, start=None):
        task_problem = _with_start(call, problem, theta, inner_batch, start)
        return _call_backend(backend, task_problem, theta, inner_batch, outer_batch, solution, create_graph)

    if inner_starts is not None:
        def task(inner_batch, outer_batch, start):
            return one_task(inner_batch, outer_batch, None, start)
        args = (inner_batches, outer_batches, inner_starts)
    else:
        task = one_task
        args = (inner_batches, outer_batches) + (() if inner_solutions is None else (inner_solutions,))
    vectorize = vectorize and not isinstance(backend, AutogradAdapter)
    per_task = map_tasks(task, *args, vectorize=vectorize, chunk_size=chunk_size)
    if reduction == "mean":
        result = per_task._replace(loss=per_task.loss.mean(), grad={k: g.mean(0) for k, g in per_task.grad.items()},
                                   task_loss=per_task.loss)
    else:
        result = per_task._replace(task_loss=per_task.loss)
    result = _check_result(call, result, on_failure)
    return _back_to(half, result) if half else result


def fixed_point_hypergrad(problem: FixedPointProblem, theta: Params, batch: Any, outer_batch: Any,
                          **kwargs) -> Hypergradient:
    """:func:`hypergrad` for a :class:`~bilevel.FixedPointProblem` (``batch`` goes to its map):
    the same entry point, with a check that the problem is one."""
    _require_fixed_point("fixed_point_hypergrad", problem)
    return hypergrad(problem, theta, batch, outer_batch, **kwargs)


def batched_fixed_point_hypergrad(problem: FixedPointProblem, theta: Params, batches: Any, outer_batches: Any,
                                  **kwargs) -> Hypergradient:
    """:func:`batched_hypergrad` for a :class:`~bilevel.FixedPointProblem` (tasks on dimension 0)."""
    _require_fixed_point("batched_fixed_point_hypergrad", problem)
    return batched_hypergrad(problem, theta, batches, outer_batches, **kwargs)


def _require_fixed_point(call: str, problem) -> None:
    if not isinstance(problem, FixedPointProblem):
        raise TypeError(f"{call}: expected a FixedPointProblem, got {type(problem).__name__}"
                        + (" (use bilevel.hypergrad for a BilevelProblem)." if isinstance(problem, BilevelProblem)
                           else "."))


# --- Tasks: one vmap, or a loop.


def map_tasks(fn, *batches, vectorize: bool = True, chunk_size: int | None = None):
    """``fn`` applied to each task (index 0 of every tensor in ``batches``), outputs stacked:
    one ``vmap`` (``chunk_size`` tasks at a time), or a Python loop; the same numbers.
    ``None`` in ``fn``'s output (a diagnostics field a backend does not fill) stays ``None``."""
    if vectorize:
        out = vmap(lambda *args: _none_to_empty(fn(*args)), chunk_size=chunk_size, randomness="error")(*batches)
        return _empty_to_none(out)
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


def _none_to_empty(tree):
    """``vmap`` returns tensors only: ``None`` travels as an empty tuple (no leaves)."""
    if tree is None:
        return ()
    if isinstance(tree, Mapping):
        return {k: _none_to_empty(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_none_to_empty(v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_none_to_empty(v) for v in tree)
    return tree


def _empty_to_none(tree):
    if isinstance(tree, tuple) and not hasattr(tree, "_fields") and len(tree) == 0:
        return None
    if isinstance(tree, Mapping):
        return {k: _empty_to_none(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_empty_to_none(v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_empty_to_none(v) for v in tree)
    return tree
