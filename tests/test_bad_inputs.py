"""Bad input to the command line: one line on stderr naming the value and the fix, exit code 2,
no traceback, and nothing done (no run folder, no download, no training).

Each case runs ``bilevel.cli.main`` in-process (``python -m bilevel`` is ``sys.exit(main())``).
"""

import os
import stat

import pytest

from bilevel.cli import main
from bilevel.fewshot.config import TrainConfig, resolve, save_config

RUN = ["--iterations", "2", "--meta-batch", "2", "--val-tasks", "2"]  # small, should a case ever get through

# (id, argv with {placeholders} from the `places` fixture, a word the message must contain)
CASES = [
    # numbers: zero, negative, non-numeric, non-integer, not finite, too small for an interval
    ("ways-zero", ["train", "--ways", "0"], "--ways"),
    ("shots-negative", ["train", "--shots", "-3"], "--shots"),
    ("queries-text", ["train", "--queries", "many"], "'many'"),
    ("iterations-float", ["train", "--iterations", "1.5"], "--iterations"),
    ("inner-lr-zero", ["train", "--inner-lr", "0"], "--inner-lr"),
    ("lam-negative", ["train", "--lam", "-1"], "--lam"),
    ("outer-lr-nan", ["train", "--outer-lr", "nan"], "--outer-lr"),
    ("lam-inf", ["train", "--lam", "inf"], "--lam"),
    ("cg-damping-negative", ["train", "--cg-damping", "-0.5"], "--cg-damping"),
    ("val-tasks-one", ["train", "--val-tasks", "1"], "--val-tasks"),
    ("seed-negative", ["train", "--seed", "-1"], "--seed"),
    ("eval-tasks-one", ["evaluate", "{run}", "--tasks", "1"], "--tasks"),
    ("jobs-zero", ["compare", "--jobs", "0"], "--jobs"),
    ("steps-zero", ["reproduce", "gradient-error", "--steps", "0", "--out", "{tmp}/out"], "--steps"),
    ("memory-steps-list", ["reproduce", "memory", "--steps", "1,x", "--out", "{tmp}/out"], "--steps"),
    # unknown choices and flags
    ("unknown-method", ["train", "--method", "maml2"], "maml2"),
    ("unknown-benchmark", ["train", "--benchmark", "imagenet"], "imagenet"),
    ("unknown-policy", ["train", "--on-solver-failure", "ignore"], "--on-solver-failure"),
    ("unknown-flag", ["train", "--inner-stepz", "3", *RUN], "--inner-stepz"),
    ("unknown-compare-method", ["compare", "--methods", "maml,foo"], "foo"),
    ("method-twice", ["compare", "--methods", "maml,maml"], "--methods"),
    ("device-index", ["train", "--device", "cuda:x", *RUN], "--device"),
    # settings that do not fit the benchmark or the method
    ("ways-for-sinusoid", ["train", "--benchmark", "sinusoid", "--ways", "5"], "--ways"),
    ("conv-net-for-sinusoid", ["train", "--benchmark", "sinusoid", "--net", "strided"], "--net"),
    ("sinusoid-net-for-omniglot", ["train", "--benchmark", "omniglot", "--net", "softplus"], "--net"),
    ("lam-for-maml", ["train", "--method", "maml", "--lam", "3"], "--lam"),
    ("hf-steps-for-imaml-gd", ["train", "--method", "imaml-gd", "--hf-steps", "3"], "--hf-steps"),
    ("cg-steps-for-reptile", ["train", "--method", "reptile", "--cg-steps", "3"], "--cg-steps"),
    ("policy-for-fomaml", ["train", "--method", "fomaml", "--on-solver-failure", "stop"], "--on-solver-failure"),
    ("official-for-maml", ["train", "--method", "maml", "--protocol", "official"], "--protocol"),
    ("gauss-newton-for-maml", ["train", "--method", "maml", "--curvature", "gauss-newton"], "--curvature"),
    ("hf-curvature-for-imaml-gd", ["train", "--method", "imaml-gd", "--hf-curvature", "gauss-newton"],
     "--hf-curvature"),
    ("truncate-without-backend", ["train", "--truncate-steps", "3"], "--truncate-steps"),
    ("truncate-past-inner", ["train", "--backend", "truncated", "--inner-steps", "2", "--truncate-steps", "5"],
     "--truncate-steps"),
    ("data-root-for-sinusoid", ["train", "--data-root", "{empty}"], "--data-root"),
    ("lam-for-no-method", ["compare", "--methods", "maml,fomaml", "--lam", "3"], "--lam"),
    ("memory-budget-and-chunk-size", ["train", "--memory-budget", "100", "--chunk-size", "2"], "--chunk-size"),
    ("memory-budget-on-cpu", ["train", "--memory-budget", "100", "--device", "cpu", *RUN], "CUDA"),
    ("memory-budget-for-higher", ["train", "--method", "maml", "--backend", "higher", "--memory-budget", "100"],
     "--memory-budget"),
    # data roots
    ("data-root-missing", ["train", "--benchmark", "omniglot", "--data-root", "{tmp}/nowhere", *RUN], "nowhere"),
    ("data-root-is-file", ["train", "--benchmark", "omniglot", "--data-root", "{file}", *RUN], "a-file"),
    ("data-root-no-archives", ["train", "--benchmark", "omniglot", "--data-root", "{readonly}", *RUN],
     "images_background.zip"),
    ("data-root-corrupt-zip", ["train", "--benchmark", "omniglot", "--data-root", "{corrupt}", *RUN], "corrupt"),
    ("compare-corrupt-zip", ["compare", "--benchmark", "omniglot", "--data-root", "{corrupt}", *RUN], "corrupt"),
    ("miniimagenet-no-root", ["train", "--benchmark", "miniimagenet", *RUN], "--data-root"),
    ("miniimagenet-empty-root", ["train", "--benchmark", "miniimagenet", "--data-root", "{empty}", *RUN],
     "mini-imagenet-cache-train.pkl"),
    # resume and evaluate: run folders that are missing, incomplete, broken, or contradicted
    ("resume-missing", ["train", "--resume", "{tmp}/gone"], "gone"),
    ("resume-no-checkpoint", ["train", "--resume", "{empty}"], "checkpoint.pt"),
    ("resume-broken-config", ["train", "--resume", "{broken}"], "config.json"),
    ("resume-contradicting-flag", ["train", "--resume", "{run}", "--inner-lr", "0.5"], "--inner-lr"),
    ("resume-other-method", ["train", "--resume", "{run}", "--method", "maml"], "--method"),
    ("resume-other-out", ["train", "--resume", "{run}", "--out", "{tmp}/elsewhere"], "--out"),
    ("evaluate-no-checkpoint", ["evaluate", "{empty}"], "checkpoint.pt"),
    ("evaluate-broken-config", ["evaluate", "{broken}"], "config.json"),
    ("compare-resume-other-settings", ["compare", "--methods", "fomaml", "--resume", "--out", "{tmp}/cmp",
                                       "--inner-lr", "0.5", *RUN], "--inner-lr"),
    # output folders
    ("out-is-file", ["train", "--out", "{file}", *RUN], "a-file"),
    ("out-under-file", ["train", "--out", "{file}/run", *RUN], "cannot be created"),
    ("compare-out-is-file", ["compare", "--out", "{file}", *RUN], "a-file"),
    ("reproduce-out-is-file", ["reproduce", "gradient-error", "--out", "{file}"], "a-file"),
    ("out-unwritable", ["train", "--out", "{readonly}/run", *RUN], "not writable"),
]


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Folders and files the cases point at; the working folder is ``tmp_path`` (no stray runs/)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BILEVEL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "images_background.zip").write_bytes(b"PK\x03\x04 this is not a zip archive" * 10)
    run = tmp_path / "run"
    run.mkdir()
    save_config(resolve(TrainConfig(method="imaml-gd", iterations=2, meta_batch=2)), run / "config.json")
    (run / "checkpoint.pt").write_bytes(b"")  # never read: the checks come first
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "checkpoint.pt").write_bytes(b"")
    saved = tmp_path / "cmp" / "fomaml"
    saved.mkdir(parents=True)
    save_config(resolve(TrainConfig(method="fomaml", iterations=2, meta_batch=2, val_tasks=2)), saved / "config.json")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    yield {"tmp": str(tmp_path), "file": str(tmp_path / "a-file"), "empty": str(tmp_path / "empty"),
           "corrupt": str(corrupt), "run": str(run), "broken": str(broken), "readonly": str(readonly)}
    readonly.chmod(stat.S_IRWXU)


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, word, places, tmp_path, capsys):
    if "{readonly}/run" in argv and os.geteuid() == 0:
        pytest.skip("root can write into a read-only folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _run([a.format(**places) for a in argv], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bilevel") and ": error: " in lines[0], err
    assert word in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created: no work was done


def test_out_that_cannot_be_created_names_the_file_in_the_way(tmp_path, capsys):
    """The reported bug: ``--out`` under a file gave a FileNotFoundError traceback."""
    (tmp_path / "a-file").write_text("x")
    code, err = _run(["train", "--out", str(tmp_path / "a-file" / "run")], capsys)
    assert code == 2
    assert err == (f"bilevel train: error: --out '{tmp_path / 'a-file' / 'run'}' cannot be created: "
                   f"'{tmp_path / 'a-file'}' is a file; choose another --out.\n")
