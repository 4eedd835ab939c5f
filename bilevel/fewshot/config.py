"""The resolved configuration of a few-shot run: every setting explicit, saved as JSON.

Every default lives here, in four tables read from the most to the least specific:
``_PROTOCOL_DEFAULTS`` (the protocol), ``_METHOD_DEFAULTS`` (a method on a benchmark, paper
protocol only), ``_BENCHMARK_DEFAULTS`` and ``DEFAULTS`` (every run). :func:`resolve` fills each
unset field (``None``) with the first value found, in field order, so a :class:`Rule` may read
the fields above it (``inner_steps`` reads ``ways``). The command line's flags default to
``None`` and their help states these tables (:func:`describe_default`). The iMAML paper's
defaults: lambda = 2.0, 5 CG steps, 16 inner steps for 5-way and 25 for 20-way Omniglot, inner
learning rate 0.1, Adam with learning rate 1e-3 and meta-batch 32.

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
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hvp import HVP_MODES
from ..validation import check_int
from .benchmarks import BENCHMARKS
from .models import INITS
from .backends import BACKENDS, backends_using
from .methods import METHODS

__all__ = ["TrainConfig", "resolve", "load_config", "save_config", "describe_default", "inapplicable", "Rule",
           "DEFAULTS", "PROTOCOLS", "LAM_SCALES", "CURVATURES", "CG_ON_NEGATIVE", "VECTORIZE", "ON_SOLVER_FAILURE"]

PROTOCOLS = ("paper", "official")
LAM_SCALES = ("mean", "sum")
CURVATURES = ("hessian", "gauss-newton")
CG_ON_NEGATIVE = ("continue", "stop")
VECTORIZE = ("auto", "on", "off")
ON_SOLVER_FAILURE = ("warn", "skip-task", "stop")


@dataclass
class TrainConfig:
    """Every setting of a run; ``None`` is unset (filled by :func:`resolve` from the tables below)."""

    benchmark: str | None = None
    method: str | None = None
    protocol: str | None = None
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    backend: str | None = None  # None: the method's own
    net: str | None = None  # before the settings whose sinusoid defaults depend on it
    inner_steps: int | None = None
    inner_lr: float | None = None
    inner_momentum: float | None = None  # heavy-ball momentum of the gradient inner loop; 0: plain GD
    inner_nesterov: bool | None = None  # Nesterov's form of that momentum
    lam: float | None = None
    lam_scale: str | None = None
    lam_effective: float | None = None  # derived by resolve(): the lambda on the computed (mean) loss
    cg_steps: int | None = None
    cg_damping: float | None = None
    cg_on_negative: str | None = None
    curvature: str | None = None
    hf_steps: int | None = None
    hf_cg_steps: int | None = None
    hf_curvature: str | None = None
    truncate_steps: int | None = None
    outer_lr: float | None = None
    outer_eps: float | None = None
    init: str | None = None
    meta_batch: int | None = None
    chunk_size: int | None = None  # None: all tasks at once
    memory_budget_mb: float | None = None  # CUDA MB a meta-step may add; the trainer derives the chunk size
    vectorize: str | None = None
    hvp_mode: str | None = None
    iterations: int | None = None
    val_every: int | None = None
    val_tasks: int | None = None
    checkpoint_every: int | None = None
    eval_tasks: int | None = None
    seed: int | None = None
    device: str | None = None
    data_root: str | None = None  # None: $BILEVEL_DATA, else the user cache
    on_solver_failure: str | None = None  # read by the trainer: a task whose linear solve fails
    deterministic: bool | None = None  # deterministic GPU kernels (docs/reliability.md)


@dataclass(frozen=True)
class Rule:
    """A default computed from the fields resolved before it; ``None``: no default at this level."""

    fn: Callable[[TrainConfig], Any]
    text: str  # the rule in words, for the command line's help


def _conv_inner_steps(c: TrainConfig) -> int:
    return 16 if c.ways <= 5 else 25  # the iMAML paper: 5-way and 20-way Omniglot


def _half_inner_steps(c: TrainConfig) -> int | None:
    backend = BACKENDS[c.backend or METHODS[c.method].backend]
    return max(1, c.inner_steps // 2) if "truncate_steps" in backend.fields else None


# Every run, unless a more specific table says otherwise.
DEFAULTS: dict[str, Any] = dict(
    benchmark="sinusoid", method="imaml-gd", protocol="paper",
    inner_momentum=0.0, inner_nesterov=False,
    lam=2.0, lam_scale="sum",  # lambda = 2 learns only summed: docs/reproduction.md
    cg_steps=5, cg_damping=0.0, cg_on_negative="continue", curvature="hessian", hf_steps=5, hf_cg_steps=5,
    hf_curvature="hessian",
    truncate_steps=Rule(_half_inner_steps, "half of --inner-steps"),
    outer_lr=1e-3, outer_eps=1e-8, init="torch", vectorize="auto",
    # auto: reverse-over-reverse on a CPU, 3x faster than forward-over-reverse for these nets
    # (sinusoid, 25 tasks: 0.024 vs 0.065 s per iMAML-GD meta-gradient); forward-over-reverse on a GPU.
    hvp_mode="auto",
    val_tasks=100, checkpoint_every=Rule(lambda c: c.val_every, "--val-every"), eval_tasks=600, seed=0,
    device="auto", on_solver_failure="warn", deterministic=False,
)
DEFAULT_LAM_SCALE = DEFAULTS["lam_scale"]

_CONV_INNER_STEPS = Rule(_conv_inner_steps, "16 up to 5 ways, 25 above")
_BENCHMARK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sinusoid": dict(ways=1, shots=10, queries=10, inner_steps=5, inner_lr=0.02, meta_batch=25,
                     net=BENCHMARKS["sinusoid"].default_net, iterations=500, val_every=100),
    "omniglot": dict(ways=5, shots=1, queries=5, inner_steps=_CONV_INNER_STEPS, inner_lr=0.1,
                     net=BENCHMARKS["omniglot"].default_net, meta_batch=32, iterations=20000, val_every=500),
    "miniimagenet": dict(ways=5, shots=1, queries=15, inner_steps=_CONV_INNER_STEPS, inner_lr=0.01,
                         net=BENCHMARKS["miniimagenet"].default_net, meta_batch=4, iterations=60000,
                         val_every=1000),
}

def _by_net(**values: Any) -> Rule:
    """A sinusoid default chosen per regressor (``--net``): ``_by_net(relu=..., softplus=...)``."""
    return Rule(lambda c: values[c.net], " or ".join(f"{v} ({net})" for net, v in values.items()))


# Per benchmark and method (paper protocol), chosen on validation tasks (never test): the sinusoid
# grid of benchmarks/tune_sinusoid.py, whose logs and choices are in docs/results/sinusoid-tuning-softplus/
# (the default net) and docs/results/sinusoid-tuning/ (ReLU).
_METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "sinusoid": {
        # softplus: the outer learning rate too, over 3 seeds (docs/sinusoid.md): 1e-2 for the
        # unrolled and first-order methods; iMAML-GD's fixed-step inner loop loses stationarity above 1e-3.
        "maml": dict(inner_lr=0.01, inner_steps=_by_net(relu=10, softplus=5), outer_lr=_by_net(relu=1e-3, softplus=1e-2)),
        "fomaml": dict(inner_lr=_by_net(relu=0.02, softplus=0.01), inner_steps=5,
                       outer_lr=_by_net(relu=1e-3, softplus=1e-2)),
        "reptile": dict(inner_lr=_by_net(relu=0.02, softplus=0.01), inner_steps=10,
                        outer_lr=_by_net(relu=1e-3, softplus=1e-2)),
        # softplus: the heavy ball reaches ||grad G|| 0.04-0.05 in 25 steps in every one of 3 tuning
        # seeds (plain GD: 0.8-46; Nesterov at lr 0.005 lost stationarity late in one seed).
        "imaml-gd": dict(lam=10.0, lam_scale="mean", inner_lr=_by_net(relu=0.02, softplus=0.005), inner_steps=25,
                         inner_momentum=_by_net(relu=0.0, softplus=0.6)),
        # 10 Newton steps do better on validation but take the main job past 3 minutes.
        "imaml-hf": dict(lam=10.0, lam_scale="mean", hf_steps=_by_net(relu=2, softplus=5),
                         outer_lr=_by_net(relu=1e-3, softplus=3e-3)),  # 1e-2 leaves ||grad G|| 0.83
    },
}

_PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "official": dict(queries=Rule(lambda c: c.shots if c.benchmark != "sinusoid" else None, "--shots on images"),
                     lam_scale="mean", cg_damping=1.0, outer_eps=1e-3, init="official"),
}

# What an unset field means where no table sets it, for the help.
_UNSET = {"backend": "the method's own", "chunk_size": "all tasks at once", "memory_budget_mb": "no budget",
          "data_root": "$BILEVEL_DATA, else ~/.cache/bilevel"}
_SELECTORS = ("benchmark", "method", "protocol")  # resolved first: they choose the tables


def _tables(c: TrainConfig) -> list[dict[str, Any]]:
    """The default tables that apply to ``c``, the most specific first."""
    method = _METHOD_DEFAULTS.get(c.benchmark, {}).get(c.method, {}) if c.protocol == "paper" else {}
    return [_PROTOCOL_DEFAULTS[c.protocol], method, _BENCHMARK_DEFAULTS[c.benchmark], DEFAULTS]


def _default(c: TrainConfig, name: str) -> Any:
    for table in _tables(c):
        value = table.get(name)
        if isinstance(value, Rule):
            value = value.fn(c)
        if value is not None:
            return value
    return None


_FLAG_NAMES = {"memory_budget_mb": "--memory-budget"}  # fields whose flag is not their name


def _flag(name: str) -> str:
    return _FLAG_NAMES.get(name) or "--" + name.replace("_", "-")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        if name in (*_SELECTORS, "backend"):
            raise ValueError(f"unknown {_flag(name)} {value!r}; choose one of {', '.join(sorted(choices))}")
        raise ValueError(f"{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")


# Integer fields: (smallest value, the fix when smaller).
_INTS = {
    "ways": (1, None), "shots": (1, None), "queries": (1, None), "inner_steps": (1, None), "cg_steps": (1, None),
    "hf_steps": (1, None), "hf_cg_steps": (1, None), "meta_batch": (1, None), "iterations": (1, None),
    "val_every": (1, None), "val_tasks": (2, "A 95% interval needs at least 2 tasks."),
    "checkpoint_every": (1, None), "eval_tasks": (2, "A 95% interval needs at least 2 tasks."),
    "seed": (0, None), "chunk_size": (1, None), "truncate_steps": (1, None),
}
_POSITIVE = ("inner_lr", "outer_lr", "lam", "outer_eps", "memory_budget_mb")
_OPTIONAL = ("memory_budget_mb",)  # unset (None) means no budget
_FLOAT32_MAX = 3.4028234663852886e38


def _check_ints(c: TrainConfig) -> None:
    try:
        for name, (minimum, fix) in _INTS.items():
            if getattr(c, name) is not None:
                check_int(None, _flag(name), getattr(c, name), minimum=minimum, fix=fix)
    except TypeError as exc:  # a wrong type in a config file is a bad value like any other
        raise ValueError(str(exc)) from None


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill defaults and validate; raises ``ValueError`` with a one-line message on bad settings.

    Idempotent: a resolved config resolves to itself (``lam_effective`` is recomputed).
    """
    c = dataclasses.replace(config)
    for name in _SELECTORS:
        if getattr(c, name) is None:
            setattr(c, name, DEFAULTS[name])
    _check_choice("benchmark", c.benchmark, BENCHMARKS)
    _check_choice("method", c.method, METHODS)
    _check_choice("protocol", c.protocol, PROTOCOLS)
    if c.backend is not None:
        _check_choice("backend", c.backend, BACKENDS)
    if c.protocol == "official":
        if c.method != "imaml-gd":
            raise ValueError(f"--protocol official is the released iMAML-GD code; it does not apply to "
                             f"--method {c.method} (use --protocol paper)")
        if c.backend not in (None, METHODS[c.method].backend):  # the released code's implicit meta-gradient
            raise ValueError("--protocol official computes the implicit meta-gradient; leave --backend unset")
        if c.lam_scale not in (None, "mean"):
            raise ValueError("--protocol official uses lambda on the mean support loss, as the released code; "
                             "leave --lam-scale unset")
        if c.inner_momentum or c.inner_nesterov:
            raise ValueError("--protocol official is the released code's plain gradient-descent inner loop; leave "
                             "--inner-momentum and --inner-nesterov unset")
    if c.benchmark == "sinusoid" and c.ways not in (None, 1):
        raise ValueError("--ways does not apply to sinusoid regression (it has one output); leave it unset")
    if c.net is not None and c.net not in BENCHMARKS[c.benchmark].nets:
        raise ValueError(f"--net {c.net} does not apply to {c.benchmark}, whose nets are "
                         f"{', '.join(BENCHMARKS[c.benchmark].nets)}")
    _check_ints(c)  # the given ones, before a rule reads them
    for field in dataclasses.fields(c):
        if field.name not in _SELECTORS and field.name != "lam_effective" and getattr(c, field.name) is None:
            setattr(c, field.name, _default(c, field.name))
    _check_ints(c)
    if c.benchmark != "sinusoid" and c.ways < 2:
        raise ValueError(f"--ways must be at least 2 for classification, got {c.ways}")
    if c.truncate_steps is not None and not c.truncate_steps <= c.inner_steps:
        raise ValueError(f"--truncate-steps must be in [1, --inner-steps={c.inner_steps}], got {c.truncate_steps}")
    _check_choice("lam_scale", c.lam_scale, LAM_SCALES)
    _check_choice("init", c.init, INITS)
    _check_choice("curvature", c.curvature, CURVATURES)
    _check_choice("hf_curvature", c.hf_curvature, CURVATURES)
    _check_choice("cg_on_negative", c.cg_on_negative, CG_ON_NEGATIVE)
    _check_choice("hvp_mode", c.hvp_mode, HVP_MODES)
    _check_choice("vectorize", c.vectorize, VECTORIZE)
    _check_choice("on_solver_failure", c.on_solver_failure, ON_SOLVER_FAILURE)
    if not isinstance(c.deterministic, bool):
        raise ValueError(f"deterministic must be true or false, got {c.deterministic!r}")
    if not isinstance(c.inner_nesterov, bool):
        raise ValueError(f"--inner-nesterov must be true or false, got {c.inner_nesterov!r}")
    if (not isinstance(c.inner_momentum, (int, float)) or isinstance(c.inner_momentum, bool)
            or not 0 <= c.inner_momentum < 1):
        raise ValueError(f"--inner-momentum must be in [0, 1), got {c.inner_momentum!r}")
    if c.inner_nesterov and not c.inner_momentum:
        raise ValueError("--inner-nesterov needs --inner-momentum M > 0 (Nesterov's form of that momentum)")
    if c.curvature == "gauss-newton" and "curvature" not in BACKENDS[c.backend or METHODS[c.method].backend].fields:
        raise ValueError(f"--curvature gauss-newton applies to the {_named('curvature')} backend "
                         f"({_own('curvature')}); leave --curvature unset or use --backend {_named('curvature')}")
    for name in _POSITIVE:
        value = getattr(c, name)
        if value is None and name in _OPTIONAL:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            raise ValueError(f"{_flag(name)} must be > 0 and finite, got {value!r}")
        if value > _FLOAT32_MAX:  # the networks run in float32: such a value is inf there
            raise ValueError(f"{_flag(name)} must be at most {_FLOAT32_MAX:.3g} (float32's largest number, the "
                             f"networks' dtype), got {value!r}")
    if c.memory_budget_mb is not None and c.chunk_size is not None:
        raise ValueError(f"--memory-budget {c.memory_budget_mb:g} and --chunk-size {c.chunk_size} both bound vmap's "
                         "chunks: give one (--memory-budget MB derives the chunk size, --chunk-size K fixes it)")
    if (not isinstance(c.cg_damping, (int, float)) or isinstance(c.cg_damping, bool)
            or not 0 <= c.cg_damping < math.inf):
        raise ValueError(f"--cg-damping must be >= 0 and finite, got {c.cg_damping!r}")
    if not isinstance(c.device, str) or not (c.device in ("auto", "cpu", "cuda")
                                             or (c.device.startswith("cuda:") and c.device[5:].isdigit())):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {c.device!r}")
    if c.data_root is not None and not isinstance(c.data_root, str):
        raise ValueError(f"--data-root must be a folder name, got {c.data_root!r}")
    c.lam_effective = c.lam / (c.ways * c.shots) if c.lam_scale == "sum" else float(c.lam)
    return c


def _value_text(value: Any) -> str:
    if isinstance(value, Rule):
        return value.text
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe_default(name: str) -> str:
    """``"default: ..."``: the default of field ``name`` in words, from the tables (for ``--help``).

    >>> describe_default("cg_damping")
    'default: 0; --protocol official: 1'
    """
    parts = [_value_text(DEFAULTS[name])] if name in DEFAULTS else []
    by_text: dict[str, list[str]] = {}
    for benchmark, table in _BENCHMARK_DEFAULTS.items():
        if name in table:
            by_text.setdefault(_value_text(table[name]), []).append(benchmark)
    if by_text:
        parts.append(", ".join(f"{' and '.join(names)} {text}" for text, names in by_text.items()))
    for benchmark, methods in _METHOD_DEFAULTS.items():
        by_text = {}
        for method, table in methods.items():
            if name in table and _value_text(table[name]) != _value_text(_BENCHMARK_DEFAULTS[benchmark].get(name)):
                by_text.setdefault(_value_text(table[name]), []).append(method)
        parts += [f"{benchmark} {', '.join(ms)} {text}" for text, ms in by_text.items()]
    parts += [f"--protocol {p}: {_value_text(t[name])}" for p, t in _PROTOCOL_DEFAULTS.items() if name in t]
    if name in _UNSET:
        parts.append(_UNSET[name])
    return "default: " + "; ".join(parts)


def _named(name: str) -> str:
    """The backends that read config field ``name``, in words: ``"implicit or torchopt"``."""
    return " or ".join(backends_using(name))


def _own(name: str) -> str:
    """The methods whose own backend reads config field ``name``: ``"imaml-gd, imaml-hf"``."""
    return ", ".join(m.name for m in METHODS.values() if name in BACKENDS[m.backend].fields)


def _read_by_backend(name: str) -> Callable:
    """Whether a (benchmark, method, backend) reads ``name`` because its backend does (the registry's fields)."""
    return lambda b, m, k: name in BACKENDS[k].fields


def _cg_field(name: str) -> tuple:
    return ("backend", f"the implicit backends ({_own(name)}; --backend {_named(name)})", _read_by_backend(name))


_LOOPING = " and ".join(e.name for e in BACKENDS.values() if not e.vmap)

# Field -> (what decides: "benchmark", "method" or "backend"; who uses it; whether a (benchmark,
# method, backend) does). Fields not listed apply to every run. What a backend reads is its entry
# in the registry (.backends), so a new backend needs no line here.
_CONV = ("benchmark", "the image benchmarks (omniglot, miniimagenet)", lambda b, m, k: b != "sinusoid")
_GD = ("method", "the methods with a gradient-descent inner loop (all but imaml-hf)",
       lambda b, m, k: m.inner_solver == "gd")
_NEWTON = ("method", "imaml-hf", lambda b, m, k: m.inner_solver == "newton-cg")
_IMAML = ("method", "the iMAML methods (imaml-gd, imaml-hf)", lambda b, m, k: m.problem == "imaml")
_APPLIES = {
    "ways": _CONV, "init": _CONV,
    "data_root": ("benchmark", "the benchmarks read from disk (omniglot, miniimagenet)", _CONV[2]),
    "protocol": ("method", "imaml-gd", lambda b, m, k: m.name == "imaml-gd"),
    "lam": _IMAML, "lam_scale": _IMAML,
    "inner_steps": _GD, "inner_lr": _GD, "inner_momentum": _GD, "inner_nesterov": _GD,
    "hf_steps": _NEWTON, "hf_cg_steps": _NEWTON, "hf_curvature": _NEWTON,
    "cg_steps": _cg_field("cg_steps"), "cg_damping": _cg_field("cg_damping"),
    "cg_on_negative": _cg_field("cg_on_negative"),
    "curvature": ("backend", f"the {_named('curvature')} backend ({_own('curvature')})",
                  _read_by_backend("curvature")),
    "hvp_mode": ("backend", f"the {_named('hvp_mode')} backend and imaml-hf's Newton-CG",
                 lambda b, m, k: "hvp_mode" in BACKENDS[k].fields or m.inner_solver == "newton-cg"),
    "truncate_steps": ("backend", f"--backend {_named('truncate_steps')}", _read_by_backend("truncate_steps")),
    "memory_budget_mb": ("backend", f"the backends that run under vmap (all but {_LOOPING}, which loop)",
                         lambda b, m, k: BACKENDS[k].vmap),
    "on_solver_failure": ("backend", f"the methods with a linear solve ({_own('on_solver_failure')}; --backend "
                          f"{_named('on_solver_failure')})",
                          lambda b, m, k: "on_solver_failure" in BACKENDS[k].fields or m.inner_solver == "newton-cg"),
}


def inapplicable(config: TrainConfig) -> dict[str, str]:
    """The fields set in an unresolved ``config`` that its run would not use, each with a one-line
    message (``{}`` if all apply, or if ``config`` names an unknown benchmark, method or backend,
    which :func:`resolve` reports).

    A resolved config sets every field, so pass the user's own settings: ``bilevel train``
    refuses these, ``bilevel compare`` drops them for the methods they do not concern.
    """
    benchmark = config.benchmark or DEFAULTS["benchmark"]
    method = METHODS.get(config.method or DEFAULTS["method"])
    backend = config.backend or (method.backend if method else None)
    if benchmark not in BENCHMARKS or method is None or backend not in BACKENDS:
        return {}
    runs = {"benchmark": f"--benchmark {benchmark}", "method": f"--method {method.name}",
            "backend": f"--method {method.name} (backend {backend})"}
    problems = {}
    for name, (decides, users, applies) in _APPLIES.items():
        if getattr(config, name) is not None and not applies(benchmark, method, backend):
            problems[name] = (f"{_flag(name)} does not apply to {runs[decides]}: it is used only by {users}; "
                              "leave it unset")
    return problems


def differences_from_paper(c: TrainConfig) -> list[str]:
    """Where a resolved Omniglot config departs from the iMAML paper's protocol (the table in
    docs/reproduction.md, "Our setting against the paper's protocol"), and why; recorded in
    ``config.json``."""
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
        if c.method == "imaml-hf" and c.hf_curvature != "hessian":
            notes.append("imaml-hf's Newton systems use the Gauss-Newton matrix (Martens' Hessian-free); the paper "
                         "says Hessian-free / Newton-CG without naming the matrix")
    if c.net != "strided":
        notes.append(f"net: {c.net} (MAML and the official code use the strided conv4 on Omniglot)")
    if c.meta_batch != 32 or c.iterations < 20000:
        notes.append(f"budget: {c.iterations} x {c.meta_batch} (the official code: >= 20000 x 32)")
    return notes


def save_config(config: TrainConfig, path: Path) -> None:
    """The configuration as JSON, with ``differences_from_paper`` (not read back); written atomically."""
    from ..data.common import atomic_write_text

    data = {**dataclasses.asdict(config), "differences_from_paper": differences_from_paper(config)}
    atomic_write_text(json.dumps(data, indent=2) + "\n", Path(path))


def load_config(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in ``path`` (unresolved; unknown keys are ignored).

    Raises ``ValueError`` naming the file when it is missing or not a JSON object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the run's configuration {path} ({exc.strerror or exc}); is it a run "
                         "directory written by `bilevel train`?") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it or start a new run") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds {type(data).__name__}, not a configuration object; restore it or start "
                         "a new run")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if data.get("benchmark") == "sinusoid" and data.get("net") is None:
        # Saved before the net was recorded (no key, or null), when every sinusoid run was ReLU.
        data["net"] = "relu"
    for name, before in _BEFORE_RECORDED.items():
        if data.get(name) is None:
            data[name] = before  # saved before the field existed: the inner loop of that time
    return TrainConfig(**{k: v for k, v in data.items() if k in known})


# Fields added after runs were saved, with the value every run had before them.
_BEFORE_RECORDED = {"inner_momentum": 0.0, "inner_nesterov": False}


