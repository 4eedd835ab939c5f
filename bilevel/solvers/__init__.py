"""The solvers of the numerics layer, one concept per module:

- :mod:`~bilevel.solvers.linear`: linear solves ``A x = b`` over matvecs (CG, Neumann, GMRES,
  Dense) and their result, ``LinearSolveResult``;
- :mod:`~bilevel.solvers.minres`: MINRES, for symmetric indefinite systems;
- :mod:`~bilevel.solvers.inner`: inner-problem solvers (gradient descent, momentum, Adam)
  and how a step gets its gradient;
- :mod:`~bilevel.solvers.newton_cg`: Newton's method with CG inner solves (iMAML-HF);
- :mod:`~bilevel.solvers.fixed_point`: forward fixed-point solvers (iteration, Anderson).

They import only the foundations (``tree``, ``validation``, ``eager``, ``errors``) and ``hvp``;
the public names are re-exported by :mod:`bilevel`.
"""
