"""bilevel: bilevel optimization and gradient-based meta-learning in PyTorch.

Write a bilevel problem once (:class:`BilevelProblem`), then compute its hypergradient
with any backend, chosen by one argument::

    hypergrad(problem, theta, inner_batch, outer_batch, backend=Implicit(CG(maxiter=5)))
"""

from .adapters import (FirstOrder, FixedPointImplicit, HigherUnrolled, Implicit, Reptile, TorchoptImplicit,
                       TruncatedUnrolled, Unrolled, UnrolledFixedPoint, fixed_point_implicit_hypergrad,
                       implicit_hypergrad)
from .diagnostics import Diagnostics, FixedPointStationarity, InnerStationarity, SolverWarning
from .errors import NonFiniteError, SolverError
from .hvp import hvp, make_ggn, make_hvp
from .hypergrad import (AutogradAdapter, HypergradBackend, Hypergradient, batched_fixed_point_hypergrad,
                        batched_hypergrad, fixed_point_hypergrad, hypergrad, map_tasks, reject_inner_solution)
from .solvers.inner import Adam, GradientDescent, GradientDescentThenPull, InnerSolver, Momentum, run_inner
from .solvers.fixed_point import Anderson, FixedPointIteration, FixedPointResult, FixedPointSolver
from .solvers.linear import (CG, GMRES, Dense, LinearSolver, LinearSolveResult, Neumann, solve_cg,
                           solve_dense, solve_gmres, solve_neumann)
from .solvers.minres import MINRES, solve_minres
from .meta import imaml_problem, maml_problem, model_loss, proximal_penalty
from .modules import module_buffers, module_params, write_grad
from .multilevel import (FiniteDifferenceLookahead, ImplicitMeta, Lookahead, TaskWeightedMetaTraining, UnrolledMeta,
                         WeightHypergradient, WeightHypergradMethod, weight_hypergrad)
from .solvers.newton_cg import NewtonCG
from .problem import BilevelProblem, FixedPointProblem
from .tree import Params

__version__ = "0.1.0"

__all__ = [
    # problems
    "BilevelProblem", "Params", "maml_problem", "imaml_problem", "model_loss", "proximal_penalty",
    # modules
    "module_params", "module_buffers", "write_grad",
    # inner solvers
    "InnerSolver", "GradientDescent", "GradientDescentThenPull", "Momentum", "Adam", "NewtonCG", "run_inner",
    # linear solvers
    "LinearSolver", "LinearSolveResult", "CG", "MINRES", "Neumann", "Dense", "GMRES", "solve_cg", "solve_minres",
    "solve_neumann", "solve_dense", "solve_gmres",
    # fixed points
    "FixedPointProblem", "FixedPointSolver", "FixedPointIteration", "Anderson", "FixedPointResult",
    "fixed_point_hypergrad", "batched_fixed_point_hypergrad", "FixedPointImplicit", "UnrolledFixedPoint",
    "fixed_point_implicit_hypergrad",
    # three levels
    "TaskWeightedMetaTraining", "weight_hypergrad", "WeightHypergradient", "WeightHypergradMethod", "UnrolledMeta",
    "ImplicitMeta", "Lookahead", "FiniteDifferenceLookahead",
    # Hessian-vector products
    "hvp", "make_hvp", "make_ggn",
    # hypergradients
    "Hypergradient", "HypergradBackend", "AutogradAdapter", "reject_inner_solution", "hypergrad", "batched_hypergrad",
    "map_tasks",
    "Unrolled", "TruncatedUnrolled", "HigherUnrolled", "Implicit", "implicit_hypergrad",
    "TorchoptImplicit", "FirstOrder", "Reptile",
    # diagnostics and errors
    "Diagnostics", "InnerStationarity", "FixedPointStationarity", "SolverWarning", "SolverError", "NonFiniteError",
]
