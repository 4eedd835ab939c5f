"""Hessian-vector products of a scalar function of a parameter dict, from ``torch.func``.

``hvp(f, x, v) = (d^2 f / dx^2)(x) @ v``. Two modes compute the same number:

* ``"forward-over-reverse"``: ``jvp(grad(f), (x,), (v,))``: one forward-mode pass over the
  backward graph, the cheapest in memory; it needs a forward-mode rule for every op in ``f``
  (``F.mse_loss``, for one, has none in torch 2.13).
* ``"reverse-over-reverse"``: ``vjp(grad(f), x)`` applied to ``v`` (valid because the
  Hessian is symmetric); the backward graph of ``grad f`` is built once and reused for every
  product. Much faster on a CPU for small networks (3x on the sinusoid MLP, 6-15x on tanh and
  softplus MLPs here), and needed when an op in ``f`` has no forward-mode rule.
* ``"auto"`` (default): reverse-over-reverse on every device, so that a loss that runs on a
  CPU also runs on a GPU (it once chose forward-over-reverse on accelerators, where ops
  without a forward-mode rule then failed). Ask for ``"forward-over-reverse"`` explicitly
  where every op supports it and its memory saving matters.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import grad, jvp, vjp

from .tree import Params

__all__ = ["hvp", "HVP_MODES", "make_hvp", "make_ggn", "check_hvp_mode", "resolve_hvp_mode"]

HVP_MODES = ("auto", "forward-over-reverse", "reverse-over-reverse")


def check_hvp_mode(call: str, mode: str) -> str:
    if mode not in HVP_MODES:
        raise ValueError(f"{call}: unknown hvp mode {mode!r}; expected one of {HVP_MODES}. "
                         "Use 'reverse-over-reverse' if an op lacks forward-mode support.")
    return mode


def hvp(f: Callable[[Params], Tensor], x: Params, v: Params,
        mode: str = "auto") -> Params:
    """Hessian of ``f`` at ``x`` times ``v``.

    Args:
        f: scalar function of a parameter dict.
        x: point at which the Hessian is taken.
        v: direction, a dict with the keys and shapes of ``x``.
        mode: ``"auto"``, ``"forward-over-reverse"`` or ``"reverse-over-reverse"``.

    Example:
        >>> import torch
        >>> f = lambda p: (p["w"] ** 3).sum()
        >>> hvp(f, {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 1.0])})["w"]
        tensor([ 6., 12.])
    """
    return make_hvp(f, x, mode)(v)


def resolve_hvp_mode(mode: str, x: Params) -> str:
    """``"auto"`` -> ``"reverse-over-reverse"`` (on every device: the same ops work everywhere)."""
    return "reverse-over-reverse" if mode == "auto" else mode


def make_hvp(f: Callable[[Params], Tensor], x: Params,
             mode: str = "auto") -> Callable[[Params], Params]:
    """The matvec ``v -> H(x) v`` as a closure, for the linear solvers.

    In reverse-over-reverse mode the backward graph of ``grad f`` is built once and
    reused for every product, as in a CG loop.
    """
    mode = resolve_hvp_mode(check_hvp_mode("make_hvp", mode), x)
    grad_f = grad(f)
    if mode == "forward-over-reverse":
        def forward_over_reverse(v):
            try:
                return jvp(grad_f, (x,), (v,))[1]
            except RuntimeError as exc:
                if "ZeroTensors are immutable" not in str(exc):
                    raise
                # torch 2.13 lacks forward-mode support in some backward formulas (F.mse_loss's).
                raise RuntimeError(
                    "hvp(mode='forward-over-reverse'): an op in the loss has no working forward-mode "
                    "derivative of its backward on this torch (seen with F.mse_loss on 2.13: 'ZeroTensors "
                    "are immutable'). Use hvp_mode='reverse-over-reverse', or write the op by hand "
                    "(e.g. ((out - y) ** 2).mean()).") from exc
        return forward_over_reverse
    _, vjp_fn = vjp(grad_f, x)
    return lambda v: vjp_fn(v)[0]


def make_ggn(outputs: Callable[[Params], Tensor], output_loss: Callable[[Tensor], Tensor], x: Params,
             ridge: float = 0.0) -> Callable[[Params], Params]:
    """The generalized Gauss-Newton matvec ``v -> J^T H_out J v + ridge v`` at ``x``.

    For ``f(x) = output_loss(outputs(x))``, ``J = d outputs / dx`` and ``H_out`` is the Hessian of
    ``output_loss`` at ``outputs(x)``. It drops the second-order term of the network from the
    Hessian: positive semi-definite whenever ``output_loss`` is convex (cross-entropy, squared
    error), so CG on it never meets negative curvature.

    Args:
        outputs: parameters -> network outputs.
        output_loss: outputs -> scalar loss (convex in the outputs for a PSD matrix).
        x: the point.
        ridge: added multiple of the identity (iMAML's ``lam``).

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
        >>> ggn = make_ggn(lambda p: A @ p["w"], lambda o: 0.5 * (o ** 2).sum(), {"w": torch.zeros(2)})
        >>> ggn({"w": torch.tensor([1.0, 0.0])})["w"]  # A^T A e_1
        tensor([1., 2.])
    """
    out, vjp_fn = vjp(outputs, x)
    grad_loss = grad(output_loss)

    def matvec(v: Params) -> Params:
        _, jv = jvp(outputs, (x,), (v,))
        _, hjv = jvp(grad_loss, (out,), (jv,))
        (result,) = vjp_fn(hjv)
        return result if ridge == 0 else {k: result[k] + ridge * v[k] for k in result}

    return matvec
