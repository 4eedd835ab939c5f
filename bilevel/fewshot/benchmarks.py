"""Few-shot benchmarks: where tasks come from, the network, the task loss and the metric.

A benchmark hands out one task stream per split (``"train"``, ``"val"``, ``"test"``), each with
``sample(meta_batch) -> EpisodeBatch`` and ``state_dict()``, builds the network, and scores
adapted parameters on a query set (classification accuracy, or regression MSE).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..data import (DataError, EpisodeSampler, SinusoidTasks, check_miniimagenet_source, check_omniglot_source,
                    load_miniimagenet, load_omniglot, omniglot_splits)
from ..meta import model_loss
from .models import NETS, SINUSOID_NETS, Conv4, SinusoidMLP

__all__ = ["BENCHMARKS", "Benchmark", "make_benchmark", "SPLIT_SEED_OFFSET"]

# Each split draws from its own stream: seed + offset, so train, val and test never share one.
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


@dataclass
class Benchmark:
    """One benchmark at one setting (ways, shots, queries)."""

    name: str
    ways: int
    shots: int
    queries: int
    data_root: str | None = None
    net: str | None = None  # one of the benchmark's ``nets``; None: its default
    init: str = "torch"  # models.INITS
    _splits: Any = None

    # --- what each benchmark defines
    metric_name: ClassVar[str] = "accuracy"
    default_net: ClassVar[str | None] = None
    nets: ClassVar[tuple[str, ...]] = NETS  # the --net choices
    higher_is_better: ClassVar[bool] = True
    convolutional: ClassVar[bool] = True

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def criterion(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y)

    def task_metric(self, out: Tensor, y: Tensor) -> Tensor:
        return (out.argmax(-1) == y).to(out.dtype).mean()

    def sampler(self, split: str, seed: int):
        raise NotImplementedError

    @classmethod
    def check_data(cls, data_root: str | None) -> None:
        """Cheap checks of the data before any work (nothing is loaded): raise ``DataError`` or
        ``ValueError`` naming the file or folder and the fix."""

    # --- shared
    def task_loss(self, model: nn.Module):
        """``(params, (x, y)) -> loss``, the loss both levels use."""
        return model_loss(model, self.criterion)

    def outputs(self, model: nn.Module):
        """``(params, x) -> model(x; params)``: with :meth:`criterion`, the pieces of :meth:`task_loss`."""
        return lambda params, x: functional_call(model, params, (x,))

    def score(self, model: nn.Module, params, batch) -> Tensor:
        """The metric of ``params`` (one task's parameters) on ``batch = (x, y)``, 0-d."""
        x, y = batch
        return self.task_metric(functional_call(model, params, (x,)), y)


class SinusoidBenchmark(Benchmark):
    """Finn et al. (2017) sinusoid regression: amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5]."""

    metric_name = "mse"
    higher_is_better = False
    convolutional = False

    # Smooth, so iMAML's inner problem has a stationary point that Newton-CG reaches; Finn et
    # al.'s ReLU regressor (--net relu) puts the minimizer on a kink (docs/reproduction.md).
    default_net: ClassVar[str] = "softplus"
    nets: ClassVar[tuple[str, ...]] = SINUSOID_NETS

    def build_model(self):
        return SinusoidMLP(activation=self.net or self.default_net)

    # By hand, not F.mse_loss: on torch 2.13 the latter's backward has no forward-mode
    # derivative, which forward-over-reverse Hessian-vector products need.
    def criterion(self, out, y):
        return ((out - y) ** 2).mean()

    task_metric = criterion  # the metric is the loss: query MSE

    def sampler(self, split, seed):
        return SinusoidTasks(shots=self.shots, queries=self.queries, seed=seed + SPLIT_SEED_OFFSET[split])


class OmniglotBenchmark(Benchmark):
    """Omniglot N-way K-shot: 1100 train characters x 4 rotations, 100 val, 423 test (docs/data.md)."""

    def splits(self):
        if self._splits is None:
            self._splits = omniglot_splits(load_omniglot(self.data_root))
        return self._splits

    default_net: ClassVar[str] = "strided"  # MAML's and the official iMAML code's Omniglot net

    @classmethod
    def check_data(cls, data_root):
        _check_folder(data_root, "create it first to have the two archives downloaded into it")
        check_omniglot_source(data_root)

    def build_model(self):
        return Conv4(self.ways, in_channels=1, image_size=28, net=self.net or self.default_net, init=self.init)

    def sampler(self, split, seed):
        classes = getattr(self.splits(), split)
        return EpisodeSampler(classes, self.ways, self.shots, self.queries, seed=seed + SPLIT_SEED_OFFSET[split])


class MiniImageNetBenchmark(Benchmark):
    """mini-ImageNet N-way K-shot (user-supplied split files, see docs/data.md); 84x84 RGB."""

    default_net: ClassVar[str] = "maxpool"  # MAML's 32-filter conv4

    def build_model(self):
        return Conv4(self.ways, in_channels=3, channels=32, image_size=84, net=self.net or self.default_net,
                     init=self.init)

    @classmethod
    def check_data(cls, data_root):
        if data_root is None:
            raise ValueError(_MINIIMAGENET_ROOT)
        _check_folder(data_root, "mini-ImageNet cannot be downloaded automatically; see docs/data.md")
        check_miniimagenet_source(data_root)

    def sampler(self, split, seed):
        if self.data_root is None:
            raise ValueError(_MINIIMAGENET_ROOT)
        if self._splits is None:
            self._splits = {}
        if split not in self._splits:  # validation asks for its sampler again and again
            self._splits[split] = load_miniimagenet(self.data_root, split)
        return EpisodeSampler(self._splits[split], self.ways, self.shots, self.queries,
                              seed=seed + SPLIT_SEED_OFFSET[split])


_MINIIMAGENET_ROOT = ("--benchmark miniimagenet needs --data-root pointing at the split files (see docs/data.md); "
                      "they cannot be downloaded automatically.")


def _check_folder(data_root: str | None, hint: str) -> None:
    """A ``--data-root`` given but not a folder is most likely a typo: say so before any download."""
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        what = "is a file" if Path(data_root).expanduser().exists() else "does not exist"
        raise DataError(f"--data-root {data_root!r} {what}; give the folder that holds the data ({hint})")


BENCHMARKS = {"sinusoid": SinusoidBenchmark, "omniglot": OmniglotBenchmark, "miniimagenet": MiniImageNetBenchmark}


def make_benchmark(name: str, ways: int, shots: int, queries: int, data_root: str | None = None,
                   net: str | None = None, init: str = "torch") -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name](name, ways, shots, queries, data_root, net, init)


def batch_to_tasks(batch, device, dtype=torch.float32):
    """``EpisodeBatch`` -> ``((support_x, support_y), (query_x, query_y))`` on ``device``."""
    b = batch.to(device, dtype=dtype)
    return (b.support_x, b.support_y), (b.query_x, b.query_y)
