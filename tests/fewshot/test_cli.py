"""The command line: help, one-line errors, and compare's table and files."""

import csv
import subprocess
import sys

import pytest

from bilevel.cli import main
from bilevel.fewshot.compare import format_table, inner_work
from bilevel.fewshot.config import TrainConfig, resolve


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["compare", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bilevel" in out
    if argv[0] in ("train", "compare"):
        assert "--benchmark" in out and "--lam" in out and "--iterations" in out


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("argv,message", [
    (["train", "--ways", "0"], "argument --ways: expected an integer >= 1, got '0'"),
    (["train", "--method", "maml2"], "argument --method: invalid choice: 'maml2'"),
    (["train", "--inner-lr", "abc"], "argument --inner-lr: expected a positive number, got 'abc'"),
])
def test_bad_flags_give_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in one_error_line(capsys)
    assert main(["compare", "--methods", "maml,foo"]) == 2
    assert "--methods: unknown ['foo']" in one_error_line(capsys)


def test_impossible_settings_give_one_error_line(tmp_path, capsys):
    assert main(["train", "--benchmark", "sinusoid", "--ways", "3", "--out", str(tmp_path)]) == 2
    assert one_error_line(capsys) == ("bilevel train: error: --ways does not apply to sinusoid regression (it has one "
                                      "output); leave it unset")
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such run directory" in one_error_line(capsys)
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no checkpoint.pt there" in one_error_line(capsys)


def test_more_shots_than_drawings_on_omniglot(tmp_path, omniglot_root, capsys):
    code = main(["train", "--benchmark", "omniglot", "--shots", "15", "--queries", "10", "--data-root",
                 str(omniglot_root), "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "shots + queries = 25 exceeds the 20 drawings per class" in one_error_line(capsys)


def test_train_resume_evaluate(tmp_path, capsys):
    common = ["--benchmark", "sinusoid", "--meta-batch", "4", "--inner-steps", "2", "--val-every", "2",
              "--val-tasks", "4", "--quiet"]
    assert main(["train", "--method", "fomaml", "--iterations", "2", "--out", str(tmp_path), *common]) == 0
    assert main(["train", "--resume", str(tmp_path), "--iterations", "4", "--quiet"]) == 0
    assert main(["evaluate", str(tmp_path), "--tasks", "10"]) == 0
    out = capsys.readouterr().out
    assert "trained fomaml on sinusoid for 4 iterations" in out
    assert "fomaml sinusoid test mse:" in out and "(95% CI over 10 tasks, iteration 4)" in out


def test_compare_writes_table_csv_and_plot(tmp_path, capfd):
    """In this process (the methods still train in spawned children, as from the command line)."""
    out = tmp_path / "cmp"
    assert main(["compare", "--benchmark", "sinusoid", "--methods", "maml,imaml-gd", "--iterations", "4",
                 "--meta-batch", "4", "--inner-steps", "2", "--val-every", "2", "--val-tasks", "4", "--tasks", "10",
                 "--out", str(out)]) in (0, None)
    stdout = capfd.readouterr().out
    assert "| maml |" in stdout and "| imaml-gd |" in stdout
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["method"] for r in rows] == ["maml", "imaml-gd"]  # the given order, though imaml-gd starts first
    assert all(float(r["ci95"]) > 0 and int(r["tasks"]) == 10 for r in rows)
    png = (out / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "compare.md").read_text().startswith("| method | test mse")


def test_compare_table_warns_when_an_inner_problem_is_left_unsolved():
    row = dict(method="imaml-hf", metric="mse", mean=2.0, ci95=0.1, tasks=600, iterations=500,
               seconds_per_iteration=0.1, peak_memory_mb=40.0, inner_grad_norm=0.04)
    assert "Note" not in format_table([row])
    table = format_table([row, {**row, "method": "imaml-gd", "inner_grad_norm": 4.55}])
    assert "Note: the implicit meta-gradient assumes" in table and "(imaml-gd 4.55)" in table
    assert "ReLU" not in table  # the sinusoid explanation only under a sinusoid table
    sinusoid = {**row, "benchmark": "sinusoid", "inner_grad_norm": 4.55}
    assert "ReLU kink" in format_table([sinusoid]) and "ReLU kink" in format_table([{**sinusoid, "net": "relu"}])
    assert "5 Newton steps" in format_table([{**sinusoid, "net": "softplus"}]) and "heavy-ball" in format_table([{**sinusoid, "net": "softplus"}])


def test_compare_starts_the_longest_run_first():
    """run_many starts runs in decreasing inner_work, so that --jobs 2 finishes them together."""
    work = {m: inner_work(resolve(TrainConfig(benchmark="sinusoid", method=m)))
            for m in ("maml", "fomaml", "reptile", "imaml-gd", "imaml-hf")}
    assert sorted(work, key=work.get, reverse=True) == ["imaml-hf", "imaml-gd", "maml", "reptile", "fomaml"]
    assert inner_work(resolve(TrainConfig(benchmark="sinusoid", method="maml", iterations=1000))) == 2 * work["maml"]
