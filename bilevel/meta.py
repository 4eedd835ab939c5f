"""Meta-learning as bilevel problems: MAML-style and iMAML (proximal) inner objectives.

A task's loss is ``task_loss(params, batch) -> scalar``; the support set is the inner
batch, the query set the outer batch, and ``phi`` starts at ``theta``.

* :func:`maml_problem`: ``L_in(phi) = L_train(phi)``; with ``Unrolled`` this is MAML,
  with ``FirstOrder`` first-order MAML, with ``Reptile`` Reptile.
* :func:`imaml_problem`: ``L_in(phi) = L_train(phi) + (lam/2)||phi - theta||^2``; with
  ``Implicit`` the hypergradient is iMAML's ``(I + H/lam)^-1 grad L_test(phi*)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .modules import Trainable, _select_trainable
from .solvers.inner import InnerSolver
from .problem import BilevelProblem, Curvature
from .tree import Params

__all__ = ["model_loss", "maml_problem", "imaml_problem", "proximal_penalty"]

TaskLoss = Callable[[Params, Any], Tensor]
Forward = Callable[[Callable[..., Any], Any], Any]


def model_loss(module: nn.Module, criterion: Callable[[Any, Tensor], Tensor] = F.cross_entropy, *,
               trainable: Trainable = None, forward: Forward | None = None) -> TaskLoss:
    """``(params, (x, y)) -> criterion(forward(module(.; params, frozen, buffers), x), y)``, functionally.

    The module runs through ``torch.func.functional_call`` with ``params`` (the parameters that
    ``trainable`` selects, as :func:`~bilevel.modules.module_params` does), the other parameters
    read from the module at each call and detached (frozen: no hypergradient flows to them), and
    the module's buffers. The loss never mutates the module.

    Buffers. Each call gets copies of the buffers, so a forward that updates one in place updates
    the copy. A norm layer (BatchNorm, InstanceNorm) that tracks running statistics, in training
    mode, normalizes by the batch's statistics and its running statistics are neither read nor
    updated: the output is the same (training mode ignores them), the module is unchanged, and the
    loss runs under ``torch.func.vmap`` and ``grad`` (which task's statistics would one running
    mean track inside a vectorized meta-batch?). In eval mode the running statistics are read, as
    constants. To keep running statistics current, update them outside the hypergradient (a
    forward of the module itself under ``torch.no_grad()``). Another buffer written in place under
    ``vmap``/``grad`` cannot be supported and raises a ``RuntimeError`` naming the fix.

    Args:
        module: the network; its ``training`` flag is read at each call.
        criterion: ``criterion(output, y) -> scalar``.
        trainable: which parameters ``params`` holds: ``None`` (all of them; the default), a name
            or prefix (``"head"``), a collection of them, or a predicate ``name -> bool``.
            Give :func:`~bilevel.modules.module_params` the same selection to build ``theta``.
        forward: ``forward(call, x) -> output``, where ``call(*args, **kwargs)`` runs the module
            with the parameters and buffers above; the default is ``call(x)``. E.g.
            ``lambda call, x: call(*x)`` for several inputs, ``lambda call, x: call(x).logits``.

    Raises:
        ValueError: (when called) ``params`` does not name exactly the trainable parameters.

    Example:
        >>> import torch
        >>> from bilevel import model_loss, module_params
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> theta, frozen = module_params(net, trainable="2")
        >>> loss = model_loss(net, trainable="2", forward=lambda call, x: call(x) * 0.5)
        >>> x, y = torch.ones(5, 3), torch.zeros(5, dtype=torch.long)
        >>> torch.allclose(loss(theta, (x, y)), torch.nn.functional.cross_entropy(net(x) * 0.5, y))
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"model_loss: expected an nn.Module, got {type(module).__name__}.")
    if forward is not None and not callable(forward):
        raise TypeError(f"model_loss: forward must be callable as forward(call, x) -> output, got "
                        f"{type(forward).__name__}.")
    all_params = dict(module.named_parameters())
    names = _select_trainable("model_loss", list(all_params), trainable)
    frozen = {k: p for k, p in all_params.items() if k not in names}
    norms = [(prefix, m) for prefix, m in module.named_modules()
             if getattr(m, "track_running_stats", False) and getattr(m, "running_mean", None) is not None]
    run = forward or _call_on_x

    def loss(params: Params, batch) -> Tensor:
        _check_params(names, frozen, params, trainable)
        x, y = batch
        # The frozen parameters are read from the module at each call (a reassigned parameter included).
        current = {k: p.detach() for k, p in module.named_parameters() if k not in names}
        state = {**_buffers(module, norms), **current, **params}

        def call(*args, **kwargs):
            try:
                return functional_call(module, state, args, kwargs)
            except RuntimeError as exc:
                written = [k for k, b in state.items() if b is not None and k not in all_params]
                if not written or not any(marker in str(exc) for marker in _IN_PLACE_ERRORS):
                    raise
                first = str(exc).splitlines()[0]
                raise RuntimeError(
                    f"model_loss: {type(module).__name__}'s forward failed under a torch.func transform, most "
                    f"likely because it writes one of its buffers {written} in place (torch: {first!r}). vmap "
                    "over tasks and torch.func.grad cannot trace an in-place write into a tensor made outside "
                    "them. BatchNorm/InstanceNorm running statistics are handled by model_loss (batch statistics "
                    "in training mode); for another buffer, compute it without the in-place update, or loop over "
                    "tasks: batched_hypergrad(..., vectorize=False) with Unrolled.") from exc

        return criterion(run(call, x), y)

    return loss


# torch's words for an in-place write it cannot trace: under grad, under vmap (a batched value
# into an unbatched buffer), and vmap's broadcast check of the same write.
_IN_PLACE_ERRORS = ("mutate a captured Tensor", "inplace arithmetic", "doesn't match the broadcast shape")


def _call_on_x(call, x):
    return call(x)


def _buffers(module: nn.Module, norms) -> Params:
    """Copies of the buffers, with training-mode norm layers' running statistics ``None``
    (batch statistics only: the same output, nothing written, and vmap-safe)."""
    state = {k: b.detach().clone() for k, b in module.named_buffers()}
    for prefix, m in norms:
        if m.training:
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                state[f"{prefix}.{buffer}" if prefix else buffer] = None
    return state


def _check_params(names: list[str], frozen: Params, params: Params, trainable: Trainable) -> None:
    if not isinstance(params, Mapping):
        raise TypeError(f"model_loss: expected params as a dict[str, Tensor], got {type(params).__name__}. Build "
                        "it with theta, frozen = module_params(model).")
    missing = [k for k in names if k not in params]
    extra = [k for k in params if k not in names]
    if not (missing or extra):
        return
    frozen_given = [k for k in extra if k in frozen]
    if trainable is None:
        fix = ("Build both from the same model (theta, frozen = module_params(model), or "
               "dict(model.named_parameters())); to adapt only some parameters, the rest frozen, give the same "
               "selection to both: module_params(model, trainable=...) and model_loss(model, trainable=...).")
    elif frozen_given:
        fix = (f"{frozen_given} are frozen by model_loss(trainable={trainable!r}); build theta with "
               f"module_params(model, trainable={trainable!r}), or widen trainable.")
    else:
        fix = f"Build theta with module_params(model, trainable={trainable!r})."
    raise ValueError(f"model_loss: params names do not match: missing {missing}, unexpected {extra}. {fix}")


def proximal_penalty(phi: Params, theta: Params) -> Tensor:
    """``0.5 ||phi - theta||^2`` over all leaves."""
    return 0.5 * sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)


def maml_problem(task_loss: TaskLoss, inner_solver: InnerSolver) -> BilevelProblem:
    """Inner: ``task_loss(phi, support)`` from ``phi_0 = theta``; outer: ``task_loss(phi, query)``."""
    return BilevelProblem(
        inner_loss=lambda phi, theta, support: task_loss(phi, support),
        outer_loss=lambda phi, theta, query: task_loss(phi, query),
        inner_solver=inner_solver,
        inner_init="theta",
    )


def imaml_problem(task_loss: TaskLoss, lam: float, inner_solver: InnerSolver,
                  inner_curvature: Curvature | None = None) -> BilevelProblem:
    """iMAML: inner ``task_loss(phi, support) + (lam/2)||phi - theta||^2`` from ``phi_0 = theta``.

    ``inner_curvature`` (see :class:`BilevelProblem`) replaces the Hessian in second-order inner
    solvers; it must include the proximal term's ``lam I``.

    Raises:
        ValueError: ``lam <= 0`` (the proximal term must make the inner problem strongly convex).
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
        raise ValueError(f"imaml_problem: lam must be a number > 0, got {lam!r}. iMAML's paper uses "
                         "lam = 2.0; lam -> infinity approaches first-order MAML.")
    return BilevelProblem(
        inner_loss=lambda phi, theta, support: task_loss(phi, support) + lam * proximal_penalty(phi, theta),
        outer_loss=lambda phi, theta, query: task_loss(phi, query),
        inner_solver=inner_solver,
        inner_init="theta",
        inner_curvature=inner_curvature,
    )
