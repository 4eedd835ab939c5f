"""The run configuration: every default in config.py's tables, resolve() fills and checks them,
the command line states them, and compare hands each method its resolved config."""

import dataclasses

import pytest

from bilevel.cli import build_parser, main
from bilevel.fewshot.compare import run_configs
from bilevel.fewshot.config import DEFAULTS, TrainConfig, describe_default, inapplicable, resolve


@pytest.mark.parametrize("settings", [
    dict(),
    dict(method="maml"),
    dict(method="imaml-hf"),
    dict(benchmark="omniglot", ways=20, shots=5),
    dict(benchmark="omniglot", protocol="official", shots=5),
    dict(benchmark="miniimagenet", method="fomaml", backend="truncated"),
])
def test_resolve_fills_every_field_and_is_idempotent(settings):
    config = resolve(TrainConfig(**settings))
    unset = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) is None}
    assert unset <= {"backend", "chunk_size", "memory_budget_mb", "data_root", "net", "truncate_steps"}
    assert resolve(config) == config


def load_config_from(data):
    import json
    import tempfile
    from pathlib import Path

    from bilevel.fewshot.config import load_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.json"
        path.write_text(json.dumps(data))
        return resolve(load_config(path))


def test_sinusoid_defaults_follow_the_net():
    """Each net has the settings chosen on its own validation grid (docs/results/sinusoid-tuning*)."""
    soft, relu = (resolve(TrainConfig(benchmark="sinusoid", method="imaml-hf", net=n)) for n in (None, "relu"))
    assert (soft.net, soft.lam, soft.hf_steps) == ("softplus", 10.0, 5)
    assert (relu.net, relu.lam, relu.hf_steps) == ("relu", 10.0, 2)
    gd = resolve(TrainConfig(benchmark="sinusoid", method="imaml-gd"))
    assert (gd.lam, gd.inner_lr, gd.inner_momentum, gd.inner_nesterov) == (10.0, 0.005, 0.6, False)
    relu_gd = resolve(TrainConfig(benchmark="sinusoid", method="imaml-gd", net="relu"))
    assert (relu_gd.lam, relu_gd.inner_lr, relu_gd.inner_momentum, relu_gd.inner_nesterov) == (10.0, 0.02, 0.0, False)
    nesterov = resolve(TrainConfig(benchmark="sinusoid", method="imaml-gd", inner_nesterov=True))
    assert (nesterov.inner_momentum, nesterov.inner_nesterov) == (0.6, True)
    old = load_config_from({"benchmark": "sinusoid", "method": "imaml-gd", "net": "softplus"})
    assert (old.inner_momentum, old.inner_nesterov) == (0.0, False)  # saved before momentum existed
    maml = [resolve(TrainConfig(benchmark="sinusoid", method="maml", net=n)) for n in ("softplus", "relu")]
    assert [(c.inner_lr, c.inner_steps) for c in maml] == [(0.01, 5), (0.01, 10)]


def test_inner_momentum_builds_the_heavy_ball_or_nesterov():
    from bilevel import GradientDescent, Momentum
    from bilevel.fewshot.methods import build_method

    def solver(**settings):
        config = resolve(TrainConfig(benchmark="sinusoid", method="imaml-gd", **settings))
        return build_method(config, lambda params, batch: 0.0).problem.inner_solver

    assert solver() == Momentum(lr=0.005, steps=25, momentum=0.6)  # the softplus default
    assert solver(inner_nesterov=True) == Momentum(lr=0.005, steps=25, momentum=0.6, nesterov=True)
    assert isinstance(solver(inner_momentum=0.0), GradientDescent)
    with pytest.raises(ValueError, match="--inner-nesterov needs --inner-momentum"):
        resolve(TrainConfig(benchmark="sinusoid", method="imaml-gd", inner_momentum=0.0, inner_nesterov=True))
    with pytest.raises(ValueError, match=r"--inner-momentum must be in \[0, 1\)"):
        resolve(TrainConfig(benchmark="sinusoid", method="imaml-gd", inner_momentum=1.0))
    with pytest.raises(ValueError, match="--protocol official is the released code's plain gradient-descent"):
        resolve(TrainConfig(benchmark="omniglot", method="imaml-gd", protocol="official", inner_momentum=0.5))
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        Momentum(lr=0.1, steps=2, momentum=0.0, nesterov=True)


def test_rules_and_tables():
    assert resolve(TrainConfig(benchmark="omniglot", ways=5)).inner_steps == 16
    assert resolve(TrainConfig(benchmark="omniglot", ways=20)).inner_steps == 25
    assert resolve(TrainConfig(method="imaml-gd")).inner_steps == 25  # sinusoid, chosen on validation
    assert resolve(TrainConfig(method="maml", val_every=7)).checkpoint_every == 7
    assert resolve(TrainConfig(backend="truncated", method="maml", inner_steps=9)).truncate_steps == 4
    assert resolve(TrainConfig(benchmark="omniglot", protocol="official", shots=5)).queries == 5
    assert resolve(TrainConfig()).on_solver_failure == DEFAULTS["on_solver_failure"] == "warn"


@pytest.mark.parametrize("policy", ["warn", "skip-task", "stop"])
def test_on_solver_failure_choices(policy):
    assert resolve(TrainConfig(on_solver_failure=policy)).on_solver_failure == policy


def test_on_solver_failure_is_checked():
    with pytest.raises(ValueError, match="--on-solver-failure must be one of warn, skip-task, stop; got 'retry'"):
        resolve(TrainConfig(on_solver_failure="retry"))


def test_flags_default_to_none_so_that_config_fills_them():
    args = build_parser().parse_args(["train"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {k: v for k, v in vars(args).items() if k in fields and v is not None} == {}


def test_help_states_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"({describe_default('lam_scale')})" in out and "default: sum;" in out  # not "default: mean"
    assert "(default: 5)" in out  # --cg-steps, from DEFAULTS
    assert "16 up to 5 ways, 25 above" in out
    assert ("--on-solver-failure {warn,skip-task,stop} what to do when a task's linear solve does not converge: "
            "warn (log and go on, default), skip-task (drop that task from the meta-gradient), stop (end training "
            "with an error)") in out


def test_inapplicable_settings():
    assert inapplicable(TrainConfig(method="imaml-gd", lam=3.0, cg_steps=2)) == {}
    assert set(inapplicable(TrainConfig(method="maml", lam=3.0, cg_steps=2, inner_lr=0.1))) == {"lam", "cg_steps"}
    assert set(inapplicable(TrainConfig(method="maml", backend="implicit", cg_steps=2))) == set()


def test_compare_resolves_one_config_per_method_dropping_what_it_does_not_use():
    configs = run_configs({m: dict(method=m) for m in ("maml", "imaml-gd")}, dict(lam=3.0, iterations=7))
    assert configs["imaml-gd"].lam == 3.0 and configs["maml"].lam == DEFAULTS["lam"]
    assert configs["maml"].iterations == configs["imaml-gd"].iterations == 7
    assert all(resolve(c) == c for c in configs.values())
    with pytest.raises(ValueError, match="--hf-steps does not apply .*no run of this comparison uses it"):
        run_configs({m: dict(method=m) for m in ("maml", "imaml-gd")}, dict(hf_steps=3))


@pytest.mark.parametrize("recorded", ["missing", "null"])
def test_a_sinusoid_run_saved_before_the_net_was_recorded_loads_as_relu(tmp_path, recorded):
    """Such runs (no "net", or "net": null) were all ReLU; the default has since become
    softplus, so the default must not apply."""
    import json

    from bilevel.fewshot.config import load_config

    saved = dataclasses.asdict(resolve(TrainConfig(benchmark="sinusoid", method="maml", net="relu")))
    if recorded == "missing":
        del saved["net"]
    else:
        saved["net"] = None
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert resolve(load_config(tmp_path / "config.json")).net == "relu"
    assert resolve(TrainConfig(benchmark="sinusoid")).net == "softplus"


@pytest.mark.parametrize("name", ["outer_lr", "inner_lr", "lam"])
def test_a_number_that_is_inf_in_float32_is_refused_in_one_line(name):
    """--outer-lr 1e39 was accepted, then failed inside Adam: float32 (the networks' dtype) makes it inf."""
    with pytest.raises(ValueError, match=r"must be at most 3.4e\+38 .*got 1e\+39"):
        resolve(TrainConfig(benchmark="sinusoid", method="maml", **{name: 1e39}))
