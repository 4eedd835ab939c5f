"""Hypergradient backends: each a small immutable object with one method, ``hypergrad``.

Installed as ``bilevel.adapters``. Native backends (``torch.func``, batched with ``vmap``):
:class:`Unrolled`, :class:`TruncatedUnrolled`, :class:`Implicit`, :class:`FirstOrder`,
:class:`Reptile`; for a :class:`~bilevel.FixedPointProblem`, :class:`FixedPointImplicit` and
:class:`UnrolledFixedPoint`. Adapters over other libraries (imported lazily, tasks looped):
:class:`HigherUnrolled` (``higher``), :class:`TorchoptImplicit` (``torchopt``).
"""

from .first_order import FirstOrder
from .fixed_point import FixedPointImplicit, UnrolledFixedPoint, fixed_point_implicit_hypergrad
from .higher_unrolled import HigherUnrolled
from .implicit import Implicit, implicit_hypergrad
from .reptile import Reptile
from .torchopt_implicit import TorchoptImplicit
from .truncated import TruncatedUnrolled
from .unrolled import Unrolled

__all__ = [
    "Unrolled",
    "TruncatedUnrolled",
    "HigherUnrolled",
    "Implicit",
    "implicit_hypergrad",
    "TorchoptImplicit",
    "FirstOrder",
    "Reptile",
    "FixedPointImplicit",
    "UnrolledFixedPoint",
    "fixed_point_implicit_hypergrad",
]
