"""From an ``nn.Module`` to parameter dicts and back: the bridge between PyTorch models and the library.

The library works on parameter dicts (``dict[str, Tensor]``, named as in
``module.named_parameters()``) applied with ``torch.func.functional_call``. Three functions
cross the boundary:

* :func:`module_params` splits a module's parameters into ``theta`` (what the hypergradient is
  taken with respect to) and ``frozen`` (the rest): ``theta | frozen == named_parameters()``, the
  two disjoint.
* :func:`module_buffers` copies its buffers (BatchNorm's running statistics), so a functional
  forward that updates them updates the copy, never the module.
* :func:`write_grad` writes a hypergradient dict into ``.grad`` so that a ``torch.optim``
  optimizer can step: ``target[k].grad == grad[k]`` for every ``k`` in ``grad``.

Invariant: none of them changes a parameter's value or a buffer of the module; only
:func:`write_grad` writes, and only ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from torch import Tensor, nn

from .tree import Params

__all__ = ["module_params", "module_buffers", "write_grad"]

Trainable = str | Collection[str] | Callable[[str], bool] | None


def _matches(name: str, entry: str) -> bool:
    return name == entry or name.startswith(entry + ".")


def _select_trainable(call: str, names: list[str], trainable: Trainable) -> list[str]:
    """The names of ``names`` that ``trainable`` selects, in order (see :func:`module_params`).

    Raises:
        TypeError: ``trainable`` is not ``None``, a string, a collection of strings or a callable.
        ValueError: an entry matches no parameter, or the selection is empty.
    """
    if trainable is None:
        return list(names)
    if callable(trainable) and not isinstance(trainable, str):
        chosen = [n for n in names if trainable(n)]
        what = "the predicate trainable(name)"
    else:
        entries = [trainable] if isinstance(trainable, str) else trainable
        if not isinstance(entries, Collection) or not all(isinstance(e, str) for e in entries):
            raise TypeError(f"{call}: trainable must be None (every parameter), a name or prefix such as 'head', "
                            "a collection of names or prefixes, or a predicate name -> bool; got "
                            f"{type(trainable).__name__} {trainable!r}.")
        unknown = [e for e in entries if not any(_matches(n, e) for n in names)]
        if unknown:
            raise ValueError(f"{call}: trainable entries {unknown} match no parameter (a name matches itself and, as "
                             f"a prefix, the names below it: 'head' selects 'head.weight'). The parameters are "
                             f"{names}.")
        chosen = [n for n in names if any(_matches(n, e) for e in entries)]
        what = f"trainable={trainable!r}"
    if not chosen:
        raise ValueError(f"{call}: {what} selects no parameter, so theta would be empty. The parameters are {names}.")
    return chosen


def module_params(module: nn.Module, trainable: Trainable = None) -> tuple[Params, Params]:
    """``(theta, frozen)``: a module's parameters split into the trainable subset and the rest.

    ``theta`` holds the parameters that ``trainable`` selects, ``frozen`` the others; together they
    are ``module.named_parameters()`` (shared parameters once), in its order. The tensors are
    detached views (``p.detach()``): no copy, no autograd history, and they follow in-place updates
    of the module (an optimizer step on ``module.parameters()``), so ``theta`` stays current across
    a training loop. Clone them for a snapshot. ``requires_grad`` is not consulted: choose the
    subset with ``trainable``.

    Args:
        module: any ``nn.Module``.
        trainable: ``None`` (every parameter; ``frozen`` is empty); a name or prefix (``"head"``
            selects ``"head.weight"`` and ``"head.bias"``, not ``"header.weight"``); a collection
            of names or prefixes; or a predicate ``name -> bool``.

    Returns:
        ``(theta, frozen)``, two ``dict[str, Tensor]``.

    Raises:
        ValueError: an entry of ``trainable`` matches no parameter, or nothing is selected.

    Example:
        >>> import torch
        >>> from bilevel import module_params
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> theta, frozen = module_params(net, trainable="2")   # the head: net[2]
        >>> list(theta), list(frozen)
        (['2.weight', '2.bias'], ['0.weight', '0.bias'])
        >>> theta["2.weight"].data_ptr() == net[2].weight.data_ptr()   # a view, not a copy
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module_params: expected an nn.Module, got {type(module).__name__}.")
    params = dict(module.named_parameters())
    chosen = set(_select_trainable("module_params", list(params), trainable))
    theta = {k: p.detach() for k, p in params.items() if k in chosen}
    frozen = {k: p.detach() for k, p in params.items() if k not in chosen}
    return theta, frozen


def module_buffers(module: nn.Module) -> Params:
    """Copies of a module's buffers (``module.named_buffers()``), detached.

    Copies, not views: a functional forward in training mode updates BatchNorm's running
    statistics in place, and it must update these, never the module's own.

    Example:
        >>> import torch
        >>> from bilevel import module_buffers
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> buffers = module_buffers(bn)
        >>> sorted(buffers)
        ['num_batches_tracked', 'running_mean', 'running_var']
        >>> _ = torch.func.functional_call(bn, buffers, (torch.randn(4, 2),))  # updates the copies
        >>> bool(bn.running_mean.eq(0).all()), int(bn.num_batches_tracked), int(buffers["num_batches_tracked"])
        (True, 0, 1)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module_buffers: expected an nn.Module, got {type(module).__name__}.")
    return {k: b.detach().clone() for k, b in module.named_buffers()}


def write_grad(target: nn.Module | Mapping[str, Tensor], grad: Mapping[str, Tensor], accumulate: bool = False) -> None:
    """Write a hypergradient dict into ``.grad``: ``target[k].grad = grad[k]`` for each ``k`` in ``grad``.

    One call replaces the loop ``for k, p in params.items(): p.grad = result.grad[k]`` before an
    optimizer step. Each ``.grad`` is a detached copy, so in-place gradient transforms
    (``clip_grad_norm_``) leave ``grad`` intact.

    Args:
        target: a module (its ``named_parameters()``; parameters not named in ``grad``, the
            frozen ones, are left as they are) or a dict of leaf tensors (it must name exactly
            ``grad``'s keys).
        grad: ``dict[str, Tensor]``, e.g. ``result.grad``; each leaf has its target's shape,
            dtype and device.
        accumulate: ``False`` replaces ``.grad``; ``True`` adds to it (``.grad += grad[k]``, or
            sets it where it is ``None``), e.g. to sum the hypergradients of several batches.

    Raises:
        ValueError: a key of ``grad`` names no target (or, for a dict, a target is missing from
            ``grad``), a shape differs, or a target is not a leaf tensor.
        TypeError: a value is not a tensor, or a dtype or device differs.

    Example:
        >>> import torch
        >>> from bilevel import write_grad
        >>> net = torch.nn.Linear(2, 1)
        >>> write_grad(net, {"weight": torch.ones(1, 2)})           # the bias: frozen, untouched
        >>> net.weight.grad, net.bias.grad
        (tensor([[1., 1.]]), None)
        >>> write_grad(net, {"weight": torch.ones(1, 2)}, accumulate=True)
        >>> net.weight.grad
        tensor([[2., 2.]])
        >>> write_grad(net, {"weigth": torch.ones(1, 2)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: write_grad: grad names ['weigth'], which the module (Linear) has no parameter of; ...
    """
    if not isinstance(grad, Mapping):
        raise TypeError(f"write_grad: grad must be a dict[str, Tensor] such as result.grad, got {type(grad).__name__}.")
    if isinstance(target, nn.Module):
        tensors = dict(target.named_parameters())
        where = f"the module ({type(target).__name__})"
        extra = [k for k in grad if k not in tensors]
        if extra:
            raise ValueError(f"write_grad: grad names {extra}, which {where} has no parameter of; its parameters are "
                             f"{list(tensors)}.")
    elif isinstance(target, Mapping):
        tensors, where = target, "target"
        missing, extra = [k for k in target if k not in grad], [k for k in grad if k not in target]
        if missing or extra:
            raise ValueError(f"write_grad: grad and target name different tensors: missing from grad {missing}, not "
                             f"in target {extra}. Pass the dict the hypergradient was taken with respect to (theta), "
                             "or the module to leave its other parameters untouched.")
    else:
        raise TypeError(f"write_grad: target must be an nn.Module or a dict of leaf tensors, got "
                        f"{type(target).__name__}.")
    for k, g in grad.items():
        p = tensors[k]
        if not isinstance(g, Tensor) or not isinstance(p, Tensor):
            bad, value = ("grad", g) if not isinstance(g, Tensor) else ("target", p)
            raise TypeError(f"write_grad: {bad}[{k!r}] is a {type(value).__name__}, not a Tensor.")
        if g.shape != p.shape:
            raise ValueError(f"write_grad: grad[{k!r}] has shape {tuple(g.shape)}, but {where}'s {k!r} has shape "
                             f"{tuple(p.shape)}. A per-task result (reduction='none') has a leading task axis: "
                             "reduce it first.")
        if g.dtype != p.dtype or g.device != p.device:
            raise TypeError(f"write_grad: grad[{k!r}] is {g.dtype} on {g.device}, but {where}'s {k!r} is {p.dtype} "
                            f"on {p.device}; convert it with .to(p).")
        if where != "target" and not p.requires_grad:
            raise ValueError(f"write_grad: the module's parameter {k!r} is frozen (requires_grad=False), but grad "
                             "holds it: an optimizer would step it anyway. Leave it out of theta "
                             "(module_params(model, trainable=...)) or unfreeze it.")
        if where == "target" and not p.requires_grad:
            raise ValueError(f"write_grad: target[{k!r}] does not require grad, so no optimizer steps it and its .grad "
                             "would go unused. module_params returns detached views: write into the module instead, "
                             "write_grad(model, result.grad), or into the tensors the optimizer holds.")
        if not p.is_leaf:
            raise ValueError(f"write_grad: {where}'s {k!r} is not a leaf tensor (it has a grad_fn), so an optimizer "
                             "does not hold it; pass the tensors the optimizer steps (e.g. "
                             "{k: v.requires_grad_() for k, v in theta.items()}).")
    for k, g in grad.items():
        p = tensors[k]
        if accumulate and p.grad is not None:
            p.grad.add_(g.detach())
        else:
            p.grad = g.detach().clone()
