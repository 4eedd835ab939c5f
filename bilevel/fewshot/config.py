"""The resolved configuration of a few-shot run: every setting explicit, saved as JSON.

Unset fields (``None``) are filled by :func:`resolve` from the benchmark and the method, with
the iMAML paper's defaults: lambda = 2.0, 5 CG steps, 16 inner steps for 5-way and 25 for
20-way Omniglot, inner learning rate 0.1, Adam with learning rate 1e-3 and meta-batch 32.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..hvp import HVP_MODES
from .benchmarks import BENCHMARKS
from .methods import BACKENDS, METHODS

__all__ = ["TrainConfig", "resolve", "load_config", "save_config"]


@dataclass
class TrainConfig:
    benchmark: str = "sinusoid"
    method: str = "imaml-gd"
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    backend: str | None = None
    inner_steps: int | None = None
    inner_lr: float | None = None
    lam: float = 2.0
    cg_steps: int = 5
    hf_steps: int | None = None
    hf_cg_steps: int = 5
    truncate_steps: int | None = None
    outer_lr: float = 1e-3
    meta_batch: int | None = None
    chunk_size: int | None = None
    vectorize: str = "auto"
    # Reverse-over-reverse: 3x faster than forward-over-reverse for these nets on a CPU here
    # (sinusoid, 25 tasks: 0.024 vs 0.065 s per iMAML-GD meta-gradient).
    hvp_mode: str = "reverse-over-reverse"
    iterations: int | None = None
    val_every: int | None = None
    val_tasks: int = 100
    checkpoint_every: int | None = None
    eval_tasks: int = 600
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None


_DEFAULTS = {
    # per benchmark, for the fields left unset
    "sinusoid": dict(ways=1, shots=10, queries=10, inner_lr=0.02, meta_batch=25, iterations=500, val_every=100,
                     hf_steps=2),
    "omniglot": dict(ways=5, shots=1, queries=5, inner_lr=0.1, meta_batch=32, iterations=20000, val_every=500,
                     hf_steps=5),
    "miniimagenet": dict(ways=5, shots=1, queries=15, inner_lr=0.01, meta_batch=4, iterations=60000, val_every=1000,
                         hf_steps=5),
}


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill defaults and validate; raises ``ValueError`` with a one-line message on bad settings."""
    c = dataclasses.replace(config)
    if c.benchmark not in BENCHMARKS:
        raise ValueError(f"unknown --benchmark {c.benchmark!r}; choose one of {sorted(BENCHMARKS)}")
    if c.method not in METHODS:
        raise ValueError(f"unknown --method {c.method!r}; choose one of {sorted(METHODS)}")
    if c.backend is not None and c.backend not in BACKENDS:
        raise ValueError(f"unknown --backend {c.backend!r}; choose one of {sorted(BACKENDS)}")
    defaults = _DEFAULTS[c.benchmark]
    for key, value in defaults.items():
        if getattr(c, key) is None:
            setattr(c, key, value)
    if c.benchmark == "sinusoid" and c.ways != 1:
        raise ValueError("--ways does not apply to sinusoid regression (it has one output); leave it unset")
    if c.inner_steps is None:
        c.inner_steps = 5 if c.benchmark == "sinusoid" else (16 if c.ways <= 5 else 25)
    if c.checkpoint_every is None:
        c.checkpoint_every = c.val_every
    for name in ("ways", "shots", "queries", "inner_steps", "cg_steps", "hf_steps", "hf_cg_steps", "meta_batch",
                 "iterations", "val_every", "val_tasks", "checkpoint_every", "eval_tasks"):
        _positive_int(name, getattr(c, name))
    if c.benchmark != "sinusoid" and c.ways < 2:
        raise ValueError(f"--ways must be at least 2 for classification, got {c.ways}")
    for name in ("inner_lr", "outer_lr", "lam"):
        value = getattr(c, name)
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value!r}")
    if c.truncate_steps is not None and not 1 <= c.truncate_steps <= c.inner_steps:
        raise ValueError(f"--truncate-steps must be in [1, --inner-steps={c.inner_steps}], got {c.truncate_steps}")
    if c.chunk_size is not None:
        _positive_int("chunk_size", c.chunk_size)
    if c.hvp_mode not in HVP_MODES:
        raise ValueError(f"--hvp-mode must be one of {HVP_MODES}, got {c.hvp_mode!r}")
    if c.vectorize not in ("auto", "on", "off"):
        raise ValueError(f"--vectorize must be auto, on or off, got {c.vectorize!r}")
    if c.device not in ("auto", "cpu", "cuda") and not c.device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {c.device!r}")
    return c


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def load_config(path: Path) -> TrainConfig:
    data = json.loads(Path(path).read_text())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in known})
