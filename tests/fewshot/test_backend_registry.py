"""The backend registry (bilevel/fewshot/backends.py): every ``--backend`` name builds, and the config,
``compare``'s cost estimate and the command line read what an entry declares, not its name."""

import argparse
import dataclasses

import pytest

from bilevel import FirstOrder, HypergradBackend
from bilevel.cli import build_parser
from bilevel.fewshot.backends import BACKENDS, BackendEntry, backends_using
from bilevel.fewshot.compare import inner_work
from bilevel.fewshot.config import TrainConfig, inapplicable, resolve
from bilevel.fewshot.methods import METHODS, build_method

# Every backend-specific field with a value that differs from its default.
_SPECIFIC = dict(cg_steps=3, cg_damping=0.5, cg_on_negative="stop", curvature="hessian",
                 hvp_mode="reverse-over-reverse", truncate_steps=2, on_solver_failure="stop")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_builds_from_a_default_config(name):
    entry = BACKENDS[name]
    if not entry.available():
        pytest.skip(f"{entry.library} is not installed")
    config = resolve(TrainConfig(backend=name))
    backend = entry.build(config)
    assert isinstance(backend, HypergradBackend)
    assert type(entry(config)) is type(backend)  # an entry is its factory too (BACKENDS[name](config))
    setup = build_method(config, task_loss=lambda params, batch: 0.0)
    assert type(setup.backend) is type(backend)


def test_every_method_names_a_registered_backend():
    assert {m.backend for m in METHODS.values()} <= set(BACKENDS)
    assert all(entry.name == name for name, entry in BACKENDS.items())


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_the_config_refuses_exactly_the_fields_a_backend_does_not_read(name):
    entry = BACKENDS[name]
    for field, value in _SPECIFIC.items():
        # maml's gradient-descent inner loop reads none of them itself (imaml-hf's Newton-CG would).
        refused = field in inapplicable(TrainConfig(method="maml", backend=name, **{field: value}))
        assert refused == (field not in entry.fields), (name, field)
    refused = "memory_budget_mb" in inapplicable(TrainConfig(method="maml", backend=name, memory_budget_mb=10.0))
    assert refused == (not entry.vmap)


def test_refusals_keep_their_messages():
    def message(**settings):
        return next(iter(inapplicable(TrainConfig(**settings)).values()))

    assert message(method="maml", cg_steps=3) == (
        "--cg-steps does not apply to --method maml (backend unrolled): it is used only by the implicit backends "
        "(imaml-gd, imaml-hf; --backend implicit or torchopt); leave it unset")
    assert message(method="imaml-gd", backend="unrolled", truncate_steps=2) == (
        "--truncate-steps does not apply to --method imaml-gd (backend unrolled): it is used only by --backend "
        "truncated; leave it unset")
    assert message(method="maml", backend="torchopt", memory_budget_mb=10.0) == (
        "--memory-budget does not apply to --method maml (backend torchopt): it is used only by the backends that "
        "run under vmap (all but higher and torchopt, which loop); leave it unset")
    with pytest.raises(ValueError, match=r"^--curvature gauss-newton applies to the implicit backend \(imaml-gd, "
                       r"imaml-hf\); leave --curvature unset or use --backend implicit$"):
        resolve(TrainConfig(method="imaml-gd", backend="torchopt", curvature="gauss-newton"))
    with pytest.raises(ValueError, match="--protocol official computes the implicit meta-gradient; leave --backend"):
        resolve(TrainConfig(method="imaml-gd", protocol="official", backend="torchopt"))
    assert backends_using("curvature") == ["implicit"]


def test_compare_cost_reads_the_registry(monkeypatch):
    config = resolve(TrainConfig(method="maml", backend="first-order"))
    base = inner_work(config)
    assert base == config.inner_steps * config.iterations * config.meta_batch  # no backward pass, no solve
    entry = BACKENDS["first-order"]
    monkeypatch.setitem(BACKENDS, "first-order", dataclasses.replace(entry, backprop="every step"))
    assert inner_work(config) == 2 * base
    monkeypatch.setitem(BACKENDS, "first-order", dataclasses.replace(entry, hvps=lambda c: 5))
    hvp_cost = 3  # compare's estimate of a Hessian-vector product in gradients
    assert inner_work(config) == base + hvp_cost * 5 * config.iterations * config.meta_batch


def test_a_new_entry_is_reachable_from_the_config_and_the_command_line(monkeypatch):
    monkeypatch.setitem(BACKENDS, "fo-again", BackendEntry("fo-again", lambda c: FirstOrder(), vmap=False))
    config = resolve(TrainConfig(method="maml", backend="fo-again"))
    assert isinstance(build_method(config, task_loss=lambda p, b: 0.0).backend, FirstOrder)
    assert set(inapplicable(TrainConfig(method="maml", backend="fo-again", memory_budget_mb=1.0))) == {
        "memory_budget_mb"}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("train", "compare"):
        backend = next(a for a in sub.choices[command]._actions if a.dest == "backend")
        assert backend.choices == sorted(BACKENDS)


def test_an_entry_checks_its_cost_model():
    with pytest.raises(ValueError, match="backprop must be one of every step, last steps, none"):
        BackendEntry("x", lambda c: FirstOrder(), backprop="all")
