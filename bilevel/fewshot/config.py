"""The resolved configuration of a few-shot run: every setting explicit, saved as JSON.

Unset fields (``None``) are filled by :func:`resolve` from the benchmark, the method and the
protocol, with the iMAML paper's defaults: lambda = 2.0, 5 CG steps, 16 inner steps for 5-way
and 25 for 20-way Omniglot, inner learning rate 0.1, Adam with learning rate 1e-3 and
meta-batch 32.

Two protocols for iMAML (docs/reproduction.md):

* ``paper``: Algorithm 2 as written. The inner solver minimizes
  ``L_train + (lam_effective/2)||phi - theta||^2``; CG solves ``((1 + cg_damping) I +
  H/lam_effective) g = grad L_test``; test-time adaptation solves the same proximal problem.
  ``lam_scale`` says which loss ``lam`` is stated for: ``mean`` (the support loss averaged
  over its ``ways * shots`` examples, as computed) or ``sum`` (summed over them), so
  ``lam_effective = lam`` or ``lam / (ways * shots)``.
* ``official``: the released code (aravindr93/imaml_dev): ``inner_steps`` GD steps on
  ``L_train`` alone, then one pull ``phi <- phi - inner_lr * lam (phi - theta)``; CG on
  ``((1 + cg_damping) I + H/(lam + 10))`` with ``cg_damping = 1``; Adam eps 1e-3; ``shots``
  query examples per class; xavier (gain 1.73) initialization; plain GD (lam = 0) at test.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..hvp import HVP_MODES
from .benchmarks import BENCHMARKS
from .models import INITS, NETS
from .methods import BACKENDS, METHODS

__all__ = ["TrainConfig", "resolve", "load_config", "save_config", "PROTOCOLS", "LAM_SCALES"]

PROTOCOLS = ("paper", "official")
LAM_SCALES = ("mean", "sum")
DEFAULT_LAM_SCALE = "sum"  # lambda = 2 learns only in this reading: docs/reproduction.md
_PROTOCOL_DEFAULTS = {
    "paper": dict(cg_damping=0.0, outer_eps=1e-8, init="torch"),
    "official": dict(cg_damping=1.0, outer_eps=1e-3, init="official", lam_scale="mean"),
}


@dataclass
class TrainConfig:
    benchmark: str = "sinusoid"
    method: str = "imaml-gd"
    protocol: str = "paper"
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    backend: str | None = None
    inner_steps: int | None = None
    inner_lr: float | None = None
    lam: float | None = None
    lam_scale: str | None = None
    lam_effective: float | None = None  # derived by resolve(): the lambda on the computed (mean) loss
    cg_steps: int = 5
    cg_damping: float | None = None
    cg_on_negative: str = "continue"
    curvature: str = "hessian"
    hf_steps: int | None = None
    hf_cg_steps: int = 5
    truncate_steps: int | None = None
    outer_lr: float = 1e-3
    outer_eps: float | None = None
    net: str | None = None
    init: str | None = None
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


# Per benchmark and method, chosen on validation tasks (never test): the sinusoid grid of
# benchmarks/tune_sinusoid.py, whose log and choices are in docs/results/sinusoid-tuning/.
_METHOD_DEFAULTS: dict[str, dict[str, dict]] = {
    "sinusoid": {
        "maml": dict(inner_lr=0.02, inner_steps=5),
        "fomaml": dict(inner_lr=0.02, inner_steps=5),
        "reptile": dict(inner_lr=0.02, inner_steps=5),
        "imaml-gd": dict(lam=10.0, lam_scale="mean", inner_lr=0.02, inner_steps=25),
        "imaml-hf": dict(lam=10.0, lam_scale="mean", hf_steps=2),
    },
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
    if c.protocol not in PROTOCOLS:
        raise ValueError(f"unknown --protocol {c.protocol!r}; choose one of {PROTOCOLS}")
    if c.protocol == "official":
        if c.method != "imaml-gd":
            raise ValueError(f"--protocol official is the released iMAML-GD code; it does not apply to "
                             f"--method {c.method} (use --protocol paper)")
        if c.backend not in (None, "implicit"):
            raise ValueError("--protocol official computes the implicit meta-gradient; leave --backend unset")
        if c.lam_scale not in (None, "mean"):
            raise ValueError("--protocol official uses lambda on the mean support loss, as the released code; "
                             "leave --lam-scale unset")
        if c.queries is None and c.benchmark != "sinusoid":
            c.queries = c.shots if c.shots is not None else _DEFAULTS[c.benchmark]["shots"]
    method_defaults = _METHOD_DEFAULTS.get(c.benchmark, {}).get(c.method, {}) if c.protocol == "paper" else {}
    for key, value in {"lam": 2.0, **_DEFAULTS[c.benchmark], **method_defaults,
                       **_PROTOCOL_DEFAULTS[c.protocol]}.items():
        if getattr(c, key) is None:
            setattr(c, key, value)
    if c.lam_scale is None:
        c.lam_scale = DEFAULT_LAM_SCALE
    if c.lam_scale not in LAM_SCALES:
        raise ValueError(f"--lam-scale must be one of {LAM_SCALES}, got {c.lam_scale!r}")
    if c.net is None:
        c.net = BENCHMARKS[c.benchmark].default_net
    elif c.benchmark == "sinusoid":
        raise ValueError("--net applies to the conv benchmarks (omniglot, miniimagenet); leave it unset")
    elif c.net not in NETS:
        raise ValueError(f"--net must be one of {NETS}, got {c.net!r}")
    if c.init not in INITS:
        raise ValueError(f"--init must be one of {INITS}, got {c.init!r}")
    if c.curvature not in ("hessian", "gauss-newton"):
        raise ValueError(f"--curvature must be hessian or gauss-newton, got {c.curvature!r}")
    if c.cg_on_negative not in ("continue", "stop"):
        raise ValueError(f"--cg-on-negative must be continue or stop, got {c.cg_on_negative!r}")
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
    for name in ("inner_lr", "outer_lr", "lam", "outer_eps"):
        value = getattr(c, name)
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value!r}")
    if not isinstance(c.cg_damping, (int, float)) or not c.cg_damping >= 0:
        raise ValueError(f"--cg-damping must be >= 0, got {c.cg_damping!r}")
    support_size = c.ways * c.shots
    c.lam_effective = c.lam / support_size if c.lam_scale == "sum" else float(c.lam)
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


def differences_from_paper(c: TrainConfig) -> list[str]:
    """Where a resolved Omniglot config departs from the iMAML paper's protocol (shared/PAPER.md,
    section 4b), and why; recorded in ``config.json``."""
    if c.benchmark != "omniglot":
        return []
    notes = ["split: 1100 train characters x 4 rotations, 100 validation, 423 test, by a hash of each path "
             "(the paper: 1200 train, 423 test); validation characters choose lambda and the protocol"]
    if c.protocol == "official":
        notes.append("protocol official: the released code's inner loop, damped CG, Adam eps, K queries, init "
                     "and lam = 0 at test, not Algorithm 2 as written")
    else:
        if c.method.startswith("imaml") and c.lam_scale == "sum":
            notes.append(f"lambda {c.lam:g} stated for the summed support loss (lambda {c.lam_effective:g} on the "
                         "mean): the paper does not say; lambda = 2 learns only in this reading (docs/reproduction.md)")
        if c.queries != c.shots:
            notes.append(f"queries: {c.queries} per class (the official code: K = {c.shots}); fewer makes each "
                         "meta-gradient and each test task's accuracy noisier")
        if c.init != "official":
            notes.append("initialization: PyTorch's default (the official code: xavier gain 1.73)")
        if c.curvature != "hessian" or c.cg_damping or c.cg_on_negative != "continue":
            notes.append("meta-gradient's linear system changed (curvature, damping or CG stop): a study, not the paper")
    if c.net != "strided":
        notes.append(f"net: {c.net} (MAML and the official code use the strided conv4 on Omniglot)")
    if c.meta_batch != 32 or c.iterations < 20000:
        notes.append(f"budget: {c.iterations} x {c.meta_batch} (the official code: >= 20000 x 32)")
    return notes


def save_config(config: TrainConfig, path: Path) -> None:
    """The configuration as JSON, with ``differences_from_paper`` (not read back)."""
    data = {**dataclasses.asdict(config), "differences_from_paper": differences_from_paper(config)}
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_config(path: Path) -> TrainConfig:
    data = json.loads(Path(path).read_text())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in known})
