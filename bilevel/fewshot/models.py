"""The networks of the few-shot benchmarks.

BatchNorm layers keep no running statistics (``track_running_stats=False``): they always
normalize with the statistics of the batch they see (the support set in the inner loop, the
query set at prediction), as MAML and iMAML do. This also keeps the modules free of buffers,
so ``functional_call`` under ``vmap`` needs nothing but the parameters.
"""

from __future__ import annotations

from torch import nn

__all__ = ["Conv4", "SinusoidMLP"]


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """4 x [conv3x3 (``channels`` filters), BatchNorm, ReLU, 2x2 max-pool], then linear.

    The standard few-shot network (Vinyals et al. 2016; Finn et al. 2017) used by iMAML for
    Omniglot: 28x28 inputs become 64 x 1 x 1 features; 84x84 (mini-ImageNet) become 5x5.

    PyTorch's default initialization. The official iMAML code's (``xavier_uniform_(gain=1.73)``,
    biases ``U(0, 0.05)``) trained both MAML and iMAML-GD more slowly in our short Omniglot
    runs (docs/fewshot.md).
    """

    def __init__(self, ways: int, in_channels: int = 1, channels: int = 64, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(*[_block(in_channels if i == 0 else channels, channels) for i in range(4)])
        side = image_size
        for _ in range(4):
            side //= 2
        self.head = nn.Linear(channels * side * side, ways)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class SinusoidMLP(nn.Module):
    """1 -> 40 -> 40 -> 1 with ReLU (Finn et al. 2017's sinusoid regressor)."""

    def __init__(self, hidden: int = 40):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)
