"""The networks of the few-shot benchmarks.

BatchNorm layers keep no running statistics (``track_running_stats=False``): they always
normalize with the statistics of the batch they see (the support set in the inner loop, the
query set at prediction), as MAML and iMAML do. This also keeps the modules free of buffers,
so ``functional_call`` under ``vmap`` needs nothing but the parameters.

Two conv4 variants (``--net``):

* ``strided`` (Omniglot default): MAML's Omniglot network (Finn et al. 2017, section 5.2,
  "strided convolutions instead of max-pooling") as in the official iMAML code:
  4 x [conv3x3 stride 2 padding 1, BatchNorm, ReLU], a zero pad on the right and bottom
  before the third conv, so 28 -> 14 -> 7 -> 8 -> 4 -> 2, then ``Linear(64 * 2 * 2, ways)``.
* ``maxpool`` (mini-ImageNet default, 32 filters there): 4 x [conv3x3 padding 1, BatchNorm,
  ReLU, 2x2 max-pool] (Vinyals et al. 2016). On 28x28 Omniglot its last BatchNorm normalizes
  1x1 maps over the support images alone (5 values per channel in 5-way 1-shot).

Sinusoid's regressor (``--net`` on sinusoid): ``relu`` (Finn et al. 2017) or ``softplus``.

Two initializations (``--init``): ``torch`` (PyTorch's default) and ``official`` (the official
iMAML code's: ``xavier_uniform_(gain=1.73)`` weights, ``U(0, 0.05)`` biases, for every conv
and the linear layer).
"""

from __future__ import annotations

from torch import nn

__all__ = ["Conv4", "SinusoidMLP", "NETS", "SINUSOID_NETS", "INITS", "init_official"]

NETS = ("strided", "maxpool")  # Conv4's variants
_ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus}
SINUSOID_NETS = tuple(_ACTIVATIONS)  # SinusoidMLP's activations
INITS = ("torch", "official")


def _block(in_channels: int, out_channels: int, net: str) -> list[nn.Module]:
    stride, pool = (2, []) if net == "strided" else (1, [nn.MaxPool2d(2)])
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels, track_running_stats=False), nn.ReLU(), *pool]


def _side_after(net: str, image_size: int) -> int:
    side = image_size
    for i in range(4):
        if net == "strided" and i == 2:
            side += 1  # the zero pad before the third conv
        side = (side + 1) // 2 if net == "strided" else side // 2
    return side


class Conv4(nn.Module):
    """Four conv blocks (``net="strided"`` or ``"maxpool"``, see the module docstring), then linear.

    Args:
        ways: output classes.
        in_channels: 1 (Omniglot) or 3 (mini-ImageNet).
        channels: filters per conv (64 for Omniglot, 32 for mini-ImageNet in MAML).
        image_size: input side (28 or 84).
        net: ``"strided"`` or ``"maxpool"``.
        init: ``"torch"`` or ``"official"``.

    Example:
        >>> import torch
        >>> Conv4(5, net="strided")(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 5])
    """

    def __init__(self, ways: int, in_channels: int = 1, channels: int = 64, image_size: int = 28,
                 net: str = "strided", init: str = "torch"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"Conv4: net must be one of {NETS}, got {net!r}")
        if init not in INITS:
            raise ValueError(f"Conv4: init must be one of {INITS}, got {init!r}")
        layers = []
        for i in range(4):
            if net == "strided" and i == 2:
                layers.append(nn.ZeroPad2d((0, 1, 0, 1)))
            layers += _block(in_channels if i == 0 else channels, channels, net)
        self.features = nn.Sequential(*layers)
        side = _side_after(net, image_size)
        if side < 1:
            raise ValueError(f"Conv4: image_size {image_size} is too small for four {net} blocks")
        self.head = nn.Linear(channels * side * side, ways)
        if init == "official":
            init_official(self)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def init_official(module: nn.Module) -> nn.Module:
    """The official iMAML code's initialization: xavier-uniform (gain 1.73) weights and
    ``U(0, 0.05)`` biases for every conv and linear layer; BatchNorm keeps (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, gain=1.73)
            if m.bias is not None:
                nn.init.uniform_(m.bias, 0.0, 0.05)
    return module


class SinusoidMLP(nn.Module):
    """1 -> 40 -> 40 -> 1 with ReLU (Finn et al. 2017's sinusoid regressor).

    ``activation="softplus"`` is its smooth twin: with ReLU, iMAML's inner minimizer sits on a
    kink where the loss is not differentiable and no solver reaches ``grad G = 0``; with
    softplus, Newton-CG does (docs/reproduction.md, "Sinusoid").
    """

    def __init__(self, hidden: int = 40, activation: str = "relu"):
        super().__init__()
        if activation not in SINUSOID_NETS:
            raise ValueError(f"SinusoidMLP: activation must be one of {SINUSOID_NETS}, got {activation!r}")
        act = _ACTIVATIONS[activation]
        self.net = nn.Sequential(nn.Linear(1, hidden), act(), nn.Linear(hidden, hidden), act(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)
