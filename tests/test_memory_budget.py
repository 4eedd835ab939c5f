"""A memory budget picks the vmap chunk size: the rule on fake measurements (no GPU here), the
refusal on a CPU, and the command line's one-line errors. That chunking leaves the meta-gradient
unchanged is tested in test_convnet_backends.py (test_chunked_vmap_and_loop_equal_unchunked)."""

import pytest
import torch

from bilevel.cli import main
from bilevel.memory_budget import MB, check_measurable, chunk_size_for_budget, cuda_peak_bytes


def linear(base_mb: float, per_task_mb: float, calls: list | None = None):
    """A fake ``measure``: a meta-step that peaks at ``base + k * per_task``."""

    def measure(k: int) -> int:
        if calls is not None:
            calls.append(k)
        return int((base_mb + k * per_task_mb) * MB)

    return measure


def test_linear_memory_exact_pick_and_only_two_measurements():
    calls = []
    assert chunk_size_for_budget(linear(100, 30, calls), meta_batch=32, budget_bytes=400 * MB) == 10  # 100 + 300
    assert calls == [1, 2]


def test_budget_between_two_sizes_rounds_down():
    assert chunk_size_for_budget(linear(100, 30), meta_batch=32, budget_bytes=429 * MB) == 10
    assert chunk_size_for_budget(linear(100, 30), meta_batch=32, budget_bytes=430 * MB) == 11


def test_budget_above_the_whole_meta_batch_gives_the_meta_batch():
    assert chunk_size_for_budget(linear(100, 30), meta_batch=8, budget_bytes=10_000 * MB) == 8
    assert chunk_size_for_budget(linear(100, 0), meta_batch=8, budget_bytes=101 * MB) == 8  # no growth: all fit
    assert chunk_size_for_budget(linear(100, 30), meta_batch=8, budget_bytes=130 * MB) == 1  # exactly one task


def test_too_small_a_budget_names_both_peaks_in_mb_and_the_fix():
    with pytest.raises(ValueError, match=r"budget of 100\.0 MB is below the 130\.0 MB peak of one task's meta-step"
                                         r".*raise the budget to at least 130 MB"):
        chunk_size_for_budget(linear(100, 30), meta_batch=4, budget_bytes=100 * MB)


def test_meta_batch_of_one_measures_once():
    calls = []
    assert chunk_size_for_budget(linear(100, 30, calls), meta_batch=1, budget_bytes=1000 * MB) == 1
    assert calls == [1]


@pytest.mark.parametrize("kwargs,message", [
    (dict(meta_batch=0, budget_bytes=MB), "meta_batch must be >= 1"),
    (dict(meta_batch=4, budget_bytes=0), "budget_bytes must be a number > 0"),
    (dict(meta_batch=4, budget_bytes=-5.0), "budget_bytes must be a number > 0"),
    (dict(meta_batch=4, budget_bytes=float("nan")), "budget_bytes must be a number > 0"),
])
def test_inputs_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        chunk_size_for_budget(linear(1, 1), **kwargs)


def test_a_bad_measurement_is_named():
    with pytest.raises(ValueError, match=r"measure\(1\) must return the peak in bytes"):
        chunk_size_for_budget(lambda k: None, meta_batch=4, budget_bytes=MB)
    with pytest.raises(TypeError, match="meta_batch must be an int"):
        chunk_size_for_budget(linear(1, 1), meta_batch=2.0, budget_bytes=MB)


def test_cuda_peak_bytes_refuses_a_cpu_device_and_runs_nothing():
    ran = []
    with pytest.raises(ValueError, match="measured with CUDA's allocator.*use --chunk-size to bound vmap on a CPU"):
        cuda_peak_bytes(lambda: ran.append(1), torch.device("cpu"))
    assert ran == []
    with pytest.raises(ValueError, match="--vectorize off"):
        check_measurable("cuda", vectorize=False)


def _one_error_line(argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_cli_budget_and_chunk_size_are_exclusive(tmp_path, capsys):
    line = _one_error_line(["train", "--memory-budget", "100", "--chunk-size", "2", "--out", str(tmp_path / "r")],
                           capsys)
    assert line.startswith("bilevel train: error: --memory-budget 100 and --chunk-size 2"), line
    assert not (tmp_path / "r").exists()


def test_cli_budget_on_a_cpu_is_refused_before_any_work(tmp_path, capsys):
    line = _one_error_line(["train", "--memory-budget", "100", "--device", "cpu", "--out", str(tmp_path / "r")],
                           capsys)
    assert "measured with CUDA's allocator" in line and "--chunk-size" in line, line
    assert not (tmp_path / "r").exists()


def test_trainer_calibrates_on_validation_tasks_and_leaves_the_run_unchanged(tmp_path, monkeypatch):
    """The trainer's wiring on a CPU, with CUDA's measurement faked (100 MB + 30 MB per task):
    it picks the chunk size, records it, and trains the same parameters as that chunk size given
    with --chunk-size (the calibration draws validation tasks and updates nothing)."""
    from bilevel.fewshot import meta_step, trainer
    from bilevel.fewshot.config import TrainConfig

    peaks = iter([130 * MB, 160 * MB])  # chunk sizes 1, then 2

    def fake_peak(fn, device):
        fn()
        return next(peaks)

    for module in (trainer, meta_step):
        monkeypatch.setattr(module, "check_measurable", lambda device, vectorize=True: None)
    monkeypatch.setattr(meta_step, "cuda_peak_bytes", fake_peak)
    settings = dict(method="maml", inner_steps=1, meta_batch=4, iterations=1, val_tasks=2, device="cpu")
    budget = trainer.train(TrainConfig(**settings, memory_budget_mb=200.0), tmp_path / "budget", progress=False)
    plain = trainer.train(TrainConfig(**settings, chunk_size=3), tmp_path / "plain", progress=False)
    assert budget["chunk_size_chosen"] == 3 and "chunk_size_chosen" not in plain  # 100 + 3 * 30 <= 200 < 220
    a, b = (torch.load(tmp_path / run / "checkpoint.pt")["model"] for run in ("budget", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert trainer.evaluate(tmp_path / "budget", tasks=2, progress=False)["tasks"] == 2  # in the chosen chunks
