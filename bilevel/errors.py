"""Exceptions raised by the library."""

__all__ = ["SolverError", "NonFiniteError"]


class SolverError(RuntimeError):
    """A solver was asked to raise (``throw=True``) and did not converge."""


class NonFiniteError(ValueError):
    """A loss or gradient was NaN or infinite."""
