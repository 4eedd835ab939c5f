"""Inner optimizers as pure step functions over parameter dicts.

An inner solver minimizes a scalar objective ``f(phi)`` from a start ``phi_0`` in a fixed
number of ``steps``. Each solver is an immutable object with

* ``init(phi) -> state`` and
* ``step(f, phi, state) -> (phi, state)``,

built from ``torch.func`` and tensor ops only. So the unrolled backend differentiates
straight through the steps (``torch.func.grad`` of a function that calls ``step``), the
implicit backend ignores the path, and a meta-batch of inner problems runs under ``vmap``.
The step counter in a state is a Python ``int``: it drives no tensor control flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value

from ..eager import autograd_available, autograd_grads, grad_leaves
from ..tree import Params, tree_axpy, tree_detach, tree_zeros_like
from ..validation import check_positive, check_int, check_unit_interval

__all__ = [
    "InnerSolver",
    "GradientDescent",
    "Momentum",
    "Adam",
    "GradientDescentThenPull",
    "run_inner",
    "check_steps",
    "Gradient",
    "func_gradient",
    "detached_gradient",
    "graph_gradient",
    "objective_grad",
    "WithGradient",
]

Objective = Callable[[Params], Tensor]
Gradient = Callable[[Objective, Params], tuple[Params, Tensor]]
"""``gradient(f, phi) -> (grad f(phi), f(phi))``: how a step differentiates its objective."""


def func_gradient(f: Objective, phi: Params) -> tuple[Params, Tensor]:
    """``torch.func.grad_and_value``: correct everywhere, under any transform, and
    differentiable by an enclosing ``torch.func`` transform or ``torch.autograd``."""
    return grad_and_value(f)(phi)


def detached_gradient(f: Objective, phi: Params) -> tuple[Params, Tensor]:
    """The gradient as a constant, for steps no one differentiates through (the implicit and
    first-order backends' inner solve, the truncated prefix): plain ``torch.autograd`` on
    detached leaves where it may run (``bilevel.eager``), ``torch.func`` under a transform."""
    if not autograd_available():
        return grad_and_value(f)(phi)
    with torch.enable_grad():
        leaves = grad_leaves(phi)
        value = f(leaves)
        (grads,) = autograd_grads(value, leaves)
    return grads, value.detach()


def graph_gradient(f: Objective, phi: Params) -> tuple[Params, Tensor]:
    """``torch.autograd`` with ``create_graph=True``, so that the caller, outside every
    ``torch.func`` transform, backpropagates through the steps (the unrolled backend on one task)."""
    with torch.enable_grad():
        leaves = grad_leaves(phi, keep_graph=True)
        value = f(leaves)
        (grads,) = autograd_grads(value, leaves, create_graph=True)
    return grads, value


def objective_grad(f: Objective, phi: Params) -> tuple[Params, Tensor]:
    """``(grad f(phi), f(phi))`` by the gradient the objective carries (``f.gradient``, set by
    the backend that built it); :func:`func_gradient` for a plain callable.

    The choice travels with the objective, never through process-wide state: a solve nested
    inside ``f`` builds its own objective, so how the outer steps differentiate never changes
    what the nested one computes.
    """
    return getattr(f, "gradient", func_gradient)(f, phi)


class WithGradient:
    """``f`` with the gradient ``gradient``: what :func:`run_inner` ``(detach=True)`` gives a
    plain callable. Calls go to ``f``."""

    def __init__(self, f: Objective, gradient: Gradient):
        self.f, self.gradient = f, gradient

    def __call__(self, phi: Params) -> Tensor:
        return self.f(phi)


def check_steps(call: str, steps) -> int:
    return check_int(call, "steps", steps)


class InnerSolver:
    """Base class: a fixed number of ``steps`` of ``step(f, phi, state)`` from ``init(phi)``."""

    steps: int

    def init(self, phi: Params) -> Any:
        return ()

    def step(self, f: Objective, phi: Params, state: Any) -> tuple[Params, Any]:
        raise NotImplementedError

    def torch_optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        """The equivalent ``torch.optim`` optimizer (used by the ``higher`` adapter)."""
        raise TypeError(f"{type(self).__name__} has no torch.optim equivalent, so it cannot run "
                        "through the higher library; use the native Unrolled backend instead.")


def run_inner(solver: InnerSolver, f: Objective, phi: Params, state: Any = None,
              steps: int | None = None, detach: bool = False) -> tuple[Params, Any]:
    """Apply ``steps`` (default ``solver.steps``) solver steps to ``f`` from ``phi``.

    With ``detach=True`` no graph is kept between steps (the truncated and implicit
    backends use it for the part of the path they do not differentiate), and a plain
    callable ``f`` is differentiated by :func:`detached_gradient`; an objective that carries
    its own ``gradient`` keeps it.
    """
    if state is None:
        state = solver.init(phi)
    if detach and not hasattr(f, "gradient"):
        f = WithGradient(f, detached_gradient)
    for _ in range(solver.steps if steps is None else steps):
        phi, state = solver.step(f, phi, state)
        if detach:
            phi, state = tree_detach(phi), _detach_state(state)
    return phi, state


def _detach_state(state):
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: _detach_state(v) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(_detach_state(v) for v in state)
    return state


@dataclass(frozen=True)
class GradientDescent(InnerSolver):
    """``phi <- phi - lr * grad f(phi)``, ``steps`` times."""

    lr: float
    steps: int

    def __post_init__(self):
        check_positive("GradientDescent", "lr", self.lr)
        check_steps("GradientDescent", self.steps)

    def step(self, f, phi, state):
        g, _ = objective_grad(f, phi)
        return tree_axpy(-self.lr, g, phi), state

    def torch_optimizer(self, params):
        return torch.optim.SGD(params, lr=self.lr)


@dataclass(frozen=True)
class GradientDescentThenPull(InnerSolver):
    """``gd_steps`` of ``phi <- phi - lr grad f(phi)``, then one pull back towards the start:
    ``phi <- phi - pull (phi - phi_0)``.

    This is the official iMAML code's inner loop (``pull = lr * lam``, with ``f`` the support
    loss alone, no proximal term): its output is not a stationary point of
    ``f + (lam/2)||phi - phi_0||^2``. ``steps`` is ``gd_steps + 1``.
    """

    lr: float
    gd_steps: int
    pull: float

    def __post_init__(self):
        check_positive("GradientDescentThenPull", "lr", self.lr)
        check_steps("GradientDescentThenPull(gd_steps)", self.gd_steps)
        check_unit_interval("GradientDescentThenPull", "pull", self.pull)

    @property
    def steps(self) -> int:
        return self.gd_steps + 1

    def init(self, phi):
        return (0, dict(phi))

    def step(self, f, phi, state):
        t, start = state
        if t < self.gd_steps:
            g, _ = objective_grad(f, phi)
            return tree_axpy(-self.lr, g, phi), (t + 1, start)
        return {k: phi[k] - self.pull * (phi[k] - start[k]) for k in phi}, (t + 1, start)


@dataclass(frozen=True)
class Momentum(InnerSolver):
    """Heavy ball as in ``torch.optim.SGD(momentum=m, nesterov=...)``: ``b <- m b + g``
    (``b_1 = g_1``), then ``phi <- phi - lr b``, or with ``nesterov=True``
    ``phi <- phi - lr (g + m b)``.

    On a quadratic with curvature in ``[mu, L]`` the heavy ball with ``lr = 4/(sqrt(L)+sqrt(mu))^2``
    and ``m = ((sqrt(L)-sqrt(mu))/(sqrt(L)+sqrt(mu)))^2`` contracts the error by about
    ``1 - 2/sqrt(L/mu)`` per step, against ``1 - 2/(L/mu)`` for gradient descent: what makes a
    strongly convex inner problem (iMAML's proximal one) solvable to stationarity in tens of steps.
    """

    lr: float
    steps: int
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self):
        check_positive("Momentum", "lr", self.lr)
        check_unit_interval("Momentum", "momentum", self.momentum)
        check_steps("Momentum", self.steps)
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"Momentum: nesterov must be True or False, got {self.nesterov!r}.")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Momentum: nesterov=True needs momentum > 0 (with momentum 0 it is plain gradient descent).")

    def init(self, phi):
        return (0, tree_zeros_like(phi))

    def step(self, f, phi, state):
        t, buf = state
        g, _ = objective_grad(f, phi)
        buf = g if t == 0 else tree_axpy(self.momentum, buf, g)
        update = tree_axpy(self.momentum, buf, g) if self.nesterov else buf
        return tree_axpy(-self.lr, update, phi), (t + 1, buf)

    def torch_optimizer(self, params):
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)


@dataclass(frozen=True)
class Adam(InnerSolver):
    """Adam with the update of ``higher``'s differentiable Adam (eps added to ``sqrt(v)``):

    ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``phi <- phi - lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``.

    ``sqrt`` is taken as ``0`` with a zero derivative where ``v == 0``, so backpropagating
    through a step where a gradient entry is exactly zero gives no NaN.
    """

    lr: float
    steps: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self):
        check_positive("Adam", "lr", self.lr)
        check_steps("Adam", self.steps)
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise TypeError(f"Adam: betas must be a tuple of two floats, got {self.betas!r}.")
        for b in self.betas:
            check_unit_interval("Adam", "betas", b)
        check_positive("Adam", "eps", self.eps)

    def init(self, phi):
        return (0, tree_zeros_like(phi), tree_zeros_like(phi))

    def step(self, f, phi, state):
        t, m, v = state
        t += 1
        b1, b2 = self.betas
        g, _ = objective_grad(f, phi)
        m = {k: b1 * m[k] + (1 - b1) * g[k] for k in g}
        v = {k: b2 * v[k] + (1 - b2) * g[k] * g[k] for k in g}
        step_size = self.lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        new_phi = {k: phi[k] - step_size * m[k] / (_safe_sqrt(v[k]) + self.eps) for k in phi}
        return new_phi, (t, m, v)

    def torch_optimizer(self, params):
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps)


def _safe_sqrt(x: Tensor) -> Tensor:
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))
