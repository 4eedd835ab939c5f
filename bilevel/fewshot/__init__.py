"""Few-shot meta-learning on top of the core: benchmarks, networks, methods, training, CLI."""

from .benchmarks import BENCHMARKS, make_benchmark
from .config import TrainConfig, resolve
from .backends import BACKENDS
from .methods import METHODS, build_method
from .models import Conv4, SinusoidMLP
from .trainer import evaluate, evaluate_params, mean_ci95, train

__all__ = ["BENCHMARKS", "make_benchmark", "TrainConfig", "resolve", "METHODS", "BACKENDS", "build_method",
           "Conv4", "SinusoidMLP", "train", "evaluate", "evaluate_params", "mean_ci95"]
