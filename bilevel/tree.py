"""Arithmetic on parameter dicts (``dict[str, Tensor]``), the currency of the library.

Every function is pure and built from tensor ops only (no Python branching on
tensor values), so it runs unchanged under ``torch.func.grad``, ``jvp`` and ``vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

Params = dict[str, Tensor]

__all__ = [
    "Params",
    "tree_add",
    "tree_sub",
    "tree_scale",
    "tree_axpy",
    "tree_dot",
    "tree_norm",
    "tree_zeros_like",
    "tree_where",
    "tree_detach",
    "tree_ravel",
    "tree_unravel",
    "tree_numel",
    "check_same_keys",
    "nested_leaves",
    "nested_map",
]


def tree_add(a: Params, b: Params) -> Params:
    """``a + b`` leaf by leaf."""
    return {k: a[k] + b[k] for k in a}


def tree_sub(a: Params, b: Params) -> Params:
    """``a - b`` leaf by leaf."""
    return {k: a[k] - b[k] for k in a}


def tree_scale(s, a: Params) -> Params:
    """``s * a`` for a scalar (Python number or 0-d tensor) ``s``."""
    return {k: s * v for k, v in a.items()}


def tree_axpy(alpha, x: Params, y: Params) -> Params:
    """``alpha * x + y``."""
    return {k: alpha * x[k] + y[k] for k in x}


def tree_dot(a: Params, b: Params) -> Tensor:
    """Euclidean inner product ``<a, b>`` over all leaves, a 0-d tensor."""
    return sum((a[k] * b[k]).sum() for k in a)


def tree_norm(a: Params) -> Tensor:
    """Euclidean norm over all leaves."""
    return torch.sqrt(tree_dot(a, a))


def tree_zeros_like(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def tree_where(cond: Tensor, a: Params, b: Params) -> Params:
    """``a`` where the 0-d boolean ``cond`` holds, else ``b`` (a vmap-safe branch)."""
    return {k: torch.where(cond, a[k], b[k]) for k in a}


def tree_detach(a: Params) -> Params:
    return {k: v.detach() for k, v in a.items()}


def tree_numel(a: Params) -> int:
    return sum(v.numel() for v in a.values())


def tree_ravel(a: Params) -> Tensor:
    """Concatenate all leaves (in key order) into one flat vector."""
    return torch.cat([v.reshape(-1) for v in a.values()])


def tree_unravel(flat: Tensor, like: Params) -> Params:
    """Inverse of :func:`tree_ravel`: split ``flat`` into leaves shaped like ``like``."""
    out, start = {}, 0
    for k, v in like.items():
        out[k] = flat[start : start + v.numel()].reshape(v.shape)
        start += v.numel()
    return out


def check_same_keys(call: str, expected: Mapping[str, Tensor], given: Mapping[str, Tensor],
                    what: str = "parameters", check_shapes: bool = True) -> None:
    """Raise ``ValueError`` naming ``call`` when two parameter dicts differ in names or shapes."""
    if not isinstance(given, Mapping):
        raise TypeError(f"{call}: expected {what} as a dict[str, Tensor], got {type(given).__name__}. "
                        "Pass e.g. dict(model.named_parameters()).")
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    if missing or extra:
        raise ValueError(
            f"{call}: {what} names do not match: missing {missing}, unexpected {extra}. "
            "Build both dicts from the same model (dict(model.named_parameters()))."
        )
    if check_shapes:
        for k in expected:
            if expected[k].shape != given[k].shape:
                raise ValueError(
                    f"{call}: {what}[{k!r}] has shape {tuple(given[k].shape)}, expected "
                    f"{tuple(expected[k].shape)}."
                )


# --- Nested batches: tensors inside tuples, lists, dicts and named tuples (a task's data,
# a backend's result). The library's own few lines instead of torch's private ``_pytree``.


def nested_leaves(tree) -> list[Tensor]:
    """The tensors of a nested container, depth first (``None`` and other values skipped)."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [leaf for v in tree.values() for leaf in nested_leaves(v)]
    if isinstance(tree, (tuple, list)):
        return [leaf for v in tree for leaf in nested_leaves(v)]
    return []


def nested_map(fn, *trees):
    """``fn`` applied leaf by leaf to tensors at the same place in ``trees`` (same structure);
    containers are rebuilt with their own type, non-tensor leaves come from the first tree."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(*trees)
    if isinstance(first, Mapping):
        return {k: nested_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # a NamedTuple
        return type(first)(*(nested_map(fn, *parts) for parts in zip(*trees)))
    if isinstance(first, (tuple, list)):
        return type(first)(nested_map(fn, *parts) for parts in zip(*trees))
    return first
