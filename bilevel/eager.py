"""When plain ``torch.autograd`` may stand in for ``torch.func`` (same numbers, less overhead).

``torch.func`` transforms cost a little on every operation (about 1.3x on a conv4 inner step
on a CPU, ``benchmarks/inner_step_autograd.py``). Where no transform is running and no input
carries autograd history, nothing needs that machinery: the library computes the same
gradients with ``torch.autograd`` instead. Under ``vmap`` or ``grad`` it always uses
``torch.func``.
"""

from __future__ import annotations

import torch

from .tree import Params, nested_leaves

__all__ = ["transforms_active", "eager_ok", "grad_leaves", "autograd_grads"]


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


def grad_leaves(tree: Params, keep_graph: bool = False) -> Params:
    """``tree``'s tensors as autograd leaves (detached, ``requires_grad``); with ``keep_graph``
    a tensor that already requires grad is kept as it is, so its history stays differentiable."""
    return {k: v if keep_graph and v.requires_grad else v.detach().requires_grad_(True) for k, v in tree.items()}


def autograd_grads(output, *inputs: Params, **kwargs) -> tuple[Params, ...]:
    """One ``torch.autograd.grad`` of ``output`` with respect to every tensor of the dicts
    ``inputs``, returned as one dict per input; a tensor ``output`` does not use gets zeros (as
    ``torch.func.grad`` gives). ``kwargs`` go to ``torch.autograd.grad``."""
    flat = [v for tree in inputs for v in tree.values()]
    grads = iter(torch.autograd.grad(output, flat, allow_unused=True, **kwargs))
    return tuple({k: torch.zeros_like(v) if (g := next(grads)) is None else g for k, v in tree.items()}
                 for tree in inputs)
