"""When plain ``torch.autograd`` may stand in for ``torch.func`` (same numbers, less overhead).

``torch.func`` transforms cost a little on every operation (about 1.3x on a conv4 inner step
on a CPU, ``benchmarks/inner_step_autograd.py``). Where no transform is running and no input
carries autograd history, nothing needs that machinery: the library computes the same
gradients with ``torch.autograd`` instead. Under ``vmap`` or ``grad`` it always uses
``torch.func``.
"""

from __future__ import annotations

import torch

from .tree import nested_leaves

__all__ = ["transforms_active", "eager_ok"]


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp, ...) is running; ``True`` if this torch
    cannot say (then the ``torch.func`` path is always taken)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


def eager_ok(*trees) -> bool:
    """No transform is running and no tensor in ``trees`` requires grad: plain autograd gives
    the same answer, and no caller can be differentiating through it."""
    if transforms_active():
        return False
    return not any(isinstance(t, torch.Tensor) and t.requires_grad for tree in trees for t in nested_leaves(tree))
