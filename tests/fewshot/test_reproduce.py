"""The reproduction commands (Fig. 2a, Fig. 2b, Table 2), the protocols' settings and the networks."""

import csv
import dataclasses
import json

import pytest
import torch

from bilevel.cli import main
from bilevel.fewshot import Conv4, TrainConfig, make_benchmark, resolve
from bilevel.fewshot.compare import run_configs
from bilevel.reproduce.gradient_error import exact_solution, gradient_error, make_problem
from bilevel.reproduce.memory import reproduce_memory
from bilevel.reproduce.table import ROWS, format_table, parse_budget, reproduce_table


def test_gradient_error_orders_the_methods_as_the_paper(tmp_path, capsys):
    """Against the exact meta-gradient: CG's error falls fastest, then MAML's (unrolled GD),
    Neumann's slowest; first-order MAML stays at its bias."""
    assert main(["reproduce", "gradient-error", "--steps", "8", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "gradient_error.csv")))
    err = {k: [float(r[k]) for r in rows] for k in ("imaml_cg", "neumann", "maml", "fomaml")}
    assert err["imaml_cg"][0] == 1.0 and err["imaml_cg"][8] < 1e-3
    assert all(b < a for a, b in zip(err["imaml_cg"][1:], err["imaml_cg"][2:]))
    assert err["imaml_cg"][8] < err["maml"][8] < err["neumann"][8]
    assert err["fomaml"][8] > 0.3 and abs(err["fomaml"][8] - err["fomaml"][7]) < 0.05 * err["fomaml"][8]
    assert (tmp_path / "gradient_error.png").read_bytes()[:4] == b"\x89PNG"


def test_gradient_error_reference_is_exact():
    """The inner problem is solved to machine precision and the exact meta-gradient satisfies
    its linear system: (I + H/lam) g* = grad L_test(phi*)."""
    task_loss, theta, train, test, lam = make_problem()
    phi, exact, L, mu = exact_solution(task_loss, theta, train, test, lam)
    H = torch.func.hessian(lambda w: task_loss({"w": w}, train))(phi["w"])
    v = torch.func.grad(lambda w: task_loss({"w": w}, test))(phi["w"])
    residual = exact["w"] + H @ exact["w"] / lam - v
    assert float(residual.norm() / v.norm()) < 1e-12
    assert L / mu > 3  # conditioned enough for the methods' rates to differ


def test_memory_command(tmp_path, omniglot_root):
    """One point in its own process (the command's way); the row and the CSV."""
    rows = reproduce_memory(tmp_path, steps=[1], methods=("maml",), ways=3, shots=1, repeats=1, device="cpu",
                            data_root=str(omniglot_root), progress=False)
    assert rows[0]["status"] == "ok" and rows[0]["steps"] == 1
    assert rows[0]["peak_memory_mb"] >= 0 and rows[0]["seconds_per_iteration"] > 0
    assert list(csv.DictReader(open(tmp_path / "memory.csv")))[0]["method"] == "maml"


def test_table_quick_run_beside_the_paper(tmp_path, omniglot_root):
    results = reproduce_table(tmp_path, settings=["5w1s"], rows=["imaml-gd-official"], quick=True,
                              common=dict(data_root=str(omniglot_root), inner_steps=2))
    (r,) = results
    assert r["tasks"] == 20 and r["iterations"] == 2 and r["config"]["protocol"] == "official"
    assert r["config"]["queries"] == 1 and r["paper"] is None
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["budget"] == "2x2" and len(saved["rows"]) == 1
    fake = [{**r, "row": "maml", "setting": "5w1s", "mean": 0.9, "ci95": 0.01, "paper": (98.7, 0.4)}]
    assert "| maml | 90.00 +- 1.00 (98.7 +- 0.4) |" in format_table(fake, "2x2")


def test_table_over_seeds(tmp_path, omniglot_root):
    """--seeds 2: one run per seed in OUT/<setting>/<row>/seed-<s>, the cell their mean over seeds."""
    results = reproduce_table(tmp_path, settings=["5w1s"], rows=["fomaml"], quick=True, seeds=2,
                              common=dict(data_root=str(omniglot_root), inner_steps=1))
    assert sorted(r["seed"] for r in results) == [0, 1]
    assert all((tmp_path / "5w1s" / "fomaml" / f"seed-{s}" / "evaluation-test.json").exists() for s in (0, 1))
    fake = [{**r, "mean": m, "paper": (98.3, 0.5)} for r, m in zip(results, (0.90, 0.92))]
    assert "| fomaml | 91.00 [78.29, 103.71] (2 seeds) (98.3 +- 0.5) |" in format_table(fake, "2x2")
    assert json.loads((tmp_path / "table.json").read_text())["seeds"] == 2


def test_table_gauss_newton_row_changes_only_the_meta_gradients_matrix():
    (hf, gn) = run_configs({r: dict(**ROWS[r], benchmark="omniglot") for r in ("imaml-hf", "imaml-hf-gn")},
                           {}).values()
    assert (hf.curvature, gn.curvature) == ("hessian", "gauss-newton")
    assert dataclasses.replace(gn, curvature="hessian") == hf  # the Newton steps keep the Hessian


@pytest.mark.parametrize("text,expected", [("1000x8", (1000, 8)), ("20000X32", (20000, 32))])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["1000", "0x8", "ax8", "10x"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError, match="--budget"):
        parse_budget(text)


def test_protocol_settings_are_resolved_and_recorded():
    paper = resolve(TrainConfig(benchmark="omniglot", method="imaml-gd"))
    assert (paper.protocol, paper.net, paper.init, paper.cg_damping, paper.outer_eps, paper.queries) == (
        "paper", "strided", "torch", 0.0, 1e-8, 5)
    assert (paper.lam, paper.lam_scale, paper.lam_effective) == (2.0, "sum", pytest.approx(2.0 / 5))
    summed = resolve(TrainConfig(benchmark="omniglot", method="imaml-gd", ways=20, shots=5))
    assert summed.lam_effective == pytest.approx(2.0 / 100)
    mean = resolve(TrainConfig(benchmark="omniglot", method="imaml-gd", lam_scale="mean"))
    assert mean.lam_effective == 2.0
    official = resolve(TrainConfig(benchmark="omniglot", method="imaml-gd", protocol="official", shots=5))
    assert (official.init, official.cg_damping, official.outer_eps, official.queries, official.lam_effective) == (
        "official", 1.0, 1e-3, 5, 2.0)
    assert resolve(TrainConfig(benchmark="miniimagenet", method="maml")).net == "maxpool"


@pytest.mark.parametrize("overrides,message", [
    (dict(method="maml", protocol="official"), "--protocol official is the released iMAML-GD code"),
    (dict(protocol="official", lam_scale="sum"), "leave --lam-scale unset"),
    (dict(protocol="nope"), "unknown --protocol"),
    (dict(lam_scale="median"), "--lam-scale must be one of"),
    (dict(net="resnet"), "--net resnet does not apply to omniglot, whose nets are strided, maxpool"),
    (dict(init="he"), "--init must be one of"),
    (dict(cg_damping=-1.0), "--cg-damping must be >= 0"),
    (dict(curvature="fisher"), "--curvature must be one of hessian, gauss-newton"),
    (dict(method="maml", curvature="gauss-newton"), "applies to the implicit backend"),
])
def test_bad_protocol_settings(overrides, message):
    config = TrainConfig(**{"benchmark": "omniglot", "method": "imaml-gd", **overrides})
    with pytest.raises(ValueError, match=message):
        from bilevel.fewshot.methods import build_method
        build_method(resolve(config), lambda p, b: p["w"].sum(), lambda p, x: x, lambda o, y: o.sum())


@pytest.mark.parametrize("net,side", [("strided", 2), ("maxpool", 1)])
def test_conv4_feature_maps(net, side):
    """Strided: 28 -> 14 -> 7 -> (pad) 8 -> 4 -> 2, so Linear(64 * 2 * 2); max-pool: 28 -> 1."""
    model = Conv4(5, net=net)
    assert model.head.in_features == 64 * side * side
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 64, side, side)
    strides = [m.stride for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2)] * 4 if net == "strided" else strides == [(1, 1)] * 4


@pytest.mark.parametrize("net,activation", [(None, torch.nn.Softplus), ("relu", torch.nn.ReLU)])
def test_sinusoid_nets(net, activation):
    """The smooth regressor by default, recorded in the config; Finn et al.'s ReLU one on request."""
    config = resolve(TrainConfig(benchmark="sinusoid", net=net))
    assert config.net == (net or "softplus")
    model = make_benchmark("sinusoid", 1, 10, 10, net=config.net).build_model()
    acts = [m for m in model.modules() if not isinstance(m, (torch.nn.Linear, torch.nn.Sequential))][1:]
    assert len(acts) == 2 and all(type(m) is activation for m in acts)


def test_official_initialization():
    torch.manual_seed(0)
    model = Conv4(5, init="official")
    conv = model.features[0]
    bound = 1.73 * (6 / (1 * 9 + 64 * 9)) ** 0.5  # xavier-uniform bound, fan_in + fan_out
    weight, bias = conv.weight.detach(), conv.bias.detach()
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.9 * bound
    assert 0 <= float(bias.min()) and float(bias.max()) <= 0.05


def test_config_json_states_the_differences_from_the_paper(tmp_path):
    from bilevel.fewshot.config import save_config, load_config

    config = resolve(TrainConfig(benchmark="omniglot", method="imaml-gd", meta_batch=8, iterations=1000))
    save_config(config, tmp_path / "config.json")
    notes = json.loads((tmp_path / "config.json").read_text())["differences_from_paper"]
    assert any("summed support loss" in n for n in notes) and any("queries: 5 per class" in n for n in notes)
    assert any("budget: 1000 x 8" in n for n in notes)
    assert load_config(tmp_path / "config.json") == config  # the notes are not read back
