"""Three levels: task weights ``w`` -> meta-parameters ``theta`` -> task parameters ``phi``.

NestedMAML's problem (Killamsetty et al., AAAI 2022), and any problem that meta-trains on
weighted tasks and judges the weights by a validation meta-loss::

    level 1:  min_w  V(theta*(w)),              V(theta) = (1/m) sum_j l^val_j(theta)
    level 2:  theta*(w) = argmin_theta F(theta, w),   F(theta, w) = sum_i w_i l_i(theta) + R(theta)
    level 3:  l_i(theta) = L_out(phi_i*(theta), theta, query_i),
              phi_i*(theta) = argmin_phi L_in(phi, theta, support_i)

Level 3 is a :class:`~bilevel.BilevelProblem` and its gradient ``g_i = dl_i/dtheta`` comes from
any hypergradient backend (:func:`bilevel.hypergrad`); with ``create_graph=True`` it is
differentiable again, so level 2's gradient ``G(theta, w) = sum_i w_i g_i(theta) + grad R`` is
an objective's gradient that a meta-solver (any :class:`~bilevel.InnerSolver`) steps on, and
level 1 differentiates through it. :class:`TaskWeightedMetaTraining` declares levels 2 and 3;
one small method object computes ``dV/dw`` (:func:`weight_hypergrad`, ``method=``):

* :class:`UnrolledMeta`: backpropagation through the meta-solver's ``K`` differentiable steps
  from ``theta_0`` (exact for the ``K``-step map; optionally only the last steps);
* :class:`ImplicitMeta`: the implicit function theorem at ``G(theta*, w) = 0``:
  ``dV/dw = -(dG/dw)^T (dG/dtheta)^-T grad V(theta*)``, i.e. ``dV/dw_i = -<g_i(theta*), u>``
  with ``(dG/dtheta)^T u = grad V(theta*)``, solved by a library linear solver over products
  ``u -> (dG/dtheta)^T u`` taken by autograd through the level-3 hypergradient;
* :class:`Lookahead`: NestedMAML's one-step lookahead from ``theta``: ``theta' = theta - lr G(theta, w)``
  and ``dV(theta')/dw_i = -lr <grad V(theta'), g_i(theta)>``. This is *exactly*
  :class:`UnrolledMeta` through one ``GradientDescent(lr)`` meta-step (``theta`` does not depend on
  ``w``, so ``d theta'/d w_i = -lr g_i(theta)``), with any level-3 backend, ``FirstOrder()`` included;
* :class:`FiniteDifferenceLookahead`: DARTS's second-order approximation, the lookahead's
  inner product by central differences of the task losses:
  ``-lr (l_i(theta + e v) - l_i(theta - e v)) / (2 e)``, ``v = grad V(theta')``, ``e = eps / ||v||``
  (equal to :class:`Lookahead` up to ``O(e^2)``, exactly when the ``l_i`` are quadratic, when the
  level-3 backend's ``g_i`` is the exact gradient of ``l_i``).

Clipping (NestedMAML: ``w <- max(w - beta dV/dw, 0)``) and clustering (one weight per cluster of
tasks: ``w = w_cluster[cluster_of_task]``, whose gradient is the per-task gradient summed over each
cluster's tasks) are steps of the user's outer loop, not of the hypergradient.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .diagnostics import Diagnostics, InnerStationarity, check_failures, check_on_failure, stationarity
from .hypergrad import HypergradBackend, Hypergradient, batched_hypergrad, map_tasks, num_tasks
from .problem import BilevelProblem
from .solvers.inner import Adam, GradientDescent, GradientDescentThenPull, InnerSolver, Momentum, WithGradient, run_inner
from .solvers.linear import CG, LinearSolver, check_linear_solver
from .tree import Params, tree_add, tree_axpy, tree_detach, tree_norm
from .validation import check_int, check_positive

__all__ = ["TaskWeightedMetaTraining", "WeightHypergradient", "WeightHypergradMethod", "UnrolledMeta",
           "ImplicitMeta", "Lookahead", "FiniteDifferenceLookahead", "weight_hypergrad"]

GRADIENT_ONLY_SOLVERS = (GradientDescent, GradientDescentThenPull, Momentum, Adam)
"""The meta-solvers whose steps read only the gradient, the one thing the meta-objective provides."""

Tasks = tuple[Any, Any]
"""``(inner_batches, outer_batches)``, every tensor with the task index as dimension 0."""


@dataclass(frozen=True)
class TaskWeightedMetaTraining:
    """Levels 2 and 3: meta-training of ``theta`` on the ``w``-weighted training tasks.

    ``F(theta, w) = sum_i w_i l_i(theta) + R(theta)`` with ``l_i`` the level-3 meta-loss of
    training task ``i`` (the outer loss of ``problem`` at the adapted ``phi_i*(theta)``); its
    gradient ``G(theta, w) = sum_i w_i g_i(theta) + grad R(theta)`` takes each ``g_i`` from
    ``backend``. The weights enter linearly (invariant: ``dG/dw_i = g_i``); use ``w = ones / n``
    for the mean. ``V(theta)`` is the mean meta-loss of the validation tasks.

    Args:
        problem: level 3, a :class:`~bilevel.BilevelProblem` (e.g. :func:`~bilevel.maml_problem`).
        backend: how each task's ``g_i`` is computed (``Unrolled()``, ``Implicit(CG())``; the
            exact level-1 methods need one that supports ``create_graph=True``).
        train: the training tasks ``(inner_batches, outer_batches)``, tasks on dimension 0.
        validation: the validation tasks, the same way.
        meta_solver: level 2's solver, e.g. ``GradientDescent(lr=0.1, steps=K)``: its
            ``steps`` are the meta-steps :class:`UnrolledMeta` differentiates through and
            :class:`ImplicitMeta` runs to reach ``theta*``.
        regularizer: ``R(theta) -> scalar`` added to ``F`` (e.g. a proximal term that makes
            level 2 well posed), or ``None``.
        vectorize: level-3 tasks under one ``vmap`` (``False``: a loop; the same numbers).
        on_failure: the failure policy of every solve (:mod:`bilevel.diagnostics`).

    Example:
        >>> import torch
        >>> from bilevel import GradientDescent, Unrolled, maml_problem
        >>> loss = lambda p, b: ((b[0] * p["a"] - b[1]) ** 2).mean()
        >>> tasks = lambda n: (torch.randn(n, 2, 5), torch.randn(n, 2, 5))
        >>> level = TaskWeightedMetaTraining(maml_problem(loss, GradientDescent(lr=0.1, steps=2)), Unrolled(),
        ...                                  train=tasks(4), validation=tasks(3),
        ...                                  meta_solver=GradientDescent(lr=0.1, steps=3))
        >>> out = weight_hypergrad(level, torch.full((4,), 0.25), {"a": torch.zeros(())}, method=Lookahead(lr=0.1))
        >>> out.grad.shape
        torch.Size([4])
    """

    problem: BilevelProblem
    backend: HypergradBackend
    train: Tasks
    validation: Tasks
    meta_solver: InnerSolver
    regularizer: Callable[[Params], Tensor] | None = None
    vectorize: bool = True
    on_failure: str = "warn"

    def __post_init__(self):
        call = "TaskWeightedMetaTraining"
        if not isinstance(self.problem, BilevelProblem):
            raise TypeError(f"{call}: problem must be a BilevelProblem (level 3, e.g. maml_problem(loss, "
                            f"GradientDescent(lr=0.01, steps=5))), got {type(self.problem).__name__}.")
        if not isinstance(self.backend, HypergradBackend):
            raise TypeError(f"{call}: backend must be a HypergradBackend such as Unrolled() or Implicit(CG()), "
                            f"got {type(self.backend).__name__}.")
        if not isinstance(self.meta_solver, InnerSolver):
            raise TypeError(f"{call}: meta_solver must be an InnerSolver such as GradientDescent(lr=0.1, steps=10), "
                            f"got {type(self.meta_solver).__name__}.")
        if not isinstance(self.meta_solver, GRADIENT_ONLY_SOLVERS):
            # The meta-objective carries its gradient G (the level-3 hypergradients), not a value whose
            # derivatives a solver could take: NewtonCG's line search and Hessian products would read a
            # constant and return a zero hypergradient without a word.
            raise TypeError(f"{call}: meta_solver must use only gradients ("
                            f"{', '.join(t.__name__ for t in GRADIENT_ONLY_SOLVERS)}), got "
                            f"{type(self.meta_solver).__name__}, which also reads the objective's value or Hessian.")
        for name in ("train", "validation"):
            tasks = getattr(self, name)
            if not (isinstance(tasks, tuple) and len(tasks) == 2):
                raise TypeError(f"{call}: {name} must be a pair (inner_batches, outer_batches) with tasks on "
                                f"dimension 0, got {type(tasks).__name__}.")
            num_tasks(*tasks)
        if self.regularizer is not None and not callable(self.regularizer):
            raise TypeError(f"{call}: regularizer must be callable as R(theta) -> scalar Tensor, or None.")
        check_on_failure(call, self.on_failure)

    @property
    def num_train(self) -> int:
        return num_tasks(*self.train)

    def task_gradients(self, theta: Params, create_graph: bool = False) -> Hypergradient:
        """Every training task's ``l_i`` and ``g_i`` (``reduction="none"``: stacked on dimension 0)."""
        return batched_hypergrad(self.problem, theta, *self.train, backend=self.backend, reduction="none",
                                 vectorize=self.vectorize, create_graph=create_graph, on_failure=self.on_failure)

    def validation_gradient(self, theta: Params) -> Hypergradient:
        """``V(theta)`` and ``grad V(theta)`` (the mean over validation tasks), constants."""
        return batched_hypergrad(self.problem, tree_detach(theta), *self.validation, backend=self.backend,
                                 vectorize=self.vectorize, on_failure=self.on_failure)

    def task_losses(self, theta: Params) -> Tensor:
        """Every training task's ``l_i(theta)``, values only (the inner solve, then the outer loss)."""
        theta = tree_detach(theta)

        def one(inner_batch, outer_batch):
            phi = self.problem.solve_inner(theta, inner_batch, detach=True)
            return self.problem.outer_loss(phi, theta, outer_batch).detach()

        return map_tasks(one, *self.train, vectorize=self.vectorize)

    def combine(self, theta: Params, w: Tensor, g: Params) -> Params:
        """``G = sum_i w_i g_i + grad R(theta)`` from the stacked ``g``."""
        out = {k: torch.tensordot(w, v, dims=1) for k, v in g.items()}
        if self.regularizer is None:
            return out
        return tree_add(out, _regularizer_grad(self.regularizer, theta))

    def meta_gradient(self, theta: Params, w: Tensor, create_graph: bool = False) -> Params:
        """``G(theta, w)``; differentiable in ``w`` always, and in ``theta`` with ``create_graph``."""
        return self.combine(theta, w, self.task_gradients(theta, create_graph).grad)

    def objective(self, w: Tensor, create_graph: bool = False, trace: list | None = None) -> WithGradient:
        """``theta -> F(theta, w)`` carrying its gradient ``G`` for the meta-solver's steps
        (``trace``, if given, collects ``||G||`` at every step)."""

        def value(theta):
            f = torch.dot(w, self.task_losses(theta))
            return f if self.regularizer is None else f + self.regularizer(theta)

        def gradient(f, theta):
            g = self.meta_gradient(theta, w, create_graph)
            if trace is not None:
                trace.append(tree_norm(tree_detach(g)))
            return g, torch.zeros(())  # the value is never read by a step; value(theta) computes it

        return WithGradient(value, gradient)


def _regularizer_grad(regularizer, theta: Params) -> Params:
    with torch.enable_grad():
        leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in theta.items()}
        r = regularizer(leaves)
        grads = torch.autograd.grad(r, list(leaves.values()), create_graph=True, allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(theta.items(), grads)}


class WeightHypergradient(NamedTuple):
    """What every level-1 method returns.

    Attributes:
        grad: ``dV/dw`` (or the method's approximation of it), shaped like ``w``.
        theta: the meta-parameters ``V`` was evaluated at (detached): ``theta_K``, ``theta*``,
            or the lookahead's ``theta'``.
        validation_loss: ``V`` there.
        diagnostics: the level-2 linear solve and stationarity (:class:`ImplicitMeta`), else empty.
    """

    grad: Tensor
    theta: Params
    validation_loss: Tensor
    diagnostics: Diagnostics = Diagnostics()


class WeightHypergradMethod(abc.ABC):
    """How level 1 differentiates through level 2: a small immutable object with one method."""

    @abc.abstractmethod
    def weight_grad(self, level: TaskWeightedMetaTraining, w: Tensor, theta: Params) -> WeightHypergradient:
        """``dV/dw`` with level 2 started (or, for the lookaheads, standing) at ``theta``."""


@dataclass(frozen=True)
class UnrolledMeta(WeightHypergradMethod):
    """Backpropagation through the meta-solver's ``K = meta_solver.steps`` steps from ``theta``.

    Exact for the ``K``-step map ``w -> theta_K(w)``: ``dV/dw = (d theta_K/dw)^T grad V(theta_K)``,
    one vjp through a graph that holds every meta-step's level-3 graph (memory grows with ``K``).
    ``backprop_steps=k`` differentiates only the last ``k`` steps (the first ``K - k`` are
    constants: truncated backpropagation, an approximation). The level-3 backend must support
    ``create_graph=True`` when more than one step is differentiated.
    """

    backprop_steps: int | None = None

    def __post_init__(self):
        if self.backprop_steps is not None:
            check_int("UnrolledMeta", "backprop_steps", self.backprop_steps)

    def weight_grad(self, level, w, theta):
        solver, steps = level.meta_solver, level.meta_solver.steps
        k = steps if self.backprop_steps is None else min(self.backprop_steps, steps)
        w = w.detach().requires_grad_(True)
        theta, state = run_inner(solver, level.objective(w.detach()), tree_detach(theta), steps=steps - k, detach=True)
        with torch.enable_grad():
            if k > 0:  # theta does not depend on w yet: the first differentiated step needs no second order
                theta, state = run_inner(solver, level.objective(w), theta, state, steps=1)
            if k > 1:
                theta, _ = run_inner(solver, level.objective(w, create_graph=True), theta, state, steps=k - 1)
        v = level.validation_gradient(theta)
        grad = _vjp_to_w(theta, v.grad, w)
        return WeightHypergradient(grad, tree_detach(theta), v.loss)


@dataclass(frozen=True)
class ImplicitMeta(WeightHypergradMethod):
    """The implicit function theorem at level 2's stationarity ``G(theta*, w) = 0``.

    ``theta*`` is the meta-solver's result from ``theta`` (no graph kept); then
    ``(dG/dtheta)^T u = grad V(theta*)`` is solved by ``linear_solver`` over vjps through the
    level-3 hypergradient (``create_graph=True``), and ``dV/dw = -(dG/dw)^T u`` (one more vjp).
    When each ``g_i`` is the exact gradient of ``l_i`` (``Unrolled`` at level 3, or an implicit
    backend solved to convergence), ``dG/dtheta`` is the Hessian of ``F``: symmetric, and
    positive definite at a strict minimum, so CG applies; MINRES where it is indefinite. With an
    approximate level-3 gradient (``FirstOrder``, a truncated CG) the Jacobian is not symmetric:
    use GMRES. Memory is flat in the number of
    meta-steps. The linear solve's result and the stationarity ``||G(theta*, w)||`` against
    ``||G(theta, w)||`` (judged with ``stationarity_rtol``; ``None``: not judged) go through the
    failure policy (``on_failure`` of the level).
    """

    linear_solver: LinearSolver = CG()
    stationarity_rtol: float | None = 1e-3

    def __post_init__(self):
        check_linear_solver("ImplicitMeta", self.linear_solver)
        if self.stationarity_rtol is not None:
            check_positive("ImplicitMeta", "stationarity_rtol", self.stationarity_rtol)

    def weight_grad(self, level, w, theta):
        norms: list[Tensor] = []
        theta_star, _ = run_inner(level.meta_solver, level.objective(w.detach(), trace=norms), tree_detach(theta),
                                  detach=True)
        v = level.validation_gradient(theta_star)
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            leaves = {k: t.detach().requires_grad_(True) for k, t in theta_star.items()}
            G = level.meta_gradient(leaves, w, create_graph=True)
            keys = list(leaves)

            def matvec(u):  # (dG/dtheta)^T u
                out = torch.autograd.grad([G[k] for k in keys], [leaves[k] for k in keys],
                                          [u[k] for k in keys], retain_graph=True, allow_unused=True)
                return {k: torch.zeros_like(leaves[k]) if o is None else o for k, o in zip(keys, out)}

            solve = self.linear_solver(matvec, v.grad)
            u = solve.solution
            grad = -_vjp_to_w(G, u, w)
        residual = tree_norm(tree_detach(G))
        reference = norms[0] if norms else torch.full_like(residual, float("nan"))
        stat = stationarity(InnerStationarity, residual, reference,
                            self.stationarity_rtol if norms else None)
        diagnostics = Diagnostics(linear_solve=solve._replace(solution={}), stationarity=stat)
        check_failures("ImplicitMeta.weight_grad", diagnostics, level.on_failure, stacklevel=4)
        return WeightHypergradient(grad, theta_star, v.loss, diagnostics)


@dataclass(frozen=True)
class Lookahead(WeightHypergradMethod):
    """NestedMAML's one-step lookahead: ``dV/dw_i = -lr <grad V(theta'), g_i(theta)>`` with
    ``theta' = theta - lr G(theta, w)``.

    Exactly :class:`UnrolledMeta` through one ``GradientDescent(lr)`` meta-step, computed
    without any second derivative: ``n + m`` level-3 gradients (training, validation), any
    level-3 backend. It is the gradient of ``V`` one meta-step ahead, not at ``theta*(w)``.
    """

    lr: float

    def __post_init__(self):
        check_positive("Lookahead", "lr", self.lr)

    def weight_grad(self, level, w, theta):
        theta, g = _lookahead_step(level, w, theta, self.lr)
        v = level.validation_gradient(theta)
        flat = torch.cat([g[k].reshape(g[k].shape[0], -1) for k in g], dim=1)
        grad = -self.lr * (flat @ torch.cat([v.grad[k].reshape(-1) for k in g]))
        return WeightHypergradient(grad, theta, v.loss)


@dataclass(frozen=True)
class FiniteDifferenceLookahead(WeightHypergradMethod):
    """DARTS's finite-difference approximation of :class:`Lookahead`:
    ``dV/dw_i ~ -lr (l_i(theta + e v) - l_i(theta - e v)) / (2 e)``, ``v = grad V(theta')``,
    ``e = eps / ||v||`` (DARTS: ``eps = 0.01``).

    Central differences of the task losses, so of ``<v, grad l_i(theta)>``: this equals
    :class:`Lookahead`'s ``<v, g_i(theta)>`` up to ``O(e^2)`` (exactly for quadratic ``l_i``)
    when the backend's ``g_i`` is the exact gradient of ``l_i``; with an approximate one
    (``FirstOrder``) the two differ by its error.
    Costs ``n + m`` level-3 gradients and ``2n`` task-loss values, no per-task gradient kept.
    """

    lr: float
    eps: float = 0.01

    def __post_init__(self):
        check_positive("FiniteDifferenceLookahead", "lr", self.lr)
        check_positive("FiniteDifferenceLookahead", "eps", self.eps)

    def weight_grad(self, level, w, theta):
        ahead, _ = _lookahead_step(level, w, theta, self.lr)
        v = level.validation_gradient(ahead)
        e = self.eps / tree_norm(v.grad).clamp_min(torch.finfo(w.dtype).tiny)
        theta = tree_detach(theta)
        plus = level.task_losses(tree_axpy(e, v.grad, theta))
        minus = level.task_losses(tree_axpy(-e, v.grad, theta))
        grad = -self.lr * (plus - minus) / (2 * e)
        return WeightHypergradient(grad, ahead, v.loss)


def _lookahead_step(level, w, theta, lr):
    theta = tree_detach(theta)
    g = level.task_gradients(theta).grad
    return tree_detach(tree_axpy(-lr, level.combine(theta, w.detach(), g), theta)), g


def _vjp_to_w(out: Params, cotangent: Params, w: Tensor) -> Tensor:
    """``(d out / d w)^T cotangent``; zero where ``out`` does not depend on ``w``."""
    pairs = [(out[k], cotangent[k]) for k in out if out[k].requires_grad]
    if not pairs:
        return torch.zeros_like(w)
    (g,) = torch.autograd.grad([p for p, _ in pairs], [w], [c for _, c in pairs], allow_unused=True)
    return torch.zeros_like(w) if g is None else g.detach()


def weight_hypergrad(level: TaskWeightedMetaTraining, w: Tensor, theta: Params, *,
                     method: WeightHypergradMethod) -> WeightHypergradient:
    """``dV(theta*(w))/dw`` for the task weights ``w`` (one per training task), by ``method``.

    Args:
        level: levels 2 and 3 (:class:`TaskWeightedMetaTraining`).
        w: the task weights, a 1-D floating-point tensor with one entry per training task.
        theta: where level 2 starts (:class:`UnrolledMeta`, :class:`ImplicitMeta`) or stands
            (the lookaheads: NestedMAML's current meta-parameters).
        method: :class:`UnrolledMeta`, :class:`ImplicitMeta`, :class:`Lookahead` or
            :class:`FiniteDifferenceLookahead`.

    Raises:
        SolverError: a solve failed and the level's ``on_failure="raise"``.
    """
    call = "weight_hypergrad"
    if not isinstance(level, TaskWeightedMetaTraining):
        raise TypeError(f"{call}: level must be a TaskWeightedMetaTraining, got {type(level).__name__}.")
    if not isinstance(method, WeightHypergradMethod):
        raise TypeError(f"{call}: method must be UnrolledMeta(), ImplicitMeta(CG()), Lookahead(lr) or "
                        f"FiniteDifferenceLookahead(lr), got {type(method).__name__}.")
    n = level.num_train
    if not isinstance(w, Tensor) or w.shape != (n,) or not w.is_floating_point():
        got = f"shape {tuple(w.shape)}, dtype {w.dtype}" if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(f"{call}: w must be a 1-D floating-point tensor with one weight per training task "
                         f"({n}), got {got}; e.g. w = torch.full(({n},), 1 / {n}).")
    return method.weight_grad(level, w, theta)
