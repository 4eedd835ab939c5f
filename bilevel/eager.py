"""What a running ``torch.func`` transform allows, asked through public behaviour only.

Two questions, each answered in one place:

* :func:`values_readable`: can a tensor's value be read in Python (``bool(t)``)? Not under
  ``vmap``, where a tensor stands for a whole batch. Solvers stop early, and the failure
  policy reads diagnostics, only when it can (:func:`known_true`); under ``vmap`` they run
  their fixed iteration count and leave the diagnostics to be read after the ``vmap``.
* :func:`autograd_available`: may plain ``torch.autograd`` run here? Not inside any
  ``torch.func`` transform (``vmap``, ``grad``, ``jvp``...), which refuses
  ``requires_grad_()``. Where it may and no input carries history (:func:`eager_ok`),
  backends compute the same gradients with ``torch.autograd`` instead of ``torch.func``:
  the transforms cost a little on every operation (about 1.3x on a conv4 inner step on a
  CPU, ``benchmarks/inner_step_autograd.py``).

The answers come from trying the operation, never from torch's private state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tree import Params, nested_leaves

__all__ = ["values_readable", "known_true", "autograd_available", "eager_ok", "grad_leaves", "autograd_grads"]


def values_readable(flag: Tensor) -> bool:
    """Whether ``flag``'s value can be read here (``False`` under ``vmap``)."""
    try:
        bool(flag.reshape(-1)[:1].any())
    except RuntimeError:
        return False
    return True


def known_true(flag: Tensor) -> bool:
    """``flag.all()`` when its value can be read; ``False`` under ``vmap``, where it cannot.

    Lets an unbatched solve stop early while a batched one runs its fixed iteration count
    (the frozen iterates make both give the same answer).
    """
    return values_readable(flag) and bool(flag.all())


def autograd_available() -> bool:
    """Whether plain ``torch.autograd`` may run here: no ``torch.func`` transform is active."""
    try:
        torch.zeros(()).requires_grad_(True)
    except RuntimeError:
        return False
    return True


def eager_ok(*trees) -> bool:
    """No transform is running and no tensor in ``trees`` requires grad: plain autograd gives
    the same answer, and no caller can be differentiating through it."""
    if not autograd_available():
        return False
    return not any(isinstance(t, Tensor) and t.requires_grad for tree in trees for t in nested_leaves(tree))


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
